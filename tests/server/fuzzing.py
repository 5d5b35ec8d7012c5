"""Hypothesis strategies and the oracle for fuzzing a running `ondeck-server serve`:
shared by the bounded CI suite (test_fuzz.py) and the nightly-style run (bench/fuzz/).

A case is one HTTP request: V2 JSON, V2 binary or V1, either *valid* (built from the
model's metadata, with values the datatype can hold) or *mutated* (a valid request
with one hostile change: a value of the wrong JSON type or out of range, a hostile
shape or datatype, a missing or extra field, bad binary lengths or bytes, a truncated
or random body). The rules every answer must meet:

- never a 5xx, never a hang (every request has a timeout);
- every 4xx carries `application/json` and exactly `{"error": "<non-empty text>"}`;
- a valid request gets 200 and exactly onnxruntime's in-process answer (floats within
  float tolerance; JSON has no NaN or infinity, so those come back as null) unless
  onnxruntime itself refuses those inputs, in which case a 4xx is right too;
- a 200 to a mutated request is a well-formed answer.

The module knows nothing of pytest; it reads the model's metadata from the server.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from server.v2client import DATATYPE, NUMPY, binary_request

#: The models of tests/modelzoo.py the suites fuzz, with value ranges for the models
#: that compute (so that valid answers are finite and comparable) and the Gather
#: indices the sequence model accepts.
MODELS = ("mlp", "multi_input", "all_types", "sequence", "scalar")
FLAGS = ("--threads", "1", "--max-tensor-elements", "4096")
_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("mlp", "input"): (-1e3, 1e3),
    ("multi_input", "x16"): (-1e3, 1e3),
    ("scalar", "x"): (-1e3, 1e3),
    ("sequence", "tok"): (-100, 99),
}
ALLOWED_4XX = frozenset({400, 404, 408, 413})


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return NUMPY[self.datatype]


@dataclass(frozen=True)
class Target:
    """A served model: its URL, name, tensors (from the server's metadata) and file."""

    model: str
    url: str
    path: Path
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @classmethod
    def read(cls, model: str, url: str, path: Path) -> Target:
        meta = httpx.get(f"{url}/v2/models/{model}", timeout=30).json()

        def tensors(key: str) -> tuple[Tensor, ...]:
            return tuple(Tensor(t["name"], t["datatype"], tuple(t["shape"])) for t in meta[key])

        return cls(model, url, path, tensors("inputs"), tensors("outputs"))


@dataclass
class Case:
    protocol: str  # "v2-json", "v2-binary" or "v1"
    body: bytes
    headers: dict[str, str]
    #: the inputs of a valid request (its answer must equal the reference), else None
    feeds: dict[str, np.ndarray] | None
    mutation: str = ""
    #: the mutation made the request certainly invalid: it must not get 200
    must_refuse: bool = False


@dataclass
class Stats:
    """Counts over every case sent (for the reports)."""

    cases: int = 0
    codes: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    compared: int = 0


STATS = Stats()

# ----------------------------------------------------------------------- reference
_SESSIONS: dict[Path, Any] = {}


def reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """onnxruntime's answer in-process (one thread, as modelzoo.reference), or None when
    onnxruntime refuses these inputs."""
    import onnxruntime as ort

    session = _SESSIONS.get(path)
    if session is None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        _SESSIONS[path] = session
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, feeds), strict=True))
    except Exception:  # onnxruntime's own errors are untyped
        return None


# ----------------------------------------------------------------------- valid requests
def _elements(target: Target, tensor: Tensor) -> st.SearchStrategy[Any]:
    low, high = _RANGES.get((target.model, tensor.name), (None, None))
    dtype = tensor.dtype
    if tensor.datatype == "BOOL":
        return st.booleans()
    if tensor.datatype == "BYTES":
        return st.text(max_size=6)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.integers(
            int(low) if low is not None else int(info.min),
            int(high) if high is not None else int(info.max),
        )
    width = dtype.itemsize * 8
    return st.floats(
        min_value=low, max_value=high, width=width, allow_nan=False, allow_infinity=False
    )


