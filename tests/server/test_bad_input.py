"""Every kind of bad request gets a 4xx with the exact V2 error body the user reads, and
the server keeps serving afterwards."""

# ruff: noqa: E501  (tables of exact user-facing messages read best one case per line)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import modelzoo
from server.v2client import assert_same, binary_request, decode_response, json_request

MLP_ROW = [0.5] * 256


def mlp_body(**changes: object) -> bytes:
    tensor = {"name": "input", "shape": [1, 256], "datatype": "FP32", "data": MLP_ROW}
    tensor.update(changes)
    return json.dumps({"inputs": [tensor]}).encode()


def multi_inputs(rows: int = 1) -> list[dict[str, object]]:
    return [
        {"name": "ids", "shape": [rows, 4], "datatype": "INT64", "data": [1, 2, 3, 4] * rows},
        {"name": "mask", "shape": [rows, 4], "datatype": "BOOL", "data": [True, False] * 2 * rows},
        {"name": "x16", "shape": [rows, 4], "datatype": "FP16", "data": [0.5] * 4 * rows},
    ]


MLP_CASES = {
    "malformed JSON": (
        b'{"inputs": [',
        400,
        "request body is not valid JSON: unexpected end of data: line 1 column 13 (char 12)",
    ),
    "body not an object": (
        b"[1, 2]",
        400,
        "request body must be a JSON object with an 'inputs' list",
    ),
    "no inputs": (
        b'{"inputs": []}',
        400,
        "'inputs' must be a non-empty list of tensors; the model's inputs are 'input'",
    ),
    "unknown input": (
        mlp_body(name="pixels"),
        400,
        "unknown input 'pixels'; the model's inputs are 'input'",
    ),
    "unknown datatype": (
        mlp_body(datatype="FP33"),
        400,
        "input 'input' has datatype 'FP33'; use one of BOOL, UINT8, UINT16, UINT32, UINT64,"
        " INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES",
    ),
    "no datatype": (
        json.dumps({"inputs": [{"name": "input", "shape": [1, 256], "data": MLP_ROW}]}).encode(),
        400,
        "input 'input' has no 'datatype'; add \"datatype\": \"FP32\", the model's type for it",
    ),
    "wrong datatype": (
        mlp_body(datatype="FP64"),
        400,
        "input 'input' has datatype FP64 but the model expects FP32",
    ),
    "shape not a list of ints": (
        mlp_body(shape=[1, "256"]),
        400,
        "input 'input': 'shape' must be a list of non-negative integers, like [1, 256]",
    ),
    "shape vs data length": (
        mlp_body(data=MLP_ROW[:-1]),
        400,
        "input 'input': shape [1, 256] needs 256 values but 'data' has 255",
    ),
    "shape vs model dims": (
        mlp_body(shape=[1, 255], data=MLP_ROW[:-1]),
        400,
        "input 'input' has shape [1, 255] but the model expects [-1, 256] (-1: any size)",
    ),
    "wrong rank": (
        mlp_body(shape=[256]),
        400,
        "input 'input' has shape [256] but the model expects [-1, 256] (-1: any size)",
    ),
    "non-numeric data": (
        mlp_body(data=["a"] * 256),
        400,
        "input 'input': element 0 is \"a\"; FP32 data must be numbers",
    ),
    "null in data": (
        mlp_body(data=[0.5, None] * 128),
        400,
        "input 'input': element 1 is null; FP32 data must be numbers",
    ),
    "true as a number": (
        mlp_body(data=[*MLP_ROW[:255], True]),
        400,
        "input 'input': element 255 is true; FP32 data must be numbers, not true or false",
    ),
    "FP32 overflow": (
        mlp_body(data=[*MLP_ROW[:7], 1e39, *MLP_ROW[8:]]),
        400,
        "input 'input': element 7 is 1e+39, out of range for FP32 (largest magnitude"
        " 3.4028235e+38)",
    ),
    "FP32 overflow from an integer": (
        mlp_body(data=[-(10**39), *MLP_ROW[1:]]),
        400,
        "input 'input': element 0 is -1e+39, out of range for FP32 (largest magnitude"
        " 3.4028235e+38)",
    ),
    "ragged nested data": (
        mlp_body(shape=[2, 256], data=[MLP_ROW, MLP_ROW[:-1]]),
        400,
        "input 'input': 'data' is ragged (nested lists of different lengths); give 512 values,"
        " flat or nested as [2, 256]",
    ),
    "no data": (
        json.dumps({"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32"}]}).encode(),
        400,
        "input 'input' has no 'data' (and no binary_data_size parameter)",
    ),
    "duplicate input": (
        json.dumps({"inputs": [json.loads(mlp_body())["inputs"][0]] * 2}).encode(),
        400,
        "input 'input' is given twice",
    ),
    "unknown output": (
        json.dumps({**json.loads(mlp_body()), "outputs": [{"name": "probs"}]}).encode(),
        400,
        "unknown output 'probs'; the model's outputs are 'logits'",
    ),
    "id not a string": (
        json.dumps({**json.loads(mlp_body()), "id": 7}).encode(),
        400,
        "'id' must be a string",
    ),
    "binary_data_output not a bool": (
        json.dumps(
            {**json.loads(mlp_body()), "parameters": {"binary_data_output": "yes"}}
        ).encode(),
        400,
        "request parameters: 'binary_data_output' must be true or false",
    ),
}


