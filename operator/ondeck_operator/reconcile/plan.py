"""One reconcile of one ModelDeployment: decide (pure), then apply once.

`plan(md, observed, config, now=...)` looks at the children the operator observed (from its
watch caches) and returns a `Plan`: the objects to server-side apply (only those missing or
drifted, see `drift.py`), the children to delete, the status merge patch (None when nothing
changed) and the Events to post (failures and Ready only). `execute(plan, kube)` carries it
out in one pass; an idle resync therefore makes no write at all.

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

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ondeck_operator.api.constants import (
    LABEL_ARTIFACT_KEY,
    ConditionStatus,
    ConditionType,
    Phase,
    Reason,
)
from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import (
    Condition,
    ModelDeployment,
    ModelDeploymentStatus,
    SpecError,
)
from ondeck_operator.reconcile.drift import needs_apply
from ondeck_operator.reconcile.facts import (
    CHILD_KINDS,
    Observed,
    controlled_by,
    extract_facts,
)
from ondeck_operator.reconcile.kinds import (
    JOB,
    Kind,
    kind_of,
)
from ondeck_operator.reconcile.rollout import Analysis, RolloutDecision, decide_for
from ondeck_operator.reconcile.status import (
    EventSpec,
    Facts,
    compute_status,
    status_patch,
    transitions,
)
from ondeck_operator.render.manifests import RenderState, render
from ondeck_operator.render.rollout import with_rollout

Obj = dict[str, Any]


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    #: Seconds until a rollout step is due; the runtime requests a reconcile then.
    requeue_after: float | None = None

    @property
    def writes(self) -> int:
        return len(self.applies) + len(self.deletes) + (self.status_patch is not None)


def _events(old: ModelDeploymentStatus | None, new: ModelDeploymentStatus) -> list[EventSpec]:
    """The Events worth a write: failures (Warning) and Ready turning True. The progress in
    between (Converting, Deploying) is in the status, and the Job and the Deployment post
    their own Events; one each would cost two more API writes per ModelDeployment."""
    return [
        e for e in transitions(old, new) if e.type == "Warning" or e.reason == Reason.READY.value
    ]


def progress_only(old: ModelDeploymentStatus | None, new: ModelDeploymentStatus) -> bool:
    """Whether `new` differs from `old` only in a rollout's progress: replica counts and
    condition messages, with phase, every condition's status and reason, the generation,
    the artifact and the URL unchanged. Such a patch can wait a moment for the next one."""
    if old is None:
        return False

    def shape(status: ModelDeploymentStatus) -> tuple[Any, ...]:
        conditions = tuple(
            (c.type, c.status, c.reason, c.observed_generation) for c in status.conditions or []
        )
        return (
            status.phase,
            status.observed_generation,
            status.url,
            status.artifact,
            status.selector,
            conditions,
        )

    return shape(old) == shape(new)


def _render_state(md: ModelDeployment, facts: Facts) -> RenderState:
    serving = facts.wanted_key if facts.wanted_built else facts.serving_key
    report = None
    if facts.summary is not None and facts.summary.key == serving:
        report = facts.summary
    elif md.status and md.status.artifact and md.status.artifact.key == serving:
        report = md.status.artifact
    return RenderState(
        serving_key=serving,
        serving_digest=report.digest if report else None,
        wanted_built=facts.wanted_built,
        artifact=report,
    )


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
            if uid is None or not controlled_by(obj, uid):
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
    analysis: Analysis | None = None,
) -> Plan:
    """Decide everything one reconcile does, from `md` and its observed children."""
    facts = extract_facts(md, observed, config)
    if apply_error:
        facts = Facts(**{**facts.__dict__, "apply_error": apply_error})
    state = _render_state(md, facts)
    rollout = decide_for(md, facts, observed, state, now=now, analysis=analysis)
    sized_by = state.artifact
    state = RenderState(
        serving_key=rollout.stable_key,
        serving_digest=rollout.stable_digest,
        wanted_built=facts.wanted_built,
        # The served artifact's report sizes the Deployment: kept when the rollout serves
        # that same artifact as stable.
        artifact=sized_by if sized_by is not None and sized_by.key == rollout.stable_key else None,
    )
    desired = with_rollout(md, config, render(md, config, state), rollout.traffic)
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
    status = _with_rollout_status(md, compute_status(md, facts, now=now), rollout, now=now)
    meta = md.metadata
    return Plan(
        ref=MdRef(meta.namespace, meta.name, meta.uid),
        facts=facts,
        applies=[] if apply_error else applies,
        deletes=deletes,
        status=status,
        status_patch=status_patch(md.status, status),
        events=_events(md.status, status) + rollout.events,
        requeue_after=rollout.requeue_after,
    )


def _with_rollout_status(
    md: ModelDeployment, status: ModelDeploymentStatus, rollout: RolloutDecision, *, now: str
) -> ModelDeploymentStatus:
    """`status` with the rollout's conditions and record; while a rollout holds the new
    artifact back, Ready says so and the artifact report stays the stable one's."""
    previous = (md.status.conditions if md.status else None) or []
    generation = md.metadata.generation
    conditions = list(status.conditions or [])

    def put(ctype: str, cstatus: ConditionStatus, reason: str, message: str) -> None:
        before = next((c for c in previous if c.type == ctype), None)
        keep = before is not None and before.status == cstatus
        cond = Condition(
            type=ctype,
            status=cstatus,
            reason=reason,
            message=message,
            last_transition_time=before.last_transition_time if keep and before else now,
            observed_generation=generation,
        )
        for index, have in enumerate(conditions):
            if have.type == ctype:
                conditions[index] = cond
                return
        conditions.append(cond)

    if rollout.ready is not None and status.conditions:
        ready = next(c for c in status.conditions if c.type == ConditionType.READY.value)
        if ready.reason != Reason.APPLY_FAILED.value:
            put(
                ConditionType.READY.value,
                rollout.ready[0],
                rollout.ready[1].value,
                rollout.ready[2],
            )
    for ctype, cstatus, reason, message in rollout.conditions:
        put(ctype.value, cstatus, reason.value, message)
    update: dict[str, Any] = {"conditions": conditions, "rollout": rollout.status}
    if rollout.ready is not None:
        stable = rollout.stable_key
        old = md.status.artifact if md.status else None
        update["artifact"] = old if old is not None and old.key == stable else status.artifact
        # The candidate's report, read once when its Job finished: kept for its promotion
        candidate = rollout.status.candidate if rollout.status else None
        reports = (status.artifact, md.status.candidate_artifact if md.status else None)
        update["candidate_artifact"] = next(
            (r for r in reports if r and candidate and r.key == candidate.key), None
        )
        if rollout.ready[1] == Reason.ROLLED_BACK and status.phase == Phase.DEPLOYING:
            available = next(
                (c for c in conditions if c.type == ConditionType.AVAILABLE.value), None
            )
            if available is not None and available.status == ConditionStatus.TRUE:
                update["phase"] = Phase.READY  # the old version serves, as after a failed build
    return status.model_copy(update=update)


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
        events=_events(old_status, status),
    )
