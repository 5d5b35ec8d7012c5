"""`ondeck render`, `ondeck validate`, `ondeck crd` and `ondeck docs-reference`: the
commands that turn ModelDeployment files into what the cluster would get, check them, and
regenerate the files derived from the API types.

A thin shell over `render`, `crd` and `reference`: read files, print or write text, exit
non-zero with one readable line per problem. It never talks to a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ondeck_operator.api import hints
from ondeck_operator.api.constants import API_VERSION, GROUP, KIND
from ondeck_operator.api.fields import pattern_hint
from ondeck_operator.api.operator_config import ConfigError, OperatorConfig
from ondeck_operator.api.spec import ModelDeployment, SpecError, prune_nulls
from ondeck_operator.codegen.crd import CRD_PATHS, crd_yaml, validation_schema
from ondeck_operator.codegen.reference import REFERENCE_PATH, reference_markdown
from ondeck_operator.local.errors import ManifestError
from ondeck_operator.local.manifest import clip, read_documents, shown
from ondeck_operator.render import yaml_out
from ondeck_operator.render.manifests import RenderState, render


class InputError(Exception):
    """A file holds nothing this command works on."""


class DriftError(Exception):
    """A generated file differs from what the types generate."""


FileOption = Annotated[
    Path, typer.Option("--file", "-f", help="ModelDeployment YAML file ('-' for stdin).")
]
RootOption = Annotated[
    Path, typer.Option("--root", help="Repository root the generated files live under.")
]
CheckOption = Annotated[
    bool, typer.Option("--check", help="Only compare; exit 1 when a file differs.")
]


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"{type(exc).__name__}: {exc}", err=True)
    return typer.Exit(1)


def _fail_input(exc: ManifestError) -> typer.Exit:
    """A manifest that cannot be read: one line, exit 2 (as `ondeck run`)."""
    typer.echo(exc.one_line(), err=True)
    return typer.Exit(exc.exit_code)


def _ours(doc: Any) -> bool:
    return isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith(f"{GROUP}/")


def _path(parts: Iterable[object]) -> str:
    where = ""
    for part in parts:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where


def _schema_error_lines(error: Any) -> list[str]:
    """One readable line per problem of a jsonschema error, at the field it is about."""
    where = _path(error.absolute_path)
    instance, kind = error.instance, error.validator
    if kind == "additionalProperties" and isinstance(instance, dict):
        known = set(error.schema.get("properties", {}))
        parent = list(error.absolute_path)
        return [
            f"{_path([*parent, key])}: {hints.unknown_field_message(ModelDeployment, parent, key)}"
            for key in sorted(set(instance) - known)
        ]
    if kind == "required" and isinstance(instance, dict):
        return [
            f"{_path([*error.absolute_path, key])}: required field is missing"
            for key in error.validator_value
            if key not in instance
        ]
    message = error.message
    if kind == "type" and error.validator_value == "string":
        key = str(error.absolute_path[-1]) if error.absolute_path else "value"
        hint = hints.yaml_scalar_hint(key, instance)
        if hint is not None:  # the line `ondeck run` prints for the same mistake
            return [f"{where}: {hint}"]
    if kind == "pattern":
        message = f"{shown(instance)} is not {pattern_hint(error.validator_value)}"
    elif kind == "maxLength":
        message = f"{shown(instance)} is longer than {error.validator_value} characters"
    elif len(repr(instance)) > 80:  # jsonschema's messages echo the value whole
        message = message.replace(repr(instance), shown(instance))
    return [f"{where or 'manifest'}: {clip(message)}"]


def schema_problems(doc: Any) -> list[str]:
    """Problems the CRD's OpenAPI schema finds (what `kubectl apply` refuses)."""
    import jsonschema  # only this command needs it

    validator = jsonschema.Draft202012Validator(validation_schema())
    problems: list[str] = []
    seen: set[str] = set()
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path))):
        for line in _schema_error_lines(error):
            where = line.split(": ", 1)[0]
            if where not in seen:  # one line per field: the first problem found there
                seen.add(where)
                problems.append(line)
    return problems


def check_manifest(doc: Any) -> list[str]:
    """Every problem of one ModelDeployment document: schema first, then the rules."""
    problems = schema_problems(prune_nulls(doc))
    try:
        ModelDeployment.from_manifest(doc)
    except SpecError as exc:
        reported = {p.split(": ", 1)[0] for p in problems}
        problems += [clip(p) for p in exc.problems if p.split(": ", 1)[0] not in reported]
    return problems


