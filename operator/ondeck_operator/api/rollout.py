"""Progressive delivery in the ModelDeployment API: `spec.rollout` (how a new artifact
replaces the served one: at once, as a canary, or first in shadow), `spec.gateway` (the
Gateway API parents an HTTPRoute splits traffic under), and `status.rollout` (where a
rollout stands and what its last analysis measured).

Durations are Go-style strings (`30s`, `2m`, `1h30m`) as in Argo Rollouts and Flagger;
`duration_seconds` reads them. Pure definitions: no I/O, no kopf, no kubernetes. Deciding
what a rollout does next is `ondeck_operator.reconcile.rollout`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, JsonValue, StringConstraints

from ondeck_operator.api.fields import (
    DNS_LABEL_RE,
    DURATION_RE,
    HTTP_URL_RE,
    PROM_LABEL_RE,
    ApiModel,
    ObjectName,
)
from ondeck_operator.api.rules import Rule

__all__ = [
    "DURATION_RE",
    "AnalysisFigures",
    "AnalysisSpec",
    "ArtifactRef",
    "Duration",
    "GatewaySpec",
    "ParentRef",
    "PrometheusSpec",
    "RolloutPhase",
    "RolloutSpec",
    "RolloutStatus",
    "RolloutStep",
    "RolloutStrategy",
    "ShadowSpec",
    "duration_seconds",
]

_DURATION = re.compile(DURATION_RE)
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}

Duration = Annotated[str, StringConstraints(min_length=2, max_length=24, pattern=DURATION_RE)]


def duration_seconds(text: str) -> int:
    """Seconds in a duration string (`1h30m` is 5400); ValueError when it is not one."""
    if not text or not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 2m or 1h30m")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in re.findall(r"([0-9]+)([hms])", text))


class RolloutStrategy(StrEnum):
    """How a newly built artifact takes over from the served one."""

    #: A rolling update of the one Deployment as soon as the artifact passed its gate.
    REPLACE = "replace"
    #: A candidate Deployment takes growing shares of the traffic (`steps`), judged by the
    #: analysis at each interval; promoted after the last step, rolled back at a breach.
    CANARY = "canary"
    #: First the stable pods copy a share of their requests to the candidate (which
    #: answers no caller) and the answers are compared; then the canary steps.
    SHADOW_THEN_CANARY = "shadow-then-canary"


class RolloutPhase(StrEnum):
    """`status.rollout.phase`."""

    SHADOW = "Shadow"
    CANARY = "Canary"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


class RolloutStep(ApiModel):
    """One canary step: route `weight` percent to the candidate, then hold for `pause`."""

    weight: int = Field(ge=1, le=99, description="Percent of requests sent to the candidate.")
    pause: Duration = Field(
        default="1m",
        description="How long the step holds (analysed every interval) before the next one.",
    )


class ShadowSpec(ApiModel):
    """The shadow phase of shadow-then-canary: stable copies requests to the candidate."""

    percent: int = Field(
        default=100, ge=1, le=100, description="Percent of stable's requests copied."
    )
    duration: Duration = Field(default="5m", description="How long the shadow phase lasts.")


class PrometheusSpec(ApiModel):
    """Read the analysis figures from a Prometheus that scrapes the server pods, instead of
    scraping the pods from the operator."""

    url: str = Field(
        pattern=HTTP_URL_RE,
        max_length=2048,
        description="Base URL of the Prometheus HTTP API (the operator queries "
        "<url>/api/v1/query), e.g. http://prometheus.monitoring.svc:9090.",
    )
    pod_label: str = Field(
        default="pod",
        max_length=128,
        pattern=PROM_LABEL_RE,
        description="The series label that holds the pod's name.",
    )
    namespace_label: str = Field(
        default="namespace",
        max_length=128,
        pattern=PROM_LABEL_RE,
        description="The series label that holds the pod's namespace.",
    )


class AnalysisSpec(ApiModel):
    """The thresholds each interval's figures are judged by (the servers' own metrics)."""

    interval: Duration = Field(default="30s", description="How often the figures are judged.")
    max_error_rate: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Highest fraction of the candidate's requests that may fail (5xx).",
    )
    max_latency_ratio: float = Field(
        default=1.5,
        ge=1.0,
        le=100.0,
        description="Highest p95 latency of the candidate over the stable's p95.",
    )
    min_agreement: float = Field(
        default=0.99,
        ge=0.0,
        le=1.0,
        description="Lowest fraction of shadow copies whose answer agrees with stable's.",
    )
    min_requests: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="Fewest candidate requests (or shadow copies) in an interval for a "
        "verdict; fewer and the step waits.",
    )
    prometheus: PrometheusSpec | None = Field(
        default=None,
        description="Take the figures from this Prometheus (increase() and "
        "histogram_quantile() over each interval) instead of the pods' /metrics.",
    )


MAX_STEPS = 16
_DEFAULT_STEPS: list[JsonValue] = [{"weight": 10, "pause": "1m"}, {"weight": 50, "pause": "1m"}]


class RolloutSpec(ApiModel):
    """How a new artifact replaces the served one."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="steps",
            cel="!has(self.steps) || ["
            + ", ".join(str(k) for k in range(1, MAX_STEPS))
            + "].all(k, k >= size(self.steps) || self.steps[k - 1].weight < self.steps[k].weight)",
            message="steps weights must grow from one step to the next",
            check=lambda m: all(
                a.weight < b.weight for a, b in zip(m.steps, m.steps[1:], strict=False)
            ),
        ),
        Rule(
            field="shadow",
            cel="!has(self.shadow) || (has(self.strategy) && "
            "self.strategy == 'shadow-then-canary')",
            message="shadow settings need strategy shadow-then-canary",
            check=lambda m: m.shadow is None or m.strategy == RolloutStrategy.SHADOW_THEN_CANARY,
        ),
    )

    strategy: RolloutStrategy = Field(
        default=RolloutStrategy.REPLACE, description="replace, canary or shadow-then-canary."
    )
    steps: list[RolloutStep] = Field(
        default_factory=lambda: [RolloutStep.model_validate(s) for s in _DEFAULT_STEPS],
        min_length=1,
        max_length=MAX_STEPS,
        json_schema_extra={"default": _DEFAULT_STEPS},
        description="Canary steps, weights growing; after the last the candidate is promoted.",
    )
    shadow: ShadowSpec | None = Field(
        default=None,
        description="The shadow phase (shadow-then-canary); 100 percent for 5m when omitted.",
    )
    analysis: AnalysisSpec = Field(
        default_factory=AnalysisSpec,
        json_schema_extra={"default": {}},
        description="Thresholds of the automatic promote or rollback.",
    )

    def shadow_settings(self) -> ShadowSpec:
        return self.shadow or ShadowSpec()


