"""The HTTP shell: `create_app(settings)` builds the ASGI application that serves one
model over the V2 and V1 protocols.

Two layers, both thin:
- a pure ASGI front (`OndeckApp`) that checks the bearer token and answers the two hot
  routes itself, `POST /v2/models/{name}[/versions/{v}]/infer` and
  `POST /v1/models/{name}:predict`: raw body → orjson → numpy → batcher → orjson →
  bytes, with no routing table, request models or middleware stack in between (those
  cost more than the inference of a small model);
- a FastAPI app for everything else (health, metadata, readiness, metrics), whose
  routes only format what `ServerState` knows.

Loading and warm-up run in the background after start-up, so liveness answers at once
and readiness only once a warm-up inference ran. Decoding, batching, metrics and auth
live in their own modules; this one wires them and turns `ServeError`s into responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ondeck_server import __version__, artifact, v1, v2
from ondeck_server.auth import BearerAuth, load_token
from ondeck_server.batching import Batcher
from ondeck_server.datatypes import Datatype
from ondeck_server.errors import (
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    ServeError,
    StartupError,
    Unauthorized,
)
from ondeck_server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ondeck_server.metrics import Metrics
from ondeck_server.model import ModelInfo
from ondeck_server.runtime import Arrays, OnnxRuntime, Runtime
from ondeck_server.settings import ServeSettings, model_name_for
from ondeck_server.threads import cpu_limit

log = logging.getLogger("ondeck.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SERVER_NAME = "ondeck"
#: Routes that never need a token: probes and scrapes carry none.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
_JSON = (b"content-type", b"application/json")
_BINARY = (b"content-type", b"application/octet-stream")


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """What to serve: the name and version in URLs, and how to load the runtime."""

    name: str
    version: str
    load: Callable[[], Runtime]
    #: onnxruntime intra-op threads (for the log; the loader applies them)
    threads: int = 1


def source_from_settings(settings: ServeSettings) -> ModelSource:
    """Resolve `--model` (file, artifact folder or refs link) to a loadable source."""
    try:
        resolved = artifact.resolve(settings.model)
    except artifact.ArtifactError as exc:
        raise StartupError(str(exc)) from exc
    manifest = resolved.manifest
    name = settings.name or model_name_for(resolved.model_path, manifest.name if manifest else None)
    version = manifest.digest[:12] if manifest else "1"
    threads = settings.threads or cpu_limit()
    path = resolved.model_path
    return ModelSource(
        name=name,
        version=version,
        load=lambda: OnnxRuntime(path, threads=threads),
        threads=threads,
    )


class ServerState:
    """Everything the routes read: the model once loaded, the phase, in-flight count."""

    def __init__(self, settings: ServeSettings, source: ModelSource) -> None:
        self.settings = settings
        self.source = source
        self.metrics = Metrics()
        token = load_token(settings)
        self.auth = BearerAuth(token) if token is not None else None
        self.phase = Phase.LOADING
        self.model: ModelInfo | None = None
        self.batcher: Batcher | None = None
        self.inflight = 0
        self.fatal: ServeError | None = None
        self.metrics.track_inflight(lambda: self.inflight)
        self.metrics.model_ready(source.name, False)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def begin_drain(self) -> None:
        """SIGTERM: report not-ready at once; requests in flight still finish."""
        self.phase = Phase.DRAINING
        self.metrics.model_ready(self.source.name, False)

    def target(self, name: str, version: str | None) -> tuple[ModelInfo, Batcher]:
        if name != self.source.name:
            raise ModelNotFound(
                f"model {name!r} not found; this server serves {self.source.name!r}"
            )
        if version is not None and version != self.source.version:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; it serves version"
                f" {self.source.version!r}"
            )
        if self.model is None or self.batcher is None:
            if self.phase is Phase.FAILED:
                raise ModelNotReady(f"model {name!r} failed to load: {self.fatal}")
            raise ModelNotReady(
                f"model {name!r} is still loading; retry when /v2/health/ready answers 200"
            )
        return self.model, self.batcher

    # ------------------------------------------------------------------ loading
    async def load(self) -> None:
        start = time.perf_counter()
        name = self.source.name
        try:
            runtime = await asyncio.to_thread(self.source.load)
            info = ModelInfo(
                name,
                self.source.version,
                runtime.inputs,
                runtime.outputs,
                max_elements=self.settings.max_tensor_elements,
            )
            rows = self.settings.max_batch_size if info.batchable else 1
            await asyncio.to_thread(warm_up, runtime, info, rows)
            batcher = Batcher(
                runtime,
                max_batch_size=self.settings.max_batch_size,
                max_delay_ms=self.settings.max_delay_ms,
                max_queue=self.settings.max_queue,
                stack=info.batchable,
                observer=self.metrics.batch_observer(name),
            )
            batcher.start()
        except ServeError as exc:
            self._fail(exc)
            return
        except Exception as exc:
            self._fail(StartupError(f"cannot load model {name!r}: {exc}"))
            return
        self.model, self.batcher = info, batcher
        self.metrics.track_queue(name, lambda: batcher.depth)
        seconds = time.perf_counter() - start
        self.metrics.model_loaded(name, seconds)
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
            self.metrics.model_ready(name, True)
        log.info(
            "model %r ready in %.2f s (batching %s, onnxruntime threads %d)",
            name, seconds, "on" if batcher.stack else "off", self.source.threads,
        )  # fmt: skip

    def _fail(self, exc: ServeError) -> None:
        self.phase = Phase.FAILED
        self.fatal = exc
        # The serve command sees `fatal`, stops uvicorn and exits 1 with this message.
        log.error("%s: %s", type(exc).__name__, exc)

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()


def warm_up(runtime: Runtime, info: ModelInfo, rows: int) -> None:
    """Run the model once with one row and, when batching, once with a full batch, so the
    first real requests do not pay for memory arenas and kernel selection. A model with
    dynamic non-batch dimensions gets size 1 there; when that is not a valid input the
    warm-up is skipped with a warning instead of refusing the model."""
    guessed = any(-1 in spec.shape[1:] for spec in info.inputs)
    for count in sorted({1, rows}):
        feeds: Arrays = {}
        for spec in info.inputs:
            shape = [
                count if i == 0 and d == -1 else (1 if d == -1 else d)
                for i, d in enumerate(spec.shape)
            ]
            if spec.datatype is Datatype.BYTES:
                feeds[spec.name] = np.full(shape, "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        try:
            runtime.run(feeds)
        except ServeError as exc:
            if guessed:
                log.warning("warm-up skipped (inputs have dynamic dimensions): %s", exc)
                return
            raise StartupError(f"warm-up inference failed: {exc}") from exc


# ---------------------------------------------------------------------- hot path
async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, exc: ServeError) -> None:
    await _send(send, exc.status, v2.encode_error(exc.message), [_JSON, *exc.headers])


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


async def _read_body(receive: Receive, *, length: int | None, limit: int) -> bytes:
    if length is not None and length > limit:
        raise PayloadTooLarge(
            f"request body is {length} bytes; this server accepts at most {limit}"
            " (--max-body-bytes)"
        )
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is over {limit} bytes (--max-body-bytes)")
        return body
    chunks, size = [body], len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client closed the connection before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


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
        self.api = api

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
        label, code = "", 200
        try:
            path: str = scope["path"]
            if v1_protocol:
                name, version = path[len("/v1/models/") : -len(":predict")], None
            else:
                name, version = _v2_target(path)
            model, batcher = state.target(name, version)
            label = model.name
            length, header_length = _headers(scope)
            limit = state.settings.max_body_bytes
            with batcher.receiving():
                body = await _read_body(receive, length=length, limit=limit)
                if v1_protocol:
                    feeds, rows = v1.decode_request(body, model=model)
                else:
                    request = v2.decode_request(body, header_length=header_length, model=model)
                    feeds, rows = request.inputs, request.rows
            results = await batcher.submit(feeds, rows)
            if v1_protocol:
                await _send(send, 200, v1.encode_response(model=model, results=results), [_JSON])
                return
            payload, json_length = v2.encode_response(
                model=model,
                request_id=request.id,
                outputs=request.outputs,
                binary=request.binary,
                results=results,
            )
            if json_length is None:
                await _send(send, 200, payload, [_JSON])
            else:
                await _send(
                    send, 200, payload,
                    [_BINARY, (b"inference-header-content-length", str(json_length).encode())],
                )  # fmt: skip
        except ServeError as exc:
            code = exc.status
            await _send_error(send, exc)
        except Exception as exc:  # a bug of ours: still answer in the protocol's shape
            log.exception("unexpected error while serving %s", scope["path"])
            code = 500
            await _send_error(send, InferenceFailed(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            state.inflight -= 1
            state.metrics.observe_request(
                label, "v1" if v1_protocol else "v2", code, time.perf_counter() - start
            )


# ---------------------------------------------------------------------- FastAPI part
def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(exc: ServeError) -> Response:
    response = Response(
        v2.encode_error(exc.message), status_code=exc.status, media_type="application/json"
    )
    for key, value in exc.headers:
        response.headers[key.decode()] = value.decode()
    return response


def _build_api(state: ServerState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(state.load(), name="ondeck-load")
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await state.close()

    api = FastAPI(
        title="ondeck model server",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )

    @api.exception_handler(ServeError)
    async def serve_error(_: Request, exc: ServeError) -> Response:
        return _error(exc)

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the routes"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return _json({"error": message}, exc.status_code)

    @api.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return _json({"error": f"invalid request: {exc.errors()[0].get('msg', exc)}"}, 400)

    def metadata(name: str, version: str | None = None) -> Response:
        model, _ = state.target(name, version)
        return Response(model.metadata_json, media_type="application/json")

    def model_ready(name: str, version: str | None = None) -> Response:
        if name != state.source.name:
            state.target(name, version)  # raises the 404
        ready = state.ready
        return _json({"name": name, "ready": ready}, 200 if ready else 503)

    @api.get("/v2/health/live", summary="Liveness: the process answers")
    def live() -> Response:
        return _json({"live": True})

    @api.get("/v2/health/ready", summary="Readiness: the model is loaded and warmed up")
    def ready() -> Response:
        return _json({"ready": state.ready}, 200 if state.ready else 503)

    @api.get("/v2", summary="Server metadata")
    def server_metadata() -> Response:
        return _json(
            {"name": SERVER_NAME, "version": __version__, "extensions": [v2.BINARY_EXTENSION]}
        )

    @api.get("/v2/models/{name}", summary="Model metadata")
    def model_metadata(name: str) -> Response:
        return metadata(name)

    @api.get("/v2/models/{name}/versions/{version}", summary="Model version metadata")
    def model_version_metadata(name: str, version: str) -> Response:
        return metadata(name, version)

    @api.get("/v2/models/{name}/ready", summary="Model readiness")
    def model_ready_route(name: str) -> Response:
        return model_ready(name)

    @api.get("/v2/models/{name}/versions/{version}/ready", summary="Model version readiness")
    def model_version_ready(name: str, version: str) -> Response:
        if version != state.source.version:
            state.target(name, version)  # raises the 404
        return model_ready(name, version)

    @api.get("/v1/models", summary="V1: served models")
    def v1_models() -> Response:
        return _json({"models": [state.source.name]})

    @api.get("/v1/models/{name}", summary="V1: model status")
    def v1_model(name: str) -> Response:
        return model_ready(name)

    @api.get("/metrics", summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    return api


def create_app(settings: ServeSettings, *, source: ModelSource | None = None) -> OndeckApp:
    """Build the ASGI app for `settings`. `source` replaces the model named by
    `settings.model` (tests pass one with a `FunctionRuntime`). Raises `StartupError`
    when the model path or the auth token is unusable; loads nothing yet."""
    state = ServerState(settings, source or source_from_settings(settings))
    return OndeckApp(state, _build_api(state))
