"""Every `--level` gives a loadable artifact with the original's answers; `basic` keeps
the graph plain ONNX (no onnxruntime contrib operators), `extended` may not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from ondeck_server import artifact
from ondeck_server.convert import ConvertRequest, OptimizationLevel, convert
from pipeline import models
from pipeline.conftest import Sources, onnx_answers, store_entries


@pytest.mark.parametrize("level", list(OptimizationLevel))
def test_levels(sources: Sources, store: Path, level: OptimizationLevel) -> None:
    outcome = convert(ConvertRequest(source=str(sources["mlp.onnx"]), store=store, level=level))
    model = outcome.path / artifact.MODEL_FILE
    assert outcome.manifest.settings["level"] == level.value
    x = models.digits_calibration(16)["input"]
    np.testing.assert_allclose(
        onnx_answers(model, {"input": x})[0],
        onnx_answers(sources["mlp.onnx"], {"input": x})[0],
        atol=1e-5,
    )
    domains = {node.domain for node in onnx.load_model(str(model)).graph.node}
    if level in (OptimizationLevel.DISABLED, OptimizationLevel.BASIC):
        assert domains <= {"", "ai.onnx"}, "basic must stay portable: standard operators only"


def test_http_source_through_the_pipeline(sources: Sources, http_url: str, store: Path) -> None:
    import hashlib

    digest = hashlib.sha256(sources["iris_logreg.skops"].read_bytes()).hexdigest()
    outcome = convert(
        ConvertRequest(source=f"{http_url}/iris_logreg.skops", store=store, sha256=digest)
    )
    assert outcome.manifest.source.sha256 == digest
    assert outcome.manifest.source.uri == f"{http_url}/iris_logreg.skops"
    # The download went into a locked scratch folder that is gone now.
    assert store_entries(store) == [outcome.manifest.digest]
