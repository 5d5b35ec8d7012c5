"""The operator/server contract (docs/architecture.md): the argument lists `args.py`
builds — the very lists the Job, the Deployment and local mode run — are accepted by the
real `ondeck-server` command line, which parses them into the values the spec holds.

The server's parser is used as is (typer's click command, `make_context`: parsing,
type conversion and callbacks, without running the command)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from ondeck_operator.api.spec import ModelDeployment, ModelDeploymentSpec
from ondeck_operator.render.args import convert_args, serve_args

from .specs import FULL_SPEC, make_md
from .strategies import hex_key, manifests

PYTORCH_SPEC = {
    "model": {
        "uri": "file:///models/cnn.pt",
        "format": "pytorch",
        "allowUnsafePickle": True,
        "inputs": [
            {"name": "image", "dtype": "float32", "shape": [-1, 3, 32, 32]},
            {"name": "mask", "dtype": "bool", "shape": [-1]},
        ],
    },
    "optimize": {"quantize": "fp16", "level": "extended"},
}
OBJECT_STORE_SPEC = {
    "model": {"uri": "s3://models/iris.onnx", "s3EndpointURL": "http://minio:9000"},
    "artifacts": {"uri": "s3://artifacts/team-a", "s3EndpointURL": "http://minio:9001"},
}
SPECS = {
    "minimal": None,
    "full": FULL_SPEC,
    "pytorch": PYTORCH_SPEC,
    "object-store": OBJECT_STORE_SPEC,
}


@functools.cache
def _commands() -> dict[str, Any]:
    cli = pytest.importorskip("ondeck_server.cli", reason="needs the ondeck server package")
    import typer.main

    cli._register()  # what `ondeck-server` does before parsing
    group = typer.main.get_command(cli.app)
    return dict(group.commands)  # type: ignore[attr-defined]


def _command(name: str) -> Any:
    command = _commands().get(name)
    if command is None:
        pytest.skip(f"needs `ondeck-server {name}` (not registered yet)")
    return command


def _parse(name: str, argv: list[str]) -> dict[str, Any]:
    assert argv[0] == name
    command = _command(name)
    ctx = command.make_context(name, list(argv[1:]))
    by_flag = {}
    for param in command.params:
        for opt in getattr(param, "opts", []):
            by_flag[opt] = param.name
    return {"params": ctx.params, "by_flag": by_flag}


def _flags(argv: list[str]) -> dict[str, str | None]:
    """`--flag value` pairs (None for a switch) of an argument list."""
    out: dict[str, str | None] = {}
    i = 1
    while i < len(argv):
        flag = argv[i]
        assert flag.startswith("--"), argv
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[flag], i = argv[i + 1], i + 2
        else:
            out[flag], i = None, i + 1
    return out


def _same(parsed: object, rendered: str | None) -> bool:
    if rendered is None:
        return parsed is True
    value = getattr(parsed, "value", parsed)
    if isinstance(value, float):
        return value == float(rendered)
    return str(value) == rendered


def _inputs(items: list[Any]) -> list[tuple[str, str, list[int]]]:
    return [(i.name, str(getattr(i.dtype, "value", i.dtype)), list(i.shape)) for i in items]


def _check(name: str, argv: list[str], spec: ModelDeploymentSpec) -> None:
    parsed = _parse(name, argv)
    for flag, rendered in _flags(argv).items():
        assert flag in parsed["by_flag"], f"`ondeck-server {name}` has no {flag}"
        value = parsed["params"][parsed["by_flag"][flag]]
        if flag == "--inputs" and isinstance(value, list):
            # The server parses the `name:dtype:[dims]` list into objects: compare those.
            assert _inputs(value) == _inputs(spec.model.inputs or [])
            continue
        assert _same(value, rendered), f"{flag}: rendered {rendered!r}, parsed {value!r}"


def _spec(which: str) -> ModelDeploymentSpec:
    return make_md(SPECS[which]).spec


@pytest.mark.parametrize("which", SPECS)
def test_convert_args_parse_to_the_spec_values(which: str) -> None:
    spec = _spec(which)
    argv = convert_args(
        spec,
        store=spec.artifacts.uri or "/artifacts",
        ref="0123456789abcdef",
        termination_log="/dev/termination-log",
        pvc_root="/sources",
    )
    _check("convert", argv, spec)


@pytest.mark.parametrize("which", SPECS)
def test_serve_args_parse_to_the_spec_values(which: str, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    token = tmp_path / "token"
    token.write_text("t")
    spec = _spec(which)
    argv = serve_args(spec, model_path=str(model), name="iris", auth_token_file=str(token))
    _check("serve", argv, spec)


def _help(name: str) -> str:
    env = {**os.environ, "COLUMNS": "250", "TERM": "dumb", "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ondeck_server", name, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"needs `ondeck-server {name} --help` to work: {proc.stderr[-300:]}")
    return proc.stdout


def test_every_rendered_convert_flag_is_in_the_help() -> None:
    text = _help("convert")
    spec = make_md(FULL_SPEC).spec
    argv = convert_args(spec, store="/a", ref="k", termination_log="/t", pvc_root="/p")
    argv += convert_args(make_md(PYTORCH_SPEC).spec, store="/a", ref="k")
    for flag in {a for a in argv if a.startswith("--")}:
        assert flag in text, f"{flag} is not in `ondeck-server convert --help`"


def test_every_rendered_serve_flag_is_in_the_help() -> None:
    text = _help("serve")
    argv = serve_args(make_md(FULL_SPEC).spec, model_path="/m", name="n", auth_token_file="/t")
    for flag in {a for a in argv if a.startswith("--")}:
        assert flag in text, f"{flag} is not in `ondeck-server serve --help`"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=manifests(), key=hex_key)
def test_any_valid_spec_gives_arguments_the_server_accepts(doc: dict[str, Any], key: str) -> None:
    spec = ModelDeployment.from_manifest(doc).spec
    argv = convert_args(
        spec, store="/artifacts", ref=key, termination_log="/dev/termination-log",
        pvc_root="/sources",
    )  # fmt: skip
    _check("convert", argv, spec)
    # --model and --auth-token-file name files; serve's parser may check they exist.
    argv = serve_args(spec, model_path=__file__, name="m", auth_token_file=__file__)
    _check("serve", argv, spec)


def test_object_store_serve_args_parse() -> None:
    spec = _spec("object-store")
    argv = serve_args(
        spec, model_path="s3://artifacts/team-a/refs/k", name="iris", model_cache="/cache"
    )
    assert argv[-4:] == ["--model-cache", "/cache", "--s3-endpoint-url", "http://minio:9001"]
    _check("serve", argv, spec)
