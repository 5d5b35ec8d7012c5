"""Large models through the real CLI (issue 11): a conversion killed with SIGKILL while
it writes a few-hundred-MB artifact, locally and in the middle of an S3 multipart
upload, leaves nothing that can be served, and the rerun completes; and a model past
protobuf's 2 GiB limit goes through int4 conversion, the gate, the store and the server
(160 s and ~7 GiB of disk: see test_over_2_gib_int4_through_every_stage)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline import models
from pipeline.conftest import S3, ServeProcesses, store_entries
from pipeline.test_remote_store import _client, _env, _keys
from pipeline.test_served import infer

#: 4096 x 4096 FP32 = 64 MiB a layer: 5 layers and the head, 320 MiB in external data.
WIDTH, LAYERS = 4096, 5
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def mlp_320mb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("large") / "big.onnx"
    models.save_large_mlp(path, width=WIDTH, layers=LAYERS)
    return path


def _clean_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ONDECK_")} | extra


def _convert_argv(source: Path, store: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ondeck_server", "convert", "--source", str(source),
        "--store", store, "--ref", "big", "--validation-samples", "8", *extra,
    ]  # fmt: skip


def _kill_when(
    argv: list[str], env: dict[str, str], ready: Callable[[], bool], *, limit_s: float = 240
) -> subprocess.Popen[bytes]:
    """Start argv, SIGKILL it as soon as `ready()` (polled every 5 ms); fail when it ends
    first (the moment was missed: nothing would have been tested)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.005)
        assert proc.poll() is None, f"it finished before it could be killed: {proc.stderr}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


def _staged_model(store: Path) -> bool:
    """A staging folder of the artifact (not the work folder) holds a model file."""
    return any(
        (d / "model.onnx").is_file()
        for d in store.glob(".tmp-*")
        if not d.name.startswith(".tmp-work-")
    )


def _answers_right(url: str, name: str) -> None:
    x = np.random.default_rng(5).standard_normal((3, WIDTH)).astype(np.float32)
    got = infer(url, name, {"input": x})["logits"]
    np.testing.assert_allclose(
        got, models.large_mlp_answers(x, width=WIDTH, layers=LAYERS), rtol=1e-3, atol=1e-4
    )


def test_killed_while_writing_a_large_artifact_then_rerun(mlp_320mb: Path, tmp_path: Path) -> None:
    """SIGKILL once the artifact's staging folder holds model.onnx (being written): no
    artifact under any digest, no ref, `serve` refuses with a clear error. The rerun
    removes the killed run's temporary folders first (their locks died with it: cleaned,
    not merely ignored), converts, publishes and serves the numpy oracle's answers."""
    store = tmp_path / "store"
    argv = _convert_argv(mlp_320mb, str(store))
    _kill_when(argv, _clean_env(), lambda: _staged_model(store))

    entries = store_entries(store)
    staging = [e for e in entries if e.startswith(".tmp-") and not e.startswith(".tmp-work-")]
    assert len(staging) == 1, entries
    assert not [e for e in entries if _DIGEST.match(e)], entries
    assert not (store / "refs" / "big").exists()
    done = subprocess.run(
        [sys.executable, "-m", "ondeck_server", "serve", "--model", str(store / "refs" / "big")],
        capture_output=True, text=True, env=_clean_env(), timeout=120, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr.strip()) == (
        1,
        f"StartupError: model path {store / 'refs' / 'big'} does not exist",
    )

    rerun = subprocess.run(argv, capture_output=True, text=True, env=_clean_env(), timeout=280)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    digest = summary["digest"]
    assert summary["cached"] is False
    # The killed run was writing this very artifact, and its folders are gone.
    assert staging[0].startswith(f".tmp-{digest[:12]}-")
    assert store_entries(store) == [digest, "refs"]
    assert sorted(p.name for p in (store / digest).iterdir()) == ["manifest.json", "model.onnx"]

    servers = ServeProcesses(tmp_path)
    try:
        _answers_right(
            servers.start(["--model", str(store / "refs" / "big")], env=_clean_env()), "big"
        )
    finally:
        servers.stop_all()


