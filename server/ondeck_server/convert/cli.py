"""`ondeck-server convert`: the command the operator's conversion Job runs (and local
mode runs on a laptop). A thin shell over ondeck_server.convert.

Contract (docs/architecture.md): every flag also reads an `ONDECK_…` variable; human
progress goes to stderr; stdout carries exactly one JSON summary line on success; exit 0
on success (or when the artifact already exists), 1 with one line `ErrorType: message`
on a pipeline error, 2 on a usage error. With `--termination-log PATH`, the error line
(or, on success, the summary, at most 4 KB) is also written there, where Kubernetes
picks it up for the pod status.

This module parses and prints; it does not convert anything itself.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from typer._click import Context as ClickContext
from typer._click import exceptions as click_errors
from typer.core import TyperCommand

from ondeck_server import artifact
from ondeck_server.artifact import remote as remote_store
from ondeck_server.convert import (
    ConvertRequest,
    FetchSettings,
    Format,
    InputSpec,
    InvalidSettings,
    OptimizationLevel,
    PipelineError,
    Quantize,
    RemoteStore,
    Thresholds,
    convert,
    parse_inputs,
)
from ondeck_server.convert.bounds import default_bound
from ondeck_server.convert.fetch import DEFAULT_DEADLINE_S, DEFAULT_MAX_BYTES, normalize_sha256

TERMINATION_LOG_LIMIT = 4096
_TERMINATION_FLAG = "--termination-log"
_TERMINATION_ENV = "ONDECK_TERMINATION_LOG"


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


class _ConsoleEvents:
    """Stage lines and a download bar on stderr."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def stage(self, name: str, seconds: float, detail: str) -> None:
        self.console.print(
            f"{name:<9} {seconds:7.2f} s  {detail}", markup=False, highlight=False, soft_wrap=True
        )

    def bytes_progress(self) -> _RichBar:
        return _RichBar(self.console)


class _RichBar:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def start(self, label: str, total: int | None) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(label, total=total)

    def advance(self, n: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def fit_termination_log(summary: dict[str, Any], limit: int = TERMINATION_LOG_LIMIT) -> str:
    """The summary as compact JSON of at most `limit` bytes, dropping detail as needed:
    per-output validation first, then tensor shapes, then the tensor lists."""
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
        lambda d: d.update(validation={"passed": validation.get("passed")}),
    ]
    for step in steps:
        text = artifact.dumps_compact(trimmed)
        if len(text.encode()) <= limit:
            return text
        step(trimmed)
    return artifact.dumps_compact(trimmed)[:limit]


