"""Bad input: every invalid field or combination is refused with an error that names the
field and the rule — by the types (`ModelDeployment.from_manifest`) and by the CRD schema
that `ondeck validate` and the API server use."""

from __future__ import annotations

import jsonschema
import pytest

from ondeck_operator.api.spec import ModelDeployment, SpecError
from ondeck_operator.codegen.crd import validation_schema

from .bad_manifests import BAD, Bad
from .specs import FULL_SPEC, manifest


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_types_refuse_with_field_and_rule(bad: Bad) -> None:
    with pytest.raises(SpecError) as info:
        ModelDeployment.from_manifest(bad.manifest())
    problems = info.value.problems
    assert any(p.startswith(f"{bad.field}: ") and bad.words in p for p in problems), problems


@pytest.mark.parametrize("bad", [b for b in BAD if b.rule], ids=[b.id for b in BAD if b.rule])
def test_rule_messages_are_the_crd_messages(bad: Bad) -> None:
    """The message a user gets from `ondeck validate` is the one the CRD's CEL rule gives."""
    with pytest.raises(SpecError) as info:
        ModelDeployment.from_manifest(bad.manifest())
    message = next(p for p in info.value.problems if p.startswith(bad.field)).split(": ", 1)[1]
    crd_text = str(validation_schema())
    assert message.replace("'", "\\'") in crd_text or message in crd_text


def test_valid_manifests_pass_both_validators() -> None:
    schema = jsonschema.Draft202012Validator(validation_schema())
    for doc in (manifest(), manifest(FULL_SPEC)):
        assert list(schema.iter_errors(doc)) == []
        ModelDeployment.from_manifest(doc)


SCHEMA_LEVEL = [b for b in BAD if not b.rule]


@pytest.mark.parametrize("bad", SCHEMA_LEVEL, ids=[b.id for b in SCHEMA_LEVEL])
def test_crd_schema_refuses_field_errors_at_the_field(bad: Bad) -> None:
    schema = jsonschema.Draft202012Validator(validation_schema())
    errors = list(schema.iter_errors(bad.manifest()))
    assert errors, f"the CRD schema accepts {bad.id}"
    paths = [".".join(str(p) for p in e.absolute_path) for e in errors]
    field = bad.field.replace("[", ".").replace("]", "")
    parent = field.rsplit(".", 1)[0] if "." in field else ""
    # A missing or unknown field is reported on its parent object.
    assert any(p in (field, parent) for p in paths), (paths, [e.message for e in errors])


def test_not_a_mapping() -> None:
    with pytest.raises(SpecError, match=r"manifest: expected a mapping, got list"):
        ModelDeployment.from_manifest([1, 2])


def test_null_fields_mean_the_default_as_in_the_api_server() -> None:
    from ondeck_operator.cli.render_cmd import check_manifest

    doc = manifest(
        {"model": {"uri": "s3://b/m.onnx", "format": None}, "server": {"replicas": None}}
    )
    assert check_manifest(doc) == []
    md = ModelDeployment.from_manifest(doc)
    assert md.spec.server.replicas == 1
    assert md.spec.model.format is None


def test_an_exclusive_bound_holds_in_both_validators() -> None:
    """spec.llm.sampling.topP is in (0, 1]: the CRD says so in OpenAPI's words (`minimum:
    0, exclusiveMinimum: true`), `ondeck validate`'s JSON Schema in 2020-12's."""
    schema = jsonschema.Draft202012Validator(validation_schema())
    llm = {"model": {"uri": "pvc://models/tiny/", "format": "hf-causal-lm"}}
    for top_p, ok in ((0.5, True), (1.0, True), (0.0, False), (1.5, False)):
        doc = manifest({**llm, "llm": {"sampling": {"topP": top_p}}})
        assert (list(schema.iter_errors(doc)) == []) is ok, top_p
        if ok:
            ModelDeployment.from_manifest(doc)
        else:
            with pytest.raises(SpecError, match=r"spec\.llm\.sampling\.topP"):
                ModelDeployment.from_manifest(doc)
