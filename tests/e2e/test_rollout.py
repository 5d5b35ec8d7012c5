"""Rollouts against the real control plane, with the Gateway API CRDs installed from their
Go module (`sigs.k8s.io/gateway-api`, config/crd/standard): the operator's HTTPRoute is
accepted by the real API server, carries the weights of each step, and a manual abort
and a manual promote (the `ondeck.io/rollout` annotation) end a canary the way the status
says. The simulated kubelet runs the pods (no container runs).

The analysis end to end: the simulated kubelet gives the stable pods 127.0.0.1 and the
candidate's 127.0.0.2 (`set_pod_ip_rule`), where the test runs real `ondeck-server serve`
processes on port 8080, the port the operator scrapes; with traffic driven at both, the
operator process promotes a candidate whose every step passes, and rolls back one whose
requests fail (500 InferenceFailed), on its own; stops in shadow a candidate whose answers
disagree (minAgreement); promotes a canary while a caller through the Service's ready
endpoints sees no failed request; and, with a real Prometheus discovering the pods through
the API server, promotes a canary judged on Prometheus's figures."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from controlplane import free_port
from kubelet_sim import JobOutcome, KubeletSimulator
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import Cluster, manifest, summary, wait_for

import modelzoo
from ondeck_operator.api.rollout import ArtifactRef, RolloutPhase, RolloutSpec, RolloutStatus
from ondeck_operator.reconcile.rollout import parse_time
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


# ------------------------------------------------ automatic promote and rollback

ANALYSIS_PORT = 8080  # where the operator scrapes every pod (SERVER_PORT)
STABLE_IP, CANDIDATE_IP = "127.0.0.1", "127.0.0.2"
#: A whole rollout on a loaded 2-core CI: two steps of a few seconds, plus the
#: conversions, the pods and the analysis intervals.
ROLLOUT_TIMEOUT = 240.0


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as probe:
        # As uvicorn binds: a closed connection's TIME_WAIT does not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


class LoopbackServers:
    """Real `ondeck-server serve` processes on 127.0.0.1:8080 (stable) and 127.0.0.2:8080
    (candidate), the addresses the simulated kubelet gives the pods and the port the
    operator scrapes."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self.started = 0

    def start(self, stable: Path, candidate: Path) -> None:
        """Both servers, serving `stable` and `candidate` as `iris`, both ready."""
        for host, model in ((STABLE_IP, stable), (CANDIDATE_IP, candidate)):
            args = ["serve", "--model", str(model), "--name", "iris",
                    "--host", host, "--port", str(ANALYSIS_PORT)]  # fmt: skip
            self.run(host, args, wait=False)
        for host in (STABLE_IP, CANDIDATE_IP):
            self.wait(host)

    def run(self, host: str, args: list[str], *, wait: bool = True) -> None:
        """(Re)start the server on `host` with the `ondeck-server` arguments `args`."""
        self.stop(host)
        self.started += 1
        log = self.tmp_path / f"server-{host}-{self.started}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "ondeck_server", *args],
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.running[host] = (process, log)
        if wait:
            self.wait(host)

    def wait(self, host: str) -> None:
        process, log = self.running[host]
        wait_for(f"server on {host}", lambda: _up(process, host, log), 120)

    def stop(self, host: str) -> None:
        process, _ = self.running.pop(host, (None, None))
        if process is None:
            return
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[LoopbackServers]:
    """The loopback servers (none started yet); skips when port 8080 is taken there;
    every server is stopped at teardown."""
    for host in (STABLE_IP, CANDIDATE_IP):
        if _port_busy(host, ANALYSIS_PORT):
            pytest.skip(f"port {ANALYSIS_PORT} on {host} is busy (the operator scrapes there)")
    servers = LoopbackServers(tmp_path)
    try:
        yield servers
    finally:
        for host in list(servers.running):
            servers.stop(host)


