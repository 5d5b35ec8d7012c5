"""How the operator process runs: what it watches, how often it resyncs, its watch
timeouts, peering for HA, and where it serves liveness and metrics.

`OperatorSettings` is filled from `ondeck operator` flags, each of which also reads an
environment variable (`ONDECK_<FLAG>`, see `env_var()`; the Helm chart sets these), so
they can be set either way. What goes into the rendered objects (default image, storage class, Job
limits) is `OperatorConfig` (config.py), read from `--config`; the two flags that people
set most often (`--server-image`, `--artifact-storage-class`) override it here.

What this module does NOT do: parse argv, read files, or import kopf.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ondeck_operator.api.operator_config import OperatorConfig

__all__ = ["ENV_PREFIX", "LogFormat", "LogLevel", "OperatorSettings", "env_var"]

ENV_PREFIX = "ONDECK_"


def env_var(flag: str) -> str:
    """`--resync-seconds` → `ONDECK_RESYNC_SECONDS`."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class OperatorSettings(BaseModel):
    """Everything about running the operator process (not about what it renders)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespaces: tuple[str, ...] = Field(
        default=(), description="Namespaces to watch; empty: every namespace (cluster-wide)."
    )
    kubeconfig: Path | None = Field(
        default=None,
        description="Kubeconfig to use; default: the pod's ServiceAccount in a cluster, "
        "else $KUBECONFIG or ~/.kube/config.",
    )
    context: str | None = Field(default=None, description="Kubeconfig context.")
    config: OperatorConfig = Field(
        default_factory=OperatorConfig, description="Defaults for rendered objects."
    )
    resync_seconds: float = Field(
        default=300.0,
        ge=1.0,
        description="Resync interval: a pass reconciles every ModelDeployment no event "
        "reconciled in the last half interval (an idle resync writes nothing).",
    )
    watch_server_timeout: int = Field(
        default=300,
        ge=1,
        description="timeoutSeconds asked of the API server for each watch request.",
    )
    watch_client_timeout: float = Field(
        default=330.0,
        ge=1.0,
        description="Client-side cap of one watch request; guards against silent watches.",
    )
    watch_inactivity_timeout: float = Field(
        default=120.0,
        ge=1.0,
        description="Reconnect a watch that delivered nothing (not even a bookmark) this long.",
    )
    request_timeout: float = Field(
        default=30.0, ge=1.0, description="Timeout of every other API request."
    )
    workers: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="ModelDeployments reconciled concurrently. A reconcile mostly waits on "
        "the API server (its writes go out together), so this is sized to the API server's "
        "latency under load, not to the operator's CPUs.",
    )
    max_connections: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="API requests of the reconciler in flight at once (keep-alive "
        "connections to the API server); more wait for a free connection.",
    )
    write_wait_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How long a reconcile waits for one child write; a slower write (a "
        "Service queued at the API server's ClusterIP allocator) goes on in the background "
        "and the worker moves on.",
    )
    list_chunk_size: int = Field(
        default=500,
        ge=1,
        description="Objects per page of each watch's initial list (kopf's chunked lists), "
        "so a restart never holds every full object of a kind at once.",
    )
    retry_min_seconds: float = Field(
        default=1.0, gt=0, description="First retry delay after a failed reconcile."
    )
    retry_max_seconds: float = Field(
        default=60.0, gt=0, description="Longest retry delay (doubling from the first)."
    )
    peering: str | None = Field(
        default=None,
        description="KopfPeering (or ClusterKopfPeering) name for HA: of several replicas "
        "only the one with the highest priority works. None: standalone.",
    )
    priority: int | None = Field(
        default=None,
        description="Peering priority; default: random, so replicas never tie.",
    )
    peering_lifetime: int = Field(
        default=60,
        ge=5,
        description="Seconds a silent peer counts as alive; a standby takes over after it.",
    )
    identity: str | None = Field(
        default=None, description="This replica's peering identity (default: the pod name)."
    )
    health_host: str = Field(default="0.0.0.0", description="Address of /healthz and /readyz.")
    health_port: int | None = Field(
        default=8080, ge=1, le=65535, description="Port of /healthz and /readyz; None: off."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Prometheus metrics address.")
    metrics_port: int | None = Field(
        default=9090, ge=1, le=65535, description="Prometheus metrics port; None: off."
    )
    log_level: LogLevel = Field(default=LogLevel.INFO, description="Log verbosity.")
    log_format: LogFormat = Field(default=LogFormat.TEXT, description="text or json lines.")

    @model_validator(mode="after")
    def _timeouts(self) -> OperatorSettings:
        if self.watch_client_timeout <= self.watch_server_timeout:
            raise ValueError(
                "watch client timeout must be longer than the server timeout "
                f"({self.watch_client_timeout} <= {self.watch_server_timeout})"
            )
        if self.retry_max_seconds < self.retry_min_seconds:
            raise ValueError("retry max seconds must be at least retry min seconds")
        return self

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces
