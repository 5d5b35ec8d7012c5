"""`ondeck ls / inspect / gc` over a local store laid out as the converter writes it
(`<store>/<digest>/manifest.json`, `<store>/refs/*`), with the exact lines a user reads."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ondeck_operator.cli.store_cmd import gc_lines, inspect_lines, ls_lines
from ondeck_operator.local import store as artifacts

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
IRIS = "6b4b640af664c9d8702cbc029188ca9e83dcb8b2ade2240fbfc05a62528b2180"
OLD = "1111111111111111111111111111111111111111111111111111111111111111"


def _manifest(digest: str, created: str, **extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 1,
        "digest": digest,
        "source": {
            "uri": "/home/you/iris/model.skops",
            "sha256": "07a1de0b660f8f98fe9a783919831096dd36f2453daeb2bc36182d1b5cb5fef2",
            "format": "sklearn",
            "sizeBytes": 95571,
        },
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
        "originalSizeBytes": 19994,
        "sizeBytes": 10585,
        "settings": {"level": "basic", "quantize": "int8"},
        "validation": {
            "reference": "sklearn",
            "samples": 64,
            "sampleSource": "generated",
            "cosine": 0.9998702617174406,
            "top1Disagreement": 0.0,
            "minCosine": 0.99,
            "maxTop1Disagreement": 0.01,
            "passed": True,
        },
        "versions": {"ondeck": "0.1.0"},
        "createdAt": created,
        **extra,
    }


def _artifact(store: Path, digest: str, created: str, refs: list[str]) -> Path:
    folder = store / digest
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"\0" * 10585)
    (folder / "manifest.json").write_text(json.dumps(_manifest(digest, created)))
    for name in refs:
        artifacts.point_ref(store, name, digest)
    old = NOW.timestamp() - 86400  # relative to the fixed clock, not today
    os.utime(folder, (old, old))
    return folder


def _store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    _artifact(store, IRIS, "2026-12-02T11:57:00Z", ["iris", "b118bacec6849c76"])
    _artifact(store, OLD, "2026-11-30T12:00:00Z", ["052dda2ca9f24e43"])  # a key ref only
    (store / "refs").mkdir(exist_ok=True)
    os.symlink("../" + "2" * 64, store / "refs" / "gone")
    tmp = store / ".tmp-work-abc"
    tmp.mkdir()
    (tmp / "fp32.onnx").write_bytes(b"\0" * 2048)
    (tmp / ".lock").write_text("{}")  # nobody holds it: its writer is dead
    return store


def test_ls_shows_names_sizes_gate_and_age(tmp_path: Path) -> None:
    assert ls_lines(_store(tmp_path), now=NOW) == [
        "NAME       DIGEST        FORMAT   QUANTIZE  SIZE                 GATE"
        "                              AGE  SOURCE",
        "iris       6b4b640af664  sklearn  int8      19.5 KiB → 10.3 KiB  passed (cos 0.9999,"
        " top-1 0.00%)  3m   /home/you/iris/model.skops",
        "(no name)  111111111111  sklearn  int8      19.5 KiB → 10.3 KiB  passed (cos 0.9999,"
        " top-1 0.00%)  2d   /home/you/iris/model.skops",
    ]


def test_ls_of_an_empty_store(tmp_path: Path) -> None:
    assert ls_lines(tmp_path, now=NOW) == [
        f"no artifacts in {tmp_path}; `ondeck run -f md.yaml` converts one into it"
    ]


def test_inspect_shows_one_artifact(tmp_path: Path) -> None:
    store = _store(tmp_path)
    found = artifacts.find(store, "iris")
    assert artifacts.find(store, "6b4b") == found
    assert inspect_lines(found, now=NOW) == [
        "names:    iris",
        f"digest:   {IRIS}",
        f"path:     {store / IRIS}",
        "refs:     b118bacec6849c76, iris",
        "source:   /home/you/iris/model.skops (sklearn, sha256 07a1de0b660f…, 93.3 KiB)",
        "created:  2026-12-02 11:57:00 UTC (3m ago)",
        "inputs:   input FP32 [-1, 4]",
        "outputs:  label INT64 [-1], probabilities FP32 [-1, 3]",
        f"size:     19.5 KiB → 10.3 KiB (ONNX before → after optimization), "
        f"{artifacts.artifacts(store)[0].bytes_on_disk / 1024:.1f} KiB on disk",
        "settings: level basic, quantize int8",
        "gate:     passed: cosine 0.9999 (min 0.99), top-1 disagreement 0.00% (max 1.00%) "
        "on 64 generated samples against sklearn",
        "versions: ondeck 0.1.0",
    ]


def test_gc_removes_what_no_name_points_to(tmp_path: Path) -> None:
    store = _store(tmp_path)
    plan = artifacts.gc_plan(store, now=NOW)
    lines = gc_lines(plan, dry_run=True)
    assert lines[:3] == [
        f"would remove 111111111111  /home/you/iris/model.skops  "
        f"{plan.artifacts[0].bytes_on_disk / 1024:.1f} KiB",
        "would remove refs/gone (points at no artifact)",
        "would remove .tmp-work-abc (an unfinished conversion)",
    ]
    assert lines[3].startswith("would remove 3 item(s), ")
    artifacts.gc(store, plan)
    assert sorted(p.name for p in store.iterdir()) == [".lock", IRIS, "refs"]
    assert sorted(p.name for p in (store / "refs").iterdir()) == ["b118bacec6849c76", "iris"]
    assert gc_lines(artifacts.gc_plan(store, now=NOW), dry_run=False) == [
        "nothing to remove: every artifact has a name"
    ]


def test_gc_keeps_a_young_artifact_and_a_locked_work_folder(tmp_path: Path) -> None:
    import fcntl

    store = tmp_path / "store"
    young = _artifact(store, OLD, "2026-12-02T11:59:00Z", [])
    os.utime(young, None)
    work = store / ".tmp-work-live"
    work.mkdir()
    with (work / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a live writer
        plan = artifacts.gc_plan(store, now=NOW)
        assert plan.leftovers == []
    assert gc_lines(plan, dry_run=True) == [
        "kept 111111111111: no name points at it, but it is younger than 10 minutes",
        "nothing to remove: every artifact has a name",
    ]


def _ondeck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ondeck_operator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_commands_run_as_a_user_types_them(tmp_path: Path) -> None:
    store = _store(tmp_path)
    listed = _ondeck("ls", "--store", str(store))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].startswith("iris       6b4b640af664  sklearn")
    missing = _ondeck("inspect", "nope", "--store", str(store))
    assert (missing.returncode, missing.stderr) == (
        1,
        f"NotFound: no artifact named 'nope' in {store}; known names: iris\n",
    )
    dry = _ondeck("gc", "--dry-run", "--store", str(store))
    assert dry.returncode == 0
    assert (store / OLD).is_dir()
    done = _ondeck("gc", "--store", str(store))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("removed 111111111111  ")
    assert not (store / OLD).exists()


def test_an_auto_artifact_shows_the_mode_it_chose(tmp_path: Path) -> None:
    store = tmp_path / "store"
    folder = store / IRIS
    folder.mkdir(parents=True)
    manifest = _manifest(IRIS, "2026-12-02T11:57:00Z")
    manifest["settings"]["quantize"] = "auto"
    manifest["validation"]["auto"] = {"chosen": "int8-static", "candidates": []}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "model.onnx").write_bytes(b"\0" * 10585)
    assert artifacts.find(store, IRIS[:8]).quantize == "auto: int8-static"
    assert _artifact(tmp_path / "other", OLD, "2026-11-30T12:00:00Z", []).is_dir()
    assert artifacts.find(tmp_path / "other", OLD[:8]).quantize == "int8"
