"""Local mode's pure core for what it prints: example request bodies built from the
artifact's inputs, ready-to-paste `curl` lines for V2 and V1, and the banner."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ondeck_operator.local.manifest import ConvertSummary, TensorSpec

INLINE_BODY_LIMIT = 256

EXAMPLE_DYNAMIC_DIM = 8
_V2_FLOAT = {"FP16", "FP32", "FP64", "BF16"}


def _example_value(datatype: str, index: int) -> float | int | bool | str:
    if datatype in _V2_FLOAT:
        return round(0.1 * (index % 10 + 1), 1)
    if datatype == "BOOL":
        return index % 2 == 0
    if datatype == "BYTES":
        return "hello"
    return 1


def example_shape(shape: list[int]) -> list[int]:
    """A concrete shape: batch 1 for a leading dynamic dimension, a small size for others."""
    return [(1 if i == 0 else EXAMPLE_DYNAMIC_DIM) if d < 0 else d for i, d in enumerate(shape)]


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _nest(flat: list[Any], shape: list[int]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0]
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def v2_body(inputs: list[TensorSpec]) -> dict[str, Any]:
    """A valid V2 inference request for these inputs (one row)."""
    tensors = []
    for spec in inputs:
        shape = example_shape(spec.shape)
        data = [_example_value(spec.datatype, i) for i in range(_count(shape))]
        tensors.append({"name": spec.name, "shape": shape, "datatype": spec.datatype, "data": data})
    return {"inputs": tensors}


def v1_body(inputs: list[TensorSpec]) -> dict[str, Any] | None:
    """A valid KServe V1 request (`instances`, one instance), or None for models with
    more than one input, which V1 cannot address."""
    if len(inputs) != 1:
        return None
    spec = inputs[0]
    shape = example_shape(spec.shape)
    data = [_example_value(spec.datatype, i) for i in range(_count(shape))]
    instances = _nest(data, shape) if shape else [data[0]]
    if not isinstance(instances, list):
        instances = [instances]
    return {"instances": instances}


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


def curl_line(url: str, data: str, token: str | None = None) -> str:
    """A ready-to-paste curl command; `data` is the JSON body or `@file`; `token`: the
    bearer token the server asks for."""
    auth = f" -H {shlex.quote('Authorization: Bearer ' + token)}" if token else ""
    return (
        f"curl -s {shlex.quote(url)} -H 'Content-Type: application/json'{auth} "
        f"-d {shlex.quote(data)}"
    )


class Banner(BaseModel):
    """What `ondeck run` prints once the server is ready, and the request bodies too big
    for a command line, to be written to the files the curl lines name (`-d @file`)."""

    lines: list[str]
    files: dict[Path, str] = Field(default_factory=dict)


def banner(
    *,
    name: str,
    base_url: str,
    summary: ConvertSummary,
    spill_dir: Path | None = None,
    token: str | None = None,
) -> Banner:
    """The banner for a served model; bodies with more than `INLINE_BODY_LIMIT` numbers
    go to `spill_dir` when one is given; `token`: the server asks for this bearer token."""
    if summary.format == "hf-causal-lm":  # a language model: the OpenAI-compatible API
        from ondeck_operator.local.llm_banner import llm_banner

        return llm_banner(name=name, base_url=base_url, summary=summary, token=token)
    bodies = {"V2": v2_body(summary.inputs), "V1": v1_body(summary.inputs)}
    urls = {
        "V2": f"{base_url}/v2/models/{name}/infer",
        "V1": f"{base_url}/v1/models/{name}:predict",
    }
    numbers = sum(_count(example_shape(t.shape)) for t in summary.inputs)
    spill = spill_dir is not None and numbers > INLINE_BODY_LIMIT
    lines = [
        f"ondeck: serving {name} at {base_url}/v2/models/{name}",
        "  inputs:  " + ", ".join(t.describe() for t in summary.inputs),
        "  outputs: " + ", ".join(t.describe() for t in summary.outputs),
        f"  artifact: {summary.path} ({sizes(summary)})",
    ]
    files: dict[Path, str] = {}
    for protocol, body in bodies.items():
        if body is None:
            lines.append(
                f"  {protocol}: not available: the V1 protocol addresses single-input models only"
            )
            continue
        data = _json(body)
        if spill and spill_dir is not None:
            path = spill_dir / f"{name}.{protocol.lower()}.json"
            files[path] = data
            data = f"@{path}"
        lines.append(f"  {protocol}: " + curl_line(urls[protocol], data, token))
    lines.append("Press Ctrl-C to stop.")
    return Banner(lines=lines, files=files)


#: Modes that shrink a model they apply to: when it came out no smaller, they found
#: nothing to quantize (int8 on a tree model has no MatMul, Gemm or Conv).
_SHRINKING = {"int8", "int8-static", "int4"}


def sizes(summary: ConvertSummary) -> str:
    """`20.6 KiB → 12.1 KiB, quantize int8`, or what the quantization did not do."""
    before, after = summary.original_size_bytes, summary.size_bytes
    text = f"{size(before)} → {size(after)}, quantize {summary.quantize}"
    if summary.quantize in _SHRINKING and after >= before:
        text += " (changed nothing: no operator it quantizes)"
    return text


def size(n: int) -> str:
    """Bytes in binary units (KiB = 1024 B), one decimal: `19.5 KiB`; the one unit
    convention of everything ondeck prints (the server's bounds.human is the same)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