@pytest.fixture
def loopback_servers(loopback: LoopbackServers) -> Callable[[Path, Path], None]:
    """start(stable model, candidate model): both loopback servers, ready."""
    return loopback.start


def _up(server: subprocess.Popen[bytes], host: str, log: Path) -> bool:
    """Ready, and answered by this process (not by another one holding the port)."""
    if server.poll() is not None:
        text = log.read_text(errors="replace")
        if "PortInUse" in text:  # taken since the check: another run of this test
            pytest.skip(f"port {ANALYSIS_PORT} on {host} is busy (the operator scrapes there)")
        raise AssertionError(f"the server on {host} exited {server.returncode}:\n{text[-2000:]}")
    return _ready(host, ANALYSIS_PORT) and server.poll() is None


@pytest.fixture
def reachable_pods(kubelet: KubeletSimulator, namespace: str) -> Iterator[None]:
    """The simulated kubelet gives the test namespace's server pods the loopback address of
    their track's real server: the candidate Deployment's (`ondeck.io/track=canary`) the
    candidate's, every other server pod stable's. Other pods keep made-up IPs."""

    def rule(pod: dict[str, Any]) -> str | None:
        meta = pod["metadata"]
        owners = {ref.get("kind") for ref in meta.get("ownerReferences") or []}
        if meta["namespace"] != namespace or "ReplicaSet" not in owners:
            return None
        canary = (meta.get("labels") or {}).get("ondeck.io/track") == "canary"
        return CANDIDATE_IP if canary else STABLE_IP

    kubelet.set_pod_ip_rule(rule)
    yield
    kubelet.set_pod_ip_rule(lambda pod: None)


class Traffic:
    """Callers of both tracks, as the Service would send them: one thread posting one
    request to each of `hosts` (stable then the candidate), back to back, until stopped;
    it counts each answer's status code per host."""

    def __init__(self, hosts: tuple[str, ...] = (STABLE_IP, CANDIDATE_IP)) -> None:
        self.hosts = hosts
        self.codes: dict[str, dict[int, int]] = {host: {} for host in hosts}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        body = json_request(modelzoo.sample_inputs("mlp", 2))
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                for host in self.hosts:
                    url = f"http://{host}:{ANALYSIS_PORT}/v2/models/iris/infer"
                    try:
                        code = http.post(url, content=body).status_code
                    except httpx.HTTPError:
                        code = 0
                    self.codes[host][code] = self.codes[host].get(code, 0) + 1
                # Bounded rate: enough for minRequests each interval, little CPU.
                self._stop.wait(0.02)


def _auto_manifest(name: str, analysis: dict[str, Any]) -> dict[str, Any]:
    steps = [{"weight": 20, "pause": "2s"}, {"weight": 50, "pause": "2s"}]
    return manifest(name, rollout={"strategy": "canary", "steps": steps, "analysis": analysis})


def _start_rollout(
    cluster: Cluster, job_outcomes: dict[Any, Any], body: dict[str, Any]
) -> tuple[str, str]:
    """Deploys `body`, then a new model: (the old artifact key, the candidate's)."""
    name = body["metadata"]["name"]
    cluster.create(body)
    old = cluster.key(name)
    job_outcomes[(cluster.ns, old)] = JobOutcome.success(summary(old))
    cluster.wait_ready(name, timeout=ROLLOUT_TIMEOUT)
    new = new_model(cluster, name, "https://models.example.com/iris-v2.onnx", job_outcomes)
    return old, new


def _event_time(cluster: Cluster, reason: str, message: str) -> dt.datetime:
    events = cluster.core.list_namespaced_event(cluster.ns).items
    times = [e.last_timestamp for e in events if (e.reason, e.message) == (reason, message)]
    assert times, [(e.reason, e.message) for e in events]
    return max(times)  # type: ignore[no-any-return]


def _ended(cluster: Cluster, name: str) -> dict[str, Any] | None:
    status = rollout(cluster, name)
    return status if status.get("phase") in ("Promoted", "RolledBack") else None


