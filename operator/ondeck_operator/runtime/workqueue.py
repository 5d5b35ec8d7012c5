"""A keyed work queue for reconciles (the controller-runtime pattern, in asyncio).

Events only *request* a reconcile of a key; the queue guarantees that a key is never
processed by two workers at once, that a burst of requests for one key collapses into one
run (plus one more if a request came in while it ran), and that a failed run is retried
with exponential backoff (`retry_min` doubling up to `retry_max`), until a run succeeds.
A queue made `paused` takes requests but runs nothing until `resume()` (the controller
resumes it once the watch caches are filled). `on_wait(seconds)` is told how long each run
waited in the queue (from its first request to a worker taking it): with `len()`, the
depth, it says whether reconciles wait for workers or for the API server.

What this module does NOT do: know what a key means, talk to Kubernetes, or persist
anything; a restarted operator rebuilds its queue from the watches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["WorkQueue"]

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)


class WorkQueue(Generic[K]):
    """Run `process(key)` for requested keys on `workers` concurrent tasks."""

    def __init__(
        self,
        process: Callable[[K], Awaitable[None]],
        *,
        workers: int,
        retry_min: float,
        retry_max: float,
        on_error: Callable[[K, Exception], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
        paused: bool = False,
    ) -> None:
        self._process = process
        self._workers = workers
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._on_error = on_error or (lambda key, exc: None)
        self._on_wait = on_wait or (lambda seconds: None)
        self._resumed = asyncio.Event()
        if not paused:
            self._resumed.set()
        self._since: dict[K, float] = {}
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._queued) + len(self._timers)

    @property
    def busy(self) -> int:
        return len(self._active)

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def resume(self) -> None:
        """Start running the requests (and keep running them)."""
        self._resumed.set()

    def add(self, key: K, *, delay: float = 0.0) -> None:
        """Request a reconcile of `key`, now or after `delay` seconds."""
        if delay > 0:
            timer = self._timers.get(key)
            loop = asyncio.get_running_loop()
            if timer is not None and timer.when() <= loop.time() + delay:
                return  # an earlier retry is already scheduled
            if timer is not None:
                timer.cancel()
            self._timers[key] = loop.call_later(delay, self._fire, key)
            return
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._since[key] = asyncio.get_running_loop().time()
            self._ready.put_nowait(key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: K) -> None:
        """Drop retries and pending delayed requests of a key that no longer exists."""
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def backoff(self, key: K) -> float:
        failures = self._failures.get(key, 0)
        return float(min(self._retry_max, self._retry_min * 2 ** max(failures - 1, 0)))

    async def run(self) -> None:
        """Run the workers until cancelled."""
        tasks = [
            asyncio.create_task(self._worker(), name=f"reconcile-{i}") for i in range(self._workers)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()

    async def _worker(self) -> None:
        await self._resumed.wait()
        loop = asyncio.get_running_loop()
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            since = self._since.pop(key, None)
            if since is not None:
                self._on_wait(loop.time() - since)
            self._active.add(key)
            try:
                await self._process(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures[key] = self._failures.get(key, 0) + 1
                self._on_error(key, exc)
                self.add(key, delay=self.backoff(key))
            else:
                self._failures.pop(key, None)
            finally:
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
