"""Broken manifests under broken/, each naming the lines `ondeck validate` must print
(`# expect: ...`), exactly and in order, with exit status 1; the types refuse them too."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from ondeck_operator.api.spec import ModelDeployment, SpecError
from ondeck_operator.cli import render_cmd as cli_render

BROKEN = sorted(Path(__file__).with_name("broken").glob("*.yaml"))


def expected_lines(path: Path) -> list[str]:
    return [
        line.removeprefix("# expect: ")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("# expect: ")
    ]


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_validate_prints_the_expected_lines(path: Path) -> None:
    app = typer.Typer()
    cli_render.register(app)
    result = CliRunner().invoke(app, ["validate", "-f", str(path)])
    assert result.exit_code == 1
    want = [f"SpecError: {path}: {line}" for line in expected_lines(path)]
    assert want, f"{path.name} names no `# expect:` line"
    assert result.stderr.strip().splitlines() == want


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_types_refuse_at_the_same_fields(path: Path) -> None:
    with pytest.raises(SpecError) as info:
        ModelDeployment.from_manifest(yaml.safe_load(path.read_text(encoding="utf-8")))
    fields = {p.split(": ", 1)[0] for p in info.value.problems}
    assert fields == {line.split(": ", 1)[0] for line in expected_lines(path)}
