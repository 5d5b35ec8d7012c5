"""Progressive delivery, pure parts: the `spec.rollout` API, the analysis of metrics
snapshots, and the rollout decisions of `reconcile.plan` walked cycle by cycle with the
children as the API server would hold them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.rollout import AnalysisSpec, duration_seconds
from ondeck_operator.api.spec import ModelDeployment, SpecError
from ondeck_operator.reconcile.analysis import (
    PodSample,
    Verdict,
    interval_figures,
    judge,
    parse_sample,
    quantile,
)
from ondeck_operator.reconcile.facts import Observed, pods_needed
from ondeck_operator.reconcile.kinds import DEPLOYMENT, HTTPROUTE, JOB, POD, SERVICE, kind_of
from ondeck_operator.reconcile.plan import Plan, plan
from ondeck_operator.reconcile.rollout import Analysis
from ondeck_operator.render.args import artifact_key
from ondeck_operator.render.names import job_name
from ondeck_operator.render.rollout import candidate_name, stable_service_name
from ondeck_server.serve.metrics import Metrics
from ondeck_server.serve.settings import FLAGS as SERVE_FLAGS
from ondeck_server.serve.settings import ServeSettings

from ..reconciler.builders import finished_job, held, md, observed_after, replace, summary

CONFIG = OperatorConfig()
T0 = "2026-11-22T10:00:00Z"


def at(seconds: int) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"2026-11-22T{10 + hours:02d}:{minutes:02d}:{secs:02d}Z"


def manifest(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "ondeck.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris"},
        "spec": spec,
    }


# ---------------------------------------------------------------------- API


def test_the_default_is_replace_with_two_steps_ready_for_a_canary() -> None:
    m = ModelDeployment.from_manifest(manifest({"model": {"uri": "m.onnx"}}))
    rollout = m.spec.rollout
    assert rollout.strategy.value == "replace"
    assert [(s.weight, s.pause) for s in rollout.steps] == [(10, "1m"), (50, "1m")]
    assert rollout.analysis.min_requests == 20
    assert rollout.shadow_settings().percent == 100


@pytest.mark.parametrize(
    ("rollout", "field", "words"),
    [
        ({"strategy": "canary", "steps": [{"weight": 50}, {"weight": 10}]},
         "spec.rollout.steps", "steps weights must grow"),
        ({"strategy": "canary", "steps": [{"weight": 20}, {"weight": 20}]},
         "spec.rollout.steps", "steps weights must grow"),
        ({"strategy": "canary", "shadow": {"percent": 10}},
         "spec.rollout.shadow", "shadow settings need strategy shadow-then-canary"),
        ({"strategy": "canary", "steps": [{"weight": 100}]},
         "spec.rollout.steps[0].weight", "less than or equal to 99"),
        ({"strategy": "canary", "steps": []}, "spec.rollout.steps", "at least 1"),
        ({"strategy": "canary", "steps": [{"weight": 5, "pause": "2x"}]},
         "spec.rollout.steps[0].pause", "a duration of hours, minutes and seconds"),
        ({"strategy": "blue-green"}, "spec.rollout.strategy", "replace"),
        ({"analysis": {"maxLatencyRatio": 0.5}}, "spec.rollout.analysis.maxLatencyRatio",
         "greater than or equal to 1"),
        ({"analysis": {"minRequests": 0}}, "spec.rollout.analysis.minRequests",
         "greater than or equal to 1"),
        ({"analysis": {"prometheus": {"url": "prometheus:9090"}}},
         "spec.rollout.analysis.prometheus.url", "an http:// or https:// URL"),
        ({"analysis": {"prometheus": {}}}, "spec.rollout.analysis.prometheus.url", "required"),
        ({"analysis": {"prometheus": {"url": "http://p:9090", "podLabel": "pod-name"}}},
         "spec.rollout.analysis.prometheus.podLabel", "a Prometheus label name"),
    ],
)  # fmt: skip
def test_bad_rollouts_are_refused_at_the_field(
    rollout: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(SpecError) as info:
        ModelDeployment.from_manifest(manifest({"model": {"uri": "m.onnx"}, "rollout": rollout}))
    assert any(p.startswith(f"{field}: ") and words in p for p in info.value.problems), (
        info.value.problems
    )


def test_shadow_is_refused_for_language_models() -> None:
    spec = {
        "model": {"uri": "hf://org/tiny", "format": "hf-causal-lm"},
        "rollout": {"strategy": "shadow-then-canary"},
    }
    with pytest.raises(SpecError) as info:
        ModelDeployment.from_manifest(manifest(spec))
    assert info.value.problems == [
        "spec.rollout: strategy shadow-then-canary does not apply to model.format "
        "hf-causal-lm (the language-model server copies no requests); use canary"
    ]
    spec["rollout"] = {"strategy": "canary"}
    ModelDeployment.from_manifest(manifest(spec))


def test_gateway_needs_a_parent() -> None:
    with pytest.raises(SpecError) as info:
        ModelDeployment.from_manifest(
            manifest({"model": {"uri": "m.onnx"}, "gateway": {"parentRefs": []}})
        )
    assert info.value.problems[0].startswith("spec.gateway.parentRefs: ")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("2m", 120), ("1h30m", 5400), ("1h2m3s", 3723)]
)
def test_durations(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "m", "1.5m", "-1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        duration_seconds(text)


# ---------------------------------------------------------------- analysis


def exposition(
    ok: int, failed: int = 0, seconds: float = 0.004, shadow: dict[str, int] | None = None
) -> str:
    """A real server's /metrics page after `ok` 200s and `failed` 500s."""
    metrics = Metrics()
    for _ in range(ok):
        metrics.observe_request("iris", "v2", 200, seconds)
    for _ in range(failed):
        metrics.observe_request("iris", "v2", 500, seconds)
    text = metrics.exposition().decode()
    for result, count in (shadow or {}).items():
        text += f'ondeck_shadow_requests_total{{result="{result}"}} {count}\n'
    return text


