"""`render`: every object valid for the real Kubernetes schemas, restricted pods, owner
references, and the behaviour the reconciler relies on."""

from __future__ import annotations

import pytest

from ondeck_operator.args import artifact_key
from ondeck_operator.config import OperatorConfig
from ondeck_operator.constants import LABEL_ARTIFACT_KEY
from ondeck_operator.render import RenderState, model_url, render, selector_string

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
