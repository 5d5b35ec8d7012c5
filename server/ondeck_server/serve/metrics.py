"""Prometheus metrics: the one place their names, labels and buckets are defined.

| metric | type | labels |
|---|---|---|
| `ondeck_requests_total` | counter | model, protocol (v1/v2), code |
| `ondeck_request_duration_seconds` | histogram | model, protocol |
| `ondeck_inference_duration_seconds` | histogram | model |
| `ondeck_batch_size` | histogram (rows per run) | model |
| `ondeck_queue_depth` | gauge (requests waiting) | model |
| `ondeck_inflight_requests` | gauge (inference requests in progress) | — |
| `ondeck_model_load_seconds` | gauge (load + warm-up) | model |
| `ondeck_model_ready` | gauge (1 ready, 0 not) | model |

Each app gets its own registry, so several apps in one process (tests) never collide.
Requests for unknown model names are counted under model="" (names from URLs would
let any client create unbounded label values). This module records; it serves nothing.

`counters(model)` reads the same series back for Triton's statistics route (triton.py):
requests by outcome from `ondeck_requests_total`, rows and runs from `ondeck_batch_size`.
The one thing Prometheus does not hold is the time of successful and failed requests
apart (the duration histogram has no `code` label): each request series adds its
seconds to a plain float next to its counter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: what a rollout's analysis reads from every server, tensor or language model
REQUESTS_METRIC = "ondeck_requests"
REQUEST_DURATION_METRIC = "ondeck_request_duration_seconds"

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _RequestSeries:
    """The label children of one (model, protocol, code), looked up once, and the
    seconds its requests took."""

    __slots__ = ("count", "duration", "seconds")

    def __init__(self, count: Counter, duration: Histogram) -> None:
        self.count = count
        self.duration = duration
        self.seconds = 0.0


@dataclass(frozen=True, slots=True)
class ModelCounters:
    """One model's totals since start-up, in Triton's units."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    #: rows run (a request of 3 rows counts 3)
    inference_count: int = 0
    #: onnxruntime runs (a batch of several requests counts 1)
    execution_count: int = 0
    #: milliseconds since the epoch of the last successful run; 0 before the first
    last_inference_ms: int = 0


def request_metrics(
    registry: CollectorRegistry, buckets: tuple[float, ...]
) -> tuple[Counter, Histogram]:
    """`ondeck_requests_total{model, protocol, code}` and
    `ondeck_request_duration_seconds{model, protocol}`: what a rollout's analysis reads
    from every ondeck server, tensor or language model."""
    requests = Counter(
        REQUESTS_METRIC, "Inference requests answered.", ["model", "protocol", "code"],
        registry=registry,
    )  # fmt: skip
    seconds = Histogram(
        REQUEST_DURATION_METRIC,
        "Time from receiving an inference request to sending its answer (a stream: its last byte).",
        ["model", "protocol"],
        buckets=buckets,
        registry=registry,
    )
    return requests, seconds


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests, self._request_seconds = request_metrics(r, _LATENCY_BUCKETS)
        self._inference_seconds = Histogram(
            "ondeck_inference_duration_seconds",
            "Time of one onnxruntime run (one batch).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._batch_size = Histogram(
            "ondeck_batch_size", "Rows per onnxruntime run.", ["model"],
            buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self._queue_depth = Gauge(
            "ondeck_queue_depth", "Requests waiting for inference.", ["model"], registry=r
        )
        self._inflight = Gauge(
            "ondeck_inflight_requests", "Inference requests in progress.", registry=r
        )
        self._load_seconds = Gauge(
            "ondeck_model_load_seconds", "Seconds to load and warm up the model.", ["model"],
            registry=r,
        )  # fmt: skip
        self._ready = Gauge("ondeck_model_ready", "1 when the model serves.", ["model"], registry=r)
        # Label children are looked up once, not on every request.
        self._request_series: dict[tuple[str, str, int], _RequestSeries] = {}
        self._last_inference: dict[str, float] = {}

    def observe_request(self, model: str, protocol: str, code: int, seconds: float) -> None:
        key = (model, protocol, code)
        series = self._request_series.get(key)
        if series is None:
            series = _RequestSeries(
                self._requests.labels(model, protocol, str(code)),
                self._request_seconds.labels(model, protocol),
            )
            self._request_series[key] = series
        series.count.inc()
        series.duration.observe(seconds)
        series.seconds += seconds

    def batch_observer(self, model: str) -> Callable[[int, float], None]:
        size = self._batch_size.labels(model)
        seconds = self._inference_seconds.labels(model)
        last = self._last_inference

        def observe(rows: int, elapsed: float) -> None:
            size.observe(rows)
            seconds.observe(elapsed)
            last[model] = time.time()

        return observe

    def counters(self, model: str) -> ModelCounters:
        """`model`'s totals, read from the series above (not the hot path)."""
        counts = {
            (s.labels["protocol"], int(s.labels["code"])): s.value
            for metric in self._requests.collect()
            for s in metric.samples
            if s.name == "ondeck_requests_total" and s.labels["model"] == model
        }
        ok_count = fail_count = 0
        ok_seconds = fail_seconds = 0.0
        for (name, protocol, code), series in list(self._request_series.items()):
            if name != model:
                continue
            count = int(counts.get((protocol, code), 0))
            if code == 200:
                ok_count, ok_seconds = ok_count + count, ok_seconds + series.seconds
            else:
                fail_count, fail_seconds = fail_count + count, fail_seconds + series.seconds
        batches = {
            s.name: s.value
            for metric in self._batch_size.collect()
            for s in metric.samples
            if s.labels.get("model") == model
        }
        return ModelCounters(
            success_count=ok_count,
            success_ns=round(ok_seconds * 1e9),
            fail_count=fail_count,
            fail_ns=round(fail_seconds * 1e9),
            inference_count=int(batches.get("ondeck_batch_size_sum", 0)),
            execution_count=int(batches.get("ondeck_batch_size_count", 0)),
            last_inference_ms=round(self._last_inference.get(model, 0.0) * 1000),
        )

    def track_queue(self, model: str, depth: Callable[[], float]) -> None:
        self._queue_depth.labels(model).set_function(depth)

    def track_inflight(self, count: Callable[[], float]) -> None:
        self._inflight.set_function(count)

    def model_loaded(self, model: str, seconds: float) -> None:
        self._load_seconds.labels(model).set(seconds)

    def model_ready(self, model: str, ready: bool) -> None:
        self._ready.labels(model).set(1 if ready else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
