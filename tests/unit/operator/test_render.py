"""`render`: every object valid for the real Kubernetes schemas, restricted pods, owner
references, and the behaviour the reconciler relies on."""

from __future__ import annotations

import pytest

from ondeck_operator.api.constants import LABEL_ARTIFACT_KEY
from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.render.args import artifact_key
from ondeck_operator.render.manifests import (
    RenderState,
    model_url,
    render,
    render_job,
    selector_string,
)

from .k8s_checks import all_problems
from .specs import FULL_SPEC, make_md


def kinds(objects: list[dict]) -> list[str]:
    return [o["kind"] for o in objects]


def by_kind(objects: list[dict], kind: str) -> dict:
    (obj,) = [o for o in objects if o["kind"] == kind]
    return obj


@pytest.mark.parametrize("spec", [None, FULL_SPEC], ids=["minimal", "full"])
def test_every_object_is_valid_and_restricted(spec: dict | None, config: OperatorConfig) -> None:
    md = make_md(spec)
    objects = render(md, config, RenderState(serving_key="0" * 16))
    assert all_problems(objects, md) == []


def test_nothing_built_yet_renders_claim_job_service_only(config: OperatorConfig) -> None:
    md = make_md(FULL_SPEC)
    objects = render(md, config, RenderState())
    assert kinds(objects) == ["PersistentVolumeClaim", "Job", "Service", "Ingress"]


def test_built_and_served_renders_no_job(config: OperatorConfig) -> None:
    md = make_md(FULL_SPEC)
    key = artifact_key(md.spec)
    objects = render(md, config, RenderState(serving_key=key, wanted_built=True))
    assert kinds(objects) == [
        "PersistentVolumeClaim", "Deployment", "Service", "Ingress",
        "HorizontalPodAutoscaler", "PodDisruptionBudget",
    ]  # fmt: skip


def test_rollout_keeps_old_claim_and_deployment_while_new_job_runs(
    config: OperatorConfig,
) -> None:
    md = make_md()
    objects = render(md, config, RenderState(serving_key="old0000000000000"))
    claims = [
        o["metadata"]["labels"][LABEL_ARTIFACT_KEY]
        for o in objects
        if o["kind"] == "PersistentVolumeClaim"
    ]
    assert sorted(claims) == sorted([artifact_key(md.spec), "old0000000000000"])
    deployment = by_kind(objects, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model") + 1] == "/artifacts/refs/old0000000000000"
    job = by_kind(objects, "Job")
    assert job["metadata"]["labels"][LABEL_ARTIFACT_KEY] == artifact_key(md.spec)


def test_deployment_serves_digest_folder_when_known(config: OperatorConfig) -> None:
    objects = render(make_md(), config, RenderState(serving_key="k" * 16, serving_digest="d" * 64))
    args = by_kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model") + 1] == "/artifacts/" + "d" * 64


def test_replicas_left_to_hpa_when_autoscaling(config: OperatorConfig) -> None:
    auto = render(make_md(FULL_SPEC), config, RenderState(serving_key="k" * 16))
    assert "replicas" not in by_kind(auto, "Deployment")["spec"]
    fixed = render(make_md(), config, RenderState(serving_key="k" * 16))
    assert by_kind(fixed, "Deployment")["spec"]["replicas"] == 1
    assert "HorizontalPodAutoscaler" not in kinds(fixed)
    assert "PodDisruptionBudget" not in kinds(fixed)


def test_render_is_deterministic(config: OperatorConfig) -> None:
    state = RenderState(serving_key="k" * 16)
    assert render(make_md(FULL_SPEC), config, state) == render(make_md(FULL_SPEC), config, state)


def test_model_url_and_selector(config: OperatorConfig) -> None:
    assert model_url(make_md(), config) == "http://iris.ml.svc.cluster.local/v2/models/iris"
    assert model_url(make_md(FULL_SPEC), config) == "https://iris.example.com/v2/models/iris"
    assert selector_string(make_md()) == (
        "app.kubernetes.io/component=server,ondeck.io/model-deployment=iris"
    )


def _deployment(spec: dict | None, config: OperatorConfig) -> dict:
    return by_kind(render(make_md(spec), config, RenderState(serving_key="k" * 16)), "Deployment")


def test_read_write_once_claim_keeps_server_pods_on_one_node(config: OperatorConfig) -> None:
    affinity = _deployment(None, config)["spec"]["template"]["spec"]["affinity"]
    assert affinity == {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {
                        "matchLabels": {
                            "app.kubernetes.io/component": "server",
                            "ondeck.io/model-deployment": "iris",
                        }
                    },
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    }


@pytest.mark.parametrize(
    "artifacts",
    [{"pvc": {"accessModes": ["ReadWriteMany"]}}, {"existingClaim": "shared"}],
    ids=["read-write-many", "existing-claim"],
)
def test_shared_claims_let_pods_spread(artifacts: dict, config: OperatorConfig) -> None:
    spec = {"model": {"uri": "s3://b/m.onnx"}, "artifacts": artifacts}
    assert "affinity" not in _deployment(spec, config)["spec"]["template"]["spec"]


def test_user_pod_affinity_is_kept_as_is(config: OperatorConfig) -> None:
    user = {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    spec = {"model": {"uri": "s3://b/m.onnx"}, "server": {"affinity": user}}
    assert _deployment(spec, config)["spec"]["template"]["spec"]["affinity"] == user


def test_existing_claim_is_used_and_no_claim_rendered(config: OperatorConfig) -> None:
    spec = {"model": {"uri": "s3://b/m.onnx"}, "artifacts": {"existingClaim": "shared"}}
    objects = render(make_md(spec), config, RenderState(serving_key="k" * 16))
    assert "PersistentVolumeClaim" not in kinds(objects)
    for kind in ("Job", "Deployment"):
        volumes = by_kind(objects, kind)["spec"]["template"]["spec"]["volumes"]
        assert volumes[0]["persistentVolumeClaim"]["claimName"] == "shared"


def test_user_env_overrides_base_env_once(config: OperatorConfig) -> None:
    spec = {"model": {"uri": "s3://b/m.onnx"}, "server": {"env": [{"name": "HOME", "value": "/x"}]}}
    env = _deployment(spec, config)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "HOME", "value": "/x"}]


