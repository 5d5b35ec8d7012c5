"""The `--inputs` mini-language: `name:dtype:[d0,d1,...]` entries separated by `;`.

    input:float32:[-1,3,32,32]
    input_ids:int64:[-1,-1];attention_mask:int64:[-1,-1]

`-1` marks a dynamic dimension (the first one is the batch). This module parses and
prints the spec and maps dtypes to numpy, ONNX and V2 names; it does not look at models.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ondeck_server.convert.errors import InvalidSettings


class DType(StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    FLOAT64 = "float64"
    INT64 = "int64"
    INT32 = "int32"
    INT16 = "int16"
    INT8 = "int8"
    UINT8 = "uint8"
    BOOL = "bool"

    @property
    def numpy(self) -> np.dtype[Any]:
        return np.dtype(self.value if self is not DType.BOOL else np.bool_)

    @property
    def v2(self) -> str:
        return _V2[self]


_V2 = {
    DType.FLOAT32: "FP32",
    DType.FLOAT16: "FP16",
    DType.FLOAT64: "FP64",
    DType.INT64: "INT64",
    DType.INT32: "INT32",
    DType.INT16: "INT16",
    DType.INT8: "INT8",
    DType.UINT8: "UINT8",
    DType.BOOL: "BOOL",
}
_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64"}
_ENTRY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.:/-]*?)\s*:\s*([a-z0-9]+)\s*:\s*\[([^\]]*)\]\s*$")
_EXAMPLE = "e.g. input:float32:[-1,3,32,32] or ids:int64:[-1,-1];mask:int64:[-1,-1]"


class InputSpec(BaseModel):
    """One declared model input."""

    model_config = ConfigDict(frozen=True)

    name: str
    dtype: DType
    shape: list[int] = Field(description="-1 for a dynamic dimension")

    def render(self) -> str:
        return f"{self.name}:{self.dtype.value}:[{','.join(str(d) for d in self.shape)}]"


def parse_inputs(text: str) -> list[InputSpec]:
    """Parse an `--inputs` value; raise InvalidSettings naming the bad entry."""
    specs: list[InputSpec] = []
    entries = [e for e in text.split(";") if e.strip()]
    if not entries:
        raise InvalidSettings(f"--inputs is empty: give name:dtype:[dims] entries, {_EXAMPLE}")
    for entry in entries:
        match = _ENTRY.match(entry)
        if match is None:
            raise InvalidSettings(
                f"--inputs entry {entry.strip()!r} is not name:dtype:[dims], {_EXAMPLE}"
            )
        name, dtype_text, dims_text = match.groups()
        dtype_text = _ALIASES.get(dtype_text, dtype_text)
        try:
            dtype = DType(dtype_text)
        except ValueError:
            allowed = ", ".join(d.value for d in DType)
            raise InvalidSettings(
                f"--inputs entry {name!r} has dtype {dtype_text!r}; use one of {allowed}"
            ) from None
        shape = _parse_dims(name, dims_text)
        if any(s.name == name for s in specs):
            raise InvalidSettings(f"--inputs names {name!r} twice; input names must be unique")
        specs.append(InputSpec(name=name, dtype=dtype, shape=shape))
    return specs


def _parse_dims(name: str, text: str) -> list[int]:
    dims: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            dim = int(part)
        except ValueError:
            raise InvalidSettings(
                f"--inputs entry {name!r} has dimension {part!r}; dimensions are integers, "
                "-1 for a dynamic one"
            ) from None
        if dim == 0 or dim < -1:
            raise InvalidSettings(
                f"--inputs entry {name!r} has dimension {dim}; use a positive size or -1"
            )
        dims.append(dim)
    if not dims:
        raise InvalidSettings(f"--inputs entry {name!r} has no dimensions, {_EXAMPLE}")
    return dims


def render_inputs(specs: list[InputSpec]) -> str:
    return ";".join(s.render() for s in specs)
