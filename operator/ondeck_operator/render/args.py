"""The command lines of `ondeck-server convert` and `ondeck-server serve` built from a
spec — the contract in docs/architecture.md — and the artifact key.

`render` puts these lists into the Job and the Deployment; local mode (`ondeck run`) runs
the very same lists as processes. Pure functions: no I/O, no defaults of the server
repeated here beyond what the spec states (every value the spec has is passed
explicitly, so what runs does not depend on the server's defaults).
"""

from __future__ import annotations

import hashlib
import json

from ondeck_operator import __version__
from ondeck_operator.api.constants import SERVER_PORT
from ondeck_operator.api.spec import InputSpec, Int4Spec, ModelDeploymentSpec, Quantize

#: Bump when the meaning of an artifact changes without any spec field changing.
ARTIFACT_KEY_SCHEMA = 1
ARTIFACT_KEY_LENGTH = 16


def artifact_key(spec: ModelDeploymentSpec) -> str:
    """A short hash of everything that decides the artifact: the model source, the
    optimize settings that change the output or whether it passes the accuracy gate, and
    the ondeck version. The same spec always gives the same key; resources, timeouts and
    everything about serving do not count."""
    model = spec.model.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"credentials_secret"}
    )
    optimize = spec.optimize.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"timeout_seconds", "resources"}
    )
    identity = {
        "schema": ARTIFACT_KEY_SCHEMA,
        "ondeck": __version__,
        "model": model,
        "optimize": optimize,
    }
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:ARTIFACT_KEY_LENGTH]


def inputs_arg(inputs: list[InputSpec]) -> str:
    """`name:dtype:[d0,d1,...]` entries joined by `;` (the `--inputs` syntax)."""
    return ";".join(
        f"{i.name}:{i.dtype.value}:[{','.join(str(d) for d in i.shape)}]" for i in inputs
    )


def _num(value: float) -> str:
    # repr gives the shortest round-tripping form ("0.99", "2.0"), stable across runs.
    return repr(float(value))


def convert_args(
    spec: ModelDeploymentSpec,
    *,
    store: str,
    ref: str | None,
    termination_log: str | None = None,
    pvc_root: str | None = None,
) -> list[str]:
    """argv of `ondeck-server convert` after the program name (starts with "convert")."""
    model, optimize = spec.model, spec.optimize
    args = ["convert", "--source", model.uri]
    if model.format is not None:
        args += ["--format", model.format.value]
    if model.sha256 is not None:
        args += ["--sha256", model.sha256]
    if model.inputs:
        args += ["--inputs", inputs_arg(model.inputs)]
    args += ["--level", optimize.level.value, "--quantize", optimize.quantize.value]
    if optimize.quantize in (Quantize.INT4, Quantize.AUTO):
        int4 = optimize.int4 or Int4Spec()
        args += [
            "--int4-block-size",
            str(int4.block_size),
            "--int4-accuracy-level",
            str(int4.accuracy_level),
        ]
    if optimize.calibration is not None:
        args += ["--calibration", optimize.calibration]
    validation = optimize.validation
    if validation.data is not None:
        args += ["--validation-data", validation.data]
    args += [
        "--validation-samples",
        str(validation.samples),
        "--min-cosine",
        _num(validation.min_cosine),
        "--max-top1-disagreement",
        _num(validation.max_top1_disagreement),
    ]
    if model.allow_unsafe_pickle:
        args.append("--allow-unsafe-pickle")
    if model.s3_endpoint_url is not None:
        args += ["--s3-endpoint-url", model.s3_endpoint_url]
    if pvc_root is not None:
        args += ["--pvc-root", pvc_root]
    args += ["--store", store]
    if store == spec.artifacts.uri and spec.artifacts.s3_endpoint_url is not None:
        args += ["--store-endpoint-url", spec.artifacts.s3_endpoint_url]
    if ref is not None:
        args += ["--ref", ref]
    if termination_log is not None:
        args += ["--termination-log", termination_log]
    return args


def served_name(spec: ModelDeploymentSpec, name: str) -> str:
    """The name the server serves the model under: spec.llm.servedModelName, else `name`
    (metadata.name)."""
    if spec.llm is not None and spec.llm.served_model_name is not None:
        return spec.llm.served_model_name
    return name


def serve_args(
    spec: ModelDeploymentSpec,
    *,
    model_path: str,
    name: str,
    host: str = "0.0.0.0",
    port: int = SERVER_PORT,
    auth_token_file: str | None = None,
    model_cache: str | None = None,
) -> list[str]:
    """argv of `ondeck-server serve` after the program name (starts with "serve");
    `model_cache`: where an s3:// `model_path` is downloaded to. `spec.llm` (a language
    model) names the model, caps its context and sets the sequences decoding together."""
    server, llm = spec.server, spec.llm
    name = served_name(spec, name)
    max_batch_size = server.batching.max_batch_size
    if llm is not None and llm.max_batch_size is not None:
        max_batch_size = llm.max_batch_size
    args = [
        "serve",
        "--model",
        model_path,
        "--name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--max-batch-size",
        str(max_batch_size),
        "--max-delay-ms",
        _num(server.batching.max_delay_ms),
    ]
    if llm is not None and llm.max_context_length is not None:
        args += ["--max-context-length", str(llm.max_context_length)]
    if llm is not None and llm.sampling is not None:
        sampling = llm.sampling
        for flag, value in (
            ("--default-temperature", sampling.temperature),
            ("--default-top-p", sampling.top_p),
            ("--default-top-k", sampling.top_k),
            ("--default-max-tokens", sampling.max_tokens),
        ):
            if value is not None:
                args += [flag, _num(value) if isinstance(value, float) else str(value)]
    if server.threads is not None:
        args += ["--threads", str(server.threads)]
    if auth_token_file is not None:
        args += ["--auth-token-file", auth_token_file]
    if server.max_body_bytes is not None:
        args += ["--max-body-bytes", str(server.max_body_bytes)]
    if server.max_queue is not None:
        args += ["--max-queue", str(server.max_queue)]
    args += ["--drain-timeout", str(server.drain_timeout_seconds)]
    if model_cache is not None:
        args += ["--model-cache", model_cache]
    if model_path.startswith("s3://") and spec.artifacts.s3_endpoint_url is not None:
        args += ["--s3-endpoint-url", spec.artifacts.s3_endpoint_url]
    return args


def pvc_claims(spec: ModelDeploymentSpec) -> list[str]:
    """Claims named by pvc:// URIs of the model, calibration and validation data, sorted,
    without repeats."""
    claims = set()
    optimize = spec.optimize
    for uri in (spec.model.uri, optimize.calibration, optimize.validation.data):
        if uri is not None and uri.startswith("pvc://"):
            claims.add(uri.removeprefix("pvc://").split("/", 1)[0])
    return sorted(claims)
