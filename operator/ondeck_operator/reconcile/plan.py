"""One reconcile of one ModelDeployment: decide (pure), then apply once.

`plan(md, observed, config, now=...)` looks at the children the operator observed (from its
watch caches) and returns a `Plan`: the objects to server-side apply (only those missing or
drifted, see `drift.py`), the children to delete, the status merge patch (None when nothing
changed) and the Events to post. `execute(plan, kube)` carries it out in one pass; an idle
resync therefore makes no write at all.

The decisions, in order:

1. The wanted artifact key is `artifact_key(spec)`; the served key is the label on the
   server Deployment (or, when the Deployment was deleted by hand, `status.artifact.key`).
2. The wanted artifact is built when it is already served or its conversion Job
   succeeded. Until then `render` keeps the Job (created once: its name carries the key,
   so a restarted operator never makes a second one) and the Deployment keeps serving the
   old artifact. A failed Job is not retried until the spec changes or the Job is deleted.
3. Once built, the Deployment is pointed at the new artifact (by digest, from the Job's
   termination message); Ready follows when it has rolled out and is available.
4. Children the spec no longer asks for (an Ingress removed from the spec, the claim and
   Job of a superseded artifact) are deleted; only objects this ModelDeployment controls.

What this module does NOT do: watch, cache, retry or schedule (handlers.py does), or talk to
the API server other than through the `KubeApi` interface in `execute`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ondeck_operator.args import artifact_key
from ondeck_operator.config import OperatorConfig
from ondeck_operator.constants import (
    CONVERT_CONTAINER,
    KIND,
    LABEL_ARTIFACT_KEY,
    MANAGED_BY,
    ConditionStatus,
    ConditionType,
    Phase,
    Reason,
)
from ondeck_operator.drift import needs_apply
from ondeck_operator.kube import (
    DEPLOYMENT,
    HPA,
    INGRESS,
    JOB,
    MODEL_DEPLOYMENT,
    PDB,
    POD,
    PVC,
    SERVICE,
    Kind,
    KubeApi,
    KubeError,
    kind_of,
)
from ondeck_operator.names import job_name, server_name
from ondeck_operator.render import RenderState, model_url, render, selector_string
from ondeck_operator.status import (
    FAILURE_REASONS,
    DeploymentFacts,
    EventSpec,
    Facts,
    JobState,
    compute_status,
    parse_summary,
    status_patch,
    transitions,
)
from ondeck_operator.types import (
    Condition,
    ModelDeployment,
    ModelDeploymentStatus,
    SpecError,
)

Obj = dict[str, Any]

__all__ = [
    "CHILD_KINDS",
    "WATCHED_KINDS",
    "MdRef",
    "Observed",
    "Plan",
    "event_object",
    "execute",
    "extract_facts",
    "invalid_plan",
    "plan",
    "pods_needed",
    "rfc3339",
]

#: The kinds the operator creates, in the order they are applied.
CHILD_KINDS: tuple[Kind, ...] = (PVC, JOB, DEPLOYMENT, SERVICE, INGRESS, HPA, PDB)
#: The kinds the operator watches (pods are listed on demand, see `pods_needed`).
WATCHED_KINDS: tuple[Kind, ...] = CHILD_KINDS
_JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Observed:
    """The children of one ModelDeployment as the watches last saw them, by kind."""

    children: Mapping[Kind, Sequence[Obj]] = field(default_factory=dict)

    def of(self, kind: Kind) -> Sequence[Obj]:
        return self.children.get(kind, ())

    def named(self, kind: Kind, name: str) -> Obj | None:
        return next((o for o in self.of(kind) if o["metadata"]["name"] == name), None)


@dataclass(frozen=True)
class MdRef:
    """Which ModelDeployment a plan is for."""

    namespace: str | None
    name: str
    uid: str | None = None


@dataclass(frozen=True)
class Plan:
    """What one reconcile does: apply, delete, patch the status, post Events."""

    ref: MdRef
    facts: Facts | None
    applies: list[Obj]
    deletes: list[tuple[Kind, str, str]]  # kind, name, uid
    status: ModelDeploymentStatus
    status_patch: Obj | None
    events: list[EventSpec]

    @property
    def writes(self) -> int:
        return len(self.applies) + len(self.deletes) + (self.status_patch is not None)


# ---------------------------------------------------------------- facts


def _controlled_by(obj: Obj, uid: str | None) -> bool:
    if uid is None:
        return True
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _condition_true(obj: Obj, ctype: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return dict(cond)
    return None


def _job_state(job: Obj | None) -> tuple[JobState, bool]:
    """The Job's state and whether it failed by its deadline."""
    if job is None:
        return JobState.ABSENT, False
    if _condition_true(job, "Complete") or _condition_true(job, "SuccessCriteriaMet"):
        return JobState.SUCCEEDED, False
    failed = _condition_true(job, "Failed") or _condition_true(job, "FailureTarget")
    if failed:
        return JobState.FAILED, failed.get("reason") == "DeadlineExceeded"
    return JobState.RUNNING, False


