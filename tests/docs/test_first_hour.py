"""The docs a new user reads first say what really happens (issue 16): the relative-uri
and converter-image warning on the index, the .pt2 rule and CPU-only serving in the
conversion guide, and the error lines the quick start quotes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ondeck_operator.api.spec import ModelDeployment, SpecError
from ondeck_operator.local.flags import in_manifest_terms

ROOT = Path(__file__).resolve().parents[2]


def _doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text()


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_index_warns_about_relative_uris_and_the_converter_image() -> None:
    assert _flat(
        "A relative `uri` like `model.skops` works with `ondeck run` only, which reads it next "
        "to the manifest. In a cluster the conversion Job cannot see your disk: give an "
        "`https://`, `s3://`, `gs://`, `hf://` or `pvc://claim/path` URI. The Job also needs "
        "the converter image for scikit-learn and PyTorch models; the server image alone "
        "converts ONNX models only (see [Install: Images](install.md#images))."
    ) in _flat(_doc("index.md"))
    assert "## Images" in _doc("install.md")


def _md(model: dict[str, object]) -> ModelDeployment:
    return ModelDeployment.from_manifest({"metadata": {"name": "m"}, "spec": {"model": model}})


def test_pt2_rule_in_the_conversion_guide_is_what_the_api_does() -> None:
    text = _flat(_doc("conversion.md"))
    assert (
        "In a ModelDeployment `format: pytorch` needs no `inputs` when the `uri` ends in "
        "`.pt2` (or leave `format` out); with any other name `inputs` are required "
        "(`spec.model.inputs: format pytorch needs inputs …`)"
    ) in text
    assert _md({"uri": "model.pt2", "format": "pytorch"}).spec.model.inputs is None
    assert _md({"uri": "model.pt2"}).spec.model.format is None  # inferred from the file
    with pytest.raises(SpecError) as refused:
        _md({"uri": "model.pt", "format": "pytorch"})
    assert refused.value.problems == [
        "spec.model.inputs: format pytorch needs inputs (name, dtype and shape of each input) "
        "unless the uri is a torch.export program (.pt2)"
    ]


def test_conversion_guide_says_the_server_runs_on_cpu_only() -> None:
    text = _flat(_doc("conversion.md"))
    assert not re.search(r"\| GPUs;|CUDA providers", text)
    assert (
        "the ondeck server runs on CPU only (onnxruntime's CPU execution provider, no GPU)" in text
    )
    assert "onnxruntime only (the server runs it on CPU)" in text


def test_quick_start_quotes_errors_in_manifest_terms() -> None:
    text = _doc("quickstart.md")
    (line,) = [x for x in text.splitlines() if x.startswith("ValidationFailed: ")]
    assert "--" not in line
    assert in_manifest_terms(line) == line
    assert (
        in_manifest_terms(line.replace("spec.optimize.validation.minCosine", "--min-cosine"))
        == line
    )
    with pytest.raises(SpecError) as typo:
        _md({"url": "model.skops"})
    said = next(p for p in typo.value.problems if p.startswith("spec.model.url"))
    assert said.startswith("spec.model.url: unknown field; did you mean `uri`? ")
    assert "``spec.model.url: unknown field; did you mean `uri`? …``" in _flat(text)
