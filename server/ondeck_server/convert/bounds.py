"""Bounds on what a model file may make the conversion allocate, checked before anything
is materialised: a 209-byte ONNX file can declare a 4 TiB tensor (`ConstantOfShape`
of `[2^20, 2^20]`), a 1 MB zip can inflate to gigabytes. Past a bound the conversion
stops with one line naming the bound and how to raise it, instead of being OOM-killed
without a word (Kubernetes nodes overcommit memory, so a huge allocation succeeds and
the kernel kills the process later).

- `max_tensor_bytes`: the largest tensor the ONNX graph may compute, for every value
  whose shape shape inference (with data propagation) can work out, with the dynamic
  dimensions bound as the validation runs them;
- `max_unpacked_bytes`: the total uncompressed size of a zip-based file (skops,
  TorchScript / torch.export archives, a calibration .npz), from the zip's directory
  (Python's zipfile never inflates a member past its declared size).

Both default to 4 GiB, or a quarter of the container's memory limit when one is set
(the Job's `resources.limits.memory`), whichever is smaller. The Job's memory limit
stays the last bound for what no declared size reveals.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from ondeck_server.convert.errors import UnsafeModel

_CAP = 4 << 30
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)
TENSOR_FLAG = "--max-tensor-bytes (ONDECK_MAX_TENSOR_BYTES)"
UNPACKED_FLAG = "--max-unpacked-bytes (ONDECK_MAX_UNPACKED_BYTES)"
_RAISE = "raise the Job's memory limit (spec.optimize.resources.limits.memory) or {flag}"


def memory_limit() -> int | None:
    """This container's memory limit in bytes, when it has one."""
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):
            return int(text)
    return None


def default_bound() -> int:
    """4 GiB, or a quarter of the memory limit when that is smaller."""
    limit = memory_limit()
    return min(_CAP, limit // 4) if limit else _CAP


def human(n: float) -> str:
    """Bytes in binary units (KiB = 1024 B), one decimal: `19.5 KiB`; the one unit
    convention of everything ondeck prints (the operator's banner.size is the same)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def check_zip(path: Path, *, limit: int, what: str) -> None:
    """Refuse a zip whose members declare more than `limit` bytes in all; a file that is
    not a zip passes (its loader reports what it is)."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # the loader reports a broken archive in its own words
    total = sum(max(0, m.file_size) for m in members)
    if total > limit:
        raise UnsafeModel(
            f"{what} unpacks to {human(total)} ({total} bytes in {len(members)} files), over "
            f"the limit of {human(limit)} ({limit} bytes); "
            + _RAISE.format(flag=UNPACKED_FLAG)
            + " if the file is genuine"
        )


def check_tensor_sizes(
    model_path: Path, *, limit: int, batch: int, other_dims: int, what: str
) -> None:
    """Refuse an ONNX model whose graph declares a value larger than `limit` bytes, with
    the graph inputs' dynamic dimensions bound to `batch` (dim 0) and `other_dims`."""
    import onnx

    model = onnx.load_model(str(model_path), load_external_data=False)
    _drop_weights(model)
    _bind_inputs(model, batch=batch, other_dims=other_dims)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shapes that cannot be inferred: nothing declared
        return
    graph = inferred.graph
    for value in [*graph.value_info, *graph.output]:
        size = _declared_bytes(value)
        if size is not None and size > limit:
            shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            raise UnsafeModel(
                f"{what} computes {value.name!r} of shape {shape} {dtype.name} "
                f"({human(size)}), over the limit of {human(limit)} ({limit} bytes) for one "
                f"tensor; " + _RAISE.format(flag=TENSOR_FLAG) + " if the model is genuine"
            )


#: Initializers above this are weights, never shape data: shape inference needs only
#: their dimensions.
_WEIGHT_BYTES = 1 << 20


def _drop_weights(model: Any) -> None:
    """Drop the bytes of big initializers from this throwaway copy of the model (they are
    marked external data, which shape inference never reads): in-memory shape inference
    serializes and parses the whole model, 4x the weights at 0.5 GiB (bench/large)."""
    import onnx

    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and tensor.ByteSize() > _WEIGHT_BYTES:
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            tensor.external_data.add(key="location", value="weights-not-loaded")


def _bind_inputs(model: Any, *, batch: int, other_dims: int) -> None:
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_value = batch if index == 0 else other_dims


def _declared_bytes(value: Any) -> int | None:
    import onnx

    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape") or not tensor_type.elem_type:
        return None
    elements = 1
    for dim in tensor_type.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        elements *= max(0, dim.dim_value)
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
    except Exception:  # string or exotic types: count one byte per element
        itemsize = 1
    return elements * max(1, itemsize)
