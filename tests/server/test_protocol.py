"""The V2 and V1 protocols over a real socket, every answer compared with in-process
onnxruntime on the same model."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelzoo
from server.v2client import assert_same, binary_request, decode_response, json_request


def infer(
    url: str, model: str, body: bytes, headers: dict[str, str] | None = None, *, path: str = ""
) -> httpx.Response:
    return httpx.post(
        f"{url}/v2/models/{model}{path}/infer", content=body, headers=headers, timeout=30
    )


def test_health_and_server_metadata(mlp_url: str) -> None:
    assert httpx.get(f"{mlp_url}/v2/health/live").json() == {"live": True}
    ready = httpx.get(f"{mlp_url}/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    meta = httpx.get(f"{mlp_url}/v2")
    assert meta.json() == {
        "name": "ondeck",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }


def test_model_metadata_from_the_graph(mlp_url: str, multi_url: str, fixed_url: str) -> None:
    want = {
        "name": "mlp",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 256]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert httpx.get(f"{mlp_url}/v2/models/mlp").json() == want
    assert httpx.get(f"{mlp_url}/v2/models/mlp/versions/1").json() == want
    multi = httpx.get(f"{multi_url}/v2/models/multi_input").json()
    assert [(t["name"], t["datatype"], t["shape"]) for t in multi["inputs"]] == [
        ("ids", "INT64", [-1, 4]),
        ("mask", "BOOL", [-1, 4]),
        ("x16", "FP16", [-1, 4]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in multi["outputs"]] == [
        ("masked", "INT64", [-1, 4]),
        ("count", "INT64", [-1]),
        ("any", "BOOL", [-1]),
        ("y16", "FP16", [-1, 4]),
    ]
    fixed = httpx.get(f"{fixed_url}/v2/models/fixed_batch").json()
    assert fixed["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 4]}]


def test_model_ready_routes(mlp_url: str) -> None:
    for path in ("/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready"):
        answer = httpx.get(mlp_url + path)
        assert (answer.status_code, answer.json()) == (200, {"name": "mlp", "ready": True})


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("versioned", [False, True], ids=["plain", "versions-1"])
def test_mlp_json(mlp_url: str, zoo: dict[str, Path], nested: bool, versioned: bool) -> None:
    feeds = modelzoo.sample_inputs("mlp", 3, seed=1)
    body = json_request(feeds, nested=nested, id="req-7")
    answer = infer(mlp_url, "mlp", body, path="/versions/1" if versioned else "")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    doc, outputs = decode_response(answer.content, answer.headers)
    assert doc["model_name"] == "mlp"
    assert doc["model_version"] == "1"
    assert doc["id"] == "req-7"
    assert doc["outputs"][0]["shape"] == [3, 10]
    assert_same(outputs, modelzoo.reference(zoo["mlp"], feeds))


def test_no_id_no_id_echo(mlp_url: str) -> None:
    answer = infer(mlp_url, "mlp", json_request(modelzoo.sample_inputs("mlp", 1)))
    assert "id" not in answer.json()


def test_mlp_binary_request_and_binary_output(mlp_url: str, zoo: dict[str, Path]) -> None:
    feeds = modelzoo.sample_inputs("mlp", 5, seed=2)
    want = modelzoo.reference(zoo["mlp"], feeds)
    body, headers = binary_request(feeds, parameters={"binary_data_output": True})
    answer = infer(mlp_url, "mlp", body, headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    header_length = int(answer.headers["inference-header-content-length"])
    doc, outputs = decode_response(answer.content, answer.headers)
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 5 * 10 * 4}
    assert "data" not in doc["outputs"][0]
    assert len(answer.content) == header_length + 200
    assert_same(outputs, want)
    # Binary in, JSON out.
    body, headers = binary_request(feeds)
    answer = infer(mlp_url, "mlp", body, headers)
    assert answer.headers["content-type"] == "application/json"
    assert_same(decode_response(answer.content, answer.headers)[1], want)


def test_multi_input_int64_bool_fp16(multi_url: str, zoo: dict[str, Path]) -> None:
    feeds = modelzoo.sample_inputs("multi_input", 4, seed=3)
    want = modelzoo.reference(zoo["multi_input"], feeds)
    answer = infer(multi_url, "multi_input", json_request(feeds))
    assert answer.status_code == 200, answer.text
    doc, outputs = decode_response(answer.content, answer.headers)
    assert [(o["name"], o["datatype"]) for o in doc["outputs"]] == [
        ("masked", "INT64"), ("count", "INT64"), ("any", "BOOL"), ("y16", "FP16"),
    ]  # fmt: skip
    assert_same(outputs, want)
    assert outputs["masked"].dtype == np.int64
    # INT64 beyond 2**53 survive JSON both ways.
    assert np.abs(feeds["ids"]).max() > 2**39


def test_outputs_selection_and_per_output_binary(multi_url: str, zoo: dict[str, Path]) -> None:
    feeds = modelzoo.sample_inputs("multi_input", 2, seed=4)
    want = modelzoo.reference(zoo["multi_input"], feeds)
    outputs_wanted = [{"name": "y16", "parameters": {"binary_data": True}}, {"name": "count"}]
    answer = infer(multi_url, "multi_input", json_request(feeds, outputs=outputs_wanted))
    assert answer.status_code == 200, answer.text
    doc, outputs = decode_response(answer.content, answer.headers)
    assert [o["name"] for o in doc["outputs"]] == ["y16", "count"]
    assert "data" in doc["outputs"][1]
    assert "data" not in doc["outputs"][0]
    assert_same(outputs, {"y16": want["y16"], "count": want["count"]})


def test_request_parameters_are_accepted(mlp_url: str, zoo: dict[str, Path]) -> None:
    feeds = modelzoo.sample_inputs("mlp", 1, seed=5)
    body = json.loads(json_request(feeds, parameters={"priority": 3, "tag": "x"}))
    body["inputs"][0]["parameters"] = {"content_type": "np"}
    answer = infer(mlp_url, "mlp", json.dumps(body).encode())
    assert answer.status_code == 200, answer.text
    assert_same(
        decode_response(answer.content, answer.headers)[1], modelzoo.reference(zoo["mlp"], feeds)
    )


@pytest.mark.parametrize("mode", ["json", "binary", "binary-out"])
def test_every_datatype(types_url: str, zoo: dict[str, Path], mode: str) -> None:
    feeds = modelzoo.sample_inputs("all_types", 4, seed=6)
    want = modelzoo.reference(zoo["all_types"], feeds)
    if mode == "json":
        body, headers = json_request(feeds), None
    elif mode == "binary":
        body, headers = binary_request(feeds)
    else:
        body, headers = binary_request(feeds, parameters={"binary_data_output": True})
    answer = infer(types_url, "all_types", body, headers)
    assert answer.status_code == 200, answer.text
    doc, outputs = decode_response(answer.content, answer.headers)
    assert {o["name"]: o["datatype"] for o in doc["outputs"]} == {
        f"out_{dt}": dt for dt in modelzoo.ALL_TYPES
    }
    # Every datatype round-trips exactly, floats included.
    for name, expected in want.items():
        got = outputs[name]
        if expected.dtype != object:
            got = got.astype(expected.dtype)
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_sklearn_model(sklearn_url: str, zoo: dict[str, Path]) -> None:
    feeds = modelzoo.sample_inputs("sklearn", 6, seed=7)
    answer = infer(sklearn_url, "iris", json_request(feeds))
    assert answer.status_code == 200, answer.text
    assert_same(
        decode_response(answer.content, answer.headers)[1],
        modelzoo.reference(zoo["sklearn"], feeds),
    )


def test_fixed_batch_model(fixed_url: str, zoo: dict[str, Path]) -> None:
    feeds = modelzoo.sample_inputs("fixed_batch", 1, seed=8)
    answer = infer(fixed_url, "fixed_batch", json_request(feeds, nested=True))
    assert answer.status_code == 200, answer.text
    assert_same(
        decode_response(answer.content, answer.headers)[1],
        modelzoo.reference(zoo["fixed_batch"], feeds),
    )


# ------------------------------------------------------------------------- V1
def test_v1_model_routes(mlp_url: str) -> None:
    assert httpx.get(f"{mlp_url}/v1/models").json() == {"models": ["mlp"]}
    assert httpx.get(f"{mlp_url}/v1/models/mlp").json() == {"name": "mlp", "ready": True}


def test_v1_predict_single_output(mlp_url: str, zoo: dict[str, Path]) -> None:
    feeds = modelzoo.sample_inputs("mlp", 3, seed=9)
    body = json.dumps({"instances": feeds["input"].tolist()})
    answer = httpx.post(f"{mlp_url}/v1/models/mlp:predict", content=body)
    assert answer.status_code == 200, answer.text
    predictions = np.array(answer.json()["predictions"], dtype=np.float32)
    assert_same({"logits": predictions}, modelzoo.reference(zoo["mlp"], feeds))


def test_v1_predict_several_outputs(sklearn_url: str, zoo: dict[str, Path]) -> None:
    feeds = modelzoo.sample_inputs("sklearn", 2, seed=10)
    want = modelzoo.reference(zoo["sklearn"], feeds)
    answer = httpx.post(
        f"{sklearn_url}/v1/models/iris:predict", json={"instances": feeds["input"].tolist()}
    )
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["label"] for p in predictions] == want["label"].tolist()
    got = np.array([p["probabilities"] for p in predictions], dtype=np.float32)
    assert_same({"probabilities": got}, {"probabilities": want["probabilities"]})


def test_v1_and_v2_on_a_model_with_a_scalar_output(scalar_url: str, zoo: dict[str, Path]) -> None:
    """Item 10 of issue 15: V1 answered 500 (IndexError) for a rank-0 output."""
    feeds = modelzoo.sample_inputs("scalar", 2)
    want = modelzoo.reference(zoo["scalar"], feeds)
    answer = httpx.post(
        f"{scalar_url}/v1/models/scalar:predict", json={"instances": feeds["x"].tolist()}
    )
    assert answer.status_code == 200, answer.text
    # The scalar has no row per instance: one prediction holds every output whole.
    (prediction,) = answer.json()["predictions"]
    assert set(prediction) == {"total", "scaled"}
    np.testing.assert_allclose(prediction["total"], want["total"], rtol=1e-6)
    np.testing.assert_allclose(prediction["scaled"], want["scaled"], rtol=1e-6)
    answer = httpx.post(f"{scalar_url}/v2/models/scalar/infer", content=json_request(feeds))
    assert answer.status_code == 200
    doc, got = decode_response(answer.content, answer.headers)
    assert [o["shape"] for o in doc["outputs"]] == [[], [2, 3]]
    assert_same(got, want)
