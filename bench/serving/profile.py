"""Where an ondeck server's CPU time goes under load: starts ondeck pinned to one core,
drives it with loadgen.py from another, reads each server thread's CPU time from /proc
(the inference worker thread vs the event-loop thread), and splits the event loop's
share with py-spy samples (`--gil`) into buckets: HTTP protocol, JSON/binary codec,
app shell, batcher and thread handoff, event loop.

    .venv/bin/python bench/serving/profile.py --model mlp --concurrency 32 [--binary]

Needs py-spy (the dev extra) and permission to ptrace the server. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402

# First matching rule wins; a sample's bucket is decided by its innermost frames.
BUCKETS = [
    ("onnxruntime run", ("Session.run", "OnnxRuntime.run")),
    ("codec: JSON/binary <-> numpy",
     ("ondeck_server/serve/v2.py", "ondeck_server/serve/v1.py", "orjson")),
    ("batcher + worker-thread handoff",
     ("batching.py", "concurrent/futures", "threading.py", "_chain_future", "futures.py")),
    ("ondeck app shell (routing, metrics, send)",
     ("ondeck_server/serve/asgi.py", "ondeck_server/serve/routes.py", "prometheus_client",
      "metrics.py")),
    ("uvicorn HTTP protocol (httptools)", ("uvicorn/protocols",)),
    ("event loop (uvloop: sockets, callbacks)", ("asyncio/runners.py", "uvloop", "Runner.run")),
]  # fmt: skip


def idle(stack: list[str]) -> bool:
    """py-spy also samples waiting threads: the event loop in epoll, the worker thread
    blocked on its queue. Those samples are not CPU time."""
    if stack[-1].startswith(("epoll_pwait", "epoll_wait")):
        return True
    waits = ("concurrent/futures/thread.py:81)", "Condition.wait (threading.py", "Event.wait (")
    return any(w in frame for frame in stack for w in waits)


def bucket(stack: list[str]) -> str:
    if idle(stack):
        return "idle"
    for frame in reversed(stack):
        for name, needles in BUCKETS:
            if any(n in frame for n in needles):
                return name
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--binary", action="store_true")
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ondeck-profile-"))
    model = run.modelzoo.build(args.model, folder)
    work = run.workload(model, args.model, args.model, binary=args.binary, folder=folder)
    server = run.Server("ondeck", model, args.model, folder / "server.log")
    raw = folder / "profile.txt"
    try:
        loadgen = subprocess.Popen(
            ["taskset", "-c", run.CLIENT_CORE, sys.executable, str(HERE / "loadgen.py"), str(work),
             "--url", server.url, "--concurrency", str(args.concurrency), "--warmup", "1",
             "--duration", str(args.seconds + 2)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.5)
        before, threads = _counters(server.url), _thread_cpu(server.proc.pid)
        spy = Path(sys.executable).parent / "py-spy"
        # --gil: only samples holding the GIL (Python-side work); onnxruntime runs without
        # it, in the worker thread, whose CPU time /proc gives.
        subprocess.run(
            [str(spy), "record", "--pid", str(server.proc.pid),
             "--duration", str(int(args.seconds)), "--rate", "200", "--format", "raw",
             "--output", str(raw), "--nonblocking", "--gil"],
            check=True, capture_output=True,
        )  # fmt: skip
        after = _counters(server.url)
        threads = {
            tid: seconds - threads.get(tid, 0.0)
            for tid, seconds in _thread_cpu(server.proc.pid).items()
        }
        stdout, _ = loadgen.communicate(timeout=120)
    finally:
        server.stop()
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        # Event-loop thread only: the worker thread's samples are its GIL moments
        # around onnxruntime, already in its own CPU time.
        if stack and "concurrent/futures/thread.py" not in stack:
            counts[bucket(stack.split(";"))] += int(n)
    counts.pop("idle", None)
    total = sum(counts.values()) or 1
    requests = after["requests"] - before["requests"]
    result = json.loads(stdout.strip().splitlines()[-1])
    loop_cpu = threads.pop(server.proc.pid, 0.0)
    worker_cpu = max(threads.values(), default=0.0)
    per = 1e6 / requests
    print(
        f"{args.model} c={args.concurrency} {'binary' if args.binary else 'json'}:"
        f" {result['rps']:,.0f} req/s wall, mean batch {after['batch_mean']:.1f} rows;"
        f" server CPU per request {per * (loop_cpu + sum(threads.values())):.0f} us ="
        f" inference thread {per * worker_cpu:.0f} us (onnxruntime + stacking/splitting)"
        f" + event-loop thread {per * loop_cpu:.0f} us, which splits as:"
    )
    for name, n in counts.most_common():
        print(f"  {per * loop_cpu * n / total:6.1f} us  {name}")


def _thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of process `pid`."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _counters(url: str) -> dict[str, float]:
    import re

    import httpx

    text = httpx.get(f"{url}/metrics").text

    def total(pattern: str) -> float:
        return sum(
            float(m) for m in re.findall(rf"^{pattern}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
        )

    count, rows = total("ondeck_batch_size_count"), total("ondeck_batch_size_sum")
    return {
        "requests": total("ondeck_requests_total"),
        "batch_mean": rows / count if count else 0.0,
    }


if __name__ == "__main__":
    main()
