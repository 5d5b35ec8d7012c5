"""Run onnxruntime-genai's model builder, offline, on a local Hugging Face folder.

`python -m onnxruntime_genai.models.builder -i FOLDER -o OUT -p fp32|int4 -e cpu -c CACHE`
in a child process with `HF_HUB_OFFLINE=1` (the builder never reaches a hub), so a crash
or a leak in the builder cannot take the pipeline with it. int4 is MatMulNBits with
round-to-nearest, `block_size` and `accuracy_level` (`--int4-block-size`, default 32, and
`--int4-accuracy-level`, default 4: int8 activations, as for tensor models) passed as the
builder's extra options.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ondeck_server.convert.errors import ConversionFailed, ConverterMissing
from ondeck_server.convert.quantize import Int4Settings

BUILDER = "onnxruntime_genai.models.builder"
_TAIL = 600


def genai_version() -> str:
    try:
        return metadata.version("onnxruntime-genai")
    except metadata.PackageNotFoundError:
        raise ConverterMissing(
            "language models need onnxruntime-genai, which this image lacks: run the "
            "conversion in the converter image, or pip install 'ondeck[genai]'"
        ) from None


def builder_options(precision: str, int4: Int4Settings | None = None) -> dict[str, Any]:
    """The builder options recorded in the manifest (and part of the digest)."""
    options: dict[str, Any] = {"precision": precision, "executionProvider": "cpu"}
    if precision == "int4":
        int4 = int4 or Int4Settings()
        options["blockSize"] = int4.block_size
        options["accuracyLevel"] = int4.accuracy_level
    return options


def run_builder(
    source: Path, *, out: Path, cache: Path, options: dict[str, Any], timeout_s: float
) -> None:
    """Build `out` (the genai folder) from `source`; ConversionFailed with the builder's
    last words when it fails."""
    argv = [
        sys.executable,
        "-m",
        BUILDER,
        "-i",
        str(source),
        "-o",
        str(out),
        "-p",
        options["precision"],
        "-e",
        options["executionProvider"],
        "-c",
        str(cache),
    ]
    if options["precision"] == "int4":
        argv += [
            "--extra_options",
            f"block_size={options['blockSize']}",
            f"accuracy_level={options['accuracyLevel']}",
        ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(cache / "hf-home"),
        "TQDM_DISABLE": "1",
    }
    try:
        done = subprocess.run(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConversionFailed(
            f"onnxruntime-genai's builder did not finish in {timeout_s:.0f} s"
        ) from None
    log = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        raise ConversionFailed(
            f"onnxruntime-genai's builder failed (exit {done.returncode}): {_last_words(log)}"
        )
    if not (out / "model.onnx").is_file() or not (out / "genai_config.json").is_file():
        raise ConversionFailed(
            f"onnxruntime-genai's builder wrote no model.onnx/genai_config.json: {_last_words(log)}"
        )


def _last_words(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    text = (errors or lines or ["(no output)"])[-1]
    return text[-_TAIL:]
