"""The accuracy gate: run the original model (the source framework, or the FP32 ONNX
model for ONNX sources) and the final model on the same samples and compare.

Per output: the largest absolute difference, the cosine similarity of each sample's
output vector (mean and minimum over samples; the gate uses the mean), and for
classifier-like outputs the top-1 agreement. Classifier-like means an integer label
output, or a float `[N, C]` output with 2 ≤ C ≤ 100 classes, or one named like
`logits`/`probabilities`/`scores`. An argmax tie in the reference counts as agreement.

Samples come from `--validation-data`, else the calibration arrays (real data: best),
else they are generated from the input spec (floats ~ N(0, 1), integers in [0, 100),
booleans), seeded, so a rerun validates on the same data. The report says which, and
warns when the original's answers on them cannot tell a good model from a bad one (one
class for every sample, or outputs that barely move). Pure functions apart from running
the two models; this module does not write anything.

The default thresholds and their statistics: docs/conversion.md#the-validation-gate.
"""

from __future__ import annotations

import math
import re

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ondeck_server.convert.errors import InvalidSettings, ValidationFailed
from ondeck_server.convert.inputs_spec import DType, InputSpec
from ondeck_server.convert.onnx_tools import Feeds, Runner

DYNAMIC_DIM = 16
MAX_BATCH = 32
_CLASSIFIER_NAME = re.compile(r"logit|prob|score|class", re.IGNORECASE)
#: What a refused model's message suggests, unless the caller knows better.
GENTLER = "use a gentler --quantize (int8-static with --calibration, fp16, none)"


#: The default top-1 bound. Flips of n samples are Binomial(n, p) for a model whose true
#: disagreement is p; at the default 64 samples 0.04 allows 2 flips (2/64 = 0.031,
#: 3/64 = 0.047), so a model that truly disagrees on 1 % of inputs passes with
#: probability 0.973 and one that disagrees on 10 % fails with probability 0.961. The old
#: 0.01 allowed no flip: a 1 %-model failed 47 % of the time, on chance alone.
DEFAULT_MAX_TOP1_DISAGREEMENT = 0.04
DEFAULT_SAMPLES = 64
#: Sample sources, in the order they are preferred.
VALIDATION_DATA = "validation data"
CALIBRATION = "calibration"
GENERATED = "generated"
#: Outputs whose spread over the samples is below this share of their magnitude are
#: "about constant": nothing a candidate does to them can show.
_CONSTANT_SPREAD = 1e-3


