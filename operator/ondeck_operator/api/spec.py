"""The ModelDeployment API (`ondeck.io/v1alpha1`) as pydantic v2 models: the spec with
its defaults, bounds and cross-field rules, and the root object. The status models
(`api_status`) and the reusable field types and enums (`fields`) are re-exported here, so
`from ondeck_operator.api.spec import ...` is the whole API. These models are the source of
truth: the CRD (`ondeck crd`) and the reference page (`ondeck docs-reference`) are
generated from them.

Field names are snake_case in Python and camelCase in manifests (aliases; both are
accepted). Cross-field rules are `Rule`s, checked here and, as CEL, by the API server.

This module does no I/O and imports neither kopf nor kubernetes.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from ondeck_operator.api import hints
from ondeck_operator.api.constants import (
    DNS_LABEL_MAX,
    RESERVED_LABEL_PREFIXES,
    ConditionStatus,
    ConditionType,
    Phase,
    Reason,
)
from ondeck_operator.api.fields import (
    DNS_1035_RE,
    DNS_LABEL_RE,
    ENV_NAME_RE,
    HOST_RE,
    HTTP_URL_RE,
    INPUT_NAME_RE,
    INT4_BLOCK_SIZES,
    LABEL_KEY_RE,
    LIST_MAP_BY_NAME,
    PVC_URI_RE,
    S3_STORE_RE,
    SECRET_KEY_RE,
    SERVED_NAME_RE,
    SHA256_RE,
    URI_RE,
    URL_PATH_RE,
    AccessMode,
    ApiModel,
    Format,
    FreeForm,
    LabelValue,
    ObjectName,
    OptimizationLevel,
    PathType,
    PullPolicy,
    Quantity,
    Quantize,
    ServiceType,
    TaintEffect,
    TensorDType,
    TolerationOperator,
    keys_rule,
    pattern_hint,
    unique_names_rule,
)
from ondeck_operator.api.rollout import (
    AnalysisSpec,
    GatewaySpec,
    ParentRef,
    RolloutSpec,
    RolloutStep,
    RolloutStrategy,
    ShadowSpec,
)
from ondeck_operator.api.rules import RULE_ERROR, Rule
from ondeck_operator.api.status import (
    ArtifactReport,
    Condition,
    LlmReport,
    ModelDeploymentStatus,
    TensorReport,
)

__all__ = [
    "AccessMode",
    "AnalysisSpec",
    "ArtifactPVC",
    "ArtifactReport",
    "ArtifactsSpec",
    "AuthSpec",
    "AutoscalingSpec",
    "BatchingSpec",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "CustomMetric",
    "EnvVar",
    "EnvVarSource",
    "Format",
    "GatewaySpec",
    "IngressSpec",
    "IngressTLS",
    "InputSpec",
    "Int4Spec",
    "KeySelector",
    "LlmReport",
    "LlmSamplingSpec",
    "LlmSpec",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelSource",
    "ObjectMeta",
    "OptimizationLevel",
    "OptimizeSpec",
    "ParentRef",
    "PathType",
    "Phase",
    "PullPolicy",
    "Quantize",
    "Reason",
    "ResourceRequirements",
    "RolloutSpec",
    "RolloutStep",
    "RolloutStrategy",
    "ServerSpec",
    "ServiceSpec",
    "ServiceType",
    "ShadowSpec",
    "SpecError",
    "TaintEffect",
    "TensorDType",
    "TensorReport",
    "Toleration",
    "TolerationOperator",
    "ValidationSpec",
    "format_errors",
    "prune_nulls",
]


class SpecError(ValueError):
    """A ModelDeployment manifest is invalid. `problems` holds one line per problem,
    each naming the field (`spec.autoscaling.minReplicas: ...`) and the rule."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


# ----------------------------------------------------------------------- model


