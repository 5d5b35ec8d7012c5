"""The analysis of a rollout, from the servers' own metrics (pure).

`parse_sample(text)` reads one pod's Prometheus exposition (`/metrics` of `ondeck-server
serve`) into a `PodSample`; `interval_figures(before, after)` turns two scrapes of the
stable and candidate pods into the figures of that interval (counter deltas per pod, a
restarted pod's counters counted from zero, as Prometheus' `increase` does); `judge()`
gives the verdict: Wait (too few requests to tell), Fail (a threshold is breached, with
the reason) or Pass.

The figures: the candidate's error rate (5xx answers over its answers), the ratio of the
candidate's p95 latency to the stable's (from the request-duration histograms, the
bucket interpolation of PromQL's `histogram_quantile`), and the agreement of shadow copies
(`ondeck_shadow_requests_total{result}` on the stable pods: agree, disagree, failed; a
failed copy is a candidate error).

What this module does NOT do: scrape (the runtime does), read the clock, or decide what a
verdict does to the rollout (`reconcile.rollout`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from prometheus_client.parser import text_string_to_metric_families

from ondeck_operator.api.constants import Reason
from ondeck_operator.api.rollout import AnalysisFigures, AnalysisSpec

__all__ = [
    "Figures",
    "PodSample",
    "Snapshot",
    "Verdict",
    "interval_figures",
    "judge",
    "parse_sample",
    "quantile",
]

REQUESTS = "ondeck_requests"
DURATION = "ondeck_request_duration_seconds"
SHADOW = "ondeck_shadow_requests"
#: `ondeck_shadow_requests_total{result}` values (the server's `shadow` module writes them).
SHADOW_AGREE = "agree"
SHADOW_DISAGREE = "disagree"
SHADOW_FAILED = "failed"


class Verdict(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    WAIT = "Wait"


@dataclass(frozen=True)
class PodSample:
    """One pod's counters at one scrape (all cumulative since the server started)."""

    requests: float = 0.0
    errors: float = 0.0
    #: (upper bound, cumulative count) of the request-duration histogram, bounds rising.
    buckets: tuple[tuple[float, float], ...] = ()
    shadow: Mapping[str, float] = field(default_factory=dict)


#: Pod name → sample, for the pods of one track (stable or candidate).
Snapshot = Mapping[str, PodSample]


