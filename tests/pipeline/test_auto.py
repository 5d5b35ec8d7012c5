"""`--quantize auto` on real models, and the gate judged on real data: what is asserted
holds on any CPU (timings decide among passing candidates, so the tests check the rule,
not a winner that depends on the machine), except where only one candidate can win."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ondeck_operator.local.flags import in_manifest_terms
from ondeck_server import artifact
from ondeck_server.convert import ConvertRequest, Outcome, Quantize, convert, parse_inputs
from ondeck_server.convert.auto import PREFERENCE, TIE_MARGIN, fp16_kernels
from ondeck_server.convert.cli import fit_termination_log
from ondeck_server.convert.validate import (
    DEFAULT_MAX_TOP1_DISAGREEMENT,
    DEFAULT_SAMPLES,
    sample_warnings,
)
from pipeline import models
from pipeline.conftest import Sources, assert_nothing_published, onnx_answers
from pipeline.test_cli import run_convert
from pipeline.test_quantize import StageLines

ALL = [m.value for m in PREFERENCE]


class AllLines(StageLines):
    """Every stage line in order (a stage name may repeat: one `candidate` line each)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def stage(self, name: str, seconds: float, detail: str) -> None:
        self.seen.append(f"{name} {detail}")
        super().stage(name, seconds, detail)


def auto(outcome: Outcome) -> dict[str, Any]:
    report: dict[str, Any] = outcome.manifest.validation["auto"]
    return report


def by_mode(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["quantize"]: c for c in report["candidates"]}


def check_the_rule(outcome: Outcome) -> dict[str, dict[str, Any]]:
    """What auto promises on any machine: every mode listed with its fate; the chosen one
    passed the gate, is batch independent (the unquantized model is), is the artifact,
    and is within the margin of the fastest passing one, with no smaller one tied."""
    report = auto(outcome)
    candidates = by_mode(report)
    assert [c["quantize"] for c in report["candidates"]] == ALL
    chosen = candidates[report["chosen"]]
    assert chosen["outcome"] == "chosen"
    assert [c for c in candidates.values() if c["outcome"] == "chosen"] == [chosen]
    assert chosen["gatePassed"] is True
    assert chosen["batchIndependent"] is True
    assert outcome.manifest.size_bytes == chosen["sizeBytes"]
    assert outcome.manifest.batching is not None
    assert outcome.manifest.batching.independent
    assert outcome.manifest.validation["passed"] is True
    for c in candidates.values():
        assert c["outcome"] in {"chosen", "passed", "rejected", "skipped"}
        if c["outcome"] != "chosen":
            assert c["reason"], c
        if c["gatePassed"] is False:
            assert c["outcome"] == "rejected"
            assert c["reason"].startswith("fails the gate")
        if c["outcome"] in {"chosen", "passed"}:
            assert c["sizeBytes"] > 0
            assert c["latencyMs"] > 0
    passing = [c for c in candidates.values() if c["outcome"] in {"chosen", "passed"}]
    fastest = min(c["latencyMs"] for c in passing)
    assert chosen["latencyMs"] <= fastest * (1 + TIE_MARGIN)
    tied = [c for c in passing if c["latencyMs"] <= fastest * (1 + TIE_MARGIN)]
    assert chosen["sizeBytes"] == min(c["sizeBytes"] for c in tied)
    has_fp16, fact = fp16_kernels()
    assert report["fp16Kernels"] == fact
    if not has_fp16:
        assert candidates["fp16"]["outcome"] == "skipped"
    return candidates


def test_auto_on_the_mlp_with_calibration(sources: Sources, store: Path) -> None:
    events = AllLines()
    outcome = convert(
        ConvertRequest(
            source=str(sources["mlp.pt"]),
            store=store,
            inputs=parse_inputs(models.MLP_INPUTS),
            quantize=Quantize.AUTO,
            calibration=str(sources["digits.npz"]),
        ),
        events=events,
    )
    candidates = check_the_rule(outcome)
    # Dynamic int8 passes on accuracy but mixes the rows of a batch: never chosen.
    int8 = candidates["int8"]
    assert int8["gatePassed"] is True
    assert int8["batchIndependent"] is False
    assert int8["outcome"] == "rejected"
    assert "depend on the batch" in int8["reason"]
    assert candidates["int8-static"]["outcome"] != "skipped"
    assert candidates["int4"]["detail"].startswith("int4 (block 32, accuracy level 4)")
    assert outcome.manifest.settings["quantize"] == "auto"
    assert outcome.manifest.settings["int4"] == {"blockSize": 32, "accuracyLevel": 4}
    assert artifact.applied_quantize(outcome.manifest) == auto(outcome)["chosen"]
    # One line per candidate, then the stage line naming the choice.
    mentioned = [line for line in events.seen if line.startswith("candidate ")]
    assert [line.split()[1] for line in mentioned] == ALL
    chosen = auto(outcome)["chosen"]
    assert any(line.startswith(f"quantize auto: {chosen} of") for line in events.seen)
    # The artifact answers like the original on real digits.
    x = models.digits_calibration()["input"][:32]
    reference = models.torch_answers("mlp", x)
    served = onnx_answers(outcome.path / artifact.MODEL_FILE, {"input": x})[0]
    assert (served.argmax(1) == reference.argmax(1)).mean() >= 0.95


