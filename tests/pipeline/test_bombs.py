"""Resource bombs against `ondeck-server convert` (issue 15, item 4): each is refused with
one line naming the bound and how to raise it, before anything is materialised.

Every conversion here runs in a subprocess under RLIMIT_AS (6 GiB of address space): a
regression fails the test with a MemoryError or an allocation failure instead of
OOM-killing the machine. Sources are loopback servers the tests start.
"""

from __future__ import annotations

import http.server
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.conftest import Sources, store_entries

IRIS = Path(__file__).resolve().parents[2] / "examples" / "iris" / "model.skops"
ADDRESS_SPACE = 6 << 30
MIB = 1 << 20


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def convert_capped(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONDECK_")}
    return subprocess.run(
        [sys.executable, "-m", "ondeck_server", "convert", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        preexec_fn=_cap,
    )


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    return done.stderr.strip().splitlines()[-1]


def _constant_of_shape_bomb(path: Path, dims: list[int]) -> Path:
    """`y = x + sum(ConstantOfShape(dims))`: a few hundred bytes declaring a huge tensor."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["big"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
            ),
            helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array(dims, dtype=np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save_model(model, str(path))
    return path


def test_constant_of_shape_bomb_is_refused_before_onnxruntime_allocates(tmp_path: Path) -> None:
    """209 bytes declaring a 4 TiB tensor OOM-killed convert at 23 GB with no error line
    (nodes overcommit memory, so the allocation succeeds and the kernel kills later)."""
    bomb = _constant_of_shape_bomb(tmp_path / "bomb.onnx", [2**20, 2**20])
    assert bomb.stat().st_size < 300
    store = tmp_path / "store"
    line = error_line(
        convert_capped(
            "--source", str(bomb), "--store", str(store), "--max-tensor-bytes", "1073741824"
        )
    )
    assert line == (
        "UnsafeModel: bomb.onnx computes 'big' of shape [1048576, 1048576] float32 (4.0 TiB), "
        "over the limit of 1.0 GiB (1073741824 bytes) for one tensor; raise the Job's memory "
        "limit (spec.optimize.resources.limits.memory) or --max-tensor-bytes "
        "(ONDECK_MAX_TENSOR_BYTES) if the model is genuine"
    )
    # The default bound (4 GiB or a quarter of the memory limit) refuses it too.
    line = error_line(convert_capped("--source", str(bomb), "--store", str(store)))
    assert line.startswith(
        "UnsafeModel: bomb.onnx computes 'big' of shape [1048576, 1048576] float32 (4.0 TiB), "
        "over the limit of "
    )
    assert [e for e in store_entries(store) if not e.startswith(".")] == []


def test_a_shape_computed_from_the_batch_is_bounded_too(tmp_path: Path) -> None:
    """ConstantOfShape(Shape(x) * [1, 2^30]): the size is known once the batch the
    validation uses (32 rows) is bound."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["sh"]),
            helper.make_node("Mul", ["sh", "k"], ["dims"]),
            helper.make_node(
                "ConstantOfShape",
                ["dims"],
                ["big"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
            ),
            helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array([1, 2**30], dtype=np.int64), "k")],
    )
    path = tmp_path / "grow.onnx"
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
        str(path),
    )
    line = error_line(convert_capped("--source", str(path), "--store", str(tmp_path / "s")))
    assert line.startswith(
        "UnsafeModel: grow.onnx computes 'big' of shape [32, 1073741824] float32 (128.0 GiB), "
        "over the limit of "
    )


