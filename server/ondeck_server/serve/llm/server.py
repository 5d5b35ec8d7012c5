"""`ondeck-server serve` for a language-model artifact: load the engine (on its own
thread), warm it up, serve under uvicorn; SIGTERM drains.

- the address is bound first (a taken port raises `PortInUse`); ready
  (`/v2/health/ready`) only after a warm-up generation ran, and only then the line
  `ondeck-server: serving model 'NAME' on http://HOST:PORT`;
- the first SIGTERM/SIGINT: not ready at once, new requests 503 + Retry-After, streams in
  flight finish for at most `--drain-timeout` seconds; then every job left is cancelled,
  the engine thread stops and the process exits 0. A second signal exits at once. The
  engine thread is a daemon: it can never keep the process alive.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import FrameType

import uvicorn

from ondeck_server import artifact
from ondeck_server.serve import auth
from ondeck_server.serve.body import BodyLimits
from ondeck_server.serve.connections import (
    announce,
    listen,
    quiet_logging,
    uvicorn_config,
)
from ondeck_server.serve.errors import InferenceFailed, StartupError
from ondeck_server.serve.llm import chat, protocol
from ondeck_server.serve.llm.app import LlmState, build_app
from ondeck_server.serve.llm.engine import EngineWorker
from ondeck_server.serve.llm.metrics import LlmMetrics
from ondeck_server.serve.settings import ServeSettings, model_name_for, ref_name

log = logging.getLogger("ondeck.llm")


def run(settings: ServeSettings) -> int:
    quiet_logging()
    folder = Path(settings.model).resolve()
    manifest = None
    if (folder / artifact.MANIFEST_FILE).is_file():
        try:
            manifest = artifact.read_manifest(folder)
        except artifact.ArtifactError as exc:
            raise StartupError(str(exc)) from None
    genai = folder / artifact.GENAI_DIR
    name = settings.name or model_name_for(
        folder, manifest.name if manifest else None, ref=ref_name(Path(settings.model))
    )
    token = auth.load_token(settings)
    worker = EngineWorker(
        genai,
        max_batch=settings.max_batch_size,
        max_queue=settings.max_queue,
        threads=settings.threads or 1,
        max_context=settings.max_context_length,
    )
    metrics = LlmMetrics(name)
    metrics.watch(lambda: worker.running, lambda: worker.waiting)
    state = LlmState(
        name=name,
        worker=worker,
        template=chat.load(genai),
        metrics=metrics,
        auth=auth.BearerAuth(token) if token else None,
        body_limits=BodyLimits.of(settings),
        defaults=defaults(settings),
    )
    app = build_app(state)
    sock = listen(settings)
    worker.start()
    config = uvicorn_config(app, settings, lifespan="off")
    server = LlmServer(config, state, drain_timeout=settings.drain_timeout)
    server.run(sockets=[sock])
    worker.stop(timeout=5.0)
    if worker.failed is not None:
        if worker.serving:
            raise InferenceFailed(
                f"the language model's engine failed while serving: {worker.failed}"
            )
        raise StartupError(f"the language model failed to load: {worker.failed}")
    return 0


class LlmServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: LlmState, *, drain_timeout: float):
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self.drain_deadline: float | None = None
        self.cancelled_at: float | None = None
        self.announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_deadline is not None:
            self.force_exit = True
            self.should_exit = True
            return
        self.drain_deadline = time.monotonic() + self.drain_timeout
        self.state.draining = True
        log.info("draining: finishing %d requests in flight", self.state.inflight)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        worker = self.state.worker
        if worker.failed is not None:
            return True
        if worker.ready.is_set() and not self.announced:
            self.announced = True
            log.info("ready: model %r warmed up (context %d)", self.state.name, worker.context)
            announce(self.state.name, self.servers)
        if self.drain_deadline is None:
            return False
        now = time.monotonic()
        if self.state.inflight == 0:
            self.config.timeout_graceful_shutdown = 1
            return True
        if now >= self.drain_deadline:
            if self.cancelled_at is None:
                self.cancelled_at = now
                worker.cancel_all()  # streams end now (finish_reason length)
            # one more second for the cancelled streams to write their last chunk
            if now - self.cancelled_at >= 1.0:
                self.config.timeout_graceful_shutdown = 1
                return True
        return False


def defaults(settings: ServeSettings) -> protocol.Defaults:
    """The sampling a request that sets none gets: `--default-*`, else OpenAI's."""
    base = protocol.Defaults()
    return protocol.Defaults(
        temperature=(
            base.temperature
            if settings.default_temperature is None
            else settings.default_temperature
        ),
        top_p=base.top_p if settings.default_top_p is None else settings.default_top_p,
        top_k=base.top_k if settings.default_top_k is None else settings.default_top_k,
        max_tokens=settings.default_max_tokens,
    )
