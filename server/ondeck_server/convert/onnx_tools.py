"""Small helpers around ONNX files shared by the converters and stages: saving (with
external data past protobuf's 2 GB limit), the files a model consists of, its declared
inputs/outputs in V2 terms, and an onnxruntime runner. No conversion logic lives here."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ondeck_server.artifact import TensorInfo

if TYPE_CHECKING:
    import onnx

# protobuf cannot serialize a message of 2 GiB or more; stay well below it.
LARGE_BYTES = 1_800_000_000
# From this size the optimized work model keeps its weights in external data (see
# convert.optimize): quantizing it then reads them from disk, whatever the model's size.
WORK_EXTERNAL_BYTES = 64 << 20
EXTERNAL_DATA_SUFFIX = ".data"

Feeds = dict[str, np.ndarray]
Runner = Callable[[Feeds], list[np.ndarray]]

_V2_OF_NUMPY = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
    "int16": "INT16",
    "int8": "INT8",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
    "object": "BYTES",
}


def is_large(model: onnx.ModelProto) -> bool:
    """Whether `model` is too big for one protobuf file. Never `model.ByteSize()`: for a
    model held in memory past 2 GiB protobuf refuses to size it (the very models this is
    for). Counts the bytes of every tensor (initializers, Constant attributes, subgraphs),
    which is nearly all of a large model; stops as soon as the bound is passed."""
    from onnx.external_data_helper import _get_all_tensors

    total = 0
    for tensor in _get_all_tensors(model):
        total += len(tensor.raw_data) if tensor.raw_data else _typed_bytes(tensor)
        if total > LARGE_BYTES:
            return True
    return False


def _typed_bytes(tensor: Any) -> int:
    """Bytes of a tensor kept in typed fields (float_data, int64_data, ...), not raw_data."""
    count = 0
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        count += len(getattr(tensor, field)) * 8
    return count + sum(len(b) for b in tensor.string_data)


def save(model: onnx.ModelProto, path: Path) -> None:
    """Save `model`; tensors go to `<name>.data` next to it when the model is large."""
    import onnx

    if is_large(model):
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + EXTERNAL_DATA_SUFFIX,
        )
    else:
        onnx.save_model(model, str(path))


def normalize_opsets(model: onnx.ModelProto, *, default_version: int = 17) -> bool:
    """One opset import per domain (the highest version), and the default ONNX domain
    present: skl2onnx repeats the default domain, and leaves it out of models made only
    of ai.onnx.ml operators, which onnxruntime's quantizer refuses. True if changed."""
    import onnx

    versions: dict[str, int] = {}
    for op in model.opset_import:
        domain = "" if op.domain == "ai.onnx" else op.domain
        versions[domain] = max(versions.get(domain, 0), op.version)
    versions.setdefault("", default_version)
    wanted = sorted(versions.items())
    current = sorted((op.domain, op.version) for op in model.opset_import)
    if current == wanted:
        return False
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in wanted)
    return True


def external_data_locations(path: Path) -> list[str]:
    """The external data files a model refers to (relative to its folder)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load_model(str(path), load_external_data=False)
    found: list[str] = []
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in found:
                    found.append(entry.value)
    return found


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of `model` points to an external data file."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return any(uses_external_data(tensor) for tensor in _get_all_tensors(model))


def has_external_data_file(path: Path) -> bool:
    """Whether the model at `path` keeps tensors in external data files (graph read only)."""
    return bool(external_data_locations(path))


def model_files(path: Path) -> list[Path]:
    """`path` and the external data files it refers to."""
    return [path, *(path.parent / loc for loc in external_data_locations(path))]


def total_size(path: Path) -> int:
    return sum(p.stat().st_size for p in model_files(path) if p.is_file())


#: ONNX element types by the names the manifest's `precision` uses.
_PRECISION_NAMES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64", 3: "int8", 2: "uint8"}


def weights_precision(path: Path) -> str | None:
    """The number type of most of the model's weights (by element count), e.g. fp32;
    None for a model without initializers (a tree ensemble keeps its numbers in
    attributes). Reads the graph only, never the external data."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    counts: dict[int, int] = {}
    for tensor in model.graph.initializer:
        elements = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
        counts[tensor.data_type] = counts.get(tensor.data_type, 0) + elements
    if not counts:
        return None
    dtype = max(sorted(counts), key=lambda t: counts[t])
    return _PRECISION_NAMES.get(dtype) or str(onnx.TensorProto.DataType.Name(dtype)).lower()


def input_element_bytes(path: Path, prefix: str) -> int | None:
    """The bytes per element of the first graph input whose name starts with `prefix`."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    for value in model.graph.input:
        if value.name.startswith(prefix):
            elem_type = value.type.tensor_type.elem_type
            return int(onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    return None


def io_info(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph inputs (without initializers) and outputs, as V2 names/datatypes/shapes."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_info(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_info(v) for v in model.graph.output]
    return inputs, outputs


def _info(value: Any) -> TensorInfo:
    import onnx

    tensor_type = value.type.tensor_type
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    return TensorInfo(
        name=value.name, datatype=_V2_OF_NUMPY.get(np_dtype.name, "BYTES"), shape=dims
    )


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_ORT_SOURCE = re.compile(r"/onnxruntime_src/\S+ .*?\) (?=[A-Z])")


def error_text(exc: BaseException, limit: int = 400) -> str:
    """An onnxruntime (or any) error as one readable line, without the C++ location."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = _ORT_SOURCE.sub(" ", _ORT_PREFIX.sub("", text))
    return text[:limit]


def session(path: Path, *, threads: int = 1, optimize: bool = True) -> Any:
    """An onnxruntime CPU session (graph optimization as onnxruntime does by default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runner(path: Path, *, threads: int = 1) -> Runner:
    sess = session(path, threads=threads)

    def run(feeds: Feeds) -> list[np.ndarray]:
        return [np.asarray(o) for o in sess.run(None, feeds)]

    return run
