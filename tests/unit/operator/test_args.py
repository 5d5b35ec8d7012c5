"""The convert/serve command lines (the contract in docs/architecture.md) and the key."""

from __future__ import annotations

from ondeck_operator.api.spec import InputSpec
from ondeck_operator.render.args import (
    artifact_key,
    convert_args,
    inputs_arg,
    pvc_claims,
    serve_args,
)

from .specs import FULL_SPEC, make_md


def test_convert_args_minimal_spec_passes_every_setting_explicitly() -> None:
    spec = make_md().spec
    assert convert_args(spec, store="/artifacts", ref="k1") == [
        "convert", "--source", "s3://b/iris.onnx",
        "--level", "basic", "--quantize", "none",
        "--validation-samples", "64", "--min-cosine", "0.99", "--max-top1-disagreement", "0.04",
        "--store", "/artifacts", "--ref", "k1",
    ]  # fmt: skip


def test_convert_args_full_spec() -> None:
    spec = make_md(FULL_SPEC).spec
    args = convert_args(
        spec, store="/a", ref="k", termination_log="/dev/termination-log", pvc_root="/sources"
    )
    assert args == [
        "convert", "--source", "pvc://models/iris/model.skops", "--format", "sklearn",
        "--sha256", "a" * 64, "--level", "all", "--quantize", "int8-static",
        "--calibration", "pvc://calib/iris.npz",
        "--validation-samples", "128", "--min-cosine", "0.995", "--max-top1-disagreement", "0.02",
        "--s3-endpoint-url", "http://minio.storage:9000", "--pvc-root", "/sources",
        "--store", "/a", "--ref", "k", "--termination-log", "/dev/termination-log",
    ]  # fmt: skip


def test_convert_args_auto_with_validation_data() -> None:
    """auto passes the int4 settings its int4 candidate uses; validation data is its own
    flag, and a pvc:// one is a claim the Job mounts."""
    spec = make_md(
        {
            "model": {"uri": "s3://b/iris.onnx"},
            "optimize": {
                "quantize": "auto",
                "calibration": "pvc://calib/c.npz",
                "validation": {"data": "pvc://held-out/v.npz"},
            },
        }
    ).spec
    args = convert_args(spec, store="/s", ref=None)
    assert args[args.index("--quantize") + 1] == "auto"
    assert args[args.index("--int4-block-size") + 1] == "32"
    assert args[args.index("--int4-accuracy-level") + 1] == "4"
    assert args[args.index("--validation-data") + 1] == "pvc://held-out/v.npz"
    assert pvc_claims(spec) == ["calib", "held-out"]


def test_convert_args_pytorch_inputs_and_pickle() -> None:
    spec = make_md(
        {
            "model": {
                "uri": "file:///m/model.joblib",
                "format": "pytorch",
                "allowUnsafePickle": True,
                "inputs": [
                    {"name": "x", "dtype": "float32", "shape": [-1, 3, 32, 32]},
                    {"name": "mask", "dtype": "bool", "shape": [-1]},
                ],
            }
        }
    ).spec
    args = convert_args(spec, store="/s", ref=None)
    assert args[args.index("--inputs") + 1] == "x:float32:[-1,3,32,32];mask:bool:[-1]"
    assert "--allow-unsafe-pickle" in args
    assert "--ref" not in args


def test_inputs_arg_one_entry() -> None:
    assert inputs_arg([InputSpec(name="t", dtype="int64", shape=[-1, 7])]) == "t:int64:[-1,7]"


def test_serve_args_minimal_and_full() -> None:
    assert serve_args(make_md().spec, model_path="/a/refs/k", name="iris") == [
        "serve", "--model", "/a/refs/k", "--name", "iris", "--host", "0.0.0.0", "--port", "8080",
        "--max-batch-size", "32", "--max-delay-ms", "2.0", "--drain-timeout", "30",
    ]  # fmt: skip
    full = serve_args(
        make_md(FULL_SPEC).spec,
        model_path="/a/d",
        name="iris",
        host="127.0.0.1",
        port=9000,
        auth_token_file="/t/token",
    )
    assert full == [
        "serve", "--model", "/a/d", "--name", "iris", "--host", "127.0.0.1", "--port", "9000",
        "--max-batch-size", "16", "--max-delay-ms", "1.5", "--threads", "2",
        "--auth-token-file", "/t/token", "--max-body-bytes", "1048576", "--max-queue", "256",
        "--drain-timeout", "20",
    ]  # fmt: skip