def test_auto_on_the_cnn_without_calibration(sources: Sources, store: Path) -> None:
    outcome = convert(
        ConvertRequest(
            source=str(sources["cnn.pt"]),
            store=store,
            inputs=parse_inputs(models.CNN_INPUTS),
            quantize=Quantize.AUTO,
        )
    )
    candidates = check_the_rule(outcome)
    assert candidates["int8-static"]["outcome"] == "skipped"
    assert "calibration" in candidates["int8-static"]["reason"]
    validation = outcome.manifest.validation
    assert validation["sampleSource"] == "generated"
    assert any(w.startswith("judged on generated inputs") for w in validation["warnings"])


def test_auto_on_a_tree_ensemble_keeps_it_as_it_is(sources: Sources, store: Path) -> None:
    """No quantization changes a tree ensemble: every other candidate is the same graph,
    skipped rather than timed against itself, so `none` wins on every machine."""
    outcome = convert(
        ConvertRequest(
            source=str(sources["iris_forest.skops"]),
            store=store,
            quantize=Quantize.AUTO,
        )
    )
    candidates = check_the_rule(outcome)
    assert auto(outcome)["chosen"] == "none"
    for mode in ("int8", "int4"):
        assert candidates[mode]["outcome"] == "skipped"
        assert candidates[mode]["reason"] == "changes nothing: the same graph as none"
    x, _ = models.iris()
    label = onnx_answers(outcome.path / artifact.MODEL_FILE, {"input": x})[0]
    assert (label == models.sklearn_models()["iris_forest"].predict(x)).all()