class ParentRef(ApiModel):
    """A Gateway (gateway.networking.k8s.io) the HTTPRoute attaches to."""

    name: ObjectName = Field(description="Name of the Gateway.")
    namespace: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL_RE,
        description="Its namespace; the ModelDeployment's when omitted.",
    )
    section_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_LABEL_RE,
        description="A listener of the Gateway.",
    )


class GatewaySpec(ApiModel):
    """Route through an existing Gateway with an HTTPRoute whose backendRefs carry exact
    weights (stable and candidate Services) during a canary."""

    parent_refs: list[ParentRef] = Field(
        min_length=1, max_length=32, description="The Gateways the HTTPRoute attaches to."
    )
    hostnames: list[Annotated[str, StringConstraints(max_length=253)]] | None = Field(
        default=None, max_length=16, description="Host names the route matches; all if omitted."
    )


# ------------------------------------------------------------------- status


class _Status(ApiModel):
    # Status is written by the operator; tolerate fields from newer operators.
    model_config = ConfigDict(extra="ignore")


class ArtifactRef(_Status):
    """One artifact of a rollout."""

    key: str = Field(description="Artifact key.")
    digest: str | None = Field(default=None, description="Content digest, when known.")


class AnalysisFigures(_Status):
    """What one analysis measured over its interval, and its verdict."""

    time: str = Field(description="When it was judged (RFC 3339).")
    verdict: str = Field(description="Pass, Fail or Wait.")
    message: str = Field(default="", description="Why, in words.")
    candidate_requests: int = Field(default=0, description="Candidate requests counted.")
    stable_requests: int = Field(default=0, description="Stable requests counted.")
    error_rate: float | None = Field(default=None, description="Candidate's failed fraction.")
    latency_ratio: float | None = Field(
        default=None, description="Candidate p95 latency over stable's."
    )
    shadow_requests: int = Field(default=0, description="Shadow copies compared.")
    agreement: float | None = Field(
        default=None, description="Fraction of shadow copies that agreed."
    )


class RolloutStatus(_Status):
    """Where a rollout stands."""

    phase: RolloutPhase = Field(description="Shadow, Canary, Promoted or RolledBack.")
    stable: ArtifactRef | None = Field(default=None, description="The artifact serving.")
    candidate: ArtifactRef | None = Field(default=None, description="The artifact on trial.")
    step: int = Field(default=0, description="Index of the current canary step.")
    weight: int = Field(default=0, description="Percent of requests the candidate gets now.")
    step_started: str | None = Field(
        default=None, description="When the current step (or shadow phase) began holding."
    )
    split: str | None = Field(
        default=None, description="Gateway (exact weights) or ReplicaRatio (approximate)."
    )
    analysis: AnalysisFigures | None = Field(default=None, description="The last analysis.")
    analysis_reason: str | None = Field(
        default=None, description="Reason of the breach that rolled the candidate back."
    )
    command_at_start: str = Field(
        default="",
        description="The ondeck.io/rollout annotation when this rollout began; that value "
        "is ignored (it was meant for an earlier rollout).",
    )
    message: str = Field(default="", description="The state in words (kubectl get md).")
