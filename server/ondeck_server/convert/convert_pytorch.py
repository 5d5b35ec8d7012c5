"""PyTorch sources: a TorchScript file (`torch.jit.save`) or a `torch.export` program
(`torch.export.save`, `.pt2`), exported to ONNX with torch.onnx using the declared input
names, dtypes and shapes, every `-1` dimension made dynamic (dimension 0 is named
`batch` and shared by all inputs and outputs).

TorchScript does not record input shapes, so it needs `--inputs`; a `.pt2` program
carries them and `--inputs` is optional. Plain `torch.save` pickles are refused by format
inference (they need the model's source code and run arbitrary code on load). torch is
imported only inside these functions; this module does not optimize or quantize.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ondeck_server.convert.converted import Converted
from ondeck_server.convert.errors import ConversionFailed, InvalidSettings
from ondeck_server.convert.extras import require_converter
from ondeck_server.convert.formats import Format, SourceKind
from ondeck_server.convert.inputs_spec import DType, InputSpec
from ondeck_server.convert.onnx_tools import Feeds

OPSET = 17
# The dynamo exporter's lowest well-supported opset.
PROGRAM_OPSET = 18
# Dynamic dimensions get this size in the example the exporter traces: 2, not 1, so the
# tracer cannot mistake a dynamic dimension for a broadcastable constant.
_TRACE_DIM = 2


def convert_pytorch(
    path: Path, *, kind: SourceKind, inputs: list[InputSpec] | None, out: Path
) -> Converted:
    require_converter(Format.PYTORCH)
    import torch

    program: Any = None
    if kind is SourceKind.TORCH_EXPORT:
        program = _load_exported(path)
        model = program.module()
        specs = inputs or _signature(program)
    else:
        if not inputs:
            raise InvalidSettings(
                f"{path.name} is a TorchScript model, which does not record its input shapes; "
                "give --inputs (spec.model.inputs), e.g. input:float32:[-1,3,32,32]"
            )
        model = _load_torchscript(path)
        specs = inputs
    example = [_example(spec) for spec in specs]
    with torch.no_grad():
        try:
            sample_out = model(*example)
        except Exception as exc:
            raise ConversionFailed(
                f"{path.name} fails on inputs shaped like --inputs "
                f"({_describe(specs)}): {_first_line(exc)}; check the names, dtypes and shapes"
            ) from None
    output_names = _output_names(sample_out)
    try:
        # The exporters print progress on stdout, which carries only the JSON summary.
        with (
            warnings.catch_warnings(),
            torch.no_grad(),
            contextlib.redirect_stdout(sys.stderr),
        ):
            warnings.simplefilter("ignore")
            if program is not None:
                _export_program(program, specs=specs, output_names=output_names, out=out)
            else:
                torch.onnx.export(
                    model,
                    tuple(example),
                    str(out),
                    input_names=[s.name for s in specs],
                    output_names=output_names,
                    dynamic_axes=_dynamic_axes(specs, output_names),
                    opset_version=OPSET,
                    do_constant_folding=True,
                    dynamo=False,
                )
    except Exception as exc:
        raise ConversionFailed(
            f"torch.onnx could not export {path.name}: {_first_line(exc)}; the model may use "
            "an operator ONNX cannot express"
        ) from None
    return Converted(
        onnx_path=out,
        inputs=specs,
        reference=_reference(model, specs),
        reference_name=kind.value,
    )


def _export_program(
    program: Any, *, specs: list[InputSpec], output_names: list[str], out: Path
) -> None:
    """torch.export programs go through the dynamo exporter, which keeps the dynamic
    dimensions the program was exported with (it needs onnxscript)."""
    import torch

    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConversionFailed(
            "exporting a torch.export (.pt2) program needs onnxscript; install the pytorch "
            "extra (pip install 'ondeck[pytorch]') or save the model as TorchScript"
        ) from None
    torch.onnx.export(
        program,
        f=str(out),
        input_names=[s.name for s in specs],
        output_names=output_names,
        opset_version=PROGRAM_OPSET,
        dynamo=True,
        optimize=True,
        verbose=False,
        external_data=True,
    )


def _load_torchscript(path: Path) -> Any:
    import torch

    load: Any = torch.jit.load  # untyped in torch 2.8
    try:
        model = load(str(path), map_location="cpu")
    except Exception as exc:
        raise ConversionFailed(
            f"{path.name} is not a loadable TorchScript file: {_first_line(exc)}; save it with "
            "torch.jit.save(torch.jit.script(model), path)"
        ) from None
    return model.eval()


def _load_exported(path: Path) -> Any:
    import torch

    load: Any = torch.export.load  # untyped in torch 2.8
    try:
        return load(str(path))
    except Exception as exc:
        raise ConversionFailed(
            f"{path.name} is not a loadable torch.export program: {_first_line(exc)}; save it "
            "with torch.export.save(torch.export.export(model, example_args), path)"
        ) from None


def _signature(program: Any) -> list[InputSpec]:
    import torch

    user_inputs = list(program.graph_signature.user_inputs)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs: list[InputSpec] = []
    for name in user_inputs:
        value = placeholders[name].meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise ConversionFailed(f"input {name!r} of the exported program is not a tensor")
        shape = [d if isinstance(d, int) else -1 for d in value.shape]
        dtype_name = str(value.dtype).removeprefix("torch.")
        try:
            dtype = DType(dtype_name)
        except ValueError:
            raise ConversionFailed(f"input {name!r} has unsupported dtype {dtype_name}") from None
        specs.append(InputSpec(name=name, dtype=dtype, shape=shape))
    return specs


def _example(spec: InputSpec) -> Any:
    import torch

    shape = [_TRACE_DIM if d == -1 else d for d in spec.shape]
    if spec.dtype in (DType.FLOAT32, DType.FLOAT16, DType.FLOAT64):
        generator = np.random.default_rng(0)
        data = generator.standard_normal(shape).astype(spec.dtype.numpy)
        return torch.from_numpy(data)
    return torch.from_numpy(np.ones(shape, dtype=spec.dtype.numpy))


def _flatten(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten(v)]
    if isinstance(value, Sequence):
        return [t for v in value for t in _flatten(v)]
    raise ConversionFailed(f"the model returns {type(value).__name__}; ONNX needs tensors")


def _output_names(value: Any) -> list[str]:
    keyed = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if keyed and len(_flatten(value)) == len(value):
        return list(value)
    count = len(_flatten(value))
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _dynamic_axes(specs: list[InputSpec], outputs: list[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for spec in specs:
        dims = {
            i: ("batch" if i == 0 else f"{spec.name}_{i}")
            for i, d in enumerate(spec.shape)
            if d == -1
        }
        if dims:
            axes[spec.name] = dims
    if any(s.shape[0] == -1 for s in specs):
        for name in outputs:
            axes[name] = {0: "batch"}
    return axes


def _reference(model: Any, specs: list[InputSpec]) -> Any:
    def run(feeds: Feeds) -> list[np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in specs]
        with torch.no_grad():
            result = model(*args)
        return [t.detach().cpu().numpy() for t in _flatten(result)]

    return run


def _describe(specs: list[InputSpec]) -> str:
    return ";".join(s.render() for s in specs)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# `RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x32 and 64x10)`: the line of
# a TorchScript traceback that says what went wrong (the last one).
_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*(?:Error|Exception)): (\S.*)$")
# The dynamo exporter names an operator as `<OpOverload(op='aten.x', overload='default')>`.
_OVERLOAD = re.compile(r"<OpOverload\(op='([^']+)', overload='([^']+)'\)>")
_SUMMARY = "## Exception summary"
_LIMIT = 400


def _first_line(exc: BaseException) -> str:
    """The part of a torch error that says what failed (the operator, the shapes), on one
    line. torch puts it in different places: first (TorchScript's exporter), last after a
    TorchScript traceback, or under "## Exception summary" after a page of advice (the
    dynamo exporter)."""
    text = _ANSI.sub("", str(exc)).strip()
    if not text:
        return type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = lines[0]
    if _SUMMARY in text:
        after = text.split(_SUMMARY, 1)[1].splitlines()
        causes = [line.strip() for line in after if line.strip().startswith("<class ")]
        if causes:
            found = re.sub(r"^<class '[^']*'>: ", "", causes[0])
    elif "Traceback of TorchScript" in text:
        errors = [m.group(1) for m in map(_ERROR_LINE.match, lines) if m]
        if errors:
            found = errors[-1]
    found = _OVERLOAD.sub(
        lambda m: m.group(1) if m.group(2) == "default" else f"{m.group(1)}.{m.group(2)}", found
    )
    found = " ".join(found.split())
    return found if len(found) <= _LIMIT else found[: _LIMIT - 1] + "…"
