"""The one error tree of the model pipeline.

Every failure of `ondeck-server convert` is raised as exactly one of these classes; each
class maps to exactly one condition reason (the string the operator puts into the
ModelDeployment's `ArtifactReady` condition) and carries a message that says what was
wrong and what to do about it. Foreign errors (httpx, botocore, onnx, onnxruntime, torch,
skl2onnx, OSError) are mapped to the most specific class where they are caught; they
never leave the pipeline unwrapped.

    PipelineError
    ├── InvalidSettings      settings that cannot work: bad --inputs, int8-static without
    │                        --calibration, a torch model without --inputs, ...
    ├── FetchFailed          the source could not be read: 404/403, unreachable, too large,
    │                        missing credentials, a missing optional extra
    ├── ChecksumMismatch     the fetched bytes do not match --sha256
    ├── UnsupportedFormat    none of onnx / pytorch / sklearn, or not the --format given
    ├── UnsafeModel          a pickle without --allow-unsafe-pickle, or skops types outside sklearn
    ├── ConversionFailed     the source framework or the ONNX exporter refused the model
    ├── OptimizationFailed   onnxruntime could not optimize the graph at the level asked
    ├── QuantizationFailed   onnxruntime's quantizer (or the fp16 converter) failed
    ├── ValidationFailed     the final model's answers are too far from the original's
    ├── StoreFailed          the artifact could not be written: disk full, read-only, permissions
    └── InternalError        a bug in ondeck: an error no other class explains

This module only defines the errors; it does not catch anything.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class Reason(StrEnum):
    """Condition reasons for a failed conversion (the operator copies them verbatim)."""

    INVALID_SETTINGS = "InvalidSettings"
    FETCH_FAILED = "FetchFailed"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    UNSUPPORTED_FORMAT = "UnsupportedFormat"
    UNSAFE_MODEL = "UnsafeModel"
    CONVERTER_MISSING = "ConverterMissing"
    CONVERSION_FAILED = "ConversionFailed"
    OPTIMIZATION_FAILED = "OptimizationFailed"
    QUANTIZATION_FAILED = "QuantizationFailed"
    VALIDATION_FAILED = "ValidationFailed"
    STORE_FAILED = "StoreFailed"
    INTERNAL_ERROR = "InternalError"


class PipelineError(Exception):
    """Base class: a conversion failed for a reason the user can act on."""

    reason: ClassVar[Reason]

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        """Structured facts about the failure (e.g. the validation report), for logs."""

    def one_line(self) -> str:
        """`ErrorType: message` on a single line, as the CLI prints it."""
        text = " ".join(self.message.split())
        return f"{type(self).__name__}: {text}"


class InvalidSettings(PipelineError):
    reason = Reason.INVALID_SETTINGS


class FetchFailed(PipelineError):
    reason = Reason.FETCH_FAILED


class ChecksumMismatch(PipelineError):
    reason = Reason.CHECKSUM_MISMATCH


class UnsupportedFormat(PipelineError):
    reason = Reason.UNSUPPORTED_FORMAT


class UnsafeModel(PipelineError):
    reason = Reason.UNSAFE_MODEL


class ConverterMissing(PipelineError):
    """The model's framework needs a converter this image or environment lacks."""

    reason = Reason.CONVERTER_MISSING


class ConversionFailed(PipelineError):
    reason = Reason.CONVERSION_FAILED


class OptimizationFailed(PipelineError):
    reason = Reason.OPTIMIZATION_FAILED


class QuantizationFailed(PipelineError):
    reason = Reason.QUANTIZATION_FAILED


class ValidationFailed(PipelineError):
    reason = Reason.VALIDATION_FAILED


class StoreFailed(PipelineError):
    reason = Reason.STORE_FAILED


class InternalError(PipelineError):
    reason = Reason.INTERNAL_ERROR


ALL_ERRORS: tuple[type[PipelineError], ...] = (
    InvalidSettings,
    FetchFailed,
    ChecksumMismatch,
    UnsupportedFormat,
    UnsafeModel,
    ConversionFailed,
    OptimizationFailed,
    QuantizationFailed,
    ValidationFailed,
    StoreFailed,
    InternalError,
)