def parse_sample(text: str) -> PodSample:
    """The counters the analysis reads from one `/metrics` page; ValueError when it is no
    Prometheus text exposition."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    shadow: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{REQUESTS}_total":
                requests += sample.value
                if sample.labels.get("code", "").startswith("5"):
                    errors += sample.value
            elif sample.name == f"{DURATION}_bucket":
                bound = float(sample.labels.get("le", "+Inf"))
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == f"{SHADOW}_total":
                result = sample.labels.get("result", "")
                shadow[result] = shadow.get(result, 0.0) + sample.value
    return PodSample(
        requests=requests, errors=errors, buckets=tuple(sorted(buckets.items())), shadow=shadow
    )


def _increase(before: float, after: float) -> float:
    # A counter that went down belongs to a restarted server: all of it is new.
    return after if after < before else after - before


def _delta(before: PodSample | None, after: PodSample) -> PodSample:
    if before is None:
        return PodSample()  # a pod first seen now: its past is not this interval's
    restarted = after.requests < before.requests
    old = PodSample() if restarted else before
    old_buckets = dict(old.buckets)
    return PodSample(
        requests=_increase(old.requests, after.requests),
        errors=_increase(old.errors, after.errors),
        buckets=tuple((b, _increase(old_buckets.get(b, 0.0), c)) for b, c in after.buckets),
        shadow={r: _increase(old.shadow.get(r, 0.0), v) for r, v in after.shadow.items()},
    )


def _sum(samples: list[PodSample]) -> PodSample:
    buckets: dict[float, float] = {}
    shadow: dict[str, float] = {}
    for s in samples:
        for bound, count in s.buckets:
            buckets[bound] = buckets.get(bound, 0.0) + count
        for result, count in s.shadow.items():
            shadow[result] = shadow.get(result, 0.0) + count
    return PodSample(
        requests=sum(s.requests for s in samples),
        errors=sum(s.errors for s in samples),
        buckets=tuple(sorted(buckets.items())),
        shadow=shadow,
    )


def _interval(before: Snapshot, after: Snapshot) -> PodSample:
    return _sum([_delta(before.get(pod), sample) for pod, sample in sorted(after.items())])


def quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated inside its bucket as PromQL's
    `histogram_quantile` does; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # past the last finite bucket: its bound, as PromQL
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(frozen=True)
class Figures:
    """One interval, both tracks."""

    candidate_requests: int
    candidate_errors: int
    stable_requests: int
    candidate_p95: float | None
    stable_p95: float | None
    shadow_agree: int
    shadow_disagree: int
    shadow_failed: int

    @property
    def shadow_requests(self) -> int:
        return self.shadow_agree + self.shadow_disagree + self.shadow_failed

    @property
    def error_rate(self) -> float | None:
        return self.candidate_errors / self.candidate_requests if self.candidate_requests else None

    @property
    def latency_ratio(self) -> float | None:
        if self.candidate_p95 is None or not self.stable_p95:
            return None
        return self.candidate_p95 / self.stable_p95

    @property
    def agreement(self) -> float | None:
        compared = self.shadow_agree + self.shadow_disagree
        return self.shadow_agree / compared if compared else None


def interval_figures(
    *,
    stable_before: Snapshot,
    stable_after: Snapshot,
    candidate_before: Snapshot,
    candidate_after: Snapshot,
) -> Figures:
    """The figures of the interval between two scrapes of both tracks."""
    stable = _interval(stable_before, stable_after)
    candidate = _interval(candidate_before, candidate_after)
    return Figures(
        candidate_requests=round(candidate.requests),
        candidate_errors=round(candidate.errors),
        stable_requests=round(stable.requests),
        candidate_p95=quantile(0.95, candidate.buckets) if candidate.requests else None,
        stable_p95=quantile(0.95, stable.buckets) if stable.requests else None,
        shadow_agree=round(stable.shadow.get(SHADOW_AGREE, 0.0)),
        shadow_disagree=round(stable.shadow.get(SHADOW_DISAGREE, 0.0)),
        shadow_failed=round(stable.shadow.get(SHADOW_FAILED, 0.0)),
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def judge(
    figures: Figures, analysis: AnalysisSpec, *, shadow: bool, now: str
) -> tuple[Verdict, Reason | None, AnalysisFigures]:
    """The verdict of one interval. In the shadow phase (`shadow`) the shadow copies are
    judged (agreement, and failed copies as the candidate's errors); in the canary steps
    the candidate's own answers (error rate, latency ratio), plus the agreement when the
    stable pods still copy requests."""

    def report(verdict: Verdict, message: str) -> AnalysisFigures:
        return AnalysisFigures(
            time=now,
            verdict=verdict.value,
            message=message,
            candidate_requests=figures.candidate_requests,
            stable_requests=figures.stable_requests,
            error_rate=figures.error_rate,
            latency_ratio=figures.latency_ratio,
            shadow_requests=figures.shadow_requests,
            agreement=figures.agreement,
        )

    minimum = analysis.min_requests
    if shadow:
        counted = figures.shadow_requests
        if counted < minimum:
            return (
                Verdict.WAIT,
                None,
                report(Verdict.WAIT, f"{counted} shadow copies, fewer than minRequests {minimum}"),
            )
        failed_rate = figures.shadow_failed / counted
        if failed_rate > analysis.max_error_rate:
            return (
                Verdict.FAIL,
                Reason.ERROR_RATE_EXCEEDED,
                report(
                    Verdict.FAIL,
                    f"{figures.shadow_failed} of {counted} shadow copies failed "
                    f"({failed_rate:.3f} > maxErrorRate {analysis.max_error_rate})",
                ),
            )
    else:
        counted = figures.candidate_requests
        if counted < minimum:
            return (
                Verdict.WAIT,
                None,
                report(
                    Verdict.WAIT, f"{counted} candidate requests, fewer than minRequests {minimum}"
                ),
            )
        rate = figures.error_rate or 0.0
        if rate > analysis.max_error_rate:
            return (
                Verdict.FAIL,
                Reason.ERROR_RATE_EXCEEDED,
                report(
                    Verdict.FAIL,
                    f"error rate {rate:.3f} > maxErrorRate {analysis.max_error_rate} "
                    f"({figures.candidate_errors} of {counted} candidate requests failed)",
                ),
            )
        ratio = figures.latency_ratio
        if ratio is not None and ratio > analysis.max_latency_ratio:
            return (
                Verdict.FAIL,
                Reason.LATENCY_RATIO_EXCEEDED,
                report(
                    Verdict.FAIL,
                    f"p95 latency ratio {ratio:.2f} > maxLatencyRatio {analysis.max_latency_ratio} "
                    f"(candidate {_fmt(figures.candidate_p95)}s, "
                    f"stable {_fmt(figures.stable_p95)}s)",
                ),
            )
    agreement = figures.agreement
    compared = figures.shadow_agree + figures.shadow_disagree
    if agreement is not None and compared >= minimum and agreement < analysis.min_agreement:
        return (
            Verdict.FAIL,
            Reason.AGREEMENT_TOO_LOW,
            report(
                Verdict.FAIL,
                f"agreement {agreement:.3f} < minAgreement {analysis.min_agreement} "
                f"({figures.shadow_disagree} of {compared} shadow answers differ)",
            ),
        )
    return (
        Verdict.PASS,
        None,
        report(
            Verdict.PASS,
            f"{counted} requests: error rate {_fmt(figures.error_rate)}, latency ratio "
            f"{_fmt(figures.latency_ratio)}, agreement {_fmt(agreement)}",
        ),
    )
