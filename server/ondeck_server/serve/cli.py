"""`ondeck-server serve`: the command line of the model server. Parses and validates
flags and `ONDECK_…` environment variables (settings.FLAGS) into `ServeSettings` and
hands them to lifecycle.run.

Exit codes: 0 after a clean shutdown (including a SIGTERM drain), 1 when the server
cannot start or the model cannot load (one line `ErrorType: message` on stderr), 2 for
usage errors. The process lifecycle lives in lifecycle.py, HTTP behaviour in app.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from ondeck_server.serve.settings import FLAGS, ServeSettings, model_name_for

_HELP = {name: field.description or "" for name, field in ServeSettings.model_fields.items()}
#: Every flag's default is the setting's: one place (settings.py) for defaults and bounds.
_DEFAULT: dict[str, Any] = {n: f.default for n, f in ServeSettings.model_fields.items()}


def _option(field: str, **kwargs: Any) -> Any:
    flag, env = FLAGS[field]
    return typer.Option(flag, envvar=env, help=_HELP[field], show_envvar=True, **kwargs)


def serve(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            envvar="ONDECK_MODEL",
            show_envvar=True,
            help=_HELP["model"] + ", or s3://BUCKET/PREFIX/refs/NAME (or .../DIGEST) of an "
            "object store, downloaded to --model-cache first",
        ),
    ],
    name: Annotated[str | None, _option("name")] = None,
    host: Annotated[str, _option("host")] = _DEFAULT["host"],
    port: Annotated[int, _option("port")] = _DEFAULT["port"],
    max_batch_size: Annotated[int, _option("max_batch_size")] = _DEFAULT["max_batch_size"],
    max_delay_ms: Annotated[float, _option("max_delay_ms")] = _DEFAULT["max_delay_ms"],
    threads: Annotated[int | None, _option("threads")] = None,
    auth_token_file: Annotated[Path | None, _option("auth_token_file")] = None,
    auth_token: Annotated[str | None, _option("auth_token", show_default=False)] = None,
    max_body_bytes: Annotated[int, _option("max_body_bytes")] = _DEFAULT["max_body_bytes"],
    max_queue: Annotated[int, _option("max_queue")] = _DEFAULT["max_queue"],
    drain_timeout: Annotated[float, _option("drain_timeout")] = _DEFAULT["drain_timeout"],
    max_tensor_elements: Annotated[int, _option("max_tensor_elements")] = _DEFAULT[
        "max_tensor_elements"
    ],
    header_timeout: Annotated[float, _option("header_timeout")] = _DEFAULT["header_timeout"],
    body_timeout: Annotated[float, _option("body_timeout")] = _DEFAULT["body_timeout"],
    max_connections: Annotated[int, _option("max_connections")] = _DEFAULT["max_connections"],
    max_context_length: Annotated[int | None, _option("max_context_length")] = None,
    default_temperature: Annotated[float | None, _option("default_temperature")] = None,
    default_top_p: Annotated[float | None, _option("default_top_p")] = None,
    default_top_k: Annotated[int | None, _option("default_top_k")] = None,
    default_max_tokens: Annotated[int | None, _option("default_max_tokens")] = None,
    shadow_url: Annotated[str | None, _option("shadow_url")] = None,
    shadow_percent: Annotated[int, _option("shadow_percent")] = _DEFAULT["shadow_percent"],
    model_cache: Annotated[
        Path | None,
        typer.Option(
            "--model-cache",
            envvar="ONDECK_MODEL_CACHE",
            show_envvar=True,
            help="where an s3:// --model is downloaded to; default: a folder in the temp dir",
        ),
    ] = None,
    s3_endpoint_url: Annotated[
        str | None,
        typer.Option(
            "--s3-endpoint-url",
            envvar="ONDECK_S3_ENDPOINT_URL",
            show_envvar=True,
            help="endpoint of an S3-compatible store for an s3:// --model",
        ),
    ] = None,
) -> None:
    """Serve one ONNX model over the V2 (Open Inference Protocol) and V1 REST protocols."""
    from pydantic import ValidationError

    from ondeck_server.serve.errors import ServeError

    local_model, ref = _fetch_model(model, cache=model_cache, endpoint_url=s3_endpoint_url)
    if name is None and ref is not None:  # s3://…/refs/NAME: served as NAME, like a local ref
        name = model_name_for(local_model, None, ref=ref)
    values = {
        "model": local_model,
        "name": name,
        "host": host,
        "port": port,
        "max_batch_size": max_batch_size,
        "max_delay_ms": max_delay_ms,
        "threads": threads,
        "auth_token_file": auth_token_file,
        "auth_token": auth_token,
        "max_body_bytes": max_body_bytes,
        "max_queue": max_queue,
        "drain_timeout": drain_timeout,
        "max_tensor_elements": max_tensor_elements,
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "max_context_length": max_context_length,
        "default_temperature": default_temperature,
        "default_top_p": default_top_p,
        "default_top_k": default_top_k,
        "default_max_tokens": default_max_tokens,
        "max_connections": max_connections,
        "shadow_url": shadow_url,
        "shadow_percent": shadow_percent,
    }
    try:
        settings = ServeSettings.model_validate(values)
    except ValidationError as exc:
        _die("InvalidSettings", _first_error(exc))
    from ondeck_server.artifact import is_llm

    if is_llm(settings.model) and settings.shadow_url:
        _die("InvalidSettings", "--shadow-url: a language model's server copies no requests")
    if is_llm(settings.model):  # a language model: the OpenAI-compatible server
        from ondeck_server.serve.llm.server import run
    else:
        from ondeck_server.serve.lifecycle import run  # imports uvicorn: only when serving

    try:
        code = run(settings)
    except ServeError as exc:
        _die(type(exc).__name__, exc.message)
    raise typer.Exit(code)


def _fetch_model(
    model: str, *, cache: Path | None, endpoint_url: str | None
) -> tuple[Path, str | None]:
    """The local path of `--model` (as given, or an s3:// artifact downloaded first) and
    the ref an s3:// URI names."""
    from ondeck_server.artifact import remote as remote_store

    if not remote_store.is_remote(model):
        return Path(model), None
    folder = cache or Path(tempfile.gettempdir()) / "ondeck-model-cache"
    try:
        ref = remote_store.parse_model(model)[1]
        return remote_store.download(model, cache=folder, endpoint_url=endpoint_url), ref
    except remote_store.RemoteStoreError as exc:
        _die("StartupError", str(exc))
    except OSError as exc:
        _die("StartupError", f"cannot write the model cache {folder}: {exc.strerror or exc}")
    raise AssertionError("unreachable")


def _first_error(exc: Any) -> str:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    flag = FLAGS.get(field, (field, ""))[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{flag}: {message}" if flag else message


def _die(kind: str, message: str) -> NoReturn:
    typer.echo(f"{kind}: {message}", err=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the `serve` command to the `ondeck-server` CLI."""
    app.command("serve")(serve)
