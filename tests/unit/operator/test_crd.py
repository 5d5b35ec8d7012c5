"""The generated CRD: valid apiextensions object, no drift on disk, examples validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ondeck_operator.codegen.crd import CRD_PATHS, crd, crd_yaml
from ondeck_operator.codegen.reference import REFERENCE_PATH, reference_markdown

from .k8s_checks import schema_errors

ROOT = Path(__file__).resolve().parents[3]


def test_crd_is_a_valid_apiextensions_object() -> None:
    assert schema_errors(crd()) == []


@pytest.mark.parametrize("relative", CRD_PATHS)
def test_crd_on_disk_matches_the_types(relative: str) -> None:
    assert (ROOT / relative).read_text(encoding="utf-8") == crd_yaml(), (
        f"{relative} drifted from the API types: run `ondeck crd`"
    )


def test_reference_doc_matches_the_types() -> None:
    assert (ROOT / REFERENCE_PATH).read_text(encoding="utf-8") == reference_markdown(), (
        "docs/reference/modeldeployment.md drifted: run `ondeck docs-reference`"
    )


def test_crd_file_parses_to_the_generated_object() -> None:
    assert yaml.safe_load(crd_yaml()) == crd()


def test_reference_example_is_a_valid_manifest() -> None:
    from ondeck_operator.api.spec import ModelDeployment
    from ondeck_operator.codegen.reference import EXAMPLE

    md = ModelDeployment.from_manifest(yaml.safe_load(EXAMPLE))
    assert md.spec.autoscaling is not None
    assert "```yaml\n" + EXAMPLE.strip() + "\n```" in reference_markdown()
