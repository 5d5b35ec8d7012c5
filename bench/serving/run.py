"""The serving benchmark, all in one run (see README in RESULTS.md):

1. in-process onnxruntime, batch 1 and batch 8 (the physical limit), 1 thread, pinned;
2. ondeck (`ondeck-server serve --threads 1`) and a naive FastAPI + pydantic V2 server,
   each pinned to one core with taskset, driven by loadgen.py (its own process, pinned to
   another core) at concurrency 1, 8, 32, on an MLP 256→1024→1024→10 and a small CNN;
3. binary vs JSON requests for a 0.5 MB FP32 input (ondeck).

    .venv/bin/python bench/serving/run.py --repeats 3 --duration 8 --out /tmp/bench.json

Results (medians over repeats) go to --out as JSON and to stdout as markdown tables.
Needs Linux `taskset`; not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import modelzoo  # noqa: E402

SERVER_CORE, CLIENT_CORE = "0", "1"
BIG_INPUT = 131072  # FP32 values: 0.5 MiB


def build_big(path: Path) -> Path:
    """FP32 [-1, 131072] → its row means [-1, 1]: a codec test, almost no compute."""
    from onnx import TensorProto, checker, helper, save

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=1, axes=[1])],
        "big_input",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", BIG_INPUT])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    checker.check_model(model)
    save(model, str(path))
    return path


# ------------------------------------------------------------------ raw onnxruntime
def raw_child(model: str, name: str, batch: int, duration: float) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = modelzoo.sample_inputs(name, batch)
    for _ in range(20):
        session.run(None, feeds)
    times = []
    cpu = time.process_time()
    end = time.perf_counter() + duration
    while (now := time.perf_counter()) < end:
        session.run(None, feeds)
        times.append(time.perf_counter() - now)
    cpu = time.process_time() - cpu
    samples = len(times) * batch
    result = {
        "samples_per_s": samples / sum(times),
        "cpu_rate": samples / cpu,
        "p50_ms": float(np.median(times) * 1000),
    }
    print(json.dumps(result))


def raw(model: Path, name: str, batch: int, duration: float) -> dict[str, Any]:
    out = subprocess.run(
        ["taskset", "-c", SERVER_CORE, sys.executable, __file__,
         "--raw-child", str(model), name, str(batch), str(duration)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ servers
class Server:
    def __init__(self, kind: str, model: Path, name: str, log: Path) -> None:
        self.kind = kind
        self.log = log
        port = _free_port()
        if kind == "ondeck":
            cmd = [
                sys.executable, "-m", "ondeck_server", "serve", "--model", str(model),
                "--name", name, "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
            ]  # fmt: skip
        else:
            cmd = [sys.executable, str(HERE / "baseline_fastapi.py"), str(model), name, str(port)]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *cmd], stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        self._wait(name)

    def _wait(self, name: str) -> None:
        import httpx

        probe = f"{self.url}/v2/health/ready" if self.kind == "ondeck" else f"{self.url}/docs"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(probe, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not start")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ workloads
def workload(
    model: Path, name: str, inputs: str, *, binary: bool, folder: Path, count: int = 32
) -> Path:
    """`count` distinct batch-1 requests and their expected outputs."""
    sys.path.insert(0, str(ROOT / "tests" / "server"))
    from v2client import binary_request, json_request

    bodies, headers, expected = [], [], []
    output = None
    for i in range(count):
        feeds = (
            modelzoo.sample_inputs(inputs, 1, seed=i)
            if inputs != "big"
            else {
                "input": np.random.default_rng(i).standard_normal((1, BIG_INPUT)).astype(np.float32)
            }
        )
        want = modelzoo.reference(model, feeds)
        output = next(iter(want))
        expected.append(want[output])
        if binary:
            body, head = binary_request(feeds, parameters={"binary_data_output": True})
        else:
            body, head = json_request(feeds), {"Content-Type": "application/json"}
        bodies.append(body)
        headers.append(head)
    path = folder / f"{name}-{'binary' if binary else 'json'}.pkl"
    path.write_bytes(
        pickle.dumps(
            {"path": f"/v2/models/{name}/infer", "output": output, "bodies": bodies,
             "headers": headers, "expected": expected}
        )
    )  # fmt: skip
    return path


def load(
    server: Server, work: Path, *, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    """Drive `server` with loadgen.py; adds the server's CPU seconds per answer and the
    rate that implies for one whole core (`cpu_rate`), which a shared machine's noise
    (other processes on the server's core) does not distort."""
    url = server.url
    cpu = server.cpu_seconds()
    out = subprocess.run(
        ["taskset", "-c", CLIENT_CORE, sys.executable, str(HERE / "loadgen.py"), str(work),
         "--url", url, "--concurrency", str(concurrency), "--warmup", str(warmup),
         "--duration", str(duration)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    cpu = server.cpu_seconds() - cpu
    result["cpu_ms_per_request"] = 1000 * cpu / max(result["answered"], 1)
    result["cpu_rate"] = result["answered"] / cpu if cpu > 0 else None
    return result


# ------------------------------------------------------------------ main
def _vnni(flags: str) -> str:
    return "Flags: avx512_vnni" if "avx512_vnni" in flags else "Flags: (no avx512_vnni)"


def machine() -> dict[str, Any]:
    import onnxruntime
    import orjson
    import uvicorn

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    keep = ("Architecture", "Model name", "CPU(s):", "Thread(s) per core", "L2", "L3", "Flags")
    facts = {
        "nproc": os.cpu_count(),
        "lscpu": [
            ln[:200] if not ln.startswith("Flags") else _vnni(ln)
            for ln in lscpu.splitlines() if ln.startswith(keep)
        ],
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "uvicorn": uvicorn.__version__,
        "orjson": orjson.__version__,
        "numpy": np.__version__,
        "loadavg_start": os.getloadavg(),
    }  # fmt: skip
    import fastapi
    import pydantic

    facts["fastapi"], facts["pydantic"] = fastapi.__version__, pydantic.__version__
    return facts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--raw-child", nargs=4, metavar=("MODEL", "NAME", "BATCH", "SECONDS"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--servers", default="ondeck,naive")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ondeck-bench.json"))
    args = parser.parse_args()
    if args.raw_child:
        m, n, b, s = args.raw_child
        raw_child(m, n, int(b), float(s))
        return

    folder = Path(tempfile.mkdtemp(prefix="ondeck-bench-"))
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, Any] = {"machine": machine(), "runs": []}
    models = {name: modelzoo.build(name, folder) for name in args.models.split(",")}

    def record(entry: dict[str, Any]) -> None:
        results["runs"].append(entry)
        print(json.dumps(entry), flush=True)
        args.out.write_text(json.dumps(results, indent=1))

    for repeat in range(args.repeats):
        for name, path in models.items():
            for batch in (1, 8):
                record(
                    {
                        "repeat": repeat,
                        "model": name,
                        "server": f"raw-b{batch}",
                        **raw(path, name, batch, args.duration),
                    }
                )
            works = {"json": workload(path, name, name, binary=False, folder=folder)}
            if name == "cnn":
                works["binary"] = workload(path, name, name, binary=True, folder=folder)
            for kind in args.servers.split(","):
                server = Server(kind, path, name, folder / f"{kind}-{name}.log")
                try:
                    for mode, work in works.items():
                        if kind != "ondeck" and mode != "json":
                            continue
                        for c in levels:
                            res = load(
                                server,
                                work,
                                concurrency=c,
                                warmup=args.warmup,
                                duration=args.duration,
                            )
                            record(
                                {
                                    "repeat": repeat,
                                    "model": name,
                                    "server": kind,
                                    "mode": mode,
                                    "c": c,
                                    **res,
                                }
                            )
                finally:
                    server.stop()
        if not args.skip_big:
            big = build_big(folder / "big.onnx")
            server = Server("ondeck", big, "big", folder / "ondeck-big.log")
            try:
                for binary in (False, True):
                    work = workload(big, "big", "big", binary=binary, folder=folder, count=8)
                    for c in (1, 8):
                        res = load(
                            server,
                            work,
                            concurrency=c,
                            warmup=args.warmup,
                            duration=args.duration,
                        )
                        record(
                            {
                                "repeat": repeat,
                                "model": "big-0.5MB",
                                "server": "ondeck",
                                "mode": "binary" if binary else "json",
                                "c": c,
                                **res,
                            }
                        )
            finally:
                server.stop()
    results["machine"]["loadavg_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=1))
    print(report(results))


def _median(runs: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in runs if r.get(field) is not None]
    return statistics.median(values) if values else None


def _ms(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def _ratio(
    runs: list[dict[str, Any]],
    field: str,
    raw_of: dict[tuple[Any, Any], float],
    fallback: str = "",
) -> str:
    ratios = []
    for r in runs:
        value = r.get(field) or r.get(fallback)
        base = raw_of.get((r["repeat"], r["model"]))
        if value and base:
            ratios.append(value / base)
    return f"{statistics.median(ratios):.2f}" if ratios else "-"


def report(results: dict[str, Any]) -> str:
    """Markdown tables of medians over repeats.

    `wall` columns are what the load generator saw; `cpu` columns divide the work by
    the CPU time the server (or the raw loop) really got, i.e. the rate one whole core
    would give. On a shared machine only the `cpu` ratios are comparable across rows.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    raw_cpu_of: dict[tuple[Any, Any], float] = {}  # (repeat, model) -> raw b1 cpu rate
    raw_wall_of: dict[tuple[Any, Any], float] = {}
    for r in results["runs"]:
        key = (r["model"], r["server"], r.get("mode", "-"), r.get("c", "-"))
        groups.setdefault(key, []).append(r)
        if r["server"] == "raw-b1":
            raw_cpu_of[(r["repeat"], r["model"])] = r["cpu_rate"]
            raw_wall_of[(r["repeat"], r["model"])] = r["samples_per_s"]
    lines = []
    for model in dict.fromkeys(k[0] for k in groups):
        lines.append(f"\n### {model}\n")
        lines.append(
            "| server | mode | c | wall req/s | x raw b1 (wall) | cpu req/s per core"
            " | x raw b1 (cpu) | p50 ms | p90 ms | p99 ms | errors | runs |"
        )
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for (m, server, mode, c), runs in groups.items():
            if m != model:
                continue
            wall = _median(runs, "rps") or _median(runs, "samples_per_s") or 0.0
            cpu = _median(runs, "cpu_rate")
            # Each run against the raw loop of its own repeat (same machine weather).
            cpu_ratio = _ratio(runs, "cpu_rate", raw_cpu_of)
            wall_ratio = _ratio(runs, "rps", raw_wall_of, fallback="samples_per_s")
            cpu_text = f"{cpu:,.0f}" if cpu else "-"
            errors = sum(r.get("errors", 0) for r in runs)
            p50, p90, p99 = (_median(runs, f) for f in ("p50_ms", "p90_ms", "p99_ms"))
            lines.append(
                f"| {server} | {mode} | {c} | {wall:,.0f} | {wall_ratio} | {cpu_text}"
                f" | {cpu_ratio} | {_ms(p50)} | {_ms(p90)} | {_ms(p99)} | {errors} | {len(runs)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--report":
        # One or more result files: their repeats are pooled (renumbered apart).
        pooled: dict[str, Any] = {"runs": []}
        for number, name in enumerate(sys.argv[2:]):
            for run_entry in json.loads(Path(name).read_text())["runs"]:
                pooled["runs"].append({**run_entry, "repeat": (number, run_entry["repeat"])})
        print(report(pooled))
    else:
        main()