@st.composite
def valid_feeds(draw: st.DrawFn, target: Target) -> dict[str, np.ndarray]:
    rows = draw(st.integers(0, 3))
    feeds: dict[str, np.ndarray] = {}
    for tensor in target.inputs:
        shape = [
            d if d >= 0 else rows if axis == 0 else draw(st.integers(0, 6))
            for axis, d in enumerate(tensor.shape)
        ]
        dtype = tensor.dtype
        feeds[tensor.name] = draw(
            hnp.arrays(dtype, tuple(shape), elements=_elements(target, tensor))
        )
    return feeds


def _json_body(feeds: dict[str, np.ndarray], *, nested: bool, binary_out: bool) -> bytes:
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
    doc: dict[str, Any] = {"inputs": inputs}
    if binary_out:
        doc["parameters"] = {"binary_data_output": True}
    return json.dumps(doc).encode()


def single_input(target: Target) -> bool:
    return len(target.inputs) == 1


@st.composite
def valid_cases(draw: st.DrawFn, target: Target) -> Case:
    feeds = draw(valid_feeds(target))
    protocols = ["v2-json", "v2-binary"]
    rows = next(iter(feeds.values())).shape[0] if feeds else 0
    if single_input(target) and rows > 0:
        protocols.append("v1")
    protocol = draw(st.sampled_from(protocols))
    binary_out = draw(st.booleans())
    if protocol == "v2-binary":
        extra = {"parameters": {"binary_data_output": True}} if binary_out else {}
        body, headers = binary_request(feeds, **extra)
        return Case(protocol, body, headers, feeds)
    if protocol == "v1":
        (array,) = feeds.values()
        body = json.dumps({"instances": array.tolist()}).encode()
        return Case(protocol, body, {}, feeds)
    nested = draw(st.booleans())
    return Case(protocol, _json_body(feeds, nested=nested, binary_out=binary_out), {}, feeds)


# ----------------------------------------------------------------------- mutations
HOSTILE_SCALARS = st.one_of(
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e39, -1e39, 65520.0, 2**63, 2**64, -(2**63) - 1, 1e308, -0.0, 0.5]),
)
HOSTILE_JSON = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
HOSTILE_SHAPES = st.one_of(
    HOSTILE_JSON,
    st.lists(
        st.one_of(
            st.integers(-3, 12),
            st.sampled_from([2**31, 2**40, 2**62, 2**63, 2**64, 4097]),
            st.text(max_size=2),
            st.none(),
            st.booleans(),
        ),
        max_size=5,
    ),
)
DATATYPES = st.one_of(st.sampled_from(sorted(NUMPY)), st.text(max_size=6), HOSTILE_SCALARS)


def fits(datatype: str, value: Any) -> bool:
    """Whether the JSON `value` is an element the V2 `datatype` accepts."""
    if datatype == "BOOL":
        return type(value) is bool
    if datatype == "BYTES":
        return type(value) is str
    dtype = NUMPY[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return type(value) is int and info.min <= value <= info.max
    if type(value) not in (int, float):
        return False
    try:
        wide = float(value)
    except OverflowError:
        return False
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float64(wide).astype(dtype)))


def _replace_element(data: Any, value: Any, index: int) -> Any:
    """`data` (nested lists) with its `index`-th leaf (mod the leaf count) replaced."""
    leaves: list[tuple[list[Any], int]] = []

    def walk(node: Any) -> None:
        for i, item in enumerate(node):
            if isinstance(item, list):
                walk(item)
            else:
                leaves.append((node, i))

    copy = json.loads(json.dumps(data))
    if not isinstance(copy, list):
        return value
    walk(copy)
    if not leaves:
        return [value]
    node, i = leaves[index % len(leaves)]
    node[i] = value
    return copy


