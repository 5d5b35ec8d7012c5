"""Real test models, built on demand and shared by every test folder (and by bench/).

Each `build_*` function writes one ONNX file and returns its path; `reference` runs a
model in-process with onnxruntime, the oracle every server answer is compared with.
torch and scikit-learn are imported inside the builders that need them, so importing
this module is cheap. This module builds models; it does not serve or convert them.

| builder | inputs | outputs | batch dim |
|---|---|---|---|
| `build_mlp` | input FP32 [-1, 256] | logits FP32 [-1, 10] | dynamic |
| `build_cnn` | input FP32 [-1, 3, 32, 32] | logits FP32 [-1, 10] | dynamic |
| `build_sklearn` | input FP32 [-1, 4] | label INT64 [-1], probabilities FP32 [-1, 3] | dynamic |
| `build_multi_input` | ids INT64, mask BOOL, x16 FP16 [-1, 4] | masked, count, any, y16 | dynamic |
| `build_all_types` | in_<DT> for every V2 datatype, [-1, 3] | out_<DT> = identity | dynamic |
| `build_fixed_batch` | input FP32 [1, 4] | output FP32 [1, 4] = 2x + 1 | fixed |
| `build_slow` | input FP32 [-1, 512] | output FP32 [-1, 512] | dynamic |
| `build_sequence` | tok INT64 [-1, -1] | pooled FP32 [-1, 8] | dynamic (two dims) |
| `build_scalar` | x FP32 [-1, 3] | total FP32 [] (scalar), scaled FP32 [-1, 3] | none |
| `build_failing` | input FP32 [-1, 256] | logits FP32 [-1, 256]; fails past 0.5 | dynamic |
| `build_permuted` | a classifier's | its logits, classes shifted by one | as the source |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17

#: V2 datatype -> (ONNX TensorProto type name, numpy dtype) for `build_all_types`.
ALL_TYPES: dict[str, tuple[str, Any]] = {
    "BOOL": ("BOOL", np.bool_),
    "UINT8": ("UINT8", np.uint8),
    "UINT16": ("UINT16", np.uint16),
    "UINT32": ("UINT32", np.uint32),
    "UINT64": ("UINT64", np.uint64),
    "INT8": ("INT8", np.int8),
    "INT16": ("INT16", np.int16),
    "INT32": ("INT32", np.int32),
    "INT64": ("INT64", np.int64),
    "FP16": ("FLOAT16", np.float16),
    "FP32": ("FLOAT", np.float32),
    "FP64": ("DOUBLE", np.float64),
    "BYTES": ("STRING", np.object_),
}


def _export_torch(module: Any, example: Any, path: Path) -> Path:
    import torch

    # torch.onnx.export restores the module's previous mode afterwards: build in eval
    # mode so the exported graph and any later reference use inference behaviour.
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    module.eval()
    return path


def build_mlp(path: Path, *, seed: int = 0) -> Path:
    """An MLP 256 → 1024 → 1024 → 10 (ReLU), the benchmark's small-compute model."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )
    return _export_torch(model, torch.randn(2, 256), path)


