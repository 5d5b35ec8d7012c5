"""A model over 2 GiB through convert and serve (issue 11): build an MLP whose weights
exceed protobuf's 2 GiB limit (kept as ONNX external data), run `ondeck-server convert`
on it for each `--quantize` mode asked, then `ondeck-server serve` on the artifact and one
V2 request; record wall time and peak RSS of each process against the model's size.

    .venv/bin/python bench/large/run.py [--gib 2.2] [--modes none,int8] [--out FILE]

Peak RSS is the child's ru_maxrss (resource.getrusage(RUSAGE_CHILDREN) after it exits;
each step runs in its own process so the figures do not mix). The server's RSS is read
from /proc/<pid>/status (VmRSS) after the request. This is a benchmark: it asserts
nothing, but it exits 1 when a step fails, printing the step's error line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GIB = 1 << 30
HIDDEN = 8192


def build(path: Path, gib: float, hidden: int = HIDDEN) -> int:
    """An MLP input[-1, hidden] -> hidden -> ... -> 16 with ~gib GiB of float32 weights,
    saved with external data; returns the bytes of weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    global HIDDEN
    HIDDEN = hidden
    layer_bytes = HIDDEN * HIDDEN * 4
    layers = max(1, round(gib * GIB / layer_bytes))
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "input"
    for i in range(layers):
        w = (rng.standard_normal((HIDDEN, HIDDEN), dtype=np.float32) / np.sqrt(HIDDEN)).astype(
            np.float32
        )
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]) if i < layers - 1 else
                     helper.make_node("Identity", [f"h{i}"], [f"r{i}"]))  # fmt: skip
        x = f"r{i}"
    head = rng.standard_normal((HIDDEN, 16), dtype=np.float32).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes.append(helper.make_node("MatMul", [x, "head"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "large-mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", HIDDEN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 16])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
    )
    return layers * layer_bytes + head.nbytes


def _peak_child_rss() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def run_step(argv: list[str]) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Run argv in a fresh helper process so RUSAGE_CHILDREN is this step's own."""
    code = (
        "import resource, subprocess, sys, json, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "w = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps({'rc': p.returncode, 'wall': w, 'rss': rss, 'out': p.stdout,"
        " 'err': p.stderr[-4000:]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    proc = subprocess.CompletedProcess(argv, result["rc"], result["out"], result["err"])
    return result["wall"], result["rss"], proc


def serve_once(artifact: Path, server: str) -> dict[str, Any]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [server, "serve", "--model", str(artifact), "--name", "large", "--host", "127.0.0.1",
         "--port", str(port), "--threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    import httpx

    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.5)
        ready_s = time.perf_counter() - start
        row = np.random.default_rng(1).standard_normal(HIDDEN).astype(np.float32)
        body = {"inputs": [{"name": "input", "shape": [1, HIDDEN], "datatype": "FP32",
                            "data": row.tolist()}]}  # fmt: skip
        t = time.perf_counter()
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v2/models/large/infer", json=body, timeout=120
        )
        infer_ms = (time.perf_counter() - t) * 1000
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss = next(int(line.split()[1]) * 1024 for line in status.splitlines()
                   if line.startswith("VmRSS:"))  # fmt: skip
        hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines()
                   if line.startswith("VmHWM:"))  # fmt: skip
        logits = answer.json()["outputs"][0]["data"] if answer.status_code == 200 else []
        return {"status": answer.status_code, "ready_s": ready_s, "infer_ms": infer_ms,
                "rss": rss, "hwm": hwm, "logits": logits}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.2)
    parser.add_argument("--modes", default="none,int8")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--hidden", type=int, default=HIDDEN, help="layer width (8192: 256 MiB per layer)"
    )
    parser.add_argument("--work", type=Path)
    parser.add_argument(
        "--max-top1-disagreement",
        default="0.01",
        help="the gate's top-1 bound (a random deep MLP has near-tied logits)",
    )
    parser.add_argument("--min-cosine", default="0.99", help="the gate's cosine bound")
    args = parser.parse_args()
    server = str(Path(sys.executable).parent / "ondeck-server")
    work = args.work or Path(tempfile.mkdtemp(prefix="ondeck-large-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "src" / "large.onnx"
    model.parent.mkdir(exist_ok=True)
    t = time.perf_counter()
    weights = build(model, args.gib, args.hidden)
    build_s = time.perf_counter() - t
    files = sum(p.stat().st_size for p in model.parent.iterdir())
    lines = [
        f"# Models over 2 GiB ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start; model: MLP "
        f"{HIDDEN}-wide, {weights / GIB:.2f} GiB of FP32 weights in external data "
        f"({files / GIB:.2f} GiB on disk), built in {build_s:.0f} s; gate: 16 generated "
        f"samples, top-1 disagreement <= {args.max_top1_disagreement}, cosine >= "
        f"{args.min_cosine}.",
        "",
        "| step | wall s | peak RSS GiB | RSS / model | result |",
        "|---|---|---|---|---|",
    ]
    failed = False
    for mode in args.modes.split(","):
        store = work / f"store-{mode}"
        wall, rss, done = run_step(
            [server, "convert", "--source", str(model), "--store", str(store), "--quantize",
             mode, "--validation-samples", "16", "--ref", "large",
             "--max-top1-disagreement", args.max_top1_disagreement,
             "--min-cosine", args.min_cosine]
        )  # fmt: skip
        if done.returncode != 0:
            failed = True
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"
            lines.append(f"| convert {mode} | {wall:.0f} | {rss / GIB:.2f} | "
                         f"{rss / weights:.2f}x | failed: {last} |")  # fmt: skip
            print(done.stderr, file=sys.stderr)
            continue
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        v = summary["validation"]
        lines.append(
            f"| convert {mode} | {wall:.0f} | {rss / GIB:.2f} | {rss / weights:.2f}x | "
            f"artifact {summary['sizeBytes'] / GIB:.2f} GiB, cosine {v.get('cosine', 0):.4f}, "
            f"passed {v.get('passed')} |"
        )
        served = serve_once(store / "refs" / "large", server)
        lines.append(
            f"| serve {mode} | ready {served['ready_s']:.0f} | {served['hwm'] / GIB:.2f} "
            f"(now {served['rss'] / GIB:.2f}) | {served['hwm'] / weights:.2f}x | "
            f"HTTP {served['status']}, one request {served['infer_ms']:.0f} ms |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
