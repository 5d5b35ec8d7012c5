"""`ondeck render`, `ondeck validate`, `ondeck crd`, `ondeck docs-reference`: output,
exit codes and the one readable line per problem, through the real `ondeck` entry point
for the exit codes and through typer's runner for the rest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from click.testing import Result
from typer.testing import CliRunner

from ondeck_operator.cli import render_cmd as cli_render
from ondeck_operator.codegen.crd import CRD_PATHS, crd_yaml
from ondeck_operator.codegen.reference import REFERENCE_PATH, reference_markdown

from .bad_manifests import BAD, Bad
from .k8s_checks import all_problems
from .specs import FULL_SPEC, make_md, manifest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    cli_render.register(app)
    return app


def run(app: typer.Typer, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=stdin)


def write(tmp_path: Path, name: str, docs: list[object]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    return path


def test_render_prints_every_object_as_yaml(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, "md.yaml", [manifest(FULL_SPEC)])
    result = run(app, "render", "-f", str(path))
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.stdout))
    assert [o["kind"] for o in objects] == [
        "PersistentVolumeClaim", "Job", "Deployment", "Service", "Ingress",
        "HorizontalPodAutoscaler", "PodDisruptionBudget",
    ]  # fmt: skip
    assert all_problems(objects, make_md(FULL_SPEC)) == []


def test_render_skips_other_documents_and_reads_stdin(app: typer.Typer) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    text = yaml.safe_dump_all([secret, manifest()])
    result = run(app, "render", "-f", "-", stdin=text)
    assert result.exit_code == 0, result.output
    assert "kind: Secret" not in result.stdout
    assert "kind: Deployment" in result.stdout


def test_render_with_config_file(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, "md.yaml", [manifest()])
    config = tmp_path / "config.yaml"
    config.write_text("serverImage: example.com/ondeck:9\nartifactStorageClass: fast\n")
    result = run(app, "render", "-f", str(path), "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "image: example.com/ondeck:9" in result.stdout
    assert "storageClassName: fast" in result.stdout


@pytest.mark.parametrize(
    ("content", "code", "expected"),
    [
        (None, 2, "ManifestError: {path}: no such file"),
        ("a: [1, 2", 2, "ManifestError: {path}: not valid YAML at line 1: "
                        "expected ',' or ']', but got '<stream end>'"),
        ("apiVersion: v1\nkind: Secret\n", 1,
         "InputError: {path} holds no ondeck.io/v1alpha1 ModelDeployment"),
        ("apiVersion: ondeck.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: x}\n", 1,
         "SpecError: {path}: spec: required field is missing"),
    ],
    ids=["missing-file", "bad-yaml", "no-model-deployment", "invalid-spec"],
)  # fmt: skip
def test_render_bad_input_one_line(
    app: typer.Typer, tmp_path: Path, content: str | None, code: int, expected: str
) -> None:
    """A file that cannot be read as YAML exits 2 (as `ondeck run`); one that reads but
    is not a valid ModelDeployment exits 1."""
    path = tmp_path / "md.yaml"
    if content is not None:
        path.write_text(content)
    result = run(app, "render", "-f", str(path))
    assert result.exit_code == code
    assert result.stderr.strip().splitlines() == [expected.format(path=path)]
    assert "Traceback" not in result.output


def test_render_bad_config(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, "md.yaml", [manifest()])
    config = tmp_path / "config.yaml"
    config.write_text("serverImag: x\n")
    result = run(app, "render", "-f", str(path), "--config", str(config))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"ConfigError: config {config}: serverImag: unknown field "
        "(check the spelling; see docs/reference/modeldeployment.md)"
    )


def test_validate_valid_manifests_and_examples(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, "md.yaml", [manifest(), manifest(FULL_SPEC, name="full")])
    result = run(app, "validate", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{path} (document 1): ModelDeployment iris is valid",
        f"{path} (document 2): ModelDeployment full is valid",
    ]


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_validate_names_field_and_rule(app: typer.Typer, tmp_path: Path, bad: Bad) -> None:
    path = write(tmp_path, "md.yaml", [bad.manifest()])
    result = run(app, "validate", "-f", str(path))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines, result.output
    assert all(line.startswith(f"SpecError: {path}: ") for line in lines), lines
    ours = [line for line in lines if line.startswith(f"SpecError: {path}: {bad.field}: ")]
    assert ours, lines
    if bad.rule:
        assert any(bad.words in line for line in ours), ours


def test_validate_suggests_the_field_a_typo_resembles(app: typer.Typer, tmp_path: Path) -> None:
    """The same hint `ondeck run` gives (hints.unknown_field_message), at every level."""
    path = write(
        tmp_path,
        "md.yaml",
        [
            manifest(
                {
                    "model": {"uri": "s3://b/iris.onnx", "sha265": "0" * 64},
                    "optimise": {"level": "basic"},
                    "server": {"batching": {"maxBatch": 8}},
                }
            )
        ],
    )
    result = run(app, "validate", "-f", str(path))
    assert result.exit_code == 1
    see = "(see docs/reference/modeldeployment.md)"
    assert result.stderr.splitlines() == [
        f"SpecError: {path}: spec.optimise: unknown field; did you mean `optimize`? {see}",
        f"SpecError: {path}: spec.model.sha265: unknown field; did you mean `sha256`? {see}",
        f"SpecError: {path}: spec.server.batching.maxBatch: unknown field; did you mean"
        f" `maxBatchSize`? {see}",
    ]


def test_validate_exit_code_through_the_real_entry_point(tmp_path: Path) -> None:
    bad = next(b for b in BAD if b.id == "min-above-max")
    path = write(tmp_path, "md.yaml", [bad.manifest()])
    proc = subprocess.run(
        [sys.executable, "-m", "ondeck_operator", "validate", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"SpecError: {path}: spec.autoscaling.minReplicas: "
        "minReplicas must be less than or equal to maxReplicas"
    )
    assert proc.stdout == ""


def test_crd_writes_both_copies_and_check_detects_drift(app: typer.Typer, tmp_path: Path) -> None:
    result = run(app, "crd", "--root", str(tmp_path))
    assert result.exit_code == 0, result.output
    for relative in CRD_PATHS:
        assert (tmp_path / relative).read_text() == crd_yaml()
    assert run(app, "crd", "--root", str(tmp_path), "--check").exit_code == 0
    (tmp_path / CRD_PATHS[1]).write_text("# edited by hand\n")
    result = run(app, "crd", "--root", str(tmp_path), "--check")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"DriftError: {CRD_PATHS[1]} differ from the API types; run `ondeck crd`"
    )


def test_docs_reference_writes_and_checks(app: typer.Typer, tmp_path: Path) -> None:
    assert run(app, "docs-reference", "--root", str(tmp_path)).exit_code == 0
    assert (tmp_path / REFERENCE_PATH).read_text() == reference_markdown()
    assert run(app, "docs-reference", "--root", str(tmp_path), "--check").exit_code == 0


def test_repository_copies_are_current(app: typer.Typer) -> None:
    assert run(app, "crd", "--root", str(ROOT), "--check").exit_code == 0
    assert run(app, "docs-reference", "--root", str(ROOT), "--check").exit_code == 0


def test_validate_takes_several_files_and_folders(app: typer.Typer, tmp_path: Path) -> None:
    """`-f a -f b` checks both (it checked only b); `-f folder/` checks every ModelDeployment
    in its YAML files and passes over other YAML (a Secret)."""
    good = write(tmp_path, "a.yaml", [manifest()])
    bad_one = next(b for b in BAD if b.id == "min-above-max")
    bad = write(tmp_path, "b.yaml", [bad_one.manifest()])
    result = run(app, "validate", "-f", str(good), "-f", str(bad))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"{good}: ModelDeployment iris is valid"]
    assert result.stderr.startswith(f"SpecError: {bad}: ")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    write(folder, "md.yaml", [manifest()])
    write(folder / "sub", "md.yml", [manifest(name="other")])
    (folder / "secret.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    (folder / "README.md").write_text("not yaml: [")
    result = run(app, "validate", "-f", str(folder))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{folder / 'md.yaml'}: ModelDeployment iris is valid",
        f"{folder / 'sub' / 'md.yml'}: ModelDeployment other is valid",
    ]


def test_validate_hints_at_quotes_for_a_sha256_yaml_read_as_a_number(
    app: typer.Typer, tmp_path: Path
) -> None:
    path = tmp_path / "md.yaml"
    path.write_text(
        "apiVersion: ondeck.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: a}\n"
        f"spec:\n  model: {{uri: m.onnx, sha256: {'0' * 64}}}\n"
    )
    result = run(app, "validate", "-f", str(path))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"SpecError: {path}: spec.model.sha256: must be a string, but YAML read the value "
        'as a number; put it in quotes: sha256: "…"'
    )


def test_a_model_file_given_as_the_manifest_is_named_for_what_it_is(
    app: typer.Typer, tmp_path: Path
) -> None:
    model = tmp_path / "model.skops"
    model.write_bytes(b"PK\x03\x04" + bytes(64))
    result = run(app, "validate", "-f", str(model))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"ManifestError: {model}: is a binary file (a model?), not a ModelDeployment "
        "manifest; pass the manifest with -f and name the model in its spec.model.uri"
    )
