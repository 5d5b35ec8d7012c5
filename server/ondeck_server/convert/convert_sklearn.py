"""scikit-learn sources: a skops file (safe by default) or a joblib/pickle file (only with
`--allow-unsafe-pickle`, because unpickling runs whatever code the file names), converted
with skl2onnx. Input types come from `--inputs` (one input, `[-1, n_features]`) or from
the model's `n_features_in_`. Classifiers are converted with ZipMap off, so their outputs
are plain tensors (`label`, `probabilities`) a V2 client can read.

skops policy: what skops itself trusts (every scikit-learn estimator class, numpy and
scipy basics), plus exactly the extra type names in `EXTRA_TRUSTED`, never a prefix: a
scikit-learn module also re-exports plain functions (`sklearn.utils._testing` holds
`subprocess.check_output`), and a file that names one as a constructor runs it.
`sklearn.tree._tree.Tree`, which skops leaves untrusted because scikit-learn indexes its
node array without bounds checks, is trusted only after `check_trees` has proved every
child and feature index in range and every child after its parent (no cycles). Anything
else (a function, a third-party class, HistGradientBoosting's TreePredictor) is refused
unless `--allow-unsafe-pickle`. This module does not optimize or quantize.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ondeck_server.convert.converted import Converted
from ondeck_server.convert.errors import ConversionFailed, InvalidSettings, UnsafeModel
from ondeck_server.convert.extras import require_converter
from ondeck_server.convert.formats import Format, SourceKind
from ondeck_server.convert.inputs_spec import DType, InputSpec
from ondeck_server.convert.onnx_tools import Feeds

OPSET = 17
_NUMPY_SAFE = {
    "numpy.dtype",
    "numpy.float64",
    "numpy.float32",
    "numpy.int64",
    "numpy.int32",
    "numpy.bool_",
    "numpy.str_",
    "numpy.ndarray",
}


#: Type names trusted beyond skops' own list; exact names only.
TREE_TYPE = "sklearn.tree._tree.Tree"
EXTRA_TRUSTED = frozenset({TREE_TYPE, *_NUMPY_SAFE})


def trusted_skops_types(untrusted: list[str]) -> tuple[list[str], list[str]]:
    """Split skops' untrusted type names into (trusted by policy, refused)."""
    ok = [t for t in untrusted if t in EXTRA_TRUSTED]
    return ok, [t for t in untrusted if t not in ok]


def check_trees(model: Any, name: str) -> None:
    """Refuse a loaded model holding a decision tree whose node array could make
    scikit-learn read out of bounds or loop: node_count past the allocated nodes, a child
    index outside the tree or not after its parent, a feature index outside the model's
    features. Called before the model is used at all."""
    from sklearn.tree._tree import Tree

    for owner, tree in _find(model, Tree):
        node_count, capacity = int(tree.node_count), int(tree.capacity)
        if not 0 < node_count <= capacity:
            raise UnsafeModel(
                f"{name}: a decision tree says it has {node_count} nodes but holds"
                f" {capacity}; the file is corrupt or crafted"
            )
        left = np.asarray(tree.children_left)
        right = np.asarray(tree.children_right)
        feature = np.asarray(tree.feature)
        index = np.arange(node_count)
        leaf = left == -1
        n_features = int(tree.n_features)
        expected = getattr(owner, "n_features_in_", n_features)
        bad = (
            (leaf & (right != -1))
            | (~leaf & ((left <= index) | (left >= node_count)))
            | (~leaf & ((right <= index) | (right >= node_count)))
            | (~leaf & ((feature < 0) | (feature >= n_features)))
        )
        if n_features > int(expected) or bad.any():
            first = int(np.argmax(bad)) if bad.any() else 0
            raise UnsafeModel(
                f"{name}: a decision tree has an out-of-range child or feature index at"
                f" node {first}; the file is corrupt or crafted, refusing to use it"
            )


def _find(root: Any, kind: type, depth: int = 0) -> list[tuple[Any, Any]]:
    """(owner, object) pairs for every `kind` reachable through estimator attributes."""
    found: list[tuple[Any, Any]] = []
    if depth > 12:
        return found
    children: list[Any]
    if isinstance(root, dict):
        children = list(root.values())
    elif isinstance(root, list | tuple):
        children = list(root)
    elif isinstance(root, np.ndarray) and root.dtype == object:
        children = list(root.reshape(-1))
    elif hasattr(root, "__dict__"):
        children = list(vars(root).values())
    else:
        return found
    for child in children:
        if isinstance(child, kind):
            found.append((root, child))
        else:
            found.extend(_find(child, kind, depth + 1))
    return found


def load_sklearn(path: Path, *, kind: SourceKind, allow_unsafe_pickle: bool) -> Any:
    if kind is SourceKind.PICKLE:
        if not allow_unsafe_pickle:
            raise UnsafeModel(
                f"{path.name} is a pickle (joblib/pickle): loading it runs any code it names. "
                "Save the model with skops (skops.io.dump) or, if you trust the file, pass "
                "--allow-unsafe-pickle (spec.model.allowUnsafePickle)"
            )
        return _load_pickle(path)
    return _load_skops(path, allow_unsafe=allow_unsafe_pickle)


def _load_pickle(path: Path) -> Any:
    import joblib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return joblib.load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError) as exc:
        raise ConversionFailed(f"{path.name} is not a readable pickle/joblib file: {exc}") from None
    except (ModuleNotFoundError, AttributeError) as exc:
        raise ConversionFailed(
            f"{path.name} needs Python code that is not installed here ({exc}); "
            "build the server image with the packages the model was trained with"
        ) from None


