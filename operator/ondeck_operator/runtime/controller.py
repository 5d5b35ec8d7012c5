"""The operator's runtime state: watch caches (codec in cache.py), the reconcile queue,
resync, probes, peering (rule in peering.py).

`Controller` holds what one operator process knows: the kopf indices that cache the
ModelDeployments and their children (as compact JSON), the `WorkQueue` of reconcile
requests, its own recent writes (so a reconcile never acts on a cache older than them),
the pods of finished conversion Jobs, the metrics, and the health and metrics servers.
`Controller.reconcile(key)` reads the caches, calls `reconcile.plan()`, and carries the plan
out through `reconcile.execute()` on the Kubernetes client.

What this module does NOT do: register kopf handlers or start kopf (handlers.py), decide
what to apply (reconcile/plan.py) or what status to write (reconcile/status.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ondeck_operator.api.spec import ModelDeployment, SpecError
from ondeck_operator.reconcile.execute import execute
from ondeck_operator.reconcile.facts import WATCHED_KINDS, Observed, pods_needed
from ondeck_operator.reconcile.kinds import (
    CLUSTER_PEERING,
    JOB,
    MODEL_DEPLOYMENT,
    PEERING,
    POD,
    ForbiddenError,
    InvalidError,
    Kind,
    KubeError,
    NotFoundError,
)
from ondeck_operator.reconcile.plan import Plan, invalid_plan, plan, rfc3339
from ondeck_operator.runtime.cache import index_id, trim, unpack
from ondeck_operator.runtime.kube_client import HttpKube, load_configuration
from ondeck_operator.runtime.metrics import Metrics, serve_routes
from ondeck_operator.runtime.peering import is_active_peer
from ondeck_operator.runtime.settings import OperatorSettings
from ondeck_operator.runtime.workqueue import WorkQueue

__all__ = [
    "Controller",
    "Key",
    "default_identity",
    "new_controller",
]

log = logging.getLogger("ondeck.operator")
Key = tuple[str, str]  # namespace, ModelDeployment name
Obj = dict[str, Any]
_EXPECT_SECONDS = 5.0


@dataclass
class Controller:
    """The operator's state for one process: caches, queue, client, metrics."""

    settings: OperatorSettings
    identity: str
    priority: int
    metrics: Metrics = field(default_factory=Metrics)
    kube: HttpKube | None = None
    queue: WorkQueue[Key] | None = None
    indices: dict[str, Any] = field(default_factory=dict)
    phases: dict[Key, str] = field(default_factory=dict)
    pods: dict[Key, tuple[str, tuple[Obj, ...]]] = field(default_factory=dict)
    expectations: dict[Key, dict[tuple[str, str], tuple[str, float]]] = field(default_factory=dict)
    last_resync: float = 0.0
    active: bool = True
    started: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _runners: list[Any] = field(default_factory=list)

    # ------------------------------------------------------------ probes

    def health(self) -> dict[str, Any]:
        """Liveness: the reconcile workers and the resync loop are running."""
        alive = self.started and all(not t.done() for t in self._tasks)
        return {
            "alive": alive,
            "active": self.active,
            "queued": len(self.queue) if self.queue else 0,
            "busy": self.queue.busy if self.queue else 0,
            "lastResync": self.last_resync,
        }

    async def _healthz(self, request: web.Request) -> web.Response:
        report = self.health()
        return web.json_response(report, status=200 if report["alive"] else 500)

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": self.started}, status=200 if self.started else 503)

    # ------------------------------------------------------------ lifecycle

    async def start(self, indices: Mapping[str, Any]) -> None:
        self.indices = dict(indices)
        configuration = load_configuration(self.settings.kubeconfig, self.settings.context)
        self.kube = HttpKube(
            configuration, timeout=self.settings.request_timeout, on_request=self.metrics.on_request
        )
        self.queue = WorkQueue(
            self.reconcile,
            workers=self.settings.workers,
            retry_min=self.settings.retry_min_seconds,
            retry_max=self.settings.retry_max_seconds,
            on_error=self._on_error,
        )
        self._tasks = [
            asyncio.create_task(self.queue.run(), name="ondeck-reconcile-queue"),
            asyncio.create_task(self._resync_loop(), name="ondeck-resync"),
        ]
        if self.settings.metrics_port is not None:
            self._runners.append(
                await self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
            )
        if self.settings.health_port is not None:
            self._runners.append(
                await serve_routes(
                    self.settings.health_host,
                    self.settings.health_port,
                    {"/healthz": self._healthz, "/readyz": self._readyz},
                )
            )
        self.started = True
        self.metrics.active.set(1)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in self._runners:
            await runner.cleanup()
        if self.kube is not None:
            await self.kube.close()

    # ------------------------------------------------------------ events

    def request(self, key: Key, *, delay: float = 0.0) -> None:
        if self.queue is not None:
            self.queue.add(key, delay=delay)
            self.metrics.queue_depth.set(len(self.queue))

    def observe_md(self, event_type: str | None, key: Key, body: Mapping[str, Any]) -> None:
        self._seen(key, MODEL_DEPLOYMENT, key[1], body)
        if event_type == "DELETED":
            self.phases.pop(key, None)
            self.pods.pop(key, None)
            self.expectations.pop(key, None)
            if self.queue is not None:
                self.queue.forget(key)
            self.metrics.set_phases(self.phases.values())
            return
        self.request(key)

    def observe_child(self, kind: Kind, key: Key, body: Mapping[str, Any]) -> None:
        self._seen(key, kind, str(body["metadata"]["name"]), body)
        self.request(key)

    def _seen(self, key: Key, kind: Kind, name: str, body: Mapping[str, Any]) -> None:
        pending = self.expectations.get(key)
        if not pending:
            return
        expected = pending.get((kind.plural, name))
        if expected and expected[0] == (body.get("metadata") or {}).get("resourceVersion"):
            del pending[(kind.plural, name)]

    def _cached_version(self, key: Key, kind: Kind, name: str) -> str | None:
        body = self._body(key) if kind == MODEL_DEPLOYMENT else self.observed(key).named(kind, name)
        version = (body or {}).get("metadata", {}).get("resourceVersion")
        return str(version) if version else None

    def _expect(self, key: Key, kind: Kind, name: str, reply: Mapping[str, Any]) -> None:
        version = (reply.get("metadata") or {}).get("resourceVersion")
        # A write that changed nothing keeps the resourceVersion and makes no watch event:
        # nothing to wait for when the cache already holds that version.
        if version and version != self._cached_version(key, kind, name):
            deadline = time.monotonic() + _EXPECT_SECONDS
            self.expectations.setdefault(key, {})[(kind.plural, name)] = (version, deadline)

    def _waiting(self, key: Key) -> float:
        """Seconds until our own last writes show up in the caches (0: they have)."""
        pending = self.expectations.get(key)
        if not pending:
            return 0.0
        now = time.monotonic()
        for item, (_, deadline) in list(pending.items()):
            if deadline <= now:
                del pending[item]
        return max((d - now for _, d in pending.values()), default=0.0)

    # ------------------------------------------------------------ reconcile

    def observed(self, key: Key) -> Observed:
        children = {}
        for kind in WATCHED_KINDS:
            index = self.indices.get(index_id(kind))
            children[kind] = tuple(unpack(b) for b in index.get(key, ())) if index else ()
        return Observed(children)

    def _body(self, key: Key) -> Obj | None:
        index = self.indices.get(index_id(MODEL_DEPLOYMENT))
        store = list(index.get(key, ())) if index is not None else []
        return unpack(store[0]) if store else None

    async def reconcile(self, key: Key) -> None:
        if self.queue is not None:
            self.metrics.queue_depth.set(len(self.queue))
        body = self._body(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            # Gone, or being deleted (foreground deletion): the garbage collector removes
            # the children; re-creating them now would fight it.
            return
        wait = self._waiting(key)
        if wait > 0:
            # Our last writes are not in the caches yet: their watch events will come and
            # request this key again; the delayed request covers a lost event.
            self.metrics.reconciles.labels(result="skipped").inc()
            self.request(key, delay=wait)
            return
        started = time.perf_counter()
        now = rfc3339(dt.datetime.now(dt.UTC))
        try:
            try:
                md = ModelDeployment.from_manifest(body)
            except SpecError as error:
                decided = invalid_plan(body, error, now=now)
            else:
                observed = await self._with_pods(key, md, self.observed(key))
                decided = plan(md, observed, self.settings.config, now=now)
            try:
                await self._execute(key, decided, now=now)
            except (InvalidError, ForbiddenError) as exc:
                # Will not fix itself by retrying at once: say so in the status, then back off.
                if decided.facts is not None:
                    observed = await self._with_pods(key, md, self.observed(key))
                    failed = plan(md, observed, self.settings.config, now=now, apply_error=str(exc))
                    await self._execute(key, failed, now=now)
                raise
        except Exception:
            self.metrics.reconciles.labels(result="error").inc()
            raise
        finally:
            self.metrics.duration.observe(time.perf_counter() - started)
            if self.queue is not None:
                self.metrics.queue_depth.set(len(self.queue))
        self.metrics.reconciles.labels(result="ok").inc()
        if decided.status.phase is not None:
            self.phases[key] = decided.status.phase.value
            self.metrics.set_phases(self.phases.values())

    async def _with_pods(self, key: Key, md: ModelDeployment, observed: Observed) -> Observed:
        """`observed` plus the pods of the finished conversion Job whose result the plan
        needs: listed once per Job (by uid), then kept until the ModelDeployment goes."""
        job = pods_needed(md, observed)
        if job is None or self.kube is None:
            return observed
        job_meta = (observed.named(JOB, job) or {}).get("metadata", {})
        job_uid = str(job_meta.get("uid", ""))
        cached = self.pods.get(key)
        if cached is None or cached[0] != job_uid:
            # The pod finished before the Job controller marked the Job finished, so a view
            # not older than the Job holds the pod's termination message.
            listed = await self.kube.list(
                POD,
                key[0],
                label_selector=f"batch.kubernetes.io/job-name={job}",
                not_older_than=job_meta.get("resourceVersion"),
            )
            cached = (job_uid, tuple(trim(p, POD) for p in listed))
            if any(p["status"]["containerStatuses"] for p in cached[1]):
                self.pods[key] = cached  # keep it only once it holds a finished container
        return Observed({**observed.children, POD: cached[1]})

    async def _execute(self, key: Key, decided: Plan, *, now: str) -> None:
        assert self.kube is not None
        kube = _Recording(self.kube, self, key)
        await execute(decided, kube, now=now, instance=self.identity)

    def _on_error(self, key: Key, exc: Exception) -> None:
        self.metrics.errors.labels(reason=type(exc).__name__).inc()
        level = logging.WARNING if isinstance(exc, KubeError) else logging.ERROR
        log.log(
            level,
            "reconcile of %s/%s failed (retry in %.0fs): %s",
            key[0],
            key[1],
            self.queue.backoff(key) if self.queue else 0,
            exc,
            exc_info=not isinstance(exc, KubeError),
        )

    # ------------------------------------------------------------ resync

    async def is_active(self) -> bool:
        """Whether this replica is the active peer (always, when not peering)."""
        name = self.settings.peering
        if not name or self.kube is None:
            return True
        now = dt.datetime.now(dt.UTC)
        if self.settings.cluster_wide:
            peering = await self.kube.get(CLUSTER_PEERING, None, name)
            return is_active_peer(peering, identity=self.identity, priority=self.priority, now=now)
        for namespace in self.settings.namespaces:
            peering = await self.kube.get(PEERING, namespace, name)
            if not is_active_peer(peering, identity=self.identity, priority=self.priority, now=now):
                return False
        return True

    async def _resync_loop(self) -> None:
        interval = self.settings.resync_seconds
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            try:
                self.active = await self.is_active()
            except KubeError as exc:
                log.warning("peering check failed, skipping this resync: %s", exc)
                continue
            self.metrics.active.set(1 if self.active else 0)
            if not self.active:
                continue
            index = self.indices.get(index_id(MODEL_DEPLOYMENT))
            keys = list(index.keys()) if index is not None else []
            for key in keys:
                self.request(key)
            self.last_resync = time.time()


class _Recording:
    """The client seen by one reconcile: counts writes and records expectations."""

    def __init__(self, kube: HttpKube, controller: Controller, key: Key) -> None:
        self._kube = kube
        self._controller = controller
        self._key = key

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        return await self._kube.get(kind, namespace, name)

    async def list(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        not_older_than: str | None = None,
    ) -> list[Obj]:
        return await self._kube.list(
            kind, namespace, label_selector=label_selector, not_older_than=not_older_than
        )

    async def apply(self, obj: Obj) -> Obj:
        from ondeck_operator.reconcile.kinds import kind_of

        self._controller.metrics.writes.labels(verb="apply").inc()
        reply = await self._kube.apply(obj)
        self._controller._expect(self._key, kind_of(obj), obj["metadata"]["name"], reply)
        return reply

    async def create(self, obj: Obj) -> Obj:
        from ondeck_operator.reconcile.kinds import ConflictError

        self._controller.metrics.writes.labels(verb="create").inc()
        try:
            reply = await self._kube.create(obj)
        except ConflictError:
            if obj.get("kind") != JOB.kind:
                raise
            return {}  # the Job exists already: created once, by us, earlier
        if obj.get("kind") == JOB.kind:
            self._controller._expect(self._key, JOB, obj["metadata"]["name"], reply)
        return reply

    async def delete(
        self, kind: Kind, namespace: str | None, name: str, *, uid: str | None = None
    ) -> bool:
        self._controller.metrics.writes.labels(verb="delete").inc()
        try:
            return await self._kube.delete(kind, namespace, name, uid=uid)
        except NotFoundError:
            return False

    async def patch_status(self, kind: Kind, namespace: str | None, name: str, patch: Obj) -> Obj:
        self._controller.metrics.writes.labels(verb="status").inc()
        reply = await self._kube.patch_status(kind, namespace, name, patch)
        self._controller._expect(self._key, MODEL_DEPLOYMENT, name, reply)
        return reply


def default_identity() -> str:
    """The pod name in a cluster (POD_NAME), else host-pid-random."""
    import os

    return os.environ.get("POD_NAME") or (
        f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}"
    )


def new_controller(settings: OperatorSettings) -> Controller:
    priority = settings.priority if settings.priority is not None else random.randint(1, 2**30)
    return Controller(
        settings=settings, identity=settings.identity or default_identity(), priority=priority
    )
