"""What every converter returns: the FP32 ONNX file it wrote, the inputs it declared, and
a reference that runs the source model (so validation can compare against the original,
not against our own export). Types only; no logic."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ondeck_server.convert.inputs_spec import InputSpec
from ondeck_server.convert.onnx_tools import Runner


@dataclass(frozen=True)
class Converted:
    onnx_path: Path
    inputs: list[InputSpec]
    reference: Runner | None
    """Runs the source framework on the same feeds, outputs in the ONNX output order;
    None when the source already is ONNX (the FP32 ONNX is then the reference)."""
    reference_name: str
    """What the reference is, for the validation report ("torchscript", "sklearn", ...)."""
