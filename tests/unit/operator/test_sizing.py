"""Resource sizing (render/sizing.py): the server's memory and ephemeral-storage from the
served artifact's report, the conversion Job's from spec.model.size, the startup probe
from the artifact's size, the LLM autoscaling metric, and how the reconciler hands the
Job's summary to render. The expected figures are written out from the formulas in
docs/operations.md ("Sizing"), not computed by the code under test.

Snapshots of a sized language-model Deployment + HPA and of a large tensor model on an
object store live in snapshots/sizing-*.yaml (ONDECK_UPDATE_SNAPSHOTS=1 rewrites them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import ArtifactReport, SpecError
from ondeck_operator.reconcile.facts import Observed
from ondeck_operator.reconcile.kinds import DEPLOYMENT, JOB, POD
from ondeck_operator.reconcile.plan import plan
from ondeck_operator.render import sizing
from ondeck_operator.render.args import artifact_key
from ondeck_operator.render.manifests import RenderState, render
from ondeck_operator.render.yaml_out import dump_all

from ..reconciler.builders import NOW, finished_job, held
from ..reconciler.builders import md as reconciler_md
from .k8s_checks import all_problems
from .specs import make_md

MI = 1 << 20
GI = 1 << 30
SNAPSHOTS = Path(__file__).with_name("snapshots")
UPDATE = os.environ.get("ONDECK_UPDATE_SNAPSHOTS") == "1"

LLM_SPEC: dict[str, Any] = {
    "model": {"uri": "pvc://models/tinyllm/", "format": "hf-causal-lm"},
    "optimize": {"quantize": "int4"},
    "llm": {"maxContextLength": 128, "maxBatchSize": 8, "servedModelName": "tinyllm"},
}
#: The tiny LLaMA's conversion summary as `convert` wrote it (int4, examples/tinyllm).
TINY_SUMMARY: dict[str, Any] = {
    "digest": "a" * 64,
    "path": "/artifacts/" + "a" * 64,
    "ref": "k",
    "sizeBytes": 257029,
    "originalSizeBytes": 560488,
    "sourceSizeBytes": 582000,
    "format": "hf-causal-lm",
    "quantize": "int4",
    "precision": "int4",
    "kind": "llm",
    "inputs": [],
    "outputs": [],
    "validation": {"kind": "llm", "top1Agreement": 0.867, "passed": True},
    "cached": False,
    "llm": {
        "numLayers": 2,
        "numKeyValueHeads": 2,
        "headSize": 16,
        "kvBytesPerElement": 4,
        "contextLength": 256,
    },
}


def _report(**changes: Any) -> ArtifactReport:
    return ArtifactReport.model_validate({**TINY_SUMMARY, "key": "k" * 16, **changes})


def _server(spec: dict[str, Any], report: ArtifactReport | None) -> dict[str, Any]:
    state = RenderState(serving_key="k" * 16, artifact=report)
    objects = render(make_md(spec), OperatorConfig(), state)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def _job(spec: dict[str, Any]) -> dict[str, Any]:
    objects = render(make_md(spec), OperatorConfig(), RenderState())
    job = next(o for o in objects if o["kind"] == "Job")
    container: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return container


def _mi(n: int) -> str:
    """Bytes rounded up to MiB, as the rendered quantities are (Gi when whole)."""
    mib = -(-n // MI)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def test_kv_cache_formula_on_the_tiny_model() -> None:
    # 2 (K, V) x 2 layers x 2 KV heads x head size 16 x 4 bytes x 256 context x 8 sequences
    assert sizing.kv_cache_bytes(_report(), 8) == 2 * 2 * 2 * 16 * 4 * 256 * 8 == MI


def test_language_model_memory_is_weights_plus_kv_cache_plus_constant() -> None:
    resources = _server(LLM_SPEC, _report())["resources"]
    # weights + KV cache (batch 8, maxContextLength 128 of 256) + LLM overhead
    request = 257029 + MI // 2 + 768 * MI
    assert resources["requests"] == {"cpu": "1", "memory": _mi(request)}
    assert resources["limits"] == {"memory": _mi(request + 512 * MI)}


def test_the_kv_cache_grows_with_the_batch_and_a_big_model() -> None:
    """A 70B-style shape (80 layers, 8 KV heads, head 128, context 4096, fp32 KV) with
    4 sequences: 2 x 80 x 8 x 128 x 4 x 4096 x 4 = 10 GiB of KV cache next to 35 GiB."""
    big = _report(
        sizeBytes=35 * GI,
        llm={
            "numLayers": 80,
            "numKeyValueHeads": 8,
            "headSize": 128,
            "kvBytesPerElement": 4,
            "contextLength": 4096,
        },
    )
    spec = {**LLM_SPEC, "llm": {"maxBatchSize": 4}}
    resources = _server(spec, big)["resources"]
    request = 35 * GI + 10 * GI + 768 * MI
    assert resources["requests"]["memory"] == _mi(request)
    assert resources["limits"]["memory"] == _mi(request + request // 4)
    # Without spec.llm.maxBatchSize the server's batching.maxBatchSize (32) decodes at once.
    wide = _server({**LLM_SPEC, "llm": None}, big)["resources"]["requests"]["memory"]
    assert wide == _mi(35 * GI + 80 * GI + 768 * MI)


def test_max_context_length_shrinks_the_kv_cache() -> None:
    """The server allocates each slot for `--max-context-length` positions when that is
    below the model's context (serve/llm/decoder.py): 64 of 256 is a quarter."""
    assert sizing.kv_cache_bytes(_report(), 8, 64) == MI // 4
    assert sizing.kv_cache_bytes(_report(), 8, 4096) == MI
    spec = {**LLM_SPEC, "llm": {"maxBatchSize": 8, "maxContextLength": 64}}
    request = 257029 + MI // 4 + 768 * MI
    assert _server(spec, _report())["resources"]["requests"]["memory"] == _mi(request)


