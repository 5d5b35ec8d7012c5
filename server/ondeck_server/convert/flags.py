"""The one table of `ondeck-server convert`'s flags: name, type, default, bounds, help.

Each flag also reads the environment variable `ONDECK_` + its name in upper case with
`_` for `-` (`--min-cosine` → `ONDECK_MIN_COSINE`), derived in one place (`env_var`).
cli.py builds the typer command from this table; the operator's render/args.py writes
argv against it (tests/contract pins that every flag the operator writes is listed here).
Value parsing that needs the pipeline (inputs, sha256, store and ref syntax) is done by
callbacks the CLI attaches by flag name; this module imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ondeck_server.convert.fetch import DEFAULT_DEADLINE_S, DEFAULT_MAX_BYTES
from ondeck_server.convert.formats import Format
from ondeck_server.convert.optimize import OptimizationLevel
from ondeck_server.convert.quantize import INT4_BLOCK_SIZES, Int4Settings, Quantize
from ondeck_server.convert.validate import Thresholds

#: "Required": the flag has no default and must be given (or its variable set).
REQUIRED: Any = ...

_THRESHOLDS = Thresholds()
_INT4 = Int4Settings()


@dataclass(frozen=True)
class Flag:
    """One option of `ondeck-server convert`. `param` is the Python parameter name."""

    param: str
    flag: str
    type: Any
    default: Any
    help: str
    min: float | None = None
    max: float | None = None

    @property
    def env_var(self) -> str:
        return "ONDECK_" + self.flag.removeprefix("--").upper().replace("-", "_")


FLAGS: tuple[Flag, ...] = (
    Flag(
        "source",
        "--source",
        str,
        REQUIRED,
        "file://, path, http(s)://, s3://, gs://, hf://, pvc://claim/path",
    ),
    Flag(
        "store",
        "--store",
        str,
        REQUIRED,
        "Artifact store: a folder, or s3://bucket/prefix (built in a temporary folder, "
        "then uploaded; credentials from ONDECK_STORE_AWS_* or AWS_*).",
    ),
    Flag("fmt", "--format", Format | None, None, "Inferred from the file when omitted."),
    Flag(
        "sha256",
        "--sha256",
        str | None,
        None,
        "Checked against the fetched bytes before anything else.",
    ),
    Flag(
        "inputs",
        "--inputs",
        str | None,
        None,
        # rich markup: "\\[" is a literal bracket.
        "name:dtype:\\[d0,...] entries separated by ';', -1 = a dynamic dimension.",
    ),
    Flag(
        "level",
        "--level",
        OptimizationLevel,
        OptimizationLevel.BASIC,
        "onnxruntime graph optimization saved offline; basic is hardware independent.",
    ),
    Flag(
        "quantize",
        "--quantize",
        Quantize,
        Quantize.NONE,
        "int8 (dynamic), int8-static (needs --calibration), fp16 (FP32 inputs/outputs "
        "kept), int4 (weight-only 4-bit MatMul), auto (each that applies, judged and timed "
        "here; the fastest that passes the gate).",
    ),
    Flag(
        "int4_block_size",
        "--int4-block-size",
        int,
        _INT4.block_size,
        "int4: weights of a column sharing one scale ("
        + ", ".join(map(str, INT4_BLOCK_SIZES))
        + "); smaller is more accurate and bigger.",
        min=INT4_BLOCK_SIZES[0],
        max=INT4_BLOCK_SIZES[-1],
    ),
    Flag(
        "int4_accuracy_level",
        "--int4-accuracy-level",
        int,
        _INT4.accuracy_level,
        "int4: MatMul compute type, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations.",
        min=1,
        max=4,
    ),
    Flag("calibration", "--calibration", str | None, None, "An .npz of input arrays."),
    Flag(
        "validation_data",
        "--validation-data",
        str | None,
        None,
        "An .npz of real inputs the gate judges on (fetched like the source); default: "
        "--calibration, else generated inputs.",
    ),
    Flag(
        "validation_samples",
        "--validation-samples",
        int,
        _THRESHOLDS.samples,
        "Samples the final model is compared with the original on.",
        min=1,
    ),
    Flag(
        "min_cosine",
        "--min-cosine",
        float,
        _THRESHOLDS.min_cosine,
        "Lowest acceptable mean cosine similarity to the original's outputs.",
        min=-1.0,
        max=1.0,
    ),
    Flag(
        "max_top1_disagreement",
        "--max-top1-disagreement",
        float,
        _THRESHOLDS.max_top1_disagreement,
        "Highest acceptable share of changed top-1 predictions (classifier outputs).",
        min=0.0,
        max=1.0,
    ),
    Flag(
        "allow_unsafe_pickle",
        "--allow-unsafe-pickle",
        bool,
        False,
        "Load joblib/pickle files (runs code from the file).",
    ),
    Flag(
        "s3_endpoint_url",
        "--s3-endpoint-url",
        str | None,
        None,
        "S3-compatible store; credentials from the AWS_* environment variables.",
    ),
    Flag(
        "store_endpoint_url",
        "--store-endpoint-url",
        str | None,
        None,
        "Endpoint of an s3:// --store; default: --s3-endpoint-url.",
    ),
    Flag("pvc_root", "--pvc-root", Path | None, None, "Where pvc://claim/path claims are mounted."),
    Flag("ref", "--ref", str | None, None, "Also point <store>/refs/NAME at the artifact."),
    Flag(
        "termination_log",
        "--termination-log",
        Path | None,
        None,
        "Gets the error line on failure, the JSON summary (<= 4 KiB) on success.",
    ),
    Flag(
        "max_download_bytes",
        "--max-download-bytes",
        int,
        DEFAULT_MAX_BYTES,
        "Refuse downloads larger than this.",
        min=1,
    ),
    Flag(
        "fetch_timeout",
        "--fetch-timeout",
        float,
        DEFAULT_DEADLINE_S,
        "Seconds the whole download may take, however steadily bytes arrive.",
        min=1.0,
    ),
    Flag(
        "max_tensor_bytes",
        "--max-tensor-bytes",
        int | None,
        None,
        "Refuse an ONNX graph that declares a larger tensor (default: 4 GiB, or a "
        "quarter of the memory limit).",
        min=1,
    ),
    Flag(
        "max_unpacked_bytes",
        "--max-unpacked-bytes",
        int | None,
        None,
        "Refuse a zip-based model or calibration file that unpacks to more (default: "
        "4 GiB, or a quarter of the memory limit).",
        min=1,
    ),
)

BY_PARAM: dict[str, Flag] = {f.param: f for f in FLAGS}
BY_FLAG: dict[str, Flag] = {f.flag: f for f in FLAGS}

__all__ = ["BY_FLAG", "BY_PARAM", "FLAGS", "REQUIRED", "Flag"]
