"""Property-based tests: any valid spec renders without error, deterministically, to
objects that are valid for the real Kubernetes schemas, with restricted-profile pods,
owner references and names within Kubernetes' limits; the types and the CRD schema agree
on every valid manifest; child names are always valid and distinct."""

from __future__ import annotations

import copy
import os
import re

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.codegen.crd import validation_schema
from ondeck_operator.render.manifests import RenderState, render
from ondeck_operator.render.names import child_name

from .k8s_checks import all_problems
from .strategies import Doc, manifests, render_states

CONFIG = OperatorConfig()
SCHEMA = jsonschema.Draft202012Validator(validation_schema())
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
PROPERTY = settings(
    max_examples=int(os.environ.get("ONDECK_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(doc=manifests(), state=render_states)
def test_any_valid_spec_renders_valid_restricted_owned_objects(
    doc: Doc, state: RenderState
) -> None:
    original = copy.deepcopy(doc)
    md = ModelDeployment.from_manifest(doc)
    objects = render(md, CONFIG, state)
    assert doc == original, "render must not change its input"
    assert all_problems(objects, md) == []
    # Deterministic: again, and from the manifest the model dumps back to.
    assert render(md, CONFIG, state) == objects
    assert render(ModelDeployment.from_manifest(md.to_manifest()), CONFIG, state) == objects
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), names


@PROPERTY
@given(doc=manifests())
def test_types_and_crd_schema_accept_the_same_valid_manifests(doc: Doc) -> None:
    ModelDeployment.from_manifest(doc)
    assert [e.message for e in SCHEMA.iter_errors(doc)] == []
    # What the types dump (defaults filled in) is valid for the CRD too.
    dumped = ModelDeployment.from_manifest(doc).to_manifest()
    assert [e.message for e in SCHEMA.iter_errors(dumped)] == []


@settings(max_examples=300, deadline=None)
@given(
    base=st.text(min_size=1, max_size=300),
    suffix=st.lists(st.text(max_size=70), max_size=3),
    other=st.text(min_size=1, max_size=300),
)
def test_child_names_are_valid_labels_and_distinct(
    base: str, suffix: list[str], other: str
) -> None:
    name = child_name(base, *suffix)
    assert len(name) <= 63
    assert DNS_1035.match(name), name
    assert child_name(base, *suffix) == name
    if other != base:
        assert child_name(other, *suffix) != name or "-".join([other, *suffix]) == "-".join(
            [base, *suffix]
        )


def _scribble(node: object) -> None:
    """Change every mapping and list inside `node`, in place."""
    if isinstance(node, dict):
        for value in node.values():
            _scribble(value)
        node["scribbled"] = True
    elif isinstance(node, list):
        for value in node:
            _scribble(value)
        node.append("scribbled")


@PROPERTY
@given(doc=manifests(), state=render_states)
def test_rendered_objects_share_nothing_with_the_spec_or_each_other(
    doc: Doc, state: RenderState
) -> None:
    md = ModelDeployment.from_manifest(doc)
    first = render(md, CONFIG, state)
    expected = copy.deepcopy(first)
    _scribble(first)
    assert render(md, CONFIG, state) == expected
