"""Manifest errors a new user meets, with the exact line they read: a misspelt field
names the field it resembles, and a string YAML read as a number says to quote it."""

from __future__ import annotations

from typing import Any

import pytest

from ondeck_operator.api import hints
from ondeck_operator.api.spec import ModelDeployment, ModelSource, ServerSpec, SpecError


def _problems(spec: dict[str, Any]) -> list[str]:
    manifest = {
        "apiVersion": "ondeck.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris"},
        "spec": spec,
    }
    with pytest.raises(SpecError) as caught:
        ModelDeployment.from_manifest(manifest)
    return caught.value.problems


REF = "(see docs/reference/modeldeployment.md)"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"model": {"url": "model.skops"}},
            f"spec.model.url: unknown field; did you mean `uri`? {REF}",
        ),
        (
            {"model": {"uri": "model.skops"}, "optimise": {"quantize": "int8"}},
            f"spec.optimise: unknown field; did you mean `optimize`? {REF}",
        ),
        (
            {"model": {"uri": "model.skops"}, "server": {"maxBatch": 8}},
            f"spec.server.maxBatch: unknown field; did you mean `batching.maxBatchSize`? {REF}",
        ),
        (
            {"model": {"uri": "model.skops"}, "server": {"batching": {"maxBatch": 8}}},
            f"spec.server.batching.maxBatch: unknown field; did you mean `maxBatchSize`? {REF}",
        ),
        (
            {"model": {"uri": "m.pt", "inputs": [{"name": "x", "dtype": "float32", "shap": [1]}]}},
            f"spec.model.inputs[0].shap: unknown field; did you mean `shape`? {REF}",
        ),
        (
            {"model": {"uri": "model.skops"}, "zzz": 1},
            "spec.zzz: unknown field (check the spelling; see docs/reference/modeldeployment.md)",
        ),
    ],
)
def test_a_typo_names_the_field_it_resembles(spec: dict[str, Any], expected: str) -> None:
    assert expected in _problems(spec)


def test_sha256_read_as_a_number_says_to_quote_it() -> None:
    # `sha256: 0000…0000` unquoted: YAML reads an int.
    assert _problems({"model": {"uri": "model.skops", "sha256": 0}}) == [
        "spec.model.sha256: must be a string, but YAML read the value as a number; put it in "
        'quotes: sha256: "…"'
    ]


def test_a_string_read_as_a_boolean_says_to_quote_it() -> None:
    assert _problems({"model": {"uri": "model.skops", "sha256": True}}) == [
        "spec.model.sha256: must be a string, but YAML read the value as a boolean "
        '(true/false, yes/no, on/off); put it in quotes: sha256: "…"'
    ]


def test_suggestions_come_from_the_api_types() -> None:
    assert hints.suggest(ModelSource, "URI") == "uri"
    assert hints.suggest(ModelSource, "allow_unsafe_pickle") == "allowUnsafePickle"
    assert hints.suggest(ServerSpec, "maxDelay") == "batching.maxDelayMs"
    assert hints.suggest(ModelSource, "qqqqqq") is None
    assert hints.model_at(ModelDeployment, ["spec", "model", "inputs", 0]) is not None


def test_unknown_field_message_is_usable_without_pydantic_errors() -> None:
    # What `ondeck validate`'s JSON-schema path can call with the location it refuses.
    assert hints.unknown_field_message(ModelDeployment, ["spec", "model"], "url") == (
        f"unknown field; did you mean `uri`? {REF}"
    )
    assert hints.unknown_field_message(None, ["spec"], "url") == (
        "unknown field (check the spelling; see docs/reference/modeldeployment.md)"
    )
