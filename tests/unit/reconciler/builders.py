"""Small builders for the reconciler's pure tests: manifests, and children "as the API
server would hold them" (the rendered object plus the status its controller would write)."""

from __future__ import annotations

import copy
import json
from typing import Any

from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.reconcile.facts import CHILD_KINDS, Observed
from ondeck_operator.reconcile.kinds import POD, Kind, kind_of
from ondeck_operator.reconcile.plan import Plan

UID = "6f1c2a8e-3b1d-4c55-9a43-1f2e3d4c5b6a"
NOW = "2026-11-22T10:00:00Z"
LATER = "2026-11-22T10:05:00Z"


def md(
    spec: dict[str, Any] | None = None, *, generation: int = 1, status: Any = None
) -> ModelDeployment:
    body: dict[str, Any] = {
        "apiVersion": "ondeck.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "ml", "uid": UID, "generation": generation},
        "spec": spec or {"model": {"uri": "s3://models/iris.onnx"}},
    }
    if status is not None:
        body["status"] = status
    return ModelDeployment.from_manifest(body)


def summary(key: str, digest: str = "d" * 64) -> str:
    return json.dumps(
        {
            "digest": digest,
            "path": f"/artifacts/{digest}",
            "ref": key,
            "sizeBytes": 10,
            "originalSizeBytes": 40,
            "format": "onnx",
            "quantize": "none",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
            "validation": {"samples": 64},
            "cached": False,
        }
    )


def held(obj: dict[str, Any], *, generation: int = 1) -> dict[str, Any]:
    """The object as the API server holds it after an apply: defaults and bookkeeping added."""
    out = copy.deepcopy(obj)
    meta = out["metadata"]
    meta.setdefault("uid", f"uid-{meta['name']}")
    meta["generation"] = generation
    meta["resourceVersion"] = "1"
    if out["kind"] == "Service":
        out["spec"]["clusterIP"] = "10.96.0.12"
        out["spec"]["sessionAffinity"] = "None"
    if out["kind"] == "Deployment":
        replicas = out["spec"].setdefault("replicas", 1)
        out["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
        out["status"] = {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True"}],
        }
    return out


def finished_job(
    job: dict[str, Any], *, succeeded: bool, message: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A held Job with its Complete/Failed condition, and its finished pod."""
    out = held(job)
    ctype = "Complete" if succeeded else "Failed"
    out["status"] = {"conditions": [{"type": ctype, "status": "True", "message": "done"}]}
    name = job["metadata"]["name"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-abcde",
            "labels": {
                **job["spec"]["template"]["metadata"]["labels"],
                "batch.kubernetes.io/job-name": name,
            },
        },
        "status": {
            "phase": "Succeeded" if succeeded else "Failed",
            "containerStatuses": [
                {
                    "name": "convert",
                    "state": {
                        "terminated": {
                            "exitCode": 0 if succeeded else 1,
                            "message": message,
                            "finishedAt": NOW,
                        }
                    },
                }
            ],
        },
    }
    return out, pod


def observed_after(plan: Plan, before: Observed) -> Observed:
    """What the caches hold once the plan's writes landed (no controller ran yet)."""
    children: dict[Kind, list[dict[str, Any]]] = {
        k: list(before.of(k)) for k in (*CHILD_KINDS, POD)
    }
    for obj in plan.applies:
        kind = kind_of(obj)
        items = [o for o in children[kind] if o["metadata"]["name"] != obj["metadata"]["name"]]
        old = next(
            (o for o in children[kind] if o["metadata"]["name"] == obj["metadata"]["name"]), None
        )
        generation = (old or {}).get("metadata", {}).get("generation", 0) + 1
        items.append(held(obj, generation=generation))
        children[kind] = items
    for kind, name, _ in plan.deletes:
        children[kind] = [o for o in children[kind] if o["metadata"]["name"] != name]
    return Observed({k: tuple(v) for k, v in children.items()})


def replace(observed: Observed, kind: Kind, obj: dict[str, Any]) -> Observed:
    children = {k: list(observed.of(k)) for k in (*CHILD_KINDS, POD)}
    children[kind] = [
        o for o in children[kind] if o["metadata"]["name"] != obj["metadata"]["name"]
    ] + [obj]
    return Observed({k: tuple(v) for k, v in children.items()})