def test_artifact_key_is_stable_and_ignores_serving_fields() -> None:
    base = make_md().spec
    key = artifact_key(base)
    assert len(key) == 16
    assert all(c in "0123456789abcdef" for c in key)
    assert artifact_key(make_md().spec) == key
    serving = make_md(
        {
            "model": {"uri": "s3://b/iris.onnx", "credentialsSecret": "other"},
            "optimize": {"timeoutSeconds": 120, "resources": {"limits": {"memory": "9Gi"}}},
            "server": {"replicas": 7, "threads": 3},
            "ingress": {"host": "x.example.com"},
        }
    ).spec
    assert artifact_key(serving) == key


def test_artifact_key_changes_with_model_and_optimize() -> None:
    key = artifact_key(make_md().spec)
    changed = [
        {"model": {"uri": "s3://b/other.onnx"}},
        {"model": {"uri": "s3://b/iris.onnx", "sha256": "b" * 64}},
        {"model": {"uri": "s3://b/iris.onnx", "format": "onnx"}},
        {"model": {"uri": "s3://b/iris.onnx"}, "optimize": {"quantize": "int8"}},
        {"model": {"uri": "s3://b/iris.onnx"}, "optimize": {"level": "all"}},
        {"model": {"uri": "s3://b/iris.onnx"}, "optimize": {"validation": {"minCosine": 0.9}}},
    ]
    keys = {artifact_key(make_md(spec).spec) for spec in changed}
    assert key not in keys
    assert len(keys) == len(changed)


#: Like examples/tinyllm/modeldeployment.yaml, with every `spec.llm` setting.
TINYLLM_SPEC = {
    "model": {"uri": "pvc://models/tinyllm/", "format": "hf-causal-lm"},
    "optimize": {"quantize": "int4"},
    "server": {"batching": {"maxBatchSize": 8}},
    "llm": {"maxContextLength": 512, "maxBatchSize": 4, "servedModelName": "tiny-chat"},
}


def test_serve_args_of_a_language_model() -> None:
    """spec.llm names the model, caps the context and wins over batching.maxBatchSize."""
    spec = make_md(TINYLLM_SPEC, name="tinyllm").spec
    assert serve_args(spec, model_path="/a/r", name="tinyllm") == [
        "serve", "--model", "/a/r", "--name", "tiny-chat", "--host", "0.0.0.0", "--port", "8080",
        "--max-batch-size", "4", "--max-delay-ms", "2.0", "--max-context-length", "512",
        "--drain-timeout", "30",
    ]  # fmt: skip


def test_serve_args_of_default_sampling() -> None:
    """spec.llm.sampling: one --default-* flag per field set, none for the rest."""
    llm = {**TINYLLM_SPEC["llm"], "sampling": {"temperature": 0.0, "topK": 40, "maxTokens": 64}}
    spec = make_md({**TINYLLM_SPEC, "llm": llm}, name="tinyllm").spec
    args = serve_args(spec, model_path="/a/r", name="tinyllm")
    assert args[args.index("--max-context-length") :] == [
        "--max-context-length", "512", "--default-temperature", "0.0", "--default-top-k", "40",
        "--default-max-tokens", "64", "--drain-timeout", "30",
    ]  # fmt: skip


def test_serve_args_of_a_language_model_without_llm_settings() -> None:
    """Without them: metadata.name, server.batching.maxBatchSize, the model's context."""
    spec = make_md({**TINYLLM_SPEC, "llm": {}}, name="tinyllm").spec
    args = serve_args(spec, model_path="/a/r", name="tinyllm")
    assert args[args.index("--name") + 1] == "tinyllm"
    assert args[args.index("--max-batch-size") + 1] == "8"
    assert "--max-context-length" not in args
