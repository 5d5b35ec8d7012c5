"""Quantization with onnxruntime's tools, each mode on a real model, and the accuracy
gate refusing a model quantization broke."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest

from ondeck_server import artifact
from ondeck_server.convert import (
    ConvertRequest,
    InvalidSettings,
    Outcome,
    Quantize,
    Thresholds,
    ValidationFailed,
    convert,
    onnx_tools,
    parse_inputs,
)
from ondeck_server.convert.fetch import NoProgress
from ondeck_server.convert.quantize import Int4Settings, gemm_to_matmul, quantize
from pipeline import models
from pipeline.conftest import Sources, assert_nothing_published, onnx_answers
from pipeline.test_cli import run_convert


def mlp_request(sources: Sources, store: Path, mode: Quantize, **extra: object) -> ConvertRequest:
    return ConvertRequest(
        source=str(sources["mlp.pt"]),
        store=store,
        inputs=parse_inputs(models.MLP_INPUTS),
        quantize=mode,
        **extra,  # type: ignore[arg-type]
    )


def op_types(model: Path) -> set[str]:
    return {node.op_type for node in onnx.load_model(str(model)).graph.node}


class StageLines:
    """Events that keep each stage's detail line."""

    def __init__(self) -> None:
        self.lines: dict[str, str] = {}

    def stage(self, name: str, seconds: float, detail: str) -> None:
        self.lines[name] = detail

    def bytes_progress(self) -> NoProgress:
        return NoProgress()


def test_int8_dynamic_shrinks_the_mlp_and_keeps_its_answers(sources: Sources, store: Path) -> None:
    # Judged on real digits: on N(0, 1) noise this MLP's classes nearly tie and 7-bit
    # weights flip 1 pick in 64 on an AVX2 CPU, which says nothing about its accuracy.
    outcome = convert(
        mlp_request(sources, store, Quantize.INT8, calibration=str(sources["digits.npz"]))
    )
    manifest = outcome.manifest
    assert manifest.settings["quantize"] == "int8"
    assert manifest.original_size_bytes / manifest.size_bytes > 3.0
    assert "MatMulInteger" in op_types(outcome.path / artifact.MODEL_FILE)
    assert manifest.validation["cosine"] >= 0.99
    assert manifest.validation["top1Disagreement"] <= 0.01
    # Inputs and outputs stay FP32: clients do not change.
    assert [t.datatype for t in manifest.inputs + manifest.outputs] == ["FP32", "FP32"]


