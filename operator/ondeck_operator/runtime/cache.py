"""The watch caches' codec: what the reconciler reads of each object (`trim`), kept as
compact JSON, zlib-compressed against a preset dictionary, beside its name and
resourceVersion (`entry`, `unpack`), under one kopf index per kind (`index_id`).

The dictionary (`_dictionary`) is what `render` makes of a sample ModelDeployment: the
children of every ModelDeployment share nearly all their keys and most values with it, so
a cached Deployment of ~4 KB of JSON keeps ~0.3 KB (bench/operator/RESULTS.md has the
bytes per ModelDeployment). Packing costs tens of microseconds per watch event, unpacking
less per read: small beside kopf's own handling of the event.

Only what `reconcile` reads is kept, per kind (bench/operator/RESULTS.md has the bytes per
ModelDeployment this costs):

* every object: name, namespace, uid, resourceVersion, generation, labels, ownerReferences,
  deletionTimestamp; annotations where the operator renders some (never kubectl's
  last-applied copy of the whole object); never managedFields;
* ModelDeployment: spec and status (its labels are not read, nor its annotations but
  `ondeck.io/rollout`);
* Job: `status.conditions` only; a Job is created once and never compared, so its spec
  (the whole pod template) stays out of memory;
* Deployment: the spec (drift is compared on it) and the status fields facts.py reads;
* other children: the spec only; their status is never read;
* Pod (listed once per finished conversion, not watched): phase and terminated states.

What this module does NOT do: decide anything, or talk to the API server.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ondeck_operator.api.constants import ANNOTATION_ROLLOUT
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
        command = (meta.get("annotations") or {}).get(ANNOTATION_ROLLOUT)
        if command is not None:  # a human's promote/abort of a rollout
            keep_meta["annotations"] = {ANNOTATION_ROLLOUT: command}
        if status:
            out["status"] = status
    elif kind == DEPLOYMENT:
        kept: Obj = {k: status[k] for k in _DEPLOYMENT_STATUS if k in status}
        kept["conditions"] = _conditions(status, ("type", "status", "reason"))
        out["status"] = kept
    return out


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@functools.cache
def _dictionary() -> bytes:
    """zlib's preset dictionary: the trimmed children of a sample ModelDeployment (built on
    first use, never at import)."""
    from ondeck_operator.api.operator_config import OperatorConfig
    from ondeck_operator.api.spec import ModelDeployment
    from ondeck_operator.reconcile.kinds import kind_of
    from ondeck_operator.render.args import artifact_key
    from ondeck_operator.render.manifests import RenderState, render

    sample = ModelDeployment.from_manifest(
        {
            "apiVersion": MODEL_DEPLOYMENT.api_version,
            "kind": MODEL_DEPLOYMENT.kind,
            "metadata": {
                "name": "sample",
                "namespace": "default",
                "uid": "00000000-0000-0000-0000-000000000000",
                "generation": 1,
            },
            "spec": {"model": {"uri": "https://models.example.com/model.onnx"}},
        }
    )
    key = artifact_key(sample.spec)
    built = render(
        sample,
        OperatorConfig(),
        RenderState(serving_key=key, serving_digest="0" * 64, wanted_built=True),
    )
    building = render(sample, OperatorConfig(), RenderState(wanted_built=False))
    # zlib uses the dictionary's last 32 KB; the most alike go last.
    return b"".join(_json(trim(o, kind_of(o))) for o in [*building, *built])[-32768:]


def pack(obj: Mapping[str, Any]) -> bytes:
    """Cached objects are kept as compressed compact JSON, decoded only when a reconcile
    reads them."""
    squeeze = zlib.compressobj(level=6, zdict=_dictionary())
    return squeeze.compress(_json(obj)) + squeeze.flush()


def entry(body: Mapping[str, Any], kind: Kind) -> Entry:
    """The cache entry of an object as a watch delivered it."""
    meta = body.get("metadata") or {}
    name, version = str(meta.get("name", "")), str(meta.get("resourceVersion", ""))
    return Entry(name, version, pack(trim(body, kind)))


def unpack(data: bytes | Entry) -> Obj:
    packed = data.data if isinstance(data, Entry) else data
    obj: Obj = json.loads(zlib.decompressobj(zdict=_dictionary()).decompress(packed))
    return obj


def unpack_all(entries: Iterable[Entry]) -> tuple[Obj, ...]:
    return tuple(unpack(e) for e in entries)
