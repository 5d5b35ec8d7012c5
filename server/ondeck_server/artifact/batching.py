"""Batch independence: may requests of different callers share one model run?

A server that stacks requests along dimension 0 gives every caller exactly the answer
it would get alone only when each output row depends on its own input row and nothing
else. Dynamic int8 models (DynamicQuantizeLinear: one activation scale per *batch*) and
models that reduce over the batch axis (`x - mean(x, axis=0)`, batch statistics) break
that: one caller's answer moves with what others sent.

The conversion records the verdict in the manifest (`batching`: independent or not, and
why); the server stacks requests only for models recorded as independent, and runs the
same empirical check itself at load for a model without that record. This module holds
the record and the check (numpy only); it runs nothing on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

#: rows compared one by one against the batch they were in (one batched run, then one
#: run per row)
CHECK_ROWS = 8
#: an output element may move this much (relative to the output's magnitude) between a
#: batched and a single-row run: float kernels sum in different orders for different
#: batch sizes. Dynamic int8 moves answers by whole quantization steps (~0.4 %).
RELATIVE_TOLERANCE = 1e-4


class Reason(StrEnum):
    """Why a model is (not) batched across callers; also the metric's `reason` label."""

    INDEPENDENT = "independent"
    DYNAMIC_QUANTIZATION = "dynamic-quantization"
    REDUCES_OVER_BATCH = "reduces-over-batch"
    ROWS_DEPEND_ON_BATCH = "rows-depend-on-batch"
    NO_BATCH_DIMENSION = "no-batch-dimension"
    UNCHECKED = "unchecked"
    DISABLED = "max-batch-size-1"


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True)

    reason: Reason
    detail: str


class Batching(BaseModel):
    """manifest.json `batching`: the conversion's verdict."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    independent: bool = Field(
        description="true: every output row depends only on its own input row, so the "
        "server may run requests of different callers in one batch"
    )
    findings: list[Finding] = Field(
        default_factory=list, description="why not (empty when independent)"
    )
    checked_rows: int = Field(
        default=0,
        alias="checkedRows",
        description="rows the empirical check compared alone vs in a batch",
    )

    @property
    def reason(self) -> Reason:
        return self.findings[0].reason if self.findings else Reason.INDEPENDENT

    def explain(self) -> str:
        if not self.findings:
            return f"rows independent ({self.checked_rows} rows checked alone vs batched)"
        return "; ".join(f.detail for f in self.findings)


Run = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


def row_dependence(run: Run, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> str | None:
    """Run `feeds` (rows along dim 0) as one batch, then each row alone; None when every
    row's outputs match, else what moved. `names` are the outputs in `run`'s order."""
    rows = min(len(v) for v in feeds.values())
    batch = {k: np.ascontiguousarray(v[:rows]) for k, v in feeds.items()}
    together = list(run(batch))
    for i in range(rows):
        alone = list(run({k: v[i : i + 1] for k, v in batch.items()}))
        for name, big, small in zip(names, together, alone, strict=True):
            big, small = np.asarray(big), np.asarray(small)
            if big.ndim == 0 or small.ndim == 0 or len(big) != rows or len(small) != 1:
                return f"output {name!r} does not have one row per input row"
            moved = _difference(big[i : i + 1], small)
            if moved is not None:
                return (
                    f"row {i} of output {name!r} changes when other rows share its batch ({moved})"
                )
    return None


def _difference(batched: np.ndarray, alone: np.ndarray) -> str | None:
    if batched.shape != alone.shape:
        return f"shape {list(batched.shape)} vs {list(alone.shape)} alone"
    if batched.dtype.kind in "fc":
        a = alone.astype(np.float64)
        b = batched.astype(np.float64)
        if not np.array_equal(np.isfinite(a), np.isfinite(b)):
            return "non-finite values differ"
        finite = np.isfinite(a)
        if not finite.any():
            return None
        delta = float(np.max(np.abs(a[finite] - b[finite])))
        scale = 1.0 + float(np.max(np.abs(a[finite])))
        if delta > RELATIVE_TOLERANCE * scale:
            return f"max |Δ| {delta:.3g}"
        return None
    if not np.array_equal(batched, alone):
        return "values differ"
    return None


def probe_feeds(
    specs: Sequence[tuple[str, np.dtype, Sequence[int]]], *, rows: int = CHECK_ROWS, seed: int = 0
) -> dict[str, np.ndarray]:
    """Inputs for a load-time check of a model with no recorded verdict: `rows` rows of
    (name, dtype, shape) with -1 for dynamic dims (1 past dim 0). Float rows get very
    different magnitudes, so a per-batch scale (dynamic int8) or statistic shows;
    integers are small (valid token ids, class indices), booleans random."""
    rng = np.random.default_rng(seed)
    magnitudes = np.logspace(-2, 2, rows)
    feeds: dict[str, np.ndarray] = {}
    for name, dtype, dims in specs:
        shape = [rows, *(1 if d == -1 else d for d in list(dims)[1:])]
        kind = np.dtype(dtype).kind
        if kind in "fc":
            values = rng.standard_normal(shape) * magnitudes.reshape(-1, *[1] * (len(shape) - 1))
            feeds[name] = values.astype(dtype)
        elif kind == "b":
            feeds[name] = rng.integers(0, 2, shape).astype(bool)
        elif kind in "iu":
            feeds[name] = rng.integers(0, 4, shape).astype(dtype)
        else:
            feeds[name] = np.full(shape, "", dtype=object)
    return feeds


__all__ = [
    "CHECK_ROWS",
    "Batching",
    "Finding",
    "Reason",
    "probe_feeds",
    "row_dependence",
]
