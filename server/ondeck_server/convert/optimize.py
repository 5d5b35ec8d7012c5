"""Offline graph optimization with onnxruntime: load the FP32 model once at the chosen
level and save the optimized graph, so every server replica starts from it.

Levels (onnxruntime's names):
- `disabled`: the converted model as is.
- `basic` (default): constant folding, redundant-node elimination, and fusions into
  standard ONNX operators only. The result is plain ONNX, runs on any execution
  provider and any CPU: the only level that is safe to build once and serve anywhere.
- `extended`: also fuses into onnxruntime contrib operators (Gelu, LayerNorm, Attention,
  ...); runs on onnxruntime's CPU and CUDA providers, not on other runtimes.
- `all`: also layout transformations (NCHWc) chosen for the CPU the Job ran on; the saved
  model may be slower or fail on a different CPU. Use it only when the Job and the
  servers run on the same hardware.

The server's own session still applies onnxruntime's default online optimizations on top.
This module does not quantize and does not validate.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from ondeck_server.convert import onnx_tools
from ondeck_server.convert.errors import OptimizationFailed


class OptimizationLevel(StrEnum):
    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


def optimize(src: Path, *, level: OptimizationLevel, out: Path) -> None:
    import onnx
    import onnxruntime as ort

    if level is OptimizationLevel.DISABLED:
        onnx_tools.save(onnx.load_model(str(src)), out)
        return
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        OptimizationLevel.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        OptimizationLevel.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        OptimizationLevel.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    options.optimized_model_filepath = str(out)
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    # Weights in a data file next to the optimized model from WORK_EXTERNAL_BYTES on:
    # quantization then reads them from disk one at a time instead of holding copies
    # (convert.quantize). Only this work file: the artifact is split past LARGE_BYTES.
    if onnx_tools.total_size(src) > onnx_tools.WORK_EXTERNAL_BYTES:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name",
            out.name + onnx_tools.EXTERNAL_DATA_SUFFIX,
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind classes
        if _is_disk_error(str(exc)):
            raise OSError(28, f"writing the optimized model: {exc}") from None
        text = onnx_tools.error_text(exc, limit=300)
        raise OptimizationFailed(
            f"onnxruntime cannot optimize the model at level {level.value}: {text}; "
            "try --level basic or --level disabled"
        ) from None
    if not out.is_file():
        raise OptimizationFailed(
            f"onnxruntime did not write the optimized model at level {level.value}; "
            "try --level basic"
        )


def _is_disk_error(text: str) -> bool:
    lowered = text.lower()
    return "no space left" in lowered or "disk quota" in lowered
