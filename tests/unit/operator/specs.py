"""Manifests for the operator's pure-module tests, built from small dicts."""

from __future__ import annotations

import copy
from typing import Any

from ondeck_operator.api.spec import ModelDeployment

UID = "0b7e1c2a-1111-2222-3333-444455556666"

#: The oldest and newest Kubernetes versions ondeck supports that kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", "1.37.0")


def manifest(spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    """A ModelDeployment manifest; `spec` defaults to the smallest valid one."""
    meta = {"name": "iris", "namespace": "ml", "uid": UID, **metadata}
    return {
        "apiVersion": "ondeck.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": meta,
        "spec": copy.deepcopy(spec) if spec is not None else {"model": {"uri": "s3://b/iris.onnx"}},
    }


def make_md(spec: dict[str, Any] | None = None, **metadata: Any) -> ModelDeployment:
    return ModelDeployment.from_manifest(manifest(spec, **metadata))


FULL_SPEC: dict[str, Any] = {
    "model": {
        "uri": "pvc://models/iris/model.skops",
        "format": "sklearn",
        "sha256": "a" * 64,
        "credentialsSecret": "s3-creds",
        "s3EndpointURL": "http://minio.storage:9000",
    },
    "optimize": {
        "level": "all",
        "quantize": "int8-static",
        "calibration": "pvc://calib/iris.npz",
        "validation": {"samples": 128, "minCosine": 0.995, "maxTop1Disagreement": 0.02},
        "timeoutSeconds": 900,
        "resources": {"requests": {"cpu": 2, "memory": "4Gi"}},
    },
    "server": {
        "image": "registry.example.com/ondeck-server:1.2.3",
        "imagePullPolicy": "Always",
        "imagePullSecrets": ["regcred"],
        "replicas": 3,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "batching": {"maxBatchSize": 16, "maxDelayMs": 1.5},
        "threads": 2,
        "maxBodyBytes": 1048576,
        "maxQueue": 256,
        "drainTimeoutSeconds": 20,
        "auth": {"secretName": "iris-token", "key": "bearer"},
        "env": [
            {"name": "LOG_LEVEL", "value": "debug"},
            {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "api"}}},
        ],
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
        ],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {
                                "matchLabels": {"ondeck.io/model-deployment": "iris"}
                            },
                        },
                    }
                ]
            }
        },
        "serviceAccountName": "iris-sa",
        "podAnnotations": {"example.com/team": "ml"},
        "podLabels": {"team": "ml"},
    },
    "autoscaling": {
        "minReplicas": 2,
        "maxReplicas": 8,
        "targetCPUUtilization": 60,
        "metric": {"name": "ondeck_queue_depth", "targetAverageValue": "10"},
    },
    "service": {
        "type": "LoadBalancer",
        "port": 8000,
        "annotations": {"example.com/lb": "internal"},
    },
    "ingress": {
        "host": "iris.example.com",
        "path": "/",
        "pathType": "Prefix",
        "className": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"},
        "tls": {"secretName": "iris-tls"},
    },
    "artifacts": {
        "pvc": {"size": "10Gi", "storageClassName": "fast", "accessModes": ["ReadOnlyMany"]}
    },
}
