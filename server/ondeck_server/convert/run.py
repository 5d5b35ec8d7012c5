"""The pipeline: fetch → (cache check) → convert → optimize → quantize → validate →
publish, for one ConvertRequest.

Idempotent: the digest is known once the source is fetched; when `<store>/<digest>` is a
complete, valid artifact, nothing else runs and the outcome says `cached`. Crash safe:
all work happens in locked `.tmp-*` folders inside the store, the artifact appears
under its final name by one rename, and stale temporary folders are removed first.
Reports stage timings through `Events`; prints nothing itself.

With `remote` (an s3:// object store) the local store is only where the artifact is
built: the digest is first looked up in the object store (its manifest object exists and
parses ⇒ cached, nothing runs), and a new artifact is uploaded manifest last, then the
ref (ondeck_server.artifact.remote).
"""

from __future__ import annotations

import contextlib
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ondeck_server import artifact
from ondeck_server.artifact import remote as remote_store
from ondeck_server.artifact.batching import Batching
from ondeck_server.convert import auto, batch_check, bounds, onnx_tools, store
from ondeck_server.convert.converted import Converted
from ondeck_server.convert.digest import compute_digest, converter_versions
from ondeck_server.convert.errors import (
    ConversionFailed,
    InternalError,
    InvalidSettings,
    OptimizationFailed,
    PipelineError,
    QuantizationFailed,
    StoreFailed,
    UnsafeModel,
    UnsupportedFormat,
    ValidationFailed,
)
from ondeck_server.convert.fetch import (
    Fetched,
    FetchSettings,
    NoProgress,
    Progress,
    fetch,
    file_sha256,
    sibling_uri,
)
from ondeck_server.convert.formats import Format, SourceKind, infer_kind
from ondeck_server.convert.inputs_spec import InputSpec, render_inputs
from ondeck_server.convert.llm import pipeline as llm_pipeline
from ondeck_server.convert.onnx_tools import Feeds
from ondeck_server.convert.optimize import OptimizationLevel, optimize
from ondeck_server.convert.quantize import INT4_BLOCK_SIZES, Int4Settings, Quantize, quantize
from ondeck_server.convert.validate import (
    CALIBRATION,
    DYNAMIC_DIM,
    GENTLER,
    MAX_BATCH,
    VALIDATION_DATA,
    Thresholds,
    ValidationReport,
    check_calibration,
    evaluate,
    gate_figures,
    make_samples,
    refuse,
    run_batched,
)


class RemoteStore(BaseModel):
    """An object store the artifact is uploaded to (see ondeck_server.artifact.remote)."""

    model_config = ConfigDict(frozen=True)

    uri: str
    endpoint_url: str | None = None


class ConvertRequest(BaseModel):
    """Everything `ondeck-server convert` was asked to do."""

    model_config = ConfigDict(frozen=True)

    source: str
    store: Path
    format: Format | None = None
    sha256: str | None = None
    inputs: list[InputSpec] | None = None
    level: OptimizationLevel = OptimizationLevel.BASIC
    quantize: Quantize = Quantize.NONE
    calibration: str | None = None
    validation_data: str | None = Field(
        default=None,
        description="An .npz of real inputs the gate judges on; default: the calibration file.",
    )
    int4: Int4Settings = Field(
        default_factory=Int4Settings,
        description="MatMulNBits block size and accuracy level; used by --quantize int4 only.",
    )
    thresholds: Thresholds = Field(default_factory=Thresholds)
    allow_unsafe_pickle: bool = False
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    max_tensor_bytes: int = Field(
        default_factory=bounds.default_bound,
        description="Largest tensor the ONNX graph may declare (ondeck_server.convert.bounds).",
    )
    max_unpacked_bytes: int = Field(
        default_factory=bounds.default_bound,
        description="Largest total uncompressed size of a zip-based source or calibration file.",
    )
    ref: str | None = None
    remote: RemoteStore | None = Field(
        default=None,
        description="Also upload the artifact to this object store; `store` is then only "
        "the local build folder.",
    )


