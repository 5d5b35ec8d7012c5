"""The status half of the ModelDeployment API: what the operator observed and reports
(`status.conditions`, `phase`, `url`, the artifact report, replica counts and the scale
subresource's selector), as pydantic models the CRD's status schema is generated from.

Status is written by the operator and read by users and tools (kubectl wait, Argo CD,
Flux); unknown fields are ignored so an older reader accepts a newer writer's status.
Computing status from observed objects is `ondeck_operator.reconcile.status`, not this module.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from ondeck_operator.api.constants import ConditionStatus, Phase
from ondeck_operator.api.fields import REASON_RE, ApiModel, FreeForm
from ondeck_operator.api.rollout import RolloutStatus

__all__ = ["ArtifactReport", "Condition", "LlmReport", "ModelDeploymentStatus", "TensorReport"]


class _Status(ApiModel):
    # Status is written by the operator; tolerate fields from newer operators.
    model_config = ConfigDict(extra="ignore")


class Condition(_Status):
    """A condition, as in Kubernetes API conventions (metav1.Condition)."""

    type: str = Field(max_length=316, description="Ready, ArtifactReady or Available.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=REASON_RE,
        description="CamelCase cause.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When status last changed (RFC 3339).",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The generation this condition was computed for."
    )


class TensorReport(_Status):
    name: str
    datatype: str
    shape: list[int]


class LlmReport(_Status):
    """A language model's KV-cache terms, from the conversion summary: the server's
    memory is sized from them (docs/operations.md#sizing)."""

    num_layers: int | None = Field(default=None, description="Decoder layers.")
    num_key_value_heads: int | None = Field(default=None, description="KV heads per layer.")
    head_size: int | None = Field(default=None, description="Size of one attention head.")
    kv_bytes_per_element: int | None = Field(
        default=None, description="Bytes of one KV-cache element (4: fp32)."
    )
    context_length: int | None = Field(
        default=None, description="The model's context, which the KV cache is allocated for."
    )


class ArtifactReport(_Status):
    """What the conversion produced (from its JSON summary)."""

    key: str | None = Field(default=None, description="Artifact key (hash of the inputs).")
    digest: str | None = Field(default=None, description="Content digest of the artifact.")
    path: str | None = Field(default=None, description="Path in the artifact store.")
    size_bytes: int | None = Field(default=None, description="Optimized model size.")
    original_size_bytes: int | None = Field(default=None, description="Source model size.")
    format: str | None = Field(default=None, description="Source format.")
    quantize: str | None = Field(default=None, description="Quantization applied.")
    inputs: list[TensorReport] | None = Field(default=None, description="Model inputs.")
    outputs: list[TensorReport] | None = Field(default=None, description="Model outputs.")
    validation: FreeForm | None = Field(default=None, description="Accuracy gate report.")
    cached: bool | None = Field(default=None, description="Whether it already existed.")
    kind: str | None = Field(default=None, description="tensor or llm (a language model).")
    precision: str | None = Field(
        default=None, description="Number type of the served weights: fp32, fp16, int8, int4."
    )
    source_size_bytes: int | None = Field(default=None, description="Bytes fetched.")
    llm: LlmReport | None = Field(default=None, description="A language model's KV-cache terms.")


class ModelDeploymentStatus(_Status):
    """The observed state, written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The generation the operator last acted on."
    )
    phase: Phase | None = Field(default=None, description="One-word summary.")
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, ArtifactReady and Available.",
    )
    url: str | None = Field(default=None, description="Inference URL of the model.")
    artifact: ArtifactReport | None = Field(default=None, description="The artifact being served.")
    candidate_artifact: ArtifactReport | None = Field(
        default=None,
        description="The report of the artifact on trial in a rollout, kept for its "
        "promotion (its conversion Job may be gone by then).",
    )
    replicas: int | None = Field(default=None, description="Server pods.")
    ready_replicas: int | None = Field(default=None, description="Ready server pods.")
    selector: str | None = Field(
        default=None, description="Label selector of the server pods (scale subresource)."
    )
    rollout: RolloutStatus | None = Field(
        default=None, description="The rollout of a new artifact (spec.rollout), if any."
    )
