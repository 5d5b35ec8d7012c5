"""`ondeck predict`: send one request to a served model, local (`ondeck run`) or in a
cluster (`--url`), with the typed client in `ondeck_operator.local.client`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ondeck_operator import local

# numpy and the client (httpx) are imported by the command only: every `ondeck` command,
# the operator's among them, imports this module to register it, and they would add
# ~9 MiB to the operator's resident memory.


class UsageProblem(Exception):
    """A bad --data / --data-file value."""


def read_data(data: str | None, data_file: Path | None) -> Any:
    """The input(s) from `--data` (JSON, or `@file` as with curl) or `--data-file`:
    `.json` (an array, or an object of input name → array), `.npy` (one array) or `.npz`
    (one array per input name)."""
    if (data is None) == (data_file is None):
        raise UsageProblem("give the input with --data '[[...]]' or --data-file x.npy|.npz|.json")
    if data is not None and not data.startswith("@"):
        try:
            return json.loads(data)
        except ValueError as exc:
            raise UsageProblem(f"--data is not JSON ({exc})") from None
    import numpy as np

    path = data_file if data_file is not None else Path(str(data)[1:])
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                return {name: arrays[name] for name in arrays.files}
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageProblem(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise UsageProblem(f"{path}: cannot read it as {suffix or 'JSON'} ({exc})") from None


def output_lines(outputs: list[Any]) -> list[str]:
    """One line per output tensor: `name DATATYPE [shape]: data`."""
    return [
        f"{t.name} {t.datatype} {t.shape}: {json.dumps(_nest(t.data, t.shape))}" for t in outputs
    ]


def _nest(flat: list[Any], shape: list[int]) -> Any:
    """Row-major `flat` data in `shape`, the numbers as the server wrote them."""
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def predict(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="ModelDeployment manifest; the model name is its metadata.name.",
            dir_okay=False,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="The input as JSON: an array for a single-input model, or an object of "
            "input name → array; @path reads a file (as with curl)."
        ),
    ] = None,
    data_file: Annotated[
        Path | None,
        typer.Option(help="The input from a .npy, .npz (one array per input) or .json file."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model name; default: the manifest's metadata.name.")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Endpoint of the server (http://host:port, or an Ingress URL for a "
            "cluster); default: the local one of `ondeck run`, http://HOST:PORT."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Host of the local server.")] = local.DEFAULT_HOST,
    port: Annotated[
        int, typer.Option(help="Port of the local server.", min=1, max=65535)
    ] = local.DEFAULT_PORT,
    auth_token: Annotated[
        str | None,
        typer.Option(
            help="Bearer token, when the server asks for one.",
            envvar="ONDECK_AUTH_TOKEN",
            show_envvar=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the server's V2 JSON answer as it is.")
    ] = False,
) -> None:
    """Send one inference request (V2 protocol) to a served model and print its outputs."""
    from ondeck_operator.local.client import Client, ClientError

    try:
        name = model
        if name is None:
            if file is None:
                raise UsageProblem("give -f md.yaml (the model is its metadata.name) or --model")
            name = local.load_manifest(file).md.metadata.name
        inputs = read_data(data, data_file)
    except UsageProblem as exc:
        typer.echo(f"UsageError: {exc}", err=True)
        raise typer.Exit(2) from None
    except local.LocalError as exc:
        typer.echo(exc.one_line(), err=True)
        raise typer.Exit(exc.exit_code) from None
    base = url or f"http://{local.url_host(host)}:{port}"
    try:
        with Client(base, token=auth_token) as client:
            if as_json:
                answer = client.infer_raw(name, client.request_body(name, inputs))
                typer.echo(json.dumps(answer))
                return
            tensors = client.infer_tensors(name, inputs)
    except ClientError as exc:
        typer.echo(f"PredictFailed: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(1) from None
    for line in output_lines(tensors):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