def test_an_older_summary_without_the_kv_element_size_counts_fp32() -> None:
    llm = {**TINY_SUMMARY["llm"]}
    del llm["kvBytesPerElement"]
    assert sizing.kv_cache_bytes(_report(llm=llm), 8) == MI


def test_a_language_model_without_kv_terms_falls_back() -> None:
    resources = _server(LLM_SPEC, _report(llm=None))["resources"]
    assert resources == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}


def test_tensor_model_memory_is_weights_plus_constant() -> None:
    report = _report(kind="tensor", llm=None, sizeBytes=3 * GI)
    resources = _server({"model": {"uri": "s3://b/m.onnx"}}, report)["resources"]
    request = 3 * GI + 512 * MI
    assert resources["requests"]["memory"] == _mi(request)
    assert resources["limits"]["memory"] == _mi(request + request // 4)
    # No ephemeral-storage: the server reads the artifact from its claim, in place.
    assert "ephemeral-storage" not in resources["requests"]


def test_nothing_known_keeps_the_former_defaults() -> None:
    resources = _server({"model": {"uri": "s3://b/m.onnx"}}, None)["resources"]
    assert resources == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}


def test_the_spec_wins_and_the_pair_stays_ordered() -> None:
    report = _report(kind="tensor", llm=None, sizeBytes=3 * GI)  # computed: 3.5Gi / 4.375Gi
    both = {"requests": {"memory": "6Gi"}, "limits": {"memory": "8Gi"}}
    spec = {"model": {"uri": "s3://b/m.onnx"}, "server": {"resources": both}}
    assert _server(spec, report)["resources"] == both
    # A request above the computed limit takes the limit with it.
    spec["server"] = {"resources": {"requests": {"memory": "6Gi"}}}
    assert _server(spec, report)["resources"] == {
        "requests": {"memory": "6Gi"},
        "limits": {"memory": "6Gi"},
    }
    # A limit below the computed request brings the request down to it.
    spec["server"] = {"resources": {"limits": {"memory": "2Gi"}}}
    assert _server(spec, report)["resources"] == {
        "requests": {"memory": "2Gi"},
        "limits": {"memory": "2Gi"},
    }


