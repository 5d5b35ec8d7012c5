"""The objects of a rollout (pure): the candidate Deployment and Service beside the stable
ones, the stable pods' shadow flags, and with `spec.gateway` an HTTPRoute
(gateway.networking.k8s.io/v1) whose backendRefs split traffic by exact weights.

`with_rollout(md, config, objects, traffic)` takes what `render()` gives for the stable
artifact and returns the list a rollout needs. Naming: the stable Deployment keeps the
ModelDeployment's name (its HPA, PDB and Service stay as they are); the candidate is
`<name>-canary`, its pods labelled `ondeck.io/track=canary`. They carry
`app.kubernetes.io/component=server`, and so sit behind the one Service, only once they
take live traffic; in the shadow phase they are `component=shadow` and receive only the
copies the stable pods send to the candidate Service.

What this module does NOT do: decide the weights, replica counts or phases
(`reconcile.rollout` does) or read the cluster.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ondeck_operator.api.constants import (
    COMPONENT_SERVER,
    COMPONENT_SHADOW,
    LABEL_COMPONENT,
    LABEL_MODEL_DEPLOYMENT,
    LABEL_TRACK,
    TRACK_CANARY,
)
from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.render.manifests import (
    Manifest,
    render_deployment,
    render_service,
)
from ondeck_operator.render.names import child_name, server_name

__all__ = [
    "GATEWAY_API_VERSION",
    "TRACK_STABLE",
    "Traffic",
    "candidate_name",
    "candidate_service_url",
    "route_name",
    "stable_service_name",
    "with_rollout",
]

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
#: The stable pods' track label, set only with spec.gateway (the stable Service selects it).
TRACK_STABLE = "stable"


@dataclass(frozen=True)
class Traffic:
    """What the reconciler decided for this cycle."""

    #: The candidate artifact; None: no candidate objects (no rollout, or it ended).
    candidate_key: str | None = None
    candidate_digest: str | None = None
    candidate_replicas: int = 1
    #: Whether the candidate pods sit behind the Service (canary) or only get copies.
    candidate_live: bool = False
    #: The stable Deployment's replicas while the candidate holds a share of them
    #: (replica-ratio split); None leaves the spec's (or the HPA's) count.
    stable_replicas: int | None = None
    #: Percent of requests the HTTPRoute sends to the candidate.
    weight: int = 0
    #: Percent of requests the stable pods copy to the candidate; 0 copies none.
    shadow_percent: int = 0


def candidate_name(md_name: str) -> str:
    """The candidate's Deployment and Service."""
    return child_name(md_name, "canary")


def stable_service_name(md_name: str) -> str:
    """The Service of the stable pods only (the HTTPRoute's stable backend)."""
    return child_name(md_name, "stable")


def route_name(md_name: str) -> str:
    return server_name(md_name)


def candidate_service_url(md: ModelDeployment, config: OperatorConfig) -> str:
    """Where the stable pods send shadow copies: the candidate Service."""
    namespace = md.metadata.namespace or "default"
    host = f"{candidate_name(md.metadata.name)}.{namespace}.svc.{config.cluster_domain}"
    port = md.spec.service.port
    return f"http://{host}" + ("" if port == 80 else f":{port}")


def _kind(obj: Manifest, kind: str, name: str) -> bool:
    return bool(obj["kind"] == kind and obj["metadata"]["name"] == name)


def _stable(md: ModelDeployment, config: OperatorConfig, obj: Manifest, t: Traffic) -> Manifest:
    out = copy.deepcopy(obj)
    spec = out["spec"]
    if t.stable_replicas is not None and md.spec.autoscaling is None:
        spec["replicas"] = t.stable_replicas
    template = spec["template"]
    if md.spec.gateway is not None:
        template["metadata"]["labels"] = dict(
            sorted({**template["metadata"]["labels"], LABEL_TRACK: TRACK_STABLE}.items())
        )
    if t.shadow_percent and t.candidate_key:
        container = template["spec"]["containers"][0]
        container["args"] = [
            *container["args"],
            "--shadow-url",
            candidate_service_url(md, config),
            "--shadow-percent",
            str(t.shadow_percent),
        ]
    return out


def _candidate(md: ModelDeployment, config: OperatorConfig, t: Traffic) -> list[Manifest]:
    assert t.candidate_key is not None
    name = candidate_name(md.metadata.name)
    deployment = render_deployment(
        md, config, serving_key=t.candidate_key, serving_digest=t.candidate_digest
    )
    deployment["metadata"]["name"] = name
    deployment["metadata"]["labels"][LABEL_TRACK] = TRACK_CANARY
    spec = deployment["spec"]
    spec["replicas"] = t.candidate_replicas
    select = {LABEL_MODEL_DEPLOYMENT: md.metadata.name, LABEL_TRACK: TRACK_CANARY}
    spec["selector"] = {"matchLabels": select}
    labels = spec["template"]["metadata"]["labels"]
    labels[LABEL_COMPONENT] = COMPONENT_SERVER if t.candidate_live else COMPONENT_SHADOW
    labels[LABEL_TRACK] = TRACK_CANARY
    spec["template"]["metadata"]["labels"] = dict(sorted(labels.items()))
    service = render_service(md, config)
    service["metadata"]["name"] = name
    service["metadata"]["labels"][LABEL_TRACK] = TRACK_CANARY
    service["spec"]["selector"] = select
    return [deployment, service]


def _stable_service(md: ModelDeployment, config: OperatorConfig) -> Manifest:
    service = render_service(md, config)
    service["metadata"]["name"] = stable_service_name(md.metadata.name)
    service["spec"]["selector"] = {
        LABEL_MODEL_DEPLOYMENT: md.metadata.name,
        LABEL_TRACK: TRACK_STABLE,
    }
    return service


def _route(md: ModelDeployment, config: OperatorConfig, t: Traffic) -> Manifest:
    gateway = md.spec.gateway
    assert gateway is not None
    name = md.metadata.name
    port = md.spec.service.port
    backends: list[dict[str, Any]] = [
        {"name": stable_service_name(name), "port": port, "weight": 100 - t.weight}
    ]
    if t.candidate_key:
        backends.append({"name": candidate_name(name), "port": port, "weight": t.weight})
    spec: dict[str, Any] = {
        "parentRefs": [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway"}
            | p.model_dump(mode="json", by_alias=True, exclude_none=True)
            for p in gateway.parent_refs
        ]
    }
    if gateway.hostnames:
        spec["hostnames"] = list(gateway.hostnames)
    spec["rules"] = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [{"group": "", "kind": "Service", **b} for b in backends],
        }
    ]
    service = render_service(md, config)
    return {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {**service["metadata"], "name": route_name(name)},
        "spec": spec,
    }


def with_rollout(
    md: ModelDeployment, config: OperatorConfig, objects: list[Manifest], traffic: Traffic
) -> list[Manifest]:
    """`objects` (render's output for the stable artifact) with the rollout's changes:
    the stable Deployment's replicas and shadow flags, the candidate's Deployment and
    Service after the stable ones, and with spec.gateway the stable Service and the
    HTTPRoute at the end."""
    stable = server_name(md.metadata.name)
    out: list[Manifest] = []
    for obj in objects:
        if _kind(obj, "Deployment", stable):
            out.append(_stable(md, config, obj, traffic))
            if traffic.candidate_key:
                out += _candidate(md, config, traffic)
        else:
            out.append(obj)
    if md.spec.gateway is not None:
        out += [_stable_service(md, config), _route(md, config, traffic)]
    return out
