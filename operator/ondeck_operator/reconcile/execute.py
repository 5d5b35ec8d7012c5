"""Carry out a `Plan` against any `KubeApi` in one pass: server-side apply, deletes, the
status patch and the Events, concurrently where they are independent."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Iterable
from typing import Any

from ondeck_operator.api.constants import (
    KIND,
    MANAGED_BY,
)
from ondeck_operator.reconcile.kinds import (
    JOB,
    MODEL_DEPLOYMENT,
    KubeApi,
    KubeError,
    kind_of,
)
from ondeck_operator.reconcile.plan import MdRef, Plan
from ondeck_operator.reconcile.status import (
    EventSpec,
)

Obj = dict[str, Any]


def event_object(ref: MdRef, event: EventSpec, *, now: str, instance: str) -> Obj:
    """A core/v1 Event about the ModelDeployment `ref`."""
    meta = ref
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.name}.{uuid.uuid4().hex[:16]}", "namespace": meta.namespace},
        "involvedObject": {
            "apiVersion": MODEL_DEPLOYMENT.api_version,
            "kind": KIND,
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
        "reportingInstance": instance[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def execute(plan: Plan, kube: KubeApi, *, now: str, instance: str) -> None:
    """Apply, delete, patch the status and post the Events of `plan`, in that order.

    The children do not depend on one another (a pod waits for its claim; an HPA or a
    Service names its Deployment), so they are written concurrently: one reconcile takes
    the time of its slowest write, not of their sum. A failed write propagates (the caller
    retries with backoff) and the status is then not patched; Events are best effort."""
    meta = plan.ref

    async def write(obj: Obj) -> None:
        if kind_of(obj) == JOB:
            await kube.create(obj)  # created once; a 409 means it already exists
        else:
            await kube.apply(obj)

    async def event(spec: EventSpec) -> None:
        # Events are informative; the status already says it all.
        with contextlib.suppress(KubeError):
            await kube.create(event_object(plan.ref, spec, now=now, instance=instance))

    await _all(write(obj) for obj in plan.applies)
    await _all(
        kube.delete(kind, meta.namespace, name, uid=uid or None) for kind, name, uid in plan.deletes
    )
    if plan.status_patch is not None:
        await kube.patch_status(MODEL_DEPLOYMENT, meta.namespace, meta.name, plan.status_patch)
    await _all(event(spec) for spec in plan.events)


async def _all(calls: Iterable[Awaitable[Any]]) -> None:
    """Await all; the first failure is raised once every call has finished."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