def _model_deployments(path: Path) -> Iterator[ModelDeployment]:
    found = False
    for _, doc in read_documents(path):
        if not _ours(doc):
            continue
        found = True
        try:
            md = ModelDeployment.from_manifest(doc)
        except SpecError as exc:
            raise SpecError([f"{path}: {clip(problem)}" for problem in exc.problems]) from None
        yield md
    if not found:
        raise InputError(f"{path} holds no {API_VERSION} {KIND}")


def render_command(
    file: FileOption,
    config: Annotated[
        Path | None, typer.Option("--config", help="Operator config YAML (camelCase keys).")
    ] = None,
) -> None:
    """Print every object the operator would create for a ModelDeployment, as YAML."""
    try:
        operator_config = OperatorConfig.from_file(config) if config else OperatorConfig()
        objects: list[dict[str, Any]] = []
        for md in _model_deployments(file):
            from ondeck_operator.render.args import artifact_key

            state = RenderState(serving_key=artifact_key(md.spec), wanted_built=False)
            objects += render(md, operator_config, state)
    except ManifestError as exc:
        raise _fail_input(exc) from None
    except (InputError, SpecError, ConfigError) as exc:
        raise _fail(exc) from None
    typer.echo(yaml_out.dump_all(objects), nl=False)


FilesOption = Annotated[
    list[Path],
    typer.Option(
        "--file",
        "-f",
        # typer would show the Python type, `<list[Path]>`.
        metavar="<file|folder>",
        help="ModelDeployment YAML file, or a folder (its *.yaml and *.yml files, in all "
        "subfolders); repeat -f for more; '-' for stdin.",
    ),
]


def validate_command(files: FilesOption) -> None:
    """Check ModelDeployment manifests against the CRD schema and the API rules."""
    code = 0
    for path, from_folder in _manifest_paths(files):
        code = max(code, _validate_file(path, from_folder=from_folder))
    if code:
        raise typer.Exit(code)


def _manifest_paths(files: list[Path]) -> list[tuple[Path, bool]]:
    """Each -f as given, a folder as its YAML files (sorted); (path, came from a folder)."""
    paths: list[tuple[Path, bool]] = []
    for given in files:
        if str(given) != "-" and given.is_dir():
            found = sorted(
                p for p in given.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
            )
            if not found:
                raise _fail(InputError(f"{given}: a folder without .yaml or .yml files"))
            paths += [(p, True) for p in found]
        else:
            paths.append((given, False))
    return paths


def _validate_file(file: Path, *, from_folder: bool) -> int:
    """Print each document's result; the exit code it asks for: 0 valid, 1 invalid, a
    ManifestError's own (2: unreadable, as `ondeck run`). A folder's YAML files that hold
    no ModelDeployment (a Secret, a values file) are passed over."""
    try:
        docs = [(i, d) for i, d in read_documents(file) if _ours(d)]
    except ManifestError as exc:
        typer.echo(exc.one_line(), err=True)
        return exc.exit_code
    if not docs:
        if from_folder:
            return 0
        typer.echo(f"InputError: {file} holds no {API_VERSION} {KIND}", err=True)
        return 1
    failed = False
    for index, doc in docs:
        prefix = f"{file}" + (f" (document {index + 1})" if len(docs) > 1 else "")
        problems = check_manifest(doc)
        for problem in problems:
            typer.echo(f"SpecError: {prefix}: {problem}", err=True)
        failed = failed or bool(problems)
        if not problems:
            name = doc.get("metadata", {}).get("name")
            typer.echo(f"{prefix}: {KIND} {name} is valid")
    return 1 if failed else 0


def _write_or_check(root: Path, files: dict[str, str], *, check: bool, command: str) -> None:
    stale = []
    for relative, text in files.items():
        path = root / relative
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        if check:
            stale.append(relative)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {relative}")
    if stale:
        raise _fail(DriftError(f"{', '.join(stale)} differ from the API types; run `{command}`"))


def crd_command(root: RootOption = Path("."), check: CheckOption = False) -> None:
    """(Re)write the CRD under crds/ and charts/ondeck/crds/ from the API types."""
    text = crd_yaml()
    _write_or_check(root, dict.fromkeys(CRD_PATHS, text), check=check, command="ondeck crd")


def docs_reference_command(root: RootOption = Path("."), check: CheckOption = False) -> None:
    """(Re)write docs/reference/modeldeployment.md from the API types."""
    _write_or_check(
        root, {REFERENCE_PATH: reference_markdown()}, check=check, command="ondeck docs-reference"
    )


def register(app: typer.Typer) -> None:
    app.command("render")(render_command)
    app.command("validate")(validate_command)
    app.command("crd")(crd_command)
    app.command("docs-reference")(docs_reference_command)
