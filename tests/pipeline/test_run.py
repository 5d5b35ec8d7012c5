"""The pipeline as a whole: content-addressed, idempotent, crash safe, and refusing to
publish anything on failure (including a full disk)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ondeck_server import artifact
from ondeck_server.convert import ConvertRequest, Quantize, StoreFailed, convert
from ondeck_server.convert.store import LOCK_FILE, clean_stale, locked_temp_dir
from pipeline.conftest import Sources, store_entries


def request(sources: Sources, store: Path, **extra: object) -> ConvertRequest:
    return ConvertRequest(source=str(sources["mlp.onnx"]), store=store, **extra)  # type: ignore[arg-type]


def _digits(sources: Sources) -> str:
    """Real digits for the gate: on N(0, 1) noise this MLP's classes nearly tie and
    7-bit int8 weights flip 1 pick in 64 on an AVX2 CPU (docs/conversion.md)."""
    return str(sources["digits.npz"])


def test_rerun_is_cached_and_touches_nothing(sources: Sources, store: Path) -> None:
    first = convert(request(sources, store))
    assert not first.cached
    model = first.path / artifact.MODEL_FILE
    stamp = model.stat().st_mtime_ns
    second = convert(request(sources, store))
    assert second.cached
    assert second.path == first.path
    assert second.manifest == first.manifest
    assert model.stat().st_mtime_ns == stamp
    assert store_entries(store) == [first.manifest.digest]


def test_the_digest_is_the_content_and_settings(sources: Sources, store: Path) -> None:
    plain = convert(request(sources, store))
    int8 = convert(request(sources, store, quantize=Quantize.INT8, calibration=_digits(sources)))
    assert plain.manifest.digest != int8.manifest.digest
    assert len(plain.manifest.digest) == 64
    # The same source under another name is the same artifact.
    copy = store.parent / "renamed.onnx"
    copy.write_bytes(sources["mlp.onnx"].read_bytes())
    again = convert(ConvertRequest(source=str(copy), store=store))
    assert again.cached
    assert again.manifest.digest == plain.manifest.digest


def test_manifest_records_how_the_artifact_was_made(sources: Sources, store: Path) -> None:
    manifest = convert(
        request(sources, store, quantize=Quantize.INT8, calibration=_digits(sources))
    ).manifest
    assert manifest.source.sha256 == artifact.read_manifest(store / manifest.digest).source.sha256
    assert manifest.settings["level"] == "basic"
    assert manifest.settings["validation"] == {
        "samples": 64,
        "minCosine": 0.99,
        "maxTop1Disagreement": 0.04,
    }
    assert set(manifest.timings) >= {"fetch", "convert", "optimize", "quantize", "validate"}
    assert {"ondeck", "onnx", "onnxruntime"} <= set(manifest.versions)
    assert manifest.size_bytes < manifest.original_size_bytes
    assert manifest.created_at is not None
    mode = (store / manifest.digest).stat().st_mode & 0o777
    assert mode == 0o755, "the server may run as another user than the Job"


def test_ref_points_at_the_artifact(sources: Sources, store: Path) -> None:
    outcome = convert(request(sources, store, ref="mlp-v1"))
    link = store / artifact.REFS_DIR / "mlp-v1"
    assert os.readlink(link) == os.path.join("..", outcome.manifest.digest)
    resolved = artifact.resolve(link)
    assert resolved.manifest == outcome.manifest
    # A cached rerun moves the ref too.
    os.unlink(link)
    assert convert(request(sources, store, ref="mlp-v1")).cached
    assert link.is_symlink()


def test_rerun_after_a_crash_mid_write(sources: Sources, store: Path) -> None:
    digest = convert(request(sources, store)).manifest.digest
    final = store / digest
    # The crash: the final folder is half written (no manifest, a truncated model) and
    # temporary folders of the dead writer are left behind.
    (final / artifact.MANIFEST_FILE).unlink()
    (final / artifact.MODEL_FILE).write_bytes(b"\x08")
    stale_work = store / ".tmp-work-dead"
    stale_stage = store / f".tmp-{digest[:12]}-dead"
    for folder in (stale_work, stale_stage):
        folder.mkdir()
        (folder / "fp32.onnx").write_bytes(b"partial")
        os.utime(folder, (1, 1))
    outcome = convert(request(sources, store))
    assert not outcome.cached
    assert store.joinpath(digest).is_dir()
    assert artifact.is_complete(final)
    assert store_entries(store) == [digest]


def test_complete_looking_artifact_with_a_wrong_model_is_rebuilt(
    sources: Sources, store: Path
) -> None:
    first = convert(request(sources, store))
    model = first.path / artifact.MODEL_FILE
    model.write_bytes(model.read_bytes()[:100])
    again = convert(request(sources, store))
    assert not again.cached
    assert model.stat().st_size == first.manifest.size_bytes


def test_stale_cleanup_spares_live_writers(store: Path) -> None:
    store.mkdir()
    with locked_temp_dir(store, ".tmp-live-") as live:
        dead, young = store / ".tmp-dead", store / ".tmp-young"
        dead.mkdir()
        os.utime(dead, (1, 1))
        young.mkdir()
        (young / LOCK_FILE).write_text("{}")
        # Folders are created and locked under the store lock: an unlocked one belongs to
        # a dead writer however young it is (issue 15, item 13).
        assert clean_stale(store) == [dead, young]
        assert live.is_dir()
    assert clean_stale(store) == [live]
    assert store_entries(store) == []


def test_killed_conversions_leave_nothing_after_the_next_run(
    sources: Sources, tmp_path: Path
) -> None:
    """A crash-looping Job (kill -9 mid-write, again and again) filled the claim with
    `.tmp-*` folders that only a run 30 s later removed; the next run now removes them
    at once (issue 15, item 13)."""
    store = tmp_path / "store"
    argv = [
        sys.executable, "-m", "ondeck_server", "convert", "--source",
        str(sources["iris_pipeline.skops"]), "--store", str(store), "--quantize", "int8",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONDECK_")}
    killed = 0
    for _ in range(4):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        # Kill it once it has written something into a temporary folder.
        while time.monotonic() < deadline and proc.poll() is None:
            if any(
                p.name != LOCK_FILE for d in store.glob(".tmp-*") if d.is_dir() for p in d.iterdir()
            ):
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    assert killed >= 3
    assert [e for e in store_entries(store) if e.startswith(".tmp-")], "nothing to clean up?"
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    leftovers = [e for e in store_entries(store) if e.startswith((".tmp-", ".trash-"))]
    assert leftovers == []


@pytest.fixture
def tiny_store(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: the full disk of a too-small artifact volume."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"needs root and tmpfs mounts to simulate a full disk: {result.stderr}")
    try:
        yield mount / "store"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk(sources: Sources, tiny_store: Path) -> None:
    with pytest.raises(StoreFailed) as info:
        convert(request(sources, tiny_store))
    assert info.value.message.startswith(
        (
            f"no space left in the artifact store {tiny_store} (",
            f"the artifact store {tiny_store} is full (",
        )
    )
    assert info.value.message.endswith(
        "give it more room (spec.artifacts.pvc.size) or remove unused artifacts"
    )
    assert store_entries(tiny_store) == []


def test_concurrent_writers_of_one_digest(sources: Sources, store: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    wanted = request(sources, store)
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda _: convert(wanted), range(2)))
    assert outcomes[0].manifest.digest == outcomes[1].manifest.digest
    assert store_entries(store) == [outcomes[0].manifest.digest]
    assert artifact.is_complete(outcomes[0].path)
