"""Case builders and the oracle for fuzzing a running `ondeck-server serve`, shared by
the bounded CI suite (test_fuzz.py) and the nightly-style run (bench/fuzz/). A case's
random choices come from Hypothesis (CI: derandomized, shrinking) or from a seeded
numpy Generator (the 100 000-case run: no engine to pay for); see `Choices`.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

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
    #: valid answers equal to onnxruntime's only with the inputs at another alignment
    realigned: int = 0


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


def _at_offset(array: np.ndarray, offset: int) -> np.ndarray:
    """A copy of `array` whose data starts `offset` bytes past a 64-byte boundary."""
    if array.dtype == object or array.nbytes == 0:
        return array
    buffer = np.empty(array.nbytes + 128, np.uint8)
    start = -buffer.ctypes.data % 64 + offset
    copy = buffer[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


def realigned_references(
    path: Path, feeds: dict[str, np.ndarray]
) -> Iterator[dict[str, np.ndarray]]:
    """onnxruntime's answers with every input moved to each 4-byte offset in 64 bytes.
    The rounding of its vectorised float reductions depends on where the input lies in
    memory (measured, not a documented contract), and the server decodes a binary
    input in place, wherever the request put it: a sum of [-1000, 41.81, -457.5, 287.8,
    996.5, 125.0] is -6.426094 at offset 0 and -6.426216 at offset 4, 19 ppm apart.
    Cancellation makes that error relative to the inputs, not to the answer, so a wider
    tolerance would have to be wide for every model."""
    for offset in range(4, 64, 4):
        found = reference(path, {k: _at_offset(v, offset) for k, v in feeds.items()})
        if found is not None:
            yield found


# ----------------------------------------------------------------------- choices
class Choices(Protocol):
    """Where a case's random choices come from. Every case is built by the functions
    below from one of two sources: Hypothesis (`HypothesisChoices`: shrinking and
    derandomized runs, for CI) or a seeded numpy Generator (`NumpyChoices`: about a
    hundred times cheaper per case, for the 100 000-case nightly run). One builder, so
    both cover the same case kinds."""

    def integer(self, low: int, high: int) -> int: ...
    def boolean(self) -> bool: ...
    def pick(self, items: Sequence[Any]) -> Any: ...
    def text(self, max_size: int) -> str: ...
    def binary(self, min_size: int, max_size: int) -> bytes: ...
    def hostile_scalar(self) -> Any: ...
    def hostile_json(self) -> Any: ...
    def hostile_shape(self) -> Any: ...
    def datatype(self) -> Any: ...
    def outputs(self, names: list[str]) -> Any: ...
    def array(self, target: Target, tensor: Tensor, shape: tuple[int, ...]) -> np.ndarray: ...


def _bounds(target: Target, tensor: Tensor) -> tuple[float | None, float | None]:
    return _RANGES.get((target.model, tensor.name), (None, None))


def _elements(target: Target, tensor: Tensor) -> st.SearchStrategy[Any]:
    low, high = _bounds(target, tensor)
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
    width: Literal[16, 32, 64] = {2: 16, 4: 32}.get(dtype.itemsize, 64)  # type: ignore[assignment]
    return st.floats(
        min_value=low, max_value=high, width=width, allow_nan=False, allow_infinity=False
    )


HOSTILE_SPECIALS = (1e39, -1e39, 65520.0, 2**63, 2**64, -(2**63) - 1, 1e308, -0.0, 0.5)
HUGE_DIMENSIONS = (2**31, 2**40, 2**62, 2**63, 2**64, 4097)
ODD_HEADER_LENGTHS = ("-1", "1e3", "", "+5", "0x10", str(2**70))
HOSTILE_SCALARS = st.one_of(
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(HOSTILE_SPECIALS),
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
            st.sampled_from(HUGE_DIMENSIONS),
            st.text(max_size=2),
            st.none(),
            st.booleans(),
        ),
        max_size=5,
    ),
)
DATATYPES = st.one_of(st.sampled_from(sorted(NUMPY)), st.text(max_size=6), HOSTILE_SCALARS)


class HypothesisChoices:
    """Choices drawn by Hypothesis (inside `@st.composite`)."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def boolean(self) -> bool:
        return self._draw(st.booleans())

    def pick(self, items: Sequence[Any]) -> Any:
        return self._draw(st.sampled_from(items))

    def text(self, max_size: int) -> str:
        return self._draw(st.text(max_size=max_size))

    def binary(self, min_size: int, max_size: int) -> bytes:
        return self._draw(st.binary(min_size=min_size, max_size=max_size))

    def hostile_scalar(self) -> Any:
        return self._draw(HOSTILE_SCALARS)

    def hostile_json(self) -> Any:
        return self._draw(HOSTILE_JSON)

    def hostile_shape(self) -> Any:
        return self._draw(HOSTILE_SHAPES)

    def datatype(self) -> Any:
        return self._draw(DATATYPES)

    def outputs(self, names: list[str]) -> Any:
        entry = st.fixed_dictionaries(
            {"name": st.sampled_from(names)},
            optional={
                "parameters": st.one_of(
                    st.fixed_dictionaries({"binary_data": st.booleans()}), HOSTILE_JSON
                )
            },
        )
        return self._draw(st.lists(st.one_of(entry, HOSTILE_JSON), max_size=3))

    def array(self, target: Target, tensor: Tensor, shape: tuple[int, ...]) -> np.ndarray:
        return self._draw(hnp.arrays(tensor.dtype, shape, elements=_elements(target, tensor)))