def _termination_message(pods: Sequence[Obj], job: str, *, succeeded: bool) -> str | None:
    """The convert container's termination message from the newest finished pod of `job`."""
    wanted_phase = "Succeeded" if succeeded else "Failed"
    found: list[tuple[str, str]] = []
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        if not any(labels.get(k) == job for k in _JOB_NAME_LABELS):
            continue
        status = pod.get("status") or {}
        if status.get("phase") != wanted_phase:
            continue
        for container in status.get("containerStatuses") or []:
            if container.get("name") != CONVERT_CONTAINER and len(status["containerStatuses"]) > 1:
                continue
            terminated = (container.get("state") or {}).get("terminated") or {}
            message = terminated.get("message")
            if message:
                found.append((terminated.get("finishedAt") or "", str(message).strip()))
    return max(found)[1] if found else None


def _deployment_facts(deployment: Obj) -> DeploymentFacts:
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    replicas = int(status.get("replicas", 0))
    updated = int(status.get("updatedReplicas", 0))
    available = int(status.get("availableReplicas", 0))
    generation = deployment["metadata"].get("generation", 0)
    rolled_out = (
        status.get("observedGeneration", 0) >= generation
        and updated >= desired
        and replicas == updated
        and available >= updated
    )
    progressing: Obj = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {}
    )
    return DeploymentFacts(
        serving_key=(deployment["metadata"].get("labels") or {}).get(LABEL_ARTIFACT_KEY),
        desired=desired,
        replicas=replicas,
        ready_replicas=int(status.get("readyReplicas", 0)),
        available_replicas=available,
        rolled_out=rolled_out,
        available=_condition_true(deployment, "Available") is not None,
        deadline_exceeded=progressing.get("status") == "False"
        and progressing.get("reason") == "ProgressDeadlineExceeded",
    )


def _known_failure(md: ModelDeployment) -> str | None:
    """The conversion failure the status already reports for this generation, if any."""
    status = md.status or ModelDeploymentStatus()
    for cond in status.conditions or []:
        if (
            cond.type == ConditionType.ARTIFACT_READY.value
            and cond.status == ConditionStatus.FALSE
            and cond.reason in FAILURE_REASONS
            and cond.reason != Reason.APPLY_FAILED
            and cond.observed_generation == md.metadata.generation
        ):
            return cond.message
    return None


def pods_needed(md: ModelDeployment, observed: Observed) -> str | None:
    """The conversion Job whose pods the next plan must see (their termination message
    holds the result), or None. Pods are not watched: they are listed once, when the
    wanted artifact's Job has finished and the status does not hold its result yet."""
    wanted = artifact_key(md.spec)
    job = job_name(md.metadata.name, wanted)
    job_obj = observed.named(JOB, job)
    if job_obj is None or not _controlled_by(job_obj, md.metadata.uid):
        return None
    state, _ = _job_state(job_obj)
    status = md.status or ModelDeploymentStatus()
    if state == JobState.SUCCEEDED:
        known = status.artifact is not None and status.artifact.key == wanted
        return None if known and status.artifact and status.artifact.digest else job
    if state == JobState.FAILED:
        return None if _known_failure(md) is not None else job
    return None


