"""OperatorConfig: the cluster-wide settings an operator admin chooses (default image,
artifact storage class, Job limits, pod security identity, ...), as a pydantic model read
from a YAML file (`--config`) with camelCase keys.

It holds defaults only; a ModelDeployment's spec wins wherever it says something. This
module reads a file when asked to and does nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from ondeck_operator.api.constants import (
    ARTIFACT_MOUNT_PATH,
    DEFAULT_CONVERTER_IMAGE,
    DEFAULT_IMAGE,
    SOURCES_MOUNT_PATH,
)
from ondeck_operator.api.fields import PullPolicy, Quantity
from ondeck_operator.api.spec import ResourceRequirements, format_errors


class ConfigError(ValueError):
    """The operator configuration file is missing or invalid."""


class OperatorConfig(BaseModel):
    """Defaults the operator applies to every ModelDeployment it renders."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    server_image: str = Field(
        default=DEFAULT_IMAGE, min_length=1, description="Image when spec.server.image is unset."
    )
    converter_image: str = Field(
        default=DEFAULT_CONVERTER_IMAGE,
        min_length=1,
        description="Image of the conversion Job (has the scikit-learn and PyTorch converters)"
        " when spec.server.image is unset.",
    )
    image_pull_policy: PullPolicy = Field(
        default=PullPolicy.IF_NOT_PRESENT, description="Pull policy when the spec has none."
    )
    artifact_storage_class: str | None = Field(
        default=None, description="StorageClass of artifact claims when the spec has none."
    )
    artifact_mount_path: str = Field(
        default=ARTIFACT_MOUNT_PATH, pattern=r"^/\S+$", description="Artifact store in pods."
    )
    sources_mount_path: str = Field(
        default=SOURCES_MOUNT_PATH,
        pattern=r"^/\S+$",
        description="Where pvc:// source claims are mounted (`--pvc-root`).",
    )
    tmp_size_limit: Quantity = Field(default="1Gi", description="Size limit of /tmp.")
    job_backoff_limit: int = Field(default=1, ge=0, le=10, description="Conversion retries.")
    job_ttl_seconds_after_finished: int = Field(
        default=86400, ge=0, description="How long a finished conversion Job is kept."
    )
    job_resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "1", "memory": "2Gi"}, limits={"memory": "4Gi"}
        ),
        description="Conversion Job resources when spec.optimize.resources is unset.",
    )
    run_as_user: int = Field(
        default=65532, ge=1, description="Non-root UID of every pod (the images' user)."
    )
    run_as_group: int = Field(
        default=65532, ge=1, description="GID of every pod (the images' group)."
    )
    pre_stop_sleep_seconds: int = Field(
        default=5,
        ge=0,
        le=60,
        description="preStop sleep so load balancers stop sending before the drain begins.",
    )
    termination_grace_margin_seconds: int = Field(
        default=5, ge=0, le=60, description="Grace beyond preStop sleep + drain timeout."
    )
    startup_failure_threshold: int = Field(
        default=120, ge=1, description="Startup probe attempts (5 s apart) to load the model."
    )
    revision_history_limit: int = Field(default=3, ge=0, le=100)
    progress_deadline_seconds: int = Field(default=600, ge=30)
    cluster_domain: str = Field(default="cluster.local", min_length=1)

    @classmethod
    def from_file(cls, path: Path) -> Self:
        """Read a YAML config file (camelCase keys)."""
        try:
            data: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of settings")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"config {path}: " + "; ".join(format_errors(exc))) from None
