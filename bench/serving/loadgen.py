"""Closed-loop HTTP load generator for the serving benchmark (runs in its own process).

C keep-alive connections to one server on loopback; each sends a request, waits for
the answer, checks it, sends the next. A warm-up phase is not recorded, then every
answer in a fixed measurement window is timed. Every answer is checked against the
expected output of its request (status 200, right shape, values within float
tolerance); an answer byte-identical to one already checked for the same request is
accepted without parsing again, which keeps the generator cheap enough not to be the
bottleneck.

    python loadgen.py WORKLOAD.pkl --url http://127.0.0.1:PORT --concurrency 8 \
        --warmup 2 --duration 10  → one JSON line of results on stdout

The workload file (pickle, written by run.py) holds the raw request bytes for a path,
and the expected arrays. This module does not start servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools
import numpy as np
import orjson
import uvloop


class Workload:
    def __init__(self, data: dict[str, Any], host: str) -> None:
        self.path: str = data["path"]
        self.output: str = data["output"]
        self.v1: bool = data.get("v1", False)
        self.expected: list[np.ndarray] = data["expected"]
        self.requests: list[bytes] = []
        for body, headers in zip(data["bodies"], data["headers"], strict=True):
            head = [f"POST {self.path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
            head += [f"{k}: {v}" for k, v in headers.items()]
            self.requests.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self.accepted: list[set[bytes]] = [set() for _ in self.requests]

    def check(self, index: int, status: int, body: bytes, header_length: int | None) -> str | None:
        """None when the answer is right, else what was wrong."""
        if status != 200:
            return f"status {status}: {body[:200]!r}"
        seen = self.accepted[index]
        if body in seen:
            return None
        want = self.expected[index]
        try:
            got = self._decode(body, header_length)
        except Exception as exc:
            return f"undecodable answer: {exc}"
        if got.shape != want.shape:
            return f"shape {got.shape} != {want.shape}"
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            return f"values differ: max abs diff {np.abs(got - want).max()}"
        if len(seen) < 64:
            seen.add(body)
        return None

    def _decode(self, body: bytes, header_length: int | None) -> np.ndarray:
        if self.v1:
            return np.asarray(orjson.loads(body)["predictions"], dtype=np.float32)
        head = body if header_length is None else body[:header_length]
        doc = orjson.loads(head)
        for out in doc["outputs"]:
            if out["name"] != self.output:
                continue
            if "data" in out:
                return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
            return np.frombuffer(body[len(head) :], dtype="<f4").reshape(out["shape"])
        raise ValueError(f"no output {self.output!r}")


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.answered = 0  # all answers, warm-up included (for CPU per request)
        self.errors: list[str] = []
        self.recording = False
        self.stopping = False
        self.outstanding = 0
        self.done = asyncio.Event()


class Connection(asyncio.Protocol):
    def __init__(self, workload: Workload, stats: Stats, offset: int) -> None:
        self.workload, self.stats = workload, stats
        self.index = offset % len(workload.requests)
        self.parser = httptools.HttpResponseParser(self)
        self.chunks: list[bytes] = []
        self.header_length: int | None = None
        self.started = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stats.outstanding += 1
        self._send()

    def _send(self) -> None:
        self.index = (self.index + 1) % len(self.workload.requests)
        self.chunks.clear()
        self.header_length = None
        self.started = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.workload.requests[self.index])

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"inference-header-content-length":
            self.header_length = int(value)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        elapsed = time.perf_counter() - self.started
        stats = self.stats
        stats.answered += 1
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        problem = self.workload.check(
            self.index, self.parser.get_status_code(), body, self.header_length
        )
        if stats.recording:
            stats.latencies.append(elapsed)
            if problem is not None:
                stats.errors.append(problem)
        elif problem is not None and len(stats.errors) < 10:
            stats.errors.append(f"warm-up: {problem}")
        if stats.stopping:
            stats.outstanding -= 1
            if stats.outstanding == 0:
                stats.done.set()
            return
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stats.stopping:
            self.stats.errors.append(f"connection lost: {exc}")


async def run(
    workload: Workload, *, host: str, port: int, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stats = Stats()
    transports = []
    for i in range(concurrency):
        transport, _ = await loop.create_connection(
            lambda i=i: Connection(workload, stats, i * 7), host, port
        )
        transports.append(transport)
    await asyncio.sleep(warmup)
    stats.recording = True
    start = time.perf_counter()
    await asyncio.sleep(duration)
    stats.recording = False
    elapsed = time.perf_counter() - start
    stats.stopping = True
    try:
        await asyncio.wait_for(stats.done.wait(), 30)
    except TimeoutError:
        stats.errors.append("answers still outstanding 30 s after the end")
    for transport in transports:
        transport.close()
    lat = np.array(stats.latencies) * 1000.0
    count = len(lat)
    return {
        "requests": count,
        "answered": stats.answered,
        "seconds": elapsed,
        "rps": count / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if count else None,
        "p90_ms": float(np.percentile(lat, 90)) if count else None,
        "p99_ms": float(np.percentile(lat, 99)) if count else None,
        "errors": len(stats.errors),
        "first_errors": stats.errors[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    url = urlsplit(args.url)
    assert url.hostname in ("127.0.0.1", "localhost", "::1"), "loopback only"
    workload = Workload(pickle.loads(args.workload.read_bytes()), f"{url.hostname}:{url.port}")
    result = uvloop.run(
        run(
            workload,
            host=url.hostname,
            port=url.port or 80,
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
