"""The rollout of a new artifact (pure): given the spec, what `status.rollout` recorded,
the stable and candidate Deployments as observed, a human's command (the
`ondeck.io/rollout` annotation) and the last analysis verdict, decide this cycle's traffic
(`render.rollout.Traffic`), the new `status.rollout`, the rollout conditions and Events.

The rules:

- A rollout starts when the wanted artifact is built, differs from the served one and
  `spec.rollout.strategy` is not replace. The first artifact is deployed at once.
- Shadow phase: the candidate runs beside stable, takes no caller's request, and receives
  copies of `shadow.percent` of stable's requests. Canary steps: the candidate takes
  `weight` percent (exact with a Gateway, else a replica ratio behind the one Service).
- A step holds its weight only once the candidate is rolled out and has the ready
  replicas for its share; until then the weight stays where it was (0 at first), so a
  candidate that is not Ready never gets a share, and stable is never shrunk first.
- A step ends when its pause has passed since it began holding *and* the last analysis
  since then passed; an analysis that fails rolls back at once. After the last step the
  candidate is promoted: the stable Deployment moves to its artifact (a rolling update
  that never takes a pod down first) and the candidate is removed once stable rolled out.
- `promote` / `abort` in the annotation act at once; the value present when a rollout
  starts is ignored (it belongs to an earlier one).
- A rollout survives an operator restart: everything it needs is in `status.rollout`.

What this module does NOT do: scrape metrics (the runtime gives it a verdict), read the
clock (`now` is passed in), or build manifests (`render.rollout`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass, field

from ondeck_operator.api.constants import (
    ANNOTATION_ROLLOUT,
    ROLLOUT_ABORT,
    ROLLOUT_PROMOTE,
    ConditionStatus,
    ConditionType,
    Reason,
)
from ondeck_operator.api.rollout import (
    AnalysisFigures,
    ArtifactRef,
    RolloutPhase,
    RolloutStatus,
    RolloutStrategy,
    duration_seconds,
)
from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.reconcile.analysis import Verdict
from ondeck_operator.reconcile.facts import Observed, controlled_by, deployment_facts
from ondeck_operator.reconcile.kinds import DEPLOYMENT
from ondeck_operator.reconcile.status import DeploymentFacts, EventSpec, Facts
from ondeck_operator.render.manifests import RenderState
from ondeck_operator.render.rollout import Traffic, candidate_name

__all__ = [
    "ACTIVE",
    "Analysis",
    "RolloutDecision",
    "RolloutInputs",
    "Verdict",
    "candidate_replicas",
    "decide",
    "decide_for",
    "parse_time",
]

ACTIVE = frozenset({RolloutPhase.SHADOW, RolloutPhase.CANARY})
SPLIT_GATEWAY = "Gateway"
SPLIT_REPLICAS = "ReplicaRatio"
#: Status and events keep messages short; figures are in status.rollout.analysis.
_MESSAGE_MAX = 1024


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


#: One analysis: its verdict, the reason of a failure, and the figures (their `time` says
#: when it was judged).
Analysis = tuple[Verdict, Reason | None, AnalysisFigures]


def candidate_replicas(total: int, percent: int) -> int:
    """Candidate pods for `percent` of `total` (at least one)."""
    return max(1, math.ceil(total * percent / 100))


@dataclass(frozen=True)
class RolloutInputs:
    """Everything one decision depends on."""

    wanted_key: str
    wanted_digest: str | None
    wanted_built: bool
    serving_key: str | None
    serving_digest: str | None
    stable: DeploymentFacts | None
    candidate: DeploymentFacts | None
    now: str
    #: The last analysis the runtime made for this rollout.
    analysis: Analysis | None = None


@dataclass(frozen=True)
class RolloutDecision:
    """What a rollout does this cycle."""

    #: The stable Deployment's artifact (the candidate's once promoted).
    stable_key: str | None
    stable_digest: str | None
    traffic: Traffic
    status: RolloutStatus | None
    #: (type, status, reason, message) of Progressing, Promoted, RolledBack, TrafficSplit.
    conditions: list[tuple[ConditionType, ConditionStatus, Reason, str]] = field(
        default_factory=list
    )
    events: list[EventSpec] = field(default_factory=list)
    #: Seconds until something is due (a pause ends); None: nothing timed.
    requeue_after: float | None = None
    #: The Ready condition while the rollout holds the new artifact back, if it does.
    ready: tuple[ConditionStatus, Reason, str] | None = None


def _command(md: ModelDeployment) -> str:
    return ((md.metadata.annotations or {}).get(ANNOTATION_ROLLOUT) or "").strip().lower()


def _rolled_out(facts: DeploymentFacts | None, key: str, ready: int) -> bool:
    return (
        facts is not None
        and facts.serving_key == key
        and facts.rolled_out
        and facts.ready_replicas >= ready
    )


def _figures_text(figures: AnalysisFigures | None) -> str:
    return f": {figures.message}" if figures is not None and figures.message else ""


class _Decider:
    """One decision; methods read `self.i` and the spec and return the decision."""

    def __init__(self, md: ModelDeployment, inputs: RolloutInputs) -> None:
        self.md = md
        self.i = inputs
        self.spec = md.spec.rollout
        self.total = md.spec.wanted_replicas()
        self.now = parse_time(inputs.now) or dt.datetime.now(dt.UTC)
        self.gateway = md.spec.gateway is not None
        self.recorded = md.status.rollout if md.status else None

    # ------------------------------------------------------------ outcomes

    def none(self) -> RolloutDecision:
        """No rollout: the existing replace behaviour. A finished rollout's record stays
        while its candidate is still the wanted artifact."""
        r = self.recorded
        keep = (
            r is not None
            and r.phase not in ACTIVE
            and r.candidate is not None
            and r.candidate.key == self.i.wanted_key
        )
        status = r if keep else None
        stable = self.i.wanted_key if self.i.wanted_built else self.i.serving_key
        digest = self.i.wanted_digest if self.i.wanted_built else self.i.serving_digest
        if status is not None and status.phase == RolloutPhase.ROLLED_BACK:
            return self.rolled_back_record(status)
        conditions = self.end_conditions(status) if self.tracked(status) else []
        return RolloutDecision(
            stable_key=stable,
            stable_digest=digest,
            traffic=Traffic(),
            status=status,
            conditions=conditions,
        )

    def tracked(self, status: RolloutStatus | None) -> bool:
        return self.spec.strategy != RolloutStrategy.REPLACE or status is not None

    def end_conditions(
        self, status: RolloutStatus | None
    ) -> list[tuple[ConditionType, ConditionStatus, Reason, str]]:
        promoted = status is not None and status.phase == RolloutPhase.PROMOTED
        rolled = status is not None and status.phase == RolloutPhase.ROLLED_BACK
        message = status.message if status is not None else "no rollout in progress"
        return [
            (
                ConditionType.PROGRESSING,
                ConditionStatus.FALSE,
                Reason.ROLLOUT_PROMOTED
                if promoted
                else Reason.ROLLED_BACK
                if rolled
                else Reason.NO_ROLLOUT,
                message,
            ),
            (
                ConditionType.PROMOTED,
                ConditionStatus.TRUE if promoted else ConditionStatus.FALSE,
                Reason.ROLLOUT_PROMOTED if promoted else Reason.NO_ROLLOUT,
                message,
            ),
        ]

    def rolled_back_record(self, status: RolloutStatus) -> RolloutDecision:
        """The candidate was rolled back and is still the wanted artifact: stable serves,
        Ready says why the new one is not, until the spec changes."""
        reason = Reason(status.analysis_reason) if status.analysis_reason else Reason.ROLLED_BACK
        stable = status.stable
        message = status.message
        return RolloutDecision(
            stable_key=stable.key if stable else self.i.serving_key,
            stable_digest=stable.digest if stable else self.i.serving_digest,
            traffic=Traffic(),
            status=status,
            conditions=[
                (ConditionType.PROGRESSING, ConditionStatus.FALSE, Reason.ROLLED_BACK, message),
                (ConditionType.PROMOTED, ConditionStatus.FALSE, Reason.ROLLED_BACK, message),
                (ConditionType.ROLLED_BACK, ConditionStatus.TRUE, reason, message),
            ],
            ready=(ConditionStatus.FALSE, Reason.ROLLED_BACK, message),
        )

    # ------------------------------------------------------------ decide

    def decide(self) -> RolloutDecision:
        i = self.i
        r = self.recorded
        ongoing = (
            r is not None
            and r.candidate is not None
            and r.candidate.key == i.wanted_key
            and i.wanted_built
        )
        if r is not None and ongoing and r.phase == RolloutPhase.PROMOTED:
            return self.promoted(r)
        if r is not None and ongoing and r.phase == RolloutPhase.ROLLED_BACK:
            return self.rolled_back_record(r)
        if self.spec.strategy == RolloutStrategy.REPLACE or not i.wanted_built:
            return self.none()
        if i.serving_key is None or i.serving_key == i.wanted_key:
            return self.none()
        if r is None or not ongoing or r.phase not in ACTIVE:
            r = self.start()
            started = True
        else:
            started = False
        command = _command(self.md)
        if command != r.command_at_start:
            if command == ROLLOUT_PROMOTE:
                return self.promote(r, Reason.MANUAL_PROMOTE, "promoted by the annotation")
            if command == ROLLOUT_ABORT:
                return self.rollback(r, Reason.MANUAL_ABORT, "aborted by the annotation", None)
        decision = self.shadow(r) if r.phase == RolloutPhase.SHADOW else self.canary(r)
        if started:
            events = [
                EventSpec(
                    "Normal",
                    "RolloutStarted",
                    f"rolling out artifact {i.wanted_key} ({self.spec.strategy.value}); "
                    f"artifact {i.serving_key} keeps serving",
                ),
            ]
            decision = _after(events, decision)
        return decision

    def start(self) -> RolloutStatus:
        i = self.i
        shadow = self.spec.strategy == RolloutStrategy.SHADOW_THEN_CANARY
        return RolloutStatus(
            phase=RolloutPhase.SHADOW if shadow else RolloutPhase.CANARY,
            stable=ArtifactRef(key=i.serving_key or "", digest=i.serving_digest),
            candidate=ArtifactRef(key=i.wanted_key, digest=i.wanted_digest),
            step=0,
            weight=0,
            split=SPLIT_GATEWAY if self.gateway else SPLIT_REPLICAS,
            command_at_start=_command(self.md),
            message="starting the candidate",
        )

    # ------------------------------------------------------------ phases

    def fresh_analysis(self, r: RolloutStatus) -> Analysis:
        """The last analysis, when it was made since the current step began holding."""
        began = parse_time(r.step_started)
        if self.i.analysis is None or began is None:
            return Verdict.WAIT, None, r.analysis or _no_figures(self.i.now)
        verdict, reason, figures = self.i.analysis
        at = parse_time(figures.time)
        if at is None or at < began:
            return Verdict.WAIT, None, r.analysis or _no_figures(self.i.now)
        return verdict, reason, figures

    def hold(
        self, r: RolloutStatus, *, pause: int, label: str, traffic: Traffic, held: bool
    ) -> tuple[RolloutStatus, bool, float | None, list[EventSpec], AnalysisFigures | None]:
        """Common to shadow and canary: start holding once `held`, and say whether the
        step is done. Returns (status, done, requeue, events, failure figures)."""
        events: list[EventSpec] = []
        if not held:
            # Only move the recorded weight down: an unready candidate loses its share.
            status = r.model_copy(
                update={
                    "weight": min(r.weight, traffic.weight),
                    "step_started": None,
                    "message": f"{label}: waiting for the candidate to be ready",
                }
            )
            return status, False, None, events, None
        started = r.step_started or self.i.now
        if r.step_started is None:
            events.append(EventSpec("Normal", "RolloutStep", f"{label} holds"))
        status = r.model_copy(update={"weight": traffic.weight, "step_started": started})
        verdict, reason, figures = self.fresh_analysis(status)
        status = status.model_copy(update={"analysis": figures})
        if verdict == Verdict.FAIL:
            return (
                status.model_copy(update={"analysis_reason": reason.value if reason else None}),
                False,
                None,
                events,
                figures,
            )
        began = parse_time(started) or self.now
        left = pause - (self.now - began).total_seconds()
        done = left <= 0 and verdict == Verdict.PASS
        # No countdown in the message: an idle resync must find nothing to write.
        end = (began + dt.timedelta(seconds=pause)).astimezone(dt.UTC)
        text = f"{label} until {end.strftime('%H:%M:%SZ')}"
        if left <= 0:
            text = f"{label}: pause over, waiting for a passing analysis"
        status = status.model_copy(update={"message": text})
        interval = duration_seconds(self.spec.analysis.interval)
        requeue = max(1.0, left) if left > 0 else float(interval)
        return status, done, requeue, events, None

    def shadow(self, r: RolloutStatus) -> RolloutDecision:
        percent = self.spec.shadow_settings().percent
        replicas = candidate_replicas(self.total, percent)
        traffic = self.traffic(r, replicas=replicas, live=False, weight=0)
        held = _rolled_out(self.i.candidate, self.i.wanted_key, replicas)
        label = f"{percent}% copied"
        status, done, requeue, events, failed = self.hold(
            r,
            pause=duration_seconds(self.spec.shadow_settings().duration),
            label=label,
            traffic=traffic,
            held=held,
        )
        if failed is not None:
            return self.rollback(status, _reason(status), failed.message, failed)
        if done:
            nxt = status.model_copy(
                update={
                    "phase": RolloutPhase.CANARY,
                    "step": 0,
                    "step_started": None,
                    "message": "shadow passed; starting the canary steps",
                }
            )
            passed = "shadow passed" + _figures_text(status.analysis)
            return _after([*events, EventSpec("Normal", "ShadowPassed", passed)], self.canary(nxt))
        return self.active(
            status,
            traffic,
            Reason.SHADOWING if held else Reason.CANDIDATE_STARTING,
            events,
            requeue,
        )

    def canary(self, r: RolloutStatus) -> RolloutDecision:
        steps = self.spec.steps
        index = min(r.step, len(steps) - 1)
        step = steps[index]
        replicas = candidate_replicas(self.total, step.weight)
        held = _rolled_out(self.i.candidate, self.i.wanted_key, replicas)
        weight = step.weight if held else min(r.weight, step.weight)
        if not _rolled_out(self.i.candidate, self.i.wanted_key, 1):
            weight = 0  # never route to a candidate with no ready pod at its artifact
        traffic = self.traffic(r, replicas=replicas, live=True, weight=weight, held=held)
        label = f"step {index + 1}/{len(steps)} at {step.weight}%"
        status, done, requeue, events, failed = self.hold(
            r.model_copy(update={"step": index}),
            pause=duration_seconds(step.pause),
            label=label,
            traffic=traffic,
            held=held,
        )
        if failed is not None:
            return self.rollback(status, _reason(status), failed.message, failed)
        if done:
            if index + 1 >= len(steps):
                return self.promote(status, Reason.ROLLOUT_PROMOTED, "all steps passed")
            nxt = status.model_copy(update={"step": index + 1, "step_started": None})
            return _after(events, self.canary(nxt))
        return self.active(
            status,
            traffic,
            Reason.CANARY_STEP if held else Reason.CANDIDATE_STARTING,
            events,
            requeue,
        )

    def traffic(
        self, r: RolloutStatus, *, replicas: int, live: bool, weight: int, held: bool = False
    ) -> Traffic:
        shadow_percent = (
            self.spec.shadow_settings().percent
            if self.spec.strategy == RolloutStrategy.SHADOW_THEN_CANARY
            else 0
        )
        stable_replicas = None
        if live and not self.gateway and held:
            # The candidate holds its share: stable gives up the replicas it took over.
            stable_replicas = max(1, self.total - math.floor(self.total * weight / 100))
        return Traffic(
            candidate_key=self.i.wanted_key,
            candidate_digest=self.i.wanted_digest,
            candidate_replicas=replicas,
            candidate_live=live,
            stable_replicas=stable_replicas,
            weight=weight,
            shadow_percent=shadow_percent,
        )

    def split_condition(
        self, traffic: Traffic
    ) -> tuple[ConditionType, ConditionStatus, Reason, str]:
        if self.gateway:
            return (
                ConditionType.TRAFFIC_SPLIT,
                ConditionStatus.TRUE,
                Reason.GATEWAY_ROUTE,
                f"HTTPRoute sends {traffic.weight}% to the candidate",
            )
        stable = traffic.stable_replicas or self.total
        share = 0
        if traffic.candidate_live and traffic.weight:
            share = round(100 * traffic.candidate_replicas / (traffic.candidate_replicas + stable))
        return (
            ConditionType.TRAFFIC_SPLIT,
            ConditionStatus.TRUE,
            Reason.REPLICA_RATIO,
            f"approximate: {share}% of the ready pods behind the Service are the "
            f"candidate's (weight {traffic.weight}%); "
            "set spec.gateway for exact weights",
        )

    def active(
        self,
        status: RolloutStatus,
        traffic: Traffic,
        reason: Reason,
        events: list[EventSpec],
        requeue: float | None,
    ) -> RolloutDecision:
        message = f"{status.phase.value} {status.message}"[:_MESSAGE_MAX]
        status = status.model_copy(update={"message": message})
        return RolloutDecision(
            stable_key=status.stable.key if status.stable else self.i.serving_key,
            stable_digest=status.stable.digest if status.stable else self.i.serving_digest,
            traffic=traffic,
            status=status,
            conditions=[
                (ConditionType.PROGRESSING, ConditionStatus.TRUE, reason, message),
                (ConditionType.PROMOTED, ConditionStatus.FALSE, reason, message),
                self.split_condition(traffic),
            ],
            events=events,
            requeue_after=requeue,
            ready=(
                ConditionStatus.FALSE,
                reason,
                f"rolling out artifact {self.i.wanted_key}: {message}",
            ),
        )

    def promote(self, r: RolloutStatus, reason: Reason, why: str) -> RolloutDecision:
        status = r.model_copy(
            update={
                "phase": RolloutPhase.PROMOTED,
                "weight": 100,
                "step_started": None,
                "message": f"Promoted {self.i.wanted_key}: {why}",
            }
        )
        decision = self.promoted(status)
        event = EventSpec(
            "Normal",
            reason.value,
            f"artifact {self.i.wanted_key} promoted: {why}" + _figures_text(r.analysis),
        )
        return _after([event], decision)

    def promoted(self, r: RolloutStatus) -> RolloutDecision:
        """Stable moves to the candidate's artifact; the candidate keeps its pods (and its
        share) until stable has rolled out, then it is removed."""
        i = self.i
        done = _rolled_out(i.stable, i.wanted_key, 1)
        traffic = Traffic()
        if not done:
            traffic = Traffic(
                candidate_key=i.wanted_key,
                candidate_digest=i.wanted_digest,
                candidate_replicas=i.candidate.desired if i.candidate else 1,
                candidate_live=True,
                weight=0,
            )
        conditions = self.end_conditions(r)
        return RolloutDecision(
            stable_key=i.wanted_key,
            stable_digest=i.wanted_digest,
            traffic=traffic,
            status=r,
            conditions=conditions,
        )

    def rollback(
        self, r: RolloutStatus, reason: Reason, why: str, figures: AnalysisFigures | None
    ) -> RolloutDecision:
        message = f"RolledBack {self.i.wanted_key}: {why}"[:_MESSAGE_MAX]
        status = r.model_copy(
            update={
                "phase": RolloutPhase.ROLLED_BACK,
                "weight": 0,
                "step_started": None,
                "message": message,
                "analysis_reason": reason.value,
                "analysis": figures or r.analysis,
            }
        )
        decision = self.rolled_back_record(status)
        return _after([EventSpec("Warning", reason.value, message)], decision)


def _after(events: list[EventSpec], decision: RolloutDecision) -> RolloutDecision:
    """`decision` with `events` posted before its own."""
    return dataclasses.replace(decision, events=[*events, *decision.events])


def _reason(status: RolloutStatus) -> Reason:
    try:
        return Reason(status.analysis_reason or "")
    except ValueError:
        return Reason.ROLLED_BACK


def _no_figures(now: str) -> AnalysisFigures:
    return AnalysisFigures(time=now, verdict=Verdict.WAIT.value, message="no analysis yet")


def decide(md: ModelDeployment, inputs: RolloutInputs) -> RolloutDecision:
    """This cycle's rollout decision for `md`."""
    return _Decider(md, inputs).decide()


