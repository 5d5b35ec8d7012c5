"""Metrics under vLLM's names, labelled `model_name`, so dashboards, KEDA and HPA
queries written for vLLM work unchanged; and the two every ondeck server exports
(`ondeck_requests_total{model, protocol="openai", code}`,
`ondeck_request_duration_seconds{model, protocol}`), so a rollout's analysis judges a
language model's canary the way it judges a tensor model's."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ondeck_server.serve.metrics import request_metrics

PROTOCOL = "openai"

_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
         7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
_ITL = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_E2E = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
        120.0, 240.0, 480.0)  # fmt: skip


class LlmMetrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, label = self.registry, ["model_name"]
        self.model = model
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", label, registry=r,
            buckets=_TTFT,
        ).labels(model)  # fmt: skip
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Time between tokens.", label, registry=r,
            buckets=_ITL,
        ).labels(model)  # fmt: skip
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Request latency.", label, registry=r,
            buckets=_E2E,
        ).labels(model)  # fmt: skip
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds", "Time waiting before decoding.", label,
            registry=r, buckets=_E2E,
        ).labels(model)  # fmt: skip
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed.", label, registry=r
        ).labels(model)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated.", label, registry=r
        ).labels(model)
        self._success = Counter(
            "vllm:request_success",
            "Requests finished.",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self._running = Gauge(
            "vllm:num_requests_running", "Requests decoding.", label, registry=r
        ).labels(model)
        self._waiting = Gauge(
            "vllm:num_requests_waiting", "Requests waiting.", label, registry=r
        ).labels(model)

        self._requests, seconds = request_metrics(r, _E2E)
        self._request_seconds = seconds.labels(model, PROTOCOL)

    def answered(self, code: int, seconds: float) -> None:
        """One completion request answered with `code` (a stream: 200, or 500 when the
        generation failed mid-stream, 499 when the client left first)."""
        self._requests.labels(self.model, PROTOCOL, str(code)).inc()
        self._request_seconds.observe(seconds)

    def watch(self, running: Callable[[], float], waiting: Callable[[], float]) -> None:
        self._running.set_function(running)
        self._waiting.set_function(waiting)

    def finished(self, reason: str) -> None:
        self._success.labels(self.model, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
