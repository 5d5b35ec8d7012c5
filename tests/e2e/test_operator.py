"""The operator against the real control plane: from a ModelDeployment to a served model.

Every test runs `ondeck operator` as a process under the ServiceAccount bound to the chart's
RBAC rules, watching the test's own namespace; the simulated kubelet decides how each
conversion pod ends (a JSON summary, or a failure line, as termination message).
"""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest
from kubelet_sim import JobOutcome
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import GROUP, PLURAL, VERSION, Cluster, manifest, summary, wait_for

from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.render.args import artifact_key
from ondeck_operator.render.manifests import render_job

pytestmark = pytest.mark.e2e

TIMEOUT = 30.0


@pytest.fixture
def cluster(admin_api: Any, namespace: str) -> Cluster:
    return Cluster(admin_api, namespace)


def _owned_by(obj: Any, md: dict[str, Any]) -> bool:
    refs = obj.metadata.owner_references or []
    return any(r.uid == md["metadata"]["uid"] and r.controller for r in refs)


def test_create_converts_then_serves(
    cluster: Cluster, start_operator: Any, job_outcomes: dict[Any, Any], kubelet: Any
) -> None:
    start_operator()
    body = manifest(
        "iris",
        server={"resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}},
        autoscaling={"minReplicas": 2, "maxReplicas": 4},
        ingress={"host": "iris.example.com"},
    )
    md = cluster.create(body)
    key = artifact_key(ModelDeployment.from_manifest(md).spec)

    # The Job runs the rendered `ondeck-server convert` command line.
    (job,) = wait_for("the conversion Job", lambda: cluster.jobs("iris"))
    expected = render_job(ModelDeployment.from_manifest(md), OperatorConfig(job_backoff_limit=0))
    container = job.spec.template.spec.containers[0]
    want = expected["spec"]["template"]["spec"]["containers"][0]
    assert container.command == want["command"] == ["ondeck-server"]
    assert container.args == want["args"]
    assert container.args[0] == "convert"
    assert ["--ref", key] == container.args[-4:-2]
    assert _owned_by(job, md)

    # Ready=False from the first reconcile, for the current generation.
    def converting() -> dict[str, Any] | None:
        status = cluster.md("iris").get("status") or {}
        return status if status.get("phase") == "Converting" else None

    status = wait_for("phase Converting", converting)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "False",
        "Converting",
        1,
    )
    assert status["observedGeneration"] == 1
    with pytest.raises(ApiException):
        cluster.apps.read_namespaced_deployment("iris", cluster.ns)

    # The Job succeeds: the Deployment serves the new artifact by digest; all children exist.
    job_outcomes[(cluster.ns, key)] = JobOutcome.success(summary(key))
    md_ready = cluster.wait_ready("iris")
    digest = json.loads(summary(key))["digest"]
    deployment = cluster.apps.read_namespaced_deployment("iris", cluster.ns)
    args = deployment.spec.template.spec.containers[0].args
    assert args[:3] == ["serve", "--model", f"/artifacts/{digest}"]
    assert deployment.metadata.labels["ondeck.io/artifact-key"] == key
    children = [
        deployment,
        cluster.core.read_namespaced_service("iris", cluster.ns),
        cluster.net.read_namespaced_ingress("iris", cluster.ns),
        cluster.autoscaling.read_namespaced_horizontal_pod_autoscaler("iris", cluster.ns),
        cluster.policy.read_namespaced_pod_disruption_budget("iris", cluster.ns),
        cluster.core.read_namespaced_persistent_volume_claim(f"iris-artifacts-{key}", cluster.ns),
    ]
    assert all(_owned_by(child, md) for child in children)

    status = md_ready["status"]
    assert status["phase"] == "Ready"
    assert status["url"] == "http://iris.example.com/v2/models/iris"
    assert status["artifact"]["digest"] == digest
    assert status["artifact"]["key"] == key
    assert status["artifact"]["inputs"][0]["name"] == "input"
    assert status["selector"] == (
        "app.kubernetes.io/component=server,ondeck.io/model-deployment=iris"
    )
    assert status["readyReplicas"] == 2  # the HPA's minimum, set by the HPA controller
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "ArtifactReady": "True",
        "Available": "True",
    }

    # The HPA owns spec.replicas: the operator's field manager never wrote it.
    managers = {
        m.manager: json.dumps(m.fields_v1) for m in deployment.metadata.managed_fields or []
    }
    assert "f:replicas" not in managers["ondeck"]

    # Events for failures and for Ready (progress is in the status), posted in the background.
    def reasons() -> set[str] | None:
        events = cluster.core.list_namespaced_event(
            cluster.ns,
            field_selector="involvedObject.name=iris,involvedObject.kind=ModelDeployment",
        ).items
        found = {e.reason for e in events}
        return found if "Ready" in found else None

    wait_for("the Event Ready", reasons)
    assert not kubelet.errors


