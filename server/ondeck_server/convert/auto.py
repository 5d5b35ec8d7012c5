"""`--quantize auto`: build every quantization that applies, judge each by the gate, time
the ones that pass on this machine, keep the fastest.

Candidates, judged in this order (also the order of preference in a tie, most faithful
first): `none`, `fp16` (only when this CPU's onnxruntime has fp16 kernels: a real probe,
`fp16_kernels`), `int8-static` (only with calibration data), `int8` (dynamic, weights per
channel), `int4` (the `--int4-*` settings). A candidate is rejected when its quantization
fails, when it does not load, when it fails the accuracy gate, or when its rows depend on
the batch while the unquantized model's do not (dynamic int8 computes one activation
scale per batch: it would have to be served without cross-request batching).

Timing: the passing candidates run the first `batch` validation rows (the gate's batch)
and one row, `WARMUP` times untimed, then `ROUNDS` rounds taken round-robin across the
candidates (a loaded machine slows them alike), one onnxruntime thread each; the figure
is the median per candidate. The choice: the fastest median; every candidate within
`TIE_MARGIN` of it counts as tied, and of those the smallest wins, then the earlier in
`PREFERENCE`. The gate's verdicts are deterministic for the same inputs; the timings are
not, so the choice is stable whenever candidates differ by more than the margin.

This module quantizes, runs and times models in `work`; it moves the chosen model's
files to `out` and writes nothing else.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ondeck_server.artifact.batching import Batching
from ondeck_server.convert import onnx_tools
from ondeck_server.convert.errors import PipelineError, ValidationFailed
from ondeck_server.convert.onnx_tools import Feeds
from ondeck_server.convert.quantize import Int4Settings, Quantize, quantize
from ondeck_server.convert.validate import ValidationReport, gate_figures

#: Judged in this order; in a tie of latency and size the earlier wins.
PREFERENCE = (Quantize.NONE, Quantize.FP16, Quantize.INT8_STATIC, Quantize.INT8, Quantize.INT4)
#: Candidates whose median latency is within this share of the fastest are tied.
TIE_MARGIN = 0.10
WARMUP = 2
ROUNDS = 7
#: Timing stops adding rounds past this (a big model), once MIN_ROUNDS are done.
TIMING_BUDGET_S = 60.0
MIN_ROUNDS = 3
#: Above this total size the passing candidates are timed one after another (each loaded
#: alone) instead of round-robin (all loaded at once).
INTERLEAVE_MAX_BYTES = 1 << 30

#: What judges one candidate model: its gate report (passed or not) and its batching.
Judge = Callable[[Path], tuple[ValidationReport, Batching]]
#: Where one line per candidate goes: (stage name, seconds, detail).
Report = Callable[[str, float, str], None]


class Candidate(BaseModel):
    """One candidate's figures and fate, as the manifest and the status list them."""

    model_config = ConfigDict(populate_by_name=True)

    quantize: str
    outcome: str = Field(description="chosen, passed (not chosen), rejected or skipped")
    reason: str | None = Field(default=None, description="why not chosen, rejected or skipped")
    detail: str | None = Field(default=None, description="what the quantization did")
    size_bytes: int | None = Field(default=None, serialization_alias="sizeBytes")
    quantize_seconds: float | None = Field(default=None, serialization_alias="quantizeSeconds")
    latency_ms: float | None = Field(
        default=None,
        serialization_alias="latencyMs",
        description="median time of one batch of validation rows",
    )
    latency_batch1_ms: float | None = Field(
        default=None, serialization_alias="latencyBatch1Ms", description="median, one row"
    )
    cosine: float | None = None
    top1_disagreement: float | None = Field(default=None, serialization_alias="top1Disagreement")
    gate_passed: bool | None = Field(default=None, serialization_alias="gatePassed")
    batch_independent: bool | None = Field(default=None, serialization_alias="batchIndependent")


class AutoReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    chosen: str
    candidates: list[Candidate]
    timing: str = Field(description="what was timed, how often, on what")
    tie_margin: float = Field(serialization_alias="tieMargin")
    fp16_kernels: str = Field(serialization_alias="fp16Kernels")


@dataclass
class _Built:
    mode: Quantize
    path: Path
    entry: Candidate
    report: ValidationReport
    batching: Batching


