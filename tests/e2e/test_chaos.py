"""Operator chaos on the real control plane (issue 15, "Suites"): the API server restarted
mid-reconcile, etcd killed and restarted, the operator's watch streams cut again and again.
After each the operator converges: every ModelDeployment Ready with its artifact in the
status, exactly one Job and one Deployment per ModelDeployment (no duplicates), no status
lost, and a spec change made after the disruption is acted on well within one resync.

(kill -9 of the operator mid-reconcile is test_operator_lifecycle.py's
`test_killed_mid_reconcile_then_restarted_converges_without_duplicate_jobs`.)

Same setting as test_operator.py: the chart's RBAC, the operator as a subprocess, the
simulated kubelet deciding the conversion pods. The restarts act on the session's shared
control plane and wait until it is ready again, so later tests see a healthy one. Bounded:
each test ends within ~2 minutes or fails.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane, TcpProxy, write_kubeconfig
from kubelet_sim import JobOutcome
from operator_harness import Cluster, OperatorProcess, manifest, summary, wait_for

pytestmark = pytest.mark.e2e

#: The operator's resync period in these tests (operator_harness): a change picked up
#: faster than this came through a watch, not through the periodic resync.
RESYNC_SECONDS = 30
WATCH_DEADLINE = 20.0


@pytest.fixture
def cluster(admin_api: Any, namespace: str) -> Cluster:
    return Cluster(admin_api, namespace)


def _create(cluster: Cluster, names: list[str]) -> dict[str, str]:
    keys = {}
    for i, name in enumerate(names):
        cluster.create(manifest(name, server={"replicas": 1 + i % 2}))
        keys[name] = cluster.key(name)
    return keys


def _succeed(job_outcomes: dict[Any, Any], cluster: Cluster, keys: dict[str, str]) -> None:
    for key in keys.values():
        job_outcomes[(cluster.ns, key)] = JobOutcome.success(summary(key))


def _assert_converged(
    cluster: Cluster, plane: ControlPlane, keys: dict[str, str], timeout: float = 90
) -> dict[str, dict[str, Any]]:
    """Every ModelDeployment Ready with its artifact recorded; exactly one Job and one
    Deployment each; all control-plane processes still running."""
    try:
        ready = {name: cluster.wait_ready(name, timeout=timeout) for name in keys}
    except AssertionError as exc:  # say what the cluster holds: whose side is stuck
        jobs = {
            j.metadata.name: (j.status.succeeded, j.status.failed)
            for j in cluster.batch.list_namespaced_job(cluster.ns).items
        }
        phases = {n: (cluster.md(n).get("status") or {}).get("phase") for n in keys}
        pods = {
            p.metadata.name: (p.spec.node_name, p.status.phase)
            for p in cluster.core.list_namespaced_pod(cluster.ns).items
        }
        raise AssertionError(
            f"{exc}\nJobs (succeeded, failed): {jobs}\nphases: {phases}\npods: {pods}"
        ) from None
    for name, md in ready.items():
        artifact = md["status"]["artifact"]
        assert artifact["key"] == keys[name], name
        assert artifact["digest"] == json.loads(summary(keys[name]))["digest"], name
    jobs = cluster.batch.list_namespaced_job(cluster.ns).items
    per_md = sorted(j.metadata.labels["ondeck.io/model-deployment"] for j in jobs)
    assert per_md == sorted(keys), f"Jobs: {[j.metadata.name for j in jobs]}"
    deployments = cluster.apps.list_namespaced_deployment(cluster.ns).items
    assert sorted(d.metadata.name for d in deployments) == sorted(keys)
    for process in plane.processes:
        assert process.popen.poll() is None, f"{process.name} exited:\n{process.tail()}"
    return ready


def _change_is_acted_on_through_the_watch(cluster: Cluster, name: str) -> float:
    """Scale one ModelDeployment; its Deployment follows within WATCH_DEADLINE seconds
    (a resync would take up to RESYNC_SECONDS). Returns the seconds it took."""
    start = time.monotonic()
    cluster.patch_spec(name, {"server": {"replicas": 3}})
    wait_for(
        f"{name}'s Deployment scaled to 3",
        lambda: cluster.apps.read_namespaced_deployment(name, cluster.ns).spec.replicas == 3,
        timeout=WATCH_DEADLINE,
    )
    cluster.wait_ready(name, timeout=WATCH_DEADLINE)
    return time.monotonic() - start


def _statuses(cluster: Cluster, names: list[str]) -> dict[str, Any]:
    return {name: cluster.md(name)["status"] for name in names}


def test_api_server_restart_mid_reconcile(
    cluster: Cluster,
    control_plane: ControlPlane,
    start_operator: Any,
    job_outcomes: dict[Any, Any],
) -> None:
    operator = start_operator("chaos-apiserver")
    names = [f"a{i}" for i in range(6)]
    keys = _create(cluster, names)
    wait_for("a first Job", lambda: cluster.batch.list_namespaced_job(cluster.ns).items)
    down = control_plane.restart("kube-apiserver", down_seconds=2)
    _succeed(job_outcomes, cluster, keys)
    _assert_converged(cluster, control_plane, keys)
    took = _change_is_acted_on_through_the_watch(cluster, names[0])
    assert operator.popen.poll() is None, operator.tail()
    print(f"apiserver down {down:.1f}s; change after it acted on in {took:.1f}s")


def test_api_server_killed_while_the_operator_writes_status(
    cluster: Cluster,
    control_plane: ControlPlane,
    start_operator: Any,
    job_outcomes: dict[Any, Any],
) -> None:
    """SIGKILL (no graceful shutdown: requests in flight get no answer) just as the Jobs
    succeed and the operator writes Deployments and status."""
    start_operator("chaos-apiserver-kill")
    names = [f"k{i}" for i in range(6)]
    keys = _create(cluster, names)
    wait_for("every Job", lambda: len(cluster.batch.list_namespaced_job(cluster.ns).items) == 6)
    _succeed(job_outcomes, cluster, keys)
    wait_for(
        "a first Deployment", lambda: cluster.apps.list_namespaced_deployment(cluster.ns).items
    )
    control_plane.restart("kube-apiserver", kill=True, down_seconds=1)
    _assert_converged(cluster, control_plane, keys)
    _change_is_acted_on_through_the_watch(cluster, names[1])


def test_etcd_restart_loses_no_status(
    cluster: Cluster,
    control_plane: ControlPlane,
    start_operator: Any,
    job_outcomes: dict[Any, Any],
) -> None:
    start_operator("chaos-etcd")
    done = [f"e{i}" for i in range(3)]
    done_keys = _create(cluster, done)
    _succeed(job_outcomes, cluster, done_keys)
    before = _assert_converged(cluster, control_plane, done_keys)
    pending = [f"p{i}" for i in range(3)]
    pending_keys = _create(cluster, pending)
    wait_for(
        "the pending Jobs",
        lambda: len(cluster.batch.list_namespaced_job(cluster.ns).items) == 6,
    )
    down = control_plane.restart("etcd", kill=True, down_seconds=2)
    # What was Ready before etcd died is still Ready, with the same status.
    assert _statuses(cluster, done) == {n: md["status"] for n, md in before.items()}
    _succeed(job_outcomes, cluster, pending_keys)
    _assert_converged(cluster, control_plane, {**done_keys, **pending_keys})
    took = _change_is_acted_on_through_the_watch(cluster, pending[0])
    print(f"etcd down {down:.1f}s; change after it acted on in {took:.1f}s")


def test_cut_watch_streams_again_and_again(
    cluster: Cluster,
    control_plane: ControlPlane,
    operator_kubeconfig: Path,
    job_outcomes: dict[Any, Any],
    tmp_path: Path,
) -> None:
    """Every connection of the operator to the API server (watches and writes alike) is
    cut six times, 1.5 s apart, while ModelDeployments are created and their Jobs end."""
    host, port = control_plane.server.removeprefix("https://").rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    token = yaml.safe_load(operator_kubeconfig.read_text())["users"][0]["user"]["token"]
    kubeconfig = write_kubeconfig(
        tmp_path / "proxied.kubeconfig",
        server=proxy.url,
        ca_file=control_plane.ca_file,
        user={"token": token},
    )
    operator = OperatorProcess(
        kubeconfig=kubeconfig, namespaces=[cluster.ns], workdir=tmp_path, name="chaos-cut"
    )
    try:
        operator.start()
        names = [f"c{i}" for i in range(6)]
        keys: dict[str, str] = {}
        cut = 0
        for round_ in range(6):
            if round_ < 3:  # two new ModelDeployments in each of the first rounds
                keys.update(_create(cluster, names[2 * round_ : 2 * round_ + 2]))
            else:  # then their Jobs end, two at a time
                start = 2 * (round_ - 3)
                _succeed(job_outcomes, cluster, {n: keys[n] for n in names[start : start + 2]})
            time.sleep(1.5)
            cut += proxy.cut()
        _assert_converged(cluster, control_plane, keys)
        proxy.cut()
        took = _change_is_acted_on_through_the_watch(cluster, names[2])
        assert operator.popen is not None
        assert operator.popen.poll() is None, operator.tail()
        assert cut > 0
        assert proxy.accepted > 1
        print(f"{cut} sockets cut, {proxy.accepted} connections; change acted on in {took:.1f}s")
    except BaseException:
        print(f"--- chaos-cut log\n{operator.tail(150)}")
        raise
    finally:
        operator.stop()
        proxy.close()