def test_a_real_servers_metrics_page_is_read() -> None:
    sample = parse_sample(exposition(30, 3, seconds=0.02))
    assert (sample.requests, sample.errors) == (33, 3)
    assert dict(sample.buckets)[0.025] == 33
    assert quantile(0.95, sample.buckets) == pytest.approx(0.01 + 0.015 * (31.35 / 33))


def test_quantile_of_nothing_is_none_and_past_the_last_bucket_is_its_bound() -> None:
    assert quantile(0.95, ()) is None
    assert quantile(0.95, ((1.0, 0.0), (float("inf"), 0.0))) is None
    assert quantile(0.5, ((1.0, 0.0), (float("inf"), 4.0))) == 1.0


def figures(*, stable: tuple[str, str], candidate: tuple[str, str]) -> Any:
    return interval_figures(
        stable_before={"s-1": parse_sample(stable[0])},
        stable_after={"s-1": parse_sample(stable[1])},
        candidate_before={"c-1": parse_sample(candidate[0])},
        candidate_after={"c-1": parse_sample(candidate[1])},
    )


def test_interval_figures_are_deltas_and_a_restarted_pod_counts_from_zero() -> None:
    f = figures(
        stable=(exposition(100), exposition(150)), candidate=(exposition(40, 1), exposition(10, 2))
    )
    assert f.stable_requests == 50
    assert (f.candidate_requests, f.candidate_errors) == (12, 2)  # restarted: all of it is new
    # A pod first seen in the later scrape has no past in this interval.
    g = interval_figures(stable_before={}, stable_after={"s-2": parse_sample(exposition(9))},
                         candidate_before={}, candidate_after={})  # fmt: skip
    assert g.stable_requests == 0


ANALYSIS = AnalysisSpec(min_requests=20, max_error_rate=0.05, max_latency_ratio=1.5)


def test_too_few_requests_wait() -> None:
    f = figures(stable=(exposition(0), exposition(50)), candidate=(exposition(0), exposition(19)))
    verdict, reason, report = judge(f, ANALYSIS, shadow=False, now=T0)
    assert (verdict, reason) == (Verdict.WAIT, None)
    assert "19 candidate requests, fewer than minRequests 20" in report.message


