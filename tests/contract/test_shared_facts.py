"""Every fact the operator and the server both hold, pinned in one place.

The two halves never import each other (docs/architecture.md): the operator renders a
command line and reads a termination message; the server parses the one and writes the
other. So each mirrored fact lives twice, and this module — the one place allowed to
import both halves — fails when the copies drift: the enums a spec field and a flag share,
the defaults and bounds of every setting the spec passes to a flag (the spec may be
stricter than the server, never looser), the probe paths and port, the artifact layout,
and the condition reason the resource shows for every way a conversion can fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import annotated_types
import numpy as np
import pytest
import yaml
from pydantic import BaseModel

from ondeck_operator.api import constants, fields
from ondeck_operator.api import spec as api
from ondeck_operator.reconcile import status
from ondeck_server import artifact
from ondeck_server.convert import errors as convert_errors
from ondeck_server.convert import quantize
from ondeck_server.convert.formats import Format
from ondeck_server.convert.inputs_spec import DType
from ondeck_server.convert.optimize import OptimizationLevel
from ondeck_server.convert.quantize import Int4Settings, Quantize
from ondeck_server.convert.validate import Thresholds
from ondeck_server.serve import asgi
from ondeck_server.serve.settings import ServeSettings

ENUMS: list[tuple[type[StrEnum], type[StrEnum]]] = [
    (fields.TensorDType, DType),
    (fields.Format, Format),
    (fields.OptimizationLevel, OptimizationLevel),
    (fields.Quantize, Quantize),
]


@pytest.mark.parametrize(("operator_enum", "server_enum"), ENUMS, ids=lambda e: e.__name__)
def test_enums_match(operator_enum: type[StrEnum], server_enum: type[StrEnum]) -> None:
    assert {m.value for m in operator_enum} == {m.value for m in server_enum}


def _bounds(model: type[BaseModel], name: str) -> tuple[Any, Any, Any]:
    """(default, lowest allowed, highest allowed) of a pydantic field; None: unbounded."""
    info = model.model_fields[name]
    low: Any = None
    high: Any = None
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge
        elif isinstance(item, annotated_types.Gt):
            low = item.gt
        elif isinstance(item, annotated_types.Le):
            high = item.le
        elif isinstance(item, annotated_types.Lt):
            high = item.lt
    return info.default, low, high


def _within(inner: tuple[Any, Any], outer: tuple[Any, Any]) -> bool:
    (ilo, ihi), (olo, ohi) = inner, outer
    low_ok = olo is None or (ilo is not None and ilo >= olo)
    high_ok = ohi is None or (ihi is not None and ihi <= ohi)
    return low_ok and high_ok


#: (spec model, spec field, server model, server field, the spec's default is the server's)
SETTINGS: list[tuple[type[BaseModel], str, type[BaseModel], str, bool]] = [
    (api.BatchingSpec, "max_batch_size", ServeSettings, "max_batch_size", True),
    (api.BatchingSpec, "max_delay_ms", ServeSettings, "max_delay_ms", True),
    (api.ServerSpec, "threads", ServeSettings, "threads", True),
    # None in the spec: the flag is left out and the server's default applies.
    (api.ServerSpec, "max_body_bytes", ServeSettings, "max_body_bytes", False),
    (api.ServerSpec, "max_queue", ServeSettings, "max_queue", False),
    (api.ServerSpec, "drain_timeout_seconds", ServeSettings, "drain_timeout", True),
    (api.LlmSpec, "max_context_length", ServeSettings, "max_context_length", True),
    (api.LlmSpec, "max_batch_size", ServeSettings, "max_batch_size", False),
    (api.LlmSamplingSpec, "temperature", ServeSettings, "default_temperature", True),
    (api.LlmSamplingSpec, "top_p", ServeSettings, "default_top_p", True),
    (api.LlmSamplingSpec, "top_k", ServeSettings, "default_top_k", True),
    (api.LlmSamplingSpec, "max_tokens", ServeSettings, "default_max_tokens", True),
    (api.ValidationSpec, "samples", Thresholds, "samples", True),
    (api.ValidationSpec, "min_cosine", Thresholds, "min_cosine", True),
    (api.ValidationSpec, "max_top1_disagreement", Thresholds, "max_top1_disagreement", True),
    (api.Int4Spec, "block_size", Int4Settings, "block_size", True),
    (api.Int4Spec, "accuracy_level", Int4Settings, "accuracy_level", True),
]


@pytest.mark.parametrize(
    ("spec_model", "spec_field", "server_model", "server_field", "same_default"),
    SETTINGS,
    ids=[f"{s[0].__name__}.{s[1]}" for s in SETTINGS],
)
def test_setting_defaults_and_bounds(
    spec_model: type[BaseModel],
    spec_field: str,
    server_model: type[BaseModel],
    server_field: str,
    same_default: bool,
) -> None:
    spec_default, *spec_range = _bounds(spec_model, spec_field)
    server_default, *server_range = _bounds(server_model, server_field)
    if same_default:
        assert spec_default == server_default
    else:
        assert spec_default is None
    assert _within((spec_range[0], spec_range[1]), (server_range[0], server_range[1])), (
        f"spec allows {spec_range}, the server only {server_range}"
    )


def test_served_model_name_pattern_matches() -> None:
    """spec.llm.servedModelName becomes `serve --name`: the same pattern on both sides."""
    from ondeck_operator.api.fields import SERVED_NAME_RE
    from ondeck_server.serve import settings

    assert settings._NAME.pattern == SERVED_NAME_RE
    assert _bounds(api.LlmSpec, "served_model_name")[0] is None


def test_int4_block_sizes_match() -> None:
    assert fields.INT4_BLOCK_SIZES == quantize.INT4_BLOCK_SIZES


def _convert_params(optimize: dict[str, Any]) -> dict[str, Any]:
    """What `convert` parses from the argv render writes for a spec with `optimize`."""
    import typer.main

    from ondeck_operator.render.args import convert_args
    from ondeck_server import cli

    spec = api.ModelDeploymentSpec.model_validate(
        {"model": {"uri": "file:///m/model.onnx"}, "optimize": optimize}
    )
    argv = convert_args(spec, store="/store", ref=None)
    cli._register()
    command = typer.main.get_command(cli.app).commands["convert"]  # type: ignore[attr-defined]
    params: dict[str, Any] = command.make_context("convert", argv[1:]).params
    return params


@pytest.mark.parametrize("mode", ["int4", "auto"])
@pytest.mark.parametrize(
    ("int4", "block_size", "accuracy_level"),
    [(None, 32, 4), ({"blockSize": 128, "accuracyLevel": 1}, 128, 1)],
)
def test_int4_settings_reach_the_convert_command(
    mode: str, int4: dict[str, int] | None, block_size: int, accuracy_level: int
) -> None:
    """`optimize.int4` (or its defaults, when omitted) is what `convert` parses, for int4
    and for auto (whose int4 candidate uses them)."""
    from ondeck_operator.render.args import convert_args

    optimize: dict[str, Any] = {"quantize": mode}
    if int4 is not None:
        optimize["int4"] = int4
    params = _convert_params(optimize)
    assert params["quantize"] is Quantize(mode)
    assert (params["int4_block_size"], params["int4_accuracy_level"]) == (
        block_size,
        accuracy_level,
    )
    # Other modes pass no int4 flags: the server's defaults are never relied on for int4.
    plain = api.ModelDeploymentSpec.model_validate({"model": {"uri": "file:///m/model.onnx"}})
    assert not [a for a in convert_args(plain, store="/s", ref=None) if a.startswith("--int4")]


def test_validation_data_reaches_the_convert_command() -> None:
    """`optimize.validation.data` is `--validation-data`; absent, the flag is not written
    and the server falls back to the calibration file."""
    data = "s3://bucket/real-inputs.npz"
    params = _convert_params({"quantize": "auto", "validation": {"data": data}})
    assert params["validation_data"] == data
    assert _convert_params({"quantize": "auto"})["validation_data"] is None


def test_every_conversion_failure_has_a_deliberate_condition_reason() -> None:
    written = {r.value for r in convert_errors.Reason} | {"UsageError"}
    assert set(status.ERROR_REASONS) == written
    for error_type, reason in status.ERROR_REASONS.items():
        assert reason in status.FAILURE_REASONS, error_type
        assert status.failure_reason(f"{error_type}: boom") is reason
    # Verbatim where the names agree; the two deliberate renames are the only others.
    renamed = {k for k, v in status.ERROR_REASONS.items() if k != v.value}
    assert renamed == {"FetchFailed", "UsageError"}


def test_probe_paths_and_port() -> None:
    assert {
        constants.HEALTH_LIVE_PATH,
        constants.HEALTH_READY_PATH,
        constants.METRICS_PATH,
    } == asgi.OPEN_PATHS
    assert _bounds(ServeSettings, "port")[0] == constants.SERVER_PORT


def test_artifact_layout() -> None:
    from ondeck_operator.render.manifests import render  # noqa: F401  (the renderer's paths)

    assert artifact.REFS_DIR == "refs"
    assert artifact.MODEL_FILE == "model.onnx"
    assert artifact.MANIFEST_FILE == "manifest.json"


def test_the_summary_is_what_the_status_reports(tmp_path: Path) -> None:
    """Every key of convert's summary is a field of status.artifact (nothing the operator
    would drop), the LLM sizing facts are the LlmReport's fields, and a real conversion's
    summary parses into the report render sizes from (kind, precision, sizes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ondeck_server.convert import ConvertRequest, convert

    report_fields = {f.alias or f for f in api.ArtifactReport.model_fields.values()}
    llm_fields = {f.alias for f in api.LlmReport.model_fields.values()}
    assert set(artifact.LLM_SIZING_FACTS) == llm_fields
    weights = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    done = convert(ConvertRequest(source=str(path), store=tmp_path / "store"))
    summary = artifact.summary(done.manifest, path=done.path, ref=None, cached=done.cached)
    # `ref` is the artifact key the operator passed (--ref), which the report holds as `key`.
    assert set(summary) - {"ref"} <= report_fields
    report = status.parse_summary(json.dumps(summary), key="k")
    assert (report.kind, report.precision) == ("tensor", "fp32")
    assert report.source_size_bytes == path.stat().st_size
    assert report.size_bytes == (done.path / artifact.MODEL_FILE).stat().st_size
    assert report.llm is None


def test_the_llm_autoscaling_metric_is_the_servers_gauge() -> None:
    from ondeck_server.serve.llm.metrics import LlmMetrics

    metrics = LlmMetrics("m")
    metrics.watch(lambda: 0.0, lambda: 3.0)
    text = metrics.render().decode()
    assert f'{constants.LLM_WAITING_METRIC}{{model_name="m"}} 3.0' in text


def test_every_spec_dtype_converts(tmp_path: Path) -> None:
    """Each `spec.model.inputs[].dtype` the CRD accepts is one convert accepts, end to end:
    the rendered argv converts a model with an input of that type."""
    import onnx
    from onnx import TensorProto, helper

    from ondeck_operator.render.args import convert_args

    names = {"float32": "FLOAT", "float16": "FLOAT16", "float64": "DOUBLE", "bool": "BOOL"}
    for dtype in fields.TensorDType:
        elem = getattr(TensorProto, names.get(dtype.value, dtype.value.upper()))
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "identity",
            [helper.make_tensor_value_info("x", elem, ["batch", 4])],
            [helper.make_tensor_value_info("y", elem, ["batch", 4])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        path = tmp_path / f"{dtype.value}.onnx"
        onnx.save(model, str(path))
        md = api.ModelDeploymentSpec.model_validate(
            {
                "model": {
                    "uri": f"file://{path}",
                    "inputs": [{"name": "x", "dtype": dtype.value, "shape": [-1, 4]}],
                }
            }
        )
        argv = convert_args(md, store=str(tmp_path / "store"), ref=None)
        done = subprocess.run(
            [sys.executable, "-m", "ondeck_server", *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (dtype, done.stderr[-500:])
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["inputs"][0]["name"] == "x"


def test_auto_candidates_reach_the_status(tmp_path: Path) -> None:
    """`quantize: auto`: the termination message the Job writes becomes
    `status.artifact`, with the mode chosen as `quantize` and every candidate listed."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ondeck_operator.render.args import convert_args

    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "linear.onnx"
    onnx.save(model, str(path))
    md = api.ModelDeploymentSpec.model_validate(
        {"model": {"uri": f"file://{path}"}, "optimize": {"quantize": "auto"}}
    )
    log = tmp_path / "termination-log"
    argv = convert_args(md, store=str(tmp_path / "store"), ref=None, termination_log=str(log))
    done = subprocess.run(
        [sys.executable, "-m", "ondeck_server", *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-800:]
    report = status.parse_summary(log.read_text(), key="k")
    assert report.validation is not None
    auto = report.validation["auto"]
    assert report.quantize == auto["chosen"]
    assert report.quantize in {m.value for m in fields.Quantize} - {"auto"}
    listed = [c["quantize"] for c in auto["candidates"]]
    assert listed == ["none", "fp16", "int8-static", "int8", "int4"]
    assert {c["outcome"] for c in auto["candidates"]} <= {"chosen", "passed", "rejected", "skipped"}


@pytest.mark.parametrize("program", ["ondeck_operator", "ondeck_server"])
@pytest.mark.parametrize(
    ("argv", "code", "first_line"),
    [
        (["--no-such-flag"], 2, "NoSuchOption: No such option: --no-such-flag"),
        (["no-such-command"], 2, "UsageError: No such command 'no-such-command'."),
        ([], 2, "Usage:"),
    ],
)
def test_both_command_lines_report_usage_errors_alike(
    program: str, argv: list[str], code: int, first_line: str
) -> None:
    """`ondeck` and `ondeck-server` share one convention for usage errors, written twice
    (cli/__init__.py and cli.py: the halves never import each other): one line
    `ErrorType: message` on stderr and exit 2; the help and exit 2 without arguments."""
    done = subprocess.run(
        [sys.executable, "-m", program, *argv],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == code
    lines = (done.stderr if argv else done.stdout + done.stderr).strip().splitlines()
    assert lines
    assert lines[0].strip().startswith(first_line), done.stderr
    assert "Traceback" not in done.stderr


def test_every_flag_the_operator_writes_is_one_the_server_reads() -> None:
    """render/args.py writes argv; convert/flags.py and serve/settings.py are the tables
    the server parses it with. A spec that sets everything gives every flag."""
    from ondeck_operator.api.spec import ModelDeployment
    from ondeck_operator.render.args import convert_args, serve_args
    from ondeck_server.convert.flags import BY_FLAG
    from ondeck_server.serve.settings import FLAGS as SERVE_FLAGS

    root = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((root / "examples/production/modeldeployment.yaml").read_text())
    spec = ModelDeployment.from_manifest(raw).spec
    convert = convert_args(
        spec, store="s3://b/p", ref="r", termination_log="/dev/termination-log", pvc_root="/m"
    )
    written = {a.split("=", 1)[0] for a in convert if a.startswith("--")}
    assert {"--source", "--store", "--ref", "--termination-log"} <= written
    assert written <= set(BY_FLAG)
    serve = serve_args(
        spec, model_path="/a/refs/r", name="m", auth_token_file="/t", model_cache="/c"
    )
    served = {a.split("=", 1)[0] for a in serve if a.startswith("--")}
    assert served <= {flag for flag, _ in SERVE_FLAGS.values()} | {"--model-cache"}
    raw = yaml.safe_load((root / "examples/tinyllm/modeldeployment.yaml").read_text())
    llm = serve_args(ModelDeployment.from_manifest(raw).spec, model_path="/a/r", name="m")
    llm_flags = {a for a in llm if a.startswith("--")}
    assert "--max-context-length" in llm_flags
    assert llm_flags <= {flag for flag, _ in SERVE_FLAGS.values()}
    # spec.llm.sampling: each field a --default-* flag the server parses back
    raw["spec"]["llm"]["sampling"] = {"temperature": 0.7, "topP": 0.9, "topK": 40, "maxTokens": 64}
    args = serve_args(ModelDeployment.from_manifest(raw).spec, model_path="/a/r", name="m")
    field_of = {flag: field for field, (flag, _) in SERVE_FLAGS.items()}
    pairs = dict(zip(args[1::2], args[2::2], strict=False))
    values = {field_of[f]: v for f, v in pairs.items() if f.startswith("--default-")}
    settings = ServeSettings.model_validate({"model": "/a/r", **values})
    assert (
        settings.default_temperature,
        settings.default_top_p,
        settings.default_top_k,
        settings.default_max_tokens,
    ) == (0.7, 0.9, 40, 64)


@pytest.mark.parametrize("n", [0, 1, 1023, 1024, 21_139, 486_071, 90 * 2**20, 3 * 2**30, 2**52])
def test_one_unit_convention_for_sizes(n: int) -> None:
    """Both halves print sizes in binary units (KiB, MiB), the same way: a stage line and
    the banner of one run never mix kB and KiB."""
    from ondeck_operator.local.banner import size
    from ondeck_server.convert.bounds import human

    assert size(n) == human(n)
    assert human(21_139) == "20.6 KiB"
    assert human(512) == "512 B"


def test_both_halves_print_one_stop_line_and_the_docs_quote_it() -> None:
    """A Ctrl-C during `ondeck run`'s conversion and one during `ondeck-server convert`
    print the same line (the child's copy is held back); the docs quote what runs."""
    from ondeck_operator.local.runner import INTERRUPTED
    from ondeck_server.convert.cli import interrupted_line
    from ondeck_server.convert.run import NOTHING_QUANTIZED

    docs = Path(__file__).resolve().parents[2] / "docs"

    def flat(name: str) -> str:
        return " ".join((docs / name).read_text().split())

    assert interrupted_line(written=False) == INTERRUPTED
    for name in ("quickstart.md", "conversion.md", "architecture.md"):
        assert f"`{INTERRUPTED}`" in flat(name), name
    assert f"`{NOTHING_QUANTIZED.format(mode='int8')}`" in flat("conversion.md")


def test_the_rollout_analysis_reads_the_names_every_server_exports() -> None:
    """reconcile/analysis.py parses `ondeck_requests_total` and
    `ondeck_request_duration_seconds` from both servers' /metrics (tensor and language
    model: both build them with serve/metrics.py's `request_metrics`)."""
    from ondeck_operator.reconcile import analysis
    from ondeck_server.serve import metrics
    from ondeck_server.serve.llm.metrics import LlmMetrics

    assert analysis.REQUESTS == metrics.REQUESTS_METRIC
    assert analysis.DURATION == metrics.REQUEST_DURATION_METRIC
    llm = LlmMetrics("m")
    llm.answered(200, 0.4)
    llm.answered(503, 0.1)
    sample = analysis.parse_sample(llm.render().decode())
    assert (sample.requests, sample.errors) == (2, 1)
    assert dict(sample.buckets)[float("inf")] == 2
