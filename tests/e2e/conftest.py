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
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(admin_api)
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
