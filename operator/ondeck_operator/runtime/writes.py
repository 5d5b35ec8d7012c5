"""Child writes that may outlive the reconcile that started them.

A reconcile writes a ModelDeployment's children together and, before this module, held its
worker until the slowest write answered. Under a burst the slowest is the Service: the API
server allocates ClusterIPs one at a time (a mutex held around an IPAddress create, see
bench/operator/RESULTS.md), so a Service write can wait seconds, and workers held by
Service writes left the conversion Jobs and Deployments of every other ModelDeployment
waiting in the queue.

`Writes.run()` starts a write as a task and waits for it at most `wait` seconds. A write
that answers in time is returned (or raises) as before. One that does not goes on in the
background: the reconcile carries on (its status patch, its worker freed); the write's
reply is handed to `on_reply` when it comes (the controller then expects its watch event,
which requests the next reconcile); its failure is handed to `on_late_error` (the
controller requests the key again; the retry's error, if it answers in time, reaches the
status as usual). A second write of the same object while one is running joins it instead
of sending another. Writes of a kind in `slots` wait for one of that many slots first, so
Service writes queued at the API server's allocator never take every connection.

What this module does NOT do: decide what to write, retry, or talk to the API server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

from ondeck_operator.reconcile.kinds import Kind

__all__ = ["Writes"]

Obj = dict[str, Any]
Ident = tuple[Hashable, str, str]  # key, plural, name


class Writes:
    """Running child writes, by (key, kind, name)."""

    def __init__(
        self,
        *,
        wait: float,
        slots: Mapping[Kind, int],
        on_reply: Callable[[Hashable, Kind, str, Obj], None],
        on_late_error: Callable[[Hashable, Exception], None],
    ) -> None:
        self._wait = wait
        self._slots = {kind: asyncio.Semaphore(n) for kind, n in slots.items()}
        self._on_reply = on_reply
        self._on_late_error = on_late_error
        self._running: dict[Ident, asyncio.Task[Obj]] = {}
        self._late: set[Ident] = set()

    def __len__(self) -> int:
        return len(self._running)

    async def run(
        self, key: Hashable, kind: Kind, name: str, call: Callable[[], Awaitable[Obj]]
    ) -> Obj | None:
        """The write's reply, or None when it is still running after `wait` seconds."""
        ident = (key, kind.plural, name)
        task = self._running.get(ident)
        if task is None:
            task = asyncio.create_task(self._write(key, kind, name, call), name=f"write {ident}")
            self._running[ident] = task
            task.add_done_callback(lambda t: self._done(ident, t))
        done, _ = await asyncio.wait({task}, timeout=self._wait)
        if not done:
            self._late.add(ident)
            return None
        self._late.discard(ident)
        return task.result()

    async def _write(
        self, key: Hashable, kind: Kind, name: str, call: Callable[[], Awaitable[Obj]]
    ) -> Obj:
        slots = self._slots.get(kind)
        async with slots if slots is not None else contextlib.nullcontext():
            reply = await call()
        self._on_reply(key, kind, name, reply)
        return reply

    def _done(self, ident: Ident, task: asyncio.Task[Obj]) -> None:
        self._running.pop(ident, None)
        if ident not in self._late:
            return  # its reconcile took the result (or the error) itself
        self._late.discard(ident)
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, Exception):
            self._on_late_error(ident[0], error)

    async def close(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
