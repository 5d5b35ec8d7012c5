"""The `ondeck` command line: `run` (local mode), `render`, `validate`, `crd`, `operator`.
Each command lives in its own module; this one only assembles them. Every failure exits
non-zero with one readable line."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="ondeck",
    help="ondeck: one ModelDeployment manifest, a production inference endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Commands register themselves here; the list is the whole CLI surface.
    import importlib

    for name in ("cli_render", "cli_run", "cli_operator"):
        try:
            module = importlib.import_module(f"ondeck_operator.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ondeck_operator.{name}":
                raise
            continue
        module.register(app)


def main() -> None:
    _register()
    app()
