"""The YAML ondeck emits for users reads back as the same strings in every reader (issue 15
item 11): PyYAML (YAML 1.1), ruamel.yaml (YAML 1.2) and Go's YAML (kubectl, helm).

Before the fix `ondeck render` printed `ondeck.io/artifact-key: 76821728860096e3` for
examples/minilm (Go reads a float: kubectl refused the output), `name: y` for a model named
`y` (Go reads `true`), and user labels such as `1e3` or `yes` as they came.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.cli import render_cmd as cli_render
from ondeck_operator.codegen.crd import crd_yaml
from ondeck_operator.codegen.reference import EXAMPLE
from ondeck_operator.render import yaml_out
from ondeck_operator.render.args import artifact_key
from ondeck_operator.render.manifests import RenderState, render

from .specs import manifest
from .yaml_readers import go_load, pyyaml_load, ruamel_load

ROOT = Path(__file__).resolve().parents[3]
#: Hex keys Go (and YAML 1.2) read as floats: digits, one `e`, digits.
FLOAT_LIKE = re.compile(r"[0-9]+e[0-9]+")

#: The values named in the issue, and one of each form some resolver reads as a non-string.
HOSTILE = [
    "y", "Y", "n", "N", "yes", "Yes", "NO", "on", "Off", "true", "False", "null", "Null",
    "~", "", "1e3", "1E3", "-1e3", "+1e3", "1e+3", "76821728860096e3", "0462088682918e86",
    "0x1F", "0X1f", "-0x1F", "0o17", "017", "0b101", "1_000", "+1", "-1", "1.", ".5", "-.5",
    "+.5", "1.5e-3", ".inf", "-.Inf", "+.INF", ".nan", ".NaN", "1:20", "-1:20", "190:20:30.15",
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "<<", "=",
    "0", "00", "007", "1Gi", "500m", "0.1.0", "yes ", " no", "y\n", "a: b", "- x", "#c",
    "'", '"', "@x", "`x", "!x", "&a", "*a", "%x", "{a}", "[a]", "? x", "x #y", "caf\xe9",
    "\u2028", "\x85", "tab\there", "  lead", "trail  ", "multi\nline\n", "\ufeffbom",
]  # fmt: skip

NUMBERISH = st.one_of(
    st.from_regex(r"\A[-+]?(0|[1-9][0-9_]{0,8})(\.[0-9_]{0,6})?([eE][-+]?[0-9]{1,3})?\Z"),
    st.from_regex(r"\A[-+]?0[xXoObB][0-9a-fA-F_]{1,8}\Z"),
    st.from_regex(r"\A[-+]?[0-9]{1,3}(:[0-5]?[0-9]){1,3}(\.[0-9]*)?\Z"),
    st.from_regex(r"\A[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([Tt ][0-9]{1,2}:[0-9]{2}:[0-9]{2})?\Z"),
    st.from_regex(r"\A[0-9]{1,15}[eE][0-9]{1,15}\Z"),
    st.from_regex(r"\A[-+]?\.([iI][nN][fF]|[nN][aA][nN])\Z"),
    st.from_regex(r"\A(?i:y|n|yes|no|on|off|true|false|null|~)\Z"),
    st.from_regex(r"\A[0-9a-f]{16}\Z"),
)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
HOSTILE_TEXT = st.one_of(st.sampled_from(HOSTILE), NUMBERISH, TEXT)

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _object(value: str) -> dict[str, Any]:
    """A Kubernetes-shaped object with `value` as a name, label and annotation key and
    value, URI and list item."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": value,
            "labels": {value: value, "ondeck.io/artifact-key": value},
            "annotations": {value: value},
        },
        "data": {"uri": f"{value}", "args": ["--ref", value]},
    }


def _same_in_python_readers(documents: list[Any], text: str) -> None:
    assert pyyaml_load(text) == documents, text
    if ruamel_load is not None:
        assert ruamel_load(text) == documents, text


#: Every one of these is a non-string to PyYAML, ruamel.yaml (1.2) or Go, written plain.
NON_STRINGS = [
    "y", "Y", "n", "N", "yes", "Yes", "NO", "on", "Off", "true", "False", "null", "Null",
    "~", "", "1e3", "1E3", "-1e3", "+1e3", "1e+3", "76821728860096e3", "0462088682918e86",
    "0x1F", "0X1f", "-0x1F", "0o17", "017", "0b101", "1_000", "+1", "-1", "1.", ".5", "-.5",
    "+.5", "1.5e-3", ".inf", "-.Inf", "+.INF", ".nan", ".NaN", "1:20", "-1:20",
    "190:20:30.15", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "<<", "=", "0", "007",
]  # fmt: skip


@pytest.mark.parametrize("value", NON_STRINGS)
def test_needs_quotes_for_every_non_string_form(value: str) -> None:
    assert yaml_out.needs_quotes(value)
    assert yaml_out.dump(value).startswith(("'", '"'))


def test_plain_strings_stay_plain() -> None:
    text = yaml_out.dump({"name": "iris", "uri": "s3://bucket/model.onnx", "k": "yes-no"})
    assert text == "name: iris\nuri: s3://bucket/model.onnx\nk: yes-no\n"
    assert yaml_out.dump({"key": "76821728860096e3", "y": "n"}) == (
        "key: '76821728860096e3'\n'y': 'n'\n"
    )


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_read_back_the_same_in_python_readers(value: str) -> None:
    obj = _object(value)
    _same_in_python_readers([obj], yaml_out.dump(obj))


