"""`convert` on a Hugging Face causal-LM folder: onnxruntime-genai's builder, offline,
and the gate against transformers on the same folder (real models, no hub)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ondeck_server import artifact
from ondeck_server.convert import (
    ChecksumMismatch,
    ConvertRequest,
    Format,
    InvalidSettings,
    Quantize,
    convert,
)
from ondeck_server.convert.llm import folder
from ondeck_server.convert.run import Outcome


def test_fp32_equals_transformers(fp32_artifact: Outcome) -> None:
    """Greedy tokens identical to transformers' for 64 new tokens on every prompt, the
    first-step logits within 1e-4, teacher-forced top-1 agreement 1.0."""
    manifest = fp32_artifact.manifest
    assert manifest.kind == artifact.KIND_LLM
    assert manifest.source.format == Format.HF_CAUSAL_LM.value  # inferred: no --format
    report = manifest.validation
    assert report["passed"] is True
    assert report["greedy"]["tokens"] == 64
    assert len(report["greedy"]["prompts"]) >= 3
    for prompt in report["greedy"]["prompts"]:
        assert prompt["identical"], prompt
        assert prompt["matched"] == prompt["generated"]
    assert report["firstStepMaxAbsLogitDelta"] < 1e-4
    assert report["top1Agreement"] == 1.0
    assert report["tokenizerAgrees"] is True
    genai = fp32_artifact.path / artifact.GENAI_DIR
    for name in ("model.onnx", "model.onnx.data", "genai_config.json", "chat_template.jinja"):
        assert (genai / name).is_file(), name
    assert artifact.is_complete(fp32_artifact.path)
    assert artifact.is_llm(fp32_artifact.path)
    llm = manifest.llm or {}
    assert llm["architecture"] == "LlamaForCausalLM"
    assert llm["contextLength"] == 256
    assert llm["builder"] == {"precision": "fp32", "executionProvider": "cpu"}
    assert manifest.versions["onnxruntime-genai"] == "0.18.0"


def test_int4_passes_the_gate_and_is_smaller(
    int4_artifact: Outcome, fp32_artifact: Outcome
) -> None:
    manifest = int4_artifact.manifest
    assert manifest.settings["quantize"] == "int4"
    assert manifest.settings["builder"]["blockSize"] == 32
    assert manifest.settings["builder"]["accuracyLevel"] == 4
    assert manifest.validation["passed"] is True
    assert manifest.validation["top1Agreement"] >= 0.8
    assert manifest.digest != fp32_artifact.manifest.digest
    weights = lambda o: (o.path / "genai" / "model.onnx.data").stat().st_size  # noqa: E731
    assert weights(fp32_artifact) / weights(int4_artifact) >= 2.5


def test_second_run_is_cached(fp32_artifact: Outcome, tiny_folder: Path) -> None:
    again = convert(ConvertRequest(source=str(tiny_folder), store=fp32_artifact.path.parent))
    assert again.cached
    assert again.manifest.digest == fp32_artifact.manifest.digest


def test_folder_sha256_is_the_documented_shell_pipeline(tiny_folder: Path) -> None:
    ours = folder.hash_folder(tiny_folder, max_bytes=1 << 30).sha256
    shell = subprocess.run(
        "find . -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum",
        shell=True,
        cwd=tiny_folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    assert ours == shell


def test_sha256_mismatch_fails_before_anything_is_written(
    tiny_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(ChecksumMismatch, match="folder sha256"):
        convert(ConvertRequest(source=str(tiny_folder), store=tmp_path, sha256="0" * 64))
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize("mode", [Quantize.INT8, Quantize.FP16, Quantize.INT8_STATIC])
def test_unsupported_precisions_are_refused(
    mode: Quantize, tiny_folder: Path, tmp_path: Path
) -> None:
    request = ConvertRequest(
        source=str(tiny_folder),
        store=tmp_path,
        format=Format.HF_CAUSAL_LM,
        quantize=mode,
        calibration="/nonexistent.npz" if mode is Quantize.INT8_STATIC else None,
    )
    with pytest.raises(InvalidSettings, match=f"--quantize {mode.value} is not available"):
        convert(request)


def test_cli_summary_line(fp32_artifact: Outcome, tiny_folder: Path) -> None:
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ondeck_server", "convert", "--source", str(tiny_folder),
         "--store", str(fp32_artifact.path.parent), "--format", "hf-causal-lm"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["cached"] is True
    assert summary["format"] == "hf-causal-lm"
    assert summary["digest"] == fp32_artifact.manifest.digest
    # What the operator sizes the server from (docs/operations.md, "Sizing"): every
    # file of the artifact, the source's bytes, and the KV cache's terms as the builder
    # wrote them into genai_config.json and model.onnx's past_key_values inputs.
    genai = fp32_artifact.path / artifact.GENAI_DIR
    config = json.loads((genai / "genai_config.json").read_text())["model"]
    assert summary["kind"] == "llm"
    assert summary["precision"] == "fp32"
    assert summary["sizeBytes"] == sum(p.stat().st_size for p in genai.rglob("*") if p.is_file())
    assert summary["sourceSizeBytes"] == sum(
        p.stat().st_size for p in tiny_folder.rglob("*") if p.is_file()
    )
    assert summary["llm"] == {
        "numLayers": config["decoder"]["num_hidden_layers"],
        "numKeyValueHeads": config["decoder"]["num_key_value_heads"],
        "headSize": config["decoder"]["head_size"],
        "kvBytesPerElement": 4,
        "contextLength": config["context_length"],
    }
