"""The status of a ModelDeployment computed from what the reconciler observed (pure).

`compute_status(md, facts, ...)` turns `Facts` (the wanted and served artifact keys, the
conversion Job's state and termination message, the Deployment's rollout) into the whole
`status`: the conditions `ArtifactReady`, `Available` and `Ready` (each with
`observedGeneration`; `lastTransitionTime` kept unless the condition's status changes),
`phase`, `url`, the artifact report, replica counts and the scale selector. `Ready` is
False from the very first reconcile, so kstatus, Argo CD and Flux read progress right.
`status_patch()` gives the merge patch from the old status to the new one (None when
nothing changed: an idle resync writes nothing) and `transitions()` the Events to post.

What this module does NOT do: talk to the API server, read the clock (`now` is passed
in), or decide what to apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from ondeck_operator.api.constants import ConditionStatus, ConditionType, Phase, Reason
from ondeck_operator.api.spec import (
    ArtifactReport,
    Condition,
    ModelDeployment,
    ModelDeploymentStatus,
)

__all__ = [
    "ERROR_REASONS",
    "FAILURE_REASONS",
    "DeploymentFacts",
    "EventSpec",
    "Facts",
    "JobState",
    "compute_status",
    "failure_reason",
    "parse_summary",
    "status_patch",
    "transitions",
]

#: Reasons that need a change from the user; their Events are Warnings.
FAILURE_REASONS = frozenset(
    {
        Reason.CONVERSION_FAILED,
        Reason.CONVERSION_TIMED_OUT,
        Reason.CHECKSUM_MISMATCH,
        Reason.VALIDATION_FAILED,
        Reason.SOURCE_UNAVAILABLE,
        Reason.INVALID_SPEC,
        Reason.APPLY_FAILED,
        Reason.PROGRESS_DEADLINE_EXCEEDED,
        Reason.INVALID_SETTINGS,
        Reason.UNSUPPORTED_FORMAT,
        Reason.UNSAFE_MODEL,
        Reason.CONVERTER_MISSING,
        Reason.OPTIMIZATION_FAILED,
        Reason.QUANTIZATION_FAILED,
        Reason.STORE_FAILED,
        Reason.INTERNAL_ERROR,
    }
)

# `ondeck-server convert` ends a failure's termination message with `ErrorType: message`.
# Every error type it can write is mapped here, deliberately: verbatim, except FetchFailed,
# which reads SourceUnavailable on the resource (the user fixes a URI or a Secret), and
# UsageError (a value convert refuses), which is InvalidSettings. An unknown type (a newer
# converter image) is ConversionFailed. tests/contract pins this table to convert's reasons.
ERROR_REASONS: dict[str, Reason] = {
    "InvalidSettings": Reason.INVALID_SETTINGS,
    "UsageError": Reason.INVALID_SETTINGS,
    "FetchFailed": Reason.SOURCE_UNAVAILABLE,
    "ChecksumMismatch": Reason.CHECKSUM_MISMATCH,
    "UnsupportedFormat": Reason.UNSUPPORTED_FORMAT,
    "UnsafeModel": Reason.UNSAFE_MODEL,
    "ConverterMissing": Reason.CONVERTER_MISSING,
    "ConversionFailed": Reason.CONVERSION_FAILED,
    "OptimizationFailed": Reason.OPTIMIZATION_FAILED,
    "QuantizationFailed": Reason.QUANTIZATION_FAILED,
    "ValidationFailed": Reason.VALIDATION_FAILED,
    "StoreFailed": Reason.STORE_FAILED,
    "InternalError": Reason.INTERNAL_ERROR,
}


class JobState(StrEnum):
    """The conversion Job of the wanted artifact."""

    ABSENT = "Absent"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class DeploymentFacts:
    """The server Deployment as observed."""

    serving_key: str | None
    desired: int
    replicas: int
    ready_replicas: int
    available_replicas: int
    rolled_out: bool
    available: bool
    deadline_exceeded: bool


@dataclass(frozen=True)
class Facts:
    """Everything the status depends on, extracted from the observed children."""

    wanted_key: str
    serving_key: str | None
    wanted_built: bool
    job: JobState
    job_name: str
    job_message: str | None = None
    job_timed_out: bool = False
    summary: ArtifactReport | None = None
    deployment: DeploymentFacts | None = None
    url: str | None = None
    selector: str | None = None
    apply_error: str | None = None
    #: Fewest available replicas for Available=True (the HPA's minimum when autoscaling).
    min_available: int = 0


@dataclass(frozen=True)
class EventSpec:
    """An Event to post about the ModelDeployment."""

    type: str  # Normal | Warning
    reason: str
    message: str


def failure_reason(message: str | None, *, timed_out: bool = False) -> Reason:
    """The condition reason of a failed conversion, from its termination message."""
    if timed_out:
        return Reason.CONVERSION_TIMED_OUT
    if message:
        error_type = message.strip().split(":", 1)[0].strip()
        return ERROR_REASONS.get(error_type, Reason.CONVERSION_FAILED)
    return Reason.CONVERSION_FAILED


def parse_summary(message: str | None, *, key: str) -> ArtifactReport:
    """The artifact report from a successful conversion's JSON summary (key always set)."""
    data: Any = None
    if message:
        try:
            data = json.loads(message)
        except ValueError:
            data = None
    if isinstance(data, dict):
        try:
            return ArtifactReport.model_validate({**data, "key": key})
        except ValidationError:
            digest = data.get("digest")
            return ArtifactReport(key=key, digest=digest if isinstance(digest, str) else None)
    return ArtifactReport(key=key)


