"""The cluster side of every example: each manifest under examples/ validates against the
generated CRD schema and renders to objects the Kubernetes OpenAPI schema accepts
(strictly); the production and S3 examples render what their comments promise."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.codegen.crd import validation_schema
from ondeck_operator.render.args import artifact_key
from ondeck_operator.render.manifests import RenderState, render

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("examples/*/modeldeployment.yaml"))
K8S_VERSION = kubernetes_validate.latest_version()


def _load(path: Path) -> dict[str, Any]:
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (doc,) = docs
    return doc


def _objects(md: ModelDeployment, *, built: bool) -> dict[str, dict[str, Any]]:
    key = artifact_key(md.spec)
    state = RenderState(serving_key=key if built else None, wanted_built=built)
    return {o["kind"]: o for o in render(md, OperatorConfig(), state)}


def test_every_example_folder_has_a_manifest() -> None:
    folders = sorted(p.name for p in (ROOT / "examples").iterdir() if p.is_dir())
    assert [p.parent.name for p in EXAMPLES] == folders
    assert folders == ["canary", "cnn", "iris", "minilm", "production", "s3", "tinyllm"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_matches_the_crd_schema_and_renders_valid_objects(path: Path) -> None:
    raw = _load(path)
    jsonschema.validate(raw, validation_schema())
    md = ModelDeployment.from_manifest(raw)
    for built in (False, True):
        for obj in _objects(md, built=built).values():
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_production_example_renders_ingress_autoscaling_and_auth() -> None:
    md = ModelDeployment.from_manifest(_load(ROOT / "examples/production/modeldeployment.yaml"))
    objs = _objects(md, built=True)
    assert {
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= set(objs)
    ingress = objs["Ingress"]["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"hosts": ["iris.example.com"], "secretName": "iris-tls"}]
    hpa = objs["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert "replicas" not in objs["Deployment"]["spec"]  # the HPA owns it
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert secrets == ["iris-token"]
    (server,) = pod["containers"]
    assert "--auth-token-file" in server["args"]


def test_production_example_pins_the_committed_iris_model() -> None:
    md = ModelDeployment.from_manifest(_load(ROOT / "examples/production/modeldeployment.yaml"))
    committed = hashlib.sha256((ROOT / "examples/iris/model.skops").read_bytes()).hexdigest()
    assert md.spec.model.sha256 == committed


def test_s3_example_job_reads_credentials_from_the_secret() -> None:
    md = ModelDeployment.from_manifest(_load(ROOT / "examples/s3/modeldeployment.yaml"))
    secret = _load(ROOT / "examples/s3/secret.yaml")
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    job = _objects(md, built=False)["Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    assert "s3://ondeck-examples/iris/model.skops" in container["args"]
