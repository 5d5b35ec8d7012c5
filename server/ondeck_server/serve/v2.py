"""The V2 (Open Inference Protocol) request and response codec, including the binary
tensor data extension, straight between bytes and numpy arrays.

Requests are parsed with orjson and validated by hand against the model's specs (no
per-element pydantic models: a 256-float request must cost microseconds), and every
rejection says what was wrong and what was expected. Responses are serialized with
orjson's numpy support. Pure functions; no HTTP, no queues, no inference.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ondeck_server.serve import datatypes, limits
from ondeck_server.serve.datatypes import Datatype
from ondeck_server.serve.errors import InvalidInput
from ondeck_server.serve.model import ModelInfo
from ondeck_server.serve.runtime import Arrays, TensorSpec

#: The header naming the length of the JSON part of a binary request or response.
HEADER_LENGTH = "inference-header-content-length"
BINARY_EXTENSION = "binary_tensor_data"

_NUMPY_JSON = orjson.OPT_SERIALIZE_NUMPY
_LEN = struct.Struct("<I")


@dataclass(slots=True)
class InferRequest:
    """A validated V2 inference request."""

    id: str | None
    inputs: Arrays
    #: rows along the batch dimension (dim 0 of every input) when the model is batchable
    rows: int
    #: requested outputs in answer order
    outputs: tuple[str, ...]
    #: outputs to send as binary data
    binary: frozenset[str]


def shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _fail(message: str) -> InvalidInput:
    return InvalidInput(message)


def decode_request(body: bytes, *, header_length: int | None, model: ModelInfo) -> InferRequest:
    """Parse and validate a V2 inference request body for `model`.

    `header_length` is the `Inference-Header-Content-Length` header's value when the
    request uses the binary extension: the first `header_length` bytes are JSON, the
    rest holds the binary tensors in input order.
    """
    head: bytes | memoryview
    if header_length is None:
        head, binary = body, memoryview(b"")
    else:
        if header_length > len(body):
            raise _fail(
                f"Inference-Header-Content-Length is {header_length} but the body has only"
                f" {len(body)} bytes; it must be the length of the JSON part"
            )
        view = memoryview(body)
        head, binary = view[:header_length], view[header_length:]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail("request body must be a JSON object with an 'inputs' list")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _fail("'id' must be a string")
    parameters = _object(doc.get("parameters"), "'parameters'")
    binary_default = _flag(parameters, "binary_data_output", "request parameters")

    entries = doc.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise _fail(
            f"'inputs' must be a non-empty list of tensors; the model's inputs are"
            f" {model.input_names}"
        )
    arrays: Arrays = {}
    offset = 0
    for entry in entries:
        spec, array, used = _decode_input(entry, model=model, binary=binary, offset=offset)
        if spec.name in arrays:
            raise _fail(f"input {spec.name!r} is given twice")
        arrays[spec.name] = array
        offset += used
    if offset != len(binary):
        raise _fail(
            f"the body has {len(binary)} bytes after the JSON header but the inputs'"
            f" binary_data_size parameters add up to {offset}"
        )
    if len(arrays) != len(model.inputs):
        absent = [repr(s.name) for s in model.inputs if s.name not in arrays]
        noun = "input" if len(absent) == 1 else "inputs"
        raise _fail(
            f"missing {noun} {', '.join(absent)}; the model's inputs are {model.input_names}"
        )

    limits.check_output_sizes(
        model.inputs, model.outputs, {n: a.shape for n, a in arrays.items()}, model.max_elements
    )
    rows = _rows(arrays) if model.batchable else 1
    outputs, binary_outputs = _requested_outputs(doc.get("outputs"), model, binary_default)
    return InferRequest(request_id, arrays, rows, outputs, binary_outputs)


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(f"{what} must be a JSON object")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise _fail(f"{where}: {key!r} must be true or false")
    return value


def _decode_input(
    entry: Any, *, model: ModelInfo, binary: memoryview, offset: int
) -> tuple[TensorSpec, np.ndarray, int]:
    if not isinstance(entry, dict):
        raise _fail("each entry of 'inputs' must be an object with name, shape, datatype, data")
    name = entry.get("name")
    if not isinstance(name, str):
        raise _fail("every input needs a 'name' (a string)")
    spec = model.by_input.get(name)
    if spec is None:
        raise _fail(f"unknown input {name!r}; the model's inputs are {model.input_names}")
    if entry.get("datatype") is None:
        raise _fail(
            f'input {name!r} has no \'datatype\'; add "datatype": "{spec.datatype.value}", '
            "the model's type for it"
        )
    datatype = datatypes.parse(entry.get("datatype"))
    if datatype is None:
        raise _fail(
            f"input {name!r} has datatype {entry.get('datatype')!r}; use one of {datatypes.NAMES}"
        )
    if datatype is not spec.datatype:
        raise _fail(
            f"input {name!r} has datatype {datatype.value} but the model expects"
            f" {spec.datatype.value}"
        )
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _fail(
            f"input {name!r}: 'shape' must be a list of non-negative integers, like"
            f" {shape_text([1 if d < 0 else d for d in spec.shape])}"
        )
    if len(shape) != len(spec.shape) or any(
        want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)
    ):
        raise _fail(
            f"input {name!r} has shape {shape_text(shape)} but the model expects"
            f" {shape_text(spec.shape)} (-1: any size)"
        )
    limits.check_input_shape(name, shape, model.max_elements)
    count = math.prod(shape)
    parameters = _object(entry.get("parameters"), f"input {name!r}: 'parameters'")
    size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise _fail(f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in entry:
            raise _fail(f"input {name!r} has both 'data' and binary_data_size; give one")
        if offset + size > len(binary):
            raise _fail(
                f"input {name!r}: binary_data_size is {size} bytes at offset {offset}, but only"
                f" {len(binary) - offset} bytes of binary data remain after the JSON header"
            )
        chunk = binary[offset : offset + size]
        return spec, _from_binary(chunk, spec=spec, shape=shape, count=count), size
    if "data" not in entry:
        raise _fail(f"input {name!r} has no 'data' (and no binary_data_size parameter)")
    return spec, array_from_json(entry["data"], spec=spec, shape=shape, count=count), 0


def _from_binary(
    chunk: memoryview, *, spec: TensorSpec, shape: list[int], count: int
) -> np.ndarray:
    name = spec.name
    if spec.datatype is Datatype.BYTES:
        items = _split_bytes(chunk, name)
        if len(items) != count:
            raise _fail(
                f"input {name!r}: shape {shape_text(shape)} needs {count} BYTES elements but"
                f" the binary data holds {len(items)}"
            )
        array = np.empty(count, dtype=object)
        try:
            array[:] = [item.decode() for item in items]
        except UnicodeDecodeError:
            raise _fail(f"input {name!r}: BYTES elements must be UTF-8 text") from None
        return array.reshape(shape)
    need = count * spec.dtype.itemsize
    if len(chunk) != need:
        raise _fail(
            f"input {name!r}: binary_data_size is {len(chunk)} bytes but shape"
            f" {shape_text(shape)} of {spec.datatype.value} needs {need} bytes"
        )
    if spec.datatype is Datatype.BOOL:
        octets = np.frombuffer(chunk, dtype=np.uint8)
        wrong = np.flatnonzero(octets > 1)
        if wrong.size:
            index = int(wrong[0])
            raise _fail(
                f"input {name!r}: element {index} is byte 0x{int(octets[index]):02x}; binary"
                " BOOL elements must be 0 (false) or 1 (true)"
            )
    return np.frombuffer(chunk, dtype=spec.dtype).reshape(shape)


def _split_bytes(chunk: memoryview, name: str) -> list[bytes]:
    # BYTES elements on the wire: a 4-byte little-endian length, then that many bytes.
    items: list[bytes] = []
    pos, end = 0, len(chunk)
    while pos < end:
        if pos + 4 > end:
            raise _fail(f"input {name!r}: BYTES binary data ends inside a length prefix")
        (length,) = _LEN.unpack_from(chunk, pos)
        pos += 4
        if pos + length > end:
            raise _fail(
                f"input {name!r}: a BYTES element claims {length} bytes but only {end - pos} remain"
            )
        items.append(bytes(chunk[pos : pos + length]))
        pos += length
    return items


def array_from_json(data: Any, *, spec: TensorSpec, shape: list[int], count: int) -> np.ndarray:
    """`data` (flat or nested, row-major) as an array of `spec`'s dtype and `shape`, with
    strict checks: no strings for numbers, no fractions for integers, no overflow."""
    ragged = (
        f"input {spec.name!r}: 'data' is ragged (nested lists of different lengths); give"
        f" {count} values, flat or nested as {shape_text(shape)}"
    )
    array = json_array(data, spec=spec, ragged=ragged)
    if array.size != count:
        raise _fail(
            f"input {spec.name!r}: shape {shape_text(shape)} needs {count} values but 'data'"
            f" has {array.size}"
        )
    return array.reshape(shape)


#: The JSON value types each kind of datatype takes (bool is not a number here).
_NUMBERS: frozenset[type] = frozenset({int, float})
_INTEGERS: frozenset[type] = frozenset({int})
_BOOLS: frozenset[type] = frozenset({bool})
_STRINGS: frozenset[type] = frozenset({str})


def json_array(data: Any, *, spec: TensorSpec, ragged: str | None = None) -> np.ndarray:
    """`data` as parsed from JSON (a value or nested lists) as an array of `spec`'s dtype,
    shaped by the nesting. Every element must be of the datatype's JSON type (numbers,
    whole numbers, true/false, strings) and fit the datatype; a refusal names the input
    and the row-major index of the first offending element. `ragged` replaces the
    message for nested lists of different lengths."""
    name, datatype = spec.name, spec.datatype
    if not isinstance(data, list):
        data = [data]
    # The leaf types are checked before numpy sees the data: np.asarray on a list that
    # mixes numbers and one long string allocates count x that string's length.
    types, leaves = _leaf_types(data)
    allowed: frozenset[type]
    if datatype is Datatype.BYTES:
        allowed = _STRINGS
    elif datatype is Datatype.BOOL:
        allowed = _BOOLS
    elif spec.dtype.kind == "f":
        allowed = _NUMBERS
    else:
        allowed = _INTEGERS
    if not types <= allowed:
        _refuse_element(data, spec, allowed)
    if datatype is Datatype.BYTES:
        try:
            array = np.array(data, dtype=object)
        except ValueError:  # nested deeper than numpy's dimensions
            raise _ragged(name, spec, ragged) from None
        if array.size != leaves:
            raise _ragged(name, spec, ragged)
        return array
    try:
        if spec.dtype.kind == "f" and leaves > _CHUNK:
            raw = _float64_in_chunks(data, leaves)
        else:
            raw = np.asarray(data)
    except ValueError:
        raise _ragged(name, spec, ragged) from None
    if raw.size == 0:
        return raw.astype(spec.dtype)
    if datatype is Datatype.BOOL:
        return raw
    if spec.dtype.kind == "f":
        if raw.dtype.kind == "O":  # integers past 64 bits mixed with others
            raw = np.array(raw.tolist(), dtype=np.float64)
        with np.errstate(over="ignore"):
            array = raw.astype(spec.dtype, copy=False)
        finite = np.isfinite(array)
        if not finite.all():  # JSON has no infinities: this is overflow
            index = int(np.flatnonzero(~finite.reshape(-1))[0])
            largest = float(np.finfo(spec.dtype).max)
            raise _fail(
                f"input {name!r}: element {index} is {_show(raw.reshape(-1)[index].item())},"
                f" out of range for {datatype.value} (largest magnitude {largest:.8g})"
            )
        return array
    # integer datatypes
    if raw.dtype.kind in "fO":
        # numpy turns a mix of int64-sized and larger integers into float64 (or object).
        return _exact_integers(data, spec).reshape(raw.shape)
    info = np.iinfo(spec.dtype)
    if raw.min() < info.min or raw.max() > info.max:
        flat = raw.reshape(-1)
        index = int(np.flatnonzero((flat < info.min) | (flat > info.max))[0])
        raise _out_of_range(spec, index, int(flat[index]))
    return raw.astype(spec.dtype, copy=False)


def _ragged(name: str, spec: TensorSpec, message: str | None) -> InvalidInput:
    if message is not None:
        return _fail(message)
    return _fail(
        f"input {name!r}: 'data' is ragged (nested lists of different lengths); give the"
        f" values flat or nested as {shape_text([1 if d < 0 else d for d in spec.shape])}"
    )


#: Large lists are converted this many elements at a time: each numpy or set call holds
#: the GIL, and a request decoded in the codec thread must not hold it for long at once
#: (the event loop, and the health probes, wait for it).
_CHUNK = 1 << 16


def _types(items: list[Any]) -> set[type]:
    if len(items) <= _CHUNK:
        return set(map(type, items))
    found: set[type] = set()
    for start in range(0, len(items), _CHUNK):
        found.update(map(type, items[start : start + _CHUNK]))
    return found


def _float64_in_chunks(data: list[Any], leaves: int) -> np.ndarray:
    """np.asarray(data, float64) a few top-level entries at a time (ValueError if ragged)."""
    step = max(1, _CHUNK * len(data) // leaves)
    parts = [np.asarray(data[i : i + step], dtype=np.float64) for i in range(0, len(data), step)]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _leaf_types(data: list[Any]) -> tuple[set[type], int]:
    """The types of the non-list elements of nested lists, and how many there are."""
    types: set[type] = set()
    count = 0
    stack = [data]
    while stack:
        items = stack.pop()
        kinds = _types(items)
        if list in kinds:
            for item in items:
                if type(item) is list:
                    stack.append(item)
                else:
                    types.add(type(item))
                    count += 1
            kinds.discard(list)
        else:
            types |= kinds
            count += len(items)
    return types, count


def _flatten(data: list[Any]) -> list[Any]:
    """The non-list elements of nested lists in row-major order."""
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _show(value: Any) -> str:
    """A JSON element as the user wrote it, cut short."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse_element(data: list[Any], spec: TensorSpec, allowed: frozenset[type]) -> None:
    name, datatype = spec.name, spec.datatype.value
    for index, value in enumerate(_flatten(data)):
        kind = type(value)
        if kind in allowed:
            continue
        where = f"input {name!r}: element {index} is {_show(value)}"
        if allowed is _STRINGS:
            raise _fail(f"{where}; BYTES data must be strings")
        if allowed is _BOOLS:
            raise _fail(f"{where}; BOOL data must be true or false")
        if kind is bool:
            raise _fail(f"{where}; {datatype} data must be numbers, not true or false")
        if allowed is _INTEGERS and kind is float:
            raise _fail(
                f"{where}; {datatype} data must be whole numbers (no fractions or exponents)"
            )
        raise _fail(f"{where}; {datatype} data must be numbers")
    raise AssertionError("no element of a disallowed type found")  # pragma: no cover