def build_cnn(path: Path, *, seed: int = 0) -> Path:
    """A small CNN on 3x32x32 images (~3 ms per sample on one core): compute bound."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(128, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, 10),
    )
    return _export_torch(model, torch.randn(2, 3, 32, 32), path)


def build_sklearn(path: Path) -> Path:
    """Logistic regression on iris via skl2onnx (ZipMap off: plain tensors out)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x.astype(np.float32), y)
    onx = to_onnx(
        clf,
        x[:1].astype(np.float32),
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        final_types=None,
    )
    # Stable names: skl2onnx calls the input "X"; the tests address it as "input".
    _rename(onx, {"X": "input"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


def _rename(model: Any, names: dict[str, str]) -> None:
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in names:
            value.name = names[value.name]
    for node in model.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]


def _save(graph: Any, path: Path) -> Path:
    from onnx import checker, helper, save

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


def build_failing(path: Path, width: int = 256) -> Path:
    """A model with mlp's signature that runs on all-zero input (the server's warm-up) and
    fails in onnxruntime (a Reshape to a size that cannot be) on any input holding a value
    past 0.5: every real request is a 500 InferenceFailed, which the analysis counts."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Abs", ["input"], ["magnitude"]),
        helper.make_node("ReduceMax", ["magnitude"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "half"], ["nonzero"]),
        helper.make_node("Cast", ["nonzero"], ["extra"], to=TensorProto.INT64),
        helper.make_node("Add", ["extra", "one"], ["depth"]),
        helper.make_node("Unsqueeze", ["depth", "first"], ["depth1"]),
        helper.make_node("Shape", ["input"], ["dims"]),
        helper.make_node("Concat", ["dims", "depth1"], ["target"], axis=0),
        # [batch, width] into [batch, width, depth]: only a depth of 1 fits.
        helper.make_node("Reshape", ["input", "target"], ["deep"]),
        helper.make_node("ReduceSum", ["deep", "last"], ["logits"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "failing",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])],
        initializer=[
            helper.make_tensor("one", TensorProto.INT64, [], [1]),
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("first", TensorProto.INT64, [1], [0]),
            helper.make_tensor("last", TensorProto.INT64, [1], [2]),
        ],
    )
    return _save(graph, path)


def build_permuted(path: Path, source: Path) -> Path:
    """The classifier at `source` (mlp: logits FP32 [-1, 10]) with its output classes
    shifted by one (class i answers what class i+1 did): the same computation, the same
    latency, every row's arg-max moved, so every shadow comparison disagrees."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(source))
    graph = model.graph
    (output,) = graph.output
    for node in graph.node:
        node.output[:] = ["raw" if name == output.name else name for name in node.output]
    classes = output.type.tensor_type.shape.dim[1].dim_value
    order = [(i + 1) % classes for i in range(classes)]
    graph.initializer.append(helper.make_tensor("order", TensorProto.INT64, [classes], order))
    graph.node.append(helper.make_node("Gather", ["raw", "order"], [output.name], axis=1))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_multi_input(path: Path) -> Path:
    """Three inputs (INT64, BOOL, FP16), four outputs (INT64, INT64, BOOL, FP16)."""
    from onnx import TensorProto, helper

    b = "batch"
    zero = helper.make_tensor("zero", TensorProto.INT64, [], [0])
    two = helper.make_tensor("two", TensorProto.FLOAT16, [], [2.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Where", ["mask", "ids", "zero"], ["masked"]),
        helper.make_node("Cast", ["mask"], ["mask64"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["mask64", "axes"], ["count"], keepdims=0),
        helper.make_node("Greater", ["count", "zero"], ["any"]),
        helper.make_node("Mul", ["x16", "two"], ["y16"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi_input",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [b, 4]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [b, 4]),
            helper.make_tensor_value_info("x16", TensorProto.FLOAT16, [b, 4]),
        ],
        [
            helper.make_tensor_value_info("masked", TensorProto.INT64, [b, 4]),
            helper.make_tensor_value_info("count", TensorProto.INT64, [b]),
            helper.make_tensor_value_info("any", TensorProto.BOOL, [b]),
            helper.make_tensor_value_info("y16", TensorProto.FLOAT16, [b, 4]),
        ],
        initializer=[zero, two, axes],
    )
    return _save(graph, path)


def build_all_types(path: Path) -> Path:
    """One identity input → output pair per V2 datatype: `in_FP32` → `out_FP32`, ..."""
    from onnx import TensorProto, helper

    inputs, outputs, nodes = [], [], []
    for v2, (onnx_name, _) in ALL_TYPES.items():
        elem = getattr(TensorProto, onnx_name)
        inputs.append(helper.make_tensor_value_info(f"in_{v2}", elem, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{v2}", elem, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{v2}"], [f"out_{v2}"]))
    return _save(helper.make_graph(nodes, "all_types", inputs, outputs), path)


def build_fixed_batch(path: Path) -> Path:
    """A model whose batch dimension is fixed at 1: the server must not batch it."""
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["output"]),
        ],
        "fixed_batch",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
        initializer=[two, one],
    )
    return _save(graph, path)