@pytest.mark.parametrize("case", list(MLP_CASES))
def test_bad_request_mlp(mlp_url: str, case: str) -> None:
    body, status, message = MLP_CASES[case]
    answer = httpx.post(f"{mlp_url}/v2/models/mlp/infer", content=body)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"error": message}


MULTI_CASES = {
    "missing inputs": (
        {"inputs": multi_inputs()[:1]},
        "missing inputs 'mask', 'x16'; the model's inputs are 'ids', 'mask', 'x16'",
    ),
    "missing one input": (
        {"inputs": multi_inputs()[:2]},
        "missing input 'x16'; the model's inputs are 'ids', 'mask', 'x16'",
    ),
    "extra input": (
        {
            "inputs": [
                *multi_inputs(),
                {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1]},
            ]
        },
        "unknown input 'extra'; the model's inputs are 'ids', 'mask', 'x16'",
    ),
    "fractions for INT64": (
        {"inputs": [{**multi_inputs()[0], "data": [1, 2, 3.5, 4]}, *multi_inputs()[1:]]},
        "input 'ids': element 2 is 3.5; INT64 data must be whole numbers (no fractions or"
        " exponents)",
    ),
    "numbers for BOOL": (
        {
            "inputs": [
                multi_inputs()[0],
                {**multi_inputs()[1], "data": [True, False, 1, 0]},
                multi_inputs()[2],
            ]
        },
        "input 'mask': element 2 is 1; BOOL data must be true or false",
    ),
    "true for INT64": (
        {"inputs": [{**multi_inputs()[0], "data": [[1, 2], [True, 4]]}, *multi_inputs()[1:]]},
        "input 'ids': element 2 is true; INT64 data must be numbers, not true or false",
    ),
    "INT64 out of range": (
        {"inputs": [{**multi_inputs()[0], "data": [0, 0, 0, 2**63]}, *multi_inputs()[1:]]},
        "input 'ids': element 3 is 9223372036854775808, out of range for INT64"
        " (-9223372036854775808 to 9223372036854775807)",
    ),
    "FP16 overflow": (
        {"inputs": [*multi_inputs()[:2], {**multi_inputs()[2], "data": [1, 2, 65520, 4]}]},
        "input 'x16': element 2 is 65520, out of range for FP16 (largest magnitude 65504)",
    ),
    "batch dims disagree": (
        {"inputs": [*multi_inputs(2)[:2], multi_inputs(1)[2]]},
        "inputs disagree on the batch dimension (dim 0): 'ids' has 2, 'mask' has 2, 'x16' has 1",
    ),
}


@pytest.mark.parametrize("case", list(MULTI_CASES))
def test_bad_request_multi_input(multi_url: str, case: str) -> None:
    doc, message = MULTI_CASES[case]
    answer = httpx.post(f"{multi_url}/v2/models/multi_input/infer", json=doc)
    assert (answer.status_code, answer.json()) == (400, {"error": message})


def test_out_of_range_small_integers(types_url: str) -> None:
    feeds = modelzoo.sample_inputs("all_types", 1)
    doc = json.loads(json_request(feeds))
    for tensor in doc["inputs"]:
        if tensor["name"] == "in_INT8":
            tensor["data"] = [300, 0, 0]
    answer = httpx.post(f"{types_url}/v2/models/all_types/infer", json=doc)
    assert answer.json() == {
        "error": "input 'in_INT8': element 0 is 300, out of range for INT8 (-128 to 127)"
    }
    for tensor in doc["inputs"]:
        if tensor["name"] == "in_INT8":
            tensor["data"] = [1, 2, 3]
        if tensor["name"] == "in_BYTES":
            tensor["data"] = ["a", 1, "c"]
    answer = httpx.post(f"{types_url}/v2/models/all_types/infer", json=doc)
    assert answer.json() == {
        "error": "input 'in_BYTES': element 1 is 1; BYTES data must be strings"
    }