def test_int8_full_range_weights_keep_their_sign_on_every_cpu(tmp_path: Path) -> None:
    """All-ones weights are int8's worst case for the VPMADDUBSW kernels of x86 CPUs
    without VNNI: with 8-bit weights their int16 sums saturate and outputs change sign
    (cosine 0.22 on an AVX2 machine). The artifact must be right on any node's CPU."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weight"], ["output"])],
        "ones",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "ones.onnx")
    outcome = convert(
        ConvertRequest(
            source=str(tmp_path / "ones.onnx"), store=tmp_path / "s", quantize=Quantize.INT8
        )
    )
    assert outcome.manifest.validation["cosine"] >= 0.99


def test_int8_static_with_calibration(sources: Sources, store: Path) -> None:
    outcome = convert(
        mlp_request(sources, store, Quantize.INT8_STATIC, calibration=str(sources["digits.npz"]))
    )
    validation = outcome.manifest.validation
    assert validation["sampleSource"] == "calibration"
    assert validation["passed"] is True
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(outcome.path / artifact.MODEL_FILE)
    assert outcome.manifest.settings["calibrationSha256"] is not None


def test_int8_static_needs_calibration(sources: Sources, store: Path) -> None:
    with pytest.raises(InvalidSettings) as info:
        convert(mlp_request(sources, store, Quantize.INT8_STATIC))
    assert info.value.message == (
        "--quantize int8-static needs --calibration: an .npz with one array per model input "
        "(first dimension = samples); or use --quantize int8 (dynamic)"
    )
    assert_nothing_published(store)


def test_calibration_arrays_must_be_named_after_the_inputs(sources: Sources, store: Path) -> None:
    with pytest.raises(InvalidSettings) as info:
        convert(
            mlp_request(
                sources,
                store,
                Quantize.INT8_STATIC,
                calibration=str(sources["wrong_names.npz"]),
            )
        )
    assert info.value.message == (
        "--calibration has no array for input(s) input; it holds features: name the arrays "
        "after the inputs"
    )
    assert_nothing_published(store)


def test_fp16_keeps_fp32_inputs_and_outputs(sources: Sources, store: Path) -> None:
    outcome = convert(mlp_request(sources, store, Quantize.FP16))
    manifest = outcome.manifest
    assert manifest.size_bytes < 0.6 * manifest.original_size_bytes
    assert [t.datatype for t in manifest.inputs + manifest.outputs] == ["FP32", "FP32"]
    x = models.digits_calibration(8)["input"]
    (got,) = onnx_answers(outcome.path / artifact.MODEL_FILE, {"input": x})
    assert got.dtype == np.float32


def test_cnn_int8_leaves_convolutions_in_fp32(sources: Sources, store: Path) -> None:
    outcome = convert(
        ConvertRequest(
            source=str(sources["cnn.pt"]),
            store=store,
            inputs=parse_inputs(models.CNN_INPUTS),
            quantize=Quantize.INT8,
        )
    )
    ops = op_types(outcome.path / artifact.MODEL_FILE)
    assert "Conv" in ops
    assert "ConvInteger" not in ops


def test_the_gate_refuses_a_model_int8_breaks(sources: Sources, store: Path) -> None:
    with pytest.raises(ValidationFailed) as info:
        convert(
            ConvertRequest(source=str(sources["outlier.onnx"]), store=store, quantize=Quantize.INT8)
        )
    assert info.value.message == (
        "the final model disagrees with the original (onnx-fp32) on 64 generated samples: "
        "cosine 0.0000 < --min-cosine 0.99; top-1 disagreement 0.9688 > "
        "--max-top1-disagreement 0.04. Nothing was published; use a gentler --quantize "
        "(int8-static with --calibration, fp16, none) or, if this loss is acceptable, relax "
        "the threshold"
    )
    assert info.value.details is not None
    assert info.value.details["passed"] is False
    assert_nothing_published(store)
    # The gentler mode the message suggests passes.
    outcome = convert(
        ConvertRequest(source=str(sources["outlier.onnx"]), store=store, quantize=Quantize.FP16)
    )
    assert outcome.manifest.validation["cosine"] > 0.9999


def test_gemm_is_rewritten_to_matmul_with_the_same_answers(sources: Sources) -> None:
    model = onnx.load_model(str(sources["mlp.onnx"]))
    before = sum(n.op_type == "Gemm" for n in model.graph.node)
    assert before == 3
    assert gemm_to_matmul(model) == 3
    assert {n.op_type for n in model.graph.node} >= {"MatMul", "Add"}
    assert "Gemm" not in {n.op_type for n in model.graph.node}
    rewritten = sources.root / "rewritten.onnx"
    onnx.save_model(model, str(rewritten))
    x = models.digits_calibration(16)["input"]
    np.testing.assert_allclose(
        onnx_answers(rewritten, {"input": x})[0],
        onnx_answers(sources["mlp.onnx"], {"input": x})[0],
        atol=1e-5,
    )


def int4_mlp(
    sources: Sources, store: Path, *, events: StageLines | None = None, **extra: object
) -> Outcome:
    """The trained MLP through int4, validated on real digits."""
    request = mlp_request(
        sources, store, Quantize.INT4, calibration=str(sources["digits.npz"]), **extra
    )
    return convert(request, events=events)


def test_int4_shrinks_the_mlp_into_matmul_nbits_and_keeps_its_answers(
    sources: Sources, store: Path
) -> None:
    """Block 32 (the default) on real digits: ~6x smaller, every Linear layer a
    MatMulNBits, the answers of the original. One flipped digit in 64 (0.016) on some CPUs
    (int4 x int8 kernels differ) is within the default gate (2 flips of 64)."""
    events = StageLines()
    outcome = int4_mlp(sources, store, events=events)
    manifest = outcome.manifest
    assert manifest.settings["quantize"] == "int4"
    assert manifest.settings["int4"] == {"blockSize": 32, "accuracyLevel": 4}
    assert manifest.original_size_bytes / manifest.size_bytes > 4.5
    ops = op_types(outcome.path / artifact.MODEL_FILE)
    assert "MatMulNBits" in ops
    assert not {"MatMul", "Gemm"} & ops
    assert (
        events.lines["quantize"]
        == "int4 (block 32, accuracy level 4): 3 of 3 MatMul to MatMulNBits"
    )
    validation = manifest.validation
    assert validation["sampleSource"] == "calibration"
    assert validation["cosine"] >= 0.99
    assert validation["top1Disagreement"] <= 0.04
    # Weight-only: activations are quantized per row inside the kernel, rows never mix.
    assert manifest.batching.independent is True
    assert [t.datatype for t in manifest.inputs + manifest.outputs] == ["FP32", "FP32"]


def test_int4_block_16_passes_the_default_gate(sources: Sources, store: Path) -> None:
    """The smaller block the gate's message suggests: no flipped digit at the default
    thresholds, at the price of a little size."""
    manifest = int4_mlp(sources, store, int4=Int4Settings(block_size=16)).manifest
    assert manifest.settings["int4"] == {"blockSize": 16, "accuracyLevel": 4}
    assert manifest.validation["top1Disagreement"] == 0.0
    assert manifest.validation["passed"] is True
    assert manifest.original_size_bytes / manifest.size_bytes > 4.0


def test_the_gate_refuses_int4_with_int8_activations_on_outliers(
    sources: Sources, store: Path
) -> None:
    """Accuracy level 4 quantizes each block of a row's activations to int8 inside
    MatMulNBits: an input channel 1000x the others rounds the rest to zero. The gate
    refuses it, and the message names the setting that keeps activations in FP32."""
    with pytest.raises(ValidationFailed) as info:
        convert(
            ConvertRequest(
                source=str(sources["outlier.onnx"]),
                store=store,
                quantize=Quantize.INT4,
                int4=Int4Settings(block_size=16),
            )
        )
    message = info.value.message
    assert message.startswith(
        "the final model disagrees with the original (onnx-fp32) on 64 generated samples: cosine 0."
    )
    assert message.endswith(
        "Nothing was published; use --int4-accuracy-level 1 (FP32 activations), a gentler "
        "--quantize (int8, fp16, none) or, if this loss is acceptable, relax the threshold"
    )
    assert info.value.details is not None
    assert info.value.details["cosine"] < 0.9
    assert_nothing_published(store)


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("iris_forest.skops", ""),
        ("outlier.onnx", " (1 MatMul: 1 weight under one block of 32 rows)"),
    ],
)
def test_int4_without_a_matmul_to_quantize_leaves_the_model_unchanged(
    sources: Sources, tmp_path: Path, source: str, found: str
) -> None:
    """A random forest (no MatMul at all) and a 16-row MatMul (under one block of 32):
    the stage line says nothing was quantized, and the model is the unquantized one."""
    events = StageLines()
    int4 = convert(
        ConvertRequest(source=str(sources[source]), store=tmp_path / "a", quantize=Quantize.INT4),
        events=events,
    )
    assert events.lines["quantize"] == (
        "int4 (block 32, accuracy level 4): nothing to quantize, no MatMul or Gemm with a "
        f"constant weight of at least 32 rows{found}; the model is unchanged (FP32)"
    )
    none = convert(ConvertRequest(source=str(sources[source]), store=tmp_path / "b"))
    assert same_graph(int4.path / artifact.MODEL_FILE, none.path / artifact.MODEL_FILE)
    assert int4.manifest.size_bytes == none.manifest.size_bytes
    assert "MatMulNBits" not in op_types(int4.path / artifact.MODEL_FILE)


def same_graph(a: Path, b: Path) -> bool:
    """The same model, but for the graph's name (skl2onnx draws a fresh uuid per run)."""
    models_ = [onnx.load_model(str(p)) for p in (a, b)]
    for model in models_:
        model.graph.name = ""
    return bool(models_[0].SerializeToString() == models_[1].SerializeToString())


