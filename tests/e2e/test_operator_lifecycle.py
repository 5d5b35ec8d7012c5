"""The operator process itself: crash and restart, two replicas, idle resyncs, probes.

Same setting as test_operator.py: real control plane, the chart's RBAC, the operator as a
subprocess, the simulated kubelet deciding the conversion pods.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubelet_sim import JobOutcome
from kubernetes import client
from operator_harness import Cluster, manifest, summary, wait_for

from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.render.args import artifact_key

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(admin_api: Any, namespace: str) -> Cluster:
    return Cluster(admin_api, namespace)


def _key(md: dict[str, Any]) -> str:
    return artifact_key(ModelDeployment.from_manifest(md).spec)


def test_killed_mid_reconcile_then_restarted_converges_without_duplicate_jobs(
    cluster: Cluster, start_operator: Any, job_outcomes: dict[Any, Any]
) -> None:
    first = start_operator("first")
    names = [f"m{i}" for i in range(6)]
    keys = {}
    for i, name in enumerate(names):
        md = cluster.create(manifest(name, server={"replicas": 1 + i % 2}))
        keys[name] = _key(md)
    # Kill -9 as soon as the first Job exists: the other reconciles are in flight.
    wait_for("a first Job", lambda: cluster.batch.list_namespaced_job(cluster.ns).items)
    first.kill()
    jobs_at_kill = len(cluster.batch.list_namespaced_job(cluster.ns).items)

    start_operator("second")
    for name in names:
        job_outcomes[(cluster.ns, keys[name])] = JobOutcome.success(summary(keys[name]))
    for name in names:
        cluster.wait_ready(name, timeout=60)

    jobs = cluster.batch.list_namespaced_job(cluster.ns).items
    per_md = sorted(j.metadata.labels["ondeck.io/model-deployment"] for j in jobs)
    assert per_md == names, f"{jobs_at_kill} Jobs at the kill; now {per_md}"
    deployments = cluster.apps.list_namespaced_deployment(cluster.ns).items
    assert sorted(d.metadata.name for d in deployments) == names


def test_two_replicas_one_active(
    cluster: Cluster,
    admin_api: Any,
    start_operator: Any,
    job_outcomes: dict[Any, Any],
) -> None:
    custom: Any = client.CustomObjectsApi(admin_api)
    custom.create_namespaced_custom_object(
        "kopf.dev",
        "v1",
        cluster.ns,
        "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "ondeck"}},
    )
    peering = ["--peering", "ondeck", "--peering-lifetime", "6"]
    low = start_operator("low", extra=[*peering, "--priority", "100"])
    high = start_operator("high", extra=[*peering, "--priority", "200"])

    def both_registered() -> bool:
        status = (
            custom.get_namespaced_custom_object(
                "kopf.dev", "v1", cluster.ns, "kopfpeerings", "ondeck"
            ).get("status")
            or {}
        )
        return {"low", "high"} <= set(status)

    wait_for("both replicas in the peering", both_registered)
    wait_for("the low replica pausing", lambda: "Pausing operations" in low.tail(400))

    md = cluster.create(manifest("ha"))
    key = _key(md)
    job_outcomes[(cluster.ns, key)] = JobOutcome.success(summary(key))
    cluster.wait_ready("ha")
    writes = {
        name: sum(
            v for k, v in op.metrics().items() if k.startswith("ondeck_operator_writes_total")
        )
        for name, op in (("low", low), ("high", high))
    }
    assert writes["low"] == 0
    assert writes["high"] > 0
    events = cluster.core.list_namespaced_event(
        cluster.ns, field_selector="involvedObject.name=ha,involvedObject.kind=ModelDeployment"
    ).items
    assert {e.reporting_instance for e in events} == {"high"}

    # The active replica dies without a goodbye: the standby takes over after its lifetime.
    high.kill()
    md2 = cluster.create(manifest("ha-2"))
    key2 = _key(md2)
    job_outcomes[(cluster.ns, key2)] = JobOutcome.success(summary(key2))
    cluster.wait_ready("ha-2", timeout=60)
    events = cluster.core.list_namespaced_event(
        cluster.ns, field_selector="involvedObject.name=ha-2,involvedObject.kind=ModelDeployment"
    ).items
    assert {e.reporting_instance for e in events} == {"low"}


def test_idle_resync_writes_nothing(
    cluster: Cluster, start_operator: Any, job_outcomes: dict[Any, Any]
) -> None:
    operator = start_operator("idle", extra=["--resync-seconds", "1"])
    for name in ("idle-a", "idle-b"):
        md = cluster.create(
            manifest(
                name,
                server={"replicas": 2, "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}}},
                ingress={"host": f"{name}.example.com"},
            )
        )
        key = _key(md)
        job_outcomes[(cluster.ns, key)] = JobOutcome.success(summary(key))
    for name in ("idle-a", "idle-b"):
        cluster.wait_ready(name)
    time.sleep(2)  # let the last watch events settle

    def count(prefix: str, **labels: str) -> float:
        total = 0.0
        for sample, value in operator.metrics().items():
            if sample.startswith(prefix) and all(f'{k}="{v}"' in sample for k, v in labels.items()):
                total += value
        return total

    writes = count("ondeck_operator_writes_total")
    reconciles = count("ondeck_operator_reconciles_total", result="ok")
    versions = {
        name: cluster.md(name)["metadata"]["resourceVersion"] for name in ("idle-a", "idle-b")
    }
    time.sleep(4)  # about four resyncs of both
    assert count("ondeck_operator_reconciles_total", result="ok") >= reconciles + 4
    assert count("ondeck_operator_writes_total") == writes
    assert {n: cluster.md(n)["metadata"]["resourceVersion"] for n in versions} == versions

    # Metrics and probes.
    assert count("ondeck_operator_modeldeployments", phase="Ready") == 2
    assert count("ondeck_operator_reconcile_duration_seconds_count") > 0
    assert count("ondeck_operator_api_requests_total", verb="apply") > 0
    status, health = operator.healthz()
    assert status == 200
    assert health["alive"] is True
    assert health["lastResync"] > 0


def test_a_bad_setting_exits_with_one_line(tmp_path: Any) -> None:
    import subprocess
    import sys

    bad = tmp_path / "config.yaml"
    bad.write_text("jobBackoffLimit: lots\n")
    result = subprocess.run(
        [sys.executable, "-m", "ondeck_operator", "operator", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ConfigError: config {bad}: jobBackoffLimit: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]


def test_namespaced_operator_needs_no_cluster_wide_permission(
    cluster: Cluster,
    control_plane: Any,
    admin_api: Any,
    crds: None,
    job_outcomes: dict[Any, Any],
    tmp_path: Any,
) -> None:
    """The chart's namespaced mode: the same rules in a Role of the watched namespace only."""
    from operator_harness import OperatorProcess, operator_rules

    rbac: Any = client.RbacAuthorizationV1Api(admin_api)
    cluster.core.create_namespaced_service_account(
        cluster.ns, {"metadata": {"name": "ns-operator"}}
    )
    rbac.create_namespaced_role(
        cluster.ns, {"metadata": {"name": "ns-operator"}, "rules": operator_rules()}
    )
    rbac.create_namespaced_role_binding(
        cluster.ns,
        {
            "metadata": {"name": "ns-operator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "ns-operator",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": "ns-operator", "namespace": cluster.ns}
            ],
        },
    )
    kubeconfig = control_plane.service_account_kubeconfig(
        tmp_path / "ns.kubeconfig", namespace=cluster.ns, name="ns-operator"
    )
    operator = OperatorProcess(
        kubeconfig=kubeconfig, namespaces=[cluster.ns], workdir=tmp_path, name="namespaced"
    )
    try:
        operator.start()
        md = cluster.create(manifest("scoped", ingress={"host": "scoped.example.com"}))
        key = _key(md)
        job_outcomes[(cluster.ns, key)] = JobOutcome.success(summary(key))
        cluster.wait_ready("scoped")
        assert "Forbidden" not in operator.tail(2000)
        assert "forbidden" not in operator.tail(2000)
    finally:
        operator.stop()
