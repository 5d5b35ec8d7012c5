"""The operator's runtime state: watch caches (codec in cache.py), the reconcile queue,
resync, probes, peering (rule in peering.py).

`Controller` holds what one operator process knows: the kopf indices that cache the
ModelDeployments and their children (trimmed, as compact JSON: cache.py), the `WorkQueue`
of reconcile requests (paused until the caches are filled), its own recent writes (so a
reconcile never acts on a cache older than them), the pods of finished conversion Jobs,
the Events waiting to be posted, the metrics, and the health and metrics servers.
`Controller.reconcile(key)` reads the caches, calls `reconcile.plan()`, and carries the plan
out through `reconcile.execute()` on the Kubernetes client.

Events are posted in the background (`EVENT_POSTERS` at a time), off the reconcile's
critical path, and a child write that takes longer than `--write-wait-seconds` goes on in
the background too (writes.py): a worker is free for the next ModelDeployment once its
status is written, not when the API server's serialized ClusterIP allocator gets to its
Service.

What this module does NOT do: register kopf handlers or start kopf (handlers.py), decide
what to apply (reconcile/plan.py) or what status to write (reconcile/status.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import math
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
    SERVICE,
    ConflictError,
    ForbiddenError,
    InvalidError,
    Kind,
    KubeError,
    NotFoundError,
    kind_of,
)
from ondeck_operator.reconcile.plan import Plan, invalid_plan, plan, progress_only, rfc3339
from ondeck_operator.runtime.cache import Entry, index_id, trim, unpack, unpack_all
from ondeck_operator.runtime.credentials import load_credentials
from ondeck_operator.runtime.kube_client import HttpKube
from ondeck_operator.runtime.metrics import Metrics, serve_routes
from ondeck_operator.runtime.peering import is_active_peer
from ondeck_operator.runtime.rollouts import Analyzer
from ondeck_operator.runtime.settings import OperatorSettings
from ondeck_operator.runtime.workqueue import WorkQueue
from ondeck_operator.runtime.writes import Writes

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
#: Events posted at once, in the background; more wait (they are best effort anyway).
EVENT_POSTERS = 8
#: Service writes in flight at once. The API server allocates ClusterIPs one at a time, so
#: more only wait there while holding connections other writes need.
SERVICE_WRITE_SLOTS = 16
#: A status patch that only says how a rollout progresses (replica counts) waits this long
#: for the next change, so "1 replica, 0 ready" and "Ready" are one write, not two.
STATUS_COALESCE_SECONDS = 1.0
#: A resync pass requests only keys not reconciled in the last half interval, so every key
#: is still reconciled at least once every 1.5 intervals with no event at all.
RESYNC_RECENT_FRACTION = 0.5


@dataclass
class Controller:
    """The operator's state for one process: caches, queue, client, metrics."""

    settings: OperatorSettings
    identity: str
    priority: int
    metrics: Metrics = field(default_factory=Metrics)
    kube: HttpKube | None = None
    writes: Writes | None = None
    analyzer: Analyzer | None = None
    queue: WorkQueue[Key] | None = None
    indices: dict[str, Any] = field(default_factory=dict)
    phases: dict[Key, str] = field(default_factory=dict)
    pods: dict[Key, tuple[str, tuple[Obj, ...]]] = field(default_factory=dict)
    expectations: dict[Key, dict[tuple[str, str], tuple[str, float]]] = field(default_factory=dict)
    last_resync: float = 0.0
    progress_since: dict[Key, float] = field(default_factory=dict)
    # The resourceVersion our last status patch of each ModelDeployment returned: the watch
    # event carrying exactly that version is our own write's echo: nothing to reconcile.
    own_status: dict[Key, str] = field(default_factory=dict)
    # When each key's last reconcile finished (monotonic), so a resync pass skips keys an
    # event reconciled moments ago: a resync is there for lost events, not to redo work.
    reconciled_at: dict[Key, float] = field(default_factory=dict)
    filled: bool = False
    active: bool = True
    started: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _runners: list[Any] = field(default_factory=list)
    _events: set[asyncio.Task[None]] = field(default_factory=set)
    _event_slots: asyncio.Semaphore | None = None

    # ------------------------------------------------------------ probes

    def health(self) -> dict[str, Any]:
        """Liveness: the reconcile workers and the resync loop are running."""
        alive = self.started and all(not t.done() for t in self._tasks)
        return {
            "alive": alive,
            "active": self.active,
            "queued": len(self.queue) if self.queue else 0,
            "busy": self.queue.busy if self.queue else 0,
            "cachesFilled": self.filled,
            "writesInFlight": len(self.writes) if self.writes else 0,
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
        self.kube = HttpKube(
            load_credentials(self.settings.kubeconfig, self.settings.context),
            timeout=self.settings.request_timeout,
            on_request=self.metrics.on_request,
            connections=self.settings.max_connections,
        )
        self.queue = WorkQueue(
            self.reconcile,
            workers=self.settings.workers,
            retry_min=self.settings.retry_min_seconds,
            retry_max=self.settings.retry_max_seconds,
            on_error=self._on_error,
            on_wait=self.metrics.queue_wait.observe,
            paused=not self.filled,
        )
        self._event_slots = asyncio.Semaphore(EVENT_POSTERS)
        self.writes = Writes(
            wait=self.settings.write_wait_seconds,
            slots={SERVICE: SERVICE_WRITE_SLOTS},
            on_reply=self._written,
            on_late_error=self._late_write_failed,
        )
        self.analyzer = Analyzer(self.kube)
        self._tasks = [
            asyncio.create_task(self.queue.run(), name="ondeck-reconcile-queue"),
            asyncio.create_task(self._resync_loop(), name="ondeck-resync"),
            asyncio.create_task(self.analyzer.run(self.request), name="ondeck-rollouts"),
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
        for task in [*self._tasks, *self._events]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._events, return_exceptions=True)
        if self.writes is not None:
            await self.writes.close()
        if self.analyzer is not None:
            await self.analyzer.close()
        for runner in self._runners:
            await runner.cleanup()
        if self.kube is not None:
            await self.kube.close()

    # ------------------------------------------------------------ events

    def caches_filled(self) -> None:
        """kopf has filled every index (it calls event handlers only from then on): run
        the reconciles requested so far, and every later one."""
        if self.filled:
            return
        self.filled = True
        if self.queue is not None:
            self.queue.resume()
        log.info("watch caches filled; reconciling")

    def request(self, key: Key, *, delay: float = 0.0) -> None:
        if self.queue is not None:
            self.queue.add(key, delay=delay)
            self.metrics.queue_depth.set(len(self.queue))

    def observe_md(self, event_type: str | None, key: Key, body: Mapping[str, Any]) -> None:
        version = (body.get("metadata") or {}).get("resourceVersion")
        self._seen(key, MODEL_DEPLOYMENT, key[1], version)
        if event_type == "DELETED":
            self.phases.pop(key, None)
            self.pods.pop(key, None)
            self.expectations.pop(key, None)
            self.progress_since.pop(key, None)
            self.own_status.pop(key, None)
            self.reconciled_at.pop(key, None)
            if self.analyzer is not None:
                self.analyzer.forget(key)
            if self.queue is not None:
                self.queue.forget(key)
            self.metrics.set_phases(self.phases.values())
            return
        if version is not None and self.own_status.get(key) == version:
            # The echo of our own status patch: the spec, the children and the caches are
            # as the reconcile that wrote it left them (any other change has its own,
            # newer, version).
            self.metrics.reconciles.labels(result="echo").inc()
            return
        self.request(key)

    def observe_child(self, kind: Kind, key: Key, name: str, version: str | None) -> None:
        """A child was added or changed (`version`: its resourceVersion) or deleted (None)."""
        self._seen(key, kind, name, version)
        self.request(key)

    def _seen(self, key: Key, kind: Kind, name: str, version: str | None) -> None:
        pending = self.expectations.get(key)
        if not pending or version is None:
            return
        expected = pending.get((kind.plural, name))
        if expected and _not_older(version, expected[0]):
            del pending[(kind.plural, name)]

    def _entries(self, kind: Kind, key: Key) -> list[Entry]:
        index = self.indices.get(index_id(kind))
        return list(index.get(key, ())) if index is not None else []

    def _cached_version(self, key: Key, kind: Kind, name: str) -> str | None:
        """The resourceVersion the cache holds, read without decoding any object."""
        wanted = key[1] if kind == MODEL_DEPLOYMENT else name
        for cached in self._entries(kind, key):
            if cached.name == wanted:
                return cached.version or None
        return None

    def _expect(self, key: Key, kind: Kind, name: str, reply: Mapping[str, Any]) -> None:
        version = (reply.get("metadata") or {}).get("resourceVersion")
        # A write that changed nothing keeps the resourceVersion and makes no watch event:
        # nothing to wait for when the cache already holds that version (or a newer one).
        cached = self._cached_version(key, kind, name)
        if version and not (cached and _not_older(cached, str(version))):
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
        return Observed({kind: unpack_all(self._entries(kind, key)) for kind in WATCHED_KINDS})

    def _body(self, key: Key) -> Obj | None:
        store = self._entries(MODEL_DEPLOYMENT, key)
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
                analysis = self.analyzer.results.get(key) if self.analyzer else None
                decided = self._coalesce(
                    key, md, plan(md, observed, self.settings.config, now=now, analysis=analysis)
                )
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
        self.reconciled_at[key] = time.monotonic()
        if decided.facts is not None and self.analyzer is not None:
            self.analyzer.track(key, md.spec.rollout, decided.status.rollout)
        if decided.requeue_after is not None:
            self.request(key, delay=decided.requeue_after)  # a rollout's pause ends
        if decided.status.phase is not None:
            self.phases[key] = decided.status.phase.value
            self.metrics.set_phases(self.phases.values())

    def _coalesce(self, key: Key, md: ModelDeployment, decided: Plan) -> Plan:
        """Hold back a status patch that only reports a rollout's progress for up to
        STATUS_COALESCE_SECONDS (a delayed request writes it if nothing newer comes)."""
        quiet = not (decided.applies or decided.deletes or decided.events)
        if (
            decided.status_patch is None
            or not quiet
            or not progress_only(md.status, decided.status)
        ):
            self.progress_since.pop(key, None)
            return decided
        now = time.monotonic()
        remaining = self.progress_since.setdefault(key, now) + STATUS_COALESCE_SECONDS - now
        if remaining <= 0:
            self.progress_since.pop(key, None)
            return decided
        self.request(key, delay=remaining)
        return dataclasses.replace(decided, status_patch=None)

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

    def post_event(self, event: Obj) -> None:
        """Post an Event in the background (best effort: a failure is only logged)."""

        async def post() -> None:
            assert self._event_slots is not None
            assert self.kube is not None
            async with self._event_slots:
                self.metrics.writes.labels(verb="event").inc()
                try:
                    await self.kube.create(event)
                except KubeError as exc:
                    log.warning("could not post Event %s: %s", event.get("reason"), exc)

        if self.kube is None or self._event_slots is None:
            return
        task = asyncio.create_task(post(), name="ondeck-event")
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    def _written(self, key: Any, kind: Kind, name: str, reply: Obj) -> None:
        self._expect(key, kind, name, reply)

    def _late_write_failed(self, key: Any, exc: Exception) -> None:
        """A write that went on in the background failed: reconcile again (its retry's
        error, when it answers in time, reaches the status as usual)."""
        self.metrics.errors.labels(reason=type(exc).__name__).inc()
        log.warning("background write for %s/%s failed: %s", key[0], key[1], exc)
        self.request(key, delay=self.settings.retry_min_seconds)

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
            recent = time.monotonic() - interval * RESYNC_RECENT_FRACTION
            for key in keys:
                if self.reconciled_at.get(key, -math.inf) < recent:
                    self.request(key)
            self.last_resync = time.time()


def _not_older(seen: str, expected: str) -> bool:
    """Whether a watch event with resourceVersion `seen` shows a write that returned
    `expected`. kopf hands a handler only the newest of an object's queued events, so the
    write's own version may never be seen (a Job the Job controller updated at once): a
    newer one counts too. resourceVersions are etcd revisions, numbers, on every API server
    we know; one that is not a number must match exactly."""
    if seen.isdigit() and expected.isdigit():
        return int(seen) >= int(expected)
    return seen == expected


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
        assert self._controller.writes is not None
        self._controller.metrics.writes.labels(verb="apply").inc()
        reply = await self._controller.writes.run(
            self._key, kind_of(obj), obj["metadata"]["name"], lambda: self._kube.apply(obj)
        )
        return reply or {}

    async def create(self, obj: Obj) -> Obj:
        if obj.get("kind") == "Event":
            self._controller.post_event(obj)
            return {}
        self._controller.metrics.writes.labels(verb="create").inc()
        if obj.get("kind") != JOB.kind:
            return await self._kube.create(obj)

        async def create_job() -> Obj:
            try:
                return await self._kube.create(obj)
            except ConflictError:
                return {}  # the Job exists already: created once, by us, earlier

        assert self._controller.writes is not None
        reply = await self._controller.writes.run(
            self._key, JOB, obj["metadata"]["name"], create_job
        )
        return reply or {}

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
        version = (reply.get("metadata") or {}).get("resourceVersion")
        if version:
            self._controller.own_status[self._key] = str(version)
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
