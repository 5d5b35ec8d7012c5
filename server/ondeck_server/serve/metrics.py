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
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "ondeck_requests", "Inference requests answered.", ["model", "protocol", "code"],
            registry=r,
        )  # fmt: skip
        self._request_seconds = Histogram(
            "ondeck_request_duration_seconds",
            "Time from receiving an inference request to sending its answer.",
            ["model", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
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
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, model: str, protocol: str, code: int, seconds: float) -> None:
        key = (model, protocol, code)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self._requests.labels(model, protocol, str(code)),
                self._request_seconds.labels(model, protocol),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def batch_observer(self, model: str) -> Callable[[int, float], None]:
        size = self._batch_size.labels(model)
        seconds = self._inference_seconds.labels(model)

        def observe(rows: int, elapsed: float) -> None:
            size.observe(rows)
            seconds.observe(elapsed)

        return observe

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