class Thresholds(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    samples: int = Field(default=DEFAULT_SAMPLES, ge=1, le=100_000)
    min_cosine: float = Field(default=0.99, ge=-1.0, le=1.0, serialization_alias="minCosine")
    max_top1_disagreement: float = Field(
        default=DEFAULT_MAX_TOP1_DISAGREEMENT,
        ge=0.0,
        le=1.0,
        serialization_alias="maxTop1Disagreement",
    )


class OutputReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str
    max_abs_diff: float | None = Field(default=None, serialization_alias="maxAbsDiff")
    cosine_mean: float | None = Field(default=None, serialization_alias="cosineMean")
    cosine_min: float | None = Field(default=None, serialization_alias="cosineMin")
    top1_agreement: float | None = Field(default=None, serialization_alias="top1Agreement")


class ValidationReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    reference: str = Field(description="what the final model was compared with")
    samples: int
    sample_source: str = Field(
        serialization_alias="sampleSource",
        description="validation data, calibration or generated",
    )
    outputs: list[OutputReport]
    cosine: float | None = Field(description="the lowest mean cosine over the outputs")
    top1_disagreement: float | None = Field(serialization_alias="top1Disagreement")
    min_cosine: float = Field(serialization_alias="minCosine")
    max_top1_disagreement: float = Field(serialization_alias="maxTop1Disagreement")
    passed: bool
    warnings: list[str] = Field(
        default_factory=list,
        description="why the figures may mean less than they seem (generated or degenerate inputs)",
    )


_FLAG_OF_SOURCE = {CALIBRATION: "--calibration", VALIDATION_DATA: "--validation-data"}


def check_calibration(
    inputs: list[InputSpec], calibration: Feeds, *, flag: str = "--calibration"
) -> None:
    """Every model input needs an array of samples, named after it (`flag`: the file's
    option, for the message)."""
    missing = [s.name for s in inputs if s.name not in calibration]
    if missing:
        raise InvalidSettings(
            f"{flag} has no array for input(s) {', '.join(missing)}; it holds "
            f"{', '.join(sorted(calibration)) or 'nothing'}: name the arrays after the inputs"
        )
    for spec in inputs:
        array = calibration[spec.name]
        if array.ndim != len(spec.shape) or any(
            d != -1 and d != a for d, a in zip(spec.shape[1:], array.shape[1:], strict=False)
        ):
            raise InvalidSettings(
                f"{flag} array {spec.name!r} has shape {list(array.shape)}, the input "
                f"is {spec.shape}; give samples along the first dimension"
            )


def make_samples(
    inputs: list[InputSpec],
    *,
    count: int,
    calibration: Feeds | None,
    seed: int = 0,
    source: str = CALIBRATION,
) -> tuple[Feeds, str]:
    """`count` samples per input (fewer when the given set is smaller): the first rows of
    `calibration` (real inputs, named `source` in the report) when given, else generated."""
    if calibration is not None:
        check_calibration(inputs, calibration, flag=_FLAG_OF_SOURCE.get(source, "--calibration"))
        rows = min(min(len(calibration[s.name]) for s in inputs), count)
        feeds = {
            s.name: np.ascontiguousarray(calibration[s.name][:rows]).astype(
                s.dtype.numpy, copy=False
            )
            for s in inputs
        }
        return feeds, source
    generator = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = [
            count if i == 0 and d == -1 else (DYNAMIC_DIM if d == -1 else d)
            for i, d in enumerate(spec.shape)
        ]
        if spec.dtype in (DType.FLOAT32, DType.FLOAT16, DType.FLOAT64):
            feeds[spec.name] = generator.standard_normal(shape).astype(spec.dtype.numpy)
        elif spec.dtype is DType.BOOL:
            feeds[spec.name] = generator.integers(0, 2, shape).astype(np.bool_)
        else:
            feeds[spec.name] = generator.integers(0, 100, shape).astype(spec.dtype.numpy)
    return feeds, GENERATED


def run_batched(run: Runner, feeds: Feeds, *, batch: int, fixed: bool = False) -> list[np.ndarray]:
    """Run `run` over `feeds` in chunks of `batch` rows and concatenate the outputs.
    A model with a `fixed` batch size cannot take a short last chunk: it is dropped."""
    rows = min(len(v) for v in feeds.values())
    if fixed:
        rows = max(batch, rows - rows % batch)
    parts: list[list[np.ndarray]] = []
    for start in range(0, rows, batch):
        chunk = {k: v[start : start + batch] for k, v in feeds.items()}
        parts.append(run(chunk))
    return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]