def test_object_store_copies_get_ephemeral_storage() -> None:
    report = _report(kind="tensor", llm=None, sizeBytes=8 * GI)
    spec = {"model": {"uri": "s3://b/m.onnx"}, "artifacts": {"uri": "s3://store/p"}}
    resources = _server(spec, report)["resources"]
    assert resources["requests"]["ephemeral-storage"] == _mi(8 * GI + 256 * MI)
    assert resources["limits"]["ephemeral-storage"] == _mi(8 * GI + 256 * MI + 2 * GI + 256 * MI)


def test_startup_probe_scales_with_the_artifact() -> None:
    config = OperatorConfig()
    small = _server(LLM_SPEC, _report())["startupProbe"]
    assert small["failureThreshold"] == config.startup_failure_threshold
    assert small["periodSeconds"] == 5
    big = _report(kind="tensor", llm=None, sizeBytes=100 * GI)
    probe = _server({"model": {"uri": "s3://b/m.onnx"}}, big)["startupProbe"]
    # 60 s + 100 GiB at 50 MiB/s = 2108 s, in 5 s attempts.
    assert probe["failureThreshold"] == 422
    remote = {"model": {"uri": "s3://b/m.onnx"}, "artifacts": {"uri": "s3://store/p"}}
    # Downloaded, then loaded: twice the reading.
    assert _server(remote, big)["startupProbe"]["failureThreshold"] == 832


def test_job_memory_from_the_source_size() -> None:
    config = OperatorConfig()
    assert _job({"model": {"uri": "s3://b/m.onnx"}})["resources"] == {
        "requests": dict(config.job_resources.requests or {}),
        "limits": dict(config.job_resources.limits or {}),
    }
    spec = {"model": {"uri": "s3://b/m.onnx", "size": "10Gi"}, "optimize": {"quantize": "int8"}}
    resources = _job(spec)["resources"]
    request = 6 * 10 * GI + GI  # int8 peaked at 5.35x the weights (bench/large)
    assert resources["requests"] == {"cpu": "1", "memory": _mi(request)}
    assert resources["limits"] == {"memory": _mi(request + request // 4)}
    llm = {**LLM_SPEC, "model": {**LLM_SPEC["model"], "size": "2Gi"}}
    assert _job(llm)["resources"]["requests"]["memory"] == _mi(4 * 2 * GI + GI)
    # The spec's own memory wins; the computed values fill only what it leaves out.
    spec["optimize"]["resources"] = {"requests": {"cpu": "4", "memory": "80Gi"}}
    resources = _job(spec)["resources"]
    assert resources["requests"] == {"cpu": "4", "memory": "80Gi"}
    assert resources["limits"] == {"memory": "80Gi"}  # the computed 76.25Gi, raised to it


def test_job_on_an_object_store_gets_ephemeral_storage() -> None:
    spec = {
        "model": {"uri": "s3://b/m.onnx", "size": "10Gi"},
        "artifacts": {"uri": "s3://store/p"},
    }
    resources = _job(spec)["resources"]
    assert resources["requests"]["ephemeral-storage"] == _mi(4 * 10 * GI + GI)
    # With a claim the work folder is on the claim: no ephemeral-storage.
    assert "ephemeral-storage" not in _job({"model": spec["model"]})["resources"]["requests"]


def test_sized_objects_are_valid_kubernetes() -> None:
    spec = {**LLM_SPEC, "model": {**LLM_SPEC["model"], "size": "3Gi"}}
    md = make_md(spec)
    objects = render(md, OperatorConfig(), RenderState(serving_key="k" * 16))
    assert all_problems(objects, md) == []
    scaled = make_md({**spec, "autoscaling": {"maxReplicas": 4, "targetRequestsWaiting": 2}})
    state = RenderState(serving_key="k" * 16, wanted_built=True, artifact=_report())
    assert all_problems(render(scaled, OperatorConfig(), state), scaled) == []


def test_llm_autoscaling_renders_a_pods_metric() -> None:
    spec = {**LLM_SPEC, "autoscaling": {"maxReplicas": 4, "targetRequestsWaiting": "2"}}
    objects = render(make_md(spec), OperatorConfig(), RenderState(serving_key="k" * 16))
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][1] == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "vllm:num_requests_waiting"},
            "target": {"type": "AverageValue", "averageValue": "2"},
        },
    }


