"""scikit-learn sources: skops (safe by default) and joblib (only with the opt-in),
converted with skl2onnx and checked against the estimator itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ondeck_server import artifact
from ondeck_server.convert import (
    ConvertRequest,
    InvalidSettings,
    UnsafeModel,
    convert,
    parse_inputs,
)
from pipeline import models
from pipeline.conftest import Sources, assert_nothing_published, onnx_answers


@pytest.mark.parametrize(
    ("name", "features"),
    [
        ("iris_logreg", models.iris),
        ("iris_forest", models.iris),
        ("iris_pipeline", models.iris),
        ("digits_pipeline", models.digits),
    ],
)
def test_classifiers_give_the_estimators_answers(
    sources: Sources, store: Path, name: str, features: object
) -> None:
    outcome = convert(ConvertRequest(source=str(sources[f"{name}.skops"]), store=store))
    manifest = outcome.manifest
    assert manifest.source.format == "sklearn"
    assert [o.name for o in manifest.outputs] == ["label", "probabilities"]
    assert manifest.validation["passed"] is True
    assert manifest.validation["reference"] == "sklearn"

    estimator = models.sklearn_models()[name]
    x, _ = features()  # type: ignore[operator]
    label, probabilities = onnx_answers(outcome.path / artifact.MODEL_FILE, {"input": x})
    agreement = np.mean(label == estimator.predict(x))
    assert agreement >= 0.999
    np.testing.assert_allclose(probabilities, estimator.predict_proba(x), atol=1e-4)


def test_regressor(sources: Sources, store: Path) -> None:
    outcome = convert(ConvertRequest(source=str(sources["iris_regression.skops"]), store=store))
    x, _ = models.iris()
    (predicted,) = onnx_answers(outcome.path / artifact.MODEL_FILE, {"input": x[:, :3]})
    estimator = models.sklearn_models()["iris_regression"]
    np.testing.assert_allclose(predicted.ravel(), estimator.predict(x[:, :3]), atol=1e-4)
    assert outcome.manifest.inputs[0].shape == [-1, 3]


def test_pickle_without_opt_in_is_refused(sources: Sources, store: Path) -> None:
    with pytest.raises(UnsafeModel) as info:
        convert(ConvertRequest(source=str(sources["iris_pipeline.joblib"]), store=store))
    assert info.value.message == (
        "iris_pipeline.joblib is a pickle (joblib/pickle): loading it runs any code it names. "
        "Save the model with skops (skops.io.dump) or, if you trust the file, pass "
        "--allow-unsafe-pickle (spec.model.allowUnsafePickle)"
    )
    assert_nothing_published(store)


def test_pickle_with_opt_in(sources: Sources, store: Path) -> None:
    outcome = convert(
        ConvertRequest(
            source=str(sources["iris_pipeline.joblib"]), store=store, allow_unsafe_pickle=True
        )
    )
    assert outcome.manifest.settings["sourceKind"] == "pickle"
    assert outcome.manifest.validation["top1Disagreement"] == 0.0


def test_skops_with_foreign_types_is_refused(tmp_path: Path, store: Path) -> None:
    import operator

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x, y = models.iris()
    model = make_pipeline(FunctionTransformer(operator.neg), LogisticRegression(max_iter=500))
    path = models.save_skops(model.fit(x, y), tmp_path / "custom.skops")
    with pytest.raises(UnsafeModel) as info:
        convert(ConvertRequest(source=str(path), store=store))
    assert info.value.message == (
        "custom.skops names types that are not known-safe scikit-learn or numpy classes:"
        " _operator.neg; loading them could run code. Check them and pass"
        " --allow-unsafe-pickle (spec.model.allowUnsafePickle) if you trust the file"
    )


def _hostile_skops(path: Path, command: list[str]) -> Path:
    """A skops file whose root node calls a function re-exported by a scikit-learn module
    (sklearn.utils._testing.check_output is subprocess.check_output) with `command`."""
    import io
    import json
    import zipfile

    import skops.io as sio

    with zipfile.ZipFile(io.BytesIO(sio.dumps((command,)))) as z:
        args = json.loads(z.read("schema.json"))
    schema = {
        "__class__": "check_output",
        "__module__": "sklearn.utils._testing",
        "__loader__": "ConstructorFromReduceNode",
        "content": args,
        "protocol": args["protocol"],
        "_skops_version": args["_skops_version"],
    }
    for key in ("protocol", "_skops_version"):
        args.pop(key, None)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("schema.json", json.dumps(schema))
    return path


def test_skops_naming_a_function_in_a_sklearn_module_is_refused_and_never_run(
    tmp_path: Path, store: Path
) -> None:
    marker = tmp_path / "pwned"
    path = _hostile_skops(tmp_path / "evil.skops", ["sh", "-c", f"id > {marker}"])
    with pytest.raises(UnsafeModel) as info:
        convert(ConvertRequest(source=str(path), store=store))
    assert "sklearn.utils._testing.check_output" in info.value.message
    assert not marker.exists()
    assert_nothing_published(store)


@pytest.mark.parametrize(
    ("field", "value"),
    [("left_child", 10**9), ("right_child", 0), ("feature", 999)],
)
def test_skops_tree_with_out_of_range_nodes_is_refused(
    tmp_path: Path, store: Path, field: str, value: int
) -> None:
    from sklearn.tree import DecisionTreeClassifier

    x, y = models.iris()
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)
    state = model.tree_.__getstate__()
    nodes = state["nodes"].copy()
    nodes[field][0] = value
    state["nodes"] = nodes
    model.tree_.__setstate__(state)
    path = models.save_skops(model, tmp_path / "tree.skops")
    with pytest.raises(UnsafeModel) as info:
        convert(ConvertRequest(source=str(path), store=store))
    assert "out-of-range child or feature index at node 0" in info.value.message
    assert_nothing_published(store)


def test_skops_tree_model_still_converts(tmp_path: Path, store: Path) -> None:
    from sklearn.tree import DecisionTreeClassifier

    x, y = models.iris()
    model = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, y)
    path = models.save_skops(model, tmp_path / "tree.skops")
    outcome = convert(ConvertRequest(source=str(path), store=store))
    (label, _) = onnx_answers(outcome.path / artifact.MODEL_FILE, {"input": x})
    assert np.array_equal(label, model.predict(x))


def test_declared_inputs_must_match_the_features(sources: Sources, store: Path) -> None:
    with pytest.raises(InvalidSettings) as info:
        convert(
            ConvertRequest(
                source=str(sources["iris_logreg.skops"]),
                store=store,
                inputs=parse_inputs("x:float32:[-1,5]"),
            )
        )
    assert info.value.message == (
        "--inputs says 5 features but the model was fitted on 4; fix --inputs"
    )


def test_declared_input_name_and_dtype(sources: Sources, store: Path) -> None:
    outcome = convert(
        ConvertRequest(
            source=str(sources["iris_logreg.skops"]),
            store=store,
            inputs=parse_inputs("features:float64:[-1,4]"),
        )
    )
    assert [(i.name, i.datatype) for i in outcome.manifest.inputs] == [("features", "FP64")]