# ---------------------------------------------------------------- conditions


def _condition(
    ctype: ConditionType,
    status: ConditionStatus,
    reason: Reason,
    message: str,
    *,
    generation: int | None,
    now: str,
    previous: list[Condition],
) -> Condition:
    before = next((c for c in previous if c.type == ctype.value), None)
    changed = before is None or before.status != status
    return Condition(
        type=ctype.value,
        status=status,
        reason=reason.value,
        message=message,
        last_transition_time=now if changed or before is None else before.last_transition_time,
        observed_generation=generation,
    )


def _artifact_condition(facts: Facts) -> tuple[ConditionStatus, Reason, str]:
    if facts.wanted_built:
        return ConditionStatus.TRUE, Reason.ARTIFACT_BUILT, f"artifact {facts.wanted_key} built"
    if facts.job == JobState.FAILED:
        reason = failure_reason(facts.job_message, timed_out=facts.job_timed_out)
        message = facts.job_message or f"conversion Job {facts.job_name} failed"
        return ConditionStatus.FALSE, reason, message
    return (
        ConditionStatus.FALSE,
        Reason.CONVERTING,
        f"converting the model into artifact {facts.wanted_key} (Job {facts.job_name})",
    )


def _available_condition(facts: Facts) -> tuple[ConditionStatus, Reason, str]:
    deployment = facts.deployment
    if deployment is None:
        if facts.serving_key is None and not facts.wanted_built:
            return ConditionStatus.FALSE, Reason.PENDING, "no artifact is built yet"
        return ConditionStatus.FALSE, Reason.DEPLOYING, "creating the server Deployment"
    wanted = max(deployment.desired, facts.min_available)
    counts = f"{deployment.available_replicas}/{wanted} replicas available"
    if deployment.deadline_exceeded:
        return ConditionStatus.FALSE, Reason.PROGRESS_DEADLINE_EXCEEDED, counts
    if deployment.available and deployment.available_replicas >= facts.min_available:
        return ConditionStatus.TRUE, Reason.REPLICAS_AVAILABLE, counts
    return ConditionStatus.FALSE, Reason.REPLICAS_UNAVAILABLE, counts


def _ready_condition(
    facts: Facts,
    artifact: tuple[ConditionStatus, Reason, str],
    available: tuple[ConditionStatus, Reason, str],
) -> tuple[ConditionStatus, Reason, str]:
    if facts.apply_error:
        return ConditionStatus.FALSE, Reason.APPLY_FAILED, facts.apply_error
    serving = (
        f"; artifact {facts.serving_key} is still serving"
        if facts.serving_key and facts.serving_key != facts.wanted_key
        else ""
    )
    if artifact[0] != ConditionStatus.TRUE:
        return ConditionStatus.FALSE, artifact[1], artifact[2] + serving
    deployment = facts.deployment
    if (
        deployment is None
        or deployment.serving_key != facts.wanted_key
        or not deployment.rolled_out
        or available[0] != ConditionStatus.TRUE
    ):
        if available[1] == Reason.PROGRESS_DEADLINE_EXCEEDED:
            return ConditionStatus.FALSE, available[1], f"rollout stalled: {available[2]}"
        return (
            ConditionStatus.FALSE,
            Reason.DEPLOYING,
            f"rolling out artifact {facts.wanted_key}: {available[2]}",
        )
    return ConditionStatus.TRUE, Reason.READY, f"serving artifact {facts.wanted_key}"


