"""The KServe V1 protocol for single-input models: `{"instances": [...]}` in,
`{"predictions": [...]}` out, one prediction per instance (a row of the batch).

With one output a prediction is that output's row; with several it is an object
`{output name: row}`. Pure functions; no HTTP, no inference.
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


def encode_response(*, model: ModelInfo, results: Arrays) -> bytes:
    if len(model.outputs) == 1:
        out = results[model.outputs[0].name]
        return orjson.dumps({"predictions": _rows(out)}, option=orjson.OPT_SERIALIZE_NUMPY)
    columns = {spec.name: _rows(results[spec.name]) for spec in model.outputs}
    count = len(next(iter(columns.values())))
    predictions = [{name: rows[i] for name, rows in columns.items()} for i in range(count)]
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)


def _rows(array: np.ndarray) -> list[Any]:
    if array.dtype == object:
        return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in array.tolist()]
    if array.ndim == 1:
        values: list[Any] = array.tolist()  # orjson cannot write numpy longlong scalars
        return values
    return list(np.ascontiguousarray(array))
