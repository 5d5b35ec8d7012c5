"""`render`: one ModelDeployment (plus the operator's config and what the reconciler
observed) → every Kubernetes object it should own, as plain dicts ready for server-side
apply.

Pure and deterministic: the same inputs give the same list, in the same order, with no
I/O and no clock. It does not talk to the API server, decide *when* to switch to a new
artifact (that is the reconciler's `RenderState`), or compute status.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ondeck_operator import __version__
from ondeck_operator.api.constants import (
    API_VERSION,
    APP_NAME,
    AUTH_MOUNT_PATH,
    AUTH_TOKEN_FILE,
    COMPONENT_ARTIFACTS,
    COMPONENT_CONVERTER,
    COMPONENT_SERVER,
    CONVERT_CONTAINER,
    HEALTH_LIVE_PATH,
    HEALTH_READY_PATH,
    KIND,
    LABEL_ARTIFACT_KEY,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_MODEL_DEPLOYMENT,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_VERSION,
    LLM_WAITING_METRIC,
    MANAGED_BY,
    METRICS_PATH,
    MODEL_CACHE_PATH,
    PART_OF,
    SERVER_CONTAINER,
    SERVER_PORT,
    SERVER_PORT_NAME,
    SERVER_PROGRAM,
    STORE_ENV_PREFIX,
    TERMINATION_LOG_PATH,
    TMP_MOUNT_PATH,
    VOLUME_ARTIFACTS,
    VOLUME_AUTH,
    VOLUME_SOURCE_PREFIX,
    VOLUME_TMP,
)
from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import (
    AccessMode,
    ArtifactPVC,
    ArtifactReport,
    ModelDeployment,
    ResourceRequirements,
)
from ondeck_operator.render import sizing
from ondeck_operator.render.args import artifact_key, convert_args, pvc_claims, serve_args
from ondeck_operator.render.names import job_name, pvc_name, server_name

Manifest = dict[str, Any]

#: Exit codes of `ondeck-server convert` that a retry cannot change (docs/architecture.md).
CONVERT_FINAL_EXIT_CODES = (1, 2)

__all__ = [
    "RenderState",
    "model_url",
    "owner_references",
    "render",
    "render_deployment",
    "render_hpa",
    "render_ingress",
    "render_job",
    "render_pdb",
    "render_pvc",
    "render_service",
    "selector_labels",
    "selector_string",
]


class RenderState(BaseModel):
    """What the reconciler observed, as far as it changes the desired objects."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    serving_key: str | None = Field(
        default=None,
        description="Artifact key the Deployment serves now; None: nothing built yet, so "
        "no Deployment (nor HPA/PDB) is rendered.",
    )
    serving_digest: str | None = Field(
        default=None,
        description="Content digest of the served artifact when known: the server then "
        "loads `<store>/<digest>` instead of `<store>/refs/<key>`.",
    )
    wanted_built: bool = Field(
        default=False,
        description="Whether the artifact of the current spec exists; False renders its Job.",
    )
    artifact: ArtifactReport | None = Field(
        default=None,
        description="The served artifact's report when known (its conversion summary): "
        "sizes the server's memory, disk and startup probe (render/sizing.py).",
    )


# ------------------------------------------------------------------ metadata


def selector_labels(md: ModelDeployment) -> dict[str, str]:
    """The server pods' selector: stable for the life of the ModelDeployment."""
    return {LABEL_COMPONENT: COMPONENT_SERVER, LABEL_MODEL_DEPLOYMENT: md.metadata.name}


