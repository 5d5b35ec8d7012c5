"""Writes: a slow child write goes on in the background; a second write of the same
object joins the running one; a kind with slots waits for one; late failures are handed on."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

import pytest

from ondeck_operator.reconcile.kinds import JOB, SERVICE, Kind
from ondeck_operator.runtime.writes import Writes

Obj = dict[str, Any]


def _writes(
    replies: list[tuple[Hashable, str, str]], errors: list[str], *, slots: int = 4
) -> Writes:
    def on_reply(key: Hashable, kind: Kind, name: str, reply: Obj) -> None:
        replies.append((key, kind.plural, name))

    def on_late_error(key: Hashable, exc: Exception) -> None:
        errors.append(f"{key}: {exc}")

    return Writes(wait=0.05, slots={SERVICE: slots}, on_reply=on_reply, on_late_error=on_late_error)


def test_a_fast_write_answers_and_a_slow_one_goes_on_in_the_background() -> None:
    replies: list[tuple[Hashable, str, str]] = []
    errors: list[str] = []
    calls: list[str] = []

    async def main() -> None:
        writes = _writes(replies, errors)

        async def fast() -> Obj:
            calls.append("fast")
            return {"metadata": {"resourceVersion": "1"}}

        async def slow() -> Obj:
            calls.append("slow")
            await asyncio.sleep(0.2)
            return {"metadata": {"resourceVersion": "2"}}

        assert await writes.run("k", JOB, "job", fast) == {"metadata": {"resourceVersion": "1"}}
        assert await writes.run("k", SERVICE, "svc", slow) is None
        assert len(writes) == 1
        # The same object again while its write runs: joined, not sent twice.
        assert await writes.run("k", SERVICE, "svc", slow) is None
        await asyncio.sleep(0.25)
        assert len(writes) == 0
        await writes.close()

    asyncio.run(main())
    assert calls == ["fast", "slow"]
    assert replies == [("k", "jobs", "job"), ("k", "services", "svc")]
    assert errors == []


def test_errors_in_time_are_raised_and_late_ones_are_handed_on() -> None:
    replies: list[tuple[Hashable, str, str]] = []
    errors: list[str] = []

    async def main() -> None:
        writes = _writes(replies, errors)

        async def refused() -> Obj:
            raise ValueError("refused")

        async def refused_later() -> Obj:
            await asyncio.sleep(0.1)
            raise ValueError("refused later")

        with pytest.raises(ValueError, match="refused"):
            await writes.run("k", JOB, "job", refused)
        assert await writes.run("k", SERVICE, "svc", refused_later) is None
        await asyncio.sleep(0.15)
        await writes.close()

    asyncio.run(main())
    assert replies == []
    assert errors == ["k: refused later"]


def test_a_kind_with_slots_has_at_most_that_many_writes_in_flight() -> None:
    in_flight: list[int] = []
    current = 0

    async def main() -> None:
        writes = _writes([], [], slots=2)

        async def service() -> Obj:
            nonlocal current
            current += 1
            in_flight.append(current)
            await asyncio.sleep(0.02)
            current -= 1
            return {}

        await asyncio.gather(*(writes.run(f"k{i}", SERVICE, "svc", service) for i in range(6)))
        await asyncio.sleep(0.1)
        await writes.close()

    asyncio.run(main())
    assert len(in_flight) == 6
    assert max(in_flight) == 2
