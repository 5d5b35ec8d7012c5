"""Requests that used to kill or lock up the server: a tiny body declaring a huge shape,
idle and slow connections filling the connection table. Each server here runs under an
address-space cap so a regression fails the test instead of OOM-killing the machine."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

GIB = 1 << 30


@pytest.fixture(scope="module")
def sequence_url(start_server: object, zoo: dict[str, Path]) -> Iterator[str]:
    server = start_server(zoo["sequence"], memory_limit=8 * GIB)  # type: ignore[operator]
    yield server.wait_ready()
    server.terminate()


def _infer(url: str, shape: list[int], data: list[int] | None = None) -> httpx.Response:
    body = {"inputs": [{"name": "tok", "shape": shape, "datatype": "INT64", "data": data or []}]}
    return httpx.post(f"{url}/v2/models/sequence/infer", content=json.dumps(body), timeout=30)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            [1 << 40, 0],
            "input 'tok': dimension 0 is 1099511627776, over this server's limit of 67108864"
            " elements (--max-tensor-elements)",
        ),
        (
            [1 << 62, 0],
            "input 'tok': dimension 0 is 4611686018427387904, over this server's limit of"
            " 67108864 elements (--max-tensor-elements)",
        ),
        (
            [1 << 26, 0],
            "input 'tok': for this request the model's output 'pooled' could hold 536870912"
            " elements, over this server's limit of 67108864 (--max-tensor-elements); send"
            " smaller dimensions",
        ),
        (
            [1 << 14, 1 << 14],
            "input 'tok': shape [16384, 16384] has 268435456 elements, over this server's"
            " limit of 67108864 (--max-tensor-elements)",
        ),
    ],
)
def test_a_small_body_declaring_a_huge_shape_gets_400(
    sequence_url: str, shape: list[int], message: str
) -> None:
    response = _infer(sequence_url, shape)
    assert response.status_code == 400
    assert response.json() == {"error": message}
    assert httpx.get(f"{sequence_url}/v2/health/live", timeout=5).status_code == 200
    ok = _infer(sequence_url, [1, 3], [1, 2, 3])
    assert ok.status_code == 200, ok.text


def test_binary_request_with_a_huge_shape_gets_400(sequence_url: str) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "tok",
                    "shape": [1 << 40, 0],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()
    response = httpx.post(
        f"{sequence_url}/v2/models/sequence/infer",
        content=header,
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )
    assert response.status_code == 400
    assert "dimension 0 is 1099511627776" in response.json()["error"]


def test_a_lower_limit_is_honoured(start_server: object, zoo: dict[str, Path]) -> None:
    server = start_server(zoo["sequence"], "--max-tensor-elements", "100", memory_limit=8 * GIB)  # type: ignore[operator]
    url = server.wait_ready()
    assert _infer(url, [2, 5], list(range(10))).status_code == 200
    response = _infer(url, [1, 101], [1] * 101)
    assert response.status_code == 400
    assert "over this server's limit of 100" in response.json()["error"]
    server.terminate()


def _idle_sockets(url: str, count: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sockets.append(sock)
    return sockets


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.1)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def test_idle_connections_cannot_lock_everyone_out(
    start_server: object, zoo: dict[str, Path]
) -> None:
    server = start_server(  # type: ignore[operator]
        zoo["sequence"], "--max-connections", "32", "--header-timeout", "30",
        memory_limit=8 * GIB,
    )  # fmt: skip
    url = server.wait_ready()
    idle = _idle_sockets(url, 60)
    try:
        time.sleep(0.3)
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{url}/v2/health/live").status_code == 200
            assert client.get(f"{url}/v2/health/ready").status_code == 200
        assert _infer(url, [1, 3], [1, 2, 3]).status_code == 200
        # The oldest idle connections were the ones closed to make room.
        assert _closed_by_peer(idle[0])
    finally:
        for sock in idle:
            sock.close()
        server.terminate()


def test_connections_that_never_finish_their_headers_are_closed(
    start_server: object, zoo: dict[str, Path]
) -> None:
    server = start_server(zoo["sequence"], "--header-timeout", "1", memory_limit=8 * GIB)  # type: ignore[operator]
    url = server.wait_ready()
    (silent, slow) = _idle_sockets(url, 2)
    try:
        start = time.monotonic()
        closed = {"silent": False, "slow": False}
        while time.monotonic() - start < 5 and not all(closed.values()):
            try:
                slow.send(b"G")  # slowloris: one byte at a time, headers never end
            except OSError:
                closed["slow"] = True
            closed["silent"] = closed["silent"] or _closed_by_peer(silent)
            closed["slow"] = closed["slow"] or _closed_by_peer(slow)
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        assert closed == {"silent": True, "slow": True}
        assert elapsed < 4
        assert httpx.get(f"{url}/v2/health/live", timeout=5).status_code == 200
    finally:
        silent.close()
        slow.close()
        server.terminate()


def test_probes_answer_while_requests_past_the_cap_get_503(
    start_server: object, zoo: dict[str, Path]
) -> None:
    """Three requests hold the cap (their bodies half sent, so they stay in flight for as
    long as the test wants, on a fast machine or a slow one; uvicorn's cap of 4 counts
    the connection asking too): the next request gets the cap's 503 while the probes and
    metrics still answer 200, and the three are answered once their bodies are in."""
    server = start_server(  # type: ignore[operator]
        zoo["slow_heavy"], "--max-connections", "4", "--max-batch-size", "1",
        memory_limit=8 * GIB,
    )  # fmt: skip
    url = server.wait_ready()
    host, port = httpx.URL(url).host, httpx.URL(url).port
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 512], "datatype": "FP32", "data": [0.1] * 512}]}
    ).encode()
    head = (
        "POST /v2/models/slow_heavy/infer HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    holders = [socket.create_connection((host, port), timeout=30) for _ in range(3)]
    try:
        for sock in holders:
            sock.sendall(head + body[:100])
        deadline = time.monotonic() + 30
        while True:  # until the server has read the three requests' headers
            capped = httpx.post(f"{url}/v2/models/slow_heavy/infer", content=body, timeout=30)
            if capped.status_code == 503:
                break
            assert capped.status_code == 200, capped.text
            assert time.monotonic() < deadline, "three half-sent requests never filled the cap"
            time.sleep(0.05)
        assert httpx.get(f"{url}/v2/health/live", timeout=5).status_code == 200
        assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 200
        for sock in holders:
            sock.sendall(body[100:])
        for sock in holders:
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    finally:
        for sock in holders:
            sock.close()
        server.terminate()
