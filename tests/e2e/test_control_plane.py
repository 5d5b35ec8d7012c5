"""The loopback control plane and the node simulator behave like the real thing.

These guard the fixtures the operator tests stand on: RBAC is enforced, the Job controller
reads the simulated termination message, Deployments become available, and deleting a
namespace garbage-collects what it held.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubelet_sim import JobOutcome, KubeletSimulator
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.e2e

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _job(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}
            },
        },
    }


def test_job_pods_end_as_the_test_decides(
    admin_api: Any, kubelet: KubeletSimulator, namespace: str
) -> None:
    batch: Any = client.BatchV1Api(admin_api)
    core: Any = client.CoreV1Api(admin_api)
    kubelet.set_job_rule(
        lambda pod: (
            JobOutcome.success('{"digest": "d1"}')
            if pod["metadata"]["name"].startswith("good")
            else JobOutcome.failure("ConversionError: bad model")
        )
    )
    batch.create_namespaced_job(namespace, _job("good"))
    batch.create_namespaced_job(namespace, _job("bad"))

    wait_for("job good", lambda: batch.read_namespaced_job("good", namespace).status.succeeded)
    wait_for("job bad", lambda: batch.read_namespaced_job("bad", namespace).status.failed)
    (bad,) = core.list_namespaced_pod(namespace, label_selector="job-name=bad").items
    terminated = bad.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.message) == (1, "ConversionError: bad model")
    (good,) = core.list_namespaced_pod(namespace, label_selector="job-name=good").items
    assert good.status.container_statuses[0].state.terminated.message == '{"digest": "d1"}'


def test_deployment_pods_become_ready(
    admin_api: Any, kubelet: KubeletSimulator, namespace: str
) -> None:
    apps: Any = client.AppsV1Api(admin_api)
    labels = {"app": "d"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "d"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "x"}]},
                },
            },
        },
    )
    wait_for(
        "2 available replicas",
        lambda: (
            (apps.read_namespaced_deployment("d", namespace).status.available_replicas or 0) == 2
        ),
    )
    assert not kubelet.errors


def test_rbac_is_enforced(
    control_plane: Any, admin_api: Any, namespace: str, tmp_path: Path
) -> None:
    core: Any = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    kubeconfig = control_plane.service_account_kubeconfig(
        tmp_path / "nobody.kubeconfig", namespace=namespace, name="nobody"
    )
    with control_plane.api_client(kubeconfig) as api, pytest.raises(ApiException) as err:
        client.CoreV1Api(api).list_namespaced_pod(namespace)
    assert err.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in str(err.value.body)