def test_a_canary_whose_analysis_passes_every_step_is_promoted_by_the_operator(
    cluster: Cluster,
    start_operator: Any,
    job_outcomes: dict[Any, Any],
    reachable_pods: None,
    loopback_servers: Callable[[Path, Path], None],
    tmp_path: Path,
) -> None:
    model = modelzoo.build_mlp(tmp_path / "mlp.onnx")
    loopback_servers(model, model)
    start_operator()
    # Latency is not what this test is about: one loaded machine runs both servers.
    analysis = {"interval": "3s", "minRequests": 5, "maxLatencyRatio": 100}
    old, new = _start_rollout(cluster, job_outcomes, _auto_manifest("auto", analysis))
    canary = candidate_name("auto")
    with Traffic() as traffic:
        ended = wait_for("the rollout to end", lambda: _ended(cluster, "auto"), ROLLOUT_TIMEOUT)
        assert ended["phase"] == "Promoted", ended
        wait_for("stable on the new artifact", lambda: serving(cluster, "auto") == new, TIMEOUT)
        wait_for("the candidate removed", lambda: serving(cluster, canary) is None, TIMEOUT)
    assert traffic.codes[CANDIDATE_IP].get(200, 0) >= 10, traffic.codes
    assert set(traffic.codes[CANDIDATE_IP]) == {200}, traffic.codes
    assert (ended["stable"]["key"], ended["candidate"]["key"]) == (old, new)
    assert (ended["step"], ended["weight"]) == (1, 100)
    assert "stepStarted" not in ended  # cleared in the stored status, not only in memory
    figures = ended["analysis"]
    assert figures["verdict"] == "Pass", figures
    # The last step was promoted on its own analysis: a baseline scrape once it held, then
    # one whole interval (3s) later the verdict, not the previous step's last verdict.
    held = _event_time(cluster, "RolloutStep", "step 2/2 at 50% holds")
    judged = parse_time(figures["time"])
    assert judged is not None
    assert (judged - held).total_seconds() >= 2, (figures, held)
    assert figures["candidateRequests"] >= 5
    assert figures["stableRequests"] >= 5
    assert figures["errorRate"] == 0.0
    assert figures["latencyRatio"] is not None
    promoted = cluster.condition("auto", "Promoted")
    assert promoted is not None
    assert (promoted["status"], promoted["reason"]) == ("True", "RolloutPromoted")
    assert "all steps passed" in promoted["message"]
    cluster.wait_ready("auto", timeout=TIMEOUT)


