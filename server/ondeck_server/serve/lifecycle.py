"""The serving process: uvicorn (httptools + uvloop, access log off) around the app
from `create_app`, with ondeck's start-up and shutdown rules:

- the address is bound before anything starts (a taken port raises `PortInUse`); the
  line `ondeck-server: serving model 'NAME' on http://HOST:PORT` is printed once the
  model is loaded and warmed up (`--port 0` picks a free port), so a model that cannot
  load prints nothing before its error;
- the first SIGTERM/SIGINT drains: readiness turns 503 at once, the listener stays
  open while requests are in flight; when none is left or `--drain-timeout` passed,
  uvicorn stops accepting, finishes the answers being written and the process exits 0.
  A second signal exits at once;
- a model that fails to load stops the server; `run` raises its `StartupError`.

Imports uvicorn, so only the `serve` command imports this module. It parses no
arguments (serve_cli.py does) and knows nothing of the protocols (app.py does).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from types import FrameType

import uvicorn

from ondeck_server.serve.app import OndeckApp, create_app
from ondeck_server.serve.connections import (
    announce,
    listen,
    quiet_logging,
    uvicorn_config,
)
from ondeck_server.serve.settings import ServeSettings

log = logging.getLogger("ondeck.server")


def run(settings: ServeSettings) -> int:
    """Serve until SIGTERM/SIGINT (returns 0) or a model that fails to load (raises)."""
    quiet_logging()
    # Large bodies are decoded in a worker thread (asgi.py); every I/O callback of the
    # event loop then waits for that thread to hand over the GIL, by default after 5 ms.
    # 1 ms keeps the loop (and the health probes) responsive at a small cost in switches.
    sys.setswitchinterval(0.001)
    app = create_app(settings)
    sock = listen(settings)
    config = uvicorn_config(app, settings, lifespan="on")
    OndeckServer(config, app).run(sockets=[sock])
    if app.state.fatal is not None:
        raise app.state.fatal
    return 0


class OndeckServer(uvicorn.Server):
    """uvicorn.Server with the drain and fatal-load rules above."""

    def __init__(self, config: uvicorn.Config, app: OndeckApp) -> None:
        super().__init__(config)
        self.app = app
        self.drain_deadline: float | None = None
        self.announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super(): uvicorn would re-raise the signal after its shutdown,
        # turning a clean drain into death by SIGTERM (exit code -15, not 0).
        if self.drain_deadline is not None:
            self.force_exit = True
            self.should_exit = True
            return
        self.drain_deadline = time.monotonic() + self.app.state.settings.drain_timeout
        self.app.state.begin_drain()
        log.info("draining: finishing requests in flight")

    async def on_tick(self, counter: int) -> bool:
        """Called by uvicorn every 0.1 s; True stops the server."""
        if await super().on_tick(counter):
            return True
        state = self.app.state
        if state.fatal is not None:
            return True
        if not self.announced and state.ready:
            self.announced = True
            announce(state.source.name, self.servers)
        if self.drain_deadline is None:
            return False
        remaining = self.drain_deadline - time.monotonic()
        if remaining <= 0 and state.batcher is not None:
            # Requests still waiting will not run: answer them 503 + Retry-After now
            # (and any that still arrive); the batch running gets uvicorn's last second.
            state.batcher.close()
        if state.inflight == 0 or remaining <= 0:
            # uvicorn takes whole seconds: the last answers get up to 1 s more.
            self.config.timeout_graceful_shutdown = max(1, math.ceil(remaining))
            return True
        return False