def selector_string(md: ModelDeployment) -> str:
    """`status.selector` for the scale subresource."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(md).items()))


def _labels(md: ModelDeployment, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: md.metadata.name,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: PART_OF,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MODEL_DEPLOYMENT: md.metadata.name,
    }


def owner_references(md: ModelDeployment) -> list[dict[str, Any]]:
    """The controller reference to `md`; empty when `md` has no uid (a file, not yet
    created), in which case the operator adds it when it applies the objects."""
    if not md.metadata.uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": md.metadata.name,
            "uid": md.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _metadata(
    md: ModelDeployment,
    name: str,
    component: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if md.metadata.namespace:
        meta["namespace"] = md.metadata.namespace
    meta["labels"] = {**_labels(md, component), LABEL_VERSION: __version__, **(labels or {})}
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    refs = owner_references(md)
    if refs:
        meta["ownerReferences"] = refs
    return meta


# ------------------------------------------------------------- pod security


def _pod_security(config: OperatorConfig) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": config.run_as_user,
        "runAsGroup": config.run_as_group,
        "fsGroup": config.run_as_group,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security(config: OperatorConfig) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": config.run_as_user,
        "runAsGroup": config.run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _tmp_volume(config: OperatorConfig) -> dict[str, Any]:
    return {"name": VOLUME_TMP, "emptyDir": {"sizeLimit": config.tmp_size_limit}}


def _resources(resources: ResourceRequirements) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if resources.requests:
        out["requests"] = dict(sorted(resources.requests.items()))
    if resources.limits:
        out["limits"] = dict(sorted(resources.limits.items()))
    return out


def _base_env() -> list[dict[str, Any]]:
    # Read-only root filesystem: libraries that write caches under $HOME write to /tmp.
    return [{"name": "HOME", "value": TMP_MOUNT_PATH}]


def _image(md: ModelDeployment, config: OperatorConfig) -> tuple[str, str]:
    server = md.spec.server
    policy = server.image_pull_policy or config.image_pull_policy
    return server.image or config.server_image, policy.value


def _scheduling(md: ModelDeployment) -> dict[str, Any]:
    server = md.spec.server
    out: dict[str, Any] = {}
    if server.service_account_name:
        out["serviceAccountName"] = server.service_account_name
    out["automountServiceAccountToken"] = False
    out["enableServiceLinks"] = False  # no service env vars: they only leak names
    if server.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": n} for n in server.image_pull_secrets]
    if server.node_selector:
        out["nodeSelector"] = dict(sorted(server.node_selector.items()))
    if server.tolerations:
        out["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in server.tolerations
        ]
    return out


# --------------------------------------------------------- artifacts + Job


def _artifact_claim(md: ModelDeployment, key: str) -> str:
    return md.spec.artifacts.existing_claim or pvc_name(md.metadata.name, key)


def _store_env_from(md: ModelDeployment) -> list[dict[str, Any]]:
    """The object store's credentials, prefixed so they never mix with the model's."""
    secret = md.spec.artifacts.credentials_secret
    if md.spec.artifacts.uri is None or secret is None:
        return []
    return [{"prefix": STORE_ENV_PREFIX, "secretRef": {"name": secret}}]


def render_pvc(md: ModelDeployment, config: OperatorConfig, key: str) -> Manifest | None:
    """The claim holding artifact `key`; None when the spec names an existing claim or
    an object store."""
    artifacts = md.spec.artifacts
    if artifacts.existing_claim or artifacts.uri:
        return None
    pvc = artifacts.pvc or ArtifactPVC()
    spec: dict[str, Any] = {
        "accessModes": [m.value for m in pvc.access_modes],
        "resources": {"requests": {"storage": pvc.size}},
    }
    storage_class = pvc.storage_class_name or config.artifact_storage_class
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(
            md,
            pvc_name(md.metadata.name, key),
            COMPONENT_ARTIFACTS,
            labels={LABEL_ARTIFACT_KEY: key},
        ),
        "spec": spec,
    }


def render_job(md: ModelDeployment, config: OperatorConfig) -> Manifest:
    """The conversion Job for the current spec's artifact: `ondeck-server convert`."""
    spec = md.spec
    key = artifact_key(spec)
    claims = pvc_claims(spec)
    pvc_root = config.sources_mount_path if claims else None
    remote = spec.artifacts.uri
    args = convert_args(
        spec,
        store=remote or config.artifact_mount_path,
        ref=key,
        termination_log=TERMINATION_LOG_PATH,
        pvc_root=pvc_root,
    )
    image, pull_policy = _image(md, config)
    if md.spec.server.image is None:
        # A custom image is the user's whole toolchain; otherwise the converter image.
        image = config.converter_image
    mounts: list[dict[str, Any]] = [
        {"name": VOLUME_ARTIFACTS, "mountPath": config.artifact_mount_path},
        {"name": VOLUME_TMP, "mountPath": TMP_MOUNT_PATH},
    ]
    # With an object store the artifact is built in a scratch folder (TMPDIR, below) on
    # an emptyDir, then uploaded.
    store_volume: dict[str, Any] = (
        {"emptyDir": {}}
        if remote
        else {"persistentVolumeClaim": {"claimName": _artifact_claim(md, key)}}
    )
    volumes: list[dict[str, Any]] = [
        {"name": VOLUME_ARTIFACTS, **store_volume},
        _tmp_volume(config),
    ]
    for index, claim in enumerate(claims):
        volume = f"{VOLUME_SOURCE_PREFIX}{index}"
        mounts.append(
            {"name": volume, "mountPath": f"{config.sources_mount_path}/{claim}", "readOnly": True}
        )
        volumes.append(
            {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    container: dict[str, Any] = {
        "name": CONVERT_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": [SERVER_PROGRAM],
        "args": args,
        "env": _base_env()
        + ([{"name": "TMPDIR", "value": config.artifact_mount_path}] if remote else []),
    }
    env_from = _store_env_from(md)
    if spec.model.credentials_secret:
        env_from.insert(0, {"secretRef": {"name": spec.model.credentials_secret}})
    if env_from:
        container["envFrom"] = env_from
    container |= {
        "resources": _resources(sizing.job_resources(spec, config)),
        "securityContext": _container_security(config),
        "terminationMessagePath": TERMINATION_LOG_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    pod_labels = {**_labels(md, COMPONENT_CONVERTER), LABEL_ARTIFACT_KEY: key}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(
            md,
            job_name(md.metadata.name, key),
            COMPONENT_CONVERTER,
            labels={LABEL_ARTIFACT_KEY: key},
        ),
        "spec": {
            "backoffLimit": config.job_backoff_limit,
            "activeDeadlineSeconds": spec.optimize.timeout_seconds,
            "ttlSecondsAfterFinished": config.job_ttl_seconds_after_finished,
            # `convert` exits 1 on a conversion error and 2 on a usage error: both fail
            # the same way again, so fail the Job at once. Crashes (OOM, node loss) retry;
            # evictions and preemptions do not count against backoffLimit.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONVERT_CONTAINER,
                            "operator": "In",
                            "values": list(CONVERT_FINAL_EXIT_CODES),
                        },
                    },
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    **_scheduling(md),
                    "securityContext": _pod_security(config),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


# --------------------------------------------------------------- serving


def _http_probe(path: str, *, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": SERVER_PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _single_node_claim(md: ModelDeployment) -> bool:
    """Whether the served claim is one ondeck creates that only one node can mount."""
    artifacts = md.spec.artifacts
    if artifacts.existing_claim or artifacts.uri:
        return False
    modes = set((artifacts.pvc or ArtifactPVC()).access_modes)
    return modes == {AccessMode.READ_WRITE_ONCE}


def _affinity(md: ModelDeployment) -> dict[str, Any]:
    """The user's affinity; with a ReadWriteOnce claim, also keep every server pod on one
    node (a second node could not attach the volume, and a rollout with maxUnavailable 0
    would wait forever). A user who sets podAffinity decides alone."""
    # A copy: callers may change what render returns without changing the spec.
    affinity = copy.deepcopy(md.spec.server.affinity or {})
    if _single_node_claim(md) and "podAffinity" not in affinity:
        affinity["podAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": selector_labels(md)},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    return affinity


def render_deployment(
    md: ModelDeployment,
    config: OperatorConfig,
    *,
    serving_key: str,
    serving_digest: str | None = None,
    artifact: ArtifactReport | None = None,
) -> Manifest:
    """The server Deployment: `ondeck-server serve` on artifact `serving_key`, sized
    from `artifact`, its report, when known (render/sizing.py)."""
    spec = md.spec
    server = spec.server
    remote = spec.artifacts.uri
    store = remote.rstrip("/") if remote else config.artifact_mount_path
    model_path = f"{store}/{serving_digest}" if serving_digest else f"{store}/refs/{serving_key}"
    auth_file = f"{AUTH_MOUNT_PATH}/{AUTH_TOKEN_FILE}" if server.auth else None
    args = serve_args(
        spec,
        model_path=model_path,
        name=md.metadata.name,
        auth_token_file=auth_file,
        model_cache=MODEL_CACHE_PATH if remote else None,
    )
    image, pull_policy = _image(md, config)
    # One entry per name (server-side apply keys env by name); the user's wins.
    env = {var["name"]: var for var in _base_env()}
    for var in server.env or []:
        env[var.name] = var.model_dump(mode="json", by_alias=True, exclude_none=True)
    # With an object store the server downloads the artifact into an emptyDir cache.
    mounts: list[dict[str, Any]] = [
        {"name": VOLUME_ARTIFACTS, "mountPath": MODEL_CACHE_PATH}
        if remote
        else {"name": VOLUME_ARTIFACTS, "mountPath": store, "readOnly": True},
        {"name": VOLUME_TMP, "mountPath": TMP_MOUNT_PATH},
    ]
    store_volume: dict[str, Any] = (
        {"emptyDir": {}}
        if remote
        else {
            "persistentVolumeClaim": {
                "claimName": _artifact_claim(md, serving_key),
                "readOnly": True,
            }
        }
    )
    volumes: list[dict[str, Any]] = [
        {"name": VOLUME_ARTIFACTS, **store_volume},
        _tmp_volume(config),
    ]
    if server.auth:
        mounts.append({"name": VOLUME_AUTH, "mountPath": AUTH_MOUNT_PATH, "readOnly": True})
        volumes.append(
            {
                "name": VOLUME_AUTH,
                "secret": {
                    "secretName": server.auth.secret_name,
                    "items": [{"key": server.auth.key, "path": AUTH_TOKEN_FILE}],
                    "defaultMode": 0o440,
                },
            }
        )
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": [SERVER_PROGRAM],
        "args": args,
        "env": list(env.values()),
        **({"envFrom": store_env} if (store_env := _store_env_from(md)) else {}),
        "ports": [{"name": SERVER_PORT_NAME, "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "resources": _resources(sizing.server_resources(spec, artifact)),
        "startupProbe": _http_probe(
            HEALTH_READY_PATH,
            period=sizing.STARTUP_PERIOD_S,
            failures=sizing.startup_failure_threshold(spec, config, artifact),
            timeout=2,
        ),
        "readinessProbe": _http_probe(HEALTH_READY_PATH, period=5, failures=2, timeout=2),
        "livenessProbe": _http_probe(HEALTH_LIVE_PATH, period=10, failures=3, timeout=5),
        "securityContext": _container_security(config),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    if config.pre_stop_sleep_seconds:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": config.pre_stop_sleep_seconds}}}
    pod_labels = {
        **(server.pod_labels or {}),
        **_labels(md, COMPONENT_SERVER),
        LABEL_ARTIFACT_KEY: serving_key,
    }
    pod_annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(SERVER_PORT),
        "prometheus.io/path": METRICS_PATH,
        **(server.pod_annotations or {}),
    }
    pod_spec: dict[str, Any] = {
        **_scheduling(md),
        "securityContext": _pod_security(config),
        "terminationGracePeriodSeconds": config.pre_stop_sleep_seconds
        + server.drain_timeout_seconds
        + config.termination_grace_margin_seconds,
    }
    affinity = _affinity(md)
    if affinity:
        pod_spec["affinity"] = affinity
    pod_spec |= {"containers": [container], "volumes": volumes}
    deployment_spec: dict[str, Any] = {}
    if spec.autoscaling is None:
        deployment_spec["replicas"] = server.replicas
    deployment_spec |= {
        "revisionHistoryLimit": config.revision_history_limit,
        "progressDeadlineSeconds": config.progress_deadline_seconds,
        "selector": {"matchLabels": selector_labels(md)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "template": {
            "metadata": {
                "labels": dict(sorted(pod_labels.items())),
                "annotations": dict(sorted(pod_annotations.items())),
            },
            "spec": pod_spec,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(
            md,
            server_name(md.metadata.name),
            COMPONENT_SERVER,
            labels={LABEL_ARTIFACT_KEY: serving_key},
        ),
        "spec": deployment_spec,
    }


def render_service(md: ModelDeployment, config: OperatorConfig) -> Manifest:
    service = md.spec.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            md, server_name(md.metadata.name), COMPONENT_SERVER, annotations=service.annotations
        ),
        "spec": {
            "type": service.type.value,
            "selector": selector_labels(md),
            "ports": [
                {
                    "name": SERVER_PORT_NAME,
                    "port": service.port,
                    "targetPort": SERVER_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def render_ingress(md: ModelDeployment, config: OperatorConfig) -> Manifest | None:
    ingress = md.spec.ingress
    if ingress is None:
        return None
    name = server_name(md.metadata.name)
    rule: dict[str, Any] = {}
    if ingress.host:
        rule["host"] = ingress.host
    rule["http"] = {
        "paths": [
            {
                "path": ingress.path,
                "pathType": ingress.path_type.value,
                "backend": {"service": {"name": name, "port": {"name": SERVER_PORT_NAME}}},
            }
        ]
    }
    spec: dict[str, Any] = {}
    if ingress.class_name:
        spec["ingressClassName"] = ingress.class_name
    spec["rules"] = [rule]
    if ingress.tls and ingress.host:
        spec["tls"] = [{"hosts": [ingress.host], "secretName": ingress.tls.secret_name}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata(md, name, COMPONENT_SERVER, annotations=ingress.annotations),
        "spec": spec,
    }


def _pods_metric(name: str, average: str) -> dict[str, Any]:
    """A per-pod metric from the custom metrics API (a metrics adapter serves it)."""
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": name},
            "target": {"type": "AverageValue", "averageValue": average},
        },
    }


def render_hpa(md: ModelDeployment, config: OperatorConfig) -> Manifest | None:
    autoscaling = md.spec.autoscaling
    if autoscaling is None:
        return None
    name = server_name(md.metadata.name)
    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {
                    "type": "Utilization",
                    "averageUtilization": autoscaling.target_cpu_utilization,
                },
            },
        }
    ]
    if autoscaling.target_requests_waiting is not None:
        metrics.append(_pods_metric(LLM_WAITING_METRIC, autoscaling.target_requests_waiting))
    if autoscaling.metric:
        metrics.append(
            _pods_metric(autoscaling.metric.name, autoscaling.metric.target_average_value)
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(md, name, COMPONENT_SERVER),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": metrics,
        },
    }


def render_pdb(md: ModelDeployment, config: OperatorConfig) -> Manifest | None:
    """At most one server pod down at a time, when two or more replicas are wanted."""
    if md.spec.wanted_replicas() < 2:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(md, server_name(md.metadata.name), COMPONENT_SERVER),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(md)}},
    }