#: Characters for random text: ASCII, controls (NUL included), Latin-1, CJK, emoji
#: (outside the BMP); never a lone surrogate, which JSON and UTF-8 cannot carry.
_CHARACTERS = "".join(
    [chr(c) for c in range(0x20, 0x7F)] * 3
    + [chr(c) for c in (0, 1, 9, 10, 13, 0x1B, 0x7F, 0xA0, 0xE9, 0xFF, 0x2028, 0xFEFF)]
    + [chr(c) for c in (0x4E2D, 0x6587, 0x1F600, 0x1F4A9, 0x10FFFF, 0x0301)]
)
_FLOAT_EDGES = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-310, 5e-324, 1.7976931348623157e308, -1e300)


class NumpyChoices:
    """Choices from a seeded numpy Generator. Like Hypothesis, it leans towards edge
    values (datatype limits, zero, signed zero, subnormals, empty containers) as well as
    drawing uniformly; unlike it, there is no engine and no shrinking, so a case costs
    tens of microseconds. The seed and the case's index reproduce a failure."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def integer(self, low: int, high: int) -> int:
        roll = self.rng.random()
        if roll < 0.15:
            return low if roll < 0.075 else high
        span = high - low
        if span < 2**62:
            return low + int(self.rng.integers(0, span, endpoint=True))
        if roll < 0.4:  # small numbers around zero, as Hypothesis favours
            return min(max(int(self.rng.integers(-300, 300)), low), high)
        return low + int.from_bytes(self.rng.bytes(span.bit_length() // 8 + 1), "little") % (
            span + 1
        )

    def boolean(self) -> bool:
        return bool(self.rng.random() < 0.5)

    def pick(self, items: Sequence[Any]) -> Any:
        return items[int(self.rng.integers(0, len(items)))]

    def text(self, max_size: int) -> str:
        size = int(self.rng.integers(0, max_size, endpoint=True))
        picks = self.rng.integers(0, len(_CHARACTERS), size)
        return "".join(_CHARACTERS[i] for i in picks)

    def binary(self, min_size: int, max_size: int) -> bytes:
        return self.rng.bytes(int(self.rng.integers(min_size, max_size, endpoint=True)))

    def _float(self) -> float:
        roll = self.rng.random()
        if roll < 0.25:
            return float(self.pick(_FLOAT_EDGES))
        if roll < 0.5:
            return float(self.rng.normal(0, 1e3))
        while True:  # any finite double: a random bit pattern, NaN and infinities redrawn
            value = float(np.frombuffer(self.rng.bytes(8), np.float64)[0])
            if np.isfinite(value):
                return value

    def hostile_scalar(self) -> Any:
        kind = int(self.rng.integers(0, 6))
        if kind == 0:
            return self.boolean()
        if kind == 1:
            return None
        if kind == 2:
            return self.text(5)
        if kind == 3:
            return self.integer(-(2**70), 2**70)
        if kind == 4:
            return self._float()
        return self.pick(HOSTILE_SPECIALS)

    def hostile_json(self, leaves: int = 12) -> Any:
        """Scalars, lists of up to 4 and objects of up to 3 members, nested, with at
        most about `leaves` scalars (Hypothesis's `max_leaves`)."""
        roll = self.rng.random()
        if leaves <= 1 or roll < 0.5:
            return self.hostile_scalar()
        size = int(self.rng.integers(0, 5 if roll < 0.8 else 4))
        share = max(1, (leaves - 1) // max(size, 1))
        if roll < 0.8:
            return [self.hostile_json(share) for _ in range(size)]
        return {self.text(3): self.hostile_json(share) for _ in range(size)}

    def hostile_shape(self) -> Any:
        if self.boolean():
            return self.hostile_json()
        shape: list[Any] = []
        for _ in range(int(self.rng.integers(0, 6))):
            kind = int(self.rng.integers(0, 5))
            if kind == 0:
                shape.append(int(self.rng.integers(-3, 12, endpoint=True)))
            elif kind == 1:
                shape.append(self.pick(HUGE_DIMENSIONS))
            elif kind == 2:
                shape.append(self.text(2))
            else:
                shape.append(None if kind == 3 else self.boolean())
        return shape

    def datatype(self) -> Any:
        kind = int(self.rng.integers(0, 3))
        if kind == 0:
            return self.pick(sorted(NUMPY))
        return self.text(6) if kind == 1 else self.hostile_scalar()

    def outputs(self, names: list[str]) -> Any:
        found: list[Any] = []
        for _ in range(int(self.rng.integers(0, 4))):
            if self.boolean():
                found.append(self.hostile_json())
                continue
            entry: dict[str, Any] = {"name": self.pick(names)}
            if self.boolean():
                entry["parameters"] = (
                    {"binary_data": self.boolean()} if self.boolean() else self.hostile_json()
                )
            found.append(entry)
        return found

    def array(self, target: Target, tensor: Tensor, shape: tuple[int, ...]) -> np.ndarray:
        dtype, size, rng = tensor.dtype, int(np.prod(shape)), self.rng
        low, high = _bounds(target, tensor)
        if tensor.datatype == "BOOL":
            return rng.random(shape) < 0.5
        if tensor.datatype == "BYTES":
            texts = np.empty(size, dtype=object)
            texts[:] = [self.text(6) for _ in range(size)]
            return texts.reshape(shape)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            lo = int(low) if low is not None else int(info.min)
            hi = int(high) if high is not None else int(info.max)
            values = rng.integers(lo, hi, size, dtype=dtype, endpoint=True)
            edges = np.array([lo, hi, max(lo, min(hi, 0)), max(lo, min(hi, 1))], dtype=dtype)
        elif low is not None and high is not None:
            values = rng.uniform(low, high, size).astype(dtype)
            edges = np.array([low, high, 0.0, -0.0, 1.0], dtype=dtype)
        else:  # any finite value of this width: random bit patterns, NaN and inf redrawn
            values = np.frombuffer(rng.bytes(size * dtype.itemsize), dtype).copy()
            bad = ~np.isfinite(values)
            values[bad] = rng.normal(0, 1e3, int(bad.sum())).astype(dtype)
            finfo = np.finfo(dtype)
            edges = np.array(
                [finfo.max, finfo.min, finfo.tiny, finfo.smallest_subnormal, 0.0, -0.0, 1.0],
                dtype=dtype,
            )
        if low is not None and high is not None:
            values = np.clip(values, low, high).astype(dtype)
        mask = rng.random(size) < 0.15
        values[mask] = edges[rng.integers(0, len(edges), int(mask.sum()))]
        return values.reshape(shape)


# ----------------------------------------------------------------------- valid requests
def feeds_from(choose: Choices, target: Target) -> dict[str, np.ndarray]:
    rows = choose.integer(0, 3)
    feeds: dict[str, np.ndarray] = {}
    for tensor in target.inputs:
        shape = tuple(
            d if d >= 0 else rows if axis == 0 else choose.integer(0, 6)
            for axis, d in enumerate(tensor.shape)
        )
        feeds[tensor.name] = choose.array(target, tensor, shape)
    return feeds


@st.composite
def valid_feeds(draw: st.DrawFn, target: Target) -> dict[str, np.ndarray]:
    return feeds_from(HypothesisChoices(draw), target)


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


def valid_case(choose: Choices, target: Target) -> Case:
    feeds = feeds_from(choose, target)
    protocols = ["v2-json", "v2-binary"]
    rows = next(iter(feeds.values())).shape[0] if feeds else 0
    if single_input(target) and rows > 0:
        protocols.append("v1")
    protocol = choose.pick(protocols)
    binary_out = choose.boolean()
    if protocol == "v2-binary":
        extra = {"parameters": {"binary_data_output": True}} if binary_out else {}
        body, headers = binary_request(feeds, **extra)
        return Case(protocol, body, headers, feeds)
    if protocol == "v1":
        (array,) = feeds.values()
        body = json.dumps({"instances": array.tolist()}).encode()
        return Case(protocol, body, {}, feeds)
    nested = choose.boolean()
    return Case(protocol, _json_body(feeds, nested=nested, binary_out=binary_out), {}, feeds)


@st.composite
def valid_cases(draw: st.DrawFn, target: Target) -> Case:
    return valid_case(HypothesisChoices(draw), target)


# ----------------------------------------------------------------------- mutations
MUTATIONS = (
    "element", "data", "shape", "datatype", "drop-key", "extra-input", "drop-input",
    "top-level", "outputs", "binary-size", "binary-bytes", "header-length", "truncate",
    "random-body", "v1-instances", "v1-element",
)  # fmt: skip


def fits(datatype: str, value: Any) -> bool:
    """Whether the JSON `value` is an element the V2 `datatype` accepts."""
    if datatype == "BOOL":
        return type(value) is bool
    if datatype == "BYTES":
        return type(value) is str
    dtype: np.dtype = NUMPY[datatype]
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


def mutated_case(choose: Choices, target: Target) -> Case:
    feeds = feeds_from(choose, target)
    kind = choose.pick(MUTATIONS)
    doc = json.loads(_json_body(feeds, nested=choose.boolean(), binary_out=False))
    inputs: list[dict[str, Any]] = doc["inputs"]
    which = choose.integer(0, max(0, len(inputs) - 1))
    headers: dict[str, str] = {}
    protocol = "v2-json"
    must_refuse = False
    if kind == "element":
        value = choose.hostile_scalar()
        data = inputs[which]["data"]
        inputs[which]["data"] = _replace_element(data, value, choose.integer(0, 10_000))
        must_refuse = data != [] and not fits(inputs[which]["datatype"], value)
    elif kind == "data":
        inputs[which]["data"] = choose.hostile_json()
    elif kind == "shape":
        inputs[which]["shape"] = choose.hostile_shape()
    elif kind == "datatype":
        inputs[which]["datatype"] = choose.datatype()
    elif kind == "drop-key":
        inputs[which].pop(choose.pick(["name", "shape", "datatype", "data"]), None)
    elif kind == "extra-input":
        names = [t.name for t in target.inputs]
        extra = {
            "name": choose.pick(names) if choose.boolean() else choose.text(4),
            "shape": choose.hostile_shape(),
            "datatype": choose.datatype(),
            "data": choose.hostile_json(),
        }
        inputs.insert(choose.integer(0, len(inputs)), extra)
    elif kind == "drop-input":
        inputs.pop(which)
    elif kind == "top-level":
        key = choose.pick(["id", "parameters", "inputs", "outputs", "extra"])
        doc[key] = choose.hostile_json()
    elif kind == "outputs":
        doc["outputs"] = choose.outputs([t.name for t in target.outputs])
    elif kind in ("binary-size", "binary-bytes", "header-length"):
        protocol = "v2-binary"
        body, headers = binary_request(feeds)
        length = int(headers["Inference-Header-Content-Length"])
        head, rest = json.loads(body[:length]), body[length:]
        if kind == "binary-size":
            tensor = head["inputs"][which]
            tensor["parameters"]["binary_data_size"] = (
                choose.integer(-2, len(rest) + 8) if choose.boolean() else choose.hostile_scalar()
            )
        elif kind == "binary-bytes":
            rest = choose.binary(len(rest), len(rest)) if rest else rest
        head_bytes = json.dumps(head).encode()
        header_length: str = str(len(head_bytes))
        if kind == "header-length":
            header_length = (
                str(choose.integer(0, len(head_bytes) + len(rest) + 4))
                if choose.boolean()
                else choose.pick(ODD_HEADER_LENGTHS)
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
        return Case(protocol, body[: choose.integer(0, len(body) - 1)], {}, None, kind)
    elif kind == "random-body":
        return Case(protocol, choose.binary(0, 64), {}, None, kind)
    elif kind == "v1-instances":
        body = json.dumps({"instances": choose.hostile_json()}).encode()
        return Case("v1", body, {}, None, kind)
    elif kind == "v1-element":
        tensor, array = target.inputs[0], next(iter(feeds.values()))
        value = choose.hostile_scalar()
        instances = _replace_element(array.tolist(), value, choose.integer(0, 10_000))
        refuse = array.size > 0 and not fits(tensor.datatype, value)
        body = json.dumps({"instances": instances}).encode()
        return Case("v1", body, {}, None, kind, must_refuse=refuse)
    return Case(protocol, json.dumps(doc).encode(), headers, None, kind, must_refuse=must_refuse)


@st.composite
def mutated_cases(draw: st.DrawFn, target: Target) -> Case:
    return mutated_case(HypothesisChoices(draw), target)


# ----------------------------------------------------------------------- the oracle
def url(target: Target, case: Case) -> str:
    if case.protocol == "v1":
        return f"{target.url}/v1/models/{target.model}:predict"
    return f"{target.url}/v2/models/{target.model}/infer"


def send(client: httpx.Client, target: Target, case: Case) -> httpx.Response:
    return client.post(url(target, case), content=case.body, headers=case.headers)


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


def compare(
    target: Target,
    feeds: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    want: dict[str, np.ndarray],
    *,
    json_floats: bool,
) -> None:
    """`got` is onnxruntime's answer for `feeds`, with the inputs where the reference
    put them or, for float outputs only, at another alignment (`realigned_references`)."""
    STATS.compared += 1
    try:
        _same(got, want, json_floats=json_floats)
    except AssertionError:
        if not any(o.dtype.kind == "f" for o in want.values()):
            raise
        for other in realigned_references(target.path, feeds):
            try:
                _same(got, other, json_floats=json_floats)
            except AssertionError:
                continue
            STATS.realigned += 1
            return
        raise


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
            got = _outputs_v1(response, want, rows)
            compare(target, case.feeds, got, want, json_floats=True)
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
        assert case.feeds is not None
        compare(target, case.feeds, got, want, json_floats=json_floats)