class InputSpec(ApiModel):
    """One model input, for formats whose inputs cannot be read from the file (PyTorch)."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="shape",
            cel="self.shape.all(d, d == -1 || d >= 1)",
            message="shape dimensions must be positive sizes or -1 (dynamic)",
            check=lambda m: all(d == -1 or d >= 1 for d in m.shape),
        ),
    )

    name: str = Field(
        min_length=1, max_length=128, pattern=INPUT_NAME_RE, description="Input tensor name."
    )
    dtype: TensorDType = Field(description="Element type.")
    shape: list[Annotated[int, Field(ge=-1, le=2**31 - 1)]] = Field(
        min_length=1,
        max_length=8,
        description="Dimensions; -1 for a dynamic dimension (e.g. the batch).",
    )


class ModelSource(ApiModel):
    """Where the model comes from and how to read it."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="uri",
            cel="!self.uri.startsWith('pvc://') || self.uri.matches(r'" + PVC_URI_RE + "')",
            message="a pvc:// uri must be pvc://<claim>/<path> with a valid claim name",
            check=lambda m: not m.uri.startswith("pvc://") or bool(re.match(PVC_URI_RE, m.uri)),
        ),
        Rule(
            # A torch.export program (.pt2) records its inputs; TorchScript does not.
            field="inputs",
            cel="!has(self.format) || self.format != 'pytorch' || "
            "(has(self.inputs) && size(self.inputs) > 0) || self.uri.endsWith('.pt2')",
            message="format pytorch needs inputs (name, dtype and shape of each input) unless "
            "the uri is a torch.export program (.pt2)",
            check=lambda m: m.format != Format.PYTORCH or bool(m.inputs) or m.uri.endswith(".pt2"),
        ),
        unique_names_rule("inputs"),
    )

    uri: str = Field(
        min_length=1,
        max_length=2048,
        pattern=URI_RE,
        description="Model location: file://, a plain path, http(s)://, s3://bucket/key, "
        "gs://bucket/key, hf://repo/file or pvc://<claim>/<path>.",
    )
    format: Format | None = Field(
        default=None, description="Source format; inferred from the file when omitted."
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_RE,
        description="Expected SHA-256 of the fetched file (lower-case hex); a mismatch fails "
        "the conversion and nothing is deployed.",
    )
    credentials_secret: ObjectName | None = Field(
        default=None,
        description="Secret in the same namespace whose keys (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, HF_TOKEN, ...) become "
        "environment variables of the conversion Job.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        alias="s3EndpointURL",
        pattern=HTTP_URL_RE,
        max_length=2048,
        description="Endpoint of an S3-compatible store (MinIO, Ceph, ...).",
    )
    inputs: list[InputSpec] | None = Field(
        default=None,
        max_length=64,
        json_schema_extra=LIST_MAP_BY_NAME,
        description="Model inputs; required for pytorch TorchScript, optional otherwise "
        "(a torch.export .pt2 program records its own).",
    )
    size: Quantity | None = Field(
        default=None,
        description="Approximate size of the source, all its files (e.g. 14Gi). The "
        "operator never fetches the model, so this is how the conversion Job's memory (and, "
        "with an object store, its ephemeral-storage) is sized; optimize.resources wins.",
    )
    allow_unsafe_pickle: bool = Field(
        default=False,
        description="Allow joblib/pickle scikit-learn files, which run code when loaded. "
        "Only for models you trust; prefer skops or ONNX.",
    )


