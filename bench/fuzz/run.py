"""The nightly-style fuzz run: the case builders and oracle of tests/server/fuzzing.py
(the bounded CI suite runs 2 320 derandomized Hypothesis cases of the same) for 100 000+
random cases against real `ondeck-server serve` processes, one per model shape.

    python bench/fuzz/run.py --cases 100000 --minutes 30 --seed 1 \
        --out bench/fuzz/results/run.json

The cases come from `fuzzing.NumpyChoices` (a seeded numpy Generator) rather than
Hypothesis, whose engine cost about 90 % of a case's time (bench/fuzz/RESULTS.md): the
same builders, so the same valid and mutated kinds. One worker process per model
(`--workers` fewer shares them out) keeps `--concurrency` requests in flight per server
(an asyncio httpx client), so a server decodes one request while the next is built
and the last answer checked. Each model gets an equal share of `--cases`, 40 % valid
and 60 % mutated, until sent or `--minutes` ran out.

Every answer is checked (never a 5xx, never a hang past 10 s, every 4xx a V2 error
body, every valid request answered as onnxruntime in-process, invalid values never
accepted); the first failure stops its worker and is reported with its request. The
servers' resident memory is read after a warm-up round and at the end, and each must
exit 0 on SIGTERM with no traceback in its log. Exit status: 0 when every case held.
"""

from __future__ import annotations

import argparse
import asyncio
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

import modelzoo  # noqa: E402
from server import fuzzing  # noqa: E402
from server.conftest import ServerProcess  # noqa: E402

GIB = 1 << 30
WARM_UP = 200  # valid cases per model before the memory baseline
TIMEOUT = 10.0  # seconds: an answer later than this is a hang