def test_a_canary_whose_requests_fail_is_rolled_back_by_the_operator(
    cluster: Cluster,
    start_operator: Any,
    job_outcomes: dict[Any, Any],
    reachable_pods: None,
    loopback_servers: Callable[[Path, Path], None],
    tmp_path: Path,
) -> None:
    loopback_servers(
        modelzoo.build_mlp(tmp_path / "mlp.onnx"), modelzoo.build_failing(tmp_path / "failing.onnx")
    )
    start_operator()
    analysis = {"interval": "3s", "minRequests": 5, "maxLatencyRatio": 100}
    old, new = _start_rollout(cluster, job_outcomes, _auto_manifest("auto", analysis))
    canary = candidate_name("auto")
    with Traffic() as traffic:
        ended = wait_for("the rollout to end", lambda: _ended(cluster, "auto"), ROLLOUT_TIMEOUT)
        assert ended["phase"] == "RolledBack", ended
        wait_for("the candidate removed", lambda: serving(cluster, canary) is None, TIMEOUT)
    assert set(traffic.codes[CANDIDATE_IP]) == {500}, traffic.codes
    assert set(traffic.codes[STABLE_IP]) == {200}, traffic.codes
    assert serving(cluster, "auto") == old
    assert (ended["stable"]["key"], ended["candidate"]["key"]) == (old, new)
    assert (ended["step"], ended["weight"], ended["analysisReason"]) == (
        0, 0, "ErrorRateExceeded"
    )  # fmt: skip
    assert "stepStarted" not in ended
    figures = ended["analysis"]
    assert figures["verdict"] == "Fail", figures
    assert figures["candidateRequests"] >= 5
    assert figures["errorRate"] == 1.0
    assert "maxErrorRate 0.01" in figures["message"]
    rolled = cluster.condition("auto", "RolledBack")
    assert rolled is not None
    assert (rolled["status"], rolled["reason"]) == ("True", "ErrorRateExceeded")
    ready = cluster.condition("auto", "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "RolledBack")
    # the API server stores the candidate's own report beside the stable one's
    status = cluster.md("auto")["status"]
    assert status["artifact"]["key"] == old
    assert status["candidateArtifact"]["key"] == new
    assert status["candidateArtifact"]["sizeBytes"] > 0


# ------------------------------------------------ shadow stopped by the agreement floor


def _container_args(cluster: Cluster, name: str) -> list[str]:
    dep = cluster.apps.read_namespaced_deployment(name, cluster.ns)
    return list(dep.spec.template.spec.containers[0].args or [])


def _local_args(rendered: list[str], model: Path, host: str, service_to_pod: str) -> list[str]:
    """The operator-rendered `ondeck-server serve` arguments of a stable pod, run on this
    machine: verbatim but for the model path (the pod's volume is `model` here), the
    listen address (loopback, the pod's simulated IP) and the host of `--shadow-url` (the
    candidate Service's DNS name, which needs cluster DNS and kube-proxy, neither of which
    runs here: it becomes the candidate pod's address and target port, where the
    Service would send the copy)."""
    args = list(rendered)
    replaced = {"--model": str(model), "--host": host, "--shadow-url": service_to_pod}
    for flag, value in replaced.items():
        assert flag in args, (flag, rendered)
        args[args.index(flag) + 1] = value
    return args


def test_a_shadow_whose_answers_disagree_is_stopped_by_the_agreement_floor(
    cluster: Cluster,
    start_operator: Any,
    job_outcomes: dict[Any, Any],
    reachable_pods: None,
    loopback: LoopbackServers,
    tmp_path: Path,
) -> None:
    """shadow-then-canary, the candidate the same classifier with its classes shifted: the
    stable pods copy every request to it, and the operator, judging the copies' agreement
    on the stable server's own counters, rolls it back in the shadow phase.

    No cluster DNS or kube-proxy runs here, so the stable server is started with the
    arguments the operator rendered into the stable Deployment, verbatim except the model
    path, the listen address (127.0.0.1, the pods' simulated IP) and the host of
    `--shadow-url`: the candidate Service's name becomes the candidate pod's address and
    target port (127.0.0.2:8080), where the Service would send each copy."""
    model = modelzoo.build_mlp(tmp_path / "mlp.onnx")
    permuted = modelzoo.build_permuted(tmp_path / "permuted.onnx", model)
    loopback.start(model, permuted)
    start_operator()
    analysis = {"interval": "3s", "minRequests": 5, "maxLatencyRatio": 100, "minAgreement": 0.9}
    body = manifest("iris", rollout={
        "strategy": "shadow-then-canary", "shadow": {"percent": 100, "duration": "1h"},
        "steps": [{"weight": 50, "pause": "2s"}], "analysis": analysis,
    })  # fmt: skip
    old, new = _start_rollout(cluster, job_outcomes, body)
    canary = candidate_name("iris")
    # One rolling restart of stable turns copying on: its new arguments name the candidate.
    rendered = wait_for(
        "the stable pods told to copy",
        lambda: (a := _container_args(cluster, "iris")) and "--shadow-url" in a and a,
        ROLLOUT_TIMEOUT,
    )
    url = rendered[rendered.index("--shadow-url") + 1]
    assert url == f"http://{canary}.{cluster.ns}.svc.cluster.local", rendered
    assert rendered[rendered.index("--shadow-percent") + 1] == "100"
    wait_for("the Shadow phase", lambda: rollout(cluster, "iris").get("phase") == "Shadow")
    loopback.run(STABLE_IP, _local_args(rendered, model, STABLE_IP, f"http://{CANDIDATE_IP}:8080"))
    with Traffic(hosts=(STABLE_IP,)) as traffic:  # the candidate takes no caller's request
        ended = wait_for("the rollout to end", lambda: _ended(cluster, "iris"), ROLLOUT_TIMEOUT)
    assert ended["phase"] == "RolledBack", ended
    assert ended["analysisReason"] == "AgreementTooLow", ended
    assert (ended["stable"]["key"], ended["candidate"]["key"]) == (old, new)
    assert (ended["step"], ended["weight"]) == (0, 0)  # never left the shadow phase
    figures = ended["analysis"]
    assert figures["verdict"] == "Fail", figures
    assert figures["shadowRequests"] >= 5, figures
    assert figures["agreement"] == 0.0, figures  # every copy's top-1 differs
    message = figures["message"]
    assert message.startswith("agreement 0.000 < minAgreement 0.9 ("), message
    assert "shadow answers differ" in message
    rolled = cluster.condition("iris", "RolledBack")
    assert rolled is not None
    assert (rolled["status"], rolled["reason"]) == ("True", "AgreementTooLow")
    assert message in rolled["message"]

    def warnings() -> list[Any]:
        events = cluster.core.list_namespaced_event(cluster.ns).items
        return [e for e in events if (e.type, e.reason) == ("Warning", "AgreementTooLow")]

    # Events are posted after the status is written, not with it.
    (warning, *_) = wait_for("the AgreementTooLow Warning Event", warnings, TIMEOUT)
    assert message in warning.message
    events = cluster.core.list_namespaced_event(cluster.ns).items
    assert not [e for e in events if e.reason in ("ShadowPassed", "RolloutPromoted")]
    # Stable untouched: its artifact, its callers all answered, copying turned off again.
    assert set(traffic.codes[STABLE_IP]) == {200}, traffic.codes
    assert sum(traffic.codes[STABLE_IP].values()) >= 5, traffic.codes
    assert serving(cluster, "iris") == old
    wait_for("the candidate removed", lambda: serving(cluster, canary) is None, TIMEOUT)
    wait_for(
        "stable no longer copying",
        lambda: "--shadow-url" not in _container_args(cluster, "iris"),
        TIMEOUT,
    )


# ------------------------------------------------ no failed request during a rollout


class ServiceCaller:
    """A caller of the Service `name`, routed as kube-proxy routes: each request goes to
    one endpoint, chosen round robin, among the Service's ready endpoints, read again
    before every request. Bounded: stops when told, or after `limit` requests. Counts
    answers per address; every failure is kept with its reason (no ready endpoint, a
    connection error, a status other than 200).

    The endpoints are computed as the EndpointSlice controller computes them, from the
    API server's objects: the pods the Service's selector selects that are Ready, have an
    IP and are not being deleted, on the Service's target port. The real controller
    manager runs here, but its EndpointSlices stay empty: the API server refuses loopback
    addresses in them ("may not be in the loopback range"), and the pods' addresses are
    loopback ones (where the real servers listen)."""

    def __init__(self, cluster: Cluster, name: str, limit: int = 20_000) -> None:
        self.cluster, self.name, self.limit = cluster, name, limit
        self.answered: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="service-caller", daemon=True)

    def __enter__(self) -> ServiceCaller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def endpoints(self) -> list[tuple[str, int]]:
        service = self.cluster.core.read_namespaced_service(self.name, self.cluster.ns)
        (target,) = [p.target_port for p in service.spec.ports]
        selector = ",".join(f"{k}={v}" for k, v in sorted(service.spec.selector.items()))
        pods = self.cluster.core.list_namespaced_pod(self.cluster.ns, label_selector=selector)
        out = []
        for pod in pods.items:
            conditions = pod.status.conditions or []
            ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
            if ready and pod.status.pod_ip and pod.metadata.deletion_timestamp is None:
                # A named target port is the pod's container port of that name.
                ports = [
                    p.container_port
                    for c in pod.spec.containers
                    for p in c.ports or []
                    if p.name == target or p.container_port == target
                ]
                out += [(str(pod.status.pod_ip), int(port)) for port in ports[:1]]
        return sorted(out)

    def _run(self) -> None:
        body = json_request(modelzoo.sample_inputs("mlp", 2))
        with httpx.Client(timeout=30) as http:
            for turn in range(self.limit):
                if self._stop.is_set():
                    return
                try:
                    ready = self.endpoints()
                except Exception as exc:  # the thread must not die silently
                    self.failures.append(f"reading the Service's endpoints: {exc!r}")
                    return
                if not ready:
                    self.failures.append("the Service has no ready endpoint")
                else:
                    address, port = ready[turn % len(ready)]
                    url = f"http://{address}:{port}/v2/models/iris/infer"
                    try:
                        code = http.post(url, content=body).status_code
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{address}: {exc!r}")
                    else:
                        if code == 200:
                            self.answered[address] = self.answered.get(address, 0) + 1
                        else:
                            self.failures.append(f"{address}: HTTP {code}")
                self._stop.wait(0.02)


