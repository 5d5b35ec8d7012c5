"""Whether the server may run requests of different callers in one batch.

Only for a model whose rows are independent (ondeck_server.artifact.batching): the
artifact's manifest says so (`batching.independent`, recorded by the conversion), or,
for a model without that record (a bare model.onnx, an artifact made before ondeck
recorded it), the same empirical check passes here at load: a few rows of very different
magnitudes run as one batch and one by one give the same outputs. Anything else (dynamic
int8, a reduction over the batch axis, a check that cannot run) runs every request on
its own. The decision is logged and exported as `ondeck_batching_enabled{model,reason}`
(1 on, 0 off; `reason` is `independent` or why not).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from ondeck_server import artifact
from ondeck_server.artifact.batching import Batching, Reason, probe_feeds, row_dependence
from ondeck_server.serve.datatypes import Datatype
from ondeck_server.serve.model import ModelInfo
from ondeck_server.serve.runtime import Runtime
from ondeck_server.serve.settings import ServeSettings

log = logging.getLogger("ondeck.server")


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    enabled: bool
    reason: Reason
    detail: str

    def publish(self, registry: CollectorRegistry, model: str) -> None:
        """Log the decision and export it as a metric."""
        gauge = Gauge(
            "ondeck_batching_enabled",
            "1 when requests of different callers may share one model run; `reason` says "
            "why (not).",
            ["model", "reason"],
            registry=registry,
        )
        gauge.labels(model, self.reason.value).set(1 if self.enabled else 0)
        if self.enabled or self.reason in (Reason.NO_BATCH_DIMENSION, Reason.DISABLED):
            log.info("batching across requests %s: %s", self.state, self.detail)
        else:
            log.warning("batching across requests %s: %s", self.state, self.detail)

    @property
    def state(self) -> str:
        return "on" if self.enabled else "off"


def decide(settings: ServeSettings, runtime: Runtime, info: ModelInfo) -> BatchPolicy:
    """Batch across callers only what is known to be batch independent."""
    if not info.batchable:
        return BatchPolicy(
            False, Reason.NO_BATCH_DIMENSION, "the model has no dynamic batch dimension"
        )
    if settings.max_batch_size <= 1:
        return BatchPolicy(False, Reason.DISABLED, "--max-batch-size is 1")
    recorded = _recorded(settings)
    if recorded is not None:
        source = "the artifact's manifest"
        if recorded.independent:
            return BatchPolicy(True, Reason.INDEPENDENT, f"{source}: {recorded.explain()}")
        return BatchPolicy(False, recorded.reason, f"{source}: {recorded.explain()}")
    return _check_at_load(runtime, info)


def _recorded(settings: ServeSettings) -> Batching | None:
    try:
        manifest = artifact.resolve(settings.model).manifest
    except (artifact.ArtifactError, OSError):
        return None
    return manifest.batching if manifest is not None else None


def _check_at_load(runtime: Runtime, info: ModelInfo) -> BatchPolicy:
    where = "no recorded verdict, checked at load"
    if any(spec.datatype is Datatype.BYTES for spec in info.inputs):
        return BatchPolicy(False, Reason.UNCHECKED, f"{where}: BYTES inputs cannot be generated")
    feeds = probe_feeds([(s.name, s.dtype, s.shape) for s in info.inputs])
    names = [s.name for s in info.outputs]

    def run(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = runtime.run(batch)
        return [outputs[name] for name in names]

    try:
        moved = row_dependence(run, feeds, names)
    except Exception as exc:  # the model refused generated inputs: do not guess
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return BatchPolicy(False, Reason.UNCHECKED, f"{where}: the check failed: {first}")
    if moved is not None:
        return BatchPolicy(False, Reason.ROWS_DEPEND_ON_BATCH, f"{where}: {moved}")
    rows = len(next(iter(feeds.values())))
    return BatchPolicy(True, Reason.INDEPENDENT, f"{where}: {rows} rows alone and batched agree")
