"""The memory-bandwidth ceiling of a decode step (issue 10, "Benchmark"; a bench, not a
test).

A decode step of a language model at batch 1 reads every weight once, so it cannot take
less than weight bytes ÷ memory bandwidth. This measures this machine's single-thread read
bandwidth in process with numpy (the faster of a float64 sum and an int64 max over a
512 MiB array, far larger than any cache; median of 5 after one warm-up pass each; a copy
is measured too, as bytes read plus bytes written) and reports what fraction of that
ceiling a measured step reaches:

    weights bytes per step ÷ step time ÷ read bandwidth

The weight bytes are the artifact's external weights file (`genai/model.onnx.data`; a
CTranslate2 model's `model.bin`): an upper bound on what one step reads, since the
embedding table is read one row per token. GB here are 10^9 bytes.

    .venv/bin/python bench/llm/bandwidth.py [--artifact DIR --step-ms MS] [--mib 512]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def read_bandwidth(mib: int = 512, repeats: int = 5) -> dict[str, Any]:
    """Single-thread memory bandwidth of this process, in GB/s: `read_gb_s` the faster of
    a float64 sum and an int64 max over a `mib` MiB array (numpy's reductions are single
    threaded), `copy_gb_s` from copying it (read + write bytes)."""
    if mib < 64 or repeats < 1:
        raise ValueError("mib must be at least 64 (to exceed the caches) and repeats >= 1")
    source = np.ones(mib * 2**20 // 8)  # written once, so every page is mapped
    target = np.empty_like(source)

    def median_s(step: Any) -> float:
        step()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    sum_s = median_s(source.sum)
    max_s = median_s(source.view(np.int64).max)
    copy_s = median_s(lambda: np.copyto(target, source))
    return {
        "read_gb_s": round(source.nbytes / min(sum_s, max_s) / 1e9, 2),
        "sum_gb_s": round(source.nbytes / sum_s / 1e9, 2),
        "max_gb_s": round(source.nbytes / max_s / 1e9, 2),
        "copy_gb_s": round(2 * source.nbytes / copy_s / 1e9, 2),
        "array_mib": mib,
        "repeats": repeats,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def weight_bytes(artifact: Path) -> int:
    """The weight bytes of an ondeck language-model artifact (its `genai/*.onnx.data`,
    or the ONNX files themselves when the weights are inline) or of a CTranslate2 model
    folder (`model.bin`)."""
    for folder in (artifact / "genai", artifact):
        data = sorted(folder.glob("*.onnx.data"))
        if data:
            return sum(f.stat().st_size for f in data)
        onnx = sorted(folder.glob("*.onnx"))
        if onnx:
            return sum(f.stat().st_size for f in onnx)
    if (artifact / "model.bin").is_file():
        return (artifact / "model.bin").stat().st_size
    raise FileNotFoundError(
        f"{artifact}: no genai/model.onnx.data, *.onnx or model.bin to take weights from"
    )


def ceiling_fraction(weights: int, step_ms: float, read_gb_s: float) -> dict[str, Any]:
    """What one decode step of `step_ms` reading `weights` bytes achieves, against a
    read bandwidth of `read_gb_s`."""
    if weights <= 0 or step_ms <= 0 or read_gb_s <= 0:
        raise ValueError("weights, step_ms and read_gb_s must all be positive")
    achieved = weights / (step_ms / 1000) / 1e9
    return {
        "weights_mb": round(weights / 1e6, 2),
        "step_ms": step_ms,
        "floor_ms": round(weights / (read_gb_s * 1e9) * 1000, 3),
        "achieved_gb_s": round(achieved, 2),
        "percent_of_read_bandwidth": round(100 * achieved / read_gb_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="an artifact or CTranslate2 folder")
    parser.add_argument("--step-ms", type=float, help="a measured decode step (c=1)")
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if (args.artifact is None) != (args.step_ms is None):
        parser.error("--artifact and --step-ms go together")
    bandwidth = read_bandwidth(args.mib, args.repeats)
    print(json.dumps(bandwidth), flush=True)
    if args.artifact is not None:
        fraction = ceiling_fraction(
            weight_bytes(args.artifact), args.step_ms, bandwidth["read_gb_s"]
        )
        print(json.dumps(fraction), flush=True)


if __name__ == "__main__":
    main()
