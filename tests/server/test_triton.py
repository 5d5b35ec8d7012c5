"""Triton's model-management routes as Triton's own Python client calls them (issue 16):
`get_model_config`, `get_inference_statistics` and `get_model_repository_index` of
`tritonclient.http.InferenceServerClient` against real servers on 127.0.0.1.
Statistics are the server's real counters, the same ones /metrics exports."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import modelzoo


def _client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=url.removeprefix("http://"))


def _input(name: str, array: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    entry = triton.InferInput(name, list(array.shape), datatype)
    entry.set_data_from_numpy(array)
    return entry


def _refused(call: Any, *args: str) -> tuple[str | None, str]:
    with pytest.raises(InferenceServerException) as refused:
        call(*args)
    return refused.value.status(), refused.value.message()


def test_model_config_of_a_batchable_model(mlp_url: str) -> None:
    """Dims without the batch dimension and max_batch_size = --max-batch-size, as
    Triton shows a model with a dynamic first dimension; dynamic_batching while
    requests of different callers share runs."""
    client = _client(mlp_url)
    config = client.get_model_config("mlp")
    assert config == {
        "name": "mlp",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 32,
        "input": [
            {
                "name": "input",
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NONE",
                "dims": [256],
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
        ],
        "output": [
            {
                "name": "logits",
                "data_type": "TYPE_FP32",
                "dims": [10],
                "label_filename": "",
                "is_shape_tensor": False,
            }
        ],
        "batch_input": [],
        "batch_output": [],
        "instance_group": [
            {"name": "mlp", "kind": "KIND_CPU", "count": 1, "gpus": [], "passive": False}
        ],
        "default_model_filename": "model.onnx",
        "parameters": {},
        "model_warmup": [],
        "dynamic_batching": {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": 2000,
            "preserve_ordering": False,
        },
    }
    assert client.get_model_config("mlp", "1") == config
    assert _refused(client.get_model_config, "nope") == (
        "404",
        "model 'nope' not found; this server serves 'mlp'",
    )
    assert _refused(client.get_model_config, "mlp", "7") == (
        "404",
        "model 'mlp' has no version '7'; it serves version '1'",
    )


def test_model_config_of_a_fixed_shape_model_and_of_strings(fixed_url: str, types_url: str) -> None:
    """No batch dimension: max_batch_size 0, full dims, no dynamic_batching. BYTES
    tensors are TYPE_STRING in a Triton config."""
    config = _client(fixed_url).get_model_config("fixed_batch")
    assert config["max_batch_size"] == 0
    assert [(t["name"], t["dims"]) for t in config["input"] + config["output"]] == [
        ("input", [1, 4]),
        ("output", [1, 4]),
    ]
    assert "dynamic_batching" not in config
    types = _client(types_url).get_model_config("all_types")
    data_types = {t["name"]: t["data_type"] for t in types["input"]}
    assert data_types["in_BYTES"] == "TYPE_STRING"
    assert data_types["in_FP16"] == "TYPE_FP16"
    assert data_types["in_BOOL"] == "TYPE_BOOL"


def _prometheus(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


def test_inference_statistics_count_what_happened(
    start_server: object, zoo: dict[str, Path]
) -> None:
    server = start_server(zoo["mlp"])  # type: ignore[operator]
    url = server.wait_ready()
    client = _client(url)
    empty = client.get_inference_statistics("mlp")["model_stats"][0]
    assert (empty["inference_count"], empty["execution_count"], empty["last_inference"]) == (
        0,
        0,
        0,
    )
    before = time.time()
    for rows in (2, 1, 3):  # one after another: each its own onnxruntime run
        feeds = modelzoo.sample_inputs("mlp", rows, seed=rows)
        client.infer("mlp", [_input("input", feeds["input"])])
    for _ in range(2):  # refused: 255 values where the model takes 256
        with pytest.raises(InferenceServerException):
            client.infer("mlp", [_input("input", np.zeros((1, 255), np.float32))])
    after = time.time()

    stats = client.get_inference_statistics("mlp")
    assert stats == client.get_inference_statistics("mlp", "1")
    assert stats == client.get_inference_statistics()  # every model: the one served
    (entry,) = stats["model_stats"]
    assert (entry["name"], entry["version"]) == ("mlp", "1")
    assert (entry["inference_count"], entry["execution_count"]) == (6, 3)
    assert before * 1000 <= entry["last_inference"] <= after * 1000
    success, fail = entry["inference_stats"]["success"], entry["inference_stats"]["fail"]
    assert (success["count"], fail["count"]) == (3, 2)
    assert 0 < success["ns"] < (after - before) * 1e9
    assert 0 < fail["ns"] < (after - before) * 1e9
    # The same requests as /metrics counts them: one set of counters.
    assert _prometheus(url, 'ondeck_requests_total{code="200",model="mlp",protocol="v2"}') == 3
    assert _prometheus(url, 'ondeck_requests_total{code="400",model="mlp",protocol="v2"}') == 2
    seconds = _prometheus(url, 'ondeck_request_duration_seconds_sum{model="mlp",protocol="v2"}')
    assert abs(seconds * 1e9 - (success["ns"] + fail["ns"])) < 1e3
    assert _refused(client.get_inference_statistics, "other") == (
        "404",
        "model 'other' not found; this server serves 'mlp'",
    )
    assert server.terminate() == 0


def test_repository_index(sklearn_url: str) -> None:
    client = _client(sklearn_url)
    assert client.get_model_repository_index() == [
        {"name": "iris", "version": "1", "state": "READY", "reason": ""}
    ]
    ready_only = httpx.post(f"{sklearn_url}/v2/repository/index", json={"ready": True})
    assert ready_only.json() == [{"name": "iris", "version": "1", "state": "READY", "reason": ""}]
    bad = httpx.post(f"{sklearn_url}/v2/repository/index", content=b'{"ready": "yes"}')
    assert (bad.status_code, bad.json()) == (
        400,
        {"error": 'the body must be empty or {"ready": true|false}'},
    )