def test_kubectl_get_and_scale(
    cluster: Cluster,
    start_operator: Any,
    job_outcomes: dict[Any, Any],
    control_plane: Any,
    tmp_path: Any,
) -> None:
    from k8s_tools import kubectl_path

    start_operator()
    md = cluster.create(manifest("scaled", server={"replicas": 1}))
    key = artifact_key(ModelDeployment.from_manifest(md).spec)
    job_outcomes[(cluster.ns, key)] = JobOutcome.success(summary(key))
    cluster.wait_ready("scaled")

    kubectl = [
        str(kubectl_path()),
        f"--kubeconfig={control_plane.admin_kubeconfig}",
        f"--cache-dir={tmp_path / 'kube-cache'}",
        "-n",
        cluster.ns,
    ]
    out = subprocess.run(
        [*kubectl, "get", "md"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "NAME", "READY", "PHASE", "KIND", "PRECISION", "REPLICAS", "ROLLOUT", "URL", "AGE"
    ]  # fmt: skip
    # The Rollout column (status.rollout.message, docs/rollout.md) is blank: none has run.
    assert row.split()[:7] == [
        "scaled",
        "True",
        "Ready",
        "tensor",
        "int8",
        "1",
        f"http://scaled.{cluster.ns}.svc.cluster.local/v2/models/scaled",
    ]

    subprocess.run(
        [*kubectl, "scale", "md/scaled", "--replicas=3"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert cluster.md("scaled")["spec"]["server"]["replicas"] == 3
    wait_for(
        "3 ready replicas",
        lambda: (cluster.md("scaled").get("status") or {}).get("readyReplicas") == 3,
    )
    assert cluster.apps.read_namespaced_deployment("scaled", cluster.ns).spec.replicas == 3
    cluster.wait_ready("scaled")


def _spec_update_until_new_job(cluster: Cluster, name: str, old_key: str) -> str:
    cluster.patch_spec(name, {"optimize": {"quantize": "int8"}})
    new_key: str = cluster.key(name)
    assert new_key != old_key
    wait_for(
        "the new Job",
        lambda: any(
            j.metadata.labels["ondeck.io/artifact-key"] == new_key for j in cluster.jobs(name)
        ),
    )
    return new_key


def test_spec_update_rolls_out_only_after_the_new_artifact_is_built(
    cluster: Cluster, start_operator: Any, job_outcomes: dict[Any, Any]
) -> None:
    start_operator()
    md = cluster.create(manifest("roll"))
    old = artifact_key(ModelDeployment.from_manifest(md).spec)
    job_outcomes[(cluster.ns, old)] = JobOutcome.success(summary(old))
    cluster.wait_ready("roll")

    new = _spec_update_until_new_job(cluster, "roll", old)

    # While the new Job runs, the Deployment keeps serving the old artifact.
    def converting() -> dict[str, Any] | None:
        md = cluster.md("roll")
        status = md.get("status") or {}
        if status.get("observedGeneration") == 2 and status.get("phase") == "Converting":
            return status
        return None

    status = wait_for("phase Converting for generation 2", converting)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert f"artifact {old} is still serving" in ready["message"]
    deployment = cluster.apps.read_namespaced_deployment("roll", cluster.ns)
    assert deployment.metadata.labels["ondeck.io/artifact-key"] == old

    job_outcomes[(cluster.ns, new)] = JobOutcome.success(summary(new))
    md_ready = cluster.wait_ready("roll")
    deployment = cluster.apps.read_namespaced_deployment("roll", cluster.ns)
    assert deployment.metadata.labels["ondeck.io/artifact-key"] == new
    assert md_ready["status"]["artifact"]["key"] == new
    # The superseded artifact's claim is deleted (the PVC protection keeps it while in use).
    wait_for(
        "the old claim deleted",
        lambda: all(
            p.metadata.deletion_timestamp is not None
            or p.metadata.labels["ondeck.io/artifact-key"] == new
            for p in cluster.core.list_namespaced_persistent_volume_claim(cluster.ns).items
        ),
    )


def test_failed_conversion_keeps_the_old_version_serving(
    cluster: Cluster, start_operator: Any, job_outcomes: dict[Any, Any]
) -> None:
    start_operator()
    md = cluster.create(manifest("keep"))
    old = artifact_key(ModelDeployment.from_manifest(md).spec)
    job_outcomes[(cluster.ns, old)] = JobOutcome.success(summary(old))
    cluster.wait_ready("keep")

    new = _spec_update_until_new_job(cluster, "keep", old)
    message = "ConversionFailed: the ONNX exporter refused the model: unsupported operator Foo"
    job_outcomes[(cluster.ns, new)] = JobOutcome.failure(message)

    def failed() -> dict[str, Any] | None:
        cond = cluster.condition("keep", "ArtifactReady")
        return cond if cond and cond["reason"] == "ConversionFailed" else None

    cond = wait_for("ArtifactReady=False ConversionFailed", failed)
    assert (cond["status"], cond["message"], cond["observedGeneration"]) == ("False", message, 2)
    status = cluster.md("keep")["status"]
    assert status["phase"] == "Ready"  # not Failed: the old version still serves
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "ConversionFailed"
    assert ready["message"] == f"{message}; artifact {old} is still serving"
    deployment = cluster.apps.read_namespaced_deployment("keep", cluster.ns)
    assert deployment.metadata.labels["ondeck.io/artifact-key"] == old
    assert (deployment.status.available_replicas or 0) == 1

    def warning() -> bool:
        warnings = cluster.core.list_namespaced_event(
            cluster.ns, field_selector="involvedObject.name=keep,type=Warning"
        ).items
        return any(
            e.reason == "ConversionFailed" and e.message.startswith(message) for e in warnings
        )

    wait_for("a Warning Event ConversionFailed", warning)


def test_failed_first_conversion_is_failed(
    cluster: Cluster, start_operator: Any, job_outcomes: dict[Any, Any]
) -> None:
    start_operator()
    md = cluster.create(manifest("broken"))
    key = artifact_key(ModelDeployment.from_manifest(md).spec)
    message = (
        "ChecksumMismatch: sha256 of the fetched file is 0f3a..., spec.model.sha256 is 9b1c..."
    )
    job_outcomes[(cluster.ns, key)] = JobOutcome.failure(message)

    def failed() -> dict[str, Any] | None:
        status = cluster.md("broken").get("status") or {}
        return status if status.get("phase") == "Failed" else None

    status = wait_for("phase Failed", failed)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "ChecksumMismatch",
        message,
    )
    assert "url" not in status
    with pytest.raises(ApiException):
        cluster.apps.read_namespaced_deployment("broken", cluster.ns)
    assert len(cluster.jobs("broken")) == 1  # not retried until the spec changes


def test_children_edited_or_deleted_by_hand_are_restored(
    cluster: Cluster, start_operator: Any, job_outcomes: dict[Any, Any]
) -> None:
    start_operator()
    md = cluster.create(manifest("heal", ingress={"host": "heal.example.com"}))
    key = artifact_key(ModelDeployment.from_manifest(md).spec)
    job_outcomes[(cluster.ns, key)] = JobOutcome.success(summary(key))
    cluster.wait_ready("heal")
    original = cluster.apps.read_namespaced_deployment("heal", cluster.ns)
    original_args = list(original.spec.template.spec.containers[0].args)

    cluster.core.delete_namespaced_service("heal", cluster.ns)
    wait_for(
        "the Service restored",
        lambda: (
            cluster.core.read_namespaced_service("heal", cluster.ns).metadata.deletion_timestamp
            is None
        ),
    )
    cluster.apps.patch_namespaced_deployment(
        "heal",
        cluster.ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "server", "args": ["serve"]}]}}}},
    )
    wait_for(
        "the Deployment's args restored",
        lambda: (
            cluster.apps.read_namespaced_deployment("heal", cluster.ns)
            .spec.template.spec.containers[0]
            .args
            == original_args
        ),
    )
    old_uid = original.metadata.uid
    cluster.apps.delete_namespaced_deployment("heal", cluster.ns)
    restored = wait_for(
        "the Deployment re-created",
        lambda: (
            d
            if (d := cluster.apps.read_namespaced_deployment("heal", cluster.ns)).metadata.uid
            != old_uid
            else None
        ),
    )
    assert restored.spec.template.spec.containers[0].args == original_args
    assert len(cluster.jobs("heal")) == 1  # the served artifact is not rebuilt
    cluster.wait_ready("heal")

    # The Ingress is removed from the spec: the operator deletes it.
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, cluster.ns, PLURAL, "heal", {"spec": {"ingress": None}}
    )
    wait_for(
        "the Ingress deleted",
        lambda: not cluster.net.list_namespaced_ingress(cluster.ns).items,
    )