def test_termination_grace_covers_pre_stop_and_drain(config: OperatorConfig) -> None:
    spec = {"model": {"uri": "s3://b/m.onnx"}, "server": {"drainTimeoutSeconds": 40}}
    pod = _deployment(spec, config)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == config.pre_stop_sleep_seconds
    assert container["args"][container["args"].index("--drain-timeout") + 1] == "40"
    assert pod["terminationGracePeriodSeconds"] == (
        config.pre_stop_sleep_seconds + 40 + config.termination_grace_margin_seconds
    )


def test_pdb_when_two_or_more_replicas_wanted(config: OperatorConfig) -> None:
    state = RenderState(serving_key="k" * 16)
    two = render(make_md({"model": {"uri": "s3://b/m"}, "server": {"replicas": 2}}), config, state)
    assert by_kind(two, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/component": "server",
                "ondeck.io/model-deployment": "iris",
            }
        },
    }
    one = render(make_md({"model": {"uri": "s3://b/m"}, "server": {"replicas": 1}}), config, state)
    assert "PodDisruptionBudget" not in kinds(one)


def test_job_mounts_pvc_sources_read_only_and_sets_pvc_root(config: OperatorConfig) -> None:
    job = render_job(make_md(FULL_SPEC), config)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[args.index("--pvc-root") + 1] == config.sources_mount_path
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/sources/models"]["readOnly"] is True
    assert mounts["/sources/calib"]["readOnly"] is True
    claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert {"claimName": "models", "readOnly": True} in claims
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert args[args.index("--termination-log") + 1] == "/dev/termination-log"
    assert job["spec"]["backoffLimit"] == config.job_backoff_limit
    assert job["spec"]["activeDeadlineSeconds"] == 900
    assert job["spec"]["ttlSecondsAfterFinished"] == config.job_ttl_seconds_after_finished


def test_job_without_pvc_sources_has_no_pvc_root(config: OperatorConfig) -> None:
    args = render_job(make_md(), config)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--pvc-root" not in args
    assert "--termination-log" in args