def test_values_outside_their_datatype(types_url: str, multi_url: str) -> None:
    """Item 8 of issue 15: each of these used to be accepted (and answered wrongly)."""
    feeds = modelzoo.sample_inputs("all_types", 2)
    url = f"{types_url}/v2/models/all_types/infer"

    def with_data(name: str, data: list[object]) -> dict[str, object]:
        doc = json.loads(json_request(feeds))
        for tensor in doc["inputs"]:
            if tensor["name"] == name:
                tensor["data"] = data
        return doc

    cases = [
        ("in_FP32", [0.0, 1.0, 2.0, 3.0, 1e39, 5.0], "input 'in_FP32': element 4 is 1e+39, out of range for FP32 (largest magnitude 3.4028235e+38)"),
        ("in_FP16", [0, 0, 0, 0, 0, -1e5], "input 'in_FP16': element 5 is -100000.0, out of range for FP16 (largest magnitude 65504)"),
        ("in_FP64", [0, 0, True, 0, 0, 0], "input 'in_FP64': element 2 is true; FP64 data must be numbers, not true or false"),
        ("in_UINT8", [0, False, 0, 0, 0, 0], "input 'in_UINT8': element 1 is false; UINT8 data must be numbers, not true or false"),
        ("in_BYTES", ["a", "b", "c", 1, "e", "f"], "input 'in_BYTES': element 3 is 1; BYTES data must be strings"),
        ("in_BYTES", [["a", "b", "c"], ["d", True, "f"]], "input 'in_BYTES': element 4 is true; BYTES data must be strings"),
        ("in_BOOL", [True, False, True, 0, True, False], "input 'in_BOOL': element 3 is 0; BOOL data must be true or false"),
        ("in_UINT64", [0, -1, 0, 0, 0, 0], "input 'in_UINT64': element 1 is -1, out of range for UINT64 (0 to 18446744073709551615)"),
    ]  # fmt: skip
    for name, data, message in cases:
        answer = httpx.post(url, json=with_data(name, data))
        assert (answer.status_code, answer.json()) == (400, {"error": message}), name

    # Binary BOOL: one byte per element, 0 or 1; 0x02 used to read as true.
    mask = np.array([[True, False, True, False]])
    body, headers = binary_request({"mask": mask})
    length = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:length])
    head["inputs"] = [
        *multi_inputs()[:1],
        head["inputs"][0],
        multi_inputs()[2],
    ]
    head_bytes = json.dumps(head).encode()
    answer = httpx.post(
        f"{multi_url}/v2/models/multi_input/infer",
        content=head_bytes + b"\x01\x00\x02\x00",
        headers={"Inference-Header-Content-Length": str(len(head_bytes))},
    )
    assert (answer.status_code, answer.json()) == (
        400,
        {
            "error": "input 'mask': element 2 is byte 0x02; binary BOOL elements must be 0"
            " (false) or 1 (true)"
        },
    )
    # A BYTES element that ends in NUL characters keeps them (numpy's str arrays drop them).
    doc = with_data("in_BYTES", ["a\u0000", "", "b", "c", "d", "e\u0000\u0000"])
    answer = httpx.post(url, json=doc)
    assert answer.status_code == 200
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    assert outputs["out_BYTES"] == ["a\u0000", "", "b", "c", "d", "e\u0000\u0000"]


def test_a_long_string_among_numbers_costs_no_memory(mlp_url: str) -> None:
    # numpy would make a (count x string length) unicode array of this: 1 GB for 2 MB.
    data: list[object] = [0.5] * 256 * 1000
    data[-1] = "x" * 1000
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1000, 256], "datatype": "FP32", "data": data}]}
    )
    answer = httpx.post(f"{mlp_url}/v2/models/mlp/infer", content=body, timeout=30)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": f"input 'input': element 255999 is \"{'x' * 36}...; FP32 data must be numbers"
    }


def test_fixed_batch_dimension(fixed_url: str) -> None:
    doc = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 8}]}
    answer = httpx.post(f"{fixed_url}/v2/models/fixed_batch/infer", json=doc)
    assert (answer.status_code, answer.json()) == (
        400,
        {"error": "input 'input' has shape [2, 4] but the model expects [1, 4] (-1: any size)"},
    )