def test_deleting_the_model_deployment_collects_every_child(
    cluster: Cluster, start_operator: Any, job_outcomes: dict[Any, Any]
) -> None:
    start_operator()
    body = manifest(
        "gone",
        server={"resources": {"requests": {"cpu": "1"}}},
        autoscaling={"minReplicas": 2, "maxReplicas": 3},
        ingress={},
    )
    md = cluster.create(body)
    key = artifact_key(ModelDeployment.from_manifest(md).spec)
    job_outcomes[(cluster.ns, key)] = JobOutcome.success(summary(key))
    cluster.wait_ready("gone")
    assert "finalizers" not in cluster.md("gone")["metadata"]

    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, "gone")

    def all_gone() -> bool:
        ns = cluster.ns
        lists = [
            cluster.apps.list_namespaced_deployment(ns).items,
            cluster.apps.list_namespaced_replica_set(ns).items,
            cluster.core.list_namespaced_service(ns).items,
            cluster.net.list_namespaced_ingress(ns).items,
            cluster.autoscaling.list_namespaced_horizontal_pod_autoscaler(ns).items,
            cluster.policy.list_namespaced_pod_disruption_budget(ns).items,
            cluster.batch.list_namespaced_job(ns).items,
            cluster.core.list_namespaced_persistent_volume_claim(ns).items,
        ]
        return not any(lists)

    wait_for("garbage collection of every child", all_gone, timeout=60)


