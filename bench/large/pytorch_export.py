"""A PyTorch model over 2 GiB through convert and serve (issue 11): a TorchScript MLP
whose float32 weights exceed protobuf's 2 GiB limit, exported by `ondeck-server convert
--format pytorch` (torch.onnx writes external data), then served, one V2 request, and its
answer compared with torch's own forward pass on the same row.

    .venv/bin/python bench/large/pytorch_export.py [--gib 2.2] [--quantize none] [--out FILE]

Wall time and peak RSS of the convert process (its own ru_maxrss) and the server's RSS
are printed as JSON. A benchmark, not a test: it asserts nothing but exits 1 when a step
fails or the answer differs from torch's (cosine < 0.999), printing why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as large  # bench/large/run.py: run_step, serve_once

GIB = 1 << 30


def build(path: Path, gib: float, hidden: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Saves the TorchScript MLP; returns (weight bytes, one input row, torch's answer)."""
    import torch

    layers = max(1, round(gib * GIB / (hidden * hidden * 4)))
    torch.manual_seed(0)
    blocks: list[torch.nn.Module] = []
    for i in range(layers):
        linear = torch.nn.Linear(hidden, hidden, bias=False)
        with torch.no_grad():
            linear.weight.normal_(0.0, 1.0 / hidden**0.5)
        blocks.append(linear)
        if i < layers - 1:
            blocks.append(torch.nn.ReLU())
    blocks.append(torch.nn.Linear(hidden, 16, bias=False))
    model = torch.nn.Sequential(*blocks).eval()
    # the row run.serve_once sends: default_rng(1)'s first `hidden` normals
    row = np.random.default_rng(1).standard_normal((1, hidden)).astype(np.float32)
    with torch.no_grad():
        scripted = torch.jit.trace(model, torch.from_numpy(row))
        answer = model(torch.from_numpy(row)).numpy()
    scripted.save(str(path))
    weights = sum(p.numel() * 4 for p in model.parameters())
    del model, scripted
    return weights, row, answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.2)
    parser.add_argument("--hidden", type=int, default=8192)
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    server = str(Path(sys.executable).with_name("ondeck-server"))
    work = args.work or Path(tempfile.mkdtemp(prefix="ondeck-large-pt-"))
    work.mkdir(parents=True, exist_ok=True)
    large.HIDDEN = args.hidden
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_start": os.getloadavg(),
    }
    t = time.perf_counter()
    weights, _row, expected = build(work / "mlp.pt", args.gib, args.hidden)
    result["weights_bytes"] = weights
    result["build_s"] = time.perf_counter() - t
    wall, rss, proc = large.run_step(
        [server, "convert", "--source", str(work / "mlp.pt"), "--format", "pytorch",
         "--inputs", f"input:float32:[-1,{args.hidden}]", "--quantize", args.quantize,
         "--store", str(work / "store"), "--ref", "large",
         "--validation-samples", "16"]
    )  # fmt: skip
    result["convert"] = {"rc": proc.returncode, "wall_s": wall, "peak_rss": rss,
                         "x_weights": rss / weights, "err": proc.stderr[-600:]}  # fmt: skip
    if proc.returncode != 0:
        print(json.dumps(result, indent=2))
        return 1
    artifact = work / "store" / "refs" / "large"
    files = {p.name: p.stat().st_size for p in artifact.resolve().iterdir()}
    result["artifact_files"] = files
    served = large.serve_once(artifact.resolve(), server)
    result["serve"] = {k: v for k, v in served.items() if k != "logits"}
    got = np.asarray(served["logits"], dtype=np.float32).reshape(-1)
    want = expected.reshape(-1)
    cosine = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want) or 1.0))
    result["cosine_vs_torch"] = cosine
    result["load_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if served["status"] == 200 and cosine >= 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
