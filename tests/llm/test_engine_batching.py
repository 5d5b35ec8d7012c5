"""The engine worker's batch boundaries. onnxruntime-genai's Engine here batches
statically (a request admitted while a batch decodes waits for all of it), so the worker
holds new requests until a batch ends, and a new batch waits (bounded by `batch_wait`)
for as many requests as were in flight during the last one. Pinned by which engine step
each job's tokens came from (every job of one step gets the same stamp), never by speed;
the timeouts only bound a test that would otherwise hang."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from ondeck_server.convert.run import Outcome
from ondeck_server.serve.llm.engine import (
    EngineWorker,
    Event,
    Finished,
    Job,
    Piece,
    Sampling,
    _deliver,
)
from ondeck_server.serve.llm.server import LLM_MIN_BATCH_WAIT_S, llm_batch_wait

BOUND_S = 120.0
"""no job here takes more than a fraction of this, even on a loaded machine"""


def _worker(artifact: Outcome, *, max_batch: int) -> EngineWorker:
    # a window far longer than BOUND_S: only the request count ends the wait
    return EngineWorker(
        Path(artifact.path) / "genai",
        max_batch=max_batch,
        max_queue=16,
        threads=1,
        batch_wait=10 * BOUND_S,
        batch_wait_share=1e9,
    )


def _job(max_tokens: int = 8, loop: Any = None) -> Job:
    return Job(
        "The for statement",
        Sampling(max_tokens=max_tokens, temperature=0.0),
        loop=loop or asyncio.get_running_loop(),
    )


async def _events(job: Job) -> list[Event]:
    out: list[Event] = []
    while not out or not isinstance(out[-1], Finished):
        out.append(await asyncio.wait_for(job.events.get(), BOUND_S))
    return out


def _first_stamp(events: list[Event]) -> float:
    return next(e.tokens[0] for e in events if isinstance(e, Piece))


def test_a_new_batch_waits_for_as_many_requests_as_the_last_one_held(
    fp32_artifact: Outcome,
) -> None:
    async def go() -> None:
        worker = _worker(fp32_artifact, max_batch=4)
        first = [_job() for _ in range(3)]
        for job in first:  # all waiting before the worker's first look: one batch of 3
            worker.submit(job)
        worker.start()
        try:
            rounds = await asyncio.gather(*(_events(j) for j in first))
            assert len({_first_stamp(e) for e in rounds}) == 1
            # the next round's first request comes back alone; the batch waits for the
            # other two instead of starting without them
            lone = _job()
            worker.submit(lone)
            await asyncio.sleep(0.5)
            assert lone.events.empty(), "the lone request was admitted without the others"
            rest = [_job(), _job()]
            for job in rest:
                worker.submit(job)
            second = await asyncio.gather(*(_events(j) for j in [lone, *rest]))
            assert len({_first_stamp(e) for e in second}) == 1
            assert all(isinstance(e[-1], Finished) for e in second)
        finally:
            worker.stop()

    asyncio.run(go())


def test_a_lone_clients_next_request_does_not_wait(fp32_artifact: Outcome) -> None:
    async def go() -> None:
        worker = _worker(fp32_artifact, max_batch=4)
        worker.start()
        try:
            for _ in range(3):  # each would wait 10 x BOUND_S if a lone request waited
                events = await _events(_submitted(worker, _job()))
                assert isinstance(events[-1], Finished)
                assert events[-1].reason == "length"
        finally:
            worker.stop()

    asyncio.run(go())


def _submitted(worker: EngineWorker, job: Job) -> Job:
    worker.submit(job)
    return job


class _Order:
    """The event loop the jobs are given: forwards every handoff to the real loop and
    records the events in the order the worker sent them (one loop, FIFO)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sent: list[Event] = []
        self._lock = threading.Lock()

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> None:
        with self._lock:
            if callback is _deliver:
                self.sent += [event for _, event in args[0]]
            else:  # a job's own `events.put_nowait`
                self.sent.append(args[0])
        self.loop.call_soon_threadsafe(callback, *args)


def test_a_request_cancelled_while_it_waits_leaves_before_the_batch_ends(
    fp32_artifact: Outcome,
) -> None:
    async def go() -> None:
        worker = _worker(fp32_artifact, max_batch=1)
        order = _Order(asyncio.get_running_loop())
        worker.start()
        try:
            running = _submitted(worker, _job(max_tokens=200, loop=order))
            waiting = _submitted(worker, _job(loop=order))
            # the running request has decoded; the other waits for its batch to end
            while not any(isinstance(e, Piece) for e in await _drain(running)):
                pass
            assert worker.waiting == 1
            waiting.cancel()
            worker.wake()
            got = await asyncio.wait_for(waiting.events.get(), BOUND_S)
            assert got == Finished("cancelled", 0, 0)
            rest = await _events(running)
            assert isinstance(rest[-1], Finished)
            assert rest[-1].reason == "length"
            assert order.sent.index(got) < order.sent.index(rest[-1])
            assert worker.waiting == 0
        finally:
            worker.stop()

    asyncio.run(go())


async def _drain(job: Job) -> list[Event]:
    return job.drain(await asyncio.wait_for(job.events.get(), BOUND_S))


def test_the_llm_batch_wait_is_off_at_zero_and_at_least_the_floor_otherwise() -> None:
    assert llm_batch_wait(0.0) == 0.0
    assert llm_batch_wait(2.0) == LLM_MIN_BATCH_WAIT_S
    assert llm_batch_wait(200.0) == 0.2  # above the floor: --max-delay-ms itself
