"""The `ondeck-server` command line: `convert` (the conversion Job) and `serve` (the
model server). Each command lives in its own module; this one only assembles them, and
imports nothing heavy (onnxruntime, torch) before a command runs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ondeck_server import __version__

app = typer.Typer(
    name="ondeck-server",
    help="ondeck's data plane: convert a model into an artifact, or serve one.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ondeck-server {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    _version_flag: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """ondeck's data plane: convert a model into an artifact, or serve one."""


def _plain_flags_show_no_type() -> None:
    """typer 0.29 writes `<bool>` after every on/off flag (`--help <bool>`), as if it took
    a value; a flag takes none, so its help shows no type."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_ondeck", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_bool_flag else shown(self, ctx)

    display_type_rich._ondeck = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def _register() -> None:
    # The list is the whole CLI surface; each module keeps its heavy imports inside its
    # commands, so importing them here stays cheap.
    _plain_flags_show_no_type()
    from ondeck_server.convert import cli as convert_cli
    from ondeck_server.serve import cli as serve_cli

    for module in (serve_cli, convert_cli):
        module.register(app)


def main() -> None:
    import sys

    # typer vendors its own copy of click; its usage errors are raised from there.
    from typer._click import exceptions as click_errors

    _register()
    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(2)
    except click_errors.ClickException as exc:
        # Usage errors: one line `ErrorType: message`, exit 2 (no usage banner, no box).
        typer.echo(f"{type(exc).__name__}: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
