"""`ServeSettings`: every knob of `ondeck-server serve`, validated once at start-up.

Each field has exactly one command-line flag and one `ONDECK_…` environment variable
(listed in `FLAGS`, the one table the CLI, the docs test and docs/server.md follow).
This module validates values; it does not open files or start anything (`ref_name`
only looks whether a path is a link).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ondeck_server.artifact import REFS_DIR

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

#: field name -> (flag, environment variable)
FLAGS: dict[str, tuple[str, str]] = {
    "model": ("--model", "ONDECK_MODEL"),
    "name": ("--name", "ONDECK_MODEL_NAME"),
    "host": ("--host", "ONDECK_HOST"),
    "port": ("--port", "ONDECK_PORT"),
    "max_batch_size": ("--max-batch-size", "ONDECK_MAX_BATCH_SIZE"),
    "max_delay_ms": ("--max-delay-ms", "ONDECK_MAX_DELAY_MS"),
    "threads": ("--threads", "ONDECK_THREADS"),
    "auth_token_file": ("--auth-token-file", "ONDECK_AUTH_TOKEN_FILE"),
    "auth_token": ("--auth-token", "ONDECK_AUTH_TOKEN"),
    "max_body_bytes": ("--max-body-bytes", "ONDECK_MAX_BODY_BYTES"),
    "max_queue": ("--max-queue", "ONDECK_MAX_QUEUE"),
    "drain_timeout": ("--drain-timeout", "ONDECK_DRAIN_TIMEOUT"),
    "max_tensor_elements": ("--max-tensor-elements", "ONDECK_MAX_TENSOR_ELEMENTS"),
    "header_timeout": ("--header-timeout", "ONDECK_HEADER_TIMEOUT"),
    "body_timeout": ("--body-timeout", "ONDECK_BODY_TIMEOUT"),
    "max_connections": ("--max-connections", "ONDECK_MAX_CONNECTIONS"),
    "max_context_length": ("--max-context-length", "ONDECK_MAX_CONTEXT_LENGTH"),
    "default_temperature": ("--default-temperature", "ONDECK_DEFAULT_TEMPERATURE"),
    "default_top_p": ("--default-top-p", "ONDECK_DEFAULT_TOP_P"),
    "default_top_k": ("--default-top-k", "ONDECK_DEFAULT_TOP_K"),
    "default_max_tokens": ("--default-max-tokens", "ONDECK_DEFAULT_MAX_TOKENS"),
    "shadow_url": ("--shadow-url", "ONDECK_SHADOW_URL"),
    "shadow_percent": ("--shadow-percent", "ONDECK_SHADOW_PERCENT"),
}

#: Bounds of `--max-context-length` (tokens; a language model's prompt plus its output).
MIN_CONTEXT_LENGTH = 16
MAX_CONTEXT_LENGTH = 1 << 20

#: Default bound on the elements of any one input, and of any output the model would
#: make from a request (2^26: 256 MiB of float32); past it a request gets 400.
DEFAULT_MAX_TENSOR_ELEMENTS = 1 << 26


class ServeSettings(BaseModel):
    """Settings of one model server process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Path = Field(description="a model.onnx, an artifact folder, or a refs/NAME link")
    name: str | None = Field(
        default=None,
        description="model name in URLs; default: the manifest's name, else the file name",
    )
    host: str = Field(default="0.0.0.0", description="address to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port (0: any free port)")
    max_batch_size: int = Field(
        default=32,
        ge=1,
        le=4096,
        description=(
            "rows per dynamic batch; 1 turns batching off (language models: sequences "
            "decoding together, one KV-cache slot each)"
        ),
    )
    max_delay_ms: float = Field(
        default=2.0,
        ge=0.0,
        le=1000.0,
        description=(
            "longest a partly filled batch waits for requests already being received; "
            "0 turns it off (language models batch continuously and never wait)"
        ),
    )
    threads: int | None = Field(
        default=None, ge=1, le=1024, description="onnxruntime intra-op threads; default: CPU quota"
    )
    auth_token_file: Path | None = Field(
        default=None, description="file holding the bearer token (a mounted Secret)"
    )
    auth_token: SecretStr | None = Field(default=None, description="the bearer token itself")
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="largest request body; 413 past it"
    )
    max_queue: int = Field(
        default=256, ge=1, description="requests waiting for inference; 503 + Retry-After past it"
    )
    drain_timeout: float = Field(
        default=30.0, ge=0.0, le=3600.0, description="SIGTERM: seconds to finish in-flight work"
    )
    max_tensor_elements: int = Field(
        default=DEFAULT_MAX_TENSOR_ELEMENTS,
        ge=1,
        le=1 << 40,
        description="largest element count of any input dimension, input, or output the"
        " model would produce for a request; 400 past it",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0.0,
        le=3600.0,
        description="seconds a connection may take to send a request's headers; closed past it",
    )
    body_timeout: float = Field(
        default=60.0,
        gt=0.0,
        le=3600.0,
        description="seconds a request's whole body may take to arrive, however steadily "
        "it trickles; 408 past it",
    )
    max_connections: int = Field(
        default=1024,
        ge=2,
        le=1_000_000,
        description="open connections (and requests in progress) before idle connections are"
        " closed and new requests get 503; probes are always answered",
    )
    max_context_length: int | None = Field(
        default=None,
        ge=MIN_CONTEXT_LENGTH,
        le=MAX_CONTEXT_LENGTH,
        description="language models: most tokens of a prompt plus its output, at most the"
        " model's own context; default: the model's context (tensor models ignore it)",
    )
    default_temperature: float | None = Field(
        default=None,
        ge=0.0,
        le=2.0,
        description="language models: temperature of a request that sets none (0: greedy);"
        " default: OpenAI's, 1",
    )
    default_top_p: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="language models: top_p of a request that sets none; default 1",
    )
    default_top_k: int | None = Field(
        default=None,
        ge=0,
        le=1 << 20,
        description="language models: top_k of a request that sets none (0: off); default 0",
    )
    default_max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CONTEXT_LENGTH,
        description="language models: most new tokens of a request that sets no max_tokens;"
        " default: 16 for completions (OpenAI's), what the context leaves for chat",
    )

    shadow_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="copy a share of inference requests, after answering them, to the"
        " candidate server at this URL and count how often its answers agree",
    )
    shadow_percent: int = Field(
        default=100, ge=1, le=100, description="percent of inference requests copied"
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(
                "must start with a letter or digit and hold only letters, digits, '.', '_'"
                " or '-' (at most 128)"
            )
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> ServeSettings:
        if self.auth_token_file is not None and self.auth_token is not None:
            raise ValueError("give --auth-token-file or --auth-token, not both")
        return self


def model_name_for(path: Path, manifest_name: str | None, *, ref: str | None = None) -> str:
    """The default model name, made URL-safe: the ref's when `--model` is one (what the
    user named the model: `convert --ref iris`, `ondeck run`'s refs), else the
    manifest's (the source file's name), else the file or folder name."""
    candidate = (
        ref or manifest_name or (path.parent.name if path.name == "model.onnx" else path.stem)
    )
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", candidate).strip("-._") or "model"
    return cleaned[:128]


def ref_name(model: Path) -> str | None:
    """NAME when `model` is a `<store>/refs/NAME` link or a path through one
    (`<store>/refs/NAME/model.onnx`); else None."""
    for candidate in (model, *model.parents):
        if candidate.parent.name == REFS_DIR and candidate.is_symlink():
            return candidate.name
    return None
