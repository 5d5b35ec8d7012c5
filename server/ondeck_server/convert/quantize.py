"""Quantization with onnxruntime's own tools.

- `int8`: dynamic quantization (`quantize_dynamic`): weights int8 per channel, activations
  quantized at run time. Per-channel matters: per-tensor weights degrade sentence
  embeddings (MiniLM cosine ≈ 0.96 instead of ≈ 0.99). Gemm nodes are first rewritten to
  MatMul + Add (onnxruntime quantizes MatMul dynamically, not Gemm); Conv is left in FP32
  because onnxruntime's ConvInteger kernel is slower than FP32 on CPU: use `int8-static`
  for convolutional networks.
- `int8-static`: static QDQ quantization (`quantize_static`) with activation ranges
  calibrated (MinMax) on the `--calibration` arrays; activations uint8, weights int8 per
  channel (the combination onnxruntime's x86 kernels are fastest with). Only the
  compute-heavy operators (Conv, ConvTranspose, MatMul, Gemm) are quantized: quantizing
  every operator wrecks transformers (MiniLM cosine 0.34 instead of 0.94).
- `fp16`: weights and compute in float16, inputs and outputs stay FP32 so clients do not
  change. onnxruntime's own copy of the converter (`onnxruntime.transformers.float16`):
  onnxconverter-common 1.16 leaves `Cast(to=float)` nodes behind that make transformer
  exports fail to load. Halves the size; on CPUs without fp16 kernels
  onnxruntime inserts casts, so expect no speed-up (or a slow-down) there.
- `int4`: weight-only 4-bit MatMul (onnxruntime's `MatMulNBitsQuantizer`, round to
  nearest, asymmetric, `block_size` weights of a column share one scale and zero point):
  every MatMul whose constant weight has at least one block of rows becomes a
  `com.microsoft.MatMulNBits`; Gemm is rewritten to MatMul + Add first, as for int8.
  Activations stay FP32 in the graph (`accuracy_level` 4 lets the kernel quantize them to
  int8 per block of each row inside the MatMul: rows never mix). A model with no such
  MatMul is left unchanged, and the stage line says so.

`quant_pre_process` (shape inference) runs first; it falls back to skipping symbolic
shape inference, which fails on some transformer exports. This module does not validate.

Memory (issue 11, bench/large): a model whose weights are in external data (the
optimized work model keeps them there from 64 MiB on) is quantized to int8 or int4
without ever holding its FP32 weights twice. Shape inference (ours and the
quantizer's) runs on the graph alone, the weights staying on disk; onnxruntime's
`ONNXQuantizer` reads each weight from the data file when it quantizes it. The plain
`quantize_dynamic` held four copies: the caller's, its own, the deep copy and the reload
its shape inference makes: the conversion peaked at 5.35x the weights at 2.25 GiB,
1.82x now (int4 1.16x).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ondeck_server.convert import onnx_tools
from ondeck_server.convert.errors import InvalidSettings, QuantizationFailed
from ondeck_server.convert.onnx_tools import Feeds

CALIBRATION_MAX_ROWS = 256
DEFAULT_OPSET = 17
STATIC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_CALIBRATION_BATCH = 8


class Quantize(StrEnum):
    NONE = "none"
    INT8 = "int8"
    INT8_STATIC = "int8-static"
    FP16 = "fp16"
    INT4 = "int4"
    """Weight-only 4-bit MatMul (MatMulNBits); language models: onnxruntime-genai's builder."""
    AUTO = "auto"
    """Every mode that applies, judged and timed; the fastest that passes (convert.auto)."""


#: Block sizes onnxruntime's CPU MatMulNBits kernels (MLAS) have fast paths for; the op
#: takes any power of two from 16, others fall back to dequantizing the whole weight.
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)


