"""The HTTP side: OpenAI-compatible routes over the engine worker (engine.py).

Each generation request becomes one `Job`; the handler waits for the worker to admit
it (a prompt past the context or a `max_tokens` that cannot fit is a 400 naming both
lengths), then streams its pieces through the stop-string scanner. A client that goes
away (streaming or not) has its job cancelled at once, which frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ondeck_server.serve.auth import BearerAuth
from ondeck_server.serve.body import BodyLimits, read_body
from ondeck_server.serve.errors import InvalidInput, ServeError
from ondeck_server.serve.llm import protocol
from ondeck_server.serve.llm.chat import ChatTemplate
from ondeck_server.serve.llm.engine import (
    Admitted,
    EngineWorker,
    Finished,
    Job,
    Piece,
    QueueFull,
    Rejected,
    TokenLogprob,
)
from ondeck_server.serve.llm.errors import ApiError
from ondeck_server.serve.llm.metrics import LlmMetrics
from ondeck_server.serve.llm.stops import StopScanner

RETRY_AFTER_S = "1"
_MARK = "\ue000ondeck-text\ue000"
"""stands for the text in the SSE chunk template"""


@dataclass
class LlmState:
    name: str
    worker: EngineWorker
    template: ChatTemplate | None
    metrics: LlmMetrics
    auth: BearerAuth | None
    body_limits: BodyLimits
    defaults: protocol.Defaults = field(default_factory=protocol.Defaults)
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False
    inflight: int = 0

    @property
    def ready(self) -> bool:
        return self.worker.ready.is_set() and self.worker.failed is None and not self.draining


def build_app(state: LlmState) -> Starlette:
    routes: list[Route] = [
        Route("/v2/health/live", _live, methods=["GET"]),
        Route("/v2/health/ready", _ready, methods=["GET"]),
        Route("/health", _ready, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
    ]
    for prefix in ("/v1", "/openai/v1"):
        routes += [
            Route(f"{prefix}/models", _models, methods=["GET"]),
            Route(f"{prefix}/completions", _completions, methods=["POST"]),
            Route(f"{prefix}/chat/completions", _chat, methods=["POST"]),
        ]
    app = Starlette(routes=routes)
    app.state.llm = state
    return app


def _state(request: Request) -> LlmState:
    state: LlmState = request.app.state.llm
    return state


async def _body(state: LlmState, request: Request) -> bytes:
    """The request body under the server's bounds, failures in OpenAI's error shape."""
    length = request.headers.get("content-length")
    try:
        if length is not None and not length.isdigit():
            raise InvalidInput(f"Content-Length must be a non-negative integer, got {length!r}")
        return await read_body(
            request.receive,
            length=int(length) if length is not None else None,
            limits=state.body_limits,
        )
    except ServeError as exc:
        raise ApiError(exc.status, exc.message, code="invalid_body") from None


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def _ready(request: Request) -> Response:
    state = _state(request)
    return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)


async def _metrics(request: Request) -> Response:
    return Response(_state(request).metrics.render(), media_type="text/plain; version=0.0.4")


def _check_auth(state: LlmState, request: Request) -> None:
    if state.auth is not None and not state.auth.check(request.scope["headers"]):
        raise ApiError(
            401,
            "missing or wrong bearer token (Authorization: Bearer <token>; the openai "
            "client's api_key)",
            code="invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="ondeck"'},
        )


async def _models(request: Request) -> Response:
    state = _state(request)
    try:
        _check_auth(state, request)
    except ApiError as exc:
        return _error(exc)
    model = {
        "id": state.name,
        "object": "model",
        "created": state.created,
        "owned_by": "ondeck",
        "max_model_len": state.worker.context,
    }
    return JSONResponse({"object": "list", "data": [model]})


async def _completions(request: Request) -> Response:
    return await _generate(request, chat=False)


async def _chat(request: Request) -> Response:
    return await _generate(request, chat=True)


async def _generate(request: Request, *, chat: bool) -> Response:
    state = _state(request)
    state.inflight += 1
    began = time.monotonic()
    handed_over = False
    try:
        _check_auth(state, request)
        if state.draining:
            raise ApiError(
                503, "the server is shutting down; retry on another replica",
                kind="server_error", code="shutting_down",
                headers={"Retry-After": RETRY_AFTER_S},
            )  # fmt: skip
        if not state.ready:
            raise ApiError(
                503, "the model is still loading", kind="server_error", code="not_ready",
                headers={"Retry-After": RETRY_AFTER_S},
            )  # fmt: skip
        body = protocol.decode_body(await _body(state, request))
        parse = protocol.parse_chat if chat else protocol.parse_completion
        parsed = parse(body, state.defaults)
        if parsed.model != state.name:
            raise protocol.unknown_model(parsed.model)
        if chat:
            if state.template is None:
                raise ApiError(
                    400,
                    "this model has no chat template; use /v1/completions",
                    param="messages",
                    code="no_chat_template",
                )
            prompt: str | list[int] = state.template.render(parsed.messages)
            prompt_param = "messages"
        else:
            prompt, prompt_param = parsed.prompt, "prompt"
        job = Job(
            prompt,
            parsed.sampling,
            loop=asyncio.get_running_loop(),
            prompt_param=prompt_param,
        )
        try:
            state.worker.submit(job)
        except QueueFull as exc:
            raise ApiError(
                429, f"the server is busy ({exc}); retry shortly", kind="rate_limit_error",
                code="queue_full", headers={"Retry-After": RETRY_AFTER_S},
            ) from None  # fmt: skip
        first = await job.events.get()
        if isinstance(first, Rejected):
            raise ApiError(first.status, first.message, param=first.param, code=first.code)
        if isinstance(first, Finished):
            raise ApiError(503, "the request was cancelled", kind="server_error")
        assert isinstance(first, Admitted)
        state.metrics.prompt_tokens.inc(first.prompt_tokens)
        run = _Run(state, job, parsed, chat=chat)
        if parsed.stream:
            handed_over = True
            return _Sse(run.sse(), on_close=lambda: _close(state, run, began))
        answer = await _whole(request, state, run)
        state.metrics.answered(answer.status_code, time.monotonic() - began)
        return answer
    except ApiError as exc:
        state.metrics.answered(exc.status, time.monotonic() - began)
        return _error(exc)
    finally:
        if not handed_over:
            state.inflight -= 1


def _close(state: LlmState, run: _Run, began: float) -> None:
    code = run.status if run.completed else 499
    _abort(state, run)
    state.inflight -= 1
    state.metrics.answered(code, time.monotonic() - began)


def _abort(state: LlmState, run: _Run) -> None:
    """Cancel the job; a job that had not finished counts as `abort` (vLLM's name)."""
    run.job.cancel()
    state.worker.wake()
    if not run.completed:
        run.completed = True
        state.metrics.finished("abort")


async def _whole(request: Request, state: LlmState, run: _Run) -> Response:
    collect = asyncio.ensure_future(run.collect())
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not collect.done():
            _abort(state, run)
            collect.cancel()
        gone.cancel()
    if collect.cancelled():
        return Response(status_code=499)
    return JSONResponse(collect.result())


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _Run:
    """One admitted job's answer, whole or as SSE chunks."""

    def __init__(self, state: LlmState, job: Job, parsed: protocol.Parsed, *, chat: bool):
        self.state = state
        self.job = job
        self.parsed = parsed
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.scanner = StopScanner(parsed.stop)
        self.usage: dict[str, int] = {}
        self.finish_reason = "stop"
        self.completed = False
        self.status = 200
        """what a stream's answer counts as (its HTTP status was 200 before it began)"""
        self._offset = 0
        """characters of completion text the logprobs sent so far cover"""
        # Every text chunk is the same JSON but for the text: encode it once with a marker
        # and splice each piece's JSON string in (bytes equal to encoding the whole dict);
        # the text is the template's last string, after the id and the model's name.
        head, _, tail = self._chunk(_MARK, None).rpartition(json.dumps(_MARK).encode())
        self._text_head, self._text_tail = head, tail

    async def pieces(self) -> AsyncIterator[tuple[str, list[TokenLogprob]]]:
        """The text as it comes (pieces that queued up while the loop was busy come as
        one), with its tokens' log-probabilities when asked for; sets usage and
        finish_reason at the end."""
        metrics = self.state.metrics
        last: float | None = None
        stopped = False
        while True:
            for event in self.job.drain(await self.job.events.get()):
                if isinstance(event, Piece):
                    # engine-side stamps: what the engine did, not when this loop got to it
                    for at in event.tokens:
                        if last is None:
                            metrics.ttft.observe(at - self.job.submitted_at)
                            if self.job.started_at is not None:
                                metrics.queue_time.observe(
                                    self.job.started_at - self.job.submitted_at
                                )
                        else:
                            metrics.itl.observe(at - last)
                        last = at
                    if stopped:
                        continue
                    text, stopped = self.scanner.feed(event.text)
                    if text or event.logprobs:
                        yield text, event.logprobs
                    if stopped:
                        self.job.cancel()
                        self.state.worker.wake()
                elif isinstance(event, Finished):
                    self.completed = True
                    if not stopped:
                        tail = self.scanner.flush()
                        if tail:
                            yield tail, []
                    if event.reason == "error":
                        raise ApiError(
                            500, f"generation failed: {event.message}", kind="server_error"
                        )
                    self.finish_reason = "stop" if stopped or event.reason != "length" else "length"
                    self.usage = {
                        "prompt_tokens": event.prompt_tokens,
                        "completion_tokens": event.completion_tokens,
                        "total_tokens": event.prompt_tokens + event.completion_tokens,
                    }
                    metrics.generation_tokens.inc(event.completion_tokens)
                    metrics.e2e.observe(time.monotonic() - self.job.submitted_at)
                    metrics.finished(self.finish_reason)
                    return

    async def collect(self) -> dict[str, Any]:
        texts: list[str] = []
        logprobs: list[TokenLogprob] = []
        async for text, some in self.pieces():
            texts.append(text)
            logprobs += some
        text = "".join(texts)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": self._logprobs(logprobs),
                "finish_reason": self.finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": self._logprobs(logprobs),
                "finish_reason": self.finish_reason,
            }
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.state.name,
            "choices": [choice],
            "usage": self.usage,
        }

    def _chunk(
        self,
        delta: str | None,
        finish: str | None,
        *,
        role: bool = False,
        logprobs: list[TokenLogprob] | None = None,
    ) -> bytes:
        lp = self._logprobs(logprobs) if logprobs is not None else None
        if self.chat:
            content: dict[str, Any] = {}
            if role:
                content["role"] = "assistant"
            if delta is not None:
                content["content"] = delta
            choice: dict[str, Any] = {
                "index": 0, "delta": content, "logprobs": lp, "finish_reason": finish,
            }  # fmt: skip
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": lp, "finish_reason": finish}
        return self._event({"choices": [choice]})

    def _logprobs(self, tokens: list[TokenLogprob]) -> dict[str, Any] | None:
        """OpenAI's logprobs object: chat's `content` list, or the completions API's
        parallel lists (`text_offset` counts characters from the completion's start)."""
        if self.parsed.sampling.logprobs is None:
            return None
        if self.chat:
            return {
                "content": [
                    {
                        **_token(t.token, t.logprob),
                        "top_logprobs": [_token(text, lp) for text, lp in t.top],
                    }
                    for t in tokens
                ]
            }
        offsets = []
        for t in tokens:
            offsets.append(self._offset)
            self._offset += len(t.token)
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [_finite(t.logprob) for t in tokens],
            "top_logprobs": [{text: _finite(lp) for text, lp in t.top} for t in tokens],
            "text_offset": offsets,
        }

    def _event(self, extra: dict[str, Any]) -> bytes:
        data = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.state.name,
            **extra,
        }
        if self.parsed.include_usage and "usage" not in data:
            data["usage"] = None
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    def text_chunk(self, piece: str) -> bytes:
        """`_chunk(piece, None)`, without building and encoding the whole dict."""
        return self._text_head + json.dumps(piece).encode() + self._text_tail

    async def sse(self) -> AsyncIterator[bytes]:
        if self.chat:
            yield self._chunk("", None, role=True)
        plain = self.parsed.sampling.logprobs is None
        try:
            async for piece, logprobs in self.pieces():
                if plain:
                    yield self.text_chunk(piece)
                else:
                    yield self._chunk(piece, None, logprobs=logprobs)
        except ApiError as exc:
            self.status = exc.status
            yield b"data: " + json.dumps(exc.body()).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        yield self._chunk(None if self.chat else "", self.finish_reason)
        if self.parsed.include_usage:
            yield self._event({"choices": [], "usage": self.usage})
        yield b"data: [DONE]\n\n"


LOGPROB_FLOOR = -9999.0
"""what a log-probability of -inf (a token with probability 0) is sent as: JSON has no
infinities (vLLM does the same)"""


def _finite(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


def _token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode())}


class _Sse(Response):
    """A server-sent-event answer that notices a client going away at once (not at the
    next write) and always calls `on_close`, which cancels the job."""

    def __init__(self, chunks: AsyncIterator[bytes], *, on_close: Callable[[], None]) -> None:
        super().__init__(media_type="text/event-stream")
        self.chunks = chunks
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        writer = asyncio.ensure_future(pump())
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({writer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.on_close()
            gone.cancel()
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
            with contextlib.suppress(BaseException):
                await self.chunks.aclose()  # type: ignore[attr-defined]