class Outcome(BaseModel):
    manifest: artifact.Manifest
    path: Path
    cached: bool
    uri: str | None = None
    """Where the artifact lives in the object store, when there is one."""


class Events(Protocol):
    """Where the pipeline reports progress (the CLI prints it on stderr)."""

    def stage(self, name: str, seconds: float, detail: str) -> None: ...

    def bytes_progress(self) -> Progress: ...


@runtime_checkable
class Begins(Protocol):
    """Events that also want to know when a stage starts (the CLI's spinner)."""

    def begin(self, name: str) -> None: ...


class _Silent:
    def stage(self, name: str, seconds: float, detail: str) -> None:
        pass

    def bytes_progress(self) -> Progress:
        return NoProgress()


class _Clock:
    def __init__(self, events: Events) -> None:
        self.events = events
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[list[str]]:
        detail: list[str] = []
        if isinstance(self.events, Begins):
            self.events.begin(name)
        start = time.perf_counter()
        yield detail
        seconds = time.perf_counter() - start
        self.timings[name] = round(seconds, 3)
        self.events.stage(name, seconds, " ".join(detail))


def convert(request: ConvertRequest, *, events: Events | None = None) -> Outcome:
    """Run the pipeline; raise a PipelineError subclass on any failure."""
    events = events or _Silent()
    if request.quantize is Quantize.INT8_STATIC and request.calibration is None:
        raise InvalidSettings(
            "--quantize int8-static needs --calibration: an .npz with one array per model "
            "input (first dimension = samples); or use --quantize int8 (dynamic)"
        )
    root = request.store
    try:
        store.clean_stale(root)
        with store.work_dir(root) as work:
            if llm_pipeline.applies(request):
                return llm_pipeline.convert_llm(request, work=work, events=events)
            return _convert(request, work=work, events=events)
    except OSError as exc:
        mapped = store.disk_error(exc, root)
        if mapped is None:
            raise StoreFailed(f"writing the artifact to {root} failed: {exc}") from None
        raise mapped from None
    except PipelineError as exc:
        if not isinstance(exc, StoreFailed) and store.nearly_full(root):
            raise StoreFailed(
                f"the artifact store {root} is full ({exc.one_line()}); give it more room "
                "(spec.artifacts.pvc.size) or remove unused artifacts"
            ) from None
        raise
    except MemoryError:
        limit = bounds.memory_limit()
        raise ConversionFailed(
            "the conversion ran out of memory (memory limit "
            f"{bounds.human(limit) if limit else 'none'}); give the Job more "
            "(spec.optimize.resources.limits.memory)"
        ) from None
    except Exception as exc:  # anything unmapped is our bug: still one readable line
        raise InternalError(
            f"{type(exc).__name__}: {_first_line(exc)}; this is a bug in ondeck, please report "
            "it with the Job's log"
        ) from exc


_INT8 = (Quantize.INT8, Quantize.INT8_STATIC)
#: The quantize stage's line when int8 found nothing to quantize (a tree model).
NOTHING_QUANTIZED = (
    "{mode}: changed nothing, the model has no MatMul, Gemm or Conv to quantize "
    "(its operators stay FP32)"
)


def _has_quantized_ops(model: Path) -> bool:
    """Whether onnxruntime's int8 quantizer put any integer operator into `model`."""
    import onnx

    graph = onnx.load_model(str(model), load_external_data=False).graph
    kinds = {node.op_type for node in graph.node}
    return any(
        "Quantize" in k or "Integer" in k or k.startswith("QLinear") or k in ("QGemm", "QAttention")
        for k in kinds
    )


def _first_line(exc: BaseException) -> str:
    return onnx_tools.error_text(exc, limit=300)


