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
    # The list is the whole CLI surface; each module keeps its heavy imports inside its
    # commands, so importing them here stays cheap.
    from ondeck_operator.cli import operator_cmd as cli_operator
    from ondeck_operator.cli import render_cmd as cli_render
    from ondeck_operator.cli import run_cmd as cli_run

    for module in (cli_render, cli_run, cli_operator):
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