def _phase(facts: Facts, ready: ConditionStatus, available: ConditionStatus) -> Phase:
    if ready == ConditionStatus.TRUE:
        return Phase.READY
    if facts.apply_error and facts.deployment is None:
        return Phase.FAILED
    if not facts.wanted_built:
        if facts.job != JobState.FAILED:
            return Phase.CONVERTING
        # A failed conversion is a failure only when nothing serves; else the old
        # version keeps serving and the Ready condition says why the new one is not.
        if facts.deployment is None or facts.serving_key is None:
            return Phase.FAILED
        return Phase.READY if available == ConditionStatus.TRUE else Phase.DEPLOYING
    return Phase.DEPLOYING


def compute_status(
    md: ModelDeployment,
    facts: Facts,
    *,
    now: str,
) -> ModelDeploymentStatus:
    """The whole status for `md` given `facts`; `now` is an RFC 3339 UTC timestamp."""
    old = md.status or ModelDeploymentStatus()
    previous = old.conditions or []
    generation = md.metadata.generation
    artifact = _artifact_condition(facts)
    available = _available_condition(facts)
    ready = _ready_condition(facts, artifact, available)
    conditions = [
        _condition(t, *parts, generation=generation, now=now, previous=previous)
        for t, parts in (
            (ConditionType.READY, ready),
            (ConditionType.ARTIFACT_READY, artifact),
            (ConditionType.AVAILABLE, available),
        )
    ]
    # The report is of the artifact the Deployment serves, or is being pointed at now.
    target = facts.wanted_key if facts.wanted_built else facts.serving_key
    report = old.artifact if old.artifact and old.artifact.key == target else None
    if report is None and old.candidate_artifact and old.candidate_artifact.key == target:
        report = old.candidate_artifact  # a promoted candidate whose Job is gone
    if facts.summary is not None and facts.summary.key == target:
        report = facts.summary
    deployment = facts.deployment
    return ModelDeploymentStatus(
        observed_generation=generation,
        phase=_phase(facts, ready[0], available[0]),
        conditions=conditions,
        url=facts.url if target else None,
        artifact=report,
        replicas=deployment.replicas if deployment else 0,
        ready_replicas=deployment.ready_replicas if deployment else 0,
        selector=facts.selector,
    )


# ---------------------------------------------------------------- diff and events


def _dump(status: ModelDeploymentStatus | None) -> dict[str, Any]:
    if status is None:
        return {}
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def status_patch(
    old: ModelDeploymentStatus | None, new: ModelDeploymentStatus
) -> dict[str, Any] | None:
    """A JSON merge patch `{"status": ...}` from old to new; None when they are equal."""
    before, after = _dump(old), _dump(new)
    if before == after:
        return None
    return {"status": _merge_patch(before, after)}


def _merge_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`after`, with None for each key gone since `before`, at every depth: a merge patch
    removes a key only when told to, and merges objects key by key (a rollout's
    `stepStarted` cleared at a new step would otherwise keep the previous step's time)."""
    patch: dict[str, Any] = {}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            value = _merge_patch(old, value)
        patch[key] = value
    for key in before.keys() - after.keys():
        patch[key] = None
    return patch


def transitions(old: ModelDeploymentStatus | None, new: ModelDeploymentStatus) -> list[EventSpec]:
    """Events for what changed: the Ready condition's status or reason (Normal, or Warning
    for a failure reason), and ArtifactReady turning to a failure reason that Ready does not
    already report (a failed conversion while the old version still serves)."""
    before = {c.type: c for c in (old.conditions if old and old.conditions else [])}
    after = {c.type: c for c in (new.conditions or [])}
    failures = {r.value for r in FAILURE_REASONS}
    events = []
    for ctype in (ConditionType.READY.value, ConditionType.ARTIFACT_READY.value):
        cond, prev = after.get(ctype), before.get(ctype)
        if cond is None:
            continue
        if prev is not None and (prev.status, prev.reason) == (cond.status, cond.reason):
            continue
        if ctype != ConditionType.READY.value:
            ready = after.get(ConditionType.READY.value)
            if cond.reason not in failures or (ready is not None and ready.reason == cond.reason):
                continue
        events.append(
            EventSpec(
                type="Warning" if cond.reason in failures else "Normal",
                reason=cond.reason,
                message=cond.message[:1024],
            )
        )
    return events
