"""The FastAPI app for every route but the two hot ones: health, server and model
metadata, readiness, V1 model status, Triton's model configuration, statistics and
repository index (triton.py), and Prometheus metrics. Routes only format what
`ServerState` knows; the lifespan starts the background model load."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ondeck_server import __version__
from ondeck_server.serve import triton, v2
from ondeck_server.serve.errors import InvalidInput, ServeError
from ondeck_server.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ondeck_server.serve.state import ServerState

SERVER_NAME = "ondeck"


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(exc: ServeError) -> Response:
    response = Response(
        v2.encode_error(exc.message), status_code=exc.status, media_type="application/json"
    )
    for key, value in exc.headers:
        response.headers[key.decode()] = value.decode()
    return response


def build_api(state: ServerState) -> FastAPI:
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

    def config(name: str, version: str | None = None) -> Response:
        model, batcher = state.target(name, version)
        settings = state.settings
        return _json(
            triton.model_config(
                model,
                max_batch_size=settings.max_batch_size,
                stacked=batcher.stack,
                max_delay_ms=settings.max_delay_ms,
            )
        )

    def stats(name: str | None = None, version: str | None = None) -> Response:
        if name is not None:
            state.check(name, version)
        source = state.source
        counters = state.metrics.counters(source.name)
        return _json({"model_stats": [triton.model_stats(source.name, source.version, counters)]})

    # Before /v2/models/{name}, which would take "stats" for a model name.
    @api.get("/v2/models/stats", summary="Triton: statistics of every model")
    def all_stats() -> Response:
        return stats()

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

    @api.get("/v2/models/{name}/config", summary="Triton: model configuration")
    def model_config(name: str) -> Response:
        return config(name)

    @api.get(
        "/v2/models/{name}/versions/{version}/config", summary="Triton: model version configuration"
    )
    def model_version_config(name: str, version: str) -> Response:
        return config(name, version)

    @api.get("/v2/models/{name}/stats", summary="Triton: model statistics")
    def model_stats(name: str) -> Response:
        return stats(name)

    @api.get(
        "/v2/models/{name}/versions/{version}/stats", summary="Triton: model version statistics"
    )
    def model_version_stats(name: str, version: str) -> Response:
        return stats(name, version)

    @api.post("/v2/repository/index", summary="Triton: the models this server has")
    async def repository_index(request: Request) -> Response:
        body = await request.body()
        try:
            ask = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the body is not JSON: {exc}") from None
        if not isinstance(ask, dict) or not isinstance(ask.get("ready", False), bool):
            raise InvalidInput('the body must be empty or {"ready": true|false}')
        if ask.get("ready", False) and not state.ready:
            return _json([])
        source = state.source
        reason = str(state.fatal) if state.fatal is not None else ""
        return _json([triton.index_entry(source.name, source.version, state.phase, reason)])

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
