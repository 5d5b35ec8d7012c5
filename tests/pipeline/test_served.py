"""The artifact `ondeck-server serve` loads from the store gives the validated answers:
convert with the real CLI, serve the store's folder with the real server on 127.0.0.1,
and compare its V2 answers with the source framework."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipeline import models
from pipeline.conftest import Sources

_LISTENING = re.compile(r"serving model '[^']+' on (http://127\.0\.0\.1:\d+)")


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
        import ondeck_server.serve_cli  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"needs ondeck-server serve (ondeck_server.serve_cli): {exc}")
    procs: list[subprocess.Popen[bytes]] = []

    def start(model: Path) -> str:
        log = tmp_path / f"serve-{len(procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ondeck_server",
                    "serve",
                    "--model",
                    str(model),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--threads",
                    "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("ONDECK_")},
            )
        procs.append(proc)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            found = _LISTENING.search(log.read_text(errors="replace"))
            if found:
                url = found.group(1)
                try:
                    if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"server not ready: {log.read_text()}")

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    # The default model name is the manifest's: the source file's stem.
    answers = infer(url, "digits_pipeline", {"input": x[:50]})
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
