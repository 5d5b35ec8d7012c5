"""Every fixed fact of the ModelDeployment API in one place: group, version, kind and
names, label keys, the field manager, ports, mount paths, the default image, condition
types, phases and condition reasons.

Only names and values live here; nothing is computed and nothing is imported but the
standard library. The API types (`ondeck_operator.api.spec`) re-export the enums.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from ondeck_operator import __version__

GROUP: Final = "ondeck.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "ModelDeployment"
LIST_KIND: Final = "ModelDeploymentList"
PLURAL: Final = "modeldeployments"
SINGULAR: Final = "modeldeployment"
SHORT_NAMES: Final = ("md", "mdeploy")
CATEGORIES: Final = ("ondeck",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"
CRD_FILE: Final = f"{CRD_NAME}.yaml"

#: The server-side-apply field manager of everything the operator writes.
FIELD_MANAGER: Final = "ondeck"
#: `app.kubernetes.io/managed-by` value, and the `app.kubernetes.io/part-of` value.
MANAGED_BY: Final = "ondeck-operator"
PART_OF: Final = "ondeck"
#: `app.kubernetes.io/name` of every child (the application is the ondeck model server).
APP_NAME: Final = "ondeck-server"

# Label keys: the app.kubernetes.io recommended set plus ondeck's own.
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_VERSION: Final = "app.kubernetes.io/version"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
#: Every child carries it; its value is the ModelDeployment's name.
LABEL_MODEL_DEPLOYMENT: Final = f"{GROUP}/model-deployment"
#: The artifact key a Job builds, a PVC holds, or a Deployment's pods serve.
LABEL_ARTIFACT_KEY: Final = f"{GROUP}/artifact-key"
#: Label prefixes a user may not set through `spec.server.podLabels`.
RESERVED_LABEL_PREFIXES: Final = ("app.kubernetes.io/", f"{GROUP}/")

ANNOTATION_ARTIFACT_KEY: Final = f"{GROUP}/artifact-key"
#: On a ModelDeployment: `promote` or `abort` the rollout in progress (a human's call).
ANNOTATION_ROLLOUT: Final = f"{GROUP}/rollout"
ROLLOUT_PROMOTE: Final = "promote"
ROLLOUT_ABORT: Final = "abort"
#: `canary` on the candidate's pods (its Deployment and Service select by it).
LABEL_TRACK: Final = f"{GROUP}/track"
TRACK_CANARY: Final = "canary"
ANNOTATION_MODEL_URI: Final = f"{GROUP}/model-uri"

# app.kubernetes.io/component values.
COMPONENT_SERVER: Final = "server"
COMPONENT_CONVERTER: Final = "converter"
COMPONENT_ARTIFACTS: Final = "artifacts"
#: A candidate's pods while they only receive shadow copies: the Service selects
#: component=server, so they take no caller's request.
COMPONENT_SHADOW: Final = "shadow"

DEFAULT_IMAGE: Final = f"ghcr.io/ondeck/ondeck-server:{__version__}"
#: The conversion Job's image: the server image plus the scikit-learn and PyTorch
#: converters (Dockerfile.converter); the slim server image converts ONNX models only.
DEFAULT_CONVERTER_IMAGE: Final = f"ghcr.io/ondeck/ondeck-converter:{__version__}"
SERVER_PROGRAM: Final = "ondeck-server"
SERVER_PORT: Final = 8080
SERVER_PORT_NAME: Final = "http"
SERVICE_PORT: Final = 80
CONVERT_CONTAINER: Final = "convert"
SERVER_CONTAINER: Final = "server"

# V2 (Open Inference Protocol) endpoints the probes and scrapers use.
HEALTH_LIVE_PATH: Final = "/v2/health/live"
HEALTH_READY_PATH: Final = "/v2/health/ready"
METRICS_PATH: Final = "/metrics"
#: The language-model server's queue gauge (vLLM's name), the LLM autoscaling metric.
LLM_WAITING_METRIC: Final = "vllm:num_requests_waiting"

# Paths inside the pods.
ARTIFACT_MOUNT_PATH: Final = "/artifacts"
SOURCES_MOUNT_PATH: Final = "/sources"
TMP_MOUNT_PATH: Final = "/tmp"
AUTH_MOUNT_PATH: Final = "/var/run/secrets/ondeck/auth"
#: Where the server downloads an artifact from an object store (spec.artifacts.uri).
MODEL_CACHE_PATH: Final = "/var/cache/ondeck"
#: The prefix of the object store's credentials as environment variables.
STORE_ENV_PREFIX: Final = "ONDECK_STORE_"
AUTH_TOKEN_FILE: Final = "token"
TERMINATION_LOG_PATH: Final = "/dev/termination-log"

# Volume names.
VOLUME_ARTIFACTS: Final = "artifacts"
VOLUME_TMP: Final = "tmp"
VOLUME_AUTH: Final = "auth-token"
VOLUME_SOURCE_PREFIX: Final = "source-"

#: Kubernetes length limits (characters).
DNS_LABEL_MAX: Final = 63
DNS_SUBDOMAIN_MAX: Final = 253
LABEL_VALUE_MAX: Final = 63


class Phase(StrEnum):
    """`status.phase`: one word for humans; conditions are the API."""

    PENDING = "Pending"
    CONVERTING = "Converting"
    DEPLOYING = "Deploying"
    READY = "Ready"
    FAILED = "Failed"


class ConditionType(StrEnum):
    """`status.conditions[].type`."""

    #: The model is served at the wanted version and enough replicas are available.
    READY = "Ready"
    #: The artifact for the current spec is built and validated.
    ARTIFACT_READY = "ArtifactReady"
    #: The Deployment has its minimum number of available replicas.
    AVAILABLE = "Available"
    #: A rollout (canary or shadow) of a new artifact is in progress.
    PROGRESSING = "Progressing"
    #: The last rollout ended with the candidate promoted to stable.
    PROMOTED = "Promoted"
    #: The last rollout ended with the candidate removed; the reason names the breach.
    ROLLED_BACK = "RolledBack"
    #: How traffic is split between stable and candidate (Gateway API or replica ratio).
    TRAFFIC_SPLIT = "TrafficSplit"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    """`status.conditions[].reason`: CamelCase, one per distinct cause."""

    PENDING = "Pending"
    CONVERTING = "Converting"
    ARTIFACT_BUILT = "ArtifactBuilt"
    CONVERSION_FAILED = "ConversionFailed"
    CONVERSION_TIMED_OUT = "ConversionTimedOut"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    VALIDATION_FAILED = "ValidationFailed"
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    # The conversion's own failure reasons (`ondeck-server convert`), copied verbatim.
    INVALID_SETTINGS = "InvalidSettings"
    UNSUPPORTED_FORMAT = "UnsupportedFormat"
    UNSAFE_MODEL = "UnsafeModel"
    CONVERTER_MISSING = "ConverterMissing"
    OPTIMIZATION_FAILED = "OptimizationFailed"
    QUANTIZATION_FAILED = "QuantizationFailed"
    STORE_FAILED = "StoreFailed"
    INTERNAL_ERROR = "InternalError"
    INVALID_SPEC = "InvalidSpec"
    APPLY_FAILED = "ApplyFailed"
    DEPLOYING = "Deploying"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    REPLICAS_AVAILABLE = "ReplicasAvailable"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    READY = "Ready"
    # Rollouts (spec.rollout).
    CANDIDATE_STARTING = "CandidateStarting"
    SHADOWING = "Shadowing"
    CANARY_STEP = "CanaryStep"
    ROLLOUT_PROMOTED = "RolloutPromoted"
    ROLLED_BACK = "RolledBack"
    MANUAL_PROMOTE = "ManualPromote"
    MANUAL_ABORT = "ManualAbort"
    ERROR_RATE_EXCEEDED = "ErrorRateExceeded"
    LATENCY_RATIO_EXCEEDED = "LatencyRatioExceeded"
    AGREEMENT_TOO_LOW = "AgreementTooLow"
    NO_ROLLOUT = "NoRollout"
    GATEWAY_ROUTE = "GatewayRoute"
    REPLICA_RATIO = "ReplicaRatio"
