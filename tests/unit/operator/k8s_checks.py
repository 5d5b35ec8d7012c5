"""Checks every rendered object must pass: the real Kubernetes OpenAPI schemas (strict),
the Pod Security "restricted" profile, owner references, labels and name lengths."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from ondeck_operator.api.constants import LABEL_MODEL_DEPLOYMENT, RESERVED_LABEL_PREFIXES
from ondeck_operator.api.spec import ModelDeployment

from .specs import K8S_VERSIONS

RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
)
_ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                    "persistentVolumeClaim", "projected", "secret"}  # fmt: skip


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Strict validation against each supported version's schema; [] when valid."""
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{version} {obj['kind']} {path}: {exc.message}")
    return errors


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in ("Deployment", "Job"):
        spec: dict[str, Any] = obj["spec"]["template"]["spec"]
        return spec
    return None


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Pod Security Standards, restricted profile (plus a read-only root filesystem)."""
    problems = []
    pod_sc = pod.get("securityContext", {})
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("host namespaces")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= _ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']} type {kinds}")
    if pod_sc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("pod seccompProfile")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        sc = container.get("securityContext", {})
        name = container["name"]
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities.drop")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities.add")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot")
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if not isinstance(uid, int) or uid == 0:
            problems.append(f"{name}: numeric non-zero runAsUser")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem")
        if not any(m["mountPath"] == "/tmp" for m in container.get("volumeMounts", [])):
            problems.append(f"{name}: no writable /tmp")
        for port in container.get("ports", []):
            if "hostPort" in port:
                problems.append(f"{name}: hostPort")
    return problems


def ownership_problems(obj: dict[str, Any], md: ModelDeployment) -> list[str]:
    meta = obj["metadata"]
    problems = []
    refs = meta.get("ownerReferences", [])
    if md.metadata.uid:
        if len(refs) != 1 or refs[0]["uid"] != md.metadata.uid:
            problems.append("owner reference")
        elif not (refs[0]["controller"] and refs[0]["blockOwnerDeletion"]):
            problems.append("owner reference not controller/blockOwnerDeletion")
    if meta.get("namespace") != md.metadata.namespace:
        problems.append("namespace")
    if len(meta["name"]) > 63:
        problems.append(f"name {meta['name']} longer than 63")
    labels = meta.get("labels", {})
    for key in (*RECOMMENDED_LABELS, LABEL_MODEL_DEPLOYMENT):
        if key not in labels:
            problems.append(f"label {key}")
    if labels.get(LABEL_MODEL_DEPLOYMENT) != md.metadata.name:
        problems.append("model-deployment label value")
    for key, value in labels.items():
        if len(value) > 63:
            problems.append(f"label {key} value longer than 63")
    pod = pod_spec(obj)
    if pod is not None:
        pod_labels = obj["spec"]["template"]["metadata"]["labels"]
        if pod_labels.get(LABEL_MODEL_DEPLOYMENT) != md.metadata.name:
            problems.append("pod model-deployment label")
        user = md.spec.server.pod_labels or {}
        for key in user:
            assert not key.startswith(RESERVED_LABEL_PREFIXES)
    return problems


def all_problems(objects: list[dict[str, Any]], md: ModelDeployment) -> list[str]:
    problems = []
    for obj in objects:
        problems += schema_errors(obj)
        problems += ownership_problems(obj, md)
        pod = pod_spec(obj)
        if pod is not None:
            problems += [f"{obj['kind']}: {p}" for p in restricted_violations(pod)]
    return problems
