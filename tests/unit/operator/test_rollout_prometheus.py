"""The analysis figures from Prometheus, pure parts (`reconcile.promql`): the queries of
one interval, the reading of `/api/v1/query` answers, and the figures they give, judged
as the scraped ones are. Against a real Prometheus: tests/e2e/test_rollout_prometheus.py."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ondeck_operator.api.rollout import AnalysisSpec, PrometheusSpec
from ondeck_operator.reconcile.analysis import Verdict, judge
from ondeck_operator.reconcile.promql import (
    STABLE_SHADOW,
    PrometheusError,
    figures,
    queries,
    read_vector,
    selector,
)

PROM = PrometheusSpec(url="http://prometheus.monitoring:9090")


def test_the_queries_select_each_tracks_pods_over_the_interval() -> None:
    asked = queries(
        PROM, "ml", stable=["iris-7d9-b", "iris-7d9-a"], candidate=["iris-canary-5f-x"],
        window_seconds=30,
    )  # fmt: skip
    stable = 'namespace="ml",pod=~"iris-7d9-a|iris-7d9-b"'
    candidate = 'namespace="ml",pod=~"iris-canary-5f-x"'
    assert asked == {
        "stable_requests": f"sum(increase(ondeck_requests_total{{{stable}}}[30s]))",
        "stable_errors": f'sum(increase(ondeck_requests_total{{{stable},code=~"5.."}}[30s]))',
        "stable_p95": "histogram_quantile(0.95, sum by (le) "
        f"(increase(ondeck_request_duration_seconds_bucket{{{stable}}}[30s])))",
        STABLE_SHADOW: f"sum by (result) (increase(ondeck_shadow_requests_total{{{stable}}}[30s]))",
        "candidate_requests": f"sum(increase(ondeck_requests_total{{{candidate}}}[30s]))",
        "candidate_errors": f'sum(increase(ondeck_requests_total{{{candidate},code=~"5.."}}[30s]))',
        "candidate_p95": "histogram_quantile(0.95, sum by (le) "
        f"(increase(ondeck_request_duration_seconds_bucket{{{candidate}}}[30s])))",
    }


def test_the_label_names_are_the_specs_and_dots_in_names_are_literal() -> None:
    prom = PrometheusSpec.model_validate(
        {"url": "http://p", "podLabel": "kubernetes_pod_name", "namespaceLabel": "kns"}
    )
    assert selector(prom, "ml", ["a.b"]) == 'kns="ml",kubernetes_pod_name=~"a\\\\.b"'


def test_a_track_without_pods_is_not_asked_and_a_window_is_at_least_a_second() -> None:
    asked = queries(PROM, "ml", stable=["s"], candidate=[], window_seconds=0)
    assert sorted(asked) == sorted(
        ["stable_requests", "stable_errors", "stable_p95", STABLE_SHADOW]
    )
    assert all("[1s]" in q for q in asked.values())


def test_a_name_that_is_no_pod_name_is_refused() -> None:
    with pytest.raises(ValueError, match="is not a pod name"):
        selector(PROM, "ml", ['x"} or vector(1) #'])


def vector(*samples: tuple[dict[str, str], float | str]) -> dict[str, Any]:
    """A Prometheus instant-query answer, as /api/v1/query writes it."""
    result = [{"metric": m, "value": [1764756000.0, str(v)]} for m, v in samples]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_answers_are_read_and_errors_named() -> None:
    assert read_vector(vector(({}, 12.5))) == [({}, 12.5)]
    assert read_vector(vector()) == []
    (nan,) = read_vector(vector(({}, "NaN")))
    assert math.isnan(nan[1])
    error = {"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'}
    with pytest.raises(PrometheusError, match='bad_data: parse error: unexpected "}"'):
        read_vector(error)
    matrix = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    with pytest.raises(PrometheusError, match="expected an instant vector, got 'matrix'"):
        read_vector(matrix)
    with pytest.raises(PrometheusError, match="malformed sample"):
        read_vector({"status": "success", "data": {"resultType": "vector", "result": [{}]}})


def test_figures_are_rounded_counts_and_nan_is_no_data() -> None:
    answers = {
        "stable_requests": read_vector(vector(({}, 41.7))),
        "stable_p95": read_vector(vector(({}, 0.004))),
        "candidate_requests": read_vector(vector(({}, 12.4))),
        "candidate_errors": read_vector(vector(({}, 3.1))),
        "candidate_p95": read_vector(vector(({}, "NaN"))),
        STABLE_SHADOW: read_vector(
            vector(({"result": "agree"}, 29.6), ({"result": "disagree"}, 10.2))
        ),
    }
    got = figures(answers)
    assert (got.stable_requests, got.candidate_requests, got.candidate_errors) == (42, 12, 3)
    assert (got.stable_p95, got.candidate_p95) == (0.004, None)
    assert (got.shadow_agree, got.shadow_disagree, got.shadow_failed) == (30, 10, 0)
    assert got.agreement == 0.75


def test_no_answers_wait_for_requests() -> None:
    got = figures({})
    assert (got.candidate_requests, got.stable_requests, got.shadow_requests) == (0, 0, 0)
    verdict, reason, report = judge(got, AnalysisSpec(), shadow=False, now="t")
    assert (verdict, reason) == (Verdict.WAIT, None)
    assert report.message == "0 candidate requests, fewer than minRequests 20"


def test_prometheus_figures_are_judged_as_scraped_ones() -> None:
    answers = {
        "stable_requests": read_vector(vector(({}, 100.0))),
        "stable_p95": read_vector(vector(({}, 0.010))),
        "candidate_requests": read_vector(vector(({}, 50.0))),
        "candidate_errors": read_vector(vector(({}, 5.0))),
        "candidate_p95": read_vector(vector(({}, 0.011))),
    }
    verdict, reason, report = judge(figures(answers), AnalysisSpec(), shadow=False, now="t")
    assert (verdict, reason) == (Verdict.FAIL, "ErrorRateExceeded")
    assert report.error_rate == 0.1
    assert report.latency_ratio == pytest.approx(1.1)
