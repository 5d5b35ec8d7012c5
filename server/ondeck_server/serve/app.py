"""`create_app(settings)`: the ASGI application that serves one model over the V2 and
V1 protocols, wired from its parts: the state (state.py), the hot-path ASGI front
(asgi.py) and the FastAPI routes (routes.py). Loading and warm-up run in the background
after start-up, so liveness answers at once and readiness only once a warm-up inference
ran."""

from __future__ import annotations

from ondeck_server.serve.asgi import OndeckApp
from ondeck_server.serve.routes import build_api
from ondeck_server.serve.settings import ServeSettings
from ondeck_server.serve.state import ModelSource, ServerState, source_from_settings

__all__ = ["ModelSource", "OndeckApp", "create_app"]


def create_app(settings: ServeSettings, *, source: ModelSource | None = None) -> OndeckApp:
    """Build the ASGI app for `settings`. `source` replaces the model named by
    `settings.model` (tests pass one with a `FunctionRuntime`). Raises `StartupError`
    when the model path or the auth token is unusable; loads nothing yet."""
    state = ServerState(settings, source or source_from_settings(settings))
    if settings.shadow_url:
        from ondeck_server.serve.shadow import Shadow, ShadowingApp

        shadow = Shadow(settings.shadow_url, settings.shadow_percent, state.metrics.registry)
        return ShadowingApp(state, build_api(state), shadow)
    return OndeckApp(state, build_api(state))