def model_url(md: ModelDeployment, config: OperatorConfig) -> str:
    """Where clients reach the model: through the Ingress host when there is one, else
    the Service's cluster DNS name."""
    name = md.metadata.name
    ingress = md.spec.ingress
    if ingress is not None and ingress.host:
        scheme = "https" if ingress.tls else "http"
        prefix = ingress.path.rstrip("/")
        return f"{scheme}://{ingress.host}{prefix}/v2/models/{name}"
    namespace = md.metadata.namespace or "default"
    port = md.spec.service.port
    host = f"{server_name(name)}.{namespace}.svc.{config.cluster_domain}"
    if port != 80:
        host = f"{host}:{port}"
    return f"http://{host}/v2/models/{name}"


def render(md: ModelDeployment, config: OperatorConfig, state: RenderState) -> list[Manifest]:
    """Every object `md` should own, given what the reconciler observed.

    Order: claims, Job, Deployment, Service, Ingress, HorizontalPodAutoscaler,
    PodDisruptionBudget. The Job of the current spec's artifact is rendered until that
    artifact is built; the Deployment (with its HPA and PDB) once one is being served,
    and the claim of the served artifact is kept while a new one is built.
    """
    wanted = artifact_key(md.spec)
    objects: list[Manifest | None] = []
    keys = [wanted]
    if state.serving_key and state.serving_key != wanted:
        keys.append(state.serving_key)
    objects += [render_pvc(md, config, key) for key in sorted(keys)]
    if not state.wanted_built:
        objects.append(render_job(md, config))
    if state.serving_key:
        objects.append(
            render_deployment(
                md,
                config,
                serving_key=state.serving_key,
                serving_digest=state.serving_digest,
                artifact=state.artifact,
            )
        )
    objects += [render_service(md, config), render_ingress(md, config)]
    if state.serving_key:
        objects += [render_hpa(md, config), render_pdb(md, config)]
    return [obj for obj in objects if obj is not None]
