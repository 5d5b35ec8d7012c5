"""The rollout analysis with `analysis.prometheus`, against a real Prometheus: it scrapes
two real `ondeck-server serve` processes on loopback (stable, and a candidate whose every
request fails), labelled with the pod names the real API server lists for each track;
the operator's `Analyzer` judges one interval from Prometheus's `/api/v1/query` and,
beside it, one from scraping the servers itself, and the figures are checked against
the requests the test sent and against each other.

The Prometheus binary is `prometheus` on PATH or in ~/.cache/ondeck/tools (`bash
scripts/build-prometheus.sh`, which `scripts/setup.sh --dev` runs, builds it from its Go
module); the test skips naming it when it is absent."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from controlplane import free_port
from operator_harness import Cluster, wait_for
from prometheus_harness import SCRAPE_SECONDS, Prometheus

import modelzoo
from ondeck_operator.api.rollout import ArtifactRef, RolloutPhase, RolloutSpec, RolloutStatus
from ondeck_operator.reconcile.rollout import Analysis
from ondeck_operator.runtime.credentials import load_credentials
from ondeck_operator.runtime.kube_client import HttpKube
from ondeck_operator.runtime.rollouts import Analyzer
from server.v2client import json_request

pytestmark = pytest.mark.e2e

STABLE_REQUESTS, CANDIDATE_REQUESTS = 30, 12
WARM_UP = 20


def _serve(model: Path, host: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ondeck_server", "serve", "--model", str(model), "--name", "iris",
         "--host", host, "--port", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _get(url: str, **params: str) -> Any:
    try:
        reply = httpx.get(url, params=params, timeout=5)
    except httpx.HTTPError:
        return None
    return reply.json() if reply.status_code == 200 else None


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture
def cluster(admin_api: Any, namespace: str) -> Cluster:
    return Cluster(admin_api, namespace)


def _pod(name: str, track: str | None) -> dict[str, Any]:
    labels = {"ondeck.io/model-deployment": "iris", "app.kubernetes.io/component": "server"}
    if track:
        labels["ondeck.io/track"] = track
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        # A node no kubelet runs: these pods are only what the API server lists.
        "spec": {"nodeName": "analysis-node", "containers": [{"name": "server", "image": "x"}]},
    }


def _value(url: str, query: str) -> float | None:
    doc = _get(f"{url}/api/v1/query", query=query)
    result = (doc or {}).get("data", {}).get("result") or []
    return float(result[0]["value"][1]) if result else None


#: pod name → (address, track label): the stable pod and the candidate's.
PODS = {"stable-0": ("127.0.0.1", None), "canary-0": ("127.0.0.2", "canary")}


def test_the_prometheus_figures_match_what_was_sent_and_the_scraped_ones(
    control_plane: Any, cluster: Cluster, prometheus: Prometheus, tmp_path: Path
) -> None:
    url = prometheus.url
    port = free_port()
    models = {
        "stable-0": modelzoo.build_mlp(tmp_path / "mlp.onnx"),
        "canary-0": modelzoo.build_failing(tmp_path / "failing.onnx"),  # every request a 500
    }
    servers = [_serve(models[p], ip, port, tmp_path / f"{p}.log") for p, (ip, _) in PODS.items()]
    try:
        for pod, (ip, _) in PODS.items():
            wait_for(
                f"server {pod}",
                lambda ip=ip: _get(f"http://{ip}:{port}/v2/health/ready") is not None,
                120,
            )
        # Each target labelled as a Prometheus in the cluster labels pods: namespace, pod.
        jobs = [
            {"job_name": pod, "static_configs": [{
                "targets": [f"{ip}:{port}"], "labels": {"namespace": cluster.ns, "pod": pod},
            }]}
            for pod, (ip, _) in PODS.items()
        ]  # fmt: skip
        prometheus.configure(jobs)
        for name, (ip, track) in PODS.items():
            cluster.core.create_namespaced_pod(cluster.ns, _pod(name, track))
            cluster.core.patch_namespaced_pod_status(name, cluster.ns, {"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True"}],
            }})  # fmt: skip
        body = json_request(modelzoo.sample_inputs("mlp", 2))

        def send(pod: str, count: int) -> None:
            ip = PODS[pod][0]
            with httpx.Client(timeout=30) as http:
                for _ in range(count):
                    reply = http.post(f"http://{ip}:{port}/v2/models/iris/infer", content=body)
                    assert reply.status_code == (200 if pod == "stable-0" else 500), reply.text

        def scraped(pod: str, count: float) -> bool:
            return _value(url, f'sum(ondeck_requests_total{{pod="{pod}"}})') == count

        # Counter series are born with their first request, and increase() sees nothing
        # of a series born inside its window: they exist before the baseline. And a
        # bucket at zero is not extrapolated past the window's start while one above zero
        # is: a warm-up fills the buckets the requests will land in, so that each bucket's
        # increase is scaled alike and the p95 is not skewed by it.
        for pod in PODS:
            send(pod, WARM_UP)
            wait_for(f"prometheus to scrape {pod}", lambda pod=pod: scraped(pod, WARM_UP), 30)
        analysis = {"minRequests": 5, "maxLatencyRatio": 100}
        by_scrape = RolloutSpec.model_validate({"strategy": "canary", "analysis": analysis})
        by_prometheus = RolloutSpec.model_validate(
            {"strategy": "canary", "analysis": {**analysis, "prometheus": {"url": url}}}
        )
        status = RolloutStatus(phase=RolloutPhase.CANARY, candidate=ArtifactRef(key="k"))
        kubeconfig = control_plane.admin_kubeconfig
        key = (cluster.ns, "iris")

        async def analyze() -> tuple[Analysis, Analysis]:
            kube = HttpKube(load_credentials(kubeconfig))
            prom, scrape = Analyzer(kube), Analyzer(kube, port=port)
            prom.track(key, by_prometheus, status)
            scrape.track(key, by_scrape, status)
            try:
                assert not await prom.analyze_now(key)  # both begin with a baseline
                assert not await scrape.analyze_now(key)
                await asyncio.sleep(2 * SCRAPE_SECONDS)
                await asyncio.to_thread(send, "stable-0", STABLE_REQUESTS)
                await asyncio.to_thread(send, "canary-0", CANDIDATE_REQUESTS)
                assert await scrape.analyze_now(key)
                await asyncio.to_thread(
                    wait_for,
                    "prometheus to scrape the last requests",
                    lambda: (
                        scraped("stable-0", STABLE_REQUESTS + WARM_UP)
                        and scraped("canary-0", CANDIDATE_REQUESTS + WARM_UP)
                    ),
                    30,
                )
                await asyncio.sleep(2 * SCRAPE_SECONDS)
                assert await prom.analyze_now(key)
                return prom.results[key], scrape.results[key]
            finally:
                await prom.close()
                await scrape.close()
                await kube.close()

        (verdict, reason, figures), (_, _, direct) = asyncio.run(analyze())
    finally:
        for server in servers:
            _stop(server)
    print(f"\nfrom prometheus: {figures.model_dump()}\nscraped: {direct.model_dump()}")
    # The operator's own scrapes count exactly what was sent.
    assert (direct.stable_requests, direct.candidate_requests) == (
        STABLE_REQUESTS, CANDIDATE_REQUESTS
    )  # fmt: skip
    assert (verdict.value, reason) == ("Fail", "ErrorRateExceeded"), figures.message
    assert figures.error_rate == direct.error_rate == 1.0
    assert figures.message.startswith("error rate 1.000 > maxErrorRate 0.01 (")
    # increase() extrapolates the growth it saw to the window's ends: at least what was
    # sent, at most window / (window - 2 scrape intervals) times it (here under 1.5x).
    assert STABLE_REQUESTS <= figures.stable_requests <= 1.5 * STABLE_REQUESTS, figures
    assert CANDIDATE_REQUESTS <= figures.candidate_requests <= 1.5 * CANDIDATE_REQUESTS, figures
    # The same buckets, each one's increase scaled by the same factor (the warm-up): the
    # p95s histogram_quantile gives are the ones the operator interpolates from its own
    # scrapes of the same requests, and so is their ratio.
    assert figures.latency_ratio is not None
    assert direct.latency_ratio is not None
    assert figures.latency_ratio == pytest.approx(direct.latency_ratio, rel=1e-6), (figures, direct)


def test_a_prometheus_that_cannot_be_queried_gives_a_wait_that_says_why(
    control_plane: Any, cluster: Cluster
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cluster.core.create_namespaced_pod(cluster.ns, _pod("canary-0", "canary"))
    spec = RolloutSpec.model_validate(
        {"strategy": "canary", "analysis": {"prometheus": {"url": url}}}
    )
    status = RolloutStatus(phase=RolloutPhase.CANARY, candidate=ArtifactRef(key="k"))
    key = (cluster.ns, "iris")

    async def analyze() -> Analysis:
        kube = HttpKube(load_credentials(control_plane.admin_kubeconfig))
        analyzer = Analyzer(kube)
        analyzer.track(key, spec, status)
        try:
            assert not await analyzer.analyze_now(key)  # a baseline asks nothing
            assert await analyzer.analyze_now(key)
            return analyzer.results[key]
        finally:
            await analyzer.close()
            await kube.close()

    verdict, reason, figures = asyncio.run(analyze())
    assert (verdict.value, reason, figures.verdict) == ("Wait", None, "Wait")
    assert figures.message.startswith(f"Prometheus {url} could not be queried: "), figures
