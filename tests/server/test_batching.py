"""Dynamic batching: unit tests of `Batcher` with the `FunctionRuntime` double (exact
control over when a batch runs), then the real server under concurrent load, where
every caller must get exactly its own rows."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Mapping
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelzoo
from ondeck_server.serve import errors
from ondeck_server.serve.batching import Batcher
from ondeck_server.serve.datatypes import Datatype
from ondeck_server.serve.errors import InvalidInput, Overloaded
from ondeck_server.serve.runtime import FunctionRuntime, TensorSpec
from server.v2client import assert_same, binary_request, decode_response, json_request

SPEC_IN = (TensorSpec("x", Datatype.FP32, (-1, 2)),)
SPEC_OUT = (TensorSpec("y", Datatype.FP32, (-1, 2)), TensorSpec("s", Datatype.FP32, (-1,)))


def double(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = feeds["x"]
    if (x < 0).any():
        raise InvalidInput("negative input")
    return {"y": x * 2, "s": x.sum(axis=1)}


def make(gate: threading.Event | None = None, **kwargs: object) -> tuple[Batcher, FunctionRuntime]:
    runtime = FunctionRuntime(double, inputs=SPEC_IN, outputs=SPEC_OUT, gate=gate)
    options = {"max_batch_size": 8, "max_delay_ms": 0.0, "max_queue": 64, "stack": True, **kwargs}
    return Batcher(runtime, **options), runtime  # type: ignore[arg-type]


def rows(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + 2 * count, dtype=np.float32).reshape(count, 2)


async def _held_batches(
    batcher: Batcher, gate: threading.Event, sizes: list[int]
) -> list[dict[str, np.ndarray]]:
    """Submit one request while the gate is closed (it runs alone and blocks), queue the
    rest behind it, then open the gate."""
    batcher.start()
    try:
        first = batcher.submit({"x": rows(0, sizes[0])}, sizes[0])
        await asyncio.sleep(0.05)  # the runner took the first request and waits on the gate
        futures = [first]
        start = 100
        for size in sizes[1:]:
            futures.append(batcher.submit({"x": rows(start, size)}, size))
            start += 100
        gate.set()
        return list(await asyncio.gather(*futures))
    finally:
        await batcher.stop()


def test_requests_queued_during_a_run_form_one_batch_and_get_their_own_rows() -> None:
    gate = threading.Event()
    batcher, runtime = make(gate)
    sizes = [1, 2, 1, 3, 1]
    results = asyncio.run(_held_batches(batcher, gate, sizes))
    # First request alone (the runner was free); the four queued behind it: one batch.
    assert runtime.batches == [1, 7]
    start = 0
    for size, result in zip(sizes, results, strict=True):
        x = rows(start, size)
        np.testing.assert_array_equal(result["y"], x * 2)
        np.testing.assert_array_equal(result["s"], x.sum(axis=1))
        start += 100


def test_max_batch_size_splits_batches_without_splitting_requests() -> None:
    gate = threading.Event()
    batcher, runtime = make(gate, max_batch_size=4)
    sizes = [1, 3, 3, 2, 6]
    results = asyncio.run(_held_batches(batcher, gate, sizes))
    # 3+... : [3] then 3+2 > 4 so [3], [2], and the 6-row request runs alone.
    assert runtime.batches == [1, 3, 3, 2, 6]
    assert [len(r["y"]) for r in results] == sizes


def test_no_stacking_when_off() -> None:
    gate = threading.Event()
    batcher, runtime = make(gate, stack=False)
    results = asyncio.run(_held_batches(batcher, gate, [1, 1, 1]))
    assert runtime.batches == [1, 1, 1]
    assert len(results) == 3


def test_different_trailing_shapes_are_not_stacked() -> None:
    gate = threading.Event()
    spec = (TensorSpec("x", Datatype.FP32, (-1, -1)),)
    runtime = FunctionRuntime(double, inputs=spec, outputs=SPEC_OUT, gate=gate)
    batcher = Batcher(runtime, max_batch_size=8, max_delay_ms=0, max_queue=8, stack=True)

    async def go() -> list[dict[str, np.ndarray]]:
        batcher.start()
        try:
            futures = [batcher.submit({"x": np.ones((1, 2), np.float32)}, 1)]
            await asyncio.sleep(0.05)
            futures.append(batcher.submit({"x": np.ones((1, 3), np.float32)}, 1))
            futures.append(batcher.submit({"x": np.ones((1, 3), np.float32)}, 1))
            futures.append(batcher.submit({"x": np.ones((1, 2), np.float32)}, 1))
            gate.set()
            return list(await asyncio.gather(*futures))
        finally:
            await batcher.stop()

    results = asyncio.run(go())
    assert runtime.batches == [1, 2, 1]
    assert [r["y"].shape for r in results] == [(1, 2), (1, 3), (1, 3), (1, 2)]


def test_one_bad_request_fails_only_its_caller() -> None:
    gate = threading.Event()
    batcher, runtime = make(gate)

    async def go() -> list[object]:
        batcher.start()
        try:
            futures = [batcher.submit({"x": rows(0, 1)}, 1)]
            await asyncio.sleep(0.05)
            futures.append(batcher.submit({"x": rows(10, 2)}, 2))
            futures.append(batcher.submit({"x": -rows(20, 1)}, 1))
            futures.append(batcher.submit({"x": rows(30, 1)}, 1))
            gate.set()
            return list(await asyncio.gather(*futures, return_exceptions=True))
        finally:
            await batcher.stop()

    results = asyncio.run(go())
    assert isinstance(results[2], InvalidInput)
    assert str(results[2]) == "negative input"
    np.testing.assert_array_equal(results[1]["y"], rows(10, 2) * 2)  # type: ignore[index]
    np.testing.assert_array_equal(results[3]["y"], rows(30, 1) * 2)  # type: ignore[index]
    # The stacked batch of 4 rows failed, then each request ran alone.
    assert runtime.batches == [1, 4, 2, 1, 1]


def test_full_queue_refuses_at_once() -> None:
    gate = threading.Event()
    batcher, _ = make(gate, max_queue=2)

    async def go() -> None:
        batcher.start()
        try:
            running = batcher.submit({"x": rows(0, 1)}, 1)
            await asyncio.sleep(0.05)
            queued = [batcher.submit({"x": rows(0, 1)}, 1) for _ in range(2)]
            with pytest.raises(Overloaded) as refused:
                batcher.submit({"x": rows(0, 1)}, 1)
            assert refused.value.message == (
                "the server is at capacity (2 requests queued); retry after 1 s"
            )
            assert batcher.depth == 2
            gate.set()
            await asyncio.gather(running, *queued)
            assert batcher.depth == 0
        finally:
            await batcher.stop()

    asyncio.run(go())


def test_partial_batch_waits_for_requests_being_received() -> None:
    batcher, runtime = make(max_delay_ms=500.0)

    async def go() -> None:
        batcher.start()
        try:
            with batcher.receiving():  # a second request is still being read
                first = batcher.submit({"x": rows(0, 1)}, 1)
                await asyncio.sleep(0.1)
                assert runtime.batches == []  # the batcher waits for it
                second = batcher.submit({"x": rows(10, 1)}, 1)
            await asyncio.gather(first, second)
            assert runtime.batches == [2]
            # Alone, nothing being received: runs at once, no delay.
            loop = asyncio.get_running_loop()
            started = loop.time()
            await batcher.submit({"x": rows(0, 1)}, 1)
            assert loop.time() - started < 0.4
            assert runtime.batches == [2, 1]
        finally:
            await batcher.stop()

    asyncio.run(go())


def test_max_delay_bounds_the_wait() -> None:
    batcher, runtime = make(max_delay_ms=50.0)

    async def go() -> float:
        batcher.start()
        try:
            with batcher.receiving():  # never submits
                loop = asyncio.get_running_loop()
                started = loop.time()
                await batcher.submit({"x": rows(0, 1)}, 1)
                return loop.time() - started
        finally:
            await batcher.stop()

    waited = asyncio.run(go())
    assert 0.04 <= waited < 2.0
    assert runtime.batches == [1]


# --------------------------------------------------------------- over HTTP
def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


async def _concurrent(
    url: str, model: str, bodies: list[tuple[bytes, dict[str, str]]], concurrency: int
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(body: bytes, headers: dict[str, str]) -> httpx.Response:
            async with sem:
                return await client.post(f"/v2/models/{model}/infer", content=body, headers=headers)

        return list(await asyncio.gather(*(one(b, h) for b, h in bodies)))


def test_concurrent_callers_each_get_their_own_rows(
    start_server: object, zoo: dict[str, Path]
) -> None:
    server = start_server(zoo["cnn"], "--max-batch-size", "16", "--max-delay-ms", "5")  # type: ignore[operator]
    url = server.wait_ready()
    requests, expected = [], []
    for i in range(48):
        feeds = modelzoo.sample_inputs("cnn", 1 + i % 3, seed=100 + i)
        expected.append(modelzoo.reference(zoo["cnn"], feeds))
        if i % 2:
            requests.append(binary_request(feeds, parameters={"binary_data_output": True}))
        else:
            requests.append((json_request(feeds, id=f"r{i}"), {}))
    answers = asyncio.run(_concurrent(url, "cnn", requests, concurrency=16))
    for i, (answer, want) in enumerate(zip(answers, expected, strict=True)):
        assert answer.status_code == 200, answer.text
        doc, outputs = decode_response(answer.content, answer.headers)
        if i % 2 == 0:
            assert doc["id"] == f"r{i}"
        assert_same(outputs, want)
    metrics = httpx.get(f"{url}/metrics").text
    runs = _metric(metrics, 'ondeck_batch_size_count{model="cnn"}')
    rows_total = _metric(metrics, 'ondeck_batch_size_sum{model="cnn"}')
    # The 48 requests hold 96 rows (warm-up runs are not counted).
    assert rows_total == 96
    assert runs < 48, "concurrent requests were never stacked"
    server.terminate()


def test_fixed_batch_model_is_not_batched(fixed_url: str, zoo: dict[str, Path]) -> None:
    feeds = [modelzoo.sample_inputs("fixed_batch", 1, seed=i) for i in range(12)]
    answers = asyncio.run(
        _concurrent(fixed_url, "fixed_batch", [(json_request(f), {}) for f in feeds], 6)
    )
    for answer, f in zip(answers, feeds, strict=True):
        assert_same(
            decode_response(answer.content, answer.headers)[1],
            modelzoo.reference(zoo["fixed_batch"], f),
        )
    metrics = httpx.get(f"{fixed_url}/metrics").text
    assert _metric(metrics, 'ondeck_batch_size_count{model="fixed_batch"}') == _metric(
        metrics, 'ondeck_batch_size_sum{model="fixed_batch"}'
    )


def test_stop_refuses_queued_requests_with_503() -> None:
    gate = threading.Event()
    batcher, runtime = make(gate)

    async def go() -> list[object]:
        batcher.start()
        running = batcher.submit({"x": rows(0, 1)}, 1)
        await asyncio.sleep(0.05)
        queued = batcher.submit({"x": rows(10, 1)}, 1)
        await batcher.stop()  # aborts the run in progress, refuses the queue
        return list(await asyncio.gather(running, queued, return_exceptions=True))

    running, queued = asyncio.run(go())
    assert isinstance(queued, errors.ShuttingDown)
    assert queued.status == 503
    assert dict(queued.headers)[b"retry-after"] == b"1"
    assert str(queued) == "the server is shutting down; retry, another replica will answer"
    assert isinstance(running, errors.ShuttingDown)  # its run was aborted
    assert runtime.aborted


def test_close_refuses_waiting_and_later_requests_and_lets_the_running_one_finish() -> None:
    gate = threading.Event()
    batcher, runtime = make(gate)

    async def go() -> list[object]:
        batcher.start()
        running = batcher.submit({"x": rows(0, 1)}, 1)
        await asyncio.sleep(0.05)
        queued = batcher.submit({"x": rows(10, 1)}, 1)
        batcher.close()
        outcomes: list[object] = []

        def receive() -> None:
            with batcher.receiving():
                pass

        for attempt in (lambda: batcher.submit({"x": rows(20, 1)}, 1), receive):
            try:
                attempt()
            except errors.ShuttingDown as exc:
                outcomes.append(exc)
        gate.set()
        outcomes += await asyncio.gather(running, queued, return_exceptions=True)
        await batcher.stop()
        return outcomes

    later, receiving, running, queued = asyncio.run(go())
    assert isinstance(later, errors.ShuttingDown)
    assert isinstance(receiving, errors.ShuttingDown)
    assert isinstance(queued, errors.ShuttingDown)
    assert isinstance(running, dict)  # answered
    assert runtime.batches == [1]