@st.composite
def mutated_cases(draw: st.DrawFn, target: Target) -> Case:
    feeds = draw(valid_feeds(target))
    kind = draw(
        st.sampled_from(
            [
                "element", "data", "shape", "datatype", "drop-key", "extra-input",
                "drop-input", "top-level", "outputs", "binary-size", "binary-bytes",
                "header-length", "truncate", "random-body", "v1-instances", "v1-element",
            ]
        )
    )  # fmt: skip
    doc = json.loads(_json_body(feeds, nested=draw(st.booleans()), binary_out=False))
    inputs: list[dict[str, Any]] = doc["inputs"]
    which = draw(st.integers(0, max(0, len(inputs) - 1)))
    headers: dict[str, str] = {}
    protocol = "v2-json"
    must_refuse = False
    if kind == "element":
        value = draw(HOSTILE_SCALARS)
        data = inputs[which]["data"]
        inputs[which]["data"] = _replace_element(data, value, draw(st.integers(0, 10_000)))
        must_refuse = data != [] and not fits(inputs[which]["datatype"], value)
    elif kind == "data":
        inputs[which]["data"] = draw(HOSTILE_JSON)
    elif kind == "shape":
        inputs[which]["shape"] = draw(HOSTILE_SHAPES)
    elif kind == "datatype":
        inputs[which]["datatype"] = draw(DATATYPES)
    elif kind == "drop-key":
        key = draw(st.sampled_from(["name", "shape", "datatype", "data"]))
        inputs[which].pop(key, None)
    elif kind == "extra-input":
        extra = {
            "name": draw(
                st.one_of(st.sampled_from([t.name for t in target.inputs]), st.text(max_size=4))
            ),
            "shape": draw(HOSTILE_SHAPES),
            "datatype": draw(DATATYPES),
            "data": draw(HOSTILE_JSON),
        }
        inputs.insert(draw(st.integers(0, len(inputs))), extra)
    elif kind == "drop-input":
        inputs.pop(which)
    elif kind == "top-level":
        key = draw(st.sampled_from(["id", "parameters", "inputs", "outputs", "extra"]))
        doc[key] = draw(HOSTILE_JSON)
    elif kind == "outputs":
        names = [t.name for t in target.outputs]
        doc["outputs"] = draw(
            st.lists(
                st.one_of(
                    st.fixed_dictionaries(
                        {"name": st.sampled_from(names)},
                        optional={
                            "parameters": st.one_of(
                                st.fixed_dictionaries({"binary_data": st.booleans()}), HOSTILE_JSON
                            )
                        },
                    ),
                    HOSTILE_JSON,
                ),
                max_size=3,
            )
        )
    elif kind in ("binary-size", "binary-bytes", "header-length"):
        protocol = "v2-binary"
        body, headers = binary_request(feeds)
        length = int(headers["Inference-Header-Content-Length"])
        head, rest = json.loads(body[:length]), body[length:]
        if kind == "binary-size":
            tensor = head["inputs"][which]
            tensor["parameters"]["binary_data_size"] = draw(
                st.one_of(st.integers(-2, len(rest) + 8), HOSTILE_SCALARS)
            )
        elif kind == "binary-bytes":
            rest = draw(st.binary(min_size=len(rest), max_size=len(rest))) if rest else rest
        head_bytes = json.dumps(head).encode()
        header_length: str = str(len(head_bytes))
        if kind == "header-length":
            header_length = draw(
                st.one_of(
                    st.integers(0, len(head_bytes) + len(rest) + 4).map(str),
                    st.sampled_from(["-1", "1e3", "", "+5", "0x10", str(2**70)]),
                )
            )
        return Case(
            protocol,
            head_bytes + rest,
            {"Inference-Header-Content-Length": header_length},
            None,
            kind,
        )
    elif kind == "truncate":
        body = json.dumps(doc).encode()
        return Case(protocol, body[: draw(st.integers(0, len(body) - 1))], {}, None, kind)
    elif kind == "random-body":
        return Case(protocol, draw(st.binary(max_size=64)), {}, None, kind)
    elif kind == "v1-instances":
        body = json.dumps({"instances": draw(HOSTILE_JSON)}).encode()
        return Case("v1", body, {}, None, kind)
    elif kind == "v1-element":
        tensor, array = target.inputs[0], next(iter(feeds.values()))
        value = draw(HOSTILE_SCALARS)
        instances = _replace_element(array.tolist(), value, draw(st.integers(0, 10_000)))
        refuse = array.size > 0 and not fits(tensor.datatype, value)
        body = json.dumps({"instances": instances}).encode()
        return Case("v1", body, {}, None, kind, must_refuse=refuse)
    return Case(protocol, json.dumps(doc).encode(), headers, None, kind, must_refuse=must_refuse)


# ----------------------------------------------------------------------- the oracle
def send(client: httpx.Client, target: Target, case: Case) -> httpx.Response:
    if case.protocol == "v1":
        path = f"/v1/models/{target.model}:predict"
    else:
        path = f"/v2/models/{target.model}/infer"
    return client.post(f"{target.url}{path}", content=case.body, headers=case.headers)


