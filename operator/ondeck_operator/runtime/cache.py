"""The watch caches' codec: what the reconciler reads of each object (`trim`), kept as
compact JSON beside its name and resourceVersion (`entry`, `unpack`), under one kopf index
per kind (`index_id`).

Only what `reconcile` reads is kept, per kind (bench/operator/RESULTS.md has the bytes per
ModelDeployment this costs):

* every object: name, namespace, uid, resourceVersion, generation, labels, ownerReferences,
  deletionTimestamp; annotations where the operator renders some (never kubectl's
  last-applied copy of the whole object); never managedFields;
* ModelDeployment: spec and status (its labels and annotations are not read);
* Job: `status.conditions` only; a Job is created once and never compared, so its spec
  (the whole pod template) stays out of memory;
* Deployment: the spec (drift is compared on it) and the status fields facts.py reads;
* other children: the spec only; their status is never read;
* Pod (listed once per finished conversion, not watched): phase and terminated states.

What this module does NOT do: decide anything, or talk to the API server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ondeck_operator.reconcile.kinds import (
    DEPLOYMENT,
    JOB,
    MODEL_DEPLOYMENT,
    POD,
    Kind,
)

__all__ = ["Entry", "entry", "index_id", "pack", "trim", "unpack", "unpack_all"]

Obj = dict[str, Any]

_META = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "labels",
    "ownerReferences",
    "deletionTimestamp",
)
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_DEPLOYMENT_STATUS = (
    "observedGeneration",
    "replicas",
    "updatedReplicas",
    "readyReplicas",
    "availableReplicas",
)
_CONDITION = ("type", "status", "reason", "message")


class Entry(NamedTuple):
    """One cached object: its name and resourceVersion readable without decoding it."""

    name: str
    version: str
    data: bytes


def index_id(kind: Kind) -> str:
    return f"ondeck-{kind.plural}"


def _conditions(status: Mapping[str, Any], keep: tuple[str, ...] = _CONDITION) -> list[Obj]:
    return [
        {k: c[k] for k in keep if k in c}
        for c in status.get("conditions") or []
        if isinstance(c, Mapping)
    ]


def trim(body: Mapping[str, Any], kind: Kind) -> Obj:
    """What the reconciler reads of an object of `kind` (see the module docstring)."""
    meta = body.get("metadata") or {}
    keep_meta: Obj = {k: meta[k] for k in _META if k in meta}
    if kind not in (JOB, MODEL_DEPLOYMENT, POD):
        annotations = {
            k: v for k, v in (meta.get("annotations") or {}).items() if k != _LAST_APPLIED
        }
        if annotations:
            keep_meta["annotations"] = annotations
    out: Obj = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": keep_meta}
    status = body.get("status") or {}
    if kind == POD:
        out["status"] = {
            "phase": status.get("phase"),
            "containerStatuses": [
                {"name": c.get("name"), "state": {"terminated": c["state"]["terminated"]}}
                for c in status.get("containerStatuses") or []
                if (c.get("state") or {}).get("terminated")
            ],
        }
        return out
    if kind == JOB:
        out["status"] = {"conditions": _conditions(status)}
        return out
    if "spec" in body:
        out["spec"] = body["spec"]
    if kind == MODEL_DEPLOYMENT:
        if status:
            out["status"] = status
    elif kind == DEPLOYMENT:
        kept: Obj = {k: status[k] for k in _DEPLOYMENT_STATUS if k in status}
        kept["conditions"] = _conditions(status, ("type", "status", "reason"))
        out["status"] = kept
    return out


def pack(obj: Mapping[str, Any]) -> bytes:
    """Cached objects are kept as compact JSON: a fifth of the memory of nested dicts,
    decoded only when a reconcile reads them."""
    return json.dumps(obj, separators=(",", ":")).encode()


def entry(body: Mapping[str, Any], kind: Kind) -> Entry:
    """The cache entry of an object as a watch delivered it."""
    meta = body.get("metadata") or {}
    name, version = str(meta.get("name", "")), str(meta.get("resourceVersion", ""))
    return Entry(name, version, pack(trim(body, kind)))


def unpack(data: bytes | Entry) -> Obj:
    obj: Obj = json.loads(data.data if isinstance(data, Entry) else data)
    return obj


def unpack_all(entries: Iterable[Entry]) -> tuple[Obj, ...]:
    return tuple(unpack(e) for e in entries)
