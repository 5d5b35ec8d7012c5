"""The engine worker's continuous batching: a request that arrives while others decode is
admitted into a free slot at the worker's next turn and decodes alongside them (it does
not wait for them to finish); past `max_batch` it waits for a slot; a cancelled waiting
request leaves at once. Pinned by which engine turn each job's tokens came from (every
job decoded in one turn gets the same stamp), never by speed; the timeouts only bound a
test that would otherwise hang."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from llm.jobs import BOUND_S
from llm.jobs import events as _events
from llm.jobs import text as _text
from ondeck_server.convert.run import Outcome
from ondeck_server.serve.llm.engine import (
    PREFILL_LOGITS_BYTES,
    EngineWorker,
    Event,
    Finished,
    Job,
    Piece,
    Sampling,
    _deliver,
    prefill_positions,
)


def _worker(artifact: Outcome, *, max_batch: int, chunk: int = 256) -> EngineWorker:
    return EngineWorker(
        Path(artifact.path) / "genai",
        max_batch=max_batch,
        max_queue=16,
        threads=1,
        prefill_chunk=chunk,
    )


def _job(max_tokens: int = 8, loop: Any = None, prompt: str = "The for statement") -> Job:
    return Job(
        prompt,
        Sampling(max_tokens=max_tokens, temperature=0.0),
        loop=loop or asyncio.get_running_loop(),
    )


def _stamps(events: list[Event]) -> list[float]:
    return [t for e in events if isinstance(e, Piece) for t in e.tokens]


def _submitted(worker: EngineWorker, job: Job) -> Job:
    worker.submit(job)
    return job


async def _drain(job: Job) -> list[Event]:
    return job.drain(await asyncio.wait_for(job.events.get(), BOUND_S))


class _SubmitOnFirstToken:
    """The event loop the long job is given: when the worker hands over that job's first
    token, it submits `late` from the worker thread itself, before the worker's next turn
    (so `late` arrives while the long job is decoding, whatever the machine's speed)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, worker: EngineWorker, late: Job):
        self.loop, self.worker, self.late = loop, worker, late
        self.submitted = False

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> None:
        first_token = callback is _deliver and any(isinstance(e, Piece) for _, e in args[0])
        if first_token and not self.submitted:
            self.submitted = True
            self.worker.submit(self.late)
        self.loop.call_soon_threadsafe(callback, *args)


def test_a_request_joins_the_running_ones_instead_of_waiting_for_them(
    fp32_artifact: Outcome,
) -> None:
    async def go() -> None:
        worker = _worker(fp32_artifact, max_batch=4)
        worker.start()
        try:
            late = _job(max_tokens=8)
            hook = _SubmitOnFirstToken(asyncio.get_running_loop(), worker, late)
            long = _submitted(worker, _job(max_tokens=200, loop=hook))
            late_events = await _events(late)
            long_events = await _events(long)
            assert hook.submitted
            assert isinstance(late_events[-1], Finished)
            assert late_events[-1].reason == "length"
            long_stamps = _stamps(long_events)
            # the late request's tokens after its first were decoded in the same turns as
            # the long one's (one stamp per turn), and it finished while the long one ran
            late_stamps = _stamps(late_events)
            assert len(late_stamps) == 8
            assert set(late_stamps[1:]) <= set(long_stamps)
            assert max(late_stamps) < max(long_stamps)
            # and each got exactly its own tokens: the same text as alone
            alone = await _events(_submitted(worker, _job(max_tokens=8)))
            assert _text(alone) == _text(late_events) != ""
        finally:
            worker.stop()

    asyncio.run(go())


def test_past_max_batch_a_request_waits_for_a_slot(fp32_artifact: Outcome) -> None:
    async def go() -> None:
        worker = _worker(fp32_artifact, max_batch=2)
        worker.start()
        try:
            jobs = [_submitted(worker, _job(max_tokens=40)) for _ in range(2)]
            third = _submitted(worker, _job(max_tokens=8))
            done = await asyncio.gather(*(_events(j) for j in [*jobs, third]))
            first_two_end = min(max(_stamps(e)) for e in done[:2])
            assert min(_stamps(done[2])) > first_two_end
            assert {_text(e) for e in done[:2]} == {_text(done[0])}
        finally:
            worker.stop()

    asyncio.run(go())


def test_a_prompt_longer_than_a_chunk_gives_the_same_tokens(fp32_artifact: Outcome) -> None:
    """A prompt prefilled in chunks of 8 tokens (interleaved with another request's
    decoding) continues exactly as one prefilled whole."""

    async def go() -> None:
        prompt = "The for statement is used to iterate over the elements of a sequence " * 3
        whole = _worker(fp32_artifact, max_batch=2, chunk=4096)
        whole.start()
        try:
            expected = await _events(_submitted(whole, _job(16, prompt=prompt)))
        finally:
            whole.stop()
        chunked = _worker(fp32_artifact, max_batch=2, chunk=8)
        chunked.start()
        try:
            other = _submitted(chunked, _job(max_tokens=60))
            await _drain(other)
            got = await _events(_submitted(chunked, _job(16, prompt=prompt)))
            rest = await _events(other)
            assert isinstance(got[-1], Finished)
            assert isinstance(expected[-1], Finished)
            assert got[-1].prompt_tokens == expected[-1].prompt_tokens > 16
            assert _text(got) == _text(expected) != ""
            assert isinstance(rest[-1], Finished)
            assert rest[-1].reason == "length"
        finally:
            chunked.stop()

    asyncio.run(go())


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


class _OnFirstToken(_Order):
    """An `_Order` that runs `action` in the worker thread when the first token of the
    jobs given this loop is handed over, before the worker's next turn: what the action
    does lands while those jobs still have (almost) all their tokens ahead, whatever the
    machine's speed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, action: Any) -> None:
        super().__init__(loop)
        self.action = action
        self.done = False

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> None:
        first_token = callback is _deliver and any(isinstance(e, Piece) for _, e in args[0])
        if first_token and not self.done:
            self.done = True
            self.action()
        super().call_soon_threadsafe(callback, *args)


def test_a_request_cancelled_while_it_waits_leaves_before_a_slot_frees(
    fp32_artifact: Outcome,
) -> None:
    async def go() -> None:
        worker = _worker(fp32_artifact, max_batch=1)
        seen: list[int] = []

        def cancel_the_waiting_one() -> None:
            seen.append(worker.waiting)  # the other waits for the only slot
            waiting.cancel()

        order = _OnFirstToken(asyncio.get_running_loop(), cancel_the_waiting_one)
        running = _submitted(worker, _job(max_tokens=200, loop=order))
        waiting = _submitted(worker, _job(loop=order))
        worker.start()
        try:
            got = await asyncio.wait_for(waiting.events.get(), BOUND_S)
            assert got == Finished("cancelled", 0, 0)
            rest = await _events(running)
            assert seen == [1]
            assert isinstance(rest[-1], Finished)
            assert rest[-1].reason == "length"
            assert order.sent.index(got) < order.sent.index(rest[-1])
            assert worker.waiting == 0
        finally:
            worker.stop()

    asyncio.run(go())


def test_a_running_request_cancelled_frees_its_slot(fp32_artifact: Outcome) -> None:
    async def go() -> None:
        worker = _worker(fp32_artifact, max_batch=1)
        running: Job

        def cancel_it() -> None:
            running.cancel()

        loop = _OnFirstToken(asyncio.get_running_loop(), cancel_it)
        running = _submitted(worker, _job(max_tokens=200, loop=loop))
        worker.start()
        try:
            events = await _events(running)
            assert isinstance(events[-1], Finished)
            assert events[-1].reason == "cancelled"
            # cancelled at its first hand-over (after the prefill); that turn still decodes
            assert events[-1].completion_tokens == 2
            after = await _events(_submitted(worker, _job(max_tokens=4)))
            assert isinstance(after[-1], Finished)
            assert after[-1].reason == "length"
            assert worker.running == 0
        finally:
            worker.stop()

    asyncio.run(go())


def test_a_large_vocabulary_is_prefilled_in_smaller_pieces() -> None:
    """A prefill call's logits stay under PREFILL_LOGITS_BYTES: Qwen's 151,936-token
    vocabulary in fp32 takes 110 positions a call, the tiny model's 512 the full 256."""
    assert prefill_positions(256, 512, 4) == 256
    assert prefill_positions(256, 151_936, 4) == 110
    assert 110 * 151_936 * 4 <= PREFILL_LOGITS_BYTES < 111 * 151_936 * 4
    assert prefill_positions(256, 10_000_000, 4) == 16
