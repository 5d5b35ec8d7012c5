"""Large JSON bodies (issue 15, item 12): they are decoded off the event loop, so the
health probes keep answering while they are; a full queue refuses new requests before
their bodies are read, so `--max-queue` bounds memory; a body that stops arriving frees
its place. Sizes are bounded (tens of MB) and every server runs under an address-space
cap."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

import modelzoo
from server.v2client import assert_same, decode_response

GIB = 1 << 30
MIB = 1 << 20
#: rows of the MLP's 256 floats: about 30 MB of JSON
ROWS = 11000


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident) of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def _body(feeds: dict[str, np.ndarray]) -> bytes:
    array = feeds["input"]
    tensor = {"name": "input", "shape": list(array.shape), "datatype": "FP32"}
    return orjson.dumps(
        {"inputs": [{**tensor, "data": array.reshape(-1)}]}, option=orjson.OPT_SERIALIZE_NUMPY
    )


class LivenessProbe:
    """GET /v2/health/live every 10 ms in a thread; the slowest answer while it ran."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    code = client.get(f"{self.url}/v2/health/live").status_code
                except httpx.TransportError as exc:
                    self.failures.append(repr(exc))
                    code = 0
                self.worst = max(self.worst, time.perf_counter() - start)
                if code != 200:
                    self.failures.append(f"status {code}")
                time.sleep(0.01)

    def __enter__(self) -> LivenessProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)


async def _post_all(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return list(
            await asyncio.gather(*(client.post("/v2/models/mlp/infer", content=b) for b in bodies))
        )


@pytest.fixture(scope="module")
def feeds() -> list[dict[str, np.ndarray]]:
    return [modelzoo.sample_inputs("mlp", ROWS, seed=100 + i) for i in range(8)]


@pytest.fixture(scope="module")
def bodies(feeds: list[dict[str, np.ndarray]]) -> list[bytes]:
    return [_body(f) for f in feeds]


def test_probes_answer_while_large_bodies_are_decoded(
    start_server: object,
    zoo: dict[str, Path],
    feeds: list[dict[str, np.ndarray]],
    bodies: list[bytes],
) -> None:
    server = start_server(zoo["mlp"], "--threads", "1", memory_limit=8 * GIB)  # type: ignore[operator]
    url = server.wait_ready()
    assert len(bodies[0]) > 25 * MIB
    with LivenessProbe(url) as probe:
        time.sleep(0.1)
        answers = asyncio.run(_post_all(url, bodies[:4]))
    for answer, f in zip(answers, feeds, strict=False):
        assert answer.status_code == 200, answer.text[:200]
        assert_same(
            decode_response(answer.content, answer.headers)[1], modelzoo.reference(zoo["mlp"], f)
        )
    size = len(bodies[0]) / MIB
    print(f"liveness: worst {probe.worst * 1000:.0f} ms while 4 x {size:.0f} MB were decoded")
    assert probe.failures == []
    # Decoded on the loop, the four bodies stalled it for 2.9 s here (issue 15: one 60 MB
    # body 1.6 s). Off the loop the probe waits for the GIL: for one orjson parse (a single
    # C call) and a handover per loop callback. 2 s on a machine with no more runnable
    # work than cores; scaled by the load past that (other jobs take the CPU the
    # decoding threads and the loop share: 4.2 s at load 8 on 2 cores).
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    bound = 2.0 * max(1.0, load)
    assert probe.worst < bound, f"liveness took {probe.worst:.2f} s (bound {bound:.1f} s)"
    server.terminate()


def test_a_full_queue_refuses_before_reading_bodies(
    start_server: object,
    zoo: dict[str, Path],
    feeds: list[dict[str, np.ndarray]],
    bodies: list[bytes],
) -> None:
    server = start_server(zoo["mlp"], "--threads", "1", "--max-queue", "1", memory_limit=8 * GIB)  # type: ignore[operator]
    url = server.wait_ready()
    before = _status(server.proc.pid)
    answers = asyncio.run(_post_all(url, bodies))
    after = _status(server.proc.pid)
    codes = [a.status_code for a in answers]
    refused = [a for a in answers if a.status_code == 503]
    for answer in refused:
        assert answer.headers["retry-after"] == "1"
        assert answer.json() == {
            "error": "the server is at capacity (1 requests queued); retry after 1 s"
        }
    for answer, f in zip(answers, feeds, strict=True):
        if answer.status_code == 200:
            assert_same(
                decode_response(answer.content, answer.headers)[1],
                modelzoo.reference(zoo["mlp"], f),
            )
    growth = after["VmHWM"] - before["VmRSS"]
    size = len(bodies[0]) / MIB
    print(f"codes {codes}; peak RSS growth {growth / MIB:.0f} MiB for 8 x {size:.0f} MB")
    assert set(codes) <= {200, 503}, codes
    assert 200 in codes, codes
    assert len(refused) >= 4, codes
    # One body read and decoded at a time, one waiting, one running: about 3 bodies and
    # one decode's Python objects. Reading all eight first took over twice that.
    assert growth < 300 * MIB, f"peak RSS grew {growth / MIB:.0f} MiB"
    server.terminate()


def test_a_body_that_stops_arriving_gets_408_and_frees_its_place(
    start_server: object, zoo: dict[str, Path]
) -> None:
    server = start_server(  # type: ignore[operator]
        zoo["mlp"], "--max-queue", "1", "--header-timeout", "1", memory_limit=8 * GIB
    )
    url = server.wait_ready()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b'POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"in'
        )
        # While it holds the only place, others are refused before their bodies are read.
        time.sleep(0.3)
        full = httpx.post(f"{url}/v2/models/mlp/infer", content=b"{}", timeout=10)
        assert full.status_code == 503
        start = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after it
            answer += chunk
        waited = time.monotonic() - start
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in head.lower()
    assert orjson.loads(body) == {
        "error": "the request body stalled: no bytes arrived for 1 s (--header-timeout)"
    }
    assert waited < 3
    row = modelzoo.sample_inputs("mlp", 1)
    ok = httpx.post(f"{url}/v2/models/mlp/infer", content=_body(row), timeout=10)
    assert ok.status_code == 200
    server.terminate()


def test_a_body_trickled_inside_the_idle_timeout_gets_408_at_the_body_deadline(
    start_server: object, zoo: dict[str, Path]
) -> None:
    """A byte every 0.5 s never trips the 1 s idle rule; the whole body still has to
    arrive within --body-timeout, or the client holds its place for as long as it likes."""
    server = start_server(  # type: ignore[operator]
        zoo["mlp"],
        *("--max-queue", "1", "--header-timeout", "1", "--body-timeout", "2"),
        memory_limit=8 * GIB,
    )
    url = server.wait_ready()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        )
        start = time.monotonic()
        # A byte every 0.5 s up to 1.5 s, then silence: the 2 s body deadline comes
        # before the 1 s idle rule could (2.5 s), and no byte is sent after the server
        # may have closed (a byte after its close would reset the connection and lose
        # the answer).
        for _ in range(4):
            sock.sendall(b" ")
            time.sleep(0.5)
        answer = b""
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
        waited = time.monotonic() - start
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert orjson.loads(body) == {
        "error": "the request body did not arrive within 2 s (--body-timeout)"
    }
    assert 1.5 < waited < 5
    row = modelzoo.sample_inputs("mlp", 1)
    ok = httpx.post(f"{url}/v2/models/mlp/infer", content=_body(row), timeout=10)
    assert ok.status_code == 200
    server.terminate()
