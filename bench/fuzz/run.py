"""The nightly-style fuzz run: the strategies and oracle of tests/server/fuzzing.py (the
bounded CI suite runs 2 320 derandomized cases of the same) for 100 000+ random cases
against real `ondeck-server serve` processes, one per model shape.

    python bench/fuzz/run.py --cases 100000 --minutes 10 --workers 2 \
        --out bench/fuzz/results/run.json

Each worker process takes some of the models and fuzzes them in rounds (40 % valid,
60 % mutated requests) until its share of `--cases` is sent or `--minutes` ran out.
Every answer is checked (never a 5xx, never a hang past 10 s, every 4xx a V2 error
body, every valid request answered as onnxruntime in-process, invalid values never
accepted); the first failure stops its worker and is printed with its case. The
servers' resident memory is read after a warm-up round and at the end.
Exit status: 0 when every case held.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

import modelzoo  # noqa: E402
from server import fuzzing  # noqa: E402
from server.conftest import ServerProcess  # noqa: E402

ROUND = 2000  # cases per hypothesis run (a fresh random run each round)
GIB = 1 << 30


def _rss(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def _round(target: fuzzing.Target, client: httpx.Client, cases: int, valid: bool) -> None:
    strategy = fuzzing.valid_cases(target) if valid else fuzzing.mutated_cases(target)

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: fuzzing.Case) -> None:
        try:
            response = fuzzing.send(client, target, case)
        except httpx.TimeoutException as exc:
            raise AssertionError(f"hang: no answer in 10 s ({case.mutation or 'valid'})") from exc
        fuzzing.check(target, case, response)

    run()


def worker(models: list[str], cases: int, deadline: float, folder: str) -> dict[str, Any]:
    """Fuzz `models` (about `cases` cases in all) until done or `deadline` (monotonic)."""
    zoo = Path(folder)
    report: dict[str, Any] = {"models": {}, "failure": None}
    servers = {}
    for name in models:
        server = ServerProcess(
            ["--model", str(zoo / f"{name}.onnx"), "--host", "127.0.0.1", "--port", "0",
             *fuzzing.FLAGS],
            log=zoo / f"server-{name}.log",
            memory_limit=4 * GIB,
        )  # fmt: skip
        servers[name] = (
            server,
            fuzzing.Target.read(name, server.wait_ready(), zoo / f"{name}.onnx"),
        )
    per_model = cases // len(models)
    try:
        with httpx.Client(timeout=10) as client:
            for name, (server, target) in servers.items():
                _round(target, client, 200, valid=True)  # warm-up, then the baseline
                report["models"][name] = {"rss_after_warmup": _rss(server.proc.pid)["VmRSS"]}
            sent = dict.fromkeys(servers, 0)
            while time.monotonic() < deadline and any(v < per_model for v in sent.values()):
                for name, (_, target) in servers.items():
                    if sent[name] >= per_model or time.monotonic() >= deadline:
                        continue
                    before = fuzzing.STATS.cases
                    _round(target, client, int(ROUND * 0.4), valid=True)
                    _round(target, client, int(ROUND * 0.6), valid=False)
                    sent[name] += fuzzing.STATS.cases - before
    except Exception:
        report["failure"] = traceback.format_exc()[-6000:]
    for name, (server, _) in servers.items():
        entry = report["models"].setdefault(name, {})
        memory = _rss(server.proc.pid)
        entry.update(rss_end=memory["VmRSS"], rss_peak=memory["VmHWM"])
        entry["exit_code"] = server.terminate()
        entry["traceback_in_log"] = "Traceback" in server.output()
    stats = fuzzing.STATS
    report.update(
        cases=stats.cases,
        compared=stats.compared,
        codes={str(k): v for k, v in sorted(stats.codes.items())},
        kinds=dict(sorted(stats.kinds.items())),
    )
    return report


def _worker_entry(args: tuple[list[str], int, float, str]) -> dict[str, Any]:
    return worker(*args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="ondeck-fuzz-"))
    for name in fuzzing.MODELS:
        modelzoo.build(name, folder)
    groups = [list(fuzzing.MODELS[i :: options.workers]) for i in range(options.workers)]
    groups = [g for g in groups if g]
    start = time.monotonic()
    deadline = start + options.minutes * 60
    load_before = os.getloadavg()
    jobs = [
        (g, options.cases * len(g) // len(fuzzing.MODELS), deadline, str(folder)) for g in groups
    ]
    with multiprocessing.get_context("spawn").Pool(len(groups)) as pool:
        reports = pool.map(_worker_entry, jobs)
    seconds = time.monotonic() - start
    codes: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for report in reports:
        for code, count in report["codes"].items():
            codes[code] = codes.get(code, 0) + count
        for kind, count in report["kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    summary = {
        "cases": sum(r["cases"] for r in reports),
        "compared_with_onnxruntime": sum(r["compared"] for r in reports),
        "codes": codes,
        "five_xx": sum(v for k, v in codes.items() if k.startswith("5")),
        "failures": [r["failure"] for r in reports if r["failure"]],
        "seconds": round(seconds, 1),
        "machine": {
            "nproc": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "servers": {k: v for r in reports for k, v in r["models"].items()},
        "kinds": kinds,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(text + "\n")
    return 0 if not summary["failures"] and summary["five_xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