@functools.cache
def fp16_kernels() -> tuple[bool, str]:
    """Whether onnxruntime's CPU provider here computes MatMul in float16, and how that
    was found: a session on a one-MatMul float16 model, saved after onnxruntime placed
    its kernels; without a float16 kernel it wraps the MatMul in Casts to float (then
    fp16 only halves the size and costs the casts at run time)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((64, 64), np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "fp16_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [-1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [-1, 64])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory(prefix="ondeck-fp16-probe-") as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.optimized_model_filepath = str(Path(folder) / "placed.onnx")
        options.log_severity_level = 3
        try:
            ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            ops = [n.op_type for n in onnx.load_model(options.optimized_model_filepath).graph.node]
        except Exception as exc:  # onnxruntime's errors: no kernel at all
            return False, f"probe: an fp16 MatMul does not load ({onnx_tools.error_text(exc, 120)})"
    version = f"onnxruntime {ort.__version__}"
    if "Cast" in ops:
        return False, f"probe: {version} runs an fp16 MatMul in fp32 (casts inserted)"
    return True, f"probe: {version} has an fp16 MatMul kernel"


def choose(
    optimized: Path,
    *,
    out: Path,
    work: Path,
    calibration: Feeds | None,
    int4: Int4Settings,
    judge: Judge,
    samples: Feeds,
    batch: int,
    fixed_batch: bool,
    report: Report,
) -> tuple[AutoReport, ValidationReport, Batching]:
    """Build, judge and time every candidate; move the chosen model's files to `out`.
    Raises ValidationFailed when not even the unquantized model passes the gate."""
    has_fp16, fp16_fact = fp16_kernels()
    entries: list[Candidate] = []
    built: list[_Built] = []
    baseline: dict[str, Any] = {}
    for mode in PREFERENCE:
        entry = Candidate(quantize=mode.value, outcome="rejected")
        entries.append(entry)
        if mode is Quantize.FP16 and not has_fp16:
            entry.outcome, entry.reason = "skipped", f"no fp16 kernels on this CPU ({fp16_fact})"
            continue
        if mode is Quantize.INT8_STATIC and calibration is None:
            entry.outcome, entry.reason = "skipped", "needs calibration data (--calibration)"
            continue
        folder = work / "auto" / mode.value
        (folder / "work").mkdir(parents=True, exist_ok=True)
        path = folder / out.name  # the same file names as in the artifact: moved as they are
        start = time.perf_counter()
        try:
            entry.detail = quantize(
                optimized,
                mode=mode,
                out=path,
                work=folder / "work",
                calibration=calibration,
                int4=int4,
            )
        except PipelineError as exc:
            entry.reason = f"quantization failed: {exc}"
        entry.quantize_seconds = round(time.perf_counter() - start, 3)
        if entry.reason is None:
            candidate = _judge(mode, path, entry, judge=judge, baseline=baseline)
            if candidate is not None:
                built.append(candidate)
        if entry.outcome != "passed":
            # A big model's rejected candidates would otherwise fill the disk until the end.
            shutil.rmtree(folder, ignore_errors=True)
    if not built:
        raise ValidationFailed(
            "quantize auto: no candidate passed the gate, not even the unquantized model ("
            + "; ".join(f"{e.quantize}: {e.reason}" for e in entries)
            + "); relax the thresholds or check the validation data",
            details={"candidates": [e.model_dump(mode="json", by_alias=True) for e in entries]},
        )
    timing = _time(built, samples=samples, batch=batch, fixed_batch=fixed_batch)
    winner = _pick(built)
    winner.entry.outcome, winner.entry.reason = "chosen", _why_chosen(winner, built)
    for other in built:
        if other is not winner:
            other.entry.reason = _why_not(other, winner)
    for entry in entries:
        report("candidate", entry.quantize_seconds or 0.0, _line(entry))
    for source in onnx_tools.model_files(winner.path):
        shutil.move(source, out.parent / source.name)
    auto = AutoReport(
        chosen=winner.mode.value,
        candidates=entries,
        timing=timing,
        tie_margin=TIE_MARGIN,
        fp16_kernels=fp16_fact,
    )
    return auto, winner.report, winner.batching


def _judge(
    mode: Quantize,
    path: Path,
    entry: Candidate,
    *,
    judge: Judge,
    baseline: dict[str, Any],
) -> _Built | None:
    """Fill in `entry` for the model at `path`; the candidate when it may be chosen.
    `baseline` holds what the unquantized model (judged first) showed."""
    entry.size_bytes = onnx_tools.total_size(path)
    signature = _signature(path)
    if mode is Quantize.NONE:
        baseline["signature"] = signature
    elif signature == baseline.get("signature"):
        # Nothing to quantize (a tree ensemble, a model without MatMul): timing the same
        # model twice would let noise pick between equals.
        entry.outcome, entry.reason = "skipped", "changes nothing: the same graph as none"
        return None
    try:
        gate, batching = judge(path)
    except PipelineError as exc:  # does not load, or cannot run on the samples
        entry.reason = str(exc)
        return None
    entry.cosine, entry.top1_disagreement = gate.cosine, gate.top1_disagreement
    entry.gate_passed, entry.batch_independent = gate.passed, batching.independent
    if mode is Quantize.NONE:
        baseline["independent"] = batching.independent
    if not gate.passed:
        entry.reason = f"fails the gate: {gate_figures(gate)}"
        return None
    if not batching.independent and baseline.get("independent"):
        entry.reason = (
            f"its rows depend on the batch, the unquantized model's do not ({batching.explain()})"
        )
        return None
    entry.outcome = "passed"
    return _Built(mode, path, entry, gate, batching)


def _signature(path: Path) -> tuple[Any, ...]:
    """The operators and the weights' names, types and shapes (not their values): equal
    for two models exactly when a quantization changed nothing."""
    import onnx

    graph = onnx.load_model(str(path), load_external_data=False).graph
    return (
        tuple(n.op_type for n in graph.node),
        tuple((t.name, t.data_type, tuple(t.dims)) for t in graph.initializer),
    )


def _time(built: list[_Built], *, samples: Feeds, batch: int, fixed_batch: bool) -> str:
    """Fill in each candidate's median latencies; returns what was timed, in words."""
    rows = min(len(v) for v in samples.values())
    big = {k: np.ascontiguousarray(v[: min(batch, rows)]) for k, v in samples.items()}
    one = {k: np.ascontiguousarray(v[:1]) for k, v in samples.items()}
    feeds = [big] if fixed_batch and batch != 1 else [big, one]
    total = sum(b.entry.size_bytes or 0 for b in built)
    groups = [built] if total <= INTERLEAVE_MAX_BYTES else [[b] for b in built]
    done_rounds = ROUNDS
    for group in groups:
        sessions = [onnx_tools.session(b.path) for b in group]
        times: list[list[list[float]]] = [[[] for _ in feeds] for _ in group]
        for _ in range(WARMUP):
            for sess in sessions:
                for feed in feeds:
                    sess.run(None, feed)
        started = time.perf_counter()
        for round_index in range(ROUNDS):
            for i, sess in enumerate(sessions):
                for j, feed in enumerate(feeds):
                    tick = time.perf_counter()
                    sess.run(None, feed)
                    times[i][j].append((time.perf_counter() - tick) * 1000)
            spent = time.perf_counter() - started
            if round_index + 1 >= MIN_ROUNDS and spent > TIMING_BUDGET_S / len(groups):
                done_rounds = min(done_rounds, round_index + 1)
                break
        for b, per_feed in zip(group, times, strict=True):
            b.entry.latency_ms = round(statistics.median(per_feed[0]), 4)
            if len(per_feed) > 1:
                b.entry.latency_batch1_ms = round(statistics.median(per_feed[1]), 4)
        del sessions
    how = "round-robin" if len(groups) == 1 else "one candidate at a time"
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return (
        f"median of {done_rounds} rounds ({how}, {WARMUP} warm-up), 1 thread, on "
        f"{len(big[next(iter(big))])} validation rows and on 1 row{load}"
    )


