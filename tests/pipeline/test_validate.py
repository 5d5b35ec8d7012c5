"""The accuracy gate's metrics and verdicts, on hand-made outputs (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from ondeck_server.convert.errors import InvalidSettings, ValidationFailed
from ondeck_server.convert.inputs_spec import parse_inputs
from ondeck_server.convert.validate import (
    Thresholds,
    compare_output,
    evaluate,
    judge,
    make_samples,
    refuse,
    run_batched,
)


def test_identical_outputs() -> None:
    x = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
    report = compare_output("logits", x, x.copy())
    assert report.max_abs_diff == 0.0
    assert report.cosine_mean == pytest.approx(1.0)
    assert report.top1_agreement == 1.0


def test_orthogonal_and_opposite_outputs() -> None:
    ref = np.array([[1.0, 0.0], [1.0, 1.0]])
    cand = np.array([[0.0, 1.0], [-1.0, -1.0]])
    report = compare_output("y", ref, cand)
    assert report.cosine_min == pytest.approx(-1.0)
    assert report.cosine_mean == pytest.approx(-0.5)
    assert report.max_abs_diff == pytest.approx(2.0)


def test_zero_vectors() -> None:
    report = compare_output("y", np.zeros((2, 3)), np.array([[0.0, 0, 0], [1, 0, 0]]))
    assert report.cosine_min == 0.0
    assert report.cosine_mean == pytest.approx(0.5)


def test_a_tie_in_the_reference_counts_as_agreement() -> None:
    ref = np.array([[0.5, 0.5, 0.0], [0.2, 0.7, 0.1]])
    cand = np.array([[0.4999, 0.5001, 0.0], [0.7, 0.2, 0.1]])
    assert compare_output("probabilities", ref, cand).top1_agreement == 0.5


def test_labels_are_compared_exactly() -> None:
    report = compare_output("label", np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
    assert report.top1_agreement == 0.75
    assert report.cosine_mean is None


def test_embeddings_are_not_classifier_like() -> None:
    x = np.random.default_rng(0).standard_normal((4, 384))
    assert compare_output("output", x, x).top1_agreement is None
    assert compare_output("class_scores", x, x).top1_agreement == 1.0


def test_nan_fails_the_gate() -> None:
    ref = np.ones((2, 3))
    cand = np.array([[np.nan, 1, 1], [1, 1, 1]])
    report = compare_output("y", ref, cand)
    verdict = judge([report], thresholds=Thresholds(), reference="r", samples=2, sample_source="g")
    assert not verdict.passed
    assert report.max_abs_diff == float("inf")


def test_thresholds_decide() -> None:
    reports = [compare_output("logits", np.eye(4), np.eye(4)[[0, 1, 2, 0]])]
    strict = judge(reports, thresholds=Thresholds(), reference="r", samples=4, sample_source="g")
    assert strict.top1_disagreement == 0.25
    assert not strict.passed
    lenient = judge(
        reports,
        thresholds=Thresholds(min_cosine=0.5, max_top1_disagreement=0.25),
        reference="r",
        samples=4,
        sample_source="g",
    )
    assert lenient.passed


def test_validate_raises_with_the_report() -> None:
    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [feeds["x"] * 2]

    def candidate(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [-feeds["x"]]

    samples, source = make_samples(parse_inputs("x:float32:[-1,300]"), count=10, calibration=None)
    with pytest.raises(ValidationFailed) as info:
        refuse(
            evaluate(
                reference_outputs=run_batched(reference, samples, batch=4),
                reference_name="sklearn",
                candidate=candidate,
                output_names=["y"],
                samples=samples,
                sample_source=source,
                thresholds=Thresholds(),
                batch=4,
            )
        )
    assert info.value.message.startswith(
        "the final model disagrees with the original (sklearn) on 10 generated samples: "
        "cosine -1.0000 < --min-cosine 0.99."
    )
    assert info.value.details is not None
    assert info.value.details["outputs"][0]["cosineMin"] == pytest.approx(-1.0)


def test_generated_samples_follow_the_spec() -> None:
    specs = parse_inputs("ids:int64:[-1,-1];mask:bool:[-1,8];x:float16:[2,3]")
    samples, source = make_samples(specs, count=5, calibration=None)
    assert source == "generated"
    assert samples["ids"].shape == (5, 16)
    assert samples["ids"].dtype == np.int64
    assert samples["mask"].dtype == np.bool_
    assert samples["x"].shape == (2, 3)
    again, _ = make_samples(specs, count=5, calibration=None)
    np.testing.assert_array_equal(samples["ids"], again["ids"]), "seeded: reruns match"


def test_calibration_samples_are_used_first() -> None:
    specs = parse_inputs("x:float32:[-1,2]")
    data = {"x": np.arange(20, dtype=np.float64).reshape(10, 2)}
    samples, source = make_samples(specs, count=4, calibration=data)
    assert source == "calibration"
    assert samples["x"].dtype == np.float32
    np.testing.assert_array_equal(samples["x"], data["x"][:4])


def test_calibration_shape_must_fit() -> None:
    with pytest.raises(InvalidSettings) as info:
        make_samples(
            parse_inputs("x:float32:[-1,2]"),
            count=4,
            calibration={"x": np.zeros((10, 3))},
        )
    assert info.value.message == (
        "--calibration array 'x' has shape [10, 3], the input is [-1, 2]; give samples along "
        "the first dimension"
    )


@pytest.mark.parametrize(
    ("cosine", "shown"), [(0.9812, "0.9812"), (0.99999999991, "0.9999999999"), (0.99996, "0.99996")]
)
def test_a_refused_cosine_never_reads_as_the_threshold(cosine: float, shown: str) -> None:
    from ondeck_server.convert.validate import ValidationReport, gate_message

    report = ValidationReport(
        reference="onnx-fp32", samples=64, sample_source="calibration", outputs=[],
        cosine=cosine, top1_disagreement=None, min_cosine=1.0, max_top1_disagreement=0.01,
        passed=False,
    )  # fmt: skip
    assert f"cosine {shown} < --min-cosine 1.0" in gate_message(report)
