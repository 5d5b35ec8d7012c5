"""The model pipeline behind `ondeck-server convert`: fetch a model, convert it to ONNX,
optimize and quantize it with onnxruntime, check it still gives the original's answers,
and publish a content-addressed artifact (see ondeck_server.artifact).

It knows nothing about Kubernetes and never imports the HTTP server. Heavy libraries
(torch, skl2onnx, onnxruntime.quantization) are imported only by the stage that needs
them, so importing this package is cheap.
"""

from ondeck_server.convert.errors import (
    ChecksumMismatch,
    ConversionFailed,
    ConverterMissing,
    FetchFailed,
    InternalError,
    InvalidSettings,
    OptimizationFailed,
    PipelineError,
    QuantizationFailed,
    Reason,
    StoreFailed,
    UnsafeModel,
    UnsupportedFormat,
    ValidationFailed,
)
from ondeck_server.convert.fetch import FetchSettings
from ondeck_server.convert.formats import Format
from ondeck_server.convert.inputs_spec import DType, InputSpec, parse_inputs
from ondeck_server.convert.optimize import OptimizationLevel
from ondeck_server.convert.quantize import Quantize
from ondeck_server.convert.run import ConvertRequest, Events, Outcome, RemoteStore, convert
from ondeck_server.convert.validate import Thresholds

__all__ = [
    "ChecksumMismatch",
    "ConversionFailed",
    "ConvertRequest",
    "ConverterMissing",
    "DType",
    "Events",
    "FetchFailed",
    "FetchSettings",
    "Format",
    "InputSpec",
    "InternalError",
    "InvalidSettings",
    "OptimizationFailed",
    "OptimizationLevel",
    "Outcome",
    "PipelineError",
    "QuantizationFailed",
    "Quantize",
    "Reason",
    "RemoteStore",
    "StoreFailed",
    "Thresholds",
    "UnsafeModel",
    "UnsupportedFormat",
    "ValidationFailed",
    "convert",
    "parse_inputs",
]
