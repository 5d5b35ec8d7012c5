"""scikit-learn sources: skops (safe by default) and joblib (only with the opt-in),
converted with skl2onnx and checked against the estimator itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ondeck_server import artifact
from ondeck_server.pipeline import (
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
        "custom.skops names types outside scikit-learn: _operator.neg; loading them could run "
        "code. Check them and pass --allow-unsafe-pickle (spec.model.allowUnsafePickle) if "
        "you trust the file"
    )


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
