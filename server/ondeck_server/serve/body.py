"""Reading a request body under the server's bounds, for the tensor and the language-model
servers alike: at most `--max-body-bytes`, each chunk within `--header-timeout` of the
last, the whole body within `--body-timeout`. Errors are the tensor protocol's
(PayloadTooLarge 413, RequestTimeout 408, InvalidInput 400); the language-model server
re-shapes them into OpenAI's error body."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ondeck_server.serve.errors import InvalidInput, PayloadTooLarge, RequestTimeout
from ondeck_server.serve.settings import ServeSettings

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


@dataclass(frozen=True)
class BodyLimits:
    limit: int
    idle: float
    total: float

    @classmethod
    def of(cls, settings: ServeSettings) -> BodyLimits:
        return cls(settings.max_body_bytes, settings.header_timeout, settings.body_timeout)


async def read_body(receive: Receive, *, length: int | None, limits: BodyLimits) -> bytes:
    """The whole body: each chunk within `idle` seconds of the last, all of it within
    `total` (a client trickling a byte just inside `idle` would otherwise hold a
    connection and a body buffer for as long as it likes)."""
    if length is not None and length > limits.limit:
        raise PayloadTooLarge(
            f"request body is {length} bytes; this server accepts at most {limits.limit}"
            " (--max-body-bytes)"
        )
    try:
        async with asyncio.timeout(limits.total):
            return await _read_chunks(receive, limit=limits.limit, idle=limits.idle)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {limits.total:g} s (--body-timeout)"
        ) from None


async def _receive(receive: Receive, idle: float) -> Message:
    try:
        async with asyncio.timeout(idle):
            return await receive()
    except TimeoutError:
        raise RequestTimeout(
            f"the request body stalled: no bytes arrived for {idle:g} s (--header-timeout)"
        ) from None


async def _read_chunks(receive: Receive, *, limit: int, idle: float) -> bytes:
    message = await _receive(receive, idle)
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is over {limit} bytes (--max-body-bytes)")
        return body
    chunks, size = [body], len(body)
    while message.get("more_body", False):
        message = await _receive(receive, idle)
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client closed the connection before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)