def decide_for(
    md: ModelDeployment,
    facts: Facts,
    observed: Observed,
    state: RenderState,
    *,
    now: str,
    analysis: Analysis | None = None,
) -> RolloutDecision:
    """`decide` with its inputs read from the reconciler's facts and observed children
    (`state`: what a plain replace would render)."""
    status = md.status
    wanted = facts.wanted_key
    recorded = status.rollout if status else None
    known = [
        facts.summary,
        recorded.candidate if recorded else None,
        recorded.stable if recorded else None,
        status.artifact if status else None,
    ]
    if state.serving_key:
        known.insert(0, ArtifactRef(key=state.serving_key, digest=state.serving_digest))

    def digest_of(key: str | None) -> str | None:
        return next((a.digest for a in known if a and a.key == key and a.digest), None)

    candidate = observed.named(DEPLOYMENT, candidate_name(md.metadata.name))
    if candidate is not None and not controlled_by(candidate, md.metadata.uid):
        candidate = None
    inputs = RolloutInputs(
        wanted_key=wanted,
        wanted_digest=digest_of(wanted),
        wanted_built=facts.wanted_built,
        serving_key=facts.serving_key,
        serving_digest=digest_of(facts.serving_key),
        stable=facts.deployment,
        candidate=deployment_facts(candidate) if candidate is not None else None,
        now=now,
        analysis=analysis,
    )
    return decide(md, inputs)
