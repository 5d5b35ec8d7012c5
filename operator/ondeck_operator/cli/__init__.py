"""The `ondeck` command line: `run` (local mode), `predict`, `ls`/`inspect`/`gc` (the
local store), `render`, `validate`, `operator`, and the developer commands `crd` and
`docs-reference`. Each command lives in its own module; this one only assembles them.
Every failure exits non-zero with one readable line."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from ondeck_operator import __version__

app = typer.Typer(
    name="ondeck",
    help="ondeck: one ModelDeployment manifest, a production inference endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: The help screen's groups, in order; a command not listed lands in the first.
PANELS: dict[str, tuple[str, ...]] = {
    "On this machine": ("run", "predict", "ls", "inspect", "gc"),
    "Manifests and clusters": ("validate", "render", "operator"),
    "For ondeck's developers": ("crd", "docs-reference"),
}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ondeck {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    _version_flag: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """ondeck: one ModelDeployment manifest, a production inference endpoint."""


def help_text(doc: str | None) -> str | None:
    """A docstring as help: each paragraph on one line (the terminal wraps it), instead
    of the source's line breaks."""
    if not doc:
        return None
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


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
    from ondeck_operator.cli import operator_cmd as cli_operator
    from ondeck_operator.cli import predict_cmd as cli_predict
    from ondeck_operator.cli import render_cmd as cli_render
    from ondeck_operator.cli import run_cmd as cli_run
    from ondeck_operator.cli import store_cmd as cli_store

    if app.registered_commands:
        return
    for module in (cli_render, cli_run, cli_predict, cli_store, cli_operator):
        module.register(app)
    panel_of = {name: panel for panel, names in PANELS.items() for name in names}
    first = next(iter(PANELS))
    order = {name: i for i, name in enumerate(n for names in PANELS.values() for n in names)}
    for info in app.registered_commands:
        name = info.name or ""
        info.rich_help_panel = panel_of.get(name, first)
        if info.help is None and info.callback is not None:
            info.help = help_text(info.callback.__doc__)
    app.registered_commands.sort(key=lambda info: order.get(info.name or "", len(order)))


def main() -> None:
    import sys

    # typer vendors its own copy of click; its usage errors are raised from there.
    from typer._click import exceptions as click_errors

    _register()
    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError:
        sys.exit(2)  # typer has printed the help already
    except click_errors.ClickException as exc:
        # Usage errors: one line `ErrorType: message`, exit 2 (no usage banner, no box).
        typer.echo(f"{type(exc).__name__}: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
