"""The scripts that make the committed example models still make them: rerunning
examples/iris/make_model.py gives a model that predicts what the committed one does, and
examples/cnn/make_model.py a TorchScript CNN as accurate as the committed one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


#: One thread each: BLAS and torch thread pools spin against each other on a busy machine.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _make(example: str, out: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example / "make_model.py"), "--out", str(out)],
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def test_iris_script_reproduces_the_committed_model(tmp_path: Path) -> None:
    sio = pytest.importorskip("skops.io", reason="needs skops: pip install -e '.[sklearn]'")
    from sklearn.datasets import load_iris

    out = tmp_path / "model.skops"
    assert "training accuracy" in _make("iris", out)
    x = load_iris().data.astype(np.float32)
    fresh = sio.load(out, trusted=sio.get_untrusted_types(file=out))
    committed_path = ROOT / "examples" / "iris" / "model.skops"
    committed = sio.load(committed_path, trusted=sio.get_untrusted_types(file=committed_path))
    # lbfgs over 2000 iterations lands a little differently with another BLAS thread count
    # (probabilities differ by a few 1e-2); the predicted species do not.
    assert (fresh.predict(x) == committed.predict(x)).all()


def test_cnn_script_makes_an_accurate_torchscript_model(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="needs torch: pip install -e '.[pytorch]'")
    from sklearn.datasets import load_digits

    out = tmp_path / "model.pt"
    _make("cnn", out)
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    for path in (out, ROOT / "examples" / "cnn" / "model.pt"):
        model = torch.jit.load(str(path))
        with torch.no_grad():
            accuracy = float((model(x).argmax(dim=1) == y).float().mean())
        assert accuracy >= 0.97, path
