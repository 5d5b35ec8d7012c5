"""Tensor datatypes: the V2 protocol's names and how they map to numpy and to the type
strings onnxruntime reports. Pure lookups; no I/O, no protocol parsing."""

from __future__ import annotations

from enum import StrEnum

import numpy as np


class Datatype(StrEnum):
    """The V2 inference protocol's tensor datatypes that ONNX Runtime can compute with."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


# Little-endian on the wire (the binary extension), whatever the host's order.
NUMPY: dict[Datatype, np.dtype] = {
    Datatype.BOOL: np.dtype("?"),
    Datatype.UINT8: np.dtype("u1"),
    Datatype.UINT16: np.dtype("<u2"),
    Datatype.UINT32: np.dtype("<u4"),
    Datatype.UINT64: np.dtype("<u8"),
    Datatype.INT8: np.dtype("i1"),
    Datatype.INT16: np.dtype("<i2"),
    Datatype.INT32: np.dtype("<i4"),
    Datatype.INT64: np.dtype("<i8"),
    Datatype.FP16: np.dtype("<f2"),
    Datatype.FP32: np.dtype("<f4"),
    Datatype.FP64: np.dtype("<f8"),
    Datatype.BYTES: np.dtype(object),
}

_ORT: dict[str, Datatype] = {
    "tensor(bool)": Datatype.BOOL,
    "tensor(uint8)": Datatype.UINT8,
    "tensor(uint16)": Datatype.UINT16,
    "tensor(uint32)": Datatype.UINT32,
    "tensor(uint64)": Datatype.UINT64,
    "tensor(int8)": Datatype.INT8,
    "tensor(int16)": Datatype.INT16,
    "tensor(int32)": Datatype.INT32,
    "tensor(int64)": Datatype.INT64,
    "tensor(float16)": Datatype.FP16,
    "tensor(float)": Datatype.FP32,
    "tensor(double)": Datatype.FP64,
    "tensor(string)": Datatype.BYTES,
}

_BY_KIND_SIZE: dict[tuple[str, int], Datatype] = {
    (NUMPY[d].kind, NUMPY[d].itemsize): d for d in Datatype if d is not Datatype.BYTES
}

#: Every datatype name, for error messages.
NAMES = ", ".join(d.value for d in Datatype)


def from_ort(type_string: str) -> Datatype | None:
    """The V2 datatype of an onnxruntime type string such as `tensor(float)`; None for
    types the protocol cannot carry (sequences, maps, bfloat16, ...)."""
    return _ORT.get(type_string)


def from_numpy(dtype: np.dtype) -> Datatype:
    """The V2 datatype of a numpy array (object and unicode arrays are BYTES)."""
    if dtype.kind in "OUS":
        return Datatype.BYTES
    found = _BY_KIND_SIZE.get((dtype.kind, dtype.itemsize))
    if found is None:
        raise ValueError(f"numpy dtype {dtype} has no V2 datatype")
    return found


def parse(name: object) -> Datatype | None:
    """The datatype called `name`, or None when there is no such datatype."""
    if isinstance(name, str):
        try:
            return Datatype(name)
        except ValueError:
            return None
    return None