def binary_case(mlp_url: str, body: bytes, header_length: str) -> httpx.Response:
    headers = {"Inference-Header-Content-Length": header_length}
    return httpx.post(f"{mlp_url}/v2/models/mlp/infer", content=body, headers=headers)


def test_binary_lengths_that_do_not_add_up(mlp_url: str) -> None:
    feeds = modelzoo.sample_inputs("mlp", 1)
    body, headers = binary_request(feeds)
    length = int(headers["Inference-Header-Content-Length"])
    head, data = body[:length], body[length:]

    answer = binary_case(mlp_url, body, str(len(body) + 1))
    assert answer.status_code == 400
    assert answer.json() == {
        "error": f"Inference-Header-Content-Length is {len(body) + 1} but the body has only"
        f" {len(body)} bytes; it must be the length of the JSON part"
    }

    answer = binary_case(mlp_url, head + data[:-4], str(length))
    assert answer.json() == {
        "error": "input 'input': binary_data_size is 1024 bytes at offset 0, but only 1020 bytes"
        " of binary data remain after the JSON header"
    }

    answer = binary_case(mlp_url, body + b"\0" * 8, str(length))
    assert answer.json() == {
        "error": "the body has 1032 bytes after the JSON header but the inputs'"
        " binary_data_size parameters add up to 1024"
    }

    doc = json.loads(head)
    doc["inputs"][0]["parameters"]["binary_data_size"] = 1020
    short_head = json.dumps(doc).encode()
    answer = binary_case(mlp_url, short_head + data[:1020], str(len(short_head)))
    assert answer.json() == {
        "error": "input 'input': binary_data_size is 1020 bytes but shape [1, 256] of FP32 needs"
        " 1024 bytes"
    }

    answer = binary_case(mlp_url, body, "12x")
    assert answer.json() == {
        "error": "Inference-Header-Content-Length must be a non-negative integer, got '12x'"
    }

    doc = json.loads(head)
    doc["inputs"][0]["data"] = MLP_ROW
    both = json.dumps(doc).encode()
    answer = binary_case(mlp_url, both + data, str(len(both)))
    assert answer.json() == {
        "error": "input 'input' has both 'data' and binary_data_size; give one"
    }


