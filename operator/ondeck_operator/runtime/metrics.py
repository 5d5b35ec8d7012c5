"""Prometheus metrics of the operator and the small HTTP server that exposes them.

Metrics (all prefixed `ondeck_operator_`):

* `reconciles_total{result}`: reconciles by result (`ok`, `error`, `skipped`);
* `reconcile_errors_total{reason}`: failed reconciles by error class;
* `reconcile_duration_seconds`: histogram of one reconcile (plan + writes);
* `writes_total{verb}`: writes the reconciler made (apply, create, delete, status);
* `api_requests_total{verb,code}`: every API request of the reconciler's client;
* `api_request_duration_seconds{verb}`: histogram of those requests, reply included;
* `modeldeployments{phase}`: ModelDeployments by phase, as last written;
* `queue_depth`: reconciles waiting; `queue_wait_seconds`: histogram of how long a
  requested reconcile waited for a worker; `active`: 1 when this replica is the active peer.

What this module does NOT do: decide anything, or expose kopf's own internals.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ondeck_operator.api.constants import Phase

__all__ = ["Metrics", "serve_routes"]


class Metrics:
    """The operator's metrics in their own registry (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        p = "ondeck_operator_"
        r = self.registry
        self.reconciles = Counter(p + "reconciles", "Reconciles by result.", ["result"], registry=r)
        self.errors = Counter(
            p + "reconcile_errors", "Failed reconciles by error class.", ["reason"], registry=r
        )
        self.duration = Histogram(
            p + "reconcile_duration_seconds",
            "Duration of one reconcile.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.writes = Counter(p + "writes", "Writes by the reconciler.", ["verb"], registry=r)
        self.api_requests = Counter(
            p + "api_requests", "API requests of the reconciler.", ["verb", "code"], registry=r
        )
        self.api_duration = Histogram(
            p + "api_request_duration_seconds",
            "Duration of one API request of the reconciler.",
            ["verb"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds",
            "Time a requested reconcile waited for a worker.",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.phases = Gauge(
            p + "modeldeployments", "ModelDeployments by phase.", ["phase"], registry=r
        )
        self.queue_depth = Gauge(p + "queue_depth", "Reconciles waiting.", registry=r)
        self.active = Gauge(p + "active", "1 when this replica is the active peer.", registry=r)
        for phase in Phase:
            self.phases.labels(phase=phase.value).set(0)

    def on_request(self, verb: str, status: int, seconds: float) -> None:
        self.api_requests.labels(verb=verb, code=str(status)).inc()
        self.api_duration.labels(verb=verb).observe(seconds)

    def set_phases(self, phases: Iterable[str]) -> None:
        tally = Tally(phases)
        for phase in Phase:
            self.phases.labels(phase=phase.value).set(tally.get(phase.value, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, host: str, port: int) -> web.AppRunner:
        """Serve `/metrics` on host:port; the caller cleans the runner up."""

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        return await serve_routes(host, port, {"/metrics": metrics})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve_routes(host: str, port: int, routes: Mapping[str, Handler]) -> web.AppRunner:
    """A small aiohttp server with GET routes; the caller cleans the runner up."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
