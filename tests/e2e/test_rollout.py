"""Rollouts against the real control plane, with the Gateway API CRDs installed from their
Go module (`sigs.k8s.io/gateway-api`, config/crd/standard): the operator's HTTPRoute is
accepted by the real API server, carries the weights of each step, and a manual abort
and a manual promote (the `ondeck.io/rollout` annotation) end a canary the way the status
says. The simulated kubelet runs the pods (no container runs: the analysis has nothing to
scrape, so steps advance only by hand here; the analysis is covered in
tests/unit/operator/test_rollout.py and tests/server/test_shadow.py)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from controlplane import free_port
from kubelet_sim import JobOutcome
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import Cluster, manifest, summary, wait_for

import modelzoo
from ondeck_operator.api.rollout import ArtifactRef, RolloutPhase, RolloutSpec, RolloutStatus
from ondeck_operator.render.rollout import candidate_name, stable_service_name
from ondeck_operator.runtime.credentials import load_credentials
from ondeck_operator.runtime.kube_client import HttpKube
from ondeck_operator.runtime.rollouts import Analyzer
from server.v2client import json_request

pytestmark = pytest.mark.e2e

GATEWAY_API = "v1.2.1"
CACHE = Path.home() / ".cache/ondeck/gateway-api" / GATEWAY_API
TIMEOUT = 60.0


def gateway_crd_files() -> list[Path]:
    """The standard-channel CRDs of the Gateway API, from the Go module (cached)."""
    files = sorted(CACHE.glob("*.yaml"))
    if files:
        return files
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs go (to fetch sigs.k8s.io/gateway-api from the module proxy)")
    found = subprocess.run(
        [go, "mod", "download", "-json", f"sigs.k8s.io/gateway-api@{GATEWAY_API}"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )  # fmt: skip
    if found.returncode != 0:
        pytest.skip(f"go mod download sigs.k8s.io/gateway-api failed: {found.stderr[-400:]}")
    source = Path(json.loads(found.stdout)["Dir"]) / "config/crd/standard"
    CACHE.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.yaml"):
        shutil.copyfile(path, CACHE / path.name)
    return sorted(CACHE.glob("*.yaml"))


@pytest.fixture(scope="session")
def gateway_api(admin_api: Any) -> None:
    ext: Any = client.ApiextensionsV1Api(admin_api)
    names = []
    for path in gateway_crd_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            names.append(doc["metadata"]["name"])
            try:
                ext.create_custom_resource_definition(doc)
            except ApiException as exc:
                if exc.status != 409:
                    raise
    assert "httproutes.gateway.networking.k8s.io" in names

    def established() -> bool:
        crd = ext.read_custom_resource_definition("httproutes.gateway.networking.k8s.io")
        conditions = crd.status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for("the HTTPRoute CRD established", established)


@pytest.fixture
def cluster(admin_api: Any, namespace: str) -> Cluster:
    return Cluster(admin_api, namespace)


def route_weights(cluster: Cluster, name: str) -> dict[str, int] | None:
    try:
        route = cluster.custom.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", cluster.ns, "httproutes", name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    refs = route["spec"]["rules"][0]["backendRefs"]
    return {r["name"]: r.get("weight", 1) for r in refs}


def rollout(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict((cluster.md(name).get("status") or {}).get("rollout") or {})


def annotate(cluster: Cluster, name: str, value: str) -> None:
    cluster.custom.patch_namespaced_custom_object(
        "ondeck.io", "v1alpha1", cluster.ns, "modeldeployments", name,
        {"metadata": {"annotations": {"ondeck.io/rollout": value}}},
    )  # fmt: skip


def new_model(cluster: Cluster, name: str, uri: str, outcomes: dict[Any, Any]) -> str:
    cluster.patch_spec(name, {"model": {"uri": uri, "format": "onnx"}})
    key = cluster.key(name)
    outcomes[(cluster.ns, key)] = JobOutcome.success(summary(key))
    return key


def serving(cluster: Cluster, name: str) -> str | None:
    try:
        dep = cluster.apps.read_namespaced_deployment(name, cluster.ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return str(dep.metadata.labels["ondeck.io/artifact-key"])


def test_a_gateway_canary_is_weighted_then_aborted_then_promoted(
    cluster: Cluster, start_operator: Any, job_outcomes: dict[Any, Any], gateway_api: None
) -> None:
    first = start_operator()
    body = manifest(
        "canary",
        server={"replicas": 2},
        rollout={"strategy": "canary", "steps": [{"weight": 25, "pause": "1h"}]},
        gateway={"parentRefs": [{"name": "public", "namespace": "gateways"}]},
    )
    md = cluster.create(body)
    old = cluster.key("canary")
    job_outcomes[(cluster.ns, old)] = JobOutcome.success(summary(old))
    assert md["metadata"]["name"] == "canary"
    cluster.wait_ready("canary", timeout=TIMEOUT)
    stable_svc, canary_svc = stable_service_name("canary"), candidate_name("canary")
    wait_for("the route to stable", lambda: route_weights(cluster, "canary") == {stable_svc: 100})

    # A new model: the candidate starts and, once ready, gets the step's exact weight.
    new = new_model(cluster, "canary", "https://models.example.com/iris-v2.onnx", job_outcomes)
    want = {stable_svc: 75, canary_svc: 25}
    wait_for("weights 75/25", lambda: route_weights(cluster, "canary") == want, TIMEOUT)
    assert serving(cluster, "canary") == old
    assert serving(cluster, canary_svc) == new
    status = rollout(cluster, "canary")
    assert (status["phase"], status["weight"], status["split"]) == ("Canary", 25, "Gateway")
    progressing = cluster.condition("canary", "Progressing")
    assert progressing is not None
    assert (progressing["status"], progressing["reason"]) == ("True", "CanaryStep")
    # What `kubectl get md` prints in its Rollout column.
    assert status["message"].startswith("Canary step 1/1 at 25% until ")

    # The operator dies mid-rollout; the next one resumes at the recorded step.
    step_started = status["stepStarted"]
    first.kill()
    start_operator("operator-2")
    wait_for("a reconcile by the new operator", lambda: rollout(cluster, "canary").get("phase"))
    again = rollout(cluster, "canary")
    assert (again["phase"], again["step"], again["weight"]) == ("Canary", 0, 25)
    assert again["stepStarted"] == step_started  # the pause is not restarted
    assert route_weights(cluster, "canary") == want

    # A human aborts: the candidate goes, stable takes all the traffic, the status says why.
    annotate(cluster, "canary", "abort")
    wait_for("RolledBack", lambda: rollout(cluster, "canary").get("phase") == "RolledBack", TIMEOUT)
    wait_for("the candidate removed", lambda: serving(cluster, canary_svc) is None, TIMEOUT)
    wait_for("all to stable", lambda: route_weights(cluster, "canary") == {stable_svc: 100})
    rolled = cluster.condition("canary", "RolledBack")
    assert rolled is not None
    assert (rolled["status"], rolled["reason"]) == ("True", "ManualAbort")
    ready = cluster.condition("canary", "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "RolledBack")
    assert serving(cluster, "canary") == old

    # The next model (the annotation still says abort: it was for the last rollout).
    newer = new_model(cluster, "canary", "https://models.example.com/iris-v3.onnx", job_outcomes)
    wait_for("weights 75/25 again", lambda: route_weights(cluster, "canary") == want, TIMEOUT)
    assert rollout(cluster, "canary")["phase"] == "Canary"
    annotate(cluster, "canary", "promote")
    wait_for("Promoted", lambda: rollout(cluster, "canary").get("phase") == "Promoted", TIMEOUT)
    wait_for("stable serves the new model", lambda: serving(cluster, "canary") == newer, TIMEOUT)
    wait_for("the candidate removed", lambda: serving(cluster, canary_svc) is None, TIMEOUT)
    wait_for("all to stable", lambda: route_weights(cluster, "canary") == {stable_svc: 100})
    promoted = cluster.condition("canary", "Promoted")
    assert promoted is not None
    assert (promoted["status"], promoted["reason"]) == ("True", "RolloutPromoted")
    cluster.wait_ready("canary", timeout=TIMEOUT)


# --------------------------------------------------------------- the analysis


def _serve(model: Path, host: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ondeck_server", "serve", "--model", str(model), "--name", "iris",
         "--host", host, "--port", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _pod(name: str, track: str | None) -> dict[str, Any]:
    labels = {"ondeck.io/model-deployment": "iris", "app.kubernetes.io/component": "server"}
    if track:
        labels["ondeck.io/track"] = track
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        # A node no kubelet runs: the simulator leaves these pods alone; their status is
        # written below, pointing at the real servers on loopback.
        "spec": {"nodeName": "analysis-node", "containers": [{"name": "server", "image": "x"}]},
    }


def test_the_analysis_scrapes_real_servers_through_the_pods_the_api_server_lists(
    control_plane: Any, cluster: Cluster, tmp_path: Path
) -> None:
    model = modelzoo.build_mlp(tmp_path / "mlp.onnx")
    port = free_port()
    servers = [
        _serve(model, "127.0.0.1", port, tmp_path / "stable.log"),
        _serve(model, "127.0.0.2", port, tmp_path / "candidate.log"),
    ]
    try:
        for host in ("127.0.0.1", "127.0.0.2"):
            wait_for(f"server on {host}", lambda host=host: _ready(host, port), 120)
        pods = (("stable-0", None, "127.0.0.1"), ("canary-0", "canary", "127.0.0.2"))
        for name, track, ip in pods:
            cluster.core.create_namespaced_pod(cluster.ns, _pod(name, track))
            cluster.core.patch_namespaced_pod_status(name, cluster.ns, {"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True"}],
            }})  # fmt: skip
        # Latency is not what this test is about: one loaded machine runs both servers.
        analysis = {"minRequests": 10, "maxLatencyRatio": 100}
        spec = RolloutSpec.model_validate({"strategy": "canary", "analysis": analysis})
        status = RolloutStatus(phase=RolloutPhase.CANARY, candidate=ArtifactRef(key="k"))
        kubeconfig = control_plane.admin_kubeconfig
        verdicts = asyncio.run(_analyze(kubeconfig, cluster.ns, spec, status, port))
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
    first, (verdict, reason, figures) = verdicts
    assert first is False  # the first scrape is a baseline
    assert (verdict.value, reason) == ("Pass", None), figures.message
    assert (figures.candidate_requests, figures.stable_requests) == (12, 30)
    assert figures.error_rate == 0.0
    assert figures.latency_ratio is not None


def _ready(host: str, port: int) -> bool:
    try:
        return httpx.get(f"http://{host}:{port}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def _analyze(
    kubeconfig: Path, namespace: str, spec: RolloutSpec, status: RolloutStatus, port: int
) -> tuple[bool, Any]:
    kube = HttpKube(load_credentials(kubeconfig))
    analyzer = Analyzer(kube, port=port)
    key = (namespace, "iris")
    analyzer.track(key, spec, status)
    try:
        first = await analyzer.analyze_now(key)
        body = json_request(modelzoo.sample_inputs("mlp", 2))
        async with httpx.AsyncClient(timeout=30) as http:
            for host, count in (("127.0.0.1", 30), ("127.0.0.2", 12)):
                for _ in range(count):
                    reply = await http.post(
                        f"http://{host}:{port}/v2/models/iris/infer", content=body
                    )
                    assert reply.status_code == 200
        assert await analyzer.analyze_now(key)
        return first, analyzer.results[key]
    finally:
        await analyzer.close()
        await kube.close()


@pytest.mark.parametrize(
    ("rollout", "words"),
    [
        ({"strategy": "canary", "steps": [{"weight": 50}, {"weight": 10}]},
         "steps weights must grow from one step to the next"),
        ({"strategy": "canary", "shadow": {"percent": 5}},
         "shadow settings need strategy shadow-then-canary"),
        ({"strategy": "canary", "steps": [{"weight": 10, "pause": "5 minutes"}]}, "pause"),
    ],
)  # fmt: skip
def test_the_api_server_refuses_bad_rollouts_with_the_types_messages(
    cluster: Cluster, crds: None, rollout: dict[str, Any], words: str
) -> None:
    body = manifest("bad", rollout=rollout)
    with pytest.raises(ApiException) as info:
        cluster.custom.create_namespaced_custom_object(
            "ondeck.io", "v1alpha1", cluster.ns, "modeldeployments", body, dry_run="All"
        )
    assert info.value.status == 422
    assert words in str(info.value.body)


def test_the_api_server_fills_in_the_rollout_defaults(cluster: Cluster, crds: None) -> None:
    body = manifest("good", rollout={"strategy": "shadow-then-canary"})
    stored = cluster.custom.create_namespaced_custom_object(
        "ondeck.io", "v1alpha1", cluster.ns, "modeldeployments", body, dry_run="All"
    )
    assert stored["spec"]["rollout"]["steps"] == [
        {"weight": 10, "pause": "1m"},
        {"weight": 50, "pause": "1m"},
    ]
    assert stored["spec"]["rollout"]["analysis"]["minRequests"] == 20


def test_the_api_server_refuses_shadowing_a_language_model(cluster: Cluster, crds: None) -> None:
    body = manifest("llm", rollout={"strategy": "shadow-then-canary"})
    body["spec"]["model"] = {"uri": "hf://org/tiny", "format": "hf-causal-lm"}
    with pytest.raises(ApiException) as info:
        cluster.custom.create_namespaced_custom_object(
            "ondeck.io", "v1alpha1", cluster.ns, "modeldeployments", body, dry_run="All"
        )
    assert info.value.status == 422
    assert "strategy shadow-then-canary does not apply to model.format" in str(info.value.body)