def _key(b: _Built) -> tuple[int, int]:
    return (b.entry.size_bytes or 0, PREFERENCE.index(b.mode))


def _fastest(built: list[_Built]) -> float:
    return min(_latency(b) for b in built)


def _latency(b: _Built) -> float:
    return b.entry.latency_ms if b.entry.latency_ms is not None else float("inf")


def _pick(built: list[_Built]) -> _Built:
    fastest = _fastest(built)
    tied = [b for b in built if _latency(b) <= fastest * (1 + TIE_MARGIN)]
    return min(tied, key=_key)


def _why_chosen(winner: _Built, built: list[_Built]) -> str:
    fastest = _fastest(built)
    tied = [b for b in built if _latency(b) <= fastest * (1 + TIE_MARGIN) and b is not winner]
    if not tied:
        return "fastest"
    names = ", ".join(sorted([winner.mode.value, *(b.mode.value for b in tied)]))
    if any(b.entry.size_bytes != winner.entry.size_bytes for b in tied):
        return f"within {TIE_MARGIN:.0%} of the fastest; the smallest of {names}"
    order = " > ".join(m.value for m in PREFERENCE)
    return f"within {TIE_MARGIN:.0%} of the fastest, as large as {names}; first in {order}"


def _why_not(other: _Built, winner: _Built) -> str:
    if _latency(other) > _latency(winner) * (1 + TIE_MARGIN):
        ratio = _latency(other) / max(_latency(winner), 1e-9)
        return f"slower: {ratio:.2f}x the chosen {winner.mode.value}'s latency"
    if (other.entry.size_bytes or 0) > (winner.entry.size_bytes or 0):
        return f"as fast (within {TIE_MARGIN:.0%}) but larger than {winner.mode.value}"
    return f"as fast and as large as {winner.mode.value}, which comes first in order"


def _line(entry: Candidate) -> str:
    """One candidate for a person: mode, fate, size, latency, gate figures, why."""
    parts = []
    if entry.size_bytes is not None:
        parts.append(f"{entry.size_bytes / 1e6:.3f} MB")
    if entry.latency_ms is not None:
        one = (
            f", 1 row {entry.latency_batch1_ms:.3f} ms"
            if entry.latency_batch1_ms is not None
            else ""
        )
        parts.append(f"batch {entry.latency_ms:.3f} ms{one}")
    if entry.cosine is not None:
        parts.append(f"cosine {entry.cosine:.4f}")
    if entry.top1_disagreement is not None:
        parts.append(f"top-1 disagreement {entry.top1_disagreement:.4f}")
    if entry.batch_independent is not None:
        parts.append("batch independent" if entry.batch_independent else "batch dependent")
    figures = f" ({', '.join(parts)})" if parts else ""
    why = f": {entry.reason}" if entry.reason else ""
    return f"{entry.quantize} {entry.outcome}{figures}{why}"


def as_dict(auto: AutoReport) -> dict[str, Any]:
    return auto.model_dump(mode="json", by_alias=True)
