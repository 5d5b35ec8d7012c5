"""The seam between the server and the engine that computes: a `Runtime` protocol, the
ONNX Runtime implementation, and `FunctionRuntime`, a small in-memory double for unit
tests of batching (it runs a numpy function and records every batch it saw).

This module knows nothing about HTTP, queues or batching.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ondeck_server.serve import datatypes
from ondeck_server.serve.datatypes import Datatype
from ondeck_server.serve.errors import InferenceFailed, InvalidInput, StartupError

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output: name, V2 datatype, shape with -1 for a dynamic dim."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]
    #: the symbolic name of each dynamic dimension ("batch", "sequence"), where known
    dim_names: tuple[str | None, ...] = ()

    @property
    def dtype(self) -> np.dtype:
        return datatypes.NUMPY[self.datatype]

    def metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype.value, "shape": list(self.shape)}


class Runtime(Protocol):
    """Runs a model on a batch of named arrays; safe to call from one worker thread."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> Arrays:
        """Every output of the model, by name."""
        ...

    def abort(self) -> None:
        """Stop a run in progress and refuse later ones (called once, at shutdown)."""
        ...


def _dims(shape: Sequence[object]) -> tuple[int, ...]:
    # onnxruntime reports a dynamic dim as a name ("batch") or None.
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


class OnnxRuntime:
    """An onnxruntime InferenceSession on the CPU with a fixed number of intra-op threads."""

    def __init__(self, path: Path, *, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StartupError(f"onnxruntime cannot load {path}: {first}") from exc
        self._inputs = tuple(self._spec(v, "input") for v in self._session.get_inputs())
        self._outputs = tuple(self._spec(v, "output") for v in self._session.get_outputs())
        self._output_names = [o.name for o in self._outputs]
        # Shared by every run: setting `terminate` stops the one in progress.
        self._run_options = ort.RunOptions()
        self._invalid_argument: type[Exception] = (
            ort.capi.onnxruntime_pybind11_state.InvalidArgument
        )

    @staticmethod
    def _spec(value: object, kind: str) -> TensorSpec:
        name, type_string = value.name, value.type  # type: ignore[attr-defined]
        datatype = datatypes.from_ort(type_string)
        if datatype is None:
            raise StartupError(
                f"model {kind} {name!r} is a {type_string}, which the V2 protocol cannot carry;"
                " convert the model with plain tensor outputs (for scikit-learn: zipmap off)"
            )
        shape = value.shape  # type: ignore[attr-defined]
        names = tuple(d if isinstance(d, str) and d else None for d in shape)
        return TensorSpec(name, datatype, _dims(shape), names)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> Arrays:
        try:
            values = self._session.run(self._output_names, dict(feeds), self._run_options)
        except self._invalid_argument as exc:
            raise InvalidInput(_rejection(_first_line(exc), feeds)) from exc
        except Exception as exc:
            raise InferenceFailed(f"inference failed: {_first_line(exc)}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def abort(self) -> None:
        self._run_options.terminate = True


# onnxruntime's words for an id past an embedding table (a Gather on a graph input).
_OUT_OF_BOUNDS = re.compile(
    r"running (?P<op>\w+) node\..*indices element out of data bounds, idx=(?P<id>-?\d+) "
    r"must be within the inclusive range \[-?\d+,\s*(?P<last>-?\d+)\]"
)


def _rejection(text: str, feeds: Mapping[str, np.ndarray]) -> str:
    """What onnxruntime's refusal means for the caller. An out-of-vocabulary token id is
    named with its input (the integer input that holds the id) and the valid range."""
    found = _OUT_OF_BOUNDS.search(text)
    if found is None:
        return f"onnxruntime rejected the input: {text}"
    bad, rows = int(found["id"]), int(found["last"]) + 1
    holders = [
        name
        for name, array in feeds.items()
        if array.dtype.kind in "iu" and bool(np.any(array == bad))
    ]
    where = f"input {holders[0]!r}" if len(holders) == 1 else "an input"
    return (
        f"{where} holds the id {bad}, past the model's lookup table ({found['op']}) of {rows} "
        f"rows: ids must be from 0 to {rows - 1}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class FunctionRuntime:
    """A test double: computes outputs with a numpy function and records each batch.

    `gate`, when given, is waited on before every run, so a test can hold a batch in
    flight while it queues more requests.
    """

    def __init__(
        self,
        fn: Callable[[Mapping[str, np.ndarray]], Arrays],
        *,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        gate: threading.Event | None = None,
    ) -> None:
        self._fn = fn
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self._gate = gate
        self._lock = threading.Lock()
        #: rows of the first input, one entry per run
        self.batches: list[int] = []
        self.aborted = False

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> Arrays:
        if self._gate is not None:
            self._gate.wait(timeout=30)
        if self.aborted:
            raise InferenceFailed("inference failed: aborted")
        with self._lock:
            self.batches.append(len(next(iter(feeds.values()))))
        return self._fn(feeds)

    def abort(self) -> None:
        self.aborted = True
        if self._gate is not None:
            self._gate.set()