def _array(values: Any, dtype: np.dtype, shape: tuple[int, ...] | list[int] | None) -> np.ndarray:
    if dtype.kind == "f":
        floats = np.array(values, dtype=object)
        floats[floats == None] = np.nan  # noqa: E711  (JSON null: NaN or an infinity)
        array = floats.astype(np.float64).astype(dtype)
    else:
        array = np.array(values, dtype=dtype)
    return array.reshape(shape) if shape is not None else array


def _outputs_v2(response: httpx.Response) -> dict[str, np.ndarray]:
    length = response.headers.get("inference-header-content-length")
    body = response.content
    head = body if length is None else body[: int(length)]
    doc = json.loads(head)
    offset = len(head)
    arrays: dict[str, np.ndarray] = {}
    for out in doc["outputs"]:
        dtype, shape = NUMPY[out["datatype"]], out["shape"]
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[out["name"]] = _array(out["data"], dtype, shape)
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
    assert offset == len(body), "binary answer has bytes no output claims"
    return arrays


def _outputs_v1(
    response: httpx.Response, want: dict[str, np.ndarray], rows: int
) -> dict[str, np.ndarray]:
    predictions = response.json()["predictions"]
    per_row = all(a.ndim >= 1 and a.shape[0] == rows for a in want.values())
    if len(want) == 1:
        ((name, ref),) = want.items()
        values = predictions if per_row else predictions[0]
        return {name: _array(values, ref.dtype, ref.shape)}
    if per_row:
        assert len(predictions) == rows
        return {n: _array([p[n] for p in predictions], r.dtype, r.shape) for n, r in want.items()}
    assert len(predictions) == 1
    return {n: _array(predictions[0][n], r.dtype, r.shape) for n, r in want.items()}


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], *, json_floats: bool) -> None:
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name, expected in want.items():
        actual = got[name]
        assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
        if expected.dtype.kind == "f":
            finite = np.isfinite(expected)
            if json_floats:  # null stands for NaN and both infinities
                assert np.isnan(actual[~finite]).all(), name
            else:
                np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=name)
            np.testing.assert_allclose(
                actual[finite].astype(np.float64),
                expected[finite].astype(np.float64),
                rtol=2e-3 if expected.dtype == np.float16 else 1e-5,
                atol=1e-5,
                err_msg=name,
            )
        else:
            np.testing.assert_array_equal(actual, expected.astype(actual.dtype), err_msg=name)


def check(target: Target, case: Case, response: httpx.Response) -> None:
    """Raise AssertionError when `response` breaks a rule of this module's docstring."""
    STATS.cases += 1
    STATS.codes[response.status_code] += 1
    STATS.kinds[case.mutation or f"valid {case.protocol}"] += 1
    status = response.status_code
    assert status < 500, f"{status} for {case.mutation or 'a valid request'}: {response.text[:300]}"
    want = reference(target.path, case.feeds) if case.feeds is not None else None
    if case.must_refuse:
        assert status != 200, f"{case.mutation}: an invalid value was accepted"
    if status != 200:
        assert status in ALLOWED_4XX, status
        assert response.headers["content-type"] == "application/json", response.headers
        doc = response.json()
        assert isinstance(doc, dict), doc
        assert list(doc) == ["error"], doc
        assert isinstance(doc["error"], str), doc
        assert doc["error"], doc
        assert want is None, f"a valid request was refused with {status}: {doc['error']}"
        return
    if case.protocol == "v1":
        doc = response.json()
        assert isinstance(doc.get("predictions"), list), doc
        if want is not None:
            assert case.feeds is not None
            rows = next(iter(case.feeds.values())).shape[0]
            _same(_outputs_v1(response, want, rows), want, json_floats=True)
            STATS.compared += 1
        return
    got = _outputs_v2(response)
    if want is not None:
        binary = response.headers.get("inference-header-content-length") is not None
        doc = json.loads(
            response.content[: int(response.headers["inference-header-content-length"])]
            if binary
            else response.content
        )
        json_floats = any("data" in out for out in doc["outputs"])
        _same(got, want, json_floats=json_floats)
        STATS.compared += 1
