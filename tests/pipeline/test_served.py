"""The artifact `ondeck-server serve` loads from the store gives the validated answers:
convert with the real CLI, serve the store's folder with the real server on 127.0.0.1,
and compare its V2 answers with the source framework."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipeline import models
from pipeline.conftest import ServeProcesses, Sources


def convert_cli(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "ondeck_server", "convert", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """`serve(model_path) -> base URL` of a ready server; stopped after the test."""
    try:
        import ondeck_server.serve.cli  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"needs ondeck-server serve (ondeck_server.serve.cli): {exc}")
    servers = ServeProcesses(tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ONDECK_")}

    def start(model: Path) -> str:
        return servers.start(["--model", str(model)], env=clean)

    yield start
    servers.stop_all()


def infer(url: str, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    body = {
        "inputs": [
            {
                "name": key,
                "shape": list(value.shape),
                "datatype": "FP32",
                "data": value.reshape(-1).tolist(),
            }
            for key, value in feeds.items()
        ]
    }
    response = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {
        out["name"]: np.asarray(out["data"]).reshape(out["shape"])
        for out in response.json()["outputs"]
    }


def test_served_artifacts_give_the_validated_answers(
    sources: Sources, tmp_path: Path, serve: object
) -> None:
    import torch

    store = tmp_path / "store"
    sklearn = convert_cli(
        "--source", str(sources["digits_pipeline.skops"]), "--store", str(store), "--ref", "digits"
    )
    mlp = convert_cli(
        "--source",
        str(sources["mlp.pt"]),
        "--inputs",
        models.MLP_INPUTS,
        "--quantize",
        "int8",
        "--calibration",
        str(sources["digits.npz"]),
        "--store",
        str(store),
    )
    x, _ = models.digits()

    # scikit-learn, served through the ref link the operator would mount.
    url = serve(store / "refs" / "digits")  # type: ignore[operator]
    # Served through refs/digits, the model is named after the ref.
    answers = infer(url, "digits", {"input": x[:50]})
    estimator = models.sklearn_models()["digits_pipeline"]
    assert (answers["label"] == estimator.predict(x[:50])).all()
    np.testing.assert_allclose(answers["probabilities"], estimator.predict_proba(x[:50]), atol=1e-4)
    assert sklearn["validation"]["top1Disagreement"] == 0.0  # type: ignore[index]

    # The int8 MLP, served from its digest folder: what validation measured holds.
    url = serve(Path(str(mlp["path"])))  # type: ignore[operator]
    features = (x[:64] / 16.0).astype(np.float32)
    (logits,) = infer(url, "mlp", {"input": features}).values()
    module = torch.jit.load(str(sources["mlp.pt"]))
    with torch.no_grad():
        reference = module(torch.from_numpy(features)).numpy()
    agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    assert agreement >= 1 - mlp["validation"]["maxTop1Disagreement"]  # type: ignore[index]
    cosine = np.sum(logits * reference, 1) / (
        np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert float(cosine.mean()) >= mlp["validation"]["minCosine"]  # type: ignore[index]