def test_error_rate_over_the_limit_fails() -> None:
    f = figures(
        stable=(exposition(0), exposition(50)), candidate=(exposition(0), exposition(18, 2))
    )
    verdict, reason, report = judge(f, ANALYSIS, shadow=False, now=T0)
    assert (verdict, reason.value if reason else None) == (Verdict.FAIL, "ErrorRateExceeded")
    assert report.error_rate == pytest.approx(0.1)
    assert "error rate 0.100 > maxErrorRate 0.05" in report.message


def test_a_slow_candidate_fails_on_the_latency_ratio() -> None:
    f = figures(
        stable=(exposition(0), exposition(50, seconds=0.004)),
        candidate=(exposition(0), exposition(30, seconds=0.04)),
    )
    _verdict, reason, report = judge(f, ANALYSIS, shadow=False, now=T0)
    assert reason is not None
    assert reason.value == "LatencyRatioExceeded"
    assert report.latency_ratio is not None
    assert report.latency_ratio > 1.5


def test_a_good_candidate_passes() -> None:
    f = figures(stable=(exposition(0), exposition(50)), candidate=(exposition(0), exposition(30)))
    verdict, reason, report = judge(f, ANALYSIS, shadow=False, now=T0)
    assert (verdict, reason) == (Verdict.PASS, None)
    assert report.latency_ratio == pytest.approx(1.0)


def test_shadow_is_judged_on_the_copies() -> None:
    stable = (exposition(0), exposition(50, shadow={"agree": 40, "disagree": 10}))
    f = figures(stable=stable, candidate=(exposition(0), exposition(0)))
    verdict, reason, report = judge(f, AnalysisSpec(min_agreement=0.9), shadow=True, now=T0)
    assert verdict == Verdict.FAIL
    assert reason is not None
    assert reason.value == "AgreementTooLow"
    assert report.agreement == pytest.approx(0.8)
    failing = (exposition(0), exposition(50, shadow={"agree": 20, "failed": 20}))
    f = figures(stable=failing, candidate=(exposition(0), exposition(0)))
    _verdict, reason, _ = judge(f, AnalysisSpec(), shadow=True, now=T0)
    assert reason is not None
    assert reason.value == "ErrorRateExceeded"
    few = (exposition(0), exposition(50, shadow={"agree": 5}))
    f = figures(stable=few, candidate=(exposition(0), exposition(0)))
    assert judge(f, AnalysisSpec(), shadow=True, now=T0)[0] == Verdict.WAIT
    good = (exposition(0), exposition(50, shadow={"agree": 50}))
    f = figures(stable=good, candidate=(exposition(0), exposition(0)))
    assert judge(f, AnalysisSpec(), shadow=True, now=T0)[0] == Verdict.PASS


def test_an_empty_pod_sample_is_all_zero() -> None:
    assert parse_sample("") == PodSample()


# ------------------------------------------------------------- the decisions


