"""Every ModelDeployment under examples/ is valid for the CRD schema and the types, and
renders to valid objects; snapshots of `render` (as `ondeck render` shows it) for the
examples and two specs, readable in review under snapshots/.

Regenerate the snapshots after an intended change with
`ONDECK_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/unit/operator -k snapshot`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.codegen.crd import validation_schema
from ondeck_operator.render import yaml_out
from ondeck_operator.render.args import artifact_key
from ondeck_operator.render.manifests import RenderState, render

from .k8s_checks import all_problems
from .specs import FULL_SPEC, manifest

ROOT = Path(__file__).resolve().parents[3]
SNAPSHOTS = Path(__file__).with_name("snapshots")
UPDATE = os.environ.get("ONDECK_UPDATE_SNAPSHOTS") == "1"


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("ondeck.io/"):
                found.append((str(path.relative_to(ROOT)), doc))
    return found


EXAMPLES = example_documents()


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 3, "examples/ should hold ModelDeployments"


@pytest.mark.parametrize(("where", "doc"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_example_is_valid_and_renders(where: str, doc: dict[str, Any]) -> None:
    errors = [
        e.message for e in jsonschema.Draft202012Validator(validation_schema()).iter_errors(doc)
    ]
    assert errors == [], f"{where} is refused by the CRD schema"
    md = ModelDeployment.from_manifest(doc)
    state = RenderState(serving_key=artifact_key(md.spec))
    assert all_problems(render(md, OperatorConfig(), state), md) == []


def _rendered_yaml(doc: dict[str, Any], origin: str) -> str:
    md = ModelDeployment.from_manifest(doc)
    objects = render(md, OperatorConfig(), RenderState(serving_key=artifact_key(md.spec)))
    header = (
        f"# Snapshot of `ondeck render` for {origin}.\n"
        "# Regenerate: ONDECK_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest "
        "tests/unit/operator -k snapshot\n"
    )
    return header + yaml_out.dump_all(objects)


SNAPSHOT_CASES = [
    ("minimal", "tests/unit/operator/specs.py (the smallest spec)", manifest()),
    ("full", "tests/unit/operator/specs.py FULL_SPEC (every field)", manifest(FULL_SPEC)),
    *[
        (Path(where).parent.name, where, doc)
        for where, doc in EXAMPLES
        if Path(where).name == "modeldeployment.yaml"
    ],
]


@pytest.mark.parametrize(
    ("name", "origin", "doc"), SNAPSHOT_CASES, ids=[c[0] for c in SNAPSHOT_CASES]
)
def test_render_snapshot(name: str, origin: str, doc: dict[str, Any]) -> None:
    path = SNAPSHOTS / f"{name}.yaml"
    text = _rendered_yaml(doc, origin)
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no snapshot {path.name}: run with ONDECK_UPDATE_SNAPSHOTS=1"
    assert path.read_text(encoding="utf-8") == text, (
        f"render output for {origin} changed; review it and regenerate {path.name} "
        "with ONDECK_UPDATE_SNAPSHOTS=1"
    )
