"""The kopf side of the operator: which watches, which handlers, kopf's settings, the runner.

kopf watches ModelDeployments and, label-filtered on the API server
(`app.kubernetes.io/managed-by=ondeck-operator`), every kind of child, listed in pages
(`--list-chunk-size`). Each watch feeds a kopf in-memory index (the informer cache, trimmed
to what the plan reads by cache.py: the reconciler reads children from it, never from the
API); each event also *requests* a reconcile of the owning ModelDeployment from the
`Controller` (controller.py) — for a child from its index handler, so kopf runs one
handler per child event, not two. So a Job finishing, a Deployment becoming available, or
a child edited or deleted by hand reaches the status within seconds. Handlers are
registered on a registry built at run time, never at import.

No finalizer and no kopf progress annotations are written: deletion is left to owner
references and the garbage collector, and the ModelDeployment is only ever written
through its status subresource.

What this module does NOT do: schedule or run reconciles (controller.py), decide what to
apply (reconcile/plan.py) or what status to write (reconcile/status.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from ondeck_operator.api.constants import (
    LABEL_MANAGED_BY,
    LABEL_MODEL_DEPLOYMENT,
    MANAGED_BY,
    PLURAL,
)
from ondeck_operator.reconcile.facts import WATCHED_KINDS
from ondeck_operator.reconcile.kinds import (
    MODEL_DEPLOYMENT,
    Kind,
)
from ondeck_operator.runtime.cache import Entry, entry, index_id
from ondeck_operator.runtime.controller import Controller, Key, new_controller
from ondeck_operator.runtime.credentials import load_credentials
from ondeck_operator.runtime.settings import OperatorSettings

__all__ = ["build_registry", "kopf_settings", "run"]

log = logging.getLogger("ondeck.operator")
KOPF_WORKER_IDLE_SECONDS = 1.0


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf deep-copies every object it sees to diff it against a stored "last handled"
    state; that feeds create/update handlers, which this operator does not use (it
    reconciles from watch events). Skipping it saves a deepcopy per event and writes no
    `last-handled-configuration` annotation."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def kopf_settings(settings: OperatorSettings, priority: int) -> kopf.OperatorSettings:
    """kopf's settings from ours: watch timeouts, no kopf Events, peering lifetime."""
    ks = kopf.OperatorSettings()
    ks.watching.server_timeout = settings.watch_server_timeout
    ks.watching.client_timeout = settings.watch_client_timeout
    ks.watching.inactivity_timeout = settings.watch_inactivity_timeout
    ks.watching.connect_timeout = settings.request_timeout
    # The initial list of each kind comes in pages, so a restart next to thousands of
    # ModelDeployments never holds every full object at once.
    ks.watching.chunk_size = settings.list_chunk_size
    # kopf keeps a task per object for a while after its last event, holding that event's
    # whole body; during a burst of thousands, 5 s (kopf's default) is thousands of bodies.
    ks.queueing.idle_timeout = KOPF_WORKER_IDLE_SECONDS
    # kopf's own per-object worker limit stays unbounded: with a bound, workers that wait
    # for every index to be filled block the spawning of the workers that would fill them
    # (nolar/kopf#1243). Reconcile concurrency is bounded by the WorkQueue (`--workers`),
    # and kopf's handlers only fill the caches and request reconciles.
    ks.networking.request_timeout = settings.request_timeout
    ks.posting.enabled = False  # the reconciler posts its own Events
    ks.persistence.diffbase_storage = _NoDiffBase()
    ks.peering.priority = priority
    ks.peering.lifetime = settings.peering_lifetime
    ks.peering.stealth = True
    # No CRD/namespace scanning: the kinds are known, and RBAC stays smaller.
    ks.scanning.disabled = True
    selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    for kind in WATCHED_KINDS:
        ks.watching.label_selectors[(kind.api_version, kind.plural)] = selector
    return ks