def test_int4_settings_change_the_digest_only_for_int4(sources: Sources, tmp_path: Path) -> None:
    """Block size and accuracy level decide the artifact (and are in its manifest); other
    modes ignore them, so their digests do not move."""
    digests = {
        (mode, block): convert(
            mlp_request(
                sources,
                tmp_path / f"{mode.value}-{block}",
                mode,
                int4=Int4Settings(block_size=block),
                thresholds=Thresholds(max_top1_disagreement=1.0),
            )
        ).manifest.digest
        for mode in (Quantize.NONE, Quantize.INT4)
        for block in (32, 64)
    }
    assert digests[(Quantize.NONE, 32)] == digests[(Quantize.NONE, 64)]
    assert digests[(Quantize.INT4, 32)] != digests[(Quantize.INT4, 64)]


def test_int4_settings_are_checked(sources: Sources, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int4 block size 48 is not one of 16, 32, 64, 128, 256"):
        Int4Settings(block_size=48)
    with pytest.raises(ValueError, match="less than or equal to 4"):
        Int4Settings(accuracy_level=5)
    done = run_convert(
        "--source", str(sources["mlp.onnx"]), "--store", str(tmp_path), "--quantize", "int4",
        "--int4-block-size", "48",
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "UsageError: Invalid value for '--int4-block-size' (env var: "
        "'ONDECK_INT4_BLOCK_SIZE'): use one of 16, 32, 64, 128, 256"
    )


def test_language_models_get_the_same_int4_settings() -> None:
    """The hf-causal-lm lane hands --int4-block-size/--int4-accuracy-level to
    onnxruntime-genai's builder (and records them in the manifest)."""
    from ondeck_server.convert.llm import build

    assert build.builder_options("int4") == {
        "precision": "int4",
        "executionProvider": "cpu",
        "blockSize": 32,
        "accuracyLevel": 4,
    }
    options = build.builder_options("int4", Int4Settings(block_size=128, accuracy_level=1))
    assert (options["blockSize"], options["accuracyLevel"]) == (128, 1)
    assert build.builder_options("fp32", Int4Settings(block_size=128)) == {
        "precision": "fp32",
        "executionProvider": "cpu",
    }


def save_matmul_mlp(path: Path, *, external: bool) -> Path:
    """64 -> 128 -> 128 -> 10, MatMul + Add + Relu with numpy weights; `external`: every
    tensor in `<name>.data` next to it (as the pipeline keeps a model past 2 GiB)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    sizes = [64, 128, 128, 10]
    nodes, inits, x = [], [], "input"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = rng.standard_normal(n_out).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["logits" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
            x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=0,
    )
    return path


def initializer_bytes(model: Path) -> dict[str, bytes]:
    loaded = onnx.load_model(str(model))
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in loaded.graph.initializer}


@pytest.mark.parametrize(
    ("mode", "op"), [(Quantize.INT8, "MatMulInteger"), (Quantize.INT4, "MatMulNBits")]
)
def test_quantizing_a_model_with_external_data_is_the_same_as_in_memory(
    tmp_path: Path, mode: Quantize, op: str
) -> None:
    """A model with external data takes the low-memory path (weights read from disk one
    at a time, shapes inferred on the graph alone: bench/large); it must give the very
    model onnxruntime's quantizer gives for the same weights held in memory."""
    inline = save_matmul_mlp(tmp_path / "inline" / "mlp.onnx", external=False)
    external = save_matmul_mlp(tmp_path / "external" / "mlp.onnx", external=True)
    assert onnx_tools.has_external_data_file(external)
    assert not onnx_tools.has_external_data_file(inline)
    outs = {}
    for name, src in (("inline", inline), ("external", external)):
        out = tmp_path / f"{name}-out" / "model.onnx"
        out.parent.mkdir()
        # The pipeline's layout: the work folder is the one the model being quantized is in.
        done = quantize(src, mode=mode, out=out, work=src.parent)
        assert done.startswith(mode.value)
        outs[name] = out
    # The artifact is self-contained: nothing points back at the source's data file.
    assert onnx_tools.model_files(outs["external"]) == [outs["external"]]
    assert op_types(outs["external"]) == op_types(outs["inline"])
    assert op in op_types(outs["external"])
    assert initializer_bytes(outs["external"]) == initializer_bytes(outs["inline"])
    x = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float32)
    got = onnx_answers(outs["external"], {"input": x})[0]
    np.testing.assert_array_equal(got, onnx_answers(outs["inline"], {"input": x})[0])
    fp32 = onnx_answers(inline, {"input": x})[0]
    cosine = float((got * fp32).sum() / np.linalg.norm(got) / np.linalg.norm(fp32))
    assert cosine > (0.99 if mode is Quantize.INT8 else 0.98)
    # The source's own files are untouched, and the work folder holds only our files.
    assert sorted(p.name for p in external.parent.iterdir()) >= ["mlp.onnx", "mlp.onnx.data"]


def test_int8_of_an_external_data_model_with_gemm(sources: Sources, tmp_path: Path) -> None:
    """The torch-exported MLP (Gemm nodes, weights in external data): rewritten to MatMul
    with its data loaded, then quantized; the same answers as from the in-memory model."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("mlp.onnx", "mlp.onnx.weights"):
        (work / name).write_bytes(sources[f"external/{name}"].read_bytes())
    outs = {}
    for name, src, folder in (
        ("external", work / "mlp.onnx", work),
        ("inline", sources["mlp.onnx"], tmp_path / "inline-work"),
    ):
        folder.mkdir(exist_ok=True)
        out = tmp_path / f"{name}-out" / "model.onnx"
        out.parent.mkdir()
        quantize(src, mode=Quantize.INT8, out=out, work=folder)
        outs[name] = out
    assert "Gemm" not in op_types(outs["external"])
    assert "MatMulInteger" in op_types(outs["external"])
    x = models.digits_calibration(16)["input"]
    np.testing.assert_array_equal(
        onnx_answers(outs["external"], {"input": x})[0],
        onnx_answers(outs["inline"], {"input": x})[0],
    )