def test_killed_in_the_middle_of_an_s3_upload_then_rerun(
    mlp_320mb: Path, s3: S3, tmp_path: Path
) -> None:
    """SIGKILL while the 320 MiB model.onnx is a multipart upload in progress: no
    manifest object, so the store has no artifact under the digest and `serve` refuses
    it; the rerun uploads it whole and the server answers. The killed run's local build
    folder (`ondeck-build-*` in TMPDIR, a pod's ephemeral storage in a cluster) is not
    removed by the rerun: it is left to the temporary directory's owner."""
    prefix = "large/kill"
    bucket_store = f"s3://{s3.bucket}/{prefix}"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = _env(s3, store_only=True) | {"TMPDIR": str(tmpdir)}
    argv = _convert_argv(mlp_320mb, bucket_store, "--store-endpoint-url", s3.endpoint)
    client = _client(s3)

    def uploading() -> bool:
        listing = client.list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix)
        return bool(listing.get("Uploads"))

    _kill_when(argv, env, uploading)
    keys = _keys(s3, prefix + "/")
    assert not [k for k in keys if k.endswith("/manifest.json")], keys
    assert f"{prefix}/refs/big" not in keys
    digests = {k.split("/")[2] for k in keys} | {
        u["Key"].split("/")[2]
        for u in client.list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix).get("Uploads", [])
    }
    assert len(digests) == 1, digests
    (digest,) = digests
    done = subprocess.run(
        [sys.executable, "-m", "ondeck_server", "serve", "--model", f"{bucket_store}/{digest}",
         "--model-cache", str(tmp_path / "cache"), "--s3-endpoint-url", s3.endpoint],
        capture_output=True, text=True, env=_env(s3), timeout=120, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr.strip()) == (
        1,
        f"StartupError: {bucket_store}/{digest}: no artifact {digest} in {bucket_store} (no "
        "manifest.json); it was never converted there or its upload did not finish",
    )
    left = sorted(p.name for p in tmpdir.glob("ondeck-build-*"))
    assert len(left) == 1, left

    rerun = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=280)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["digest"] == digest
    assert f"{prefix}/{digest}/manifest.json" in _keys(s3, prefix + "/")
    servers = ServeProcesses(tmp_path)
    try:
        args = ["--model", f"{bucket_store}/refs/big", "--model-cache", str(tmp_path / "cache")]
        url = servers.start([*args, "--s3-endpoint-url", s3.endpoint], env=_env(s3))
        _answers_right(url, "big")
    finally:
        servers.stop_all()


#: 9 layers 8192 x 8192 and the head: 2.25 GiB of FP32 weights, past protobuf's 2 GiB.
BIG_WIDTH, BIG_LAYERS = 8192, 9
#: Free disk the test needs: the source (2.25 GiB), the conversion's FP32 and optimized
#: work copies (4.5 GiB) and the artifact (0.3 GiB), with room to spare.
LARGE_DISK_BYTES = 9 << 30


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_over_2_gib_int4_through_every_stage(tmp_path: Path) -> None:
    """A model past protobuf's 2 GiB limit (2.25 GiB of FP32 weights in external data,
    built layer by layer with numpy) through the real CLI: convert with int4 (fetch,
    check, optimize, quantize, gate, batch check, publish), then `serve` and one request
    whose answer is the artifact's own and close to the numpy oracle's.

    Cost, measured on the 2-core CI machine at load average 5-10: 160 s in all (the
    conversion 53 s, peaking at 2.61 GiB RSS = 1.16x the weights), about 7 GiB of disk at
    the peak (the source, the conversion's two work copies, the artifact), all under
    tmp_path; skipped with less than 9 GiB free. int8 is left out: at this size its
    conversion alone took 294 s (its gate runs the int8 MatMuls, slow on this CPU), past
    this test's budget of 6 minutes; bench/large measures it. The gate's bounds are
    loosened (cosine 0.9, top-1 disagreement 0.5): random 8192-wide weights through nine
    ReLU layers are the worst case for 4-bit weights (mean cosine 0.965 to FP32, 0.92 at
    worst, near-tied logits), which says nothing of a real model's."""
    import shutil

    free = shutil.disk_usage(tmp_path).free
    if free < LARGE_DISK_BYTES:
        pytest.skip(f"needs 9 GiB of free disk under {tmp_path} for a 2.25 GiB model: {free} B")
    import resource

    import onnxruntime as ort

    source = tmp_path / "src" / "big.onnx"
    source.parent.mkdir()
    weights = models.save_large_mlp(source, width=BIG_WIDTH, layers=BIG_LAYERS)
    assert weights > 2 << 30
    store = tmp_path / "store"
    argv = _convert_argv(source, str(store), "--quantize", "int4", "--min-cosine", "0.9",
                         "--max-top1-disagreement", "0.5")  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=_clean_env(), timeout=840)
    convert_s = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    # The largest of this test process's children so far: the conversion (the kill tests'
    # are smaller). The aim of issue 11: at most 2.5x the weights.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"convert int4: {convert_s:.0f} s, peak RSS {peak / (1 << 30):.2f} GiB "
          f"({peak / weights:.2f}x the weights)")  # fmt: skip
    assert peak <= 2.5 * weights
    assert summary["precision"] == "int4"
    assert summary["validation"]["passed"] is True
    artifact_dir = store / summary["digest"]
    assert summary["sizeBytes"] < weights / 5

    x = np.random.default_rng(5).standard_normal((3, BIG_WIDTH)).astype(np.float32)
    own = ort.InferenceSession(
        str(artifact_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    ).run(None, {"input": x})[0]
    servers = ServeProcesses(tmp_path)
    try:
        url = servers.start(["--model", str(store / "refs" / "big")], env=_clean_env())
        got = infer(url, "big", {"input": x})["logits"]
    finally:
        servers.stop_all()
    np.testing.assert_allclose(got, own, rtol=1e-4, atol=1e-4)
    oracle = models.large_mlp_answers(x, width=BIG_WIDTH, layers=BIG_LAYERS)
    cosine = (got * oracle).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(oracle, axis=1)
    assert cosine.min() > 0.85, cosine
    assert cosine.mean() > 0.9, cosine
