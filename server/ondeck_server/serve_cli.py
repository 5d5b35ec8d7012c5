"""`ondeck-server serve`: the command line of the model server, and its process
lifecycle (uvicorn with httptools + uvloop, graceful SIGTERM drain, exit codes).

Exit codes: 0 after a clean shutdown (including a SIGTERM drain), 1 when the server
cannot start or the model cannot load (one line `ErrorType: message` on stderr), 2 for
usage errors. Every flag also reads an `ONDECK_…` environment variable (settings.FLAGS).
The HTTP behaviour itself lives in app.py.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from ondeck_server.settings import FLAGS, ServeSettings

_HELP = {name: field.description or "" for name, field in ServeSettings.model_fields.items()}


def _option(field: str, **kwargs: Any) -> Any:
    flag, env = FLAGS[field]
    return typer.Option(flag, envvar=env, help=_HELP[field], show_envvar=True, **kwargs)


def serve(
    model: Annotated[Path, _option("model")],
    name: Annotated[str | None, _option("name")] = None,
    host: Annotated[str, _option("host")] = "0.0.0.0",
    port: Annotated[int, _option("port")] = 8080,
    max_batch_size: Annotated[int, _option("max_batch_size")] = 32,
    max_delay_ms: Annotated[float, _option("max_delay_ms")] = 2.0,
    threads: Annotated[int | None, _option("threads")] = None,
    auth_token_file: Annotated[Path | None, _option("auth_token_file")] = None,
    auth_token: Annotated[str | None, _option("auth_token", show_default=False)] = None,
    max_body_bytes: Annotated[int, _option("max_body_bytes")] = 64 * 1024 * 1024,
    max_queue: Annotated[int, _option("max_queue")] = 256,
    drain_timeout: Annotated[float, _option("drain_timeout")] = 30.0,
) -> None:
    """Serve one ONNX model over the V2 (Open Inference Protocol) and V1 REST protocols."""
    from pydantic import ValidationError

    from ondeck_server.errors import ServeError

    values = {
        "model": model,
        "name": name,
        "host": host,
        "port": port,
        "max_batch_size": max_batch_size,
        "max_delay_ms": max_delay_ms,
        "threads": threads,
        "auth_token_file": auth_token_file,
        "auth_token": auth_token,
        "max_body_bytes": max_body_bytes,
        "max_queue": max_queue,
        "drain_timeout": drain_timeout,
    }
    try:
        settings = ServeSettings.model_validate(values)
    except ValidationError as exc:
        _die("InvalidSettings", _first_error(exc))
    try:
        code = run(settings)
    except ServeError as exc:
        _die(type(exc).__name__, exc.message)
    raise typer.Exit(code)


def _first_error(exc: Any) -> str:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    flag = FLAGS.get(field, (field, ""))[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{flag}: {message}" if flag else message


def _die(kind: str, message: str) -> None:
    typer.echo(f"{kind}: {message}", err=True)
    raise typer.Exit(1)


def run(settings: ServeSettings) -> int:
    """Serve until SIGTERM/SIGINT (exit code 0) or a model that fails to load (raises)."""
    import uvicorn

    from ondeck_server.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        access_log=False,
        server_header=False,
        # Client addresses are not used: skip uvicorn's X-Forwarded-For middleware.
        proxy_headers=False,
        timeout_graceful_shutdown=max(1, math.ceil(settings.drain_timeout)),
        # Bounded memory: past this many connections + tasks uvicorn answers 503 itself.
        limit_concurrency=max(1024, 4 * settings.max_queue),
        log_config=None,
    )
    server = _server_class()(config, app)
    server.run()
    state = app.state
    if state.fatal is not None:
        raise state.fatal
    return 0


def _server_class() -> Any:
    # uvicorn is imported only when serving, so `--help` stays fast.
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn with ondeck's shutdown: the first SIGTERM/SIGINT drains (not-ready at
        once, in-flight requests finish within --drain-timeout, then a clean exit 0); a
        second one exits at once. A model that fails to load stops the server."""

        def __init__(self, config: uvicorn.Config, app: Any) -> None:
            super().__init__(config)
            self.app = app
            self.drain_deadline: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Not calling super(): uvicorn would re-raise the signal after shutdown,
            # turning a clean drain into death by SIGTERM.
            if self.drain_deadline is not None:
                self.force_exit = True
                self.should_exit = True
                return
            self.drain_deadline = time.monotonic() + self.app.state.settings.drain_timeout
            self.app.state.begin_drain()
            logging.getLogger("ondeck.server").info("draining: finishing requests in flight")

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    print(
                        f"ondeck-server: serving model {self.app.state.source.name!r} on"
                        f" http://{host}:{port}",
                        file=sys.stderr,
                        flush=True,
                    )

        async def on_tick(self, counter: int) -> bool:
            if await super().on_tick(counter):
                return True
            state = self.app.state
            if state.fatal is not None:
                return True
            if self.drain_deadline is None:
                return False
            remaining = self.drain_deadline - time.monotonic()
            if state.inflight == 0 or remaining <= 0:
                # uvicorn takes whole seconds: the last answers get up to 1 s more.
                self.config.timeout_graceful_shutdown = max(1, math.ceil(remaining))
                return True
            return False

    return Server


def register(app: typer.Typer) -> None:
    """Add the `serve` command to the `ondeck-server` CLI."""
    app.command("serve")(serve)
