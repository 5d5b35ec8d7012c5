"""The analysis figures from Prometheus (pure): the PromQL queries of one interval and
the reading of their answers (`/api/v1/query`) into `analysis.Figures`.

Stable and candidate pods are told apart by their Kubernetes labels (the operator lists
them, as for scraping) and selected in PromQL by name: `{<namespaceLabel>="<ns>",
<podLabel>=~"<pod>|<pod>"}`. Over the interval `[W]` (seconds since the last judgment):

- requests: `sum(increase(ondeck_requests_total{sel}[W]))`
- errors: `sum(increase(ondeck_requests_total{sel,code=~"5.."}[W]))`
- p95: `histogram_quantile(0.95, sum by (le)
  (increase(ondeck_request_duration_seconds_bucket{sel}[W])))`
- shadow copies: `sum by (result) (increase(ondeck_shadow_requests_total{stable sel}[W]))`

`increase()` extrapolates to the window's ends as Prometheus does (counts are rounded),
and sees nothing of a series born inside the window (a pod's first requests); the
ratios (error rate, latency ratio, agreement) do not depend on the extrapolation.

What this module does NOT do: send the queries (`runtime.rollouts`), judge the figures
(`analysis.judge`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ondeck_operator.api.rollout import PrometheusSpec
from ondeck_operator.reconcile.analysis import (
    DURATION,
    REQUESTS,
    SHADOW,
    SHADOW_AGREE,
    SHADOW_DISAGREE,
    SHADOW_FAILED,
    Figures,
)

__all__ = [
    "STABLE_SHADOW",
    "PrometheusError",
    "figures",
    "queries",
    "read_vector",
    "selector",
]

_POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
#: The query of the shadow copies (by result) on the stable pods.
STABLE_SHADOW = "stable_shadow"


class PrometheusError(ValueError):
    """An answer of the Prometheus HTTP API that is an error or not a vector."""


def _pods_regex(pods: Iterable[str]) -> str:
    names = sorted(set(pods))
    for name in names:
        if not _POD_NAME.match(name):
            raise ValueError(f"{name!r} is not a pod name")
    # A PromQL string literal: the regex's backslash is itself escaped.
    return "|".join(name.replace(".", "\\\\.") for name in names)


def selector(prometheus: PrometheusSpec, namespace: str, pods: Iterable[str]) -> str:
    """The series of these pods, e.g. `namespace="ml",pod=~"iris-1|iris-2"` (no braces)."""
    return (
        f'{prometheus.namespace_label}="{namespace}",{prometheus.pod_label}=~"{_pods_regex(pods)}"'
    )


def queries(
    prometheus: PrometheusSpec,
    namespace: str,
    *,
    stable: Iterable[str],
    candidate: Iterable[str],
    window_seconds: int,
) -> dict[str, str]:
    """Name → PromQL of one interval; a track without pods has no queries."""
    window = f"[{max(1, window_seconds)}s]"
    out: dict[str, str] = {}
    for track, pods in (("stable", list(stable)), ("candidate", list(candidate))):
        if not pods:
            continue
        sel = selector(prometheus, namespace, pods)
        out[f"{track}_requests"] = f"sum(increase({REQUESTS}_total{{{sel}}}{window}))"
        out[f"{track}_errors"] = f'sum(increase({REQUESTS}_total{{{sel},code=~"5.."}}{window}))'
        out[f"{track}_p95"] = (
            f"histogram_quantile(0.95, sum by (le) (increase({DURATION}_bucket{{{sel}}}{window})))"
        )
        if track == "stable":
            out[STABLE_SHADOW] = f"sum by (result) (increase({SHADOW}_total{{{sel}}}{window}))"
    return out


def read_vector(doc: Any) -> list[tuple[dict[str, str], float]]:
    """The (labels, value) pairs of an instant query's answer; PrometheusError when the
    answer is an error or not an instant vector."""
    if not isinstance(doc, dict):
        raise PrometheusError("the answer is not a JSON object")
    if doc.get("status") != "success":
        what = doc.get("errorType") or "error"
        raise PrometheusError(f"{what}: {doc.get('error') or 'status ' + str(doc.get('status'))}")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        kind = data.get("resultType") if isinstance(data, dict) else None
        raise PrometheusError(f"expected an instant vector, got {kind!r}")
    out: list[tuple[dict[str, str], float]] = []
    for item in data.get("result") or []:
        try:
            labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
            out.append((labels, float(item["value"][1])))
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise PrometheusError(f"a malformed sample {item!r}") from exc
    return out


def _one(vector: list[tuple[dict[str, str], float]] | None) -> float | None:
    """A `sum(...)` answer's value; None when empty or NaN (no data)."""
    if not vector:
        return None
    value = vector[0][1]
    return None if math.isnan(value) else value


def _count(vector: list[tuple[dict[str, str], float]] | None) -> int:
    value = _one(vector)
    return 0 if value is None else round(value)


def figures(answers: Mapping[str, list[tuple[dict[str, str], float]]]) -> Figures:
    """The figures of one interval from the answers to `queries()` (by name; a query that
    was not asked counts as no data)."""
    shadow: dict[str, float] = {}
    for labels, value in answers.get(STABLE_SHADOW) or []:
        if not math.isnan(value):
            result = labels.get("result", "")
            shadow[result] = shadow.get(result, 0.0) + value
    candidate_requests = _count(answers.get("candidate_requests"))
    stable_requests = _count(answers.get("stable_requests"))
    return Figures(
        candidate_requests=candidate_requests,
        candidate_errors=min(candidate_requests, _count(answers.get("candidate_errors"))),
        stable_requests=stable_requests,
        candidate_p95=_one(answers.get("candidate_p95")) if candidate_requests else None,
        stable_p95=_one(answers.get("stable_p95")) if stable_requests else None,
        shadow_agree=round(shadow.get(SHADOW_AGREE, 0.0)),
        shadow_disagree=round(shadow.get(SHADOW_DISAGREE, 0.0)),
        shadow_failed=round(shadow.get(SHADOW_FAILED, 0.0)),
    )
