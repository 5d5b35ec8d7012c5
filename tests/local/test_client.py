"""The typed V2 JSON client `ondeck predict` uses: request bodies cast to the model's
declared datatypes (a row gets its batch dimension), outputs as arrays, and the server's
own error message in `ClientError`. Over httpx's mock transport: no server needed."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from ondeck_operator.cli.predict_cmd import UsageProblem, output_lines, read_data
from ondeck_operator.local.client import Client, ClientError, Tensor

META = {
    "name": "iris",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ],
}


def _transport(seen: list[dict[str, Any]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != "Bearer t0k":
            return httpx.Response(401, json={"error": "missing or wrong bearer token"})
        if request.method == "GET" and request.url.path == "/v2/models/iris":
            return httpx.Response(200, json=META)
        if request.url.path == "/v2/models/iris/infer":
            body = json.loads(request.content)
            seen.append(body)
            rows = body["inputs"][0]["shape"][0]
            return httpx.Response(
                200,
                json={
                    "model_name": "iris",
                    "outputs": [
                        {"name": "label", "datatype": "INT64", "shape": [rows], "data": [0] * rows},
                        {
                            "name": "probabilities",
                            "datatype": "FP32",
                            "shape": [rows, 3],
                            "data": [1.0, 1.5e-12, 0.0] * rows,
                        },
                    ],
                },
            )
        return httpx.Response(404, json={"error": f"no model {request.url.path}"})

    return httpx.MockTransport(handle)


def test_infer_casts_to_the_declared_datatype_and_adds_the_batch() -> None:
    seen: list[dict[str, Any]] = []
    with Client("http://model", token="t0k", transport=_transport(seen)) as client:
        out = client.infer("iris", [5, 3, 1, 0])  # one row, ints
    assert seen == [
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.0, 3.0, 1.0, 0.0]}
            ]
        }
    ]
    assert out["label"].tolist() == [0]
    assert out["probabilities"].dtype == np.float32
    assert out["probabilities"].shape == (1, 3)


def test_errors_carry_the_servers_message_and_status() -> None:
    with (
        Client("http://model", token="wrong", transport=_transport([])) as client,
        pytest.raises(ClientError) as caught,
    ):
        client.infer("iris", [[1, 2, 3, 4]])
    assert caught.value.status == 401
    assert str(caught.value) == (
        "GET http://model/v2/models/iris answered 401: missing or wrong bearer token"
    )


def test_unknown_input_names_are_refused_before_sending() -> None:
    with (
        Client("http://model", token="t0k", transport=_transport([])) as client,
        pytest.raises(ClientError) as caught,
    ):
        client.infer("iris", {"x": [1, 2, 3, 4]})
    assert str(caught.value) == "model iris has no input x; its inputs: input FP32 [-1, 4]"


def test_predict_prints_one_line_per_output() -> None:
    tensors = [
        Tensor(name="label", datatype="INT64", shape=[2], data=[0, 2]),
        Tensor(name="probabilities", datatype="FP32", shape=[2, 2], data=[1.0, 1.5e-12, 0.0, 1.0]),
    ]
    assert output_lines(tensors) == [
        "label INT64 [2]: [0, 2]",
        "probabilities FP32 [2, 2]: [[1.0, 1.5e-12], [0.0, 1.0]]",
    ]


def test_predict_reads_json_npy_and_npz(tmp_path: Any) -> None:
    assert read_data("[[1, 2]]", None) == [[1, 2]]
    np.save(tmp_path / "x.npy", np.ones((2, 4), dtype=np.float32))
    assert read_data(None, tmp_path / "x.npy").shape == (2, 4)
    np.savez(tmp_path / "x.npz", a=np.zeros(3), b=np.ones(2))
    assert sorted(read_data(f"@{tmp_path / 'x.npz'}", None)) == ["a", "b"]
    with pytest.raises(UsageProblem, match=r"^--data is not JSON \(Expecting"):
        read_data("[1", None)
    with pytest.raises(UsageProblem, match="no such file"):
        read_data(None, tmp_path / "none.npy")