def _check_loads(model: Path) -> None:
    """The converted model must load in the onnxruntime that will serve it."""
    try:
        onnx_tools.session(model, optimize=False)
    except Exception as exc:  # onnxruntime's pybind errors
        raise ConversionFailed(
            f"onnxruntime {_ort_version()} cannot load the converted model: {_first_line(exc)}; "
            "re-export it with an older opset / IR version"
        ) from None


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _convert(request: ConvertRequest, *, work: Path, events: Events) -> Outcome:
    clock = _Clock(events)
    downloads = work / "download"
    with clock.stage("fetch") as detail:
        source = fetch(
            request.source,
            dest=downloads,
            settings=request.fetch,
            expected_sha256=request.sha256,
            progress=events.bytes_progress(),
        )
        name = Path(source.path).name
        kind = infer_kind(source.path, declared=request.format, name=name)
        extra = _fetch_external_data(source, kind=kind, request=request, dest=downloads)
        calibration, calibration_sha = _fetch_npz(
            request.calibration, flag="--calibration", request=request, dest=work / "calibration"
        )
        validation_data, validation_sha = _fetch_npz(
            request.validation_data,
            flag="--validation-data",
            request=request,
            dest=work / "validation",
        )
        detail.append(f"{name} ({bounds.human(source.size_bytes)}, {kind.value})")
    fmt = kind.framework
    settings = _settings(
        request, kind=kind, calibration_sha=calibration_sha, validation_sha=validation_sha
    )
    versions = converter_versions(fmt)
    digest = compute_digest(
        source_sha256=source.sha256,
        extra_sha256=extra,
        fmt=fmt,
        settings=settings,
        versions=versions,
    )
    final = request.store / digest
    if request.remote is not None:
        remote = _remote_manifest(request.remote, digest)
        if remote is not None:
            remote_uri = _remote_ref(request, digest)
            events.stage("cached", 0.0, f"{remote_uri} is already built")
            return Outcome(manifest=remote, path=final, cached=True, uri=remote_uri)
    with store.store_lock(request.store):
        cached = store.valid_artifact(final, digest)
        if cached is None and final.exists():
            shutil.rmtree(final)  # a leftover that is not a valid artifact for this digest
    if cached is not None:
        store.point_ref(request.store, request.ref, digest)
        events.stage("cached", 0.0, f"{final} is already built")
        uploaded = _upload(request, final, digest=digest, clock=_Clock(events))
        return Outcome(manifest=cached, path=final, cached=uploaded is None, uri=uploaded)

    with clock.stage("convert") as detail:
        if kind is not SourceKind.ONNX and kind is not SourceKind.PICKLE:
            bounds.check_zip(source.path, limit=request.max_unpacked_bytes, what=name)
        converted = _run_converter(source, kind=kind, request=request, out=work / "fp32.onnx")
        # Before onnxruntime sees the graph: it would allocate what the graph declares.
        bounds.check_tensor_sizes(
            converted.onnx_path,
            limit=request.max_tensor_bytes,
            batch=MAX_BATCH,
            other_dims=DYNAMIC_DIM,
            what=name,
        )
        _check_loads(converted.onnx_path)
        if calibration is not None:
            check_calibration(converted.inputs, calibration)
        if validation_data is not None:
            check_calibration(converted.inputs, validation_data, flag="--validation-data")
        how = "checked" if kind is SourceKind.ONNX else f"{kind.value} → ONNX"
        detail.append(f"{how}, inputs {render_inputs(converted.inputs)}")
    with clock.stage("optimize") as detail:
        optimized = work / "optimized.onnx"
        optimize(converted.onnx_path, level=request.level, out=optimized)
        detail.append(request.level.value)
    staging: Path | None = None
    try:
        with store.locked_temp_dir(request.store, f".tmp-{digest[:12]}-") as staging:
            model = staging / artifact.MODEL_FILE
            gate = _Gate.prepare(converted, request=request, data=validation_data or calibration)
            chosen: tuple[auto.AutoReport, ValidationReport, Batching] | None = None
            with clock.stage("quantize") as detail:
                if request.quantize is Quantize.AUTO:
                    chosen = auto.choose(
                        optimized,
                        out=model,
                        work=work,
                        calibration=calibration,
                        int4=request.int4,
                        judge=lambda path: gate.judge(path, request=request),
                        samples=gate.samples,
                        batch=gate.batch,
                        fixed_batch=gate.fixed_batch,
                        report=events.stage,
                    )
                    detail.append(f"auto: {chosen[0].chosen} of {_tried(chosen[0])}")
                else:
                    done = quantize(
                        optimized,
                        mode=request.quantize,
                        out=model,
                        work=work,
                        calibration=calibration,
                        int4=request.int4,
                    )
                    if request.quantize in _INT8 and not _has_quantized_ops(model):
                        done = NOTHING_QUANTIZED.format(mode=request.quantize.value)
                    detail.append(done)
            with clock.stage("validate") as detail:
                if chosen is None:
                    report, batching = gate.judge(model, request=request)
                    refuse(report, gentler=_gentler(request))
                else:
                    report, batching = chosen[1], chosen[2]
                recorded = report.model_dump(mode="json", by_alias=True)
                if chosen is not None:
                    recorded["auto"] = auto.as_dict(chosen[0])
                detail.append(
                    f"{report.samples} {report.sample_source} samples, {gate_figures(report)}; "
                    "batch independent: "
                    f"{'yes' if batching.independent else 'no (' + batching.explain() + ')'}"
                    + "".join(f"; warning: {warning}" for warning in report.warnings)
                )
            with clock.stage("write") as detail:
                detail.append(f"{request.store / digest}")
                manifest = _manifest(
                    request,
                    digest=digest,
                    source=source,
                    fmt=fmt,
                    fp32=converted.onnx_path,
                    model=model,
                    settings=settings,
                    report=recorded,
                    versions=versions,
                    timings=clock.timings,
                    batching=batching,
                )
                (staging / artifact.MANIFEST_FILE).write_text(manifest.to_json())
                store.finish_files(staging)
                path = store.publish(staging, request.store, digest)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    store.point_ref(request.store, request.ref, digest)
    uploaded = _upload(request, path, digest=digest, clock=clock)
    return Outcome(manifest=artifact.read_manifest(path), path=path, cached=False, uri=uploaded)


