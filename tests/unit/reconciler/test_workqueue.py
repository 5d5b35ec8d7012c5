"""WorkQueue: one run per key at a time, bursts collapse, failures back off."""

from __future__ import annotations

import asyncio
import itertools

from ondeck_operator.runtime.workqueue import WorkQueue


def test_bursts_collapse_and_a_key_never_runs_twice_at_once() -> None:
    runs: list[str] = []
    running: set[str] = set()
    overlaps: list[str] = []

    async def process(key: str) -> None:
        if key in running:
            overlaps.append(key)
        running.add(key)
        runs.append(key)
        await asyncio.sleep(0.02)
        running.discard(key)

    async def main() -> None:
        queue: WorkQueue[str] = WorkQueue(process, workers=4, retry_min=0.01, retry_max=0.1)
        task = asyncio.create_task(queue.run())
        for _ in range(10):
            queue.add("a")
        queue.add("b")
        await asyncio.sleep(0.005)
        queue.add("a")  # while "a" runs: exactly one more run afterwards
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert sorted(runs) == ["a", "a", "b"]
    assert overlaps == []


def test_failures_are_retried_with_growing_backoff() -> None:
    attempts: list[float] = []
    errors: list[str] = []

    async def process(key: str) -> None:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) < 4:
            raise RuntimeError("boom")

    async def main() -> WorkQueue[str]:
        queue: WorkQueue[str] = WorkQueue(
            process,
            workers=1,
            retry_min=0.02,
            retry_max=0.05,
            on_error=lambda key, exc: errors.append(f"{key}: {exc}"),
        )
        task = asyncio.create_task(queue.run())
        queue.add("k")
        await asyncio.sleep(0.4)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return queue

    queue = asyncio.run(main())
    assert len(attempts) == 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.015
    assert gaps[1] >= 0.035
    assert gaps[2] >= 0.045
    assert errors == ["k: boom"] * 3
    assert queue.backoff("k") == 0.02  # reset after the success


def test_a_paused_queue_runs_nothing_until_resumed_and_reports_the_wait() -> None:
    runs: list[str] = []
    waits: list[float] = []

    async def process(key: str) -> None:
        runs.append(key)

    async def main() -> None:
        queue: WorkQueue[str] = WorkQueue(
            process, workers=2, retry_min=0.01, retry_max=0.1, on_wait=waits.append, paused=True
        )
        task = asyncio.create_task(queue.run())
        queue.add("a")
        queue.add("b")
        await asyncio.sleep(0.05)
        assert runs == []
        assert queue.paused
        assert len(queue) == 2
        queue.resume()
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert sorted(runs) == ["a", "b"]
    assert len(waits) == 2
    assert all(w >= 0.04 for w in waits)  # they waited for the resume