class ValidationSpec(ApiModel):
    """The accuracy gate: the optimized model must agree with the original."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="data",
            cel="!has(self.data) || !self.data.startsWith('pvc://') || "
            "self.data.matches(r'" + PVC_URI_RE + "')",
            message="a pvc:// validation data URI must be pvc://<claim>/<path> with a valid "
            "claim name",
            check=lambda m: (
                m.data is None
                or not m.data.startswith("pvc://")
                or bool(re.match(PVC_URI_RE, m.data))
            ),
        ),
    )

    samples: int = Field(default=64, ge=1, le=10000, description="Number of inputs compared.")
    data: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        pattern=URI_RE,
        description="A .npz of real inputs (one array per model input) the gate judges on, "
        "fetched like the model; default: calibration, else generated inputs.",
    )
    min_cosine: float = Field(
        default=0.99,
        ge=0.0,
        le=1.0,
        description="Lowest allowed cosine similarity between original and optimized outputs.",
    )
    max_top1_disagreement: float = Field(
        default=0.04,
        ge=0.0,
        le=1.0,
        description="Highest allowed fraction of samples whose arg-max differs (0.04: 2 "
        "flips of 64; see docs/conversion.md for the statistics).",
    )


class Int4Spec(ApiModel):
    """Weight-only 4-bit MatMul (quantize int4): onnxruntime's MatMulNBits settings."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="blockSize",
            cel="!has(self.blockSize) || self.blockSize in ["
            + ", ".join(map(str, INT4_BLOCK_SIZES))
            + "]",
            message="blockSize must be one of " + ", ".join(map(str, INT4_BLOCK_SIZES)),
            check=lambda m: m.block_size in INT4_BLOCK_SIZES,
        ),
    )

    block_size: int = Field(
        default=32,
        ge=INT4_BLOCK_SIZES[0],
        le=INT4_BLOCK_SIZES[-1],
        description="Weights of one column that share a scale and zero point (16, 32, 64, "
        "128 or 256); smaller is more accurate and a little bigger.",
    )
    accuracy_level: int = Field(
        default=4,
        ge=1,
        le=4,
        description="Compute type of the 4-bit MatMul: 1 fp32, 2 fp16, 3 bf16 (x86 CPUs "
        "compute both in fp32), 4 int8 activations (fastest; 1 when activations have "
        "outliers the gate refuses).",
    )


class OptimizeSpec(ApiModel):
    """How the conversion Job optimizes and checks the model."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="calibration",
            # has(): the API server also checks this rule on the CRD's default ({}).
            cel="!has(self.quantize) || self.quantize != 'int8-static' || has(self.calibration)",
            message="quantize int8-static needs calibration (a .npz of input arrays)",
            check=lambda m: m.quantize != Quantize.INT8_STATIC or m.calibration is not None,
        ),
        Rule(
            field="calibration",
            cel="!has(self.calibration) || !self.calibration.startsWith('pvc://') || "
            "self.calibration.matches(r'" + PVC_URI_RE + "')",
            message="a pvc:// calibration must be pvc://<claim>/<path> with a valid claim name",
            check=lambda m: (
                m.calibration is None
                or not m.calibration.startswith("pvc://")
                or bool(re.match(PVC_URI_RE, m.calibration))
            ),
        ),
        Rule(
            field="int4",
            cel="!has(self.int4) || (has(self.quantize) && "
            "(self.quantize == 'int4' || self.quantize == 'auto'))",
            message="int4 settings need quantize int4 or auto",
            check=lambda m: m.int4 is None or m.quantize in (Quantize.INT4, Quantize.AUTO),
        ),
    )

    level: OptimizationLevel = Field(
        default=OptimizationLevel.BASIC,
        description="onnxruntime graph optimization level; basic is hardware independent.",
    )
    quantize: Quantize = Field(
        default=Quantize.NONE,
        description="Weight quantization; auto tries each mode that applies on the "
        "conversion machine and keeps the fastest that passes the gate.",
    )
    int4: Int4Spec | None = Field(
        default=None,
        description="Settings of quantize int4; blockSize 32 and accuracyLevel 4 when omitted.",
    )
    calibration: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        pattern=URI_RE,
        description="A .npz of input arrays for int8-static, fetched like the model.",
    )
    validation: ValidationSpec = Field(
        default_factory=ValidationSpec,
        json_schema_extra={"default": {}},
        description="Accuracy gate between the original and the optimized model.",
    )
    timeout_seconds: int = Field(
        default=3600,
        ge=60,
        le=86400,
        description="Deadline of the conversion Job (activeDeadlineSeconds).",
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="Resources of the conversion Job; the operator's default when omitted.",
    )


class ResourceRequirements(ApiModel):
    """Container resources, as in a Pod spec."""

    requests: dict[str, Quantity] | None = Field(
        default=None, max_length=16, description="Minimum resources, e.g. cpu: 500m."
    )
    limits: dict[str, Quantity] | None = Field(
        default=None, max_length=16, description="Maximum resources, e.g. memory: 2Gi."
    )


OptimizeSpec.model_rebuild()


class BatchingSpec(ApiModel):
    """Dynamic batching of concurrent requests in the server."""

    max_batch_size: int = Field(
        default=32, ge=1, le=4096, description="Largest batch; 1 turns batching off."
    )
    max_delay_ms: float = Field(
        default=2.0, ge=0.0, le=1000.0, description="Longest wait to fill a batch."
    )


class LlmSamplingSpec(ApiModel):
    """Sampling of a request that sets none of its own (each field: `--default-*` of the
    server); OpenAI's defaults for the fields left out."""

    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, description="0 is greedy; OpenAI's default is 1."
    )
    top_p: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Nucleus sampling's mass; default 1."
    )
    top_k: int | None = Field(
        default=None, ge=0, le=1 << 20, description="The k most likely tokens; 0 (default): off."
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=1 << 20,
        description="New tokens of a request without max_tokens; default: 16 for "
        "completions, what the context leaves for chat.",
    )