def _remote_manifest(remote: RemoteStore, digest: str) -> artifact.Manifest | None:
    try:
        return remote_store.remote_manifest(remote.uri, digest, endpoint_url=remote.endpoint_url)
    except remote_store.RemoteStoreError as exc:
        raise StoreFailed(str(exc)) from None


def _remote_ref(request: ConvertRequest, digest: str) -> str:
    """Point the store's ref (when asked); returns the artifact's URI in the store."""
    assert request.remote is not None
    try:
        if request.ref is not None:
            remote_store.point_ref(
                request.remote.uri, request.ref, digest, endpoint_url=request.remote.endpoint_url
            )
        return f"{remote_store.parse_store(request.remote.uri).uri}/{digest}"
    except remote_store.RemoteStoreError as exc:
        raise StoreFailed(str(exc)) from None


def _upload(request: ConvertRequest, folder: Path, *, digest: str, clock: _Clock) -> str | None:
    """Upload a local artifact to the object store (manifest last), then point the ref;
    None when there is no object store."""
    if request.remote is None:
        return None
    with clock.stage("upload") as detail:
        try:
            remote_store.upload(
                folder,
                store_uri=request.remote.uri,
                digest=digest,
                endpoint_url=request.remote.endpoint_url,
            )
        except remote_store.RemoteStoreError as exc:
            raise StoreFailed(str(exc)) from None
        uri = _remote_ref(request, digest)
        detail.append(uri)
    return uri


def _manifest(
    request: ConvertRequest,
    *,
    digest: str,
    source: Fetched,
    fmt: Format,
    fp32: Path,
    model: Path,
    settings: dict[str, Any],
    report: dict[str, Any],
    versions: dict[str, str],
    timings: dict[str, float],
    batching: Batching,
) -> artifact.Manifest:
    inputs, outputs = onnx_tools.io_info(model)
    return artifact.Manifest(
        digest=digest,
        name=source.path.stem,
        source=artifact.SourceInfo(
            uri=request.source,
            sha256=source.sha256,
            format=fmt.value,
            sizeBytes=source.size_bytes,
        ),
        inputs=inputs,
        outputs=outputs,
        originalSizeBytes=onnx_tools.total_size(fp32),
        sizeBytes=onnx_tools.total_size(model),
        settings=settings,
        validation=report,
        versions=versions,
        timings=timings,
        createdAt=datetime.now(UTC).isoformat(timespec="seconds"),
        batching=batching,
        precision=_precision(request.quantize, model),
    )