def test_names_of_long_model_deployments_are_shortened(config: OperatorConfig) -> None:
    name = "m" * 63
    objects = render(make_md(name=name), config, RenderState(serving_key="k" * 16))
    for obj in objects:
        assert len(obj["metadata"]["name"]) <= 63
    assert by_kind(objects, "Deployment")["metadata"]["name"] == name
    assert by_kind(objects, "Job")["metadata"]["name"].endswith(
        "-convert-" + artifact_key(make_md(name=name).spec)
    )


def test_without_uid_no_owner_references(config: OperatorConfig) -> None:
    md = make_md(uid=None)
    for obj in render(md, config, RenderState(serving_key="k" * 16)):
        assert "ownerReferences" not in obj["metadata"]


def test_job_fails_at_once_on_conversion_and_usage_errors(config: OperatorConfig) -> None:
    job = render_job(make_md(), config)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "convert", "operator": "In", "values": [1, 2]},
    }
    assert rules[1]["action"] == "Ignore"
    assert job["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_object_store_renders_no_claim_and_passes_the_uri(config: OperatorConfig) -> None:
    spec = {
        "model": {"uri": "s3://b/m.onnx", "credentialsSecret": "model-creds"},
        "artifacts": {
            "uri": "s3://artifacts/team-a",
            "credentialsSecret": "store-creds",
            "s3EndpointURL": "http://minio.storage:9000",
        },
    }
    md = make_md(spec)
    key = artifact_key(md.spec)
    objects = render(md, config, RenderState(serving_key=key))
    assert "PersistentVolumeClaim" not in kinds(objects)
    assert all_problems(objects, md) == []
    store_env = {"prefix": "ONDECK_STORE_", "secretRef": {"name": "store-creds"}}

    job = by_kind(objects, "Job")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    args = container["args"]
    assert args[args.index("--store") + 1] == "s3://artifacts/team-a"
    assert args[args.index("--store-endpoint-url") + 1] == "http://minio.storage:9000"
    assert args[args.index("--ref") + 1] == key
    # The model's credentials as they are, the store's prefixed: they never collide.
    assert container["envFrom"] == [{"secretRef": {"name": "model-creds"}}, store_env]
    assert {"name": "TMPDIR", "value": config.artifact_mount_path} in container["env"]
    assert {"name": "artifacts", "emptyDir": {}} in job["volumes"]

    pod = by_kind(objects, "Deployment")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    args = server["args"]
    assert args[args.index("--model") + 1] == f"s3://artifacts/team-a/refs/{key}"
    assert args[args.index("--model-cache") + 1] == "/var/cache/ondeck"
    assert args[args.index("--s3-endpoint-url") + 1] == "http://minio.storage:9000"
    assert server["envFrom"] == [store_env]
    assert {"name": "artifacts", "mountPath": "/var/cache/ondeck"} in server["volumeMounts"]
    assert {"name": "artifacts", "emptyDir": {}} in pod["volumes"]
    # No claim to share, so no one-node affinity.
    assert "podAffinity" not in pod.get("affinity", {})


def test_object_store_serves_the_digest_when_known(config: OperatorConfig) -> None:
    spec = {"model": {"uri": "s3://b/m.onnx"}, "artifacts": {"uri": "s3://artifacts/"}}
    state = RenderState(serving_key="k" * 16, serving_digest="d" * 64)
    deployment = by_kind(render(make_md(spec), config, state), "Deployment")
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    assert server["args"][server["args"].index("--model") + 1] == "s3://artifacts/" + "d" * 64
    assert "--s3-endpoint-url" not in server["args"]
    assert "envFrom" not in server


def test_language_model_deployment_args(config: OperatorConfig) -> None:
    """spec.llm reaches the server's argv (its memory: tests/unit/operator/test_sizing.py)."""
    spec = {
        "model": {"uri": "pvc://models/tinyllm/", "format": "hf-causal-lm"},
        "optimize": {"quantize": "int4"},
        "llm": {"maxContextLength": 512, "maxBatchSize": 4, "servedModelName": "tiny-chat"},
    }
    container = _deployment(spec, config)["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--name") + 1] == "tiny-chat"
    assert args[args.index("--max-batch-size") + 1] == "4"
    assert args[args.index("--max-context-length") + 1] == "512"