# Five MiniLM conversions (calibration of int8-static included): minutes on a loaded
# 2-core machine, past the suite's default 300 s.
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_auto_on_minilm(
    minilm: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int8-static wrecks the sentence embeddings (cosine ≈ 0.94): the gate refuses it
    whatever the timings; dynamic int8 keeps them but mixes rows."""
    model, tokens = minilm
    monkeypatch.chdir(tmp_path)
    outcome = convert(
        ConvertRequest(
            source=str(model),
            store=tmp_path / "store",
            inputs=parse_inputs(models.MINILM_INPUTS),
            quantize=Quantize.AUTO,
            calibration=str(tokens),
        )
    )
    candidates = check_the_rule(outcome)
    static = candidates["int8-static"]
    assert static["outcome"] == "rejected"
    assert static["gatePassed"] is False
    assert candidates["int8"]["batchIndependent"] is False
    assert auto(outcome)["chosen"] not in {"int8", "int8-static"}


def test_validation_data_is_what_the_gate_judges_on(sources: Sources, store: Path) -> None:
    """Real inputs given apart from calibration: the report names them, no warning, and
    they are part of the digest."""
    request = ConvertRequest(
        source=str(sources["breast_forest.skops"]),
        store=store,
        validation_data=str(sources["breast_cancer.npz"]),
    )
    real = convert(request)
    validation = real.manifest.validation
    assert validation["sampleSource"] == "validation data"
    assert validation["samples"] == DEFAULT_SAMPLES
    assert validation["warnings"] == []
    assert real.manifest.settings["validationDataSha256"]
    generated = convert(request.model_copy(update={"validation_data": None}))
    assert generated.manifest.digest != real.manifest.digest


def test_degenerate_generated_inputs_are_called_out(sources: Sources, store: Path) -> None:
    """The breast-cancer forest on 64 N(0, 1) samples predicts one class for all of them:
    'top-1 disagreement 0.0' says nothing, and the report says so."""
    lines = StageLines()
    outcome = convert(
        ConvertRequest(source=str(sources["breast_forest.skops"]), store=store), events=lines
    )
    validation = outcome.manifest.validation
    assert validation["sampleSource"] == "generated"
    degenerate = [w for w in validation["warnings"] if "for all 64 generated samples" in w]
    assert degenerate, validation["warnings"]
    assert "warning: the original" in lines.lines["validate"]


def test_auto_with_unreadable_validation_data_names_the_field(
    sources: Sources, tmp_path: Path
) -> None:
    bad = tmp_path / "held-out.npz"
    bad.write_bytes(b"not a zip at all")
    done = run_convert(
        *("--source", str(sources["mlp.onnx"]), "--store", str(tmp_path / "store")),
        *("--quantize", "auto", "--validation-data", str(bad)),
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error = done.stderr.splitlines()[-1]
    assert error == (
        f"InvalidSettings: --validation-data {bad} is not an .npz of arrays (not a zip "
        "archive); write it with numpy.savez(path, input_name=array, ...)"
    )
    assert in_manifest_terms(error).startswith(
        f"InvalidSettings: spec.optimize.validation.data {bad} is not an .npz"
    )
    assert_nothing_published(tmp_path / "store")


def test_validation_data_missing_an_input_names_the_flag(sources: Sources, tmp_path: Path) -> None:
    done = run_convert(
        *("--source", str(sources["mlp.onnx"]), "--store", str(tmp_path / "store")),
        *("--quantize", "auto", "--validation-data", str(sources["wrong_names.npz"])),
    )
    assert done.returncode == 1
    error = done.stderr.splitlines()[-1]
    assert error.startswith("InvalidSettings: --validation-data has no array for input(s)")


def test_the_default_top1_bound_has_its_stated_statistics() -> None:
    """At the default 64 samples: 2 flips allowed; a model that truly disagrees on 1 % of
    inputs passes with probability ≥ 0.95, one at 10 % fails with probability ≥ 0.95."""
    n = DEFAULT_SAMPLES
    allowed = math.floor(n * DEFAULT_MAX_TOP1_DISAGREEMENT + 1e-9)
    assert allowed == 2

    def at_most(k: int, p: float) -> float:
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))

    assert at_most(allowed, 0.01) >= 0.95
    assert 1 - at_most(allowed, 0.10) >= 0.95
    assert at_most(0, 0.01) < 0.55  # the old bound (no flip) failed a 1 % model half the time


def test_sample_warnings_name_each_kind_of_degenerate_output() -> None:
    rows = 8
    one_class = np.tile(np.array([[0.1, 0.9]], np.float32), (rows, 1))
    one_class[:, 1] += np.linspace(0, 0.05, rows, dtype=np.float32)
    constant = np.full((rows, 1), 3.0, np.float32)
    labels = np.zeros(rows, np.int64)
    varied = np.random.default_rng(0).standard_normal((rows, 3)).astype(np.float32)
    warnings = sample_warnings(
        [one_class, constant, labels, varied],
        ["probabilities", "score", "label", "embedding"],
        sample_source="validation data",
    )
    assert warnings == [
        "the original predicts class 1 of 'probabilities' for all 8 validation data samples: "
        "top-1 agreement says nothing",
        "the original's 'score' is about constant over the 8 validation data samples: the "
        "gate cannot see a change",
        "the original gives the same 'label' for all 8 validation data samples: agreement on "
        "it says nothing",
    ]
    assert sample_warnings([varied], ["embedding"], sample_source="generated")[0].startswith(
        "judged on generated inputs"
    )


def test_the_termination_log_keeps_every_candidate_longest() -> None:
    """Past 4 KB the summary loses tensor detail before the candidates' reasons, and
    those before the list of candidates; the choice itself is never dropped."""
    candidate = {
        "quantize": "int8",
        "outcome": "rejected",
        "reason": "x" * 600,
        "detail": "y" * 100,
        "sizeBytes": 1,
        "latencyMs": None,
        "gatePassed": True,
        "batchIndependent": False,
    }
    tensors = [{"name": f"t{i}", "datatype": "FP32", "shape": [-1, 8]} for i in range(100)]
    summary = {
        "digest": "d" * 64,
        "inputs": tensors,
        "outputs": tensors,
        "validation": {"passed": True, "auto": {"chosen": "none", "candidates": [candidate] * 5}},
    }
    brief = json.loads(fit_termination_log(summary))
    assert brief["inputs"] == 100
    listed = brief["validation"]["auto"]["candidates"]
    assert len(listed) == 5
    assert "reason" not in listed[0]
    assert listed[0]["outcome"] == "rejected"
    tiny = json.loads(fit_termination_log(summary, limit=300))
    assert tiny["validation"] == {"passed": True, "auto": {"chosen": "none"}}


def test_the_summary_names_the_chosen_mode(sources: Sources, tmp_path: Path) -> None:
    done = run_convert(
        *("--source", str(sources["iris_forest.skops"]), "--store", str(tmp_path / "store")),
        *("--quantize", "auto"),
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["quantize"] == "none"
    assert [c["quantize"] for c in summary["validation"]["auto"]["candidates"]] == ALL
    assert sum(line.startswith("candidate") for line in done.stderr.splitlines()) == len(ALL)
