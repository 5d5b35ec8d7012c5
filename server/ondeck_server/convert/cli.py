"""`ondeck-server convert`: the command the operator's conversion Job runs (and local
mode runs on a laptop). A thin shell over ondeck_server.convert.

Contract (docs/architecture.md): every flag also reads an `ONDECK_…` variable; human
progress goes to stderr; stdout carries exactly one JSON summary line on success; exit 0
on success (or when the artifact already exists), 1 with one line `ErrorType: message`
on a pipeline error, 2 on a usage error, 130 (Ctrl-C) or 143 (SIGTERM) with the line
`Interrupted: …` when stopped, leaving no temporary files. With `--termination-log
PATH`, the error line (or, on success, the summary, at most 4 KiB) is also written
there, where Kubernetes picks it up for the pod status.

This module parses and prints; it does not convert anything itself.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from typer._click import Context as ClickContext
from typer._click import exceptions as click_errors
from typer.core import TyperCommand

from ondeck_server import artifact
from ondeck_server.artifact import remote as remote_store
from ondeck_server.convert import (
    ConvertRequest,
    FetchSettings,
    InputSpec,
    InvalidSettings,
    PipelineError,
    RemoteStore,
    Thresholds,
    convert,
    parse_inputs,
)
from ondeck_server.convert.bounds import default_bound
from ondeck_server.convert.console import stage_console
from ondeck_server.convert.fetch import normalize_sha256
from ondeck_server.convert.flags import BY_PARAM, FLAGS, REQUIRED, Flag
from ondeck_server.convert.quantize import INT4_BLOCK_SIZES, Int4Settings

TERMINATION_LOG_LIMIT = 4096
_TERMINATION_FLAG = BY_PARAM["termination_log"].flag
_TERMINATION_ENV = BY_PARAM["termination_log"].env_var


class _OneLineUsageErrors(TyperCommand):
    """Usage errors as one line (`UsageError: …`, exit 2) instead of a help panel, also
    written to the termination log when one is named (so the operator can show it).
    typer vendors click as `typer._click`; its exceptions are the ones raised here."""

    def parse_args(self, ctx: ClickContext, args: list[str]) -> list[str]:
        raw = list(args)
        try:
            return super().parse_args(ctx, args)
        except click_errors.UsageError as exc:
            line = "UsageError: " + " ".join(exc.format_message().split())
            sys.stderr.write(line + "\n")
            _write_termination_log(_termination_log_from(raw), line)
            ctx.exit(2)


def _termination_log_from(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == _TERMINATION_FLAG and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(_TERMINATION_FLAG + "="):
            return arg.split("=", 1)[1]
    return os.environ.get(_TERMINATION_ENV) or None


def _write_termination_log(path: str | None, text: str) -> None:
    if not path:
        return
    try:
        Path(path).write_text(text)
    except OSError as exc:
        sys.stderr.write(f"warning: cannot write the termination log {path}: {exc}\n")


def _inputs_callback(value: str | None) -> list[InputSpec] | None:
    if value is None or not value.strip():
        return None
    try:
        return parse_inputs(value)
    except InvalidSettings as exc:
        raise typer.BadParameter(exc.message) from None


def _sha256_callback(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return normalize_sha256(value)
    except InvalidSettings as exc:
        raise typer.BadParameter(exc.message) from None


def _store_callback(value: str) -> str:
    if remote_store.is_remote(value):
        try:
            remote_store.parse_store(value)
        except remote_store.RemoteStoreError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def _ref_callback(value: str | None) -> str | None:
    if value is None or not value:
        return None
    if not artifact.valid_ref_name(value):
        raise typer.BadParameter(
            "use lower-case letters, digits, '.', '_' or '-' (at most 253 characters)"
        )
    return value


def _block_size_callback(value: int) -> int:
    if value not in INT4_BLOCK_SIZES:
        raise typer.BadParameter(f"use one of {', '.join(map(str, INT4_BLOCK_SIZES))}")
    return value


def fit_termination_log(summary: dict[str, Any], limit: int = TERMINATION_LOG_LIMIT) -> str:
    """The summary as compact JSON of at most `limit` bytes, dropping detail as needed:
    per-output validation first, then tensor shapes, then the tensor lists, then what
    `auto` says of each candidate beyond its fate and figures (the status lists every
    candidate: the list goes last)."""
    text = artifact.dumps_compact(summary)
    if len(text.encode()) <= limit:
        return text
    trimmed = dict(summary)
    validation = dict(trimmed.get("validation") or {})
    validation.pop("outputs", None)
    trimmed["validation"] = validation
    steps: list[Callable[[dict[str, Any]], None]] = [
        lambda d: d.update(
            inputs=[t["name"] for t in d["inputs"]], outputs=[t["name"] for t in d["outputs"]]
        ),
        lambda d: d.update(inputs=len(d["inputs"]), outputs=len(d["outputs"])),
        lambda d: validation.update(_brief_auto(validation)),
        lambda d: d.update(
            validation={"passed": validation.get("passed")}
            | {k: {"chosen": v.get("chosen")} for k, v in _brief_auto(validation).items()}
        ),
    ]
    for step in steps:
        text = artifact.dumps_compact(trimmed)
        if len(text.encode()) <= limit:
            return text
        step(trimmed)
    return artifact.dumps_compact(trimmed)[:limit]


_AUTO_BRIEF = ("quantize", "outcome", "sizeBytes", "latencyMs", "gatePassed", "batchIndependent")


def _brief_auto(validation: dict[str, Any]) -> dict[str, Any]:
    """{"auto": ...} with each candidate's fate and main figures only (no reasons, no
    details); {} when the conversion was not `auto`."""
    auto = validation.get("auto")
    if not isinstance(auto, dict):
        return {}
    candidates = [{k: c.get(k) for k in _AUTO_BRIEF} for c in auto.get("candidates", [])]
    return {"auto": {"chosen": auto.get("chosen"), "candidates": candidates}}


#: Value checks that need the pipeline, attached to their flags by parameter name.
_CALLBACKS: dict[str, Callable[[Any], Any]] = {
    "store": _store_callback,
    "sha256": _sha256_callback,
    "inputs": _inputs_callback,
    "ref": _ref_callback,
    "int4_block_size": _block_size_callback,
}


def _parameter(flag: Flag) -> inspect.Parameter:
    option = typer.Option(
        flag.flag,
        envvar=flag.env_var,
        help=flag.help,
        callback=_CALLBACKS.get(flag.param),
        min=flag.min,
        max=flag.max,
    )
    return inspect.Parameter(
        flag.param,
        inspect.Parameter.KEYWORD_ONLY,
        default=inspect.Parameter.empty if flag.default is REQUIRED else flag.default,
        annotation=Annotated[flag.type, option],
    )


def _with_flags(func: Callable[..., None]) -> Callable[..., None]:
    """Give `func(**values)` the signature typer reads: one parameter per row of FLAGS."""
    parameters = [_parameter(flag) for flag in FLAGS]
    func.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    func.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return func


@_with_flags
def convert_command(**values: Any) -> None:
    """Fetch a model, convert it to ONNX, optimize, quantize, validate, and write the artifact."""
    v = values
    store: str = v["store"]
    request = ConvertRequest(
        source=v["source"],
        store=Path(store),
        format=v["fmt"],
        sha256=v["sha256"],
        inputs=v["inputs"],  # the callback parsed it
        level=v["level"],
        quantize=v["quantize"],
        calibration=v["calibration"],
        validation_data=v["validation_data"],
        int4=Int4Settings(block_size=v["int4_block_size"], accuracy_level=v["int4_accuracy_level"]),
        thresholds=Thresholds(
            samples=v["validation_samples"],
            min_cosine=v["min_cosine"],
            max_top1_disagreement=v["max_top1_disagreement"],
        ),
        allow_unsafe_pickle=v["allow_unsafe_pickle"],
        fetch=FetchSettings(
            s3_endpoint_url=v["s3_endpoint_url"],
            pvc_root=v["pvc_root"],
            max_bytes=v["max_download_bytes"],
            deadline_s=v["fetch_timeout"],
        ),
        ref=v["ref"],
        max_tensor_bytes=v["max_tensor_bytes"] or default_bound(),
        max_unpacked_bytes=v["max_unpacked_bytes"] or default_bound(),
    )
    log = str(v["termination_log"]) if v["termination_log"] else None
    if not remote_store.is_remote(store):
        _run(request, log=log)
        return
    endpoint = v["store_endpoint_url"] or v["s3_endpoint_url"]
    remote = RemoteStore(uri=store, endpoint_url=endpoint)
    with tempfile.TemporaryDirectory(prefix="ondeck-build-") as build:
        _run(
            request.model_copy(update={"store": Path(build), "remote": remote}),
            log=log,
        )


class _Terminated(BaseException):
    """SIGTERM (a deleted pod, `ondeck run` stopping its child), raised like Ctrl-C's
    KeyboardInterrupt so that every temporary folder is removed on the way out."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    def raise_terminated(_signum: int, _frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_line(*, written: bool) -> str:
    """The one line a stopped conversion prints."""
    if written:
        return (
            "Interrupted: conversion stopped after the artifact was written; run it again "
            "to finish (the artifact is reused)"
        )
    return "Interrupted: conversion stopped; nothing was written"