def build_sequence(path: Path) -> Path:
    """A MiniLM-shaped model: token ids `tok` INT64 [batch, seq] -> embeddings [batch, seq, 8]
    -> sum over seq: `pooled` FP32 [batch, 8]. Two dynamic dimensions, one of them pooled
    away, so the output's size is not bounded by the input's element count."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    table = helper.make_tensor(
        "table", TensorProto.FLOAT, [100, 8], rng.standard_normal(800).astype(np.float32)
    )
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "tok"], ["hidden"]),
            helper.make_node("ReduceSum", ["hidden", "axes"], ["pooled"], keepdims=0),
        ],
        "sequence",
        [helper.make_tensor_value_info("tok", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 8])],
        initializer=[table, axes],
    )
    return _save(graph, path)


def build_scalar(path: Path) -> Path:
    """A model with a rank-0 output: `total` = the sum of every element of `x` (a scalar),
    `scaled` = 2x. The scalar has no batch dimension, so the server runs it unbatched."""
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
            helper.make_node("Mul", ["x", "two"], ["scaled"]),
        ],
        "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[two],
    )
    return _save(graph, path)


def build_slow(path: Path, *, repeats: int = 64, seed: int = 0) -> Path:
    """`repeats` chained 512x512 MatMul+Tanh layers sharing one weight: slow per row but a
    small file. Used where tests need requests that stay in flight for a while."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(
        (rng.standard_normal((512, 512)) / np.sqrt(512)).astype(np.float32), "w"
    )
    nodes, prev = [], "input"
    for i in range(repeats):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"mm{i}"]))
        out = "output" if i == repeats - 1 else f"t{i}"
        nodes.append(helper.make_node("Tanh", [f"mm{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 512])],
        initializer=[weight],
    )
    return _save(graph, path)


def reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the model at `path` for `feeds`, computed in-process (1 thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def sample_inputs(name: str, rows: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for the model built by `build_<name>`, with `rows` rows."""
    rng = np.random.default_rng(seed)
    if name == "mlp":
        return {"input": rng.standard_normal((rows, 256)).astype(np.float32)}
    if name == "cnn":
        return {"input": rng.standard_normal((rows, 3, 32, 32)).astype(np.float32)}
    if name == "sklearn":
        low, high = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
        return {"input": rng.uniform(low, high, (rows, 4)).astype(np.float32)}
    if name == "multi_input":
        return {
            "ids": rng.integers(-(2**40), 2**40, (rows, 4), dtype=np.int64),
            "mask": rng.random((rows, 4)) < 0.5,
            "x16": rng.standard_normal((rows, 4)).astype(np.float16),
        }
    if name == "all_types":
        feeds: dict[str, np.ndarray] = {}
        for v2, (_, dtype) in ALL_TYPES.items():
            if v2 == "BOOL":
                feeds[f"in_{v2}"] = rng.random((rows, 3)) < 0.5
            elif v2 == "BYTES":
                words = np.array(["alpha", "βeta", "", "gamma delta", "ω"], dtype=object)
                feeds[f"in_{v2}"] = words[rng.integers(0, len(words), (rows, 3))]
            elif np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                feeds[f"in_{v2}"] = rng.integers(info.min, info.max, (rows, 3), dtype=dtype)
            else:
                feeds[f"in_{v2}"] = rng.standard_normal((rows, 3)).astype(dtype)
        return feeds
    if name == "fixed_batch":
        if rows != 1:
            raise ValueError("the fixed_batch model takes exactly one row")
        return {"input": rng.standard_normal((1, 4)).astype(np.float32)}
    if name == "sequence":
        return {"tok": rng.integers(0, 100, (rows, 16), dtype=np.int64)}
    if name == "slow":
        return {"input": rng.standard_normal((rows, 512)).astype(np.float32)}
    if name == "scalar":
        return {"x": rng.standard_normal((rows, 3)).astype(np.float32)}
    raise ValueError(f"unknown model {name!r}")


BUILDERS = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "sklearn": build_sklearn,
    "multi_input": build_multi_input,
    "all_types": build_all_types,
    "fixed_batch": build_fixed_batch,
    "slow": build_slow,
    "sequence": build_sequence,
    "scalar": build_scalar,
}


def build(name: str, folder: Path) -> Path:
    """Build the model `name` as `<folder>/<name>.onnx` (see the table above)."""
    return BUILDERS[name](folder / f"{name}.onnx")  # type: ignore[operator]
