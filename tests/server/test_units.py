"""Pure pieces of the server: CPU quota detection, error statuses, settings, model
names, and the V2 codec on its own (no HTTP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ondeck_server.serve import errors, threads, v2
from ondeck_server.serve.datatypes import Datatype
from ondeck_server.serve.model import ModelInfo
from ondeck_server.serve.runtime import TensorSpec
from ondeck_server.serve.settings import ServeSettings, model_name_for, ref_name


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000", None),
        ("200000 100000", 2.0),
        ("150000 100000", 1.5),
        ("50000", 0.5),
        ("", None),
        ("x y", None),
    ],
)
def test_parse_cpu_max(text: str, cpus: float | None) -> None:
    assert threads.parse_cpu_max(text) == cpus


def test_parse_cfs() -> None:
    assert threads.parse_cfs("-1\n", "100000\n") is None
    assert threads.parse_cfs("300000\n", "100000\n") == 3.0
    assert threads.parse_cfs("junk", "100000") is None


def test_cgroup_v2_then_v1_then_none(tmp_path: Path) -> None:
    v2_root = tmp_path / "v2"
    v2_root.mkdir()
    (v2_root / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_quota(v2_root) == 1.5
    v1_root = tmp_path / "v1"
    (v1_root / "cpu,cpuacct").mkdir(parents=True)
    (v1_root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1_root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_quota(v1_root) == 2.0
    assert threads.cgroup_quota(tmp_path / "none") is None


def test_cpu_limit_rounds_the_quota_down_within_the_affinity(tmp_path: Path) -> None:
    available = threads.available_cpus()
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cpu_limit(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("20000 100000\n")
    assert threads.cpu_limit(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(available + 8) * 100000} 100000\n")
    assert threads.cpu_limit(tmp_path) == available
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cpu_limit(tmp_path) == available


def test_each_error_has_one_status() -> None:
    statuses = {
        errors.InvalidInput: 400,
        errors.Unauthorized: 401,
        errors.ModelNotFound: 404,
        errors.RequestTimeout: 408,
        errors.PayloadTooLarge: 413,
        errors.ModelNotReady: 503,
        errors.Overloaded: 503,
        errors.ShuttingDown: 503,
        errors.InferenceFailed: 500,
        errors.StartupError: 500,
    }
    for cls, status in statuses.items():
        assert issubclass(cls, errors.ServeError)
        assert cls.status == status
    assert set(errors.ServeError.__subclasses__()) == set(statuses)
    assert dict(errors.Overloaded.headers)[b"retry-after"] == b"1"
    assert dict(errors.ShuttingDown.headers)[b"retry-after"] == b"1"


def test_settings_defaults_and_names(tmp_path: Path) -> None:
    settings = ServeSettings(model=tmp_path)
    assert (settings.port, settings.max_batch_size, settings.max_delay_ms) == (8080, 32, 2.0)
    assert model_name_for(Path("/s/abc/model.onnx"), None) == "abc"
    assert model_name_for(Path("/s/My Model!.onnx"), None) == "My-Model"
    assert model_name_for(Path("/s/x/model.onnx"), "iris") == "iris"
    assert model_name_for(Path("/s/x/model.onnx"), "x", ref="iris") == "iris"


def test_ref_name_is_the_link_name_of_refs(tmp_path: Path) -> None:
    """`--model <store>/refs/NAME` (or a path through it) serves NAME, not the name of
    the file the artifact was converted from."""
    store = tmp_path / "store"
    (store / "abc123").mkdir(parents=True)
    (store / "refs").mkdir()
    (store / "refs" / "iris").symlink_to("../abc123")
    assert ref_name(store / "refs" / "iris") == "iris"
    assert ref_name(store / "refs" / "iris" / "model.onnx") == "iris"
    assert ref_name(store / "abc123") is None
    assert ref_name(store / "abc123" / "model.onnx") is None
    (tmp_path / "refs" / "plain").mkdir(parents=True)  # a folder named refs, no link
    assert ref_name(tmp_path / "refs" / "plain") is None


MODEL = ModelInfo(
    "m",
    "1",
    (TensorSpec("a", Datatype.FP32, (-1, 2)), TensorSpec("b", Datatype.INT8, (-1,))),
    (TensorSpec("y", Datatype.FP16, (-1, 2)), TensorSpec("t", Datatype.BYTES, (-1,))),
)


def test_decode_nested_and_flat_agree() -> None:
    flat = (
        b'{"inputs": [{"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},'
        b' {"name": "b", "shape": [2], "datatype": "INT8", "data": [-128, 127]}]}'
    )
    nested = flat.replace(b"[1, 2, 3, 4]", b"[[1, 2], [3, 4]]")
    for body in (flat, nested):
        request = v2.decode_request(body, header_length=None, model=MODEL)
        np.testing.assert_array_equal(request.inputs["a"], [[1, 2], [3, 4]])
        assert request.inputs["a"].dtype == np.float32
        assert request.inputs["b"].dtype == np.int8
        assert request.rows == 2
        assert request.outputs == ("y", "t")
        assert request.binary == frozenset()


def test_encode_binary_bytes_and_fp16() -> None:
    results = {
        "y": np.array([[1.5, -2.0]], dtype=np.float16),
        "t": np.array(["hé", ""], dtype=object),
    }
    body, length = v2.encode_response(
        model=MODEL,
        request_id="7",
        outputs=("y", "t"),
        binary=frozenset({"y", "t"}),
        results=results,
    )
    assert length is not None
    head, data = body[:length], body[length:]
    assert b'"id":"7"' in head
    assert (
        data
        == np.array([1.5, -2.0], dtype="<f2").tobytes() + b"\x03\x00\x00\x00h\xc3\xa9" + b"\x00" * 4
    )


def test_error_body() -> None:
    assert v2.encode_error('bad "x"') == b'{"error":"bad \\"x\\""}'


def test_importing_the_server_is_light() -> None:
    """No torch, no onnxruntime, no conversion pipeline, no uvicorn at import time."""
    import subprocess
    import sys

    code = (
        "import sys, ondeck_server.serve.app, ondeck_server.serve.cli, ondeck_server.cli;"
        "print(sorted({m.split('.')[0] if not m.startswith('ondeck_server') else m"
        " for m in sys.modules} & {'torch', 'onnxruntime', 'uvicorn', 'sklearn',"
        " 'ondeck_server.convert'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
