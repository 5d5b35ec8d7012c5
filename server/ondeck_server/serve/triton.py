"""Triton's model-management documents, in the JSON shapes Triton's HTTP API answers
(and `tritonclient.http.InferenceServerClient` reads): the model configuration
(`GET /v2/models/{m}/config`), the statistics (`GET /v2/models/{m}/stats`) and the
repository index (`POST /v2/repository/index`).

Pure: built from what the server already knows (`ModelInfo`, the settings, the phase,
`ModelCounters`); routes.py serves them.

What ondeck does not measure reads 0: per-request queue and compute phases
(`queue`, `compute_input`, `compute_infer`, `compute_output`), the response cache
(`cache_hit`, `cache_miss`), and `batch_stats` is empty. /metrics has onnxruntime's run
time per batch (`ondeck_inference_duration_seconds`).
"""

from __future__ import annotations

from typing import Any

from ondeck_server.serve.datatypes import Datatype
from ondeck_server.serve.metrics import ModelCounters
from ondeck_server.serve.model import PLATFORM, ModelInfo
from ondeck_server.serve.runtime import TensorSpec

BACKEND = "onnxruntime"
MODEL_FILE = "model.onnx"

#: Triton's state of a model in the repository index, by the server's phase
STATES = {"loading": "LOADING", "ready": "READY", "draining": "UNLOADING", "failed": "UNAVAILABLE"}

_PHASES = ("queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


def data_type(datatype: Datatype) -> str:
    """Triton's config name of a V2 datatype: `TYPE_FP32`; BYTES is `TYPE_STRING`."""
    return "TYPE_STRING" if datatype is Datatype.BYTES else f"TYPE_{datatype.value}"


def _dims(spec: TensorSpec, batched: bool) -> list[int]:
    return list(spec.shape[1:] if batched else spec.shape)


def model_config(
    model: ModelInfo, *, max_batch_size: int, stacked: bool, max_delay_ms: float
) -> dict[str, Any]:
    """The configuration Triton would show for this ONNX model. A model with a dynamic
    first dimension on every input and output has `max_batch_size` > 0 (the server's
    `--max-batch-size`) and dims without that dimension, as in Triton; any other has
    `max_batch_size` 0 and its full shapes. `dynamic_batching` is there only while
    requests of different callers are stacked into one run (`--max-delay-ms` as
    `max_queue_delay_microseconds`)."""
    batched = model.batchable
    config: dict[str, Any] = {
        "name": model.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch_size if batched else 0,
        "input": [
            {
                "name": spec.name,
                "data_type": data_type(spec.datatype),
                "format": "FORMAT_NONE",
                "dims": _dims(spec, batched),
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
            for spec in model.inputs
        ],
        "output": [
            {
                "name": spec.name,
                "data_type": data_type(spec.datatype),
                "dims": _dims(spec, batched),
                "label_filename": "",
                "is_shape_tensor": False,
            }
            for spec in model.outputs
        ],
        "batch_input": [],
        "batch_output": [],
        "instance_group": [
            {"name": model.name, "kind": "KIND_CPU", "count": 1, "gpus": [], "passive": False}
        ],
        "default_model_filename": MODEL_FILE,
        "parameters": {},
        "model_warmup": [],
    }
    if stacked and batched:
        config["dynamic_batching"] = {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": round(max_delay_ms * 1000),
            "preserve_ordering": False,
        }
    return config


def _stat(count: int = 0, ns: int = 0) -> dict[str, int]:
    return {"count": count, "ns": ns}


def model_stats(name: str, version: str, counters: ModelCounters) -> dict[str, Any]:
    """One entry of Triton's `model_stats` list: requests by outcome with their
    cumulative time in nanoseconds, rows run (`inference_count`) and onnxruntime runs
    (`execution_count`)."""
    return {
        "name": name,
        "version": version,
        "last_inference": counters.last_inference_ms,
        "inference_count": counters.inference_count,
        "execution_count": counters.execution_count,
        "inference_stats": {
            "success": _stat(counters.success_count, counters.success_ns),
            "fail": _stat(counters.fail_count, counters.fail_ns),
            **{phase: _stat() for phase in _PHASES},
        },
        "batch_stats": [],
        "memory_usage": [],
    }


def index_entry(name: str, version: str, phase: str, reason: str) -> dict[str, str]:
    """One entry of the repository index: name, version, state and, when the model is
    unavailable, why."""
    return {"name": name, "version": version, "state": STATES[phase], "reason": reason}