class Cluster:
    """A ModelDeployment and its children as the API server holds them, stepped by plans
    (Deployments are ready as soon as they are applied unless told otherwise)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.m = md(spec)
        self.observed = Observed()
        self.plans: list[Plan] = []
        self.unready: set[str] = set()
        for second in range(6):
            self.step(at(second))
        assert self.plans[-1].writes == 0

    def step(self, now: str, analysis: Analysis | None = None) -> Plan:
        # As the controller does: a conversion Job's pods are seen only when
        # pods_needed asks for them (they are listed then, not watched).
        observed = self.observed
        if pods_needed(self.m, observed) is None:
            observed = Observed({**observed.children, POD: ()})
        p = plan(self.m, observed, CONFIG, now=now, analysis=analysis)
        self.plans.append(p)
        self.observed = observed_after(p, self.observed)
        for name in self.unready:
            dep = self.observed.named(DEPLOYMENT, name)
            if dep is not None:
                dep = copy.deepcopy(dep)
                dep["status"].update(readyReplicas=0, availableReplicas=0)
                self.observed = replace(self.observed, DEPLOYMENT, dep)
        key = artifact_key(self.m.spec)
        job = self.observed.named(JOB, job_name("iris", key))
        if job is not None and "status" not in job:
            done, pod = finished_job(job, succeeded=True, message=summary(key, key[:8] * 8))
            self.observed = replace(replace(self.observed, JOB, done), POD, pod)
        self.m = self.m.model_copy(update={"status": p.status})
        return p

    def change_model(self, uri: str, annotations: dict[str, str] | None = None) -> str:
        doc = self.m.to_manifest()
        doc["spec"]["model"]["uri"] = uri
        doc["metadata"]["generation"] = 2
        if annotations is not None:
            doc["metadata"]["annotations"] = annotations
        self.m = ModelDeployment.from_manifest(doc)
        return artifact_key(self.m.spec)

    def annotate(self, value: str) -> None:
        doc = self.m.to_manifest()
        doc["metadata"]["annotations"] = {"ondeck.io/rollout": value}
        self.m = ModelDeployment.from_manifest(doc)

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.observed.named(DEPLOYMENT, name)

    def conditions(self) -> dict[str, Any]:
        return {c.type: c for c in (self.m.status.conditions if self.m.status else None) or []}

    def rollout(self) -> Any:
        assert self.m.status is not None
        return self.m.status.rollout


def canary_spec(**rollout: Any) -> dict[str, Any]:
    return {
        "model": {"uri": "s3://models/iris-a.onnx"},
        "server": {"replicas": 4},
        "rollout": {
            "strategy": "canary",
            "steps": [{"weight": 25, "pause": "1m"}, {"weight": 50, "pause": "2m"}],
            "analysis": {"interval": "10s", "minRequests": 5},
            **rollout,
        },
    }


def passing(now: str) -> Analysis:
    f = figures(stable=(exposition(0), exposition(50)), candidate=(exposition(0), exposition(30)))
    return judge(f, AnalysisSpec(min_requests=5), shadow=False, now=now)


def failing(now: str) -> Analysis:
    f = figures(
        stable=(exposition(0), exposition(50)), candidate=(exposition(0), exposition(20, 10))
    )
    return judge(f, AnalysisSpec(min_requests=5), shadow=False, now=now)


def replicas(c: Cluster, name: str) -> int:
    dep = c.deployment(name)
    assert dep is not None
    return int(dep["spec"]["replicas"])


def serving(c: Cluster, name: str) -> str:
    dep = c.deployment(name)
    assert dep is not None
    return str(dep["metadata"]["labels"]["ondeck.io/artifact-key"])


def test_replace_is_todays_behaviour_and_writes_no_rollout_status() -> None:
    spec = canary_spec(strategy="replace")
    c = Cluster(spec)
    new = c.change_model("s3://models/iris-b.onnx")
    for second in range(10, 16):
        c.step(at(second))
    assert serving(c, "iris") == new
    assert c.deployment(candidate_name("iris")) is None
    assert c.rollout() is None
    assert "Progressing" not in c.conditions()


def test_a_good_canary_walks_every_step_and_is_promoted() -> None:
    c = Cluster(canary_spec())
    old = serving(c, "iris")
    assert c.conditions()["Progressing"].reason == "NoRollout"
    new = c.change_model("s3://models/iris-b.onnx")
    c.step(at(10))  # the Job is created, then finishes
    p = c.step(at(11))
    assert ("Normal", "RolloutStarted") in [(e.type, e.reason) for e in p.events]
    # The candidate starts beside stable, with the new artifact, at 25% of 4 replicas.
    assert serving(c, candidate_name("iris")) == new
    assert serving(c, "iris") == old
    assert replicas(c, candidate_name("iris")) == 1
    c.step(at(12))  # it is ready: the step holds, stable gives up its replica
    r = c.rollout()
    assert (r.phase.value, r.step, r.weight, r.step_started) == ("Canary", 0, 25, at(12))
    assert replicas(c, "iris") == 3
    assert c.conditions()["Ready"].status.value == "False"
    assert c.conditions()["Progressing"].reason == "CanaryStep"
    assert c.conditions()["TrafficSplit"].reason == "ReplicaRatio"
    assert "approximate: 25%" in c.conditions()["TrafficSplit"].message
    # The pause is not over: a passing analysis does not advance it.
    c.step(at(40), passing(at(40)))
    assert c.rollout().step == 0
    assert c.plans[-1].requeue_after == pytest.approx(32)
    # The pause is over but the last analysis was before the step began: wait.
    c.step(at(80), passing(at(5)))
    assert c.rollout().step == 0
    assert "waiting for a passing analysis" in c.rollout().message
    c.step(at(81), passing(at(81)))
    assert (c.rollout().step, c.rollout().weight) == (1, 25)  # 50% not held yet
    assert replicas(c, candidate_name("iris")) == 2
    c.step(at(82))
    assert c.rollout().weight == 50
    assert replicas(c, "iris") == 2
    c.step(at(82 + 121), passing(at(82 + 121)))
    r = c.rollout()
    assert r.phase.value == "Promoted"
    assert serving(c, "iris") == new  # stable moves to the candidate's artifact
    assert c.deployment(candidate_name("iris")) is not None  # kept until stable rolled out
    c.step(at(210))
    assert c.deployment(candidate_name("iris")) is None
    assert replicas(c, "iris") == 4
    conditions = c.conditions()
    assert conditions["Promoted"].status.value == "True"
    assert conditions["Ready"].status.value == "True"
    assert c.m.status is not None
    assert c.m.status.artifact is not None
    assert c.m.status.artifact.key == new
    # Converged: the idle resync writes nothing.
    assert c.step(at(300)).writes == 0
    events = [(e.type, e.reason) for p in c.plans for e in p.events]
    assert ("Normal", "RolloutPromoted") in events
    assert events.count(("Normal", "RolloutStep")) == 2


def test_a_candidate_whose_job_is_gone_by_its_promotion_keeps_its_report() -> None:
    """A canary that outlasts its conversion Job's TTL: the report read when the Job
    finished is kept with the rollout, and becomes status.artifact at promotion (so the
    Deployment is sized from it, not from the defaults)."""
    c = Cluster(canary_spec())
    new = c.change_model("s3://models/iris-b.onnx")
    c.step(at(10))  # the Job is created, then finishes
    c.step(at(11))
    c.step(at(12))
    assert c.m.status is not None
    assert c.m.status.candidate_artifact is not None
    assert c.m.status.candidate_artifact.key == new
    kept = c.m.status.candidate_artifact
    assert kept.size_bytes is not None
    job = job_name("iris", new)
    c.observed = Observed(
        {
            **c.observed.children,
            JOB: tuple(o for o in c.observed.of(JOB) if o["metadata"]["name"] != job),
            POD: (),
        }
    )
    c.step(at(81), passing(at(81)))
    c.step(at(82))
    c.step(at(82 + 121), passing(at(82 + 121)))
    assert c.rollout().phase.value == "Promoted"
    c.step(at(210))
    c.step(at(211))
    assert serving(c, "iris") == new
    assert c.observed.named(JOB, job) is None  # not converted again
    assert c.m.status.artifact is not None
    assert c.m.status.artifact.key == new
    assert c.m.status.artifact == kept
    assert c.m.status.candidate_artifact is None  # the rollout is over
    stable = c.deployment("iris")
    assert stable is not None
    resources = stable["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["memory"] != "1Gi"  # sized from the report, not defaults


def test_a_failing_analysis_rolls_back_at_once_with_the_figures() -> None:
    c = Cluster(canary_spec())
    old = serving(c, "iris")
    new = c.change_model("s3://models/iris-b.onnx")
    for second in (10, 11, 12):
        c.step(at(second))
    p = c.step(at(20), failing(at(20)))
    r = c.rollout()
    assert r.phase.value == "RolledBack"
    assert r.analysis_reason == "ErrorRateExceeded"
    assert r.analysis.error_rate == pytest.approx(1 / 3)
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "ErrorRateExceeded")]
    assert c.deployment(candidate_name("iris")) is None
    assert serving(c, "iris") == old
    assert replicas(c, "iris") == 4
    conditions = c.conditions()
    assert conditions["RolledBack"].reason == "ErrorRateExceeded"
    assert conditions["Ready"].reason == "RolledBack"
    assert f"RolledBack {new}: error rate 0.333" in conditions["Ready"].message
    assert c.m.status is not None
    assert c.m.status.phase is not None
    assert c.m.status.phase.value == "Ready"  # the old version serves
    assert c.m.status.artifact is not None
    assert c.m.status.artifact.key == old  # the report is the serving artifact's
    # It stays rolled back (no new candidate) until the spec changes, writing nothing
    # once the status has the stable replica counts back.
    c.step(at(30))
    assert c.step(at(100)).writes == 0
    c.change_model("s3://models/iris-c.onnx")
    c.step(at(110))
    c.step(at(111))
    assert c.rollout().phase.value == "Canary"


def test_a_candidate_that_is_not_ready_never_gets_weight_and_stable_is_not_shrunk() -> None:
    c = Cluster(canary_spec())
    c.unready.add(candidate_name("iris"))
    c.change_model("s3://models/iris-b.onnx")
    for second in range(10, 20):
        c.step(at(second))
    r = c.rollout()
    assert (r.weight, r.step_started) == (0, None)
    assert replicas(c, "iris") == 4
    assert c.conditions()["Progressing"].reason == "CandidateStarting"
    # Ready again: the step holds; then not ready in the middle of it: the weight goes.
    c.unready.clear()
    dep = c.deployment(candidate_name("iris"))
    assert dep is not None
    c.observed = replace(c.observed, DEPLOYMENT, held(dep))  # its pods became ready
    c.step(at(30))
    c.step(at(31))
    assert c.rollout().weight == 25
    c.unready.add(candidate_name("iris"))
    c.step(at(32))
    c.step(at(33))
    assert c.rollout().weight == 0


def test_a_gateway_canary_writes_an_httproute_with_exact_weights() -> None:
    spec = canary_spec()
    spec["gateway"] = {"parentRefs": [{"name": "public", "namespace": "gw"}]}
    c = Cluster(spec)

    def route() -> dict[str, Any]:
        applied = [o for p in c.plans for o in p.applies if kind_of(o) == HTTPROUTE]
        return applied[-1]

    def weights() -> dict[str, int]:
        return {b["name"]: b["weight"] for b in route()["spec"]["rules"][0]["backendRefs"]}

    assert weights() == {stable_service_name("iris"): 100}
    assert route()["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "public",
            "namespace": "gw",
        }
    ]
    stable_svc = c.observed.named(SERVICE, stable_service_name("iris"))
    assert stable_svc is not None
    assert stable_svc["spec"]["selector"] == {
        "ondeck.io/model-deployment": "iris",
        "ondeck.io/track": "stable",
    }
    c.change_model("s3://models/iris-b.onnx")
    c.step(at(10))
    c.step(at(11))
    assert weights() == {stable_service_name("iris"): 100, candidate_name("iris"): 0}
    c.step(at(12))
    assert weights() == {stable_service_name("iris"): 75, candidate_name("iris"): 25}
    assert replicas(c, "iris") == 4  # exact weights: stable keeps its replicas
    assert c.conditions()["TrafficSplit"].reason == "GatewayRoute"


def test_manual_abort_and_promote_act_at_once_and_a_leftover_value_is_ignored() -> None:
    c = Cluster(canary_spec())
    c.change_model("s3://models/iris-b.onnx")
    for second in (10, 11, 12):
        c.step(at(second))
    c.annotate("abort")
    p = c.step(at(13))
    assert c.rollout().phase.value == "RolledBack"
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "ManualAbort")]
    # A new rollout while the annotation still says abort: ignored until it changes.
    new = c.change_model("s3://models/iris-c.onnx", annotations={"ondeck.io/rollout": "abort"})
    for second in (20, 21, 22):
        c.step(at(second))
    assert c.rollout().phase.value == "Canary"
    c.annotate("promote")
    p = c.step(at(23))
    assert c.rollout().phase.value == "Promoted"
    assert [(e.type, e.reason) for e in p.events] == [("Normal", "ManualPromote")]
    c.step(at(24))
    assert serving(c, "iris") == new
    assert c.deployment(candidate_name("iris")) is None


def test_shadow_then_canary_copies_first_then_takes_traffic() -> None:
    c = Cluster(
        canary_spec(strategy="shadow-then-canary", shadow={"percent": 50, "duration": "30s"})
    )
    c.change_model("s3://models/iris-b.onnx")
    for second in (10, 11, 12):
        c.step(at(second))
    r = c.rollout()
    assert (r.phase.value, r.weight, r.step_started) == ("Shadow", 0, at(12))
    cand = c.deployment(candidate_name("iris"))
    assert cand is not None
    labels = cand["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "shadow"  # not behind the Service
    assert replicas(c, candidate_name("iris")) == 2
    assert replicas(c, "iris") == 4
    stable = c.deployment("iris")
    assert stable is not None
    args = stable["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-4:] == ["--shadow-url", "http://iris-canary.ml.svc.cluster.local",
                         "--shadow-percent", "50"]  # fmt: skip
    # The flags and values are ones `ondeck-server serve` takes.
    assert {"--shadow-url", "--shadow-percent"} <= {flag for flag, _ in SERVE_FLAGS.values()}
    ServeSettings.model_validate(
        {"model": "m.onnx", "shadow_url": args[-3], "shadow_percent": args[-1]}
    )
    shadow_ok = judge(
        figures(stable=(exposition(0), exposition(50, shadow={"agree": 30})),
                candidate=(exposition(0), exposition(0))),
        AnalysisSpec(min_requests=5), shadow=True, now=at(45),
    )  # fmt: skip
    p = c.step(at(45), shadow_ok)
    assert c.rollout().phase.value == "Canary"
    assert ("Normal", "ShadowPassed") in [(e.type, e.reason) for e in p.events]
    cand = c.deployment(candidate_name("iris"))
    assert cand is not None
    assert cand["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "server"


def test_disagreeing_answers_stop_the_candidate_in_shadow() -> None:
    c = Cluster(canary_spec(strategy="shadow-then-canary"))
    c.change_model("s3://models/iris-b.onnx")
    for second in (10, 11, 12):
        c.step(at(second))
    verdict = judge(
        figures(stable=(exposition(0), exposition(50, shadow={"agree": 10, "disagree": 40})),
                candidate=(exposition(0), exposition(0))),
        AnalysisSpec(min_requests=5), shadow=True, now=at(20),
    )  # fmt: skip
    c.step(at(20), verdict)
    r = c.rollout()
    assert (r.phase.value, r.analysis_reason) == ("RolledBack", "AgreementTooLow")
    assert c.conditions()["RolledBack"].reason == "AgreementTooLow"
    stable = c.deployment("iris")
    assert stable is not None
    assert "--shadow-url" not in stable["spec"]["template"]["spec"]["containers"][0]["args"]


def test_an_operator_restart_resumes_at_the_recorded_step() -> None:
    """Everything the decision needs is in status.rollout: a fresh plan from the stored
    object and the children decides the same as the one before."""
    c = Cluster(canary_spec())
    c.change_model("s3://models/iris-b.onnx")
    for second in (10, 11, 12):
        c.step(at(second))
    c.step(at(81), passing(at(81)))
    c.step(at(82))
    c.step(at(83))  # the status has stable's new replica count
    stored = ModelDeployment.from_manifest(c.m.to_manifest())
    again = plan(stored, c.observed, CONFIG, now=at(90))
    assert again.writes == 0
    assert again.status.rollout is not None
    assert (again.status.rollout.step, again.status.rollout.weight) == (1, 50)


def test_the_canary_example_shadows_then_routes_through_its_gateway() -> None:
    root = Path(__file__).resolve().parents[3]
    doc = yaml.safe_load((root / "examples/canary/modeldeployment.yaml").read_text())
    c = Cluster(doc["spec"])
    c.change_model("https://models.example.com/iris/v3/model.onnx")
    for second in (10, 11, 12):
        c.step(at(second))
    r = c.rollout()
    assert (r.phase.value, r.split) == ("Shadow", "Gateway")
    assert replicas(c, candidate_name("iris")) == 2  # 50% of 4 replicas' traffic copied
    routes = [o for p in c.plans for o in p.applies if kind_of(o) == HTTPROUTE]
    assert routes[-1]["spec"]["hostnames"] == ["iris.example.com"]
    weights = {b["name"]: b["weight"] for b in routes[-1]["spec"]["rules"][0]["backendRefs"]}
    assert weights == {stable_service_name("iris"): 100, candidate_name("iris"): 0}
