"""Resource sizing, pure: the server's memory and ephemeral-storage from the served
artifact's report (its size, and for a language model the KV-cache terms), the
conversion Job's from `spec.model.size`, and a startup probe long enough to load the
artifact. docs/operations.md ("Sizing") states the same formulas and constants.

Every value the spec sets wins (`spec.server.resources`, `spec.optimize.resources`); a
computed value fills only what the spec leaves out, and when nothing is known (no
artifact yet, no `spec.model.size`) the fallbacks below apply. A request never ends up
above its limit: when the spec gives one of the pair, the other follows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from ondeck_operator.api.fields import Format, Quantize, quantity
from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import (
    ArtifactReport,
    ModelDeploymentSpec,
    ResourceRequirements,
)

__all__ = [
    "FALLBACK_SERVER_MEMORY",
    "JOB_MEMORY_FACTOR",
    "KIND_LLM",
    "Pair",
    "job_resources",
    "kv_cache_bytes",
    "server_resources",
    "startup_failure_threshold",
    "to_quantity",
]

MIB = 1 << 20
GIB = 1 << 30
KIND_LLM = "llm"
MEMORY = "memory"
DISK = "ephemeral-storage"

#: The server process besides the weights: Python, FastAPI, onnxruntime's arenas and
#: buffers. bench/large measured weights + 0.10-0.35 GiB for a 2.25 GiB model.
SERVER_OVERHEAD = 512 * MIB
#: A language-model server besides weights and KV cache: onnxruntime, the tokenizer, a
#: prefill's logits (at most 64 MiB: serve/llm/engine.py) and per-step buffers.
LLM_OVERHEAD = 768 * MIB
#: The limit over the request: a batch's activations and allocator slack.
LIMIT_HEADROOM_FRACTION = Decimal("0.25")
LIMIT_HEADROOM_MIN = 512 * MIB
#: The server's memory (request, limit) when no artifact report is known yet.
FALLBACK_SERVER_MEMORY = ("1Gi", "2Gi")
#: Bytes of a KV-cache element when an older summary does not say (the CPU builder's
#: caches are fp32).
DEFAULT_KV_BYTES = 4
#: Disk besides the artifact's copy in the server's cache (an object store only).
SERVER_DISK_OVERHEAD = 256 * MIB

#: Conversion peak memory per source byte. Measured (bench/large, 2.25 GiB FP32 MLP):
#: none 2.15x, int8 5.35x; fp16 and int4 hold a second copy like none plus the
#: quantized one; a language model is loaded by the builder and again by transformers
#: for the gate (estimates where not measured, docs/operations.md).
JOB_MEMORY_FACTOR: dict[Quantize, Decimal] = {
    Quantize.NONE: Decimal("2.5"),
    Quantize.FP16: Decimal("3"),
    Quantize.INT4: Decimal("3"),
    Quantize.INT8: Decimal("6"),
    Quantize.INT8_STATIC: Decimal("6"),
}
LLM_JOB_MEMORY_FACTOR = Decimal("4")
JOB_OVERHEAD = 1 * GIB
#: With an object store the Job works on an emptyDir: the source, the converted and the
#: optimized or quantized models, and the artifact before upload.
JOB_DISK_FACTOR = Decimal("4")

#: Startup: the slowest load the probe allows for, and a fixed part (imports, warm-up).
ASSUMED_LOAD_BYTES_PER_S = 50 * MIB
STARTUP_BASE_S = 60
STARTUP_PERIOD_S = 5


@dataclass(frozen=True)
class Pair:
    """A request and a limit in bytes."""

    request: int
    limit: int


def to_quantity(value: int) -> str:
    """Bytes as a quantity, rounded up to whole MiB (Gi when exact)."""
    mib = -(-value // MIB)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def _with_headroom(request: int) -> Pair:
    headroom = max(LIMIT_HEADROOM_MIN, int(request * LIMIT_HEADROOM_FRACTION))
    return Pair(request, request + headroom)


def kv_cache_bytes(
    report: ArtifactReport, sequences: int, max_context: int | None = None
) -> int | None:
    """2 (K and V) x layers x KV heads x head size x bytes x context x sequences: the
    KV cache the server allocates (one slot per sequence, each for the model's context,
    or `--max-context-length` when that is smaller)."""
    llm = report.llm
    if llm is None:
        return None
    layers, heads, head, context = (
        llm.num_layers,
        llm.num_key_value_heads,
        llm.head_size,
        llm.context_length,
    )
    if layers is None or heads is None or head is None or context is None:
        return None
    element = llm.kv_bytes_per_element or DEFAULT_KV_BYTES
    if max_context is not None:
        context = min(context, max_context)
    return 2 * layers * heads * head * element * context * sequences


def llm_sequences(spec: ModelDeploymentSpec) -> int:
    """The sequences one server decodes together (--max-batch-size)."""
    if spec.llm and spec.llm.max_batch_size:
        return spec.llm.max_batch_size
    return spec.server.batching.max_batch_size


def server_memory(spec: ModelDeploymentSpec, report: ArtifactReport | None) -> Pair | None:
    """The server's memory from the artifact: weights + overhead (tensor models), weights
    + KV cache + overhead (language models); None when the report has no size."""
    if report is None or report.size_bytes is None:
        return None
    if report.kind == KIND_LLM:
        cap = spec.llm.max_context_length if spec.llm else None
        kv = kv_cache_bytes(report, llm_sequences(spec), cap)
        if kv is None:
            return None
        return _with_headroom(report.size_bytes + kv + LLM_OVERHEAD)
    return _with_headroom(report.size_bytes + SERVER_OVERHEAD)


def server_disk(spec: ModelDeploymentSpec, report: ArtifactReport | None) -> Pair | None:
    """With an object store the server copies the artifact into an emptyDir cache."""
    if spec.artifacts.uri is None or report is None or report.size_bytes is None:
        return None
    request = report.size_bytes + SERVER_DISK_OVERHEAD
    return Pair(request, request + report.size_bytes // 4 + SERVER_DISK_OVERHEAD)


def job_memory(spec: ModelDeploymentSpec) -> Pair | None:
    """The conversion's memory from `spec.model.size` (None without it)."""
    size = _bytes(spec.model.size)
    if size is None:
        return None
    if spec.model.format == Format.HF_CAUSAL_LM:
        factor = LLM_JOB_MEMORY_FACTOR
    else:
        factor = JOB_MEMORY_FACTOR.get(spec.optimize.quantize, max(JOB_MEMORY_FACTOR.values()))
    return _with_headroom(int(size * factor) + JOB_OVERHEAD)