def compare_output(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputReport:
    if reference.shape[0] != candidate.shape[0]:
        raise ValidationFailed(
            f"output {name!r} has {candidate.shape[0]} rows, the original {reference.shape[0]}; "
            "the converted model is broken"
        )
    rows = reference.shape[0]
    if not (np.issubdtype(reference.dtype, np.number) or reference.dtype == np.bool_):
        agreement = float(np.mean(reference.reshape(rows, -1) == candidate.reshape(rows, -1)))
        return OutputReport(name=name, top1_agreement=agreement)
    ref = reference.reshape(rows, -1).astype(np.float64)
    cand = candidate.reshape(rows, -1).astype(np.float64)
    if ref.shape != cand.shape:
        raise ValidationFailed(
            f"output {name!r} has shape {candidate.shape}, the original {reference.shape}; "
            "the converted model is broken"
        )
    if np.issubdtype(reference.dtype, np.integer) or reference.dtype == np.bool_:
        # Labels: exact agreement is the metric.
        agreement = float(np.mean(np.all(ref == cand, axis=1)))
        return OutputReport(name=name, max_abs_diff=_max_abs(ref, cand), top1_agreement=agreement)
    cosines = _cosines(ref, cand)
    report = OutputReport(
        name=name,
        max_abs_diff=_max_abs(ref, cand),
        cosine_mean=float(np.mean(cosines)),
        cosine_min=float(np.min(cosines)),
    )
    if _classifier_like(name, ref):
        report.top1_agreement = _top1_agreement(ref, cand)
    return report


def _max_abs(ref: np.ndarray, cand: np.ndarray) -> float:
    if ref.size == 0:
        return 0.0
    diff = np.abs(ref - cand)
    return float("inf") if np.isnan(diff).any() else float(diff.max())


def _cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    dot = np.sum(ref * cand, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(cand, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    cos = np.where(both_zero, 1.0, cos)
    return np.nan_to_num(cos, nan=-1.0)


def _classifier_like(name: str, ref: np.ndarray) -> bool:
    classes = ref.shape[1]
    if classes < 2:
        return False
    return classes <= 100 or bool(_CLASSIFIER_NAME.search(name))


def _top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    picked = np.argmax(cand, axis=1)
    best = ref.max(axis=1)
    chosen = ref[np.arange(len(ref)), picked]
    tolerance = 1e-6 * np.maximum(1.0, np.abs(best))
    return float(np.mean(chosen >= best - tolerance))


def judge(
    outputs: list[OutputReport],
    *,
    thresholds: Thresholds,
    reference: str,
    samples: int,
    sample_source: str,
) -> ValidationReport:
    cosines = [o.cosine_mean for o in outputs if o.cosine_mean is not None]
    agreements = [o.top1_agreement for o in outputs if o.top1_agreement is not None]
    cosine = min(cosines) if cosines else None
    disagreement = max(1.0 - a for a in agreements) if agreements else None
    passed = (cosine is None or cosine >= thresholds.min_cosine) and (
        disagreement is None or disagreement <= thresholds.max_top1_disagreement + 1e-12
    )
    if cosine is not None and math.isnan(cosine):
        passed = False
    return ValidationReport(
        reference=reference,
        samples=samples,
        sample_source=sample_source,
        outputs=outputs,
        cosine=cosine,
        top1_disagreement=disagreement,
        min_cosine=thresholds.min_cosine,
        max_top1_disagreement=thresholds.max_top1_disagreement,
        passed=passed,
    )


def sample_warnings(
    reference_outputs: list[np.ndarray], output_names: list[str], *, sample_source: str
) -> list[str]:
    """Why a passing gate may mean little: generated inputs, and inputs on which the
    original's answers do not vary (one class for all, or a constant output): there a
    broken model and a good one look the same."""
    warnings: list[str] = []
    if sample_source == GENERATED:
        warnings.append(
            "judged on generated inputs (floats ~ N(0, 1), integers in [0, 100)), not real "
            "data; give --validation-data (or --calibration) with real inputs"
        )
    for name, ref in zip(output_names, reference_outputs, strict=False):
        rows = ref.shape[0] if ref.ndim else 0
        if rows < 2 or not (np.issubdtype(ref.dtype, np.number) or ref.dtype == np.bool_):
            continue
        flat = ref.reshape(rows, -1)
        if flat.shape[1] == 0:
            continue
        if np.issubdtype(ref.dtype, np.integer) or ref.dtype == np.bool_:
            picks = {tuple(row) for row in flat.tolist()}
            if len(picks) == 1:
                warnings.append(
                    f"the original gives the same {name!r} for all {rows} {sample_source} "
                    "samples: agreement on it says nothing"
                )
            continue
        values = flat.astype(np.float64)
        if not np.isfinite(values).all():
            continue
        if _classifier_like(name, values):
            classes = np.unique(np.argmax(values, axis=1))
            if len(classes) == 1:
                warnings.append(
                    f"the original predicts class {int(classes[0])} of {name!r} for all "
                    f"{rows} {sample_source} samples: top-1 agreement says nothing"
                )
                continue
        spread = float(np.max(np.std(values, axis=0)))
        scale = float(np.max(np.abs(values)))
        if spread <= _CONSTANT_SPREAD * max(scale, 1e-12):
            warnings.append(
                f"the original's {name!r} is about constant over the {rows} {sample_source} "
                "samples: the gate cannot see a change"
            )
    return warnings


def evaluate(
    *,
    reference_outputs: list[np.ndarray],
    reference_name: str,
    candidate: Runner,
    output_names: list[str],
    samples: Feeds,
    sample_source: str,
    thresholds: Thresholds,
    batch: int = MAX_BATCH,
    fixed_batch: bool = False,
) -> ValidationReport:
    """The report of `candidate` against the original's outputs on `samples` (already
    computed, so several candidates are compared with one run of the original); does not
    raise when the gate fails, only when the outputs do not match up at all."""
    ref_out = reference_outputs
    cand_out = run_batched(candidate, samples, batch=batch, fixed=fixed_batch)
    if len(ref_out) != len(cand_out) or len(cand_out) != len(output_names):
        raise ValidationFailed(
            f"the final model has {len(cand_out)} outputs, the original {len(ref_out)}; "
            "the conversion is broken"
        )
    reports = [
        compare_output(name, r, c)
        for name, r, c in zip(output_names, ref_out, cand_out, strict=True)
    ]
    report = judge(
        reports,
        thresholds=thresholds,
        reference=reference_name,
        samples=len(ref_out[0]) if ref_out else 0,
        sample_source=sample_source,
    )
    report.warnings = sample_warnings(ref_out, output_names, sample_source=sample_source)
    return report


def refuse(report: ValidationReport, *, gentler: str = GENTLER) -> None:
    """Raise ValidationFailed (with the report) when `report` is below the gate;
    `gentler` is the advice its message gives."""
    if not report.passed:
        raise ValidationFailed(
            gate_message(report, gentler=gentler),
            details=report.model_dump(mode="json", by_alias=True),
        )


def gate_figures(report: ValidationReport) -> str:
    """The gate's figures for a person: 4 decimals, and only those the model has (a
    regression model has no top-1)."""
    parts = []
    if report.cosine is not None:
        parts.append(f"cosine {report.cosine:.4f}")
    if report.top1_disagreement is not None:
        parts.append(f"top-1 disagreement {report.top1_disagreement:.4f}")
    return ", ".join(parts) or "outputs compared"


def _below(value: float, bound: float) -> str:
    """`value` with 4 decimals, or as many more as it takes not to read as `bound`
    ("cosine 1.0000 < 1.0" said nothing)."""
    for digits in range(4, 13):
        text = f"{value:.{digits}f}"
        if float(text) < bound:
            return text
    return repr(value)


def gate_message(report: ValidationReport, *, gentler: str = GENTLER) -> str:
    """Why the gate refused the model, and what to do."""
    parts: list[str] = []
    if report.cosine is not None and report.cosine < report.min_cosine:
        parts.append(
            f"cosine {_below(report.cosine, report.min_cosine)} < --min-cosine {report.min_cosine}"
        )
    disagreement = report.top1_disagreement
    if disagreement is not None and disagreement > report.max_top1_disagreement:
        parts.append(
            f"top-1 disagreement {disagreement:.4f} > --max-top1-disagreement "
            f"{report.max_top1_disagreement}"
        )
    what = "; ".join(parts) or "non-finite outputs"
    return (
        f"the final model disagrees with the original ({report.reference}) on "
        f"{report.samples} {report.sample_source} samples: {what}. Nothing was published; "
        f"{gentler} or, if this loss is acceptable, relax the threshold"
    )