def build_registry(controller: Controller) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers bound to `controller` (nothing is
    registered at import time)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> Any:
        settings = controller.settings
        return load_credentials(settings.kubeconfig, settings.context).connection_info()

    @kopf.on.startup(registry=registry)
    async def startup(**kwargs: Any) -> None:
        indices = {k: v for k, v in kwargs.items() if k.startswith("ondeck-")}
        await controller.start(indices)
        log.info(
            "ondeck operator %s started (priority %d, %s)",
            controller.identity,
            controller.priority,
            "cluster-wide"
            if controller.settings.cluster_wide
            else "namespaces " + ",".join(controller.settings.namespaces),
        )

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await controller.stop()

    async def index_md(**kwargs: Any) -> dict[Key, Entry]:
        # Cached only; the event handler below requests the reconcile.
        return {(kwargs["namespace"], kwargs["name"]): entry(kwargs["body"], MODEL_DEPLOYMENT)}

    async def md_event(**kwargs: Any) -> None:
        # kopf calls event handlers only once every index is filled, so the first call
        # also opens the reconcile queue (a reconcile never sees a half-filled cache).
        controller.caches_filled()
        controller.observe_md(kwargs["type"], (kwargs["namespace"], kwargs["name"]), kwargs["body"])

    kopf.index(
        MODEL_DEPLOYMENT.api_version, PLURAL, id=index_id(MODEL_DEPLOYMENT), registry=registry
    )(index_md)
    kopf.on.event(MODEL_DEPLOYMENT.api_version, PLURAL, id="ondeck-md-event", registry=registry)(
        md_event
    )
    for kind in WATCHED_KINDS:
        _register_child(registry, controller, kind)
    return registry


def _deleted(**kwargs: Any) -> bool:
    return kwargs.get("type") == "DELETED"


def _register_child(registry: kopf.OperatorRegistry, controller: Controller, kind: Kind) -> None:
    """One kopf handler per event of a child, not two: the index handler caches the child
    *and* requests the reconcile of its ModelDeployment (a request made while the caches are
    still being filled waits in the paused queue). kopf calls no index handler for a
    deletion, so an event handler filtered to DELETED requests that one."""
    labels: dict[str, Any] = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_MODEL_DEPLOYMENT: kopf.PRESENT}

    def key(kwargs: Mapping[str, Any]) -> Key:
        return (str(kwargs["namespace"]), str(kwargs["labels"][LABEL_MODEL_DEPLOYMENT]))

    async def index_child(**kwargs: Any) -> dict[Key, Entry]:
        cached = entry(kwargs["body"], kind)
        controller.observe_child(kind, key(kwargs), cached.name, cached.version)
        return {key(kwargs): cached}

    async def child_deleted(**kwargs: Any) -> None:
        controller.caches_filled()
        body = kwargs["body"]
        controller.observe_child(kind, key(kwargs), str(body["metadata"]["name"]), None)

    kopf.index(kind.api_version, kind.plural, id=index_id(kind), labels=labels, registry=registry)(
        index_child
    )
    kopf.on.event(
        kind.api_version,
        kind.plural,
        id=f"ondeck-{kind.plural}-deleted",
        labels=labels,
        when=_deleted,
        registry=registry,
    )(child_deleted)


async def run(settings: OperatorSettings, *, stop_flag: Any = None, ready_flag: Any = None) -> None:
    """Run the operator until stopped (SIGINT/SIGTERM, or `stop_flag`)."""
    controller = new_controller(settings)
    registry = build_registry(controller)
    peering: dict[str, Any] = (
        {"peering_name": settings.peering} if settings.peering else {"standalone": True}
    )
    with contextlib.suppress(asyncio.CancelledError):
        await kopf.operator(
            registry=registry,
            settings=kopf_settings(settings, controller.priority),
            identity=kopf.Identity(controller.identity)
            if hasattr(kopf, "Identity")
            else controller.identity,  # type: ignore[arg-type]
            priority=controller.priority,
            clusterwide=settings.cluster_wide,
            namespaces=list(settings.namespaces),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            **peering,
        )