def convert_command(
    source: str = typer.Option(
        ...,
        "--source",
        envvar="ONDECK_SOURCE",
        help="file://, path, http(s)://, s3://, gs://, hf://, pvc://claim/path",
    ),
    store: str = typer.Option(
        ...,
        "--store",
        envvar="ONDECK_STORE",
        callback=_store_callback,
        help="Artifact store: a folder, or s3://bucket/prefix (built in a temporary folder, "
        "then uploaded; credentials from ONDECK_STORE_AWS_* or AWS_*).",
    ),
    fmt: Format | None = typer.Option(
        None, "--format", envvar="ONDECK_FORMAT", help="Inferred from the file when omitted."
    ),
    sha256: str | None = typer.Option(
        None,
        "--sha256",
        envvar="ONDECK_SHA256",
        callback=_sha256_callback,
        help="Checked against the fetched bytes before anything else.",
    ),
    inputs: str | None = typer.Option(
        None,
        "--inputs",
        envvar="ONDECK_INPUTS",
        callback=_inputs_callback,
        # rich markup: "\\[" is a literal bracket.
        help="name:dtype:\\[d0,...] entries separated by ';', -1 = a dynamic dimension.",
    ),
    level: OptimizationLevel = typer.Option(
        OptimizationLevel.BASIC,
        "--level",
        envvar="ONDECK_LEVEL",
        help="onnxruntime graph optimization saved offline; basic is hardware independent.",
    ),
    quantize: Quantize = typer.Option(
        Quantize.NONE,
        "--quantize",
        envvar="ONDECK_QUANTIZE",
        help="int8 (dynamic), int8-static (needs --calibration), fp16 (FP32 inputs/outputs kept).",
    ),
    calibration: str | None = typer.Option(
        None, "--calibration", envvar="ONDECK_CALIBRATION", help="An .npz of input arrays."
    ),
    validation_samples: int = typer.Option(
        64,
        "--validation-samples",
        envvar="ONDECK_VALIDATION_SAMPLES",
        min=1,
        help="Samples the final model is compared with the original on.",
    ),
    min_cosine: float = typer.Option(
        0.99,
        "--min-cosine",
        envvar="ONDECK_MIN_COSINE",
        min=-1.0,
        max=1.0,
        help="Lowest acceptable mean cosine similarity to the original's outputs.",
    ),
    max_top1_disagreement: float = typer.Option(
        0.01,
        "--max-top1-disagreement",
        envvar="ONDECK_MAX_TOP1_DISAGREEMENT",
        min=0.0,
        max=1.0,
        help="Highest acceptable share of changed top-1 predictions (classifier outputs).",
    ),
    allow_unsafe_pickle: bool = typer.Option(
        False,
        "--allow-unsafe-pickle",
        envvar="ONDECK_ALLOW_UNSAFE_PICKLE",
        help="Load joblib/pickle files (runs code from the file).",
    ),
    s3_endpoint_url: str | None = typer.Option(
        None,
        "--s3-endpoint-url",
        envvar="ONDECK_S3_ENDPOINT_URL",
        help="S3-compatible store; credentials from the AWS_* environment variables.",
    ),
    store_endpoint_url: str | None = typer.Option(
        None,
        "--store-endpoint-url",
        envvar="ONDECK_STORE_ENDPOINT_URL",
        help="Endpoint of an s3:// --store; default: --s3-endpoint-url.",
    ),
    pvc_root: Path | None = typer.Option(
        None,
        "--pvc-root",
        envvar="ONDECK_PVC_ROOT",
        help="Where pvc://claim/path claims are mounted.",
    ),
    ref: str | None = typer.Option(
        None,
        "--ref",
        envvar="ONDECK_REF",
        callback=_ref_callback,
        help="Also point <store>/refs/NAME at the artifact.",
    ),
    termination_log: Path | None = typer.Option(
        None,
        _TERMINATION_FLAG,
        envvar=_TERMINATION_ENV,
        help="Gets the error line on failure, the JSON summary (<= 4 KB) on success.",
    ),
    max_download_bytes: int = typer.Option(
        DEFAULT_MAX_BYTES,
        "--max-download-bytes",
        envvar="ONDECK_MAX_DOWNLOAD_BYTES",
        min=1,
        help="Refuse downloads larger than this.",
    ),
    fetch_timeout: float = typer.Option(
        DEFAULT_DEADLINE_S,
        "--fetch-timeout",
        envvar="ONDECK_FETCH_TIMEOUT",
        min=1.0,
        help="Seconds the whole download may take, however steadily bytes arrive.",
    ),
    max_tensor_bytes: int | None = typer.Option(
        None,
        "--max-tensor-bytes",
        envvar="ONDECK_MAX_TENSOR_BYTES",
        min=1,
        help="Refuse an ONNX graph that declares a larger tensor (default: 4 GiB, or a "
        "quarter of the memory limit).",
    ),
    max_unpacked_bytes: int | None = typer.Option(
        None,
        "--max-unpacked-bytes",
        envvar="ONDECK_MAX_UNPACKED_BYTES",
        min=1,
        help="Refuse a zip-based model or calibration file that unpacks to more (default: "
        "4 GiB, or a quarter of the memory limit).",
    ),
) -> None:
    """Fetch a model, convert it to ONNX, optimize, quantize, validate, and write the artifact."""
    console = Console(stderr=True)
    request = ConvertRequest(
        source=source,
        store=Path(store),
        format=fmt,
        sha256=sha256,
        inputs=inputs,  # type: ignore[arg-type]  # the callback parsed it
        level=level,
        quantize=quantize,
        calibration=calibration,
        thresholds=Thresholds(
            samples=validation_samples,
            min_cosine=min_cosine,
            max_top1_disagreement=max_top1_disagreement,
        ),
        allow_unsafe_pickle=allow_unsafe_pickle,
        fetch=FetchSettings(
            s3_endpoint_url=s3_endpoint_url,
            pvc_root=pvc_root,
            max_bytes=max_download_bytes,
            deadline_s=fetch_timeout,
        ),
        ref=ref,
        max_tensor_bytes=max_tensor_bytes or default_bound(),
        max_unpacked_bytes=max_unpacked_bytes or default_bound(),
    )
    log = str(termination_log) if termination_log else None
    if not remote_store.is_remote(store):
        _run(request, console=console, log=log)
        return
    remote = RemoteStore(uri=store, endpoint_url=store_endpoint_url or s3_endpoint_url)
    with tempfile.TemporaryDirectory(prefix="ondeck-build-") as build:
        _run(
            request.model_copy(update={"store": Path(build), "remote": remote}),
            console=console,
            log=log,
        )


def _run(request: ConvertRequest, *, console: Console, log: str | None) -> None:
    """Run the pipeline; print the summary (or the error line) and write the log."""
    ref = request.ref
    try:
        outcome = convert(request, events=_ConsoleEvents(console))
    except PipelineError as exc:
        line = exc.one_line()
        if exc.details:
            # The evidence (e.g. the validation report) as one JSON line before the error.
            sys.stderr.write(f"details: {artifact.dumps_compact(exc.details)}\n")
        sys.stderr.write(line + "\n")
        _write_termination_log(log, line)
        raise typer.Exit(1) from None
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
