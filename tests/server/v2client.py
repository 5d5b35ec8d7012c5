"""A tiny V2 client for the tests: numpy arrays to request bodies (JSON or binary) and
responses back to numpy arrays. Written from the protocol text, independently of the
server's codec, so the two check each other."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

DATATYPE = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(object): "BYTES",
}
NUMPY = {v: k for k, v in DATATYPE.items()}


def json_request(feeds: dict[str, np.ndarray], *, nested: bool = False, **extra: Any) -> bytes:
    inputs = []
    for name, array in feeds.items():
        data = array.tolist() if nested else array.reshape(-1).tolist()
        inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": DATATYPE[array.dtype],
                "data": data,
            }
        )
    return json.dumps({"inputs": inputs, **extra}).encode()


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == object:
        out = b""
        for item in array.reshape(-1):
            raw = item.encode() if isinstance(item, str) else bytes(item)
            out += struct.pack("<I", len(raw)) + raw
        return out
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def binary_request(feeds: dict[str, np.ndarray], **extra: Any) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a request with every input as binary data."""
    inputs, chunks = [], []
    for name, array in feeds.items():
        raw = _raw(array)
        chunks.append(raw)
        inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": DATATYPE[array.dtype],
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    head = json.dumps({"inputs": inputs, **extra}).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + b"".join(chunks), headers


def decode_response(body: bytes, headers: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON document and every output as an array (binary or JSON data)."""
    length = headers.get("inference-header-content-length")
    head = body if length is None else body[: int(length)]
    doc = json.loads(head)
    offset = len(head)
    arrays: dict[str, np.ndarray] = {}
    for out in doc["outputs"]:
        dtype, shape = NUMPY[out["datatype"]], out["shape"]
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[out["name"]] = np.array(out["data"], dtype=dtype).reshape(shape)
            continue
        raw = body[offset : offset + size]
        offset += size
        if dtype.kind == "O":
            items, pos = [], 0
            while pos < len(raw):
                (n,) = struct.unpack_from("<I", raw, pos)
                items.append(raw[pos + 4 : pos + 4 + n].decode())
                pos += 4 + n
            arrays[out["name"]] = np.array(items, dtype=object).reshape(shape)
        else:
            arrays[out["name"]] = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
    assert offset == len(body), "binary response has bytes no output claims"
    return doc, arrays


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Floats within float tolerance (thread counts and batch sizes change summation
    order), everything else exactly."""
    assert set(got) == set(want)
    for name, expected in want.items():
        actual = got[name]
        assert actual.shape == expected.shape, name
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(
                actual.astype(np.float64),
                expected.astype(np.float64),
                rtol=2e-3 if expected.dtype == np.float16 else 1e-5,
                atol=1e-5,
                err_msg=name,
            )
        else:
            assert actual.dtype == expected.dtype or expected.dtype == object, name
            np.testing.assert_array_equal(actual, expected, err_msg=name)