@PROPERTY
@given(st.lists(HOSTILE_TEXT, min_size=1, max_size=4))
def test_any_string_reads_back_the_same(values: list[str]) -> None:
    documents = [_object(v) for v in values]
    _same_in_python_readers(documents, yaml_out.dump_all(documents))


@pytest.mark.skipif(ruamel_load is None, reason="needs ruamel.yaml (a YAML 1.2 reader)")
def test_plain_pyyaml_fails_the_yaml_1_2_reader() -> None:
    """The check can fail: PyYAML's own quoting leaves `1e3` and `0o17` plain, which a
    YAML 1.2 reader takes for numbers."""
    assert ruamel_load is not None
    text = yaml.safe_dump({"a": "1e3", "b": "0o17"})
    assert ruamel_load(text) == [{"a": 1000.0, "b": 15}]


def _numberish_corpus(count: int) -> list[str]:
    """Deterministic strings of every number-, bool- and date-like form, plus artifact
    keys that look like floats (the 1 in ~2 800 that broke kubectl)."""
    rng = random.Random(15)
    digits = "0123456789"
    corpus = list(HOSTILE)
    for _ in range(count):
        head = "".join(rng.choice(digits) for _ in range(rng.randint(1, 9)))
        tail = "".join(rng.choice(digits) for _ in range(rng.randint(1, 6)))
        corpus += [
            f"{head}e{tail}",
            f"{rng.choice(['', '-', '+'])}{head}.{tail}",
            f"0x{rng.getrandbits(24):x}",
            f"{head[:3]}:{rng.randint(0, 59)}",
            f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            f"{head[:2]}_{tail}",
            "".join(rng.choice(c) for c in ("yY", "eE", "sS"))[: rng.randint(1, 3)],
        ]
    keys = (hashlib.sha256(str(i).encode()).hexdigest()[:16] for i in itertools.count())
    corpus += list(itertools.islice((k for k in keys if FLOAT_LIKE.fullmatch(k)), 3))
    return corpus


def test_go_reads_what_we_emit_as_the_same_strings() -> None:
    """One `helm template` reads ~3 000 hostile strings, as values and as keys."""
    corpus = _numberish_corpus(400)
    values = {"values": corpus, "keys": {v: v for v in corpus if v}}
    (read,) = go_load([yaml_out.dump(values)])
    assert read == values
    # The check can fail: PyYAML's own output of the same data Go reads differently.
    plain = yaml.safe_dump({"values": ["y", "76821728860096e3"]})
    assert go_load([plain]) == [{"values": [True, 76821728860096000]}]


def _render_cli(doc: dict[str, Any], tmp_path: Path) -> str:
    app = typer.Typer(pretty_exceptions_enable=False)
    cli_render.register(app)
    path = tmp_path / "md.yaml"
    path.write_text(yaml_out.dump(doc))
    result = CliRunner().invoke(app, ["render", "-f", str(path)])
    assert result.exit_code == 0, result.output
    return result.stdout


def _hostile_manifest(name: str, uri: str) -> dict[str, Any]:
    labels = {"a": "1e3", "b": "yes", "c": "0x1F", "d": "1_000", "e": "2001-12-14", "f": "n"}
    annotations = {
        "y": "~", "1e3": "1:20", "0462088682918e86": "", "yes": "0o17", "a.io/on": "2001-12-14",
        "n": ".inf", "off": "null",
    }  # fmt: skip
    doc = manifest({"model": {"uri": uri}}, name=name)
    doc["spec"]["server"] = {"podLabels": labels, "podAnnotations": annotations, "replicas": 2}
    doc["spec"]["service"] = {"annotations": annotations}
    doc["spec"]["ingress"] = {"host": "y.example.com", "annotations": annotations}
    return doc


def _float_like_key_uri() -> str:
    """A model URI whose artifact key Go reads as a float."""
    for i in itertools.count():
        uri = f"s3://models/m{i}.onnx"
        key = artifact_key(ModelDeployment.from_manifest(manifest({"model": {"uri": uri}})).spec)
        if FLOAT_LIKE.fullmatch(key):
            return uri
    raise AssertionError("unreachable")


@pytest.mark.parametrize("name", ["y", "n", "yes", "off", "minilm"])
def test_ondeck_render_reads_back_the_same_everywhere(name: str, tmp_path: Path) -> None:
    uri = _float_like_key_uri() if name == "minilm" else "s3://models/m.onnx"
    doc = _hostile_manifest(name, uri)
    md = ModelDeployment.from_manifest(doc)
    objects = render(md, OperatorConfig(), RenderState(serving_key=artifact_key(md.spec)))
    text = _render_cli(doc, tmp_path)
    _same_in_python_readers(objects, text)
    go = go_load([yaml_out.dump(o) for o in objects])
    assert go == [yaml.safe_load(yaml_out.dump(o)) for o in objects]


def test_the_examples_and_generated_files_read_the_same_everywhere() -> None:
    """The YAML ondeck ships for users (examples/, the CRD, the reference's example) reads
    the same in the 1.1, 1.2 and Go readers."""
    texts = {
        str(p.relative_to(ROOT)): p.read_text() for p in sorted(ROOT.glob("examples/**/*.yaml"))
    }
    texts["crd"] = crd_yaml()
    texts["reference example"] = EXAMPLE
    for where, text in texts.items():
        if ruamel_load is not None:
            assert ruamel_load(text) == pyyaml_load(text), where
    chunks = [chunk for text in texts.values() for chunk in _documents(text)]
    assert go_load(chunks) == [yaml.safe_load(chunk) for chunk in chunks]


def _documents(text: str) -> list[str]:
    return [chunk for chunk in text.split("\n---\n") if yaml.safe_load(chunk)]
