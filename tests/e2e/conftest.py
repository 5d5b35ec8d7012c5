"""Fixtures for the end-to-end tests: a real control plane, a simulated node, namespaces.

`control_plane` (session) starts etcd + kube-apiserver + kube-controller-manager on loopback
(see controlplane.py); it skips only when `etcd` or `go` is missing, naming it. `kubelet`
(session) runs the node/pod simulator (kubelet_sim.py); `namespace` gives each test a fresh
namespace whose default ServiceAccount exists, deleted afterwards.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlplane import (
    ControlPlane,
    MissingBinaryError,
    control_plane_binaries,
    start_control_plane,
)
from kubelet_sim import KubeletSimulator

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        binaries = control_plane_binaries()
    except MissingBinaryError as exc:
        pytest.skip(f"needs {exc}")
    plane = start_control_plane(tmp_path_factory.mktemp("control-plane"), binaries=binaries)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def admin_api(control_plane: ControlPlane) -> Iterator[Any]:
    with control_plane.api_client() as api:
        yield api


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane) -> Iterator[KubeletSimulator]:
    api = control_plane.api_client()
    sim = KubeletSimulator(api)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
        api.close()


@pytest.fixture
def namespace(admin_api: Any) -> Iterator[str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core: Any = client.CoreV1Api(admin_api)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException:
            time.sleep(0.1)
    else:
        pytest.fail(f"namespace {name}: the default ServiceAccount never appeared")
    try:
        yield name
    finally:
        core.delete_namespace(name)


# ------------------------------------------------------------------ the operator


@pytest.fixture(scope="session")
def crds(admin_api: Any) -> None:
    from operator_harness import install_crds

    install_crds(admin_api)


@pytest.fixture(scope="session")
def operator_kubeconfig(
    control_plane: ControlPlane,
    admin_api: Any,
    crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A kubeconfig of the operator's ServiceAccount, bound to exactly the chart's rules."""
    from operator_harness import install_operator_rbac

    kubeconfig: Path = install_operator_rbac(
        control_plane, admin_api, tmp_path_factory.mktemp("operator")
    )
    return kubeconfig


@pytest.fixture
def job_outcomes(kubelet: KubeletSimulator) -> Iterator[dict[tuple[str, str], Any]]:
    """{(namespace, artifact key): JobOutcome}: how each conversion pod ends (unset: runs)."""
    outcomes: dict[tuple[str, str], Any] = {}

    def rule(pod: dict[str, Any]) -> Any:
        meta = pod["metadata"]
        key = str((meta.get("labels") or {}).get("ondeck.io/artifact-key"))
        return outcomes.get((meta["namespace"], key))

    kubelet.set_job_rule(rule)
    yield outcomes
    kubelet.set_job_rule(lambda pod: None)


@pytest.fixture
def start_operator(
    operator_kubeconfig: Path, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """start_operator(name=..., extra=[...]) runs an operator watching the test's namespace;
    every one started is stopped at teardown, and its log is shown when the test failed."""
    from operator_harness import OperatorProcess

    started: list[OperatorProcess] = []

    def start(
        name: str = "operator",
        *,
        extra: list[str] | None = None,
        config: dict[str, Any] | None = None,
        wait: bool = True,
    ) -> OperatorProcess:
        process = OperatorProcess(
            kubeconfig=operator_kubeconfig,
            namespaces=[namespace],
            workdir=tmp_path,
            name=name,
            extra=extra,
            config=config,
        )
        started.append(process)
        return process.start(wait=wait)

    yield start
    failed = getattr(request.node, "rep_call", None)
    for process in started:
        process.stop()
        if failed is not None and failed.failed:
            print(f"--- {process.name} log\n{process.tail(120)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


# ------------------------------------------------------------------ a real node


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A control plane on a bridge the test creates plus a real node (node.py) running the
    images built from the repo's Dockerfiles. Skips naming what is missing (root, docker,
    containerd, CNI plugins, go); in CI (CI=true) a missing piece fails instead."""
    from node import RealCluster, bridge_network, node_binaries, node_problem, start_node

    from images.tools import build_images, docker_problem, in_ci

    problem = node_problem() or docker_problem()
    if problem is None:
        try:
            plane_binaries = control_plane_binaries()
        except MissingBinaryError as exc:
            problem = str(exc)
    if problem is not None:
        if in_ci():
            pytest.fail(f"CI=true but a real node needs {problem}", pytrace=False)
        pytest.skip(f"a real node needs {problem}")
    started = time.monotonic()
    images = build_images()
    built = time.monotonic()
    binaries = node_binaries()
    workdir = tmp_path_factory.mktemp("real-node")
    with bridge_network() as net:
        plane = start_control_plane(
            workdir / "control-plane", binaries=plane_binaries, address=net.gateway
        )
        try:
            node = start_node(
                workdir / "node",
                plane,
                net,
                images=[images.server, images.converter, images.operator],
                sandbox_image=images.pause,
                binaries=binaries,
            )
            print(
                f"\nreal node: images built in {built - started:.0f}s ({images.report()}); "
                f"control plane + node up, images loaded in {time.monotonic() - built:.0f}s"
            )
            try:
                yield RealCluster(plane=plane, node=node, images=images)
            finally:
                node.stop()
        finally:
            plane.stop()


# ------------------------------------------------------------------ Prometheus


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """A real Prometheus on loopback (prometheus_harness.Prometheus), scraping nothing until
    the test configures it; skips naming the binary when there is none."""
    from prometheus_harness import MISSING, Prometheus, prometheus_binary

    binary = prometheus_binary()
    if binary is None:
        pytest.skip(f"needs {MISSING}")
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = Prometheus(binary, workdir)
    try:
        yield server
    finally:
        server.stop()
