"""What the server knows about its one model: where it comes from (`ModelSource`), the
phase (loading, ready, draining, failed), the loaded model and its batcher, requests in
flight, and the background load with its warm-up. The HTTP layers (asgi.py, routes.py)
only read and format this state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from ondeck_server import artifact
from ondeck_server.serve import batch_policy
from ondeck_server.serve.auth import BearerAuth, load_token
from ondeck_server.serve.batching import Batcher
from ondeck_server.serve.datatypes import Datatype
from ondeck_server.serve.errors import ModelNotFound, ModelNotReady, ServeError, StartupError
from ondeck_server.serve.metrics import Metrics
from ondeck_server.serve.model import ModelInfo
from ondeck_server.serve.runtime import Arrays, OnnxRuntime, Runtime
from ondeck_server.serve.settings import ServeSettings, model_name_for, ref_name
from ondeck_server.serve.threads import cpu_limit

log = logging.getLogger("ondeck.server")


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
    name = settings.name or model_name_for(
        resolved.model_path,
        manifest.name if manifest else None,
        ref=ref_name(settings.model),
    )
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

    def check(self, name: str, version: str | None) -> None:
        """Raise ModelNotFound unless `name` (and `version`, when given) is the model served."""
        if name != self.source.name or (version is not None and version != self.source.version):
            raise self._not_found(name, version)

    def target(self, name: str, version: str | None) -> tuple[ModelInfo, Batcher]:
        # Inline, not check(): this runs for every inference request.
        if name != self.source.name or (version is not None and version != self.source.version):
            raise self._not_found(name, version)
        if self.model is None or self.batcher is None:
            if self.phase is Phase.FAILED:
                raise ModelNotReady(f"model {name!r} failed to load: {self.fatal}")
            raise ModelNotReady(
                f"model {name!r} is still loading; retry when /v2/health/ready answers 200"
            )
        return self.model, self.batcher

    def _not_found(self, name: str, version: str | None) -> ModelNotFound:
        if name != self.source.name:
            return ModelNotFound(
                f"model {name!r} not found; this server serves {self.source.name!r}"
            )
        return ModelNotFound(
            f"model {name!r} has no version {version!r}; it serves version {self.source.version!r}"
        )

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
            # Across callers only for batch-independent models (batch_policy.py).
            policy = await asyncio.to_thread(batch_policy.decide, self.settings, runtime, info)
            policy.publish(self.metrics.registry, name)
            rows = self.settings.max_batch_size if policy.enabled else 1
            await asyncio.to_thread(warm_up, runtime, info, rows)
            batcher = Batcher(
                runtime,
                max_batch_size=self.settings.max_batch_size,
                max_delay_ms=self.settings.max_delay_ms,
                max_queue=self.settings.max_queue,
                stack=policy.enabled,
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
        # The serve command sees `fatal`, stops uvicorn and prints this message as its
        # one line before exiting 1 (logging it here too would print it twice).
        self.fatal = exc

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