def test_llm_autoscaling_needs_a_language_model() -> None:
    spec = {"model": {"uri": "s3://b/m.onnx"}, "autoscaling": {"maxReplicas": 2}}
    spec["autoscaling"]["targetRequestsWaiting"] = "2"
    with pytest.raises(SpecError) as caught:
        make_md(spec)
    assert caught.value.problems == [
        "spec.autoscaling: autoscaling.targetRequestsWaiting needs model.format hf-causal-lm "
        "(vllm:num_requests_waiting is a language-model metric)"
    ]


@pytest.mark.parametrize("bad", ["-2x", "lots", True])
def test_bad_model_size_names_the_field(bad: object) -> None:
    with pytest.raises(SpecError) as caught:
        make_md({"model": {"uri": "s3://b/m.onnx", "size": bad}})
    assert caught.value.problems[0].startswith("spec.model.size: ")


def test_the_jobs_summary_sizes_the_deployment_and_reaches_the_status() -> None:
    """Job succeeded with an LLM summary → the Deployment's memory from its KV terms, and
    status.artifact reports kind, precision and the gate; once the status holds it, the
    next reconcile renders the same Deployment (nothing to apply)."""
    config = OperatorConfig()
    m = reconciler_md(LLM_SPEC)
    first = plan(m, Observed(), config, now=NOW)
    job = next(o for o in first.applies if o["kind"] == "Job")
    done, pod = finished_job(job, succeeded=True, message=json.dumps(TINY_SUMMARY))
    observed = Observed({JOB: (done,), POD: (pod,)})
    second = plan(m, observed, config, now=NOW)
    deployment = next(o for o in second.applies if o["kind"] == "Deployment")
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["memory"] == _mi(257029 + MI // 2 + 768 * MI)  # KV for 128 of 256
    artifact = second.status.artifact
    assert artifact is not None
    assert (artifact.kind, artifact.precision) == ("llm", "int4")
    assert artifact.key == artifact_key(m.spec)
    assert artifact.llm is not None
    assert artifact.llm.context_length == 256
    assert artifact.validation == TINY_SUMMARY["validation"]
    # The Job's pod is gone (TTL): the status alone still sizes the same Deployment.
    status = second.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    later = reconciler_md(LLM_SPEC, status=status)
    third = plan(later, Observed({JOB: (done,), DEPLOYMENT: (held(deployment),)}), config, now=NOW)
    assert [o["kind"] for o in third.applies if o["kind"] == "Deployment"] == []


SNAPSHOT_CASES: dict[str, tuple[dict[str, Any], ArtifactReport]] = {
    "sizing-tinyllm": (
        {**LLM_SPEC, "autoscaling": {"maxReplicas": 4, "targetRequestsWaiting": "2"}},
        _report(),
    ),
    "sizing-large-s3": (
        {
            "model": {"uri": "s3://models/big/model.onnx", "size": "12Gi"},
            "optimize": {"quantize": "int8"},
            "artifacts": {"uri": "s3://artifacts/team-a"},
        },
        _report(kind="tensor", llm=None, precision="int8", sizeBytes=3 * GI),
    ),
}


@pytest.mark.parametrize("name", sorted(SNAPSHOT_CASES))
def test_sizing_snapshot(name: str) -> None:
    spec, report = SNAPSHOT_CASES[name]
    md = make_md(spec)
    key = artifact_key(md.spec)
    # A new artifact is being built while the previous one, `report`, serves.
    state = RenderState(serving_key="0" * 16, serving_digest=report.digest, artifact=report)
    objects = [
        o
        for o in render(md, OperatorConfig(), state)
        if o["kind"] in ("Job", "Deployment", "HorizontalPodAutoscaler")
    ]
    text = f"# render/sizing.py for spec {json.dumps(spec, sort_keys=True)} (key {key})\n"
    text += dump_all(objects)
    path = SNAPSHOTS / f"{name}.yaml"
    if UPDATE:
        path.write_text(text)
    assert path.is_file(), f"no snapshot {path.name}: run with ONDECK_UPDATE_SNAPSHOTS=1"
    assert path.read_text() == text, f"{path.name} drifted: ONDECK_UPDATE_SNAPSHOTS=1 rewrites it"
    assert list(yaml.safe_load_all(text))
