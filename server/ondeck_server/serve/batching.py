"""Dynamic batching: requests for one model wait in a bounded queue; a single runner
stacks compatible ones along the batch dimension (dim 0), runs the model once in a
worker thread, and hands every caller exactly its own rows.

Batch formation (when the runner is free):
- take the oldest request, then every queued request with the same trailing shapes,
  as long as the rows fit in `max_batch_size` (a single request larger than that runs
  alone, unsplit);
- if the batch is not full and other requests are still being received by the server
  (`receiving()`), wait for them, at most until the oldest request has waited
  `max_delay_ms`. A request that arrives alone runs at once: waiting could not fill the
  batch, only add latency;
- requests queued while a batch runs form the next batch.

When stacking is off (`stack=False`: the model has no dynamic batch dimension, or
`--max-batch-size 1`) every request runs on its own, through the same bounded queue.
A failed stacked batch is retried one request at a time, so one caller's bad input
fails only that caller.

Admission: `receiving()` is entered before a request's body is read. When the requests
being received plus those waiting already number `max_queue`, it raises `Overloaded`
at once, so a full server refuses before reading (and holding) another body: at most
`max_queue` requests are being read, decoded or waiting at any time, plus the batch
running. After `close()` (the end of a SIGTERM drain) `receiving()` and
`submit()` raise `ShuttingDown`, and so do the requests still waiting. This module does
no HTTP and no decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ondeck_server.serve.errors import InferenceFailed, Overloaded, ServeError, ShuttingDown
from ondeck_server.serve.runtime import Arrays, Runtime

log = logging.getLogger("ondeck.batching")

#: called after every run with (rows, seconds)
BatchObserver = Callable[[int, float], None]


@dataclass(slots=True)
class _Item:
    feeds: Arrays
    rows: int
    key: tuple[object, ...]
    future: asyncio.Future[Arrays]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """One model's queue and runner. Create, `start()` inside the event loop, `stop()`."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        max_batch_size: int,
        max_delay_ms: float,
        max_queue: int,
        stack: bool,
        observer: BatchObserver | None = None,
    ) -> None:
        self._runtime = runtime
        self.max_batch_size = max_batch_size
        self._max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.stack = stack and max_batch_size > 1
        self._observer = observer
        self._queue: deque[_Item] = deque()
        self._receiving = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._current: list[_Item] = []  # the batch in the worker thread
        self._closed = False

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ondeck-infer")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="ondeck-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._closed = True
        for item in [*self._current, *self._queue]:
            if not item.future.done():
                item.future.set_exception(ShuttingDown())
        self._queue.clear()
        self._current = []
        # A run still in progress would hold the process past its drain timeout.
        self._runtime.abort()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def close(self) -> None:
        """Stop taking requests: later ones and those waiting get `ShuttingDown` (503 +
        Retry-After); the batch already running still finishes."""
        self._closed = True
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(ShuttingDown())

    # ----------------------------------------------------------------- callers
    @property
    def depth(self) -> int:
        """Requests waiting (not yet running)."""
        return len(self._queue)

    @contextlib.contextmanager
    def receiving(self) -> Iterator[None]:
        """Admit a request before its body is read, and mark it as being read and decoded
        (a partly filled batch may wait for it). Raises `Overloaded` when the requests
        being received plus those waiting already number `max_queue`."""
        if self._closed:
            raise ShuttingDown()
        if self._receiving + len(self._queue) >= self.max_queue:
            raise self._overloaded()
        self._receiving += 1
        try:
            yield
        finally:
            self._receiving -= 1
            if self._receiving == 0 and self._wake is not None:
                self._wake.set()

    def submit(self, feeds: Arrays, rows: int) -> asyncio.Future[Arrays]:
        """Queue one request; the future resolves to its own rows of every output."""
        if self._closed:
            raise ShuttingDown()
        if len(self._queue) >= self.max_queue:
            raise self._overloaded()
        loop = asyncio.get_running_loop()
        key = tuple((a.shape[1:], a.dtype) for a in feeds.values()) if self.stack else ()
        item = _Item(feeds, rows, key, loop.create_future())
        self._queue.append(item)
        assert self._wake is not None, "Batcher.start() was not called"
        self._wake.set()
        return item.future

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"the server is at capacity ({self.max_queue} requests queued); retry after"
            f" {Overloaded.retry_after} s"
        )

    # ----------------------------------------------------------------- runner
    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            # `_current` holds the batch from its first item on, so that stop() can
            # answer its callers if this task is cancelled while collecting or running.
            if self.stack:
                batch = await self._collect()
            else:
                batch = self._current = [self._queue.popleft()]
            batch = [item for item in batch if not item.future.cancelled()]
            if not batch:
                self._current = []
                continue
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as exc:  # the executor itself failed: tell every caller
                log.exception("batch runner failed")
                outcomes = [InferenceFailed(f"inference failed: {exc}")] * len(batch)
            self._current = []
            for item, outcome in zip(batch, outcomes, strict=True):
                if item.future.done():
                    continue  # the caller went away
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    async def _collect(self) -> list[_Item]:
        assert self._wake is not None
        first = self._queue.popleft()
        batch, rows = [first], first.rows
        self._current = batch
        deadline = first.enqueued + self._max_delay
        while rows < self.max_batch_size:
            while self._queue:
                head = self._queue[0]
                if head.key != first.key or rows + head.rows > self.max_batch_size:
                    return batch
                batch.append(self._queue.popleft())
                rows += head.rows
            if rows >= self.max_batch_size or self._receiving == 0:
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break
        return batch

    def _run(self, batch: list[_Item]) -> list[Arrays | BaseException]:
        """Runs in the worker thread: one stacked run, split back into each caller's rows."""
        if len(batch) == 1:
            return [self._run_one(batch[0])]
        names = batch[0].feeds.keys()
        feeds = {name: np.concatenate([item.feeds[name] for item in batch]) for name in names}
        total = sum(item.rows for item in batch)
        start = time.perf_counter()
        try:
            results = self._runtime.run(feeds)
        except Exception:
            # One caller's input may have failed the whole batch: isolate it.
            return [self._run_one(item) for item in batch]
        self._observe(total, time.perf_counter() - start)
        if any(len(out.shape) == 0 or out.shape[0] != total for out in results.values()):
            log.warning("an output has no batch dimension; running requests one at a time")
            self.stack = False
            return [self._run_one(item) for item in batch]
        answers: list[Arrays | BaseException] = []
        offset = 0
        for item in batch:
            end = offset + item.rows
            answers.append({name: out[offset:end] for name, out in results.items()})
            offset = end
        return answers

    def _run_one(self, item: _Item) -> Arrays | BaseException:
        start = time.perf_counter()
        try:
            results = self._runtime.run(item.feeds)
        except ServeError as exc:
            return exc
        except Exception as exc:
            return InferenceFailed(f"inference failed: {exc}")
        self._observe(item.rows, time.perf_counter() - start)
        return results

    def _observe(self, rows: int, seconds: float) -> None:
        if self._observer is not None:
            self._observer(rows, seconds)