class LlmSpec(ApiModel):
    """Serving a language model (model format hf-causal-lm)."""

    max_context_length: int | None = Field(
        default=None,
        ge=16,
        le=1 << 20,
        description="Most tokens of a prompt plus its output (`--max-context-length`); "
        "the model's own context when omitted, and never more than it.",
    )
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Most sequences decoding together (`--max-batch-size`; each holds its "
        "own KV cache); server.batching.maxBatchSize when omitted.",
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=128,
        pattern=SERVED_NAME_RE,
        description="The model name of the OpenAI API (`model` in requests, "
        "`/v1/models`); metadata.name when omitted.",
    )
    sampling: LlmSamplingSpec | None = Field(
        default=None, description="Default sampling of requests that set none."
    )


class AuthSpec(ApiModel):
    """Bearer-token authentication of inference requests."""

    secret_name: ObjectName = Field(description="Secret holding the token.")
    key: str = Field(
        default="token",
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY_RE,
        description="Key of the token in the Secret.",
    )


class KeySelector(ApiModel):
    name: ObjectName = Field(description="Name of the Secret or ConfigMap.")
    key: str = Field(min_length=1, max_length=253, description="Key in it.")
    optional: bool | None = Field(default=None, description="Whether it may be missing.")


class EnvVarSource(ApiModel):
    """One source of an environment variable's value."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="secretKeyRef",
            cel="[has(self.secretKeyRef), has(self.configMapKeyRef)].filter(x, x).size() == 1",
            message="set exactly one of secretKeyRef and configMapKeyRef",
            check=lambda m: (m.secret_key_ref is None) != (m.config_map_key_ref is None),
        ),
    )

    secret_key_ref: KeySelector | None = Field(default=None, description="A Secret key.")
    config_map_key_ref: KeySelector | None = Field(default=None, description="A ConfigMap key.")


class EnvVar(ApiModel):
    """An environment variable of the server container."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="valueFrom",
            cel="!(has(self.value) && has(self.valueFrom))",
            message="set value or valueFrom, not both",
            check=lambda m: m.value is None or m.value_from is None,
        ),
    )

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=ENV_NAME_RE,
        description="Variable name.",
    )
    value: str | None = Field(default=None, description="Literal value.")
    value_from: EnvVarSource | None = Field(default=None, description="Value from a key.")