def test_no_request_through_the_service_fails_during_a_whole_canary(
    cluster: Cluster,
    start_operator: Any,
    job_outcomes: dict[Any, Any],
    reachable_pods: None,
    loopback_servers: Callable[[Path, Path], None],
    tmp_path: Path,
) -> None:
    """A caller loops through the Service (`ServiceCaller`: its ready endpoints, re-read
    before every request) from before the new model is set until
    the candidate is promoted, stable has rolled onto it and the candidate is gone: not
    one request fails, and the candidate's pods answered a share of them.

    What this proves: at every moment of the rollout (the candidate scaled up, stable
    scaled down by the replica ratio, the steps, the promotion's rolling update of stable,
    the candidate's removal) the Service lists at least one ready endpoint, and each one
    it lists is a server that answers. What it does not: there is no kube-proxy here
    (iptables rules that lag the endpoints; and the endpoints are computed from the pods
    by the test, as the EndpointSlice controller does, not read from EndpointSlices,
    which refuse loopback addresses), no container (the simulated kubelet
    marks pods Ready at once and removes a deleted pod at once, so readiness probes,
    preStop and connection draining are not exercised), and the servers are two processes
    that outlive the pods (a request to a pod just removed would still be answered).
    `tests/e2e/test_real_node.py` covers those for a `replace` rollout on a real node."""
    loopback_servers(
        modelzoo.build_mlp(tmp_path / "mlp.onnx"),
        modelzoo.build_mlp(tmp_path / "mlp-v2.onnx", seed=1),
    )
    start_operator()
    analysis = {"interval": "3s", "minRequests": 5, "maxLatencyRatio": 100}
    body = _auto_manifest("auto", analysis)
    body["spec"]["server"] = {"replicas": 2}
    name = body["metadata"]["name"]
    cluster.create(body)
    old = cluster.key(name)
    job_outcomes[(cluster.ns, old)] = JobOutcome.success(summary(old))
    cluster.wait_ready(name, timeout=ROLLOUT_TIMEOUT)
    canary = candidate_name(name)
    with ServiceCaller(cluster, name) as caller:
        try:
            wait_for("answers through the Service", lambda: caller.answered.get(STABLE_IP), TIMEOUT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {caller.failures[:3]}") from exc
        new = new_model(cluster, name, "https://models.example.com/iris-v2.onnx", job_outcomes)
        ended = wait_for("the rollout to end", lambda: _ended(cluster, name), ROLLOUT_TIMEOUT)
        assert ended["phase"] == "Promoted", ended
        wait_for("stable on the new artifact", lambda: serving(cluster, name) == new, TIMEOUT)
        wait_for("the candidate removed", lambda: serving(cluster, canary) is None, TIMEOUT)
        wait_for(
            "only stable's endpoints", lambda: {a for a, _ in caller.endpoints()} == {STABLE_IP}
        )
        cluster.wait_ready(name, timeout=TIMEOUT)
        before = sum(caller.answered.values())
        wait_for("answers after the rollout", lambda: sum(caller.answered.values()) > before + 5)
    total = sum(caller.answered.values()) + len(caller.failures)
    assert not caller.failures, f"{len(caller.failures)} of {total} failed: {caller.failures[:5]}"
    assert caller.answered.get(CANDIDATE_IP, 0) >= 10, caller.answered
    assert caller.answered.get(STABLE_IP, 0) >= 10, caller.answered
    print(f"\nservice caller: {total} requests, 0 failed, by address {caller.answered}")


# ------------------------------------------------ the operator reading Prometheus


def test_a_canary_judged_from_prometheus_is_promoted_by_the_operator(
    cluster: Cluster,
    control_plane: Any,
    start_operator: Any,
    job_outcomes: dict[Any, Any],
    reachable_pods: None,
    loopback_servers: Callable[[Path, Path], None],
    prometheus: Any,
    tmp_path: Path,
) -> None:
    """The operator process with `analysis.prometheus`: a real Prometheus finds the server
    pods through the real API server (kubernetes_sd, role pod, as in a cluster), scrapes
    each Ready one on its pod IP and port 8080 (the loopback servers), labels the series
    with the pod's namespace and name; the operator's figures of every step come from
    Prometheus's API, and the canary is promoted on them."""
    model = modelzoo.build_mlp(tmp_path / "mlp.onnx")
    loopback_servers(model, model)
    meta = "__meta_kubernetes_pod_"
    prometheus.configure([{
        "job_name": "ondeck-pods",
        "kubernetes_sd_configs": [{
            "role": "pod", "kubeconfig_file": str(control_plane.admin_kubeconfig),
            "namespaces": {"names": [cluster.ns]},
        }],
        "relabel_configs": [
            {"source_labels": [f"{meta}controller_kind"], "regex": "ReplicaSet",
             "action": "keep"},
            {"source_labels": [f"{meta}ready"], "regex": "true", "action": "keep"},
            {"source_labels": [f"{meta}ip"], "target_label": "__address__",
             "replacement": "${1}:8080"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": [f"{meta}name"], "target_label": "pod"},
        ],
    }])  # fmt: skip
    start_operator()
    analysis = {
        "interval": "4s", "minRequests": 5, "maxLatencyRatio": 100,
        "prometheus": {"url": prometheus.url},
    }  # fmt: skip
    old, new = _start_rollout(cluster, job_outcomes, _auto_manifest("auto", analysis))
    canary = candidate_name("auto")
    with Traffic():
        ended = wait_for("the rollout to end", lambda: _ended(cluster, "auto"), ROLLOUT_TIMEOUT)
        assert ended["phase"] == "Promoted", (ended, prometheus.tail())
        wait_for("stable on the new artifact", lambda: serving(cluster, "auto") == new, TIMEOUT)
        wait_for("the candidate removed", lambda: serving(cluster, canary) is None, TIMEOUT)
    assert (ended["stable"]["key"], ended["candidate"]["key"]) == (old, new)
    figures = ended["analysis"]
    assert figures["verdict"] == "Pass", figures
    assert figures["candidateRequests"] >= 5, figures
    assert figures["stableRequests"] >= 5, figures
    assert figures["errorRate"] == 0.0, figures
    assert figures["latencyRatio"] is not None, figures
    # Prometheus did scrape the candidate's pod by its name.
    reply = httpx.get(
        f"{prometheus.url}/api/v1/query",
        params={"query": f'count(ondeck_requests_total{{pod=~"{canary}-.*"}})'},
        timeout=10,
    ).json()
    assert reply["data"]["result"], reply
    print(f"\nlast analysis, from prometheus: {figures}")