def _out_of_range(spec: TensorSpec, index: int, value: int) -> InvalidInput:
    info = np.iinfo(spec.dtype)
    return _fail(
        f"input {spec.name!r}: element {index} is {value}, out of range for"
        f" {spec.datatype.value} ({info.min} to {info.max})"
    )


def _exact_integers(data: list[Any], spec: TensorSpec) -> np.ndarray:
    """`data` (JSON integers only) as `spec`'s integer dtype, without a detour through
    floating point."""
    values = _flatten(data)
    info = np.iinfo(spec.dtype)
    for index, value in enumerate(values):
        if value < info.min or value > info.max:
            raise _out_of_range(spec, index, value)
    return np.array(values, dtype=spec.dtype)


def _rows(arrays: Arrays) -> int:
    rows = {name: int(a.shape[0]) for name, a in arrays.items()}
    first = next(iter(rows.values()))
    if any(r != first for r in rows.values()):
        listed = ", ".join(f"{n!r} has {r}" for n, r in rows.items())
        raise _fail(f"inputs disagree on the batch dimension (dim 0): {listed}")
    return first


def _requested_outputs(
    value: Any, model: ModelInfo, binary_default: bool
) -> tuple[tuple[str, ...], frozenset[str]]:
    if value is None or value == []:
        names = tuple(s.name for s in model.outputs)
        return names, frozenset(names) if binary_default else frozenset()
    if not isinstance(value, list):
        raise _fail("'outputs' must be a list of {\"name\": ...} objects")
    names_list: list[str] = []
    binary: set[str] = set()
    for entry in value:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise _fail("each entry of 'outputs' needs a 'name' (a string)")
        if name not in model.by_output:
            raise _fail(f"unknown output {name!r}; the model's outputs are {model.output_names}")
        if name in names_list:
            raise _fail(f"output {name!r} is requested twice")
        parameters = _object(entry.get("parameters"), f"output {name!r}: 'parameters'")
        flag = parameters.get("binary_data", binary_default)
        if not isinstance(flag, bool):
            raise _fail(f"output {name!r}: 'binary_data' must be true or false")
        if flag:
            binary.add(name)
        names_list.append(name)
    return tuple(names_list), frozenset(binary)


def encode_response(
    *,
    model: ModelInfo,
    request_id: str | None,
    outputs: tuple[str, ...],
    binary: frozenset[str],
    results: Arrays,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output is binary."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name in outputs:
        spec = model.by_output[name]
        array = results[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": spec.datatype.value,
            "shape": list(array.shape),
        }
        if name in binary:
            chunk = _to_binary(array, spec.datatype)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif spec.datatype is Datatype.BYTES:
            entry["data"] = [_text(v) for v in array.reshape(-1).tolist()]
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        tensors.append(entry)
    doc: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = tensors
    head = orjson.dumps(doc, option=_NUMPY_JSON)
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _to_binary(array: np.ndarray, datatype: Datatype) -> bytes:
    if datatype is Datatype.BYTES:
        parts: list[bytes] = []
        for value in array.reshape(-1).tolist():
            raw = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LEN.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    wanted = datatypes.NUMPY[datatype]
    return np.ascontiguousarray(array, dtype=wanted).tobytes()


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})