class Toleration(ApiModel):
    """A toleration of the server pods, as in a Pod spec."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="operator",
            cel="has(self.key) || (has(self.operator) && self.operator == 'Exists')",
            message="operator must be Exists when key is empty (it then tolerates every taint)",
            check=lambda m: m.key is not None or m.operator == TolerationOperator.EXISTS,
        ),
        Rule(
            field="value",
            cel="!has(self.operator) || self.operator != 'Exists' || !has(self.value) "
            "|| self.value == ''",
            message="value must be empty when operator is Exists",
            check=lambda m: m.operator != TolerationOperator.EXISTS or not m.value,
        ),
        Rule(
            field="tolerationSeconds",
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds needs effect NoExecute",
            check=lambda m: m.toleration_seconds is None or m.effect == TaintEffect.NO_EXECUTE,
        ),
    )

    key: str | None = Field(
        default=None,
        max_length=316,
        pattern=LABEL_KEY_RE,
        description="Taint key; empty with operator Exists tolerates every taint.",
    )
    operator: TolerationOperator | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: LabelValue | None = Field(default=None, description="Taint value for Equal.")
    effect: TaintEffect | None = Field(default=None, description="Taint effect; all when empty.")
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays bound."
    )


class ServerSpec(ApiModel):
    """The inference server Deployment."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="podLabels",
            cel="!has(self.podLabels) || self.podLabels.all(k, "
            + " && ".join(f"!k.startsWith('{p}')" for p in RESERVED_LABEL_PREFIXES)
            + ")",
            message="podLabels may not use the reserved prefixes "
            + " or ".join(RESERVED_LABEL_PREFIXES),
            check=lambda m: (
                not any(k.startswith(RESERVED_LABEL_PREFIXES) for k in m.pod_labels or {})
            ),
        ),
        keys_rule("podLabels", "pod_labels"),
        keys_rule("podAnnotations", "pod_annotations"),
        keys_rule("nodeSelector", "node_selector"),
        unique_names_rule("env"),
    )

    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Server image; the operator's default when omitted. The conversion "
        "Job runs the same image.",
    )
    image_pull_policy: PullPolicy | None = Field(default=None, description="Pull policy.")
    image_pull_secrets: list[ObjectName] | None = Field(
        default=None, max_length=16, description="Names of image pull Secrets."
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Replicas when autoscaling is off (the scale subresource sets it).",
    )
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(requests={"cpu": "1"}),
        json_schema_extra={"default": {"requests": {"cpu": "1"}}},
        description="Server container resources. Memory left out is computed from the "
        "served artifact (weights, plus the KV cache of a language model), and so is "
        "ephemeral-storage with an object store (docs/operations.md#sizing); a value "
        "given here wins.",
    )
    batching: BatchingSpec = Field(
        default_factory=BatchingSpec,
        json_schema_extra={"default": {}},
        description="Dynamic batching.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="onnxruntime intra-op threads; the container's CPU quota when omitted.",
    )
    max_body_bytes: int | None = Field(
        default=None, ge=1024, description="Largest request body; 413 past it."
    )
    max_queue: int | None = Field(
        default=None, ge=1, description="Most queued requests; 503 with Retry-After past it."
    )
    drain_timeout_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="On shutdown, how long in-flight requests may finish.",
    )
    auth: AuthSpec | None = Field(default=None, description="Require a bearer token.")
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=128,
        json_schema_extra=LIST_MAP_BY_NAME,
        description="Extra environment variables (HOME=/tmp is set; one here wins).",
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None, max_length=64, description="Node selector of the server pods."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=64, description="Tolerations of the server pods."
    )
    affinity: FreeForm | None = Field(
        default=None, description="Affinity of the server pods, as in a Pod spec."
    )
    service_account_name: ObjectName | None = Field(
        default=None, description="ServiceAccount of the server and conversion pods."
    )
    pod_annotations: dict[str, str] | None = Field(
        default=None, max_length=64, description="Extra annotations of the server pods."
    )
    pod_labels: dict[str, LabelValue] | None = Field(
        default=None, max_length=64, description="Extra labels of the server pods."
    )


