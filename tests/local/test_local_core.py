"""The pure part of local mode: manifest loading and its errors, the ignored-field
notices, URI resolution, example request bodies and the printed curl lines."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from ondeck_operator import local
from ondeck_operator.local import ConvertSummary, ManifestError, TensorSpec

ROOT = Path(__file__).resolve().parents[2]
IRIS = ROOT / "examples" / "iris"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "md.yaml"
    path.write_text(text)
    return path


MINIMAL = """\
apiVersion: ondeck.io/v1alpha1
kind: ModelDeployment
metadata: {name: m}
spec:
  model: {uri: model.onnx}
"""


def test_loads_the_iris_example() -> None:
    loaded = local.load_manifest(IRIS / "modeldeployment.yaml")
    assert loaded.md.metadata.name == "iris"
    assert loaded.base_dir == IRIS
    assert local.notices(loaded.raw) == []


def test_embedded_default_is_the_iris_example() -> None:
    embedded = local.default_manifest().parent
    for name in ("modeldeployment.yaml", "model.skops", "samples.npz"):
        assert (embedded / name).read_bytes() == (IRIS / name).read_bytes(), name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1, 2", "line 1: expected ',' or ']', but got '<stream end>'"),
        (
            "apiVersion: v1\nkind: ConfigMap\n",
            "holds no ModelDeployment; local mode runs exactly one",
        ),
        (MINIMAL + "---\n" + MINIMAL, "holds 2 ModelDeployments; local mode runs exactly one"),
        (
            MINIMAL.replace("{uri: model.onnx}", "{url: model.onnx}"),
            "spec.model.uri: required field is missing",
        ),
        (
            MINIMAL + "  optimize: {quantize: int2}\n",
            "spec.optimize.quantize: Input should be 'none', 'int8', 'int8-static', 'fp16', "
            "'int4' or 'auto'",
        ),
        (
            MINIMAL.replace("{name: m}", "{name: Iris}"),
            "metadata.name: 'Iris' is not a DNS-1035 label",
        ),
    ],
)
def test_bad_manifests_give_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        local.load_manifest(path)
    line = info.value.one_line()
    assert line.startswith(f"ManifestError: {path}:")
    assert expected in line
    assert "\n" not in line


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        local.load_manifest(tmp_path / "nope.yaml")
    assert info.value.one_line() == f"ManifestError: {tmp_path / 'nope.yaml'}: no such file"


def test_relative_uris_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    text = MINIMAL + "  optimize: {quantize: int8-static, calibration: data/cal.npz}\n"
    loaded = local.load_manifest(_write(tmp_path, text))
    spec = local.localize(loaded.md.spec, loaded.base_dir)
    assert spec.model.uri == str(tmp_path / "model.onnx")
    assert spec.optimize.calibration == str(tmp_path / "data" / "cal.npz")
    for uri in ("s3://b/k.onnx", "https://h/m.onnx", "/abs/m.onnx"):
        other = loaded.md.spec.model.model_copy(update={"uri": uri})
        assert (
            local.localize(loaded.md.spec.model_copy(update={"model": other}), tmp_path).model.uri
            == uri
        )


def test_pvc_uri_is_refused_locally(tmp_path: Path) -> None:
    loaded = local.load_manifest(
        _write(tmp_path, MINIMAL.replace("model.onnx", "pvc://models/m.onnx"))
    )
    with pytest.raises(ManifestError) as info:
        local.localize(loaded.md.spec, loaded.base_dir)
    assert info.value.one_line() == (
        "ManifestError: spec.model.uri: pvc://models/m.onnx names a PersistentVolumeClaim, "
        "which exists only in clusters; use a file path, https://, s3:// or gs:// locally"
    )


def test_cluster_only_fields_are_reported_one_line_each() -> None:
    loaded = local.load_manifest(ROOT / "examples" / "production" / "modeldeployment.yaml")
    fields = [n.field for n in local.notices(loaded.raw)]
    assert "spec.ingress" in fields
    assert "spec.autoscaling" in fields
    assert "spec.server.resources" in fields
    assert "spec.server.auth" not in fields  # used locally: the server asks for a token
    assert len(fields) == len(set(fields))
    lines = [n.line() for n in local.notices(loaded.raw)]
    assert (
        "ondeck: ignored in local mode: spec.ingress (no Ingress locally; use --host and --port)"
        in lines
    )


def test_credentials_secret_note() -> None:
    loaded = local.load_manifest(ROOT / "examples" / "s3" / "modeldeployment.yaml")
    (note,) = [n for n in local.notices(loaded.raw) if n.field == "spec.model.credentialsSecret"]
    assert note.line() == (
        "ondeck: spec.model.credentialsSecret (s3-model-reader) is not read locally: "
        "the AWS_* variables of this shell are used instead"
    )


def test_child_env_drops_ondeck_settings_keeps_credentials() -> None:
    env = local.child_env({"ONDECK_QUANTIZE": "fp16", "AWS_ACCESS_KEY_ID": "k", "PATH": "/bin"})
    assert env == {"AWS_ACCESS_KEY_ID": "k", "PATH": "/bin"}


IRIS_IN = [TensorSpec(name="input", datatype="FP32", shape=[-1, 4])]


def test_example_bodies_for_a_single_input() -> None:
    assert local.v2_body(IRIS_IN) == {
        "inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}
        ]
    }
    assert local.v1_body(IRIS_IN) == {"instances": [[0.1, 0.2, 0.3, 0.4]]}


def test_example_bodies_for_images_and_multiple_inputs() -> None:
    image = [TensorSpec(name="image", datatype="FP32", shape=[-1, 1, 2, 2])]
    assert local.v1_body(image) == {"instances": [[[[0.1, 0.2], [0.3, 0.4]]]]}
    text = [
        TensorSpec(name="input_ids", datatype="INT64", shape=[-1, -1]),
        TensorSpec(name="attention_mask", datatype="INT64", shape=[-1, -1]),
    ]
    body = local.v2_body(text)
    assert [t["shape"] for t in body["inputs"]] == [[1, 8], [1, 8]]
    assert body["inputs"][0]["data"] == [1] * 8
    assert local.v1_body(text) is None


def _summary(inputs: list[TensorSpec]) -> ConvertSummary:
    return ConvertSummary(
        digest="d" * 64,
        path="/store/" + "d" * 64,
        inputs=inputs,
        outputs=[TensorSpec(name="label", datatype="INT64", shape=[-1])],
        sizeBytes=900,
        originalSizeBytes=9196,
        quantize="int8",
    )


def test_banner_curl_lines_parse_back_to_the_request() -> None:
    shown = local.banner(name="iris", base_url="http://127.0.0.1:9000", summary=_summary(IRIS_IN))
    assert shown.files == {}
    lines = shown.lines
    assert lines[0] == "ondeck: serving iris at http://127.0.0.1:9000/v2/models/iris"
    assert lines[1] == "  inputs:  input FP32 [-1, 4]"
    assert lines[2] == "  outputs: label INT64 [-1]"
    (v2,) = [line for line in lines if line.startswith("  V2: ")]
    argv = shlex.split(v2.removeprefix("  V2: "))
    assert argv[:3] == ["curl", "-s", "http://127.0.0.1:9000/v2/models/iris/infer"]
    assert json.loads(argv[argv.index("-d") + 1]) == local.v2_body(IRIS_IN)
    (v1,) = [line for line in lines if line.startswith("  V1: ")]
    argv = shlex.split(v1.removeprefix("  V1: "))
    assert argv[2] == "http://127.0.0.1:9000/v1/models/iris:predict"
    assert json.loads(argv[argv.index("-d") + 1]) == {"instances": [[0.1, 0.2, 0.3, 0.4]]}


def test_big_bodies_go_to_a_file(tmp_path: Path) -> None:
    image = [TensorSpec(name="image", datatype="FP32", shape=[-1, 3, 32, 32])]
    shown = local.banner(
        name="cnn", base_url="http://h:1", summary=_summary(image), spill_dir=tmp_path
    )
    (v2,) = [line for line in shown.lines if line.startswith("  V2: ")]
    argv = shlex.split(v2.removeprefix("  V2: "))
    assert argv[argv.index("-d") + 1] == f"@{tmp_path / 'cnn.v2.json'}"
    assert set(shown.files) == {tmp_path / "cnn.v2.json", tmp_path / "cnn.v1.json"}
    body = json.loads(shown.files[tmp_path / "cnn.v2.json"])
    assert len(body["inputs"][0]["data"]) == 3 * 32 * 32
    assert not list(tmp_path.iterdir())  # banner() only describes the files


def test_small_bodies_stay_inline_even_with_a_spill_dir(tmp_path: Path) -> None:
    shown = local.banner(
        name="iris", base_url="http://h:1", summary=_summary(IRIS_IN), spill_dir=tmp_path
    )
    assert shown.files == {}
    assert any('"data":[0.1,0.2,0.3,0.4]' in line for line in shown.lines)


def test_cached_summary_reads_a_complete_artifact(tmp_path: Path) -> None:
    folder = tmp_path / "d1"
    folder.mkdir()
    manifest = {
        "digest": "d1",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "sizeBytes": 10,
        "originalSizeBytes": 20,
        "settings": {"quantize": "int8"},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "key1").symlink_to(Path("..") / "d1")
    assert local.cached_summary(tmp_path, "key1") is None  # no model.onnx yet
    (folder / "model.onnx").write_bytes(b"onnx")
    hit = local.cached_summary(tmp_path, "key1")
    assert hit is not None
    assert (hit.digest, hit.quantize, hit.cached, hit.path) == ("d1", "int8", True, str(folder))
    assert local.cached_summary(tmp_path, "other") is None


@pytest.mark.parametrize(
    ("host", "expected"), [("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")]
)
def test_url_host(host: str, expected: str) -> None:
    assert local.url_host(host) == expected


def _spec_fields() -> set[tuple[str, ...]]:
    """(section,) for top-level spec fields that are objects of their own, and
    (section, field) for their fields, by manifest name."""
    import typing

    from pydantic import BaseModel

    from ondeck_operator.api.spec import ModelDeploymentSpec

    out: set[tuple[str, ...]] = set()
    for top in ModelDeploymentSpec.model_fields.values():
        types = [top.annotation, *typing.get_args(top.annotation)]
        sub = next((t for t in types if isinstance(t, type) and issubclass(t, BaseModel)), None)
        assert sub is not None, top.alias
        for field in sub.model_fields.values():
            out.add((str(top.alias), str(field.alias)))
    return out


def test_every_spec_field_is_used_or_reported_locally() -> None:
    covered = set(local.USED_LOCALLY) | set(local.REPLACED_LOCALLY)
    for path in local.CLUSTER_ONLY:
        covered |= {f for f in _spec_fields() if f[: len(path)] == path}
    assert _spec_fields() - covered == set()
    assert not (set(local.USED_LOCALLY) & set(local.CLUSTER_ONLY))


def test_the_artifact_line_says_when_quantization_changed_nothing() -> None:
    """int8 on a tree model (no MatMul): 20.6 KiB → 20.8 KiB is no gain (issue 16)."""
    shrunk = _summary(IRIS_IN)
    assert local.sizes(shrunk) == "9.0 KiB → 900 B, quantize int8"
    tree = shrunk.model_copy(update={"size_bytes": 21_300, "original_size_bytes": 21_139})
    assert local.sizes(tree) == (
        "20.6 KiB → 20.8 KiB, quantize int8 (changed nothing: no operator it quantizes)"
    )
    plain = tree.model_copy(update={"quantize": "none"})
    assert local.sizes(plain) == "20.6 KiB → 20.8 KiB, quantize none"
