"""The ASGI front of the server (`OndeckApp`): checks the bearer token and answers the
two hot routes itself, `POST /v2/models/{name}[/versions/{v}]/infer` and
`POST /v1/models/{name}:predict`: raw body -> orjson -> numpy -> batcher -> orjson ->
bytes, with no routing table, request models or middleware stack in between (those
cost more than the inference of a small model). Everything else goes to the FastAPI
app of routes.py.

A request is admitted (batcher.receiving) before its body is read, so a full server
refuses without holding the body; bodies and results over OFFLOAD_BYTES are decoded and
encoded in one worker thread so the event loop keeps answering probes; a request that
uvicorn cancels at the end of a SIGTERM drain is answered 503 ShuttingDown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import FastAPI

from ondeck_server.serve import v1, v2
from ondeck_server.serve.batching import Batcher
from ondeck_server.serve.body import BodyLimits, read_body
from ondeck_server.serve.errors import (
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ServeError,
    ShuttingDown,
    Unauthorized,
)
from ondeck_server.serve.model import ModelInfo
from ondeck_server.serve.state import ServerState

log = logging.getLogger("ondeck.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Routes that never need a token: probes and scrapes carry none.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
_JSON = (b"content-type", b"application/json")
_BINARY = (b"content-type", b"application/octet-stream")
_HEADER_LENGTH = b"inference-header-content-length"
Response = tuple[int, bytes, list[tuple[bytes, bytes]]]
T = TypeVar("T")

#: Bodies (and results) larger than this are decoded (encoded) in a worker thread, one
#: at a time, so that the event loop, and with it the health probes, keeps answering.
#: Below it the thread hand-off costs more than the work.
OFFLOAD_BYTES = 1 << 20


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _yield_cpu() -> None:
    """Lower this thread's CPU priority (Linux: per-thread nice): on a busy machine the
    event loop thread then gets the CPU first whenever both could run."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _error_response(exc: ServeError) -> Response:
    return exc.status, v2.encode_error(exc.message), [_JSON, *exc.headers]


async def _send_error(send: Send, exc: ServeError) -> None:
    await _send(send, *_error_response(exc))


def _headers(scope: Scope) -> tuple[int | None, int | None]:
    """(content-length, inference-header-content-length) from the request headers."""
    length = header_length = None
    for key, value in scope["headers"]:
        if key == b"content-length":
            length = _int_header(value, "Content-Length")
        elif key == b"inference-header-content-length":
            header_length = _int_header(value, "Inference-Header-Content-Length")
    return length, header_length


def _int_header(value: bytes, name: str) -> int:
    if not value.isdigit():
        raise InvalidInput(
            f"{name} must be a non-negative integer, got {value.decode(errors='replace')!r}"
        )
    return int(value)


def _v2_target(path: str) -> tuple[str, str | None]:
    # /v2/models/{name}/infer or /v2/models/{name}/versions/{v}/infer
    parts = path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    raise ModelNotFound(f"no route POST {path}; use /v2/models/{{name}}/infer")


class OndeckApp:
    """The ASGI application: auth + the two inference routes, the rest to FastAPI."""

    def __init__(self, state: ServerState, api: FastAPI) -> None:
        self.state = state
        self.body_limits = BodyLimits.of(state.settings)
        self.api = api
        # One thread: at most one large body is expanded into Python objects at a time.
        self._codec = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ondeck-codec", initializer=_yield_cpu
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            auth = self.state.auth
            if auth is not None and path not in OPEN_PATHS and not auth.check(scope["headers"]):
                await _send_error(
                    send,
                    Unauthorized(
                        "missing or wrong bearer token: send 'Authorization: Bearer <token>'"
                    ),
                )
                return
            if scope["method"] == "POST":
                if path.startswith("/v2/models/") and path.endswith("/infer"):
                    await self._infer(scope, receive, send, v1_protocol=False)
                    return
                if path.startswith("/v1/models/") and path.endswith(":predict"):
                    await self._infer(scope, receive, send, v1_protocol=True)
                    return
        await self.api(scope, receive, send)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, *, v1_protocol: bool
    ) -> None:
        start = time.perf_counter()
        state = self.state
        state.inflight += 1
        label, status = "", 500
        try:
            try:
                path: str = scope["path"]
                if v1_protocol:
                    name, version = path[len("/v1/models/") : -len(":predict")], None
                else:
                    name, version = _v2_target(path)
                model, batcher = state.target(name, version)
                label = model.name
                status, body, headers = await self._run(model, batcher, scope, receive, v1_protocol)
            except ServeError as exc:
                status, body, headers = _error_response(exc)
            except asyncio.CancelledError:
                # uvicorn cancels the requests still running when a SIGTERM drain ends:
                # they get the protocol's 503 (retryable), not uvicorn's text/plain 500.
                status, body, headers = _error_response(ShuttingDown())
            except Exception as exc:  # a bug of ours: still answer in the protocol's shape
                log.exception("unexpected error while serving %s", scope["path"])
                error = InferenceFailed(f"internal error: {type(exc).__name__}: {exc}")
                status, body, headers = 500, v2.encode_error(error.message), [_JSON]
            await _send(send, status, body, headers)
        finally:
            state.inflight -= 1
            state.metrics.observe_request(
                label, "v1" if v1_protocol else "v2", status, time.perf_counter() - start
            )

    async def _codec_work(self, work: Callable[[], T], size: int) -> T:
        """`work()`, in the codec thread when `size` bytes are over OFFLOAD_BYTES."""
        if size <= OFFLOAD_BYTES:
            return work()
        return await asyncio.get_running_loop().run_in_executor(self._codec, work)

    async def _run(
        self, model: ModelInfo, batcher: Batcher, scope: Scope, receive: Receive, v1_protocol: bool
    ) -> Response:
        """Read, decode, infer and encode one request: (status, body, headers)."""
        length, header_length = _headers(scope)
        # Admission comes first: a full server answers 503 before reading the body.
        with batcher.receiving():
            body = await read_body(receive, length=length, limits=self.body_limits)
            if v1_protocol:
                feeds, rows = await self._codec_work(
                    functools.partial(v1.decode_request, body, model=model), len(body)
                )
            else:
                request = await self._codec_work(
                    functools.partial(
                        v2.decode_request, body, header_length=header_length, model=model
                    ),
                    len(body),
                )
                feeds, rows = request.inputs, request.rows
            del body
        results = await batcher.submit(feeds, rows)
        size = sum(a.nbytes for a in results.values())
        if v1_protocol:
            encode_v1 = functools.partial(
                v1.encode_response, model=model, results=results, rows=rows
            )
            return 200, await self._codec_work(encode_v1, size), [_JSON]
        encode_v2 = functools.partial(
            v2.encode_response,
            model=model,
            request_id=request.id,
            outputs=request.outputs,
            binary=request.binary,
            results=results,
        )
        payload, json_length = await self._codec_work(encode_v2, size)
        if json_length is None:
            return 200, payload, [_JSON]
        return 200, payload, [_BINARY, (_HEADER_LENGTH, str(json_length).encode())]