def job_disk(spec: ModelDeploymentSpec) -> Pair | None:
    """With an object store the Job's work folder is an emptyDir (None otherwise)."""
    size = _bytes(spec.model.size)
    if spec.artifacts.uri is None or size is None:
        return None
    return _with_headroom(int(size * JOB_DISK_FACTOR) + JOB_OVERHEAD)


def _bytes(value: str | None) -> int | None:
    amount = quantity(value) if value is not None else None
    return int(amount) if amount is not None else None


def _merge(
    given: ResourceRequirements | None,
    computed: dict[str, Pair | None],
    fallback: ResourceRequirements | None,
) -> ResourceRequirements:
    """The spec's values, then the computed ones, then the fallback's, per resource; a
    request above its limit is brought to the one the spec set (else the limit)."""
    requests = dict(given.requests or {}) if given else {}
    limits = dict(given.limits or {}) if given else {}
    for name, pair in computed.items():
        fixed_request, fixed_limit = name in requests, name in limits
        if pair is not None:
            requests.setdefault(name, to_quantity(pair.request))
            limits.setdefault(name, to_quantity(pair.limit))
        elif fallback is not None:
            if name in (fallback.requests or {}):
                requests.setdefault(name, (fallback.requests or {})[name])
            if name in (fallback.limits or {}):
                limits.setdefault(name, (fallback.limits or {})[name])
        low, high = _bytes(requests.get(name)), _bytes(limits.get(name))
        if low is not None and high is not None and low > high:
            if fixed_request and not fixed_limit:
                limits[name] = requests[name]
            else:
                requests[name] = limits[name]
    return ResourceRequirements(requests=requests or None, limits=limits or None)


def server_resources(
    spec: ModelDeploymentSpec, report: ArtifactReport | None
) -> ResourceRequirements:
    """The server container's resources: the spec's, with memory (and ephemeral-storage
    with an object store) computed from the served artifact where the spec is silent."""
    fallback = ResourceRequirements(
        requests={MEMORY: FALLBACK_SERVER_MEMORY[0]}, limits={MEMORY: FALLBACK_SERVER_MEMORY[1]}
    )
    computed = {MEMORY: server_memory(spec, report), DISK: server_disk(spec, report)}
    return _merge(spec.server.resources, computed, fallback)


def job_resources(spec: ModelDeploymentSpec, config: OperatorConfig) -> ResourceRequirements:
    """The conversion Job's resources: `spec.optimize.resources`, with memory (and
    ephemeral-storage with an object store) from `spec.model.size` where it is silent,
    else the operator's `jobResources`."""
    given = spec.optimize.resources
    computed = {MEMORY: job_memory(spec), DISK: job_disk(spec)}
    if all(pair is None for pair in computed.values()):
        return given or config.job_resources
    base = config.job_resources
    if given is None:
        # Keep the operator's default CPU and whatever else it sets.
        given = ResourceRequirements(
            requests={k: v for k, v in (base.requests or {}).items() if k not in computed} or None,
            limits={k: v for k, v in (base.limits or {}).items() if k not in computed} or None,
        )
    return _merge(given, computed, None)


def startup_failure_threshold(
    spec: ModelDeploymentSpec, config: OperatorConfig, report: ArtifactReport | None
) -> int:
    """Startup probe attempts (STARTUP_PERIOD_S apart): the operator's setting, or more
    when reading the artifact at ASSUMED_LOAD_BYTES_PER_S (twice with an object store:
    download, then load) takes longer."""
    if report is None or report.size_bytes is None:
        return config.startup_failure_threshold
    reads = 2 if spec.artifacts.uri else 1
    seconds = STARTUP_BASE_S + reads * report.size_bytes / ASSUMED_LOAD_BYTES_PER_S
    return max(config.startup_failure_threshold, math.ceil(seconds / STARTUP_PERIOD_S))
