"""The `--inputs` mini-language: what parses and the exact errors for what does not."""

from __future__ import annotations

import pytest

from ondeck_server.convert.errors import InvalidSettings
from ondeck_server.convert.inputs_spec import DType, InputSpec, parse_inputs, render_inputs


def test_one_and_many_entries() -> None:
    assert parse_inputs("input:float32:[-1,3,32,32]") == [
        InputSpec(name="input", dtype=DType.FLOAT32, shape=[-1, 3, 32, 32])
    ]
    specs = parse_inputs(" ids : int64 : [-1, -1] ; mask:bool:[-1,-1]; ")
    assert [(s.name, s.dtype, s.shape) for s in specs] == [
        ("ids", DType.INT64, [-1, -1]),
        ("mask", DType.BOOL, [-1, -1]),
    ]
    assert render_inputs(specs) == "ids:int64:[-1,-1];mask:bool:[-1,-1]"


def test_aliases_and_v2_names() -> None:
    (spec,) = parse_inputs("x:float:[1]")
    assert spec.dtype is DType.FLOAT32
    assert spec.dtype.v2 == "FP32"
    assert DType.BOOL.numpy.name == "bool"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "",
            "--inputs is empty: give name:dtype:[dims] entries, e.g. input:float32:[-1,3,32,32] "
            "or ids:int64:[-1,-1];mask:int64:[-1,-1]",
        ),
        (
            "x:float32",
            "--inputs entry 'x:float32' is not name:dtype:[dims], e.g. "
            "input:float32:[-1,3,32,32] or ids:int64:[-1,-1];mask:int64:[-1,-1]",
        ),
        (
            "x:complex64:[1]",
            "--inputs entry 'x' has dtype 'complex64'; use one of float32, "
            "float16, float64, int64, int32, int16, int8, uint8, bool",
        ),
        (
            "x:float32:[a]",
            "--inputs entry 'x' has dimension 'a'; dimensions are integers, -1 for a dynamic one",
        ),
        ("x:float32:[0]", "--inputs entry 'x' has dimension 0; use a positive size or -1"),
        (
            "x:float32:[]",
            "--inputs entry 'x' has no dimensions, e.g. input:float32:[-1,3,32,32] "
            "or ids:int64:[-1,-1];mask:int64:[-1,-1]",
        ),
        ("x:float32:[1];x:int64:[1]", "--inputs names 'x' twice; input names must be unique"),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidSettings) as info:
        parse_inputs(text)
    assert info.value.message == message