class Int4Settings(BaseModel):
    """`--int4-block-size` and `--int4-accuracy-level` (MatMulNBits' attributes)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    block_size: int = Field(
        default=32,
        ge=INT4_BLOCK_SIZES[0],
        le=INT4_BLOCK_SIZES[-1],
        serialization_alias="blockSize",
        description="Weights of one column quantized together (one scale, one zero point).",
    )
    accuracy_level: int = Field(
        default=4,
        ge=1,
        le=4,
        serialization_alias="accuracyLevel",
        description="Compute type of the MatMul: 1 fp32, 2 fp16, 3 bf16, 4 int8 activations "
        "(x86 CPUs compute 2 and 3 in fp32).",
    )

    @model_validator(mode="after")
    def _block_size_is_supported(self) -> Self:
        if self.block_size not in INT4_BLOCK_SIZES:
            raise ValueError(
                f"int4 block size {self.block_size} is not one of "
                f"{', '.join(map(str, INT4_BLOCK_SIZES))}"
            )
        return self

    def describe(self) -> str:
        return f"block {self.block_size}, accuracy level {self.accuracy_level}"


def quantize(
    src: Path,
    *,
    mode: Quantize,
    out: Path,
    work: Path,
    calibration: Feeds | None = None,
    int4: Int4Settings | None = None,
) -> str:
    """Write the `mode`-quantized version of `src` to `out` (`none`: a copy); returns what
    was done, in words, for the stage line."""
    import onnx

    if mode is Quantize.AUTO:
        raise ValueError("quantize auto chooses among the other modes (convert.auto.choose)")
    if mode is Quantize.NONE:
        onnx_tools.save(onnx.load_model(str(src)), out)
        return mode.value
    if mode is Quantize.INT8_STATIC and calibration is None:
        raise InvalidSettings(
            "--quantize int8-static needs --calibration: an .npz with one array per model "
            "input (first dimension = samples); or use --quantize int8 (dynamic)"
        )
    large = onnx_tools.total_size(src) > onnx_tools.LARGE_BYTES
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode is Quantize.FP16:
                _fp16(src, out)
                return mode.value
            if mode is Quantize.INT4:
                return _int4(src, out, settings=int4 or Int4Settings())
            prepared = _pre_process(src, work / "pre.onnx", large=large)
            if mode is Quantize.INT8:
                _int8_dynamic(prepared, out, work=work, large=large)
            else:
                assert calibration is not None
                _int8_static(prepared, out, calibration=calibration, large=large)
            return mode.value
    except (InvalidSettings, QuantizationFailed, OSError):
        raise
    except Exception as exc:  # onnxruntime.quantization raises assorted classes
        text = onnx_tools.error_text(exc, limit=300)
        raise QuantizationFailed(
            f"{mode.value} quantization failed: {type(exc).__name__}: {text}; "
            "try another --quantize mode or --quantize none"
        ) from None


def _with_onnx_domain(src: Path, out: Path) -> Path:
    """A copy of `src` with clean opset imports when it needs one (see normalize_opsets).
    Its external data stays where it is when `out` is in the same folder (graph only)."""
    import onnx

    in_place = out.parent == src.parent
    model = onnx.load_model(str(src), load_external_data=not in_place)
    if not onnx_tools.normalize_opsets(model, default_version=DEFAULT_OPSET):
        return src
    if in_place and onnx_tools.has_external_data(model):
        onnx.save_model(model, str(out))
    else:
        onnx_tools.save(model, out)
    return out


def _pre_process(src: Path, out: Path, *, large: bool) -> Path:
    src = _with_onnx_domain(src, out.with_name("domain.onnx"))
    if src.parent == out.parent and onnx_tools.has_external_data_file(src):
        return _pre_process_graph(src, out)
    done = _quant_pre_process(
        lambda: str(src), out, save_as_external_data=large, all_tensors_to_one_file=True
    )
    return out if done else src


def _pre_process_graph(src: Path, out: Path) -> Path:
    """`_pre_process` for a model with external data: onnxruntime's pre-processing on the
    graph alone (loaded without its weights, which symbolic shape inference needs only
    the dimensions of), saved next to `src` so the weights' locations still resolve. The
    ONNX shape inference step is left to the quantizer, which runs it again anyway."""
    import onnx

    done = _quant_pre_process(
        lambda: onnx.load_model(str(src), load_external_data=False),
        out,
        skip_onnx_shape=True,
        save_as_external_data=False,
    )
    return out if done else src


def _quant_pre_process(model: Callable[[], Any], out: Path, **options: Any) -> bool:
    """onnxruntime's `quant_pre_process` of `model()` (a path, or a graph loaded afresh
    for each try) into `out`, with symbolic shape inference and, when that fails (it does
    on some exports), without it. False when both tries fail (`out` then does not exist)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            # On failure, symbolic shape inference dumps `sym_shape_infer_temp.onnx` and its
            # external data into the working directory: keep that inside our work folder
            # (a Job's root filesystem is read-only, and a laptop's cwd is the user's).
            with contextlib.chdir(out.parent):
                quant_pre_process(
                    model(),
                    str(out),
                    skip_optimization=True,
                    skip_symbolic_shape=skip_symbolic,
                    **options,
                )
            return True
        except Exception:
            out.unlink(missing_ok=True)
    return False


