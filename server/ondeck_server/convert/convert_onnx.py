"""ONNX sources: check the model (onnx.checker, shape inference) and write it as the FP32
model of the pipeline. External data files next to the model are loaded with it and
written back together (one `.data` file when the model is over protobuf's 2 GB limit).

The FP32 ONNX model itself is the validation reference for ONNX sources. This module
does not optimize or quantize.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ondeck_server.convert import onnx_tools, store
from ondeck_server.convert.converted import Converted
from ondeck_server.convert.errors import ConversionFailed, UnsafeModel, UnsupportedFormat
from ondeck_server.convert.inputs_spec import DType, InputSpec

if TYPE_CHECKING:
    import onnx

_DTYPE_OF_V2 = {d.v2: d for d in DType}


def convert_onnx(path: Path, *, out: Path) -> Converted:
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import load_external_data_for_model

    name = path.name
    try:
        model = onnx.load_model(str(path), load_external_data=False)
        external = onnx_tools.has_external_data(model)
        if external:
            load_external_data_for_model(model, str(path.parent))
    except onnx.checker.ValidationError as exc:  # e.g. external data that is a link
        raise UnsafeModel(
            f"{name}: onnx refuses to load its external data ({_first_line(exc)}); keep "
            "plain data files next to the model"
        ) from None
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ConversionFailed(
            f"{name} is not a valid ONNX model ({_first_line(exc)}); check that the upload "
            "is complete and pin it with --sha256"
        ) from None
    except FileNotFoundError as exc:
        raise ConversionFailed(
            f"{name} refers to external data {Path(exc.filename or '?').name} that is not "
            "next to it; keep the model and its data files in the same folder"
        ) from None
    if len(model.graph.node) == 0:
        raise ConversionFailed(f"{name} parses but has an empty graph; it is not a usable model")
    try:
        if onnx_tools.is_large(model):
            onnx.checker.check_model(str(path))
        elif not external:
            # From the file, not from memory: the in-memory checker and shape inference
            # serialize and parse the whole model (weights included) three more times,
            # 7x the weights at 0.5 GiB (bench/large); onnx's C++ reads the file once.
            del model
            onnx.checker.check_model(str(path), full_check=False)
            inferred = out.with_name(out.stem + ".inferred.onnx")
            onnx.shape_inference.infer_shapes_path(str(path), str(inferred), check_type=True)
            model = _load_written(inferred)
        else:
            onnx.checker.check_model(model, full_check=False)
            model = onnx.shape_inference.infer_shapes(model, check_type=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionFailed(
            f"{name} fails the ONNX checker: {_first_line(exc)}; re-export it with a "
            "supported opset"
        ) from None
    onnx_tools.save(model, out)
    inputs, _ = onnx_tools.io_info(out)
    unsupported = [f"{t.name} ({t.datatype})" for t in inputs if t.datatype not in _DTYPE_OF_V2]
    if unsupported:
        raise UnsupportedFormat(
            f"{name} has inputs of types ondeck cannot validate: {', '.join(unsupported)}; "
            f"supported input types: {', '.join(sorted(_DTYPE_OF_V2))}"
        )
    specs = [InputSpec(name=t.name, dtype=_DTYPE_OF_V2[t.datatype], shape=t.shape) for t in inputs]
    return Converted(onnx_path=out, inputs=specs, reference=None, reference_name="onnx-fp32")


def _load_written(path: Path) -> onnx.ModelProto:
    """Load (and remove) a model onnx's C++ just wrote. It does not report a failed
    write: a full disk shows as a truncated file, told here as the OSError it was."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load_model(str(path))
    except DecodeError:
        if store.nearly_full(path.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
    finally:
        path.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
