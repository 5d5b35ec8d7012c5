"""Quantization with onnxruntime's tools, each mode on a real model, and the accuracy
gate refusing a model quantization broke."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from ondeck_server import artifact
from ondeck_server.convert import (
    ConvertRequest,
    InvalidSettings,
    Quantize,
    ValidationFailed,
    convert,
    parse_inputs,
)
from ondeck_server.convert.quantize import gemm_to_matmul
from pipeline import models
from pipeline.conftest import Sources, assert_nothing_published, onnx_answers


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


def test_int8_dynamic_shrinks_the_mlp_and_keeps_its_answers(sources: Sources, store: Path) -> None:
    outcome = convert(mlp_request(sources, store, Quantize.INT8))
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
        "--max-top1-disagreement 0.01. Nothing was published; use a gentler --quantize "
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