class CustomMetric(ApiModel):
    """A per-pod metric (from a metrics adapter) to scale on, as an average target."""

    name: str = Field(
        min_length=1, max_length=253, description="Metric name, e.g. ondeck_queue_depth."
    )
    target_average_value: Quantity = Field(description="Wanted average value per pod.")


class AutoscalingSpec(ApiModel):
    """A HorizontalPodAutoscaler for the server; `server.replicas` is then ignored."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="minReplicas",
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
            check=lambda m: m.min_replicas <= m.max_replicas,
        ),
    )

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    target_cpu_utilization: int = Field(
        default=70,
        ge=1,
        le=100,
        alias="targetCPUUtilization",
        description="Wanted average CPU use, percent of the CPU request.",
    )
    metric: CustomMetric | None = Field(
        default=None, description="Also scale on this per-pod metric."
    )
    target_requests_waiting: Quantity | None = Field(
        default=None,
        description="Language models: also scale on vllm:num_requests_waiting, the "
        "wanted average of queued requests per pod (a Pods metric; needs a metrics "
        "adapter, docs/llm.md#autoscaling).",
    )


class ServiceSpec(ApiModel):
    """The Service in front of the server pods."""

    __rules__: ClassVar[tuple[Rule, ...]] = (keys_rule("annotations", "annotations"),)

    type: ServiceType = Field(default=ServiceType.CLUSTER_IP, description="Service type.")
    port: int = Field(default=80, ge=1, le=65535, description="Service port.")
    annotations: dict[str, str] | None = Field(
        default=None, max_length=64, description="Service annotations."
    )


class IngressTLS(ApiModel):
    secret_name: ObjectName = Field(description="Secret with the TLS certificate and key.")


class IngressSpec(ApiModel):
    """An Ingress (networking.k8s.io/v1) to the Service."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="tls",
            cel="!has(self.tls) || has(self.host)",
            message="tls needs host (the certificate is for a host name)",
            check=lambda m: m.tls is None or m.host is not None,
        ),
        keys_rule("annotations", "annotations"),
    )

    host: str | None = Field(
        default=None, max_length=253, pattern=HOST_RE, description="Host name; all when omitted."
    )
    path: str = Field(
        default="/",
        min_length=1,
        max_length=1024,
        pattern=URL_PATH_RE,
        description="Path matched on the request (the server sees it unchanged).",
    )
    path_type: PathType = Field(default=PathType.PREFIX, description="How path matches.")
    class_name: str | None = Field(default=None, max_length=253, description="IngressClass name.")
    annotations: dict[str, str] | None = Field(
        default=None, max_length=64, description="Ingress annotations."
    )
    tls: IngressTLS | None = Field(default=None, description="Serve HTTPS for host.")


class ArtifactPVC(ApiModel):
    """The PersistentVolumeClaim the conversion Job writes the artifact to."""

    size: Quantity = Field(default="5Gi", description="Claim size.")
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="StorageClass; the operator's default, else the cluster's, when omitted.",
    )
    access_modes: list[AccessMode] = Field(
        default_factory=lambda: [AccessMode.READ_WRITE_ONCE],
        min_length=1,
        max_length=4,
        json_schema_extra={"default": ["ReadWriteOnce"]},
        description="Access modes. With ReadWriteOnce (the default) every server pod runs on "
        "the node that mounts the claim; ReadOnlyMany or ReadWriteMany let replicas spread "
        "across nodes.",
    )