def _load_skops(path: Path, *, allow_unsafe: bool) -> Any:
    import skops.io as sio

    try:
        untrusted = list(sio.get_untrusted_types(file=path))
        trusted, refused = trusted_skops_types(untrusted)
        if refused and not allow_unsafe:
            raise UnsafeModel(
                f"{path.name} names types that are not known-safe scikit-learn or numpy"
                f" classes: {', '.join(refused[:5])}; loading them could run code. Check them"
                " and pass --allow-unsafe-pickle (spec.model.allowUnsafePickle) if you trust"
                " the file"
            )
        model = sio.load(path, trusted=trusted + refused)
        if not allow_unsafe:
            check_trees(model, path.name)
        return model
    except UnsafeModel:
        raise
    except Exception as exc:  # skops raises zipfile, json and its own errors
        raise ConversionFailed(f"{path.name} is not a readable skops file: {exc}") from None


def convert_sklearn(
    path: Path,
    *,
    kind: SourceKind,
    inputs: list[InputSpec] | None,
    allow_unsafe_pickle: bool,
    out: Path,
) -> Converted:
    require_converter(Format.SKLEARN)
    from sklearn.base import is_classifier

    model = load_sklearn(path, kind=kind, allow_unsafe_pickle=allow_unsafe_pickle)
    if not hasattr(model, "predict") and not hasattr(model, "transform"):
        raise ConversionFailed(
            f"{path.name} holds a {type(model).__name__}, not a fitted scikit-learn estimator"
        )
    spec = _input_spec(model, inputs, path.name)
    onnx_model = _to_onnx(model, spec, classifier=is_classifier(model), name=path.name)
    from ondeck_server.convert import onnx_tools

    onnx_tools.normalize_opsets(onnx_model, default_version=OPSET)
    onnx_tools.save(onnx_model, out)
    _, outputs = onnx_tools.io_info(out)
    reference = _reference(model, spec, [o.name for o in outputs])
    return Converted(
        onnx_path=out,
        inputs=[spec],
        reference=reference,
        reference_name="sklearn" if reference else "onnx-fp32",
    )


def _input_spec(model: Any, inputs: list[InputSpec] | None, name: str) -> InputSpec:
    if inputs:
        if len(inputs) != 1:
            raise InvalidSettings(
                f"--inputs declares {len(inputs)} inputs; a scikit-learn model takes one, "
                "e.g. input:float32:[-1,4]"
            )
        spec = inputs[0]
        if len(spec.shape) != 2:
            raise InvalidSettings(
                f"--inputs {spec.render()} must be two-dimensional [-1, n_features] "
                "for a scikit-learn model"
            )
        if spec.dtype not in (DType.FLOAT32, DType.FLOAT64, DType.INT64):
            raise InvalidSettings(
                f"--inputs dtype {spec.dtype.value} is not supported for scikit-learn; "
                "use float32, float64 or int64"
            )
        expected = getattr(model, "n_features_in_", None)
        if expected is not None and spec.shape[1] not in (-1, expected):
            raise InvalidSettings(
                f"--inputs says {spec.shape[1]} features but the model was fitted on "
                f"{expected}; fix --inputs"
            )
        return spec
    features = getattr(model, "n_features_in_", None)
    if not isinstance(features, int):
        raise InvalidSettings(
            f"{name} does not record n_features_in_; give --inputs, e.g. input:float32:[-1,4]"
        )
    return InputSpec(name="input", dtype=DType.FLOAT32, shape=[-1, features])


def _to_onnx(model: Any, spec: InputSpec, *, classifier: bool, name: str) -> Any:
    from skl2onnx import convert_sklearn as skl2onnx_convert
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType

    tensor_type = {
        DType.FLOAT32: FloatTensorType,
        DType.FLOAT64: DoubleTensorType,
        DType.INT64: Int64TensorType,
    }[spec.dtype]
    shape = [None if d == -1 else d for d in spec.shape]
    options = {"zipmap": False} if classifier else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return skl2onnx_convert(
                model,
                initial_types=[(spec.name, tensor_type(shape))],
                options=options,
                target_opset={"": OPSET, "ai.onnx.ml": 3},
            )
    except Exception as exc:  # skl2onnx raises RuntimeError, NameError, MissingShapeCalculator...
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConversionFailed(
            f"skl2onnx cannot convert {name} ({type(model).__name__}): {text}; "
            "the estimator may have no ONNX converter (see skl2onnx's supported list)"
        ) from None


def _reference(model: Any, spec: InputSpec, outputs: list[str]) -> Any:
    """Run the scikit-learn model itself, outputs in the ONNX order; None when we cannot
    tell which sklearn method an output corresponds to."""
    from sklearn.base import is_classifier, is_regressor

    if is_classifier(model) and outputs == ["label", "probabilities"]:
        methods = ["predict", "predict_proba"]
    elif is_regressor(model) and len(outputs) == 1:
        methods = ["predict"]
    elif hasattr(model, "transform") and len(outputs) == 1:
        methods = ["transform"]
    else:
        return None

    def run(feeds: Feeds) -> list[np.ndarray]:
        x = feeds[spec.name]
        results: list[np.ndarray] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for method in methods:
                value = np.asarray(getattr(model, method)(x))
                if method != "predict" or not is_classifier(model):
                    value = value.reshape(len(x), -1)
                results.append(value)
        return results

    return run