def _inflating_skops(path: Path, *, inflated: int) -> Path:
    """A genuine skops file plus one member of `inflated` zero bytes (deflated: ~1 MB
    per GiB)."""
    shutil.copyfile(IRIS, path)
    zero = bytes(MIB)
    with (
        zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("bomb.npy", "w", force_zip64=True) as member,
    ):
        for _ in range(inflated // MIB):
            member.write(zero)
    return path


def test_skops_zip_bomb_is_refused_before_skops_inflates_it(tmp_path: Path) -> None:
    """A 1 MB skops zip inflating to 1 GiB took 2.7 GB."""
    bomb = _inflating_skops(tmp_path / "model.skops", inflated=512 * MIB)
    assert bomb.stat().st_size < 4 * MIB
    line = error_line(
        convert_capped(
            "--source",
            str(bomb),
            "--store",
            str(tmp_path / "store"),
            "--max-unpacked-bytes",
            str(256 * MIB),
        )
    )
    assert line.startswith("UnsafeModel: model.skops unpacks to 512.1 MiB (")
    assert line.endswith(
        " files), over the limit of 256.0 MiB (268435456 bytes); raise the Job's memory limit "
        "(spec.optimize.resources.limits.memory) or --max-unpacked-bytes "
        "(ONDECK_MAX_UNPACKED_BYTES) if the file is genuine"
    )


# ---------------------------------------------------------------- hostile HTTP sources


class _Hostile(http.server.BaseHTTPRequestHandler):
    """/gzip: 256 MiB of zeros as a ~256 KB gzip body, whatever the client accepts.
    /drip: a 1000-byte body, one byte every 0.5 s."""

    protocol_version = "HTTP/1.1"
    gzip_body = b""

    def do_GET(self) -> None:
        if self.path.endswith("/gzip/model.onnx"):
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(self.gzip_body)))
            self.end_headers()
            self.wfile.write(self.gzip_body)
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hostile_url() -> Iterator[str]:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zero = bytes(MIB)
    _Hostile.gzip_body = b"".join(packer.compress(zero) for _ in range(256)) + packer.flush()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_gzip_content_encoding_is_refused_not_inflated(hostile_url: str, tmp_path: Path) -> None:
    """A ~256 KB gzip body passed the Content-Length check and was written to the store
    decoded; ondeck now asks for the plain file and refuses an encoded answer."""
    uri = f"{hostile_url}/gzip/model.onnx"
    store = tmp_path / "store"
    line = error_line(convert_capped("--source", uri, "--store", str(store)))
    assert line == (
        f"FetchFailed: {uri} was sent with Content-Encoding 'gzip' although ondeck asked for "
        "the plain file (identity): serve the model file uncompressed"
    )
    assert [e for e in store_entries(store) if not e.startswith(".trash")] == []


def test_a_dripping_source_hits_the_total_deadline(hostile_url: str, tmp_path: Path) -> None:
    """One byte every 0.5 s never trips the read timeout; the total deadline stops it."""
    uri = f"{hostile_url}/drip/model.onnx"
    start = time.monotonic()
    done = convert_capped(
        "--source", uri, "--store", str(tmp_path / "store"), "--fetch-timeout", "3", timeout=60
    )
    elapsed = time.monotonic() - start
    line = error_line(done)
    assert line.startswith(f"FetchFailed: {uri}: the download did not finish within 3 s (")
    assert line.endswith(
        " bytes so far); the limit is --fetch-timeout (ONDECK_FETCH_TIMEOUT): fix the slow "
        "source or raise it for a very large model"
    )
    assert elapsed < 30, elapsed


def test_calibration_zip_bomb_is_refused(sources: Sources, tmp_path: Path) -> None:
    calibration = tmp_path / "cal.npz"
    zero = bytes(MIB)
    with (
        zipfile.ZipFile(calibration, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z,
        z.open("input.npy", "w", force_zip64=True) as member,
    ):
        for _ in range(300):
            member.write(zero)
    line = error_line(
        convert_capped(
            "--source",
            str(sources["mlp.onnx"]),
            "--store",
            str(tmp_path / "store"),
            "--quantize",
            "int8-static",
            "--calibration",
            str(calibration),
            "--max-unpacked-bytes",
            str(128 * MIB),
        )
    )
    assert line.startswith(f"UnsafeModel: --calibration {calibration} unpacks to 300.0 MiB (")