class ArtifactsSpec(ApiModel):
    """Where artifacts are stored: a claim per artifact (default), an existing claim, or
    an object store (s3://)."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="existingClaim",
            cel="!(has(self.pvc) && has(self.existingClaim))",
            message="set pvc or existingClaim, not both",
            check=lambda m: m.pvc is None or m.existing_claim is None,
        ),
        Rule(
            field="uri",
            cel="!has(self.uri) || (!has(self.pvc) && !has(self.existingClaim))",
            message="set uri (an object store) or pvc/existingClaim (a claim), not both",
            check=lambda m: m.uri is None or (m.pvc is None and m.existing_claim is None),
        ),
        Rule(
            field="credentialsSecret",
            cel="has(self.uri) || (!has(self.credentialsSecret) && !has(self.s3EndpointURL))",
            message="credentialsSecret and s3EndpointURL apply to an object store: set uri",
            check=lambda m: (
                m.uri is not None or (m.credentials_secret is None and m.s3_endpoint_url is None)
            ),
        ),
    )

    pvc: ArtifactPVC | None = Field(
        default=None, description="Settings of the claim created per artifact."
    )
    existing_claim: ObjectName | None = Field(
        default=None,
        description="Use this existing claim as the artifact store instead (shared, "
        "usually ReadWriteMany).",
    )
    uri: str | None = Field(
        default=None,
        max_length=1024,
        pattern=S3_STORE_RE,
        description="Use an object store instead of a claim: s3://<bucket>/<prefix>. The Job "
        "uploads the artifact there (manifest last), the server downloads it at start-up.",
    )
    credentials_secret: ObjectName | None = Field(
        default=None,
        description="Secret whose keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and "
        "AWS_SESSION_TOKEN, AWS_REGION) give access to the object store; mounted as "
        "ONDECK_STORE_-prefixed environment variables into the Job and the server, so they "
        "never mix with spec.model.credentialsSecret.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        alias="s3EndpointURL",
        pattern=HTTP_URL_RE,
        max_length=2048,
        description="Endpoint of an S3-compatible object store (MinIO, Ceph, ...).",
    )


class ModelDeploymentSpec(ApiModel):
    """The wanted state: a model, how to optimize it, and how to serve it."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            field="autoscaling",
            cel="!has(self.autoscaling) || (has(self.server) && has(self.server.resources) "
            "&& has(self.server.resources.requests) && 'cpu' in self.server.resources.requests)",
            message="autoscaling needs server.resources.requests.cpu "
            "(the CPU target is a percentage of it)",
            check=lambda m: m.autoscaling is None or "cpu" in (m.server.resources.requests or {}),
        ),
        Rule(
            field="llm",
            cel="!has(self.llm) || (has(self.model.format) && self.model.format == '"
            + Format.HF_CAUSAL_LM.value
            + "')",
            message="llm settings need model.format " + Format.HF_CAUSAL_LM.value,
            check=lambda m: m.llm is None or m.model.format == Format.HF_CAUSAL_LM,
        ),
        Rule(
            field="autoscaling",
            cel="!has(self.autoscaling) || !has(self.autoscaling.targetRequestsWaiting) || "
            "(has(self.model.format) && self.model.format == '" + Format.HF_CAUSAL_LM.value + "')",
            message="autoscaling.targetRequestsWaiting needs model.format "
            + Format.HF_CAUSAL_LM.value
            + " (vllm:num_requests_waiting is a language-model metric)",
            check=lambda m: (
                m.autoscaling is None
                or m.autoscaling.target_requests_waiting is None
                or m.model.format == Format.HF_CAUSAL_LM
            ),
        ),
        Rule(
            field="rollout",
            cel="!has(self.rollout) || !has(self.rollout.strategy) || "
            "self.rollout.strategy != '"
            + RolloutStrategy.SHADOW_THEN_CANARY.value
            + "' || !has(self.model.format) || self.model.format != '"
            + Format.HF_CAUSAL_LM.value
            + "'",
            message="strategy shadow-then-canary does not apply to model.format "
            + Format.HF_CAUSAL_LM.value
            + " (the language-model server copies no requests); use canary",
            check=lambda m: (
                m.rollout.strategy != RolloutStrategy.SHADOW_THEN_CANARY
                or m.model.format != Format.HF_CAUSAL_LM
            ),
        ),
    )

    model: ModelSource = Field(description="The model to serve.")
    optimize: OptimizeSpec = Field(
        default_factory=OptimizeSpec,
        json_schema_extra={"default": {}},
        description="Optimization, quantization and the accuracy gate.",
    )
    server: ServerSpec = Field(
        default_factory=ServerSpec,
        json_schema_extra={"default": {}},
        description="The inference server.",
    )
    llm: LlmSpec | None = Field(
        default=None,
        description="Language-model serving (context, concurrent sequences, served name); "
        "only with model.format hf-causal-lm.",
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="Scale the server with a HorizontalPodAutoscaler."
    )
    service: ServiceSpec = Field(
        default_factory=ServiceSpec,
        json_schema_extra={"default": {}},
        description="The Service.",
    )
    ingress: IngressSpec | None = Field(default=None, description="Expose through an Ingress.")
    artifacts: ArtifactsSpec = Field(
        default_factory=ArtifactsSpec,
        json_schema_extra={"default": {}},
        description="Artifact storage.",
    )
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        json_schema_extra={"default": {}},
        description="How a new artifact replaces the served one: replace (a rolling update), "
        "canary or shadow-then-canary (see docs/rollout.md).",
    )
    gateway: GatewaySpec | None = Field(
        default=None,
        description="Also route through these Gateways with an HTTPRoute; a canary then "
        "splits traffic by exact weights instead of by replica counts.",
    )

    def wanted_replicas(self) -> int:
        """The fewest replicas the user asked for (the HPA's minimum when autoscaling)."""
        return self.autoscaling.min_replicas if self.autoscaling else self.server.replicas


