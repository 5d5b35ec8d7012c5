"""The vocabulary the reconciler speaks to Kubernetes in: the table of kinds the operator
touches, the `KubeApi` Protocol (get, list, server-side apply with field manager `ondeck`,
delete, status patch, create for Events) and the error tree every implementation raises.
The aiohttp implementation lives in runtime/kube_client.py; importing this module loads
no HTTP client.

Errors, one class per way a call can fail::

    KubeError                      any failed call; `.status` is the HTTP status (0: no reply)
    ├── NotFoundError      404     the object or its kind does not exist
    ├── ConflictError      409     a create raced another writer, or a precondition failed
    ├── ForbiddenError     401/403 RBAC refused it: the message names the verb and resource
    ├── InvalidError       400/422 the API server rejected the object (schema, immutability)
    └── TransientError     429/5xx timeouts, dropped connections: retry with backoff

What this module does NOT do: talk to an API server, watch, cache, retry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from ondeck_operator.api.constants import GROUP, PLURAL, VERSION

Obj = dict[str, Any]

__all__ = [
    "KINDS",
    "ConflictError",
    "ForbiddenError",
    "InvalidError",
    "Kind",
    "KubeApi",
    "KubeError",
    "NotFoundError",
    "TransientError",
    "error_for",
    "kind_of",
]


# ------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Kind:
    """One resource the operator touches: where it lives in the REST API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(
        self, namespace: str | None = None, name: str | None = None, sub: str | None = None
    ) -> str:
        root = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [root]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace)}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name))
        if sub:
            parts.append(sub)
        return "/".join(parts)


MODEL_DEPLOYMENT = Kind(f"{GROUP}/{VERSION}", "ModelDeployment", PLURAL)
PVC = Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
SERVICE = Kind("v1", "Service", "services")
POD = Kind("v1", "Pod", "pods")
EVENT = Kind("v1", "Event", "events")
JOB = Kind("batch/v1", "Job", "jobs")
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
INGRESS = Kind("networking.k8s.io/v1", "Ingress", "ingresses")
HPA = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
PDB = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
HTTPROUTE = Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes")
PEERING = Kind("kopf.dev/v1", "KopfPeering", "kopfpeerings")
CLUSTER_PEERING = Kind("kopf.dev/v1", "ClusterKopfPeering", "clusterkopfpeerings", False)

KINDS: Mapping[tuple[str, str], Kind] = {
    (k.api_version, k.kind): k
    for k in (
        MODEL_DEPLOYMENT,
        PVC,
        SERVICE,
        POD,
        EVENT,
        JOB,
        DEPLOYMENT,
        INGRESS,
        HPA,
        PDB,
        HTTPROUTE,
        PEERING,
        CLUSTER_PEERING,
    )
}


def kind_of(obj: Mapping[str, Any]) -> Kind:
    """The Kind of a manifest; KeyError names an apiVersion/kind the operator never writes."""
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    try:
        return KINDS[key]
    except KeyError:
        raise KeyError(f"the operator does not manage {key[0]} {key[1]}") from None


# ------------------------------------------------------------------- errors


class KubeError(Exception):
    """A Kubernetes API call failed."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


class NotFoundError(KubeError):
    """404: the object (or its kind) does not exist."""


class ConflictError(KubeError):
    """409: a create raced another writer, or a precondition (uid) failed."""


class ForbiddenError(KubeError):
    """401/403: authentication or RBAC refused the call."""


class InvalidError(KubeError):
    """400/422: the API server rejected the object."""


class TransientError(KubeError):
    """429, 5xx, timeouts and dropped connections: worth retrying."""


def error_for(status: int, payload: str) -> KubeError:
    reason, message = "", payload.strip()[:2000]
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if isinstance(body, dict):
        reason = str(body.get("reason") or "")
        message = str(body.get("message") or message)
    cls: type[KubeError]
    if status == 404:
        cls = NotFoundError
    elif status == 409:
        cls = ConflictError
    elif status in (401, 403):
        cls = ForbiddenError
    elif status in (400, 422):
        cls = InvalidError
    else:
        cls = TransientError
    return cls(status, reason, f"HTTP {status}: {message}")


# ------------------------------------------------------------------- interface


class KubeApi(Protocol):
    """What the reconciler needs from the API server."""

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj | None: ...

    async def list(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        not_older_than: str | None = None,
    ) -> list[Obj]: ...

    async def apply(self, obj: Obj) -> Obj: ...

    async def delete(
        self, kind: Kind, namespace: str | None, name: str, *, uid: str | None = None
    ) -> bool: ...

    async def patch_status(
        self, kind: Kind, namespace: str | None, name: str, patch: Obj
    ) -> Obj: ...

    async def create(self, obj: Obj) -> Obj: ...