def test_binary_bytes_elements(types_url: str) -> None:
    feeds = modelzoo.sample_inputs("all_types", 1)
    body, headers = binary_request(feeds)
    # Cut the last BYTES element short: its length prefix now claims more than remains.
    length = int(headers["Inference-Header-Content-Length"])
    doc = json.loads(body[:length])
    for tensor in doc["inputs"]:
        if tensor["name"] == "in_BYTES":
            tensor["parameters"]["binary_data_size"] -= 1
    head = json.dumps(doc).encode()
    answer = httpx.post(
        f"{types_url}/v2/models/all_types/infer",
        content=head + body[length:-1],
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("input 'in_BYTES': a BYTES element claims ")


def test_body_over_the_limit(mlp_url: str) -> None:
    # The mlp server runs with --max-body-bytes 2000000.
    body = b'{"inputs": [' + b" " * 2_000_000 + b"]}"
    answer = httpx.post(f"{mlp_url}/v2/models/mlp/infer", content=body)
    assert answer.status_code == 413
    assert answer.json() == {
        "error": f"request body is {len(body)} bytes; this server accepts at most 2000000"
        " (--max-body-bytes)"
    }

    def chunks() -> object:
        yield b'{"inputs": ['
        for _ in range(40):
            yield b" " * 60_000

    answer = httpx.post(f"{mlp_url}/v2/models/mlp/infer", content=chunks())
    assert answer.status_code == 413
    assert answer.json() == {"error": "request body is over 2000000 bytes (--max-body-bytes)"}


def test_unknown_model_version_and_route(mlp_url: str) -> None:
    answer = httpx.post(f"{mlp_url}/v2/models/resnet/infer", content=mlp_body())
    assert (answer.status_code, answer.json()) == (
        404,
        {"error": "model 'resnet' not found; this server serves 'mlp'"},
    )
    answer = httpx.post(f"{mlp_url}/v2/models/mlp/versions/7/infer", content=mlp_body())
    assert (answer.status_code, answer.json()) == (
        404,
        {"error": "model 'mlp' has no version '7'; it serves version '1'"},
    )
    answer = httpx.get(f"{mlp_url}/v2/models/resnet")
    assert (answer.status_code, answer.json()) == (
        404,
        {"error": "model 'resnet' not found; this server serves 'mlp'"},
    )
    answer = httpx.get(f"{mlp_url}/v2/models/resnet/ready")
    assert answer.status_code == 404
    answer = httpx.get(f"{mlp_url}/v3/nothing")
    assert (answer.status_code, answer.json()) == (
        404,
        {"error": "no route GET /v3/nothing; see /docs for the routes"},
    )
    answer = httpx.post(f"{mlp_url}/v1/models/resnet:predict", json={"instances": [MLP_ROW]})
    assert (answer.status_code, answer.json()) == (
        404,
        {"error": "model 'resnet' not found; this server serves 'mlp'"},
    )


def test_v1_bad_requests(mlp_url: str, multi_url: str) -> None:
    cases = [
        (mlp_url, "mlp", b"{", "request body is not valid JSON: unexpected end of data: line 1 column 2 (char 1)"),
        (mlp_url, "mlp", b'{"inputs": []}', 'request body must be {"instances": [...]} with at least one instance'),
        (mlp_url, "mlp", json.dumps({"instances": [[1.0, 2.0]]}).encode(), "each instance must have shape [256] for input 'input'; got [2]"),
        (mlp_url, "mlp", json.dumps({"instances": [MLP_ROW, MLP_ROW[:3]]}).encode(), "'instances' is ragged (rows of different lengths); every instance must have shape [256]"),
        (mlp_url, "mlp", json.dumps({"instances": [["x"] * 256]}).encode(), "input 'input': element 0 is \"x\"; FP32 data must be numbers"),
        (mlp_url, "mlp", json.dumps({"instances": [[0.5] * 255 + [True]]}).encode(), "input 'input': element 255 is true; FP32 data must be numbers, not true or false"),
        (mlp_url, "mlp", json.dumps({"instances": [[0.5] * 256, [1e39] + [0.5] * 255]}).encode(), "input 'input': element 256 is 1e+39, out of range for FP32 (largest magnitude 3.4028235e+38)"),
        (multi_url, "multi_input", json.dumps({"instances": [[1, 2, 3, 4]]}).encode(), "V1 predict serves single-input models; this model has inputs 'ids', 'mask', 'x16': use the V2 endpoint /v2/models/{name}/infer"),
    ]  # fmt: skip
    for url, name, body, message in cases:
        answer = httpx.post(f"{url}/v1/models/{name}:predict", content=body)
        assert (answer.status_code, answer.json()) == (400, {"error": message}), body[:40]


def test_still_serving_after_bad_input(mlp_url: str, zoo: dict[str, Path]) -> None:
    for body in (b"{", b"[]", mlp_body(datatype="INT8")):
        assert httpx.post(f"{mlp_url}/v2/models/mlp/infer", content=body).status_code == 400
    feeds = {"input": np.asarray([MLP_ROW], dtype=np.float32)}
    answer = httpx.post(f"{mlp_url}/v2/models/mlp/infer", content=json_request(feeds))
    assert answer.status_code == 200
    assert_same(
        decode_response(answer.content, answer.headers)[1], modelzoo.reference(zoo["mlp"], feeds)
    )


def test_a_token_id_past_the_vocabulary_names_the_input_and_the_range(
    start_server: Any, zoo: dict[str, Path]
) -> None:
    """onnxruntime's own words (`Non-zero status code returned while running Gather node
    … idx=100 must be within the inclusive range [-100,99]`) become a 400 that names the
    input and the ids the model takes, in V2 and V1, and the server keeps serving."""
    url = start_server(zoo["sequence"]).wait_ready()
    message = (
        "input 'tok' holds the id 100, past the model's lookup table (Gather) of 100 rows: "
        "ids must be from 0 to 99"
    )
    doc = {"inputs": [{"name": "tok", "shape": [1, 3], "datatype": "INT64", "data": [1, 100, 2]}]}
    answer = httpx.post(f"{url}/v2/models/sequence/infer", json=doc)
    assert (answer.status_code, answer.json()) == (400, {"error": message})
    answer = httpx.post(f"{url}/v1/models/sequence:predict", json={"instances": [[1, 100, 2]]})
    assert answer.status_code == 400
    assert message in answer.text
    doc["inputs"][0]["data"] = [1, 99, 2]
    assert httpx.post(f"{url}/v2/models/sequence/infer", json=doc).status_code == 200
