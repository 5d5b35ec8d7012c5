"""Is the final model batch independent? (see ondeck_server.artifact.batching)

Two kinds of evidence, both recorded in the manifest:
- operators that make a row depend on its batch: DynamicQuantize* (one activation scale
  per batch: what `--quantize int8` inserts), reductions and normalizations whose axes
  include dimension 0 (or all dimensions), batch normalization in training mode;
- an empirical check on the validation samples: the first rows run as one batch and
  then one by one must give the same outputs (within float tolerance).
A model is independent only when both find nothing. This module reads the graph and runs
the model; it writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ondeck_server.artifact.batching import (
    CHECK_ROWS,
    Batching,
    Finding,
    Reason,
    row_dependence,
)
from ondeck_server.convert import onnx_tools
from ondeck_server.convert.onnx_tools import Feeds

# Operators with an `axis` (one axis) and the default when the attribute is absent.
_AXIS_OPS = {
    "ArgMax": 0,
    "ArgMin": 0,
    "CumSum": None,  # the axis is input 1 (handled apart)
    "Hardmax": -1,
    "LogSoftmax": -1,
    "Softmax": -1,
    "LpNormalization": -1,
    "LayerNormalization": -1,  # normalizes over axis..rank-1
    "TopK": -1,
}
# Operators with `axes` (a list) and the default when absent: None = all axes.
_AXES_OPS = {
    "ReduceL1": None,
    "ReduceL2": None,
    "ReduceLogSum": None,
    "ReduceLogSumExp": None,
    "ReduceMax": None,
    "ReduceMean": None,
    "ReduceMin": None,
    "ReduceProd": None,
    "ReduceSum": None,
    "ReduceSumSquare": None,
    "MeanVarianceNormalization": (0, 2, 3),
}


def check(model: Path, samples: Feeds) -> Batching:
    """The verdict for the model at `model`, with `samples` (rows along dim 0) for the
    empirical check."""
    import onnx

    inputs, outputs = onnx_tools.io_info(model)
    if not all(t.shape and t.shape[0] == -1 for t in [*inputs, *outputs]):
        return Batching(
            independent=False,
            findings=[
                Finding(
                    reason=Reason.NO_BATCH_DIMENSION,
                    detail="not every input and output has a dynamic first (batch) dimension",
                )
            ],
        )
    # The graph only while it is looked at: a model without external data would otherwise
    # be held twice, next to the session below (bench/large).
    findings = operator_findings(onnx.load_model(str(model), load_external_data=False))
    rows = min(CHECK_ROWS, *(len(v) for v in samples.values()))
    if rows >= 2:
        try:
            moved = row_dependence(
                onnx_tools.runner(model),
                {k: v[:rows] for k, v in samples.items()},
                [o.name for o in outputs],
            )
        except Exception as exc:  # onnxruntime's errors: the gate already ran the model
            moved = f"the check could not run the model: {onnx_tools.error_text(exc, 200)}"
        if moved is not None:
            findings.append(Finding(reason=Reason.ROWS_DEPEND_ON_BATCH, detail=moved))
    else:
        findings.append(Finding(reason=Reason.UNCHECKED, detail="fewer than 2 samples"))
    return Batching(independent=not findings, findings=findings, checkedRows=rows)


def operator_findings(model: Any) -> list[Finding]:
    """What in the graph makes rows depend on each other (one finding per op type)."""
    from onnx import numpy_helper
    from onnx.external_data_helper import uses_external_data

    # Axes and shapes are small tensors kept inline; weights in external data (every
    # model past 2 GiB) are neither needed here nor readable without their folder.
    constants = {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if not uses_external_data(t)
    }
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    ranks = _ranks(model)
    found: dict[str, Finding] = {}
    for node in _all_nodes(model.graph):
        if node.op_type.startswith("DynamicQuantize") and node.op_type not in found:
            found[node.op_type] = Finding(
                reason=Reason.DYNAMIC_QUANTIZATION,
                detail=f"{node.op_type} (dynamic int8) computes one scale per batch",
            )
    for node in model.graph.node:
        if node.op_type in found or not _touches_batch_axis(node, constants, ranks):
            continue
        if node.op_type == "BatchNormalization":
            detail = "BatchNormalization in training mode uses the batch's statistics"
        else:
            detail = f"{node.op_type} reduces or normalizes over the batch axis (dim 0)"
        found[node.op_type] = Finding(reason=Reason.REDUCES_OVER_BATCH, detail=detail)
    return list(found.values())


def _all_nodes(graph: Any) -> list[Any]:
    nodes: list[Any] = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.HasField("g"):
                nodes.extend(_all_nodes(attribute.g))
            for sub in attribute.graphs:
                nodes.extend(_all_nodes(sub))
    return nodes


def _ranks(model: Any) -> dict[str, int]:
    """Known ranks of values (shape inference where it works)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # big or unusual models: fall back to the declared values
        inferred = model
    graph = inferred.graph
    ranks: dict[str, int] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            ranks[value.name] = len(tensor_type.shape.dim)
    return ranks


def _attribute(node: Any, name: str) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return None


def _touches_batch_axis(node: Any, constants: dict[str, Any], ranks: dict[str, int]) -> bool:
    op = node.op_type
    rank = ranks.get(node.input[0]) if node.input else None
    if op == "BatchNormalization":
        return bool(_attribute(node, "training_mode"))
    if op in _AXIS_OPS:
        if op == "CumSum":
            axis_value = constants.get(node.input[1]) if len(node.input) > 1 else None
            axes = None if axis_value is None else [int(axis_value.reshape(-1)[0])]
            return axes is not None and _includes_zero(axes, rank)
        given = _attribute(node, "axis")
        axis = int(given) if given is not None else int(_AXIS_OPS[op] or 0)
        if op == "LayerNormalization":  # normalizes over [axis, rank)
            return axis == 0 or (rank is not None and axis == -rank)
        return _includes_zero([axis], rank)
    if op in _AXES_OPS:
        axes = _attribute(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = constants.get(node.input[1])
            if value is None:
                return False  # computed at run time: left to the empirical check
            axes = value.reshape(-1).tolist()
        if axes is None or len(axes) == 0:
            default = _AXES_OPS[op]
            if default is None:
                # Every axis, the batch axis included (unless told to do nothing).
                return not _attribute(node, "noop_with_empty_axes")
            axes = list(default)
        return _includes_zero([int(a) for a in axes], rank)
    return False


def _includes_zero(axes: list[int], rank: int | None) -> bool:
    return any(a == 0 or (rank is not None and a == -rank) for a in axes)
