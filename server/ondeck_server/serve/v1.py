"""The KServe V1 protocol for single-input models: `{"instances": [...]}` in,
`{"predictions": [...]}` out, one prediction per instance (a row of the batch).

With one output a prediction is that output's row; with several it is an object
`{output name: row}`. When an output has no row per instance (a scalar, or a first
dimension that is not the instance count) the answer is one prediction holding every
output whole. Pure functions; no HTTP, no inference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from ondeck_server.serve import limits
from ondeck_server.serve.errors import InvalidInput
from ondeck_server.serve.model import ModelInfo
from ondeck_server.serve.runtime import Arrays
from ondeck_server.serve.v2 import json_array, shape_text


def decode_request(body: bytes, *, model: ModelInfo) -> tuple[Arrays, int]:
    """The feeds and row count of a V1 predict request."""
    if len(model.inputs) != 1:
        raise InvalidInput(
            f"V1 predict serves single-input models; this model has inputs {model.input_names}:"
            " use the V2 endpoint /v2/models/{name}/infer"
        )
    spec = model.inputs[0]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('request body must be {"instances": [...]} with at least one instance')
    raw = json_array(
        instances,
        spec=spec,
        ragged="'instances' is ragged (rows of different lengths); every instance must have"
        f" shape {shape_text(spec.shape[1:])}",
    )
    shape = list(raw.shape)
    if len(shape) != len(spec.shape):
        raise InvalidInput(
            f"each instance must be one row of input {spec.name!r} with shape"
            f" {shape_text(spec.shape[1:])}; got instances of shape {shape_text(shape[1:])}"
        )
    for got, want in zip(shape[1:], spec.shape[1:], strict=True):
        if want != -1 and got != want:
            raise InvalidInput(
                f"each instance must have shape {shape_text(spec.shape[1:])} for input"
                f" {spec.name!r}; got {shape_text(shape[1:])}"
            )
    if spec.shape[0] not in (-1, shape[0]):
        raise InvalidInput(
            f"this model takes exactly {spec.shape[0]} instance(s) per request; got {shape[0]}"
        )
    limits.check_input_shape(spec.name, shape, model.max_elements)
    limits.check_output_sizes(model.inputs, model.outputs, {spec.name: shape}, model.max_elements)
    return {spec.name: raw}, shape[0]


def encode_response(*, model: ModelInfo, results: Arrays, rows: int) -> bytes:
    """`{"predictions": [...]}`: one prediction per instance when every output has the
    instances along its first dimension; otherwise (a scalar output, or one whose first
    dimension is not the batch) one prediction holding every output whole."""
    arrays = [results[spec.name] for spec in model.outputs]
    per_row = all(a.ndim >= 1 and a.shape[0] == rows for a in arrays)
    if len(arrays) == 1:
        values = _rows(arrays[0]) if per_row else [_whole(arrays[0])]
        return orjson.dumps({"predictions": values}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not per_row:
        whole = {spec.name: _whole(a) for spec, a in zip(model.outputs, arrays, strict=True)}
        return orjson.dumps({"predictions": [whole]}, option=orjson.OPT_SERIALIZE_NUMPY)
    columns = {spec.name: _rows(a) for spec, a in zip(model.outputs, arrays, strict=True)}
    predictions = [{name: column[i] for name, column in columns.items()} for i in range(rows)]
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _whole(array: np.ndarray) -> Any:
    """An output as one JSON value: a number or string for a scalar, else nested lists."""
    if array.dtype == object:
        flat = [_text(v) for v in array.reshape(-1).tolist()]
        return (
            flat[0]
            if array.ndim == 0
            else np.array(flat, dtype=object).reshape(array.shape).tolist()
        )
    return array.tolist()  # exact for 64-bit integers; NaN/inf come out as null below


def _rows(array: np.ndarray) -> list[Any]:
    if array.dtype == object:
        return (
            [_whole(row) for row in array] if array.ndim > 1 else [_text(v) for v in array.tolist()]
        )
    if array.ndim == 1:
        values: list[Any] = array.tolist()  # orjson cannot write numpy longlong scalars
        return values
    return list(np.ascontiguousarray(array))
