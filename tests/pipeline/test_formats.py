"""Format inference from the file's bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ondeck_server.convert.errors import UnsupportedFormat
from ondeck_server.convert.formats import Format, SourceKind, infer_kind
from pipeline.conftest import Sources


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("mlp.onnx", SourceKind.ONNX),
        ("mlp.pt", SourceKind.TORCHSCRIPT),
        ("mlp.pt2", SourceKind.TORCH_EXPORT),
        ("iris_logreg.skops", SourceKind.SKOPS),
        ("iris_pipeline.joblib", SourceKind.PICKLE),
    ],
)
def test_kinds(sources: Sources, name: str, kind: SourceKind) -> None:
    assert infer_kind(sources[name]) is kind
    assert infer_kind(sources[name], declared=kind.framework) is kind


def test_onnx_without_its_suffix_is_still_onnx(sources: Sources, tmp_path: Path) -> None:
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(sources["mlp.onnx"].read_bytes())
    assert infer_kind(renamed) is SourceKind.ONNX


def test_unknown_file_with_a_declared_format_and_matching_suffix(tmp_path: Path) -> None:
    broken = tmp_path / "m.pt"
    broken.write_bytes(b"not a zip")
    # The user says pytorch and the name agrees: the loader gets to report the damage.
    assert infer_kind(broken, declared=Format.PYTORCH) is SourceKind.TORCHSCRIPT
    with pytest.raises(UnsupportedFormat) as info:
        infer_kind(broken)
    assert info.value.message.startswith("m.pt is not a model file ondeck reads; ")


def test_declared_format_disagrees(sources: Sources) -> None:
    with pytest.raises(UnsupportedFormat) as info:
        infer_kind(sources["mlp.pt"], declared=Format.ONNX)
    assert info.value.message == (
        "mlp.pt is a pytorch model (torchscript), but --format onnx was given; fix "
        "spec.model.format or leave it out"
    )
