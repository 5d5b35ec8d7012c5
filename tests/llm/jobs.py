"""Reading an engine job's events in the tests (serve/llm/engine.py's `Job`): all of them
up to its `Finished`, and the text they carry."""

from __future__ import annotations

import asyncio

from ondeck_server.serve.llm.engine import Event, Finished, Job, Piece

BOUND_S = 120.0
"""no job in the tests takes more than a fraction of this, even on a loaded machine"""


async def events(job: Job) -> list[Event]:
    """Every event of `job` up to and including its `Finished`."""
    out: list[Event] = []
    while not out or not isinstance(out[-1], Finished):
        out.append(await asyncio.wait_for(job.events.get(), BOUND_S))
    return out


def text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Piece))


async def job_text(job: Job) -> str:
    """The whole text `job` generated."""
    return text(await events(job))
