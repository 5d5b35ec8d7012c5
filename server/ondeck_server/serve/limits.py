"""Size bounds a request must meet before any array is built or the model runs.

A request's own bytes say little about the memory it costs: a V2 input of shape
`[1099511627776, 0]` has no elements and arrives in 91 bytes, yet a model whose output is
`[batch, 384]` would allocate 2^40 rows for it. So every input dimension, every input's
element count, and the element count of every output the model would produce are bounded
by one limit (`--max-tensor-elements`). An output dimension named like an input
dimension takes that input's size; any other dynamic output dimension is assumed as large
as the largest dimension of the request, which over-estimates rather than under.

Pure: shapes in, `InvalidInput` out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ondeck_server.serve.errors import InvalidInput
from ondeck_server.serve.runtime import TensorSpec


def check_input_shape(name: str, shape: Sequence[int], limit: int) -> None:
    """Refuse an input whose dimensions or element count exceed `limit`."""
    for axis, dim in enumerate(shape):
        if dim > limit:
            raise InvalidInput(
                f"input {name!r}: dimension {axis} is {dim}, over this server's limit of"
                f" {limit} elements (--max-tensor-elements)"
            )
    count = math.prod(max(d, 1) for d in shape)
    if count > limit:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} has {count} elements, over this server's"
            f" limit of {limit} (--max-tensor-elements)"
        )


def check_output_sizes(
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    shapes: Mapping[str, Sequence[int]],
    limit: int,
) -> None:
    """Refuse a request for which some output of the model would exceed `limit` elements."""
    named: dict[str, int] = {}
    largest, largest_input = 1, next(iter(shapes), "")
    for spec in inputs:
        shape = shapes.get(spec.name)
        if shape is None:
            continue
        for axis, dim in enumerate(shape):
            if dim > largest:
                largest, largest_input = dim, spec.name
            if axis < len(spec.dim_names) and spec.dim_names[axis]:
                key = spec.dim_names[axis] or ""
                named[key] = max(named.get(key, 1), dim)
    for out in outputs:
        sizes = []
        for axis, dim in enumerate(out.shape):
            if dim >= 0:
                sizes.append(dim)
                continue
            dim_name = out.dim_names[axis] if axis < len(out.dim_names) else None
            sizes.append(named.get(dim_name or "", largest))
        count = math.prod(max(d, 1) for d in sizes)
        if count > limit:
            raise InvalidInput(
                f"input {largest_input!r}: for this request the model's output {out.name!r}"
                f" could hold {count} elements, over this server's limit of {limit}"
                " (--max-tensor-elements); send smaller dimensions"
            )
