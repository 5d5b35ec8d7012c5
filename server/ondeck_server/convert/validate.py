"""The accuracy gate: run the original model (the source framework, or the FP32 ONNX
model for ONNX sources) and the final model on the same samples and compare.

Per output: the largest absolute difference, the cosine similarity of each sample's
output vector (mean and minimum over samples; the gate uses the mean), and for
classifier-like outputs the top-1 agreement. Classifier-like means an integer label
output, or a float `[N, C]` output with 2 ≤ C ≤ 100 classes, or one named like
`logits`/`probabilities`/`scores`. An argmax tie in the reference counts as agreement.

Samples come from the calibration arrays when given (real data: best), else they are
generated from the input spec (floats ~ N(0, 1), integers in [0, 100), booleans),
seeded, so a rerun validates on the same data. Pure functions apart from running the
two models; this module does not write anything.
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


class Thresholds(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    samples: int = Field(default=64, ge=1, le=100_000)
    min_cosine: float = Field(default=0.99, ge=-1.0, le=1.0, serialization_alias="minCosine")
    max_top1_disagreement: float = Field(
        default=0.01, ge=0.0, le=1.0, serialization_alias="maxTop1Disagreement"
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
        serialization_alias="sampleSource", description="calibration or generated"
    )
    outputs: list[OutputReport]
    cosine: float | None = Field(description="the lowest mean cosine over the outputs")
    top1_disagreement: float | None = Field(serialization_alias="top1Disagreement")
    min_cosine: float = Field(serialization_alias="minCosine")
    max_top1_disagreement: float = Field(serialization_alias="maxTop1Disagreement")
    passed: bool


def check_calibration(inputs: list[InputSpec], calibration: Feeds) -> None:
    """Every model input needs an array of samples, named after it."""
    missing = [s.name for s in inputs if s.name not in calibration]
    if missing:
        raise InvalidSettings(
            f"--calibration has no array for input(s) {', '.join(missing)}; it holds "
            f"{', '.join(sorted(calibration)) or 'nothing'}: name the arrays after the inputs"
        )
    for spec in inputs:
        array = calibration[spec.name]
        if array.ndim != len(spec.shape) or any(
            d != -1 and d != a for d, a in zip(spec.shape[1:], array.shape[1:], strict=False)
        ):
            raise InvalidSettings(
                f"--calibration array {spec.name!r} has shape {list(array.shape)}, the input "
                f"is {spec.shape}; give samples along the first dimension"
            )


def make_samples(
    inputs: list[InputSpec], *, count: int, calibration: Feeds | None, seed: int = 0
) -> tuple[Feeds, str]:
    """`count` samples per input (fewer when the calibration set is smaller)."""
    if calibration is not None:
        check_calibration(inputs, calibration)
        rows = min(min(len(calibration[s.name]) for s in inputs), count)
        feeds = {
            s.name: np.ascontiguousarray(calibration[s.name][:rows]).astype(
                s.dtype.numpy, copy=False
            )
            for s in inputs
        }
        return feeds, "calibration"
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
    return feeds, "generated"


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


def validate(
    *,
    reference: Runner,
    reference_name: str,
    candidate: Runner,
    output_names: list[str],
    samples: Feeds,
    sample_source: str,
    thresholds: Thresholds,
    batch: int = MAX_BATCH,
    fixed_batch: bool = False,
    gentler: str = GENTLER,
) -> ValidationReport:
    """Compare the two models; raise ValidationFailed (with the report) below the gate;
    `gentler` is the advice its message gives."""
    ref_out = run_batched(reference, samples, batch=batch, fixed=fixed_batch)
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
    if not report.passed:
        raise ValidationFailed(
            gate_message(report, gentler=gentler),
            details=report.model_dump(mode="json", by_alias=True),
        )
    return report


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