def _rss(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


class Fuzzer:
    """Cases for one model, built in order from one seed; the share of them still to send."""

    def __init__(self, target: fuzzing.Target, seed: int, cases: int) -> None:
        self.target = target
        self.choose = fuzzing.NumpyChoices(seed)
        self.left = cases
        self.sent = 0

    def next_case(self) -> fuzzing.Case:
        valid = self.sent % 5 < 2  # 40 % valid
        self.sent += 1
        self.left -= 1
        if valid:
            return fuzzing.valid_case(self.choose, self.target)
        return fuzzing.mutated_case(self.choose, self.target)


class Connection:
    """A bare HTTP/1.1 keep-alive client on asyncio streams. With httpx's async stack
    (httpcore, anyio, h11) a case cost 7.9 ms of client CPU here, with this 2.1 ms
    (building and checking the case included; bench/fuzz/RESULTS.md). Answers come back
    as `httpx.Response`s, so the oracle is the one the CI suite runs."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.reconnects = 0

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        path = url.split("/", 3)[3]
        lines = [f"POST /{path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        reused = self.streams is not None
        try:
            return await self._exchange(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            if not reused:
                raise
        # The server may close a kept-alive connection between requests (as any
        # client, retry once on a fresh one); a second failure is the case's.
        self.reconnects += 1
        return await self._exchange(request)

    async def _exchange(self, request: bytes) -> httpx.Response:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        status = int(status_line.split(" ", 2)[1])
        fields = [tuple(line.split(":", 1)) for line in header_lines]
        found = {k.strip().lower(): v.strip() for k, v in fields}
        if "content-length" in found:
            content = await reader.readexactly(int(found["content-length"]))
        elif found.get("transfer-encoding") == "chunked":
            chunks = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")
            content = b"".join(chunks)
        else:
            content = await reader.read()
            self.close()
        if found.get("connection", "").lower() == "close":
            self.close()
        return httpx.Response(
            status, headers=[(k.strip(), v.strip()) for k, v in fields], content=content
        )

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def _send_and_check(
    connection: Connection, target: fuzzing.Target, case: fuzzing.Case
) -> None:
    try:
        response = await asyncio.wait_for(
            connection.post(fuzzing.url(target, case), case.body, case.headers), TIMEOUT
        )
    except TimeoutError as exc:
        connection.close()
        raise AssertionError(f"hang: no answer in {TIMEOUT} s") from exc
    fuzzing.check(target, case, response)


def _describe(case: fuzzing.Case) -> str:
    return (
        f"case: {case.protocol} {case.mutation or 'valid'} headers={case.headers} "
        f"body={case.body[:1500]!r}"
    )


async def _fuzz(fuzzers: list[Fuzzer], concurrency: int, deadline: float) -> tuple[str | None, int]:
    failure: list[str] = []

    reconnects = 0

    async def lane(fuzzer: Fuzzer) -> None:
        nonlocal reconnects
        connection = Connection(fuzzer.target.url)
        while fuzzer.left > 0 and not failure and time.monotonic() < deadline:
            case = fuzzer.next_case()
            try:
                await _send_and_check(connection, fuzzer.target, case)
            except Exception:
                failure.append(
                    f"{fuzzer.target.model}: {_describe(case)}\n" + traceback.format_exc()
                )
        connection.close()
        reconnects += connection.reconnects

    await asyncio.gather(*(lane(f) for f in fuzzers for _ in range(concurrency)))
    return (failure[0][-6000:] if failure else None), reconnects


def worker(
    models: list[str], cases: int, seed: int, concurrency: int, deadline: float, folder: str
) -> dict[str, Any]:
    """Fuzz each of `models` with `cases` cases, or until `deadline` (monotonic)."""
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
    fuzzers = [
        Fuzzer(target, seed * 1000 + fuzzing.MODELS.index(name), cases)
        for name, (_, target) in servers.items()
    ]
    try:
        with httpx.Client(timeout=TIMEOUT) as client:
            warm = fuzzing.NumpyChoices(seed)
            for name, (server, target) in servers.items():
                for _ in range(WARM_UP):
                    case = fuzzing.valid_case(warm, target)
                    fuzzing.check(target, case, fuzzing.send(client, target, case))
                report["models"][name] = {"rss_after_warmup": _rss(server.proc.pid)["VmRSS"]}
        fuzzing.STATS = fuzzing.Stats()  # the figures count the fuzzed cases, not the warm-up
        started = time.monotonic()
        report["failure"], report["reconnects"] = asyncio.run(_fuzz(fuzzers, concurrency, deadline))
        report["fuzz_seconds"] = round(time.monotonic() - started, 1)
    except Exception:
        report["failure"] = traceback.format_exc()[-6000:]
    for fuzzer in fuzzers:
        report["models"][fuzzer.target.model]["cases"] = fuzzer.sent
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
        realigned=stats.realigned,
        codes={str(k): v for k, v in sorted(stats.codes.items())},
        kinds=dict(sorted(stats.kinds.items())),
    )
    return report


def _worker_entry(args: tuple[list[str], int, int, int, float, str]) -> dict[str, Any]:
    return worker(*args)


def _sum(reports: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for report in reports:
        for name, count in report[key].items():
            total[name] = total.get(name, 0) + count
    return dict(sorted(total.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=30.0, help="bound on the run")
    parser.add_argument("--workers", type=int, default=len(fuzzing.MODELS))
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight per server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="ondeck-fuzz-"))
    for name in fuzzing.MODELS:
        modelzoo.build(name, folder)
    groups = [list(fuzzing.MODELS[i :: options.workers]) for i in range(options.workers)]
    groups = [g for g in groups if g]
    per_model = -(-options.cases // len(fuzzing.MODELS))
    start = time.monotonic()
    deadline = start + options.minutes * 60
    load_before = os.getloadavg()
    jobs = [
        (g, per_model, options.seed, options.concurrency, deadline, str(folder)) for g in groups
    ]
    with multiprocessing.get_context("spawn").Pool(len(groups)) as pool:
        reports = pool.map(_worker_entry, jobs)
    seconds = time.monotonic() - start
    codes = _sum(reports, "codes")
    cases = sum(r["cases"] for r in reports)
    fuzz_seconds = max(r.get("fuzz_seconds", 0.0) for r in reports)
    summary = {
        "command": " ".join(["python", "bench/fuzz/run.py", *sys.argv[1:]]),
        "generator": "fuzzing.NumpyChoices",
        "seed": options.seed,
        "concurrency_per_server": options.concurrency,
        "cases": cases,
        "compared_with_onnxruntime": sum(r["compared"] for r in reports),
        "matched_only_realigned": sum(r["realigned"] for r in reports),
        "codes": codes,
        "five_xx": sum(v for k, v in codes.items() if k.startswith("5")),
        "reconnects": sum(r.get("reconnects", 0) for r in reports),
        "failures": [r["failure"] for r in reports if r["failure"]],
        "seconds": round(seconds, 1),
        "fuzz_seconds": fuzz_seconds,
        "cases_per_second": round(cases / seconds, 1),
        "machine": {
            "nproc": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "servers": {k: v for r in reports for k, v in r["models"].items()},
        "kinds": _sum(reports, "kinds"),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(text + "\n")
    held = all(
        s["exit_code"] == 0 and not s["traceback_in_log"] for s in summary["servers"].values()
    )
    return 0 if held and not summary["failures"] and summary["five_xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