# ------------------------------------------------------------------------ root


class ObjectMeta(BaseModel):
    """The subset of metadata ondeck reads; everything else is kept as is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str = Field(min_length=1, max_length=DNS_LABEL_MAX, pattern=DNS_1035_RE)
    namespace: str | None = Field(default=None, max_length=DNS_LABEL_MAX, pattern=DNS_LABEL_RE)
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class ModelDeployment(BaseModel):
    """A model served on Kubernetes: fetched, converted to ONNX, optimized, validated,
    and served behind a Service, an optional Ingress and an optional autoscaler."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    api_version: Literal["ondeck.io/v1alpha1"] = "ondeck.io/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

    @classmethod
    def from_manifest(cls, manifest: object) -> Self:
        """Validate a parsed YAML/JSON object; raise `SpecError` naming every problem."""
        if not isinstance(manifest, dict):
            raise SpecError([f"manifest: expected a mapping, got {type(manifest).__name__}"])
        try:
            return cls.model_validate(prune_nulls(manifest))
        except ValidationError as exc:
            raise SpecError(format_errors(exc, cls)) from None

    def to_manifest(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def prune_nulls(value: Any) -> Any:
    """Drop `key: null` entries of every mapping, as the API server does for a custom
    resource before defaulting (`replicas:` with no value means "use the default")."""
    if isinstance(value, dict):
        return {k: prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_nulls(v) for v in value]
    return value


def format_errors(exc: ValidationError, root: type[BaseModel] | None = None) -> list[str]:
    """One line per problem: `spec.autoscaling.minReplicas: <what is wrong>`. With the
    model class validated (`root`), an unknown field names the field it resembles."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        # A tagged-union or wrapper step adds noise to the path; drop what is no field.
        loc = [p for p in loc if not p.startswith("function-")]
        if err["type"] == RULE_ERROR:
            loc.append(str(err.get("ctx", {}).get("field", "")))
        where = _join_loc(loc) or "manifest"
        msg = err["msg"]
        quote = (
            hints.yaml_scalar_hint(loc[-1], err.get("input"))
            if err["type"] == "string_type" and loc
            else None
        )
        if err["type"] == "extra_forbidden":
            msg = hints.unknown_field_message(root, loc[:-1], loc[-1] if loc else "")
        elif quote is not None:
            msg = quote
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "string_pattern_mismatch":
            msg = f"{err['input']!r} is not {pattern_hint(str(err['ctx']['pattern']))}"
        lines.append(f"{where}: {msg}")
    return lines


def _join_loc(parts: list[str]) -> str:
    out = ""
    for part in parts:
        if part.isdigit():
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = part
    return out