#: The weights' number type after each --quantize (int4 packs two weights in a uint8).
_QUANTIZED_PRECISION = {
    Quantize.INT8: "int8",
    Quantize.INT8_STATIC: "int8",
    Quantize.FP16: "fp16",
    Quantize.INT4: "int4",
}


def _precision(mode: Quantize, model: Path) -> str | None:
    return _QUANTIZED_PRECISION.get(mode) or onnx_tools.weights_precision(model)


def _settings(
    request: ConvertRequest,
    *,
    kind: SourceKind,
    calibration_sha: str | None,
    validation_sha: str | None,
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "sourceKind": kind.value,
        "inputs": render_inputs(request.inputs) if request.inputs else None,
        "level": request.level.value,
        "quantize": request.quantize.value,
        "calibrationSha256": calibration_sha,
        "validation": request.thresholds.model_dump(mode="json", by_alias=True),
    }
    if request.quantize in (Quantize.INT4, Quantize.AUTO):
        # Only where int4 is built, so the digests of every other mode stay what they were.
        settings["int4"] = request.int4.model_dump(mode="json", by_alias=True)
    if validation_sha is not None:
        settings["validationDataSha256"] = validation_sha
    return settings


def _fetch_external_data(
    source: Fetched, *, kind: SourceKind, request: ConvertRequest, dest: Path
) -> dict[str, str]:
    """Fetch (when remote) and hash the external data files an ONNX model refers to."""
    if kind is not SourceKind.ONNX:
        return {}
    try:
        locations = onnx_tools.external_data_locations(source.path)
    except Exception:  # a corrupt model: the converter reports it properly
        return {}
    hashes: dict[str, str] = {}
    for location in locations:
        if Path(location).is_absolute() or ".." in Path(location).parts:
            raise ConversionFailed(
                f"{source.path.name} points its external data at {location!r}, outside its "
                "folder; keep the data files next to the model"
            )
        local = source.path.parent / location
        if local.is_symlink():
            raise UnsafeModel(
                f"{source.path.name} keeps its external data in {location!r}, a symbolic "
                "link; links could make the conversion read files outside the model's "
                "folder: copy the data file next to the model instead"
            )
        if source.downloaded and not local.exists():
            fetched = fetch(
                sibling_uri(request.source, location),
                dest=local.parent,
                settings=request.fetch,
                progress=NoProgress(),
            )
            hashes[location] = fetched.sha256
        elif local.is_file():
            hashes[location] = file_sha256(local)
    return hashes


