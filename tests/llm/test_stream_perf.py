"""The streaming fast paths (engine.py's per-step handoff, app.py's SSE template) give
exactly what the plain paths gave: merged pieces keep every token's text and stamp in
order, and a spliced SSE chunk is byte for byte the encoded dict. No model, no timing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ondeck_server.serve.body import BodyLimits
from ondeck_server.serve.llm import protocol
from ondeck_server.serve.llm.app import _MARK, LlmState, _Run
from ondeck_server.serve.llm.engine import (
    EngineWorker,
    Event,
    Finished,
    Job,
    Piece,
    Sampling,
    _deliver,
)
from ondeck_server.serve.llm.metrics import LlmMetrics

TEXTS = ["plain", ' "quoted" \\ back', "new\nline\ttab", "ünï€ 🐍", "", _MARK, "</s>"]


def _drained(events: list[Event]) -> list[Event]:
    async def go() -> list[Event]:
        job = Job("p", Sampling(max_tokens=4), loop=asyncio.get_running_loop())
        _deliver([(job, e) for e in events])
        return job.drain(await job.events.get())

    return asyncio.run(go())


def test_drain_merges_consecutive_pieces_and_keeps_order() -> None:
    done = Finished("length", 3, 4)
    got = _drained([Piece("a", [1.0]), Piece("b", [2.0, 3.0]), Piece("c", [4.0]), done])
    assert got == [Piece("abc", [1.0, 2.0, 3.0, 4.0]), done]


def test_drain_of_a_lone_event_is_that_event() -> None:
    assert _drained([Finished("stop", 1, 0)]) == [Finished("stop", 1, 0)]


def _run(*, chat: bool, include_usage: bool, name: str) -> _Run:
    state = LlmState(
        name=name,
        worker=EngineWorker(Path("unused"), max_batch=1, max_queue=1, threads=1),
        template=None,
        metrics=LlmMetrics(name),
        auth=None,
        body_limits=BodyLimits(1024, 1.0, 1.0),
    )
    body: dict[str, object] = {"model": name, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    if chat:
        parsed = protocol.parse_chat({**body, "messages": [{"role": "user", "content": "x"}]})
    else:
        parsed = protocol.parse_completion({**body, "prompt": "x"})
    job = Job("x", parsed.sampling, loop=asyncio.new_event_loop())
    return _Run(state, job, parsed, chat=chat)


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("name", ["tiny", _MARK])
def test_a_spliced_text_chunk_is_the_encoded_dict(
    chat: bool, include_usage: bool, name: str
) -> None:
    run = _run(chat=chat, include_usage=include_usage, name=name)
    for text in TEXTS:
        fast = run.text_chunk(text)
        assert fast == run._chunk(text, None)
        data = json.loads(fast.removeprefix(b"data: "))
        choice = data["choices"][0]
        assert (choice["delta"]["content"] if chat else choice["text"]) == text
        assert data["model"] == name
