"""The converter's error lines in manifest terms: the flag → field table is read off
`render.args.convert_args` (never written a second time), and the one line `ondeck run`
prints names `spec.…` fields where the converter names its flags."""

from __future__ import annotations

import pytest

from ondeck_operator.api.spec import ModelDeploymentSpec
from ondeck_operator.local.flags import convert_flag_fields, in_manifest_terms
from ondeck_operator.render.args import convert_args


def test_the_table_is_derived_from_convert_args() -> None:
    table = {f.flag: f.field for f in convert_flag_fields()}
    assert table == {
        "--allow-unsafe-pickle": "spec.model.allowUnsafePickle",
        "--calibration": "spec.optimize.calibration",
        "--format": "spec.model.format",
        "--inputs": "spec.model.inputs",
        "--level": "spec.optimize.level",
        "--max-top1-disagreement": "spec.optimize.validation.maxTop1Disagreement",
        "--min-cosine": "spec.optimize.validation.minCosine",
        "--quantize": "spec.optimize.quantize",
        "--s3-endpoint-url": "spec.model.s3EndpointURL",
        "--sha256": "spec.model.sha256",
        "--source": "spec.model.uri",
        "--validation-data": "spec.optimize.validation.data",
        "--validation-samples": "spec.optimize.validation.samples",
    }


def test_every_flag_convert_args_emits_is_mapped_or_not_from_the_manifest() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {
                "uri": "m.pt",
                "format": "pytorch",
                "sha256": "0" * 64,
                "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3]}],
                "allowUnsafePickle": True,
                "s3EndpointURL": "http://s3.local",
            },
            "optimize": {"quantize": "int8-static", "calibration": "c.npz"},
        }
    )
    argv = convert_args(spec, store="/s", ref="k", termination_log="/t", pvc_root="/p")
    flags = {a for a in argv if a.startswith("--")}
    mapped = {f.flag for f in convert_flag_fields()}
    # What `ondeck run` itself decides, not the manifest:
    assert flags - mapped == {"--store", "--ref", "--termination-log", "--pvc-root"}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "ValidationFailed: the final model disagrees with the original (sklearn) on 64 "
            "generated samples: cosine 0.9999 < --min-cosine 1.0. Nothing was published; use a "
            "gentler --quantize (int8-static with --calibration, fp16, none) or, if this loss "
            "is acceptable, relax the threshold",
            "ValidationFailed: the final model disagrees with the original (sklearn) on 64 "
            "generated samples: cosine 0.9999 < spec.optimize.validation.minCosine 1.0. Nothing "
            "was published; use a gentler spec.optimize.quantize (int8-static with "
            "spec.optimize.calibration, fp16, none) or, if this loss is acceptable, relax the "
            "threshold",
        ),
        (
            "InvalidSettings: --quantize int8-static needs --calibration: an .npz with one "
            "array per model input (first dimension = samples); or use --quantize int8 (dynamic)",
            "InvalidSettings: spec.optimize.quantize: int8-static needs "
            "spec.optimize.calibration: an .npz with one array per model input (first "
            "dimension = samples); or use spec.optimize.quantize: int8 (dynamic)",
        ),
        (
            "UnsafeModel: m.pkl is a pickle (joblib/pickle): loading it runs any code it names. "
            "Save the model with skops (skops.io.dump) or, if you trust the file, pass "
            "--allow-unsafe-pickle (spec.model.allowUnsafePickle)",
            "UnsafeModel: m.pkl is a pickle (joblib/pickle): loading it runs any code it names. "
            "Save the model with skops (skops.io.dump) or, if you trust the file, pass "
            "spec.model.allowUnsafePickle",
        ),
        (
            "OptimizationFailed: onnxruntime: x; try --level basic or --level disabled",
            "OptimizationFailed: onnxruntime: x; try spec.optimize.level: basic or "
            "spec.optimize.level: disabled",
        ),
        (
            # Not from the manifest: stays a flag.
            "FetchFailed: raise --max-download-bytes if the model really is that big",
            "FetchFailed: raise --max-download-bytes if the model really is that big",
        ),
    ],
)
def test_error_lines_name_manifest_fields(line: str, expected: str) -> None:
    assert in_manifest_terms(line) == expected