def extract_facts(md: ModelDeployment, observed: Observed, config: OperatorConfig) -> Facts:
    """What the status and the render state depend on, from the observed children."""
    uid = md.metadata.uid
    name = md.metadata.name
    wanted = artifact_key(md.spec)
    deployment = observed.named(DEPLOYMENT, server_name(name))
    if deployment is not None and not _controlled_by(deployment, uid):
        deployment = None
    dep_facts = _deployment_facts(deployment) if deployment is not None else None
    status = md.status or ModelDeploymentStatus()
    serving = dep_facts.serving_key if dep_facts else None
    if serving is None and status.artifact is not None:
        serving = status.artifact.key  # the Deployment was deleted: restore what it served
    job = job_name(name, wanted)
    job_obj = observed.named(JOB, job)
    if job_obj is not None and not _controlled_by(job_obj, uid):
        job_obj = None
    state, timed_out = _job_state(job_obj)
    pods = observed.of(POD)
    message = None
    summary = None
    if state == JobState.SUCCEEDED:
        found = _termination_message(pods, job, succeeded=True)
        summary = parse_summary(found, key=wanted) if found is not None else None
    elif state == JobState.FAILED:
        message = _termination_message(pods, job, succeeded=False) or _known_failure(md)
        if message is None and job_obj is not None:
            failed = _condition_true(job_obj, "Failed") or _condition_true(job_obj, "FailureTarget")
            message = (failed or {}).get("message")
    return Facts(
        wanted_key=wanted,
        serving_key=serving,
        wanted_built=serving == wanted or state == JobState.SUCCEEDED,
        job=state,
        job_name=job,
        job_message=message,
        job_timed_out=timed_out,
        summary=summary,
        deployment=dep_facts,
        url=model_url(md, config),
        selector=selector_string(md),
        min_available=md.spec.autoscaling.min_replicas if md.spec.autoscaling else 0,
    )


# ---------------------------------------------------------------- plan


def _render_state(md: ModelDeployment, facts: Facts) -> RenderState:
    serving = facts.wanted_key if facts.wanted_built else facts.serving_key
    digest = None
    if facts.summary is not None and facts.summary.key == serving:
        digest = facts.summary.digest
    elif md.status and md.status.artifact and md.status.artifact.key == serving:
        digest = md.status.artifact.digest
    return RenderState(serving_key=serving, serving_digest=digest, wanted_built=facts.wanted_built)


def _stale(
    md: ModelDeployment, observed: Observed, desired: Sequence[Obj], keep_keys: set[str]
) -> list[tuple[Kind, str, str]]:
    wanted_names = {(kind_of(o), o["metadata"]["name"]) for o in desired}
    uid = md.metadata.uid
    stale = []
    for kind in CHILD_KINDS:
        for obj in observed.of(kind):
            meta = obj["metadata"]
            if (kind, meta["name"]) in wanted_names or meta.get("deletionTimestamp"):
                continue
            if uid is None or not _controlled_by(obj, uid):
                continue
            if kind == JOB and (meta.get("labels") or {}).get(LABEL_ARTIFACT_KEY) in keep_keys:
                continue  # the finished Job of a served artifact: kept until its TTL
            stale.append((kind, meta["name"], str(meta.get("uid") or "")))
    return stale


