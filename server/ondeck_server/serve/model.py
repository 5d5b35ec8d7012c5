"""What the HTTP layer knows about the one served model, computed once at load time:
name, version, input/output specs, whether requests can be stacked along a batch
dimension, and the V2 metadata document already serialized.

Pure: built from a `Runtime`'s specs; loads nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from ondeck_server.serve.runtime import TensorSpec
from ondeck_server.serve.settings import DEFAULT_MAX_TENSOR_ELEMENTS

PLATFORM = "onnxruntime_onnx"


def has_batch_dim(specs: tuple[TensorSpec, ...]) -> bool:
    """True when every tensor has a leading dynamic dimension to stack requests along."""
    return bool(specs) and all(len(s.shape) >= 1 and s.shape[0] == -1 for s in specs)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: bound on any input dimension and on the elements of any input or output (limits.py)
    max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS
    by_input: dict[str, TensorSpec] = field(init=False)
    by_output: dict[str, TensorSpec] = field(init=False)
    #: requests can be concatenated along axis 0 and the outputs split back
    batchable: bool = field(init=False)
    metadata_json: bytes = field(init=False)
    input_names: str = field(init=False)
    output_names: str = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: derived fields are set once, here
        set_(self, "by_input", {s.name: s for s in self.inputs})
        set_(self, "by_output", {s.name: s for s in self.outputs})
        set_(self, "batchable", has_batch_dim(self.inputs) and has_batch_dim(self.outputs))
        set_(self, "input_names", ", ".join(repr(s.name) for s in self.inputs))
        set_(self, "output_names", ", ".join(repr(s.name) for s in self.outputs))
        set_(
            self,
            "metadata_json",
            orjson.dumps(
                {
                    "name": self.name,
                    "versions": [self.version],
                    "platform": PLATFORM,
                    "inputs": [s.metadata() for s in self.inputs],
                    "outputs": [s.metadata() for s in self.outputs],
                }
            ),
        )