INVALID = [
    (
        {"model": {"uri": "https://m/x.onnx"}, "server": {"replicas": -1}},
        "spec.server.replicas: Invalid value: -1: spec.server.replicas in body should be "
        "greater than or equal to 0",
    ),
    (
        {"model": {"uri": "https://m/x.onnx"}, "optimize": {"quantize": "int2"}},
        'spec.optimize.quantize: Unsupported value: "int2"',
    ),
    (
        {"model": {"uri": "https://m/x.onnx"}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
        "minReplicas must be less than or equal to maxReplicas",
    ),
    (
        {"model": {"uri": "https://m/x.pt", "format": "pytorch"}},
        "format pytorch needs inputs (name, dtype and shape of each input)",
    ),
    ({"server": {"replicas": 1}}, "spec.model: Required value"),
]


@pytest.mark.parametrize(("spec", "message"), INVALID, ids=[m[:30] for _, m in INVALID])
def test_invalid_manifests_are_rejected_by_the_api_server(
    cluster: Cluster, crds: None, spec: dict[str, Any], message: str
) -> None:
    body = copy.deepcopy(manifest("bad"))
    body["spec"] = spec
    with pytest.raises(ApiException) as err:
        cluster.create(body)
    assert err.value.status == 422
    assert message in json.loads(err.value.body or "{}")["message"]


def test_kubectl_apply_of_an_invalid_manifest_says_what_is_wrong(
    cluster: Cluster, control_plane: Any, crds: None, tmp_path: Any
) -> None:
    from k8s_tools import kubectl_path

    bad = manifest("bad-hpa", autoscaling={"minReplicas": 5, "maxReplicas": 2})
    bad["spec"]["server"] = {"resources": {"requests": {"cpu": "1"}}}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(bad))
    result = subprocess.run(
        [
            str(kubectl_path()),
            f"--kubeconfig={control_plane.admin_kubeconfig}",
            f"--cache-dir={tmp_path / 'kube-cache'}",
            "-n",
            cluster.ns,
            "apply",
            "-f",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'The ModelDeployment "bad-hpa" is invalid: spec.autoscaling.minReplicas: '
        "Invalid value: minReplicas must be less than or equal to maxReplicas"
    )


def test_a_refused_write_is_reported_in_the_status(
    cluster: Cluster, start_operator: Any, job_outcomes: dict[Any, Any]
) -> None:
    # A quota that allows no Service: the API server refuses the operator's apply.
    cluster.core.create_namespaced_resource_quota(
        cluster.ns,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="no-services"),
            spec=client.V1ResourceQuotaSpec(hard={"services": "0"}),
        ),
    )
    wait_for(
        "the quota to be counted",
        lambda: cluster.core.read_namespaced_resource_quota("no-services", cluster.ns).status.hard,
    )
    start_operator()
    cluster.create(manifest("refused"))

    def refused() -> dict[str, Any] | None:
        cond = cluster.condition("refused", "Ready")
        return cond if cond and cond["reason"] == "ApplyFailed" else None

    cond = wait_for("Ready=False ApplyFailed", refused)
    assert cond["status"] == "False"
    assert "exceeded quota: no-services" in cond["message"]
    assert cluster.md("refused")["status"]["phase"] == "Failed"

    # Once the quota goes, the retry (with backoff) converges.
    cluster.core.delete_namespaced_resource_quota("no-services", cluster.ns)
    key = cluster.key("refused")
    job_outcomes[(cluster.ns, key)] = JobOutcome.success(summary(key))
    cluster.wait_ready("refused")