def plan(
    md: ModelDeployment,
    observed: Observed,
    config: OperatorConfig,
    *,
    now: str,
    apply_error: str | None = None,
) -> Plan:
    """Decide everything one reconcile does, from `md` and its observed children."""
    facts = extract_facts(md, observed, config)
    if apply_error:
        facts = Facts(**{**facts.__dict__, "apply_error": apply_error})
    state = _render_state(md, facts)
    desired = render(md, config, state)
    applies = []
    for obj in desired:
        kind = kind_of(obj)
        have = observed.named(kind, obj["metadata"]["name"])
        if kind == JOB:
            if have is None:
                applies.append(obj)  # a Job is created once, never patched
        elif needs_apply(obj, have):
            applies.append(obj)
    keep = {k for k in (facts.wanted_key, state.serving_key) if k}
    deletes = [] if apply_error else _stale(md, observed, desired, keep)
    status = compute_status(md, facts, now=now)
    meta = md.metadata
    return Plan(
        ref=MdRef(meta.namespace, meta.name, meta.uid),
        facts=facts,
        applies=[] if apply_error else applies,
        deletes=deletes,
        status=status,
        status_patch=status_patch(md.status, status),
        events=transitions(md.status, status),
    )


def invalid_plan(body: Mapping[str, Any], error: SpecError, *, now: str) -> Plan:
    """A ModelDeployment the API server accepted but the operator cannot render: Failed
    with reason InvalidSpec naming every problem; nothing is applied or deleted."""
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    old_status = ModelDeploymentStatus.model_validate(body.get("status") or {})
    previous = {c.type: c for c in old_status.conditions or []}
    message = "; ".join(error.problems)[:4096]

    def cond(ctype: ConditionType) -> Condition:
        before = previous.get(ctype.value)
        keep = before is not None and before.status == ConditionStatus.FALSE
        return Condition(
            type=ctype.value,
            status=ConditionStatus.FALSE,
            reason=Reason.INVALID_SPEC.value,
            message=message,
            last_transition_time=before.last_transition_time if keep and before else now,
            observed_generation=generation,
        )

    status = ModelDeploymentStatus(
        observed_generation=generation,
        phase=Phase.FAILED,
        conditions=[cond(ConditionType.READY)],
        url=old_status.url,
        artifact=old_status.artifact,
        replicas=old_status.replicas,
        ready_replicas=old_status.ready_replicas,
        selector=old_status.selector,
    )
    return Plan(
        ref=MdRef(meta.get("namespace"), str(meta.get("name")), meta.get("uid")),
        facts=None,
        applies=[],
        deletes=[],
        status=status,
        status_patch=status_patch(old_status, status),
        events=transitions(old_status, status),
    )


# ---------------------------------------------------------------- execute


def event_object(ref: MdRef, event: EventSpec, *, now: str, instance: str) -> Obj:
    """A core/v1 Event about the ModelDeployment `ref`."""
    meta = ref
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.name}.{uuid.uuid4().hex[:16]}", "namespace": meta.namespace},
        "involvedObject": {
            "apiVersion": MODEL_DEPLOYMENT.api_version,
            "kind": KIND,
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
        "reportingInstance": instance[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def execute(plan: Plan, kube: KubeApi, *, now: str, instance: str) -> None:
    """Apply, delete, patch the status and post the Events of `plan`, in that order.

    The children do not depend on one another (a pod waits for its claim; an HPA or a
    Service names its Deployment), so they are written concurrently: one reconcile takes
    the time of its slowest write, not of their sum. A failed write propagates (the caller
    retries with backoff) and the status is then not patched; Events are best effort."""
    meta = plan.ref

    async def write(obj: Obj) -> None:
        if kind_of(obj) == JOB:
            await kube.create(obj)  # created once; a 409 means it already exists
        else:
            await kube.apply(obj)

    async def event(spec: EventSpec) -> None:
        # Events are informative; the status already says it all.
        with contextlib.suppress(KubeError):
            await kube.create(event_object(plan.ref, spec, now=now, instance=instance))

    await _all(write(obj) for obj in plan.applies)
    await _all(
        kube.delete(kind, meta.namespace, name, uid=uid or None) for kind, name, uid in plan.deletes
    )
    if plan.status_patch is not None:
        await kube.patch_status(MODEL_DEPLOYMENT, meta.namespace, meta.name, plan.status_patch)
    await _all(event(spec) for spec in plan.events)


async def _all(calls: Iterable[Awaitable[Any]]) -> None:
    """Await all; the first failure is raised once every call has finished."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