def gemm_to_matmul(model: Any) -> int:
    """Rewrite `Gemm(A, B, C)` with constant B, alpha = beta = 1, transA = 0 into
    `MatMul(A, B') + C`, in place. Returns how many nodes were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    rewritten = 0
    nodes: list[Any] = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = initializers.get(node.input[1]) if node.op_type == "Gemm" else None
        if (
            weight is None
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
            or attrs.get("transA", 0) != 0
        ):
            nodes.append(node)
            continue
        matrix = numpy_helper.to_array(weight)
        if attrs.get("transB", 0):
            matrix = matrix.T
        new_name = f"{node.input[1]}_matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(matrix), new_name))
        has_bias = len(node.input) > 2 and node.input[2] != ""
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(
            helper.make_node(
                "MatMul", [node.input[0], new_name], [product], name=f"{node.name}_matmul"
            )
        )
        if has_bias:
            nodes.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"
                )
            )
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for n in graph.node for i in n.input}
        keep = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        onnx.checker.check_model(model)
    return rewritten


#: 7-bit weights. onnxruntime's uint8 x int8 kernels on x86 CPUs without VNNI (AVX2, plain
#: AVX-512) use VPMADDUBSW, whose int16 pair sums saturate with full-range weights: on
#: such a CPU a MatMul of all-ones weights gave outputs of the wrong sign (cosine 0.22 to
#: the original). An artifact is built once and served on whatever CPU the node has, so
#: it is built to be right on all of them (onnxruntime's quantization docs say the same).
REDUCE_RANGE = True


def _int8_ops() -> list[str]:
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return sorted(op for op in IntegerOpsRegistry if op != "Conv")


def _int8_dynamic(src: Path, out: Path, *, work: Path, large: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if onnx_tools.has_external_data_file(src):
        _int8_dynamic_external(src, out, work=work)
        return
    model = onnx.load_model(str(src))
    if gemm_to_matmul(model):
        src = work / "matmul.onnx"
        onnx_tools.save(model, src)
    del model
    quantize_dynamic(
        str(src),
        str(out),
        op_types_to_quantize=_int8_ops(),
        per_channel=True,
        weight_type=QuantType.QInt8,
        reduce_range=REDUCE_RANGE,
        use_external_data_format=large,
    )


@contextlib.contextmanager
def _graph_only_shape_inference() -> Iterator[None]:
    """While the block runs, onnxruntime's quantizer infers shapes on the graph in memory
    (`onnx.shape_inference.infer_shapes`) instead of deep-copying the model, saving the
    copy and loading it back with its weights (`save_and_reload_model_with_shape_infer`):
    the same inference, without two more copies of the weights. Only for models whose
    weights are external data the graph merely points to."""
    import onnx
    from onnxruntime.quantization import onnx_quantizer
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    def infer(model: Any) -> Any:
        inferred = onnx.shape_inference.infer_shapes(model)
        add_infer_metadata(inferred)
        return inferred

    original = onnx_quantizer.save_and_reload_model_with_shape_infer
    onnx_quantizer.save_and_reload_model_with_shape_infer = infer
    try:
        yield
    finally:
        onnx_quantizer.save_and_reload_model_with_shape_infer = original


def _int8_dynamic_external(src: Path, out: Path, *, work: Path) -> None:
    """Dynamic int8 for a model with external data, as `quantize_dynamic` does it
    (onnxruntime's ONNXQuantizer, same options) but reading each weight from disk when it
    is quantized: the graph is loaded without its data, shapes are inferred on the graph
    alone, and the quantizer runs in the model's folder, where the weights' relative
    locations resolve. What it did not quantize is loaded before the artifact is saved
    (its data then goes to the artifact's own data file)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import (
        QuantizationMode,
        add_infer_metadata,
        update_opset_version,
    )

    model = onnx.load_model(str(src), load_external_data=False)
    if any(node.op_type == "Gemm" for node in model.graph.node):
        load_external_data_for_model(model, str(src.parent))  # rewritten with their data
        if gemm_to_matmul(model):
            src = work / "matmul.onnx"
            onnx.save_model(  # still external data, whatever its size: read back lazily
                model,
                str(src),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=src.name + onnx_tools.EXTERNAL_DATA_SUFFIX,
            )
            model = onnx.load_model(str(src), load_external_data=False)
    model = onnx.shape_inference.infer_shapes(model)
    add_infer_metadata(model)
    model = update_opset_version(model, QuantType.QInt8)
    with contextlib.chdir(src.parent), _graph_only_shape_inference():
        quantizer = ONNXQuantizer(
            model,
            True,  # per_channel
            REDUCE_RANGE,
            QuantizationMode.IntegerOps,
            False,  # static
            QuantType.QInt8,
            QuantType.QUInt8,  # dynamic activations are uint8
            None,
            [],
            [],
            _int8_ops(),
            {"MatMulConstBOnly": True},
        )
        del model
        quantizer.quantize_model()
        quantizer.model.topological_sort()  # as ONNXModel.save_model_to_file does
        quantized = quantizer.model.model
        del quantizer
        load_external_data_for_model(quantized, str(src.parent))
    onnx_tools.save(quantized, out)


def calibration_batches(feeds: Feeds, *, batch: int) -> list[Feeds]:
    """Split calibration arrays into feeds of `batch` rows (at most CALIBRATION_MAX_ROWS)."""
    rows = min(min(len(v) for v in feeds.values()), CALIBRATION_MAX_ROWS)
    rows -= rows % batch
    return [
        {k: np.ascontiguousarray(v[i : i + batch]) for k, v in feeds.items()}
        for i in range(0, rows, batch)
    ]


def _int8_static(src: Path, out: Path, *, calibration: Feeds, large: bool) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    inputs, _ = onnx_tools.io_info(src)
    fixed = {t.shape[0] for t in inputs if t.shape and t.shape[0] > 0}
    batch = fixed.pop() if len(fixed) == 1 else _CALIBRATION_BATCH
    batches = calibration_batches(calibration, batch=batch)
    if not batches:
        raise InvalidSettings(
            f"--calibration has fewer rows than one batch ({batch}); give more samples"
        )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> Feeds | None:
            return next(self._it, None)

    quantize_static(
        str(src),
        str(out),
        Reader(),
        op_types_to_quantize=list(STATIC_OPS),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=REDUCE_RANGE,
        use_external_data_format=large,
    )


def _fp16(src: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers import float16

    model = onnx.load_model(str(src))
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx_tools.save(converted, out)


def _matmul_nbits_quantizer() -> Any:
    """onnxruntime's MatMulNBitsQuantizer, imported without the side effect of its module:
    it calls `logging.basicConfig(level=INFO)`, which would give the root logger a handler
    and print every library's INFO lines on the conversion's stderr."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)
    return matmul_nbits_quantizer.MatMulNBitsQuantizer


def int4_candidates(model: Any, *, block_size: int) -> tuple[list[str], dict[str, list[str]]]:
    """(names of the MatMul nodes int4 quantizes, {why: names of those left in FP32}), in
    graph order. A MatMul qualifies when its weight (input B) is a constant FP32 matrix
    (or one with leading dimensions of 1) with at least `block_size` rows; a smaller one
    would be padded to a whole block and gain nothing. Unnamed nodes are named first (in
    place): the quantizer selects nodes by name."""
    from onnx import TensorProto

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    taken = {n.name for n in graph.node if n.name}
    chosen: list[str] = []
    skipped: dict[str, list[str]] = {}
    for index, node in enumerate(graph.node):
        if node.op_type != "MatMul":
            continue
        if not node.name:
            name = f"MatMul_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
        weight = initializers.get(node.input[1])
        dims = list(weight.dims) if weight is not None else []
        if weight is None:
            why = "multiply two activations"
        elif (
            weight.data_type != TensorProto.FLOAT or len(dims) < 2 or any(d != 1 for d in dims[:-2])
        ):
            why = "weight not an FP32 matrix"
        elif dims[-2] < block_size:
            why = f"weight under one block of {block_size} rows"
        else:
            chosen.append(node.name)
            continue
        skipped.setdefault(why, []).append(node.name)
    return chosen, skipped


def _int4(src: Path, out: Path, *, settings: Int4Settings) -> str:
    """int4 with onnxruntime's MatMulNBitsQuantizer. A model with external data and no
    Gemm is loaded without its weights and quantized in its own folder: the quantizer
    reads each weight from the data file (onnx_ir maps it) when it packs it, so the FP32
    weights are never all in memory (bench/large)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load_model(str(src), load_external_data=False)
    from_disk = onnx_tools.has_external_data(model) and not any(
        node.op_type == "Gemm" for node in model.graph.node
    )
    if not from_disk:
        load_external_data_for_model(model, str(src.parent))
        gemm_to_matmul(model)
    chosen, skipped = int4_candidates(model, block_size=settings.block_size)
    left_out = sum(len(names) for names in skipped.values())
    reasons = ", ".join(f"{len(names)} {why}" for why, names in skipped.items())
    if not chosen:
        onnx_tools.save(onnx.load_model(str(src)), out)
        found = f" ({left_out} MatMul: {reasons})" if left_out else ""
        return (
            f"int4 ({settings.describe()}): nothing to quantize, no MatMul or Gemm with a "
            f"constant weight of at least {settings.block_size} rows{found}; the model is "
            "unchanged (FP32)"
        )
    quantizer = _matmul_nbits_quantizer()(
        model,
        bits=4,
        block_size=settings.block_size,
        is_symmetric=False,
        accuracy_level=settings.accuracy_level,
        nodes_to_exclude=[name for names in skipped.values() for name in names],
        op_types_to_quantize=("MatMul",),
    )
    del model
    with contextlib.chdir(src.parent) if from_disk else contextlib.nullcontext():
        quantizer.process()
        quantized = quantizer.model.model
        del quantizer
        if from_disk:  # what stayed FP32 goes into the artifact's own files
            load_external_data_for_model(quantized, str(src.parent))
    done = sum(n.op_type == "MatMulNBits" for n in quantized.graph.node)
    onnx_tools.save(quantized, out)
    left = f"; {left_out} left in FP32 ({reasons})" if left_out else ""
    return (
        f"int4 ({settings.describe()}): {done} of {len(chosen) + left_out} MatMul to "
        f"MatMulNBits{left}"
    )