def _run(request: ConvertRequest, *, log: str | None) -> None:
    """Run the pipeline; print the summary (or the error line) and write the log."""
    ref = request.ref
    done: list[str] = []
    try:
        with _sigterm_raises(), stage_console() as events:
            done = events.done
            outcome = convert(request, events=events)
    except PipelineError as exc:
        line = exc.one_line()
        if exc.details:
            # The evidence (e.g. the validation report) as one JSON line before the error.
            sys.stderr.write(f"details: {artifact.dumps_compact(exc.details)}\n")
        sys.stderr.write(line + "\n")
        _write_termination_log(log, line)
        raise typer.Exit(1) from None
    except (KeyboardInterrupt, _Terminated) as exc:
        line = interrupted_line(written="write" in done)
        sys.stderr.write(line + "\n")
        _write_termination_log(log, line)
        signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
        raise typer.Exit(128 + signum) from None
    summary = artifact.summary(
        outcome.manifest, path=outcome.uri or outcome.path, ref=ref, cached=outcome.cached
    )
    sys.stdout.write(artifact.dumps_compact(summary) + "\n")
    sys.stdout.flush()
    _write_termination_log(log, fit_termination_log(summary))


def register(app: typer.Typer) -> None:
    app.command(
        "convert",
        cls=_OneLineUsageErrors,
        help="Fetch a model, convert it to ONNX, optimize, quantize, validate, and write "
        "a content-addressed artifact into --store.",
    )(convert_command)


__all__ = ["fit_termination_log", "register"]
