"""`ondeck run`: local mode. Parses the command line and prints errors; everything else
is in `ondeck_operator.local`. Imports nothing from the server package."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ondeck_operator import local


def run(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="ModelDeployment manifest. Default: the iris example embedded in ondeck.",
            dir_okay=False,
        ),
    ] = None,
    store: Annotated[
        Path,
        typer.Option(help="Local artifact store.", envvar="ONDECK_STORE"),
    ] = local.DEFAULT_STORE,
    host: Annotated[str, typer.Option(help="Address the server listens on.")] = local.DEFAULT_HOST,
    port: Annotated[
        int, typer.Option(help="Port the server listens on.", min=1, max=65535)
    ] = local.DEFAULT_PORT,
    auth_token: Annotated[
        str | None,
        typer.Option(
            help="Serve with bearer-token auth, asking for this token. Without it, a "
            "manifest with spec.server.auth gets a token made for the run.",
            envvar="ONDECK_AUTH_TOKEN",
            show_envvar=False,
        ),
    ] = None,
    convert_only: Annotated[
        bool,
        typer.Option(
            "--convert-only", help="Convert into the store, print the artifact, do not serve."
        ),
    ] = False,
) -> None:
    """Run a ModelDeployment on this machine: convert the model like the cluster's Job
    does, serve it like the Deployment does, and print how to call it. Ctrl-C stops it."""
    runner = local.LocalRunner(
        store=store,
        host=host,
        port=port,
        err=sys.stderr,
        out=sys.stdout,
        auth_token=auth_token or None,
        convert_only=convert_only,
    )
    try:
        loaded = local.load_manifest(file if file is not None else local.default_manifest())
        code = runner.run(loaded)
    except local.ConvertFailed as exc:
        if not exc.shown:
            print(exc.one_line(), file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except local.LocalError as exc:
        print(exc.one_line(), file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
