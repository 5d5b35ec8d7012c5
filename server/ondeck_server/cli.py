"""The `ondeck-server` command line: `convert` (the conversion Job) and `serve` (the
model server). Each command lives in its own module; this one only assembles them, and
imports nothing heavy (onnxruntime, torch) before a command runs."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="ondeck-server",
    help="ondeck's data plane: convert a model into an artifact, or serve one.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Commands register themselves here; the list is the whole CLI surface.
    import importlib

    for name in ("serve_cli", "convert_cli"):
        try:
            module = importlib.import_module(f"ondeck_server.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ondeck_server.{name}":
                raise
            continue
        module.register(app)


def main() -> None:
    _register()
    app()