def _fetch_npz(
    uri: str | None, *, flag: str, request: ConvertRequest, dest: Path
) -> tuple[Feeds | None, str | None]:
    """The arrays of an .npz of model inputs (`flag`: its option, for messages)."""
    if uri is None:
        return None, None
    fetched = fetch(uri, dest=dest, settings=request.fetch)
    bounds.check_zip(fetched.path, limit=request.max_unpacked_bytes, what=f"{flag} {uri}")
    try:
        if not zipfile.is_zipfile(fetched.path):
            # numpy would try it as a pickle and say "contains pickled (object) data".
            raise ValueError("not a zip archive")
        with np.load(fetched.path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidSettings(
            f"{flag} {uri} is not an .npz of arrays ({exc}); write it "
            "with numpy.savez(path, input_name=array, ...)"
        ) from None
    if not arrays or any(a.ndim == 0 or len(a) == 0 for a in arrays.values()):
        raise InvalidSettings(
            f"{flag} {uri} holds no samples; give one array per "
            "input with the samples along the first dimension"
        )
    return arrays, fetched.sha256


def _run_converter(
    source: Fetched, *, kind: SourceKind, request: ConvertRequest, out: Path
) -> Converted:
    if kind is SourceKind.ONNX:
        from ondeck_server.convert.convert_onnx import convert_onnx

        return convert_onnx(source.path, out=out)
    if kind.framework is Format.PYTORCH:
        from ondeck_server.convert.convert_pytorch import convert_pytorch

        return convert_pytorch(source.path, kind=kind, inputs=request.inputs, out=out)
    if kind.framework is Format.SKLEARN:
        from ondeck_server.convert.convert_sklearn import convert_sklearn

        return convert_sklearn(
            source.path,
            kind=kind,
            inputs=request.inputs,
            allow_unsafe_pickle=request.allow_unsafe_pickle,
            out=out,
        )
    raise UnsupportedFormat(f"no converter for {kind.value}")  # pragma: no cover


def _gentler(request: ConvertRequest) -> str:
    """What a refused model's message suggests."""
    if request.quantize is not Quantize.INT4:
        return GENTLER
    smaller = [b for b in INT4_BLOCK_SIZES if b < request.int4.block_size]
    options = [f"a smaller --int4-block-size ({smaller[-1]})"] if smaller else []
    if request.int4.accuracy_level != 1:
        options.append("--int4-accuracy-level 1 (FP32 activations)")
    options.append("a gentler --quantize (int8, fp16, none)")
    return "use " + ", ".join(options)


def _tried(report: auto.AutoReport) -> str:
    built = [c.quantize for c in report.candidates if c.outcome != "skipped"]
    skipped = [c.quantize for c in report.candidates if c.outcome == "skipped"]
    return ", ".join(built) + (f" (skipped: {', '.join(skipped)})" if skipped else "")


@dataclass(frozen=True)
class _Gate:
    """The gate's fixed half: the samples, and the original's outputs on them (computed
    once, however many candidates are judged)."""

    converted: Converted
    samples: Feeds
    source: str
    reference_outputs: list[np.ndarray]
    batch: int
    fixed_batch: bool

    @classmethod
    def prepare(cls, converted: Converted, *, request: ConvertRequest, data: Feeds | None) -> _Gate:
        source = VALIDATION_DATA if request.validation_data is not None else CALIBRATION
        samples, sample_source = make_samples(
            converted.inputs, count=request.thresholds.samples, calibration=data, source=source
        )
        fixed = {s.shape[0] for s in converted.inputs if s.shape and s.shape[0] > 0}
        fixed_batch = len(fixed) == 1
        batch = fixed.pop() if fixed_batch else MAX_BATCH
        reference = converted.reference or onnx_tools.runner(converted.onnx_path)
        try:
            outputs = run_batched(reference, samples, batch=batch, fixed=fixed_batch)
        except Exception as exc:
            raise _run_failed(sample_source, exc) from None
        return cls(
            converted=converted,
            samples=samples,
            source=sample_source,
            reference_outputs=outputs,
            batch=batch,
            fixed_batch=fixed_batch,
        )

    def judge(self, model: Path, *, request: ConvertRequest) -> tuple[ValidationReport, Batching]:
        """The gate's report on `model` (passed or not) and its batching verdict."""
        try:
            candidate = onnx_tools.runner(model)
        except Exception as exc:
            failed = (
                QuantizationFailed if request.quantize is not Quantize.NONE else OptimizationFailed
            )
            raise failed(
                f"the {request.quantize.value}/{request.level.value} model does not load in "
                f"onnxruntime: {_first_line(exc)}; try another --quantize or --level basic"
            ) from None
        _, outputs = onnx_tools.io_info(model)
        try:
            report = evaluate(
                reference_outputs=self.reference_outputs,
                reference_name=self.converted.reference_name,
                candidate=candidate,
                output_names=[o.name for o in outputs],
                samples=self.samples,
                sample_source=self.source,
                thresholds=request.thresholds,
                batch=self.batch,
                fixed_batch=self.fixed_batch,
            )
        except PipelineError:
            raise
        except Exception as exc:
            raise _run_failed(self.source, exc) from None
        del candidate  # its session: the batch check loads the model again (bench/large)
        return report, batch_check.check(model, self.samples)


def _run_failed(sample_source: str, exc: Exception) -> ValidationFailed:
    return ValidationFailed(
        f"running the models on {sample_source} samples failed: {_first_line(exc)}; "
        "give --calibration with real inputs (generated ones may be out of range, e.g. "
        "token ids)"
    )
