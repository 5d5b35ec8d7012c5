"""drift.needs_apply: what counts as a difference the operator must re-apply."""

from __future__ import annotations

from typing import Any

import pytest

from ondeck_operator.reconcile.drift import needs_apply, quantity


def deployment(**container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "labels": {"a": "1"}},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "server", "image": "x:1", **container},
                        {"name": "sidecar", "image": "y:1"},
                    ]
                }
            }
        },
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("1000m", 1),
        ("0.5", 0.5),
        ("500m", 0.5),
        ("1Gi", 2**30),
        ("1e3", 1000),
        ("2k", 2000),
    ],
)
def test_quantities_parse(text: str, value: float) -> None:
    assert quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "abc", "1Xi", "1.2.3", "--1"])
def test_non_quantities_do_not_parse(text: str) -> None:
    assert quantity(text) is None


def test_missing_object_needs_apply() -> None:
    assert needs_apply(deployment(), None)


def test_fields_added_by_the_server_or_other_managers_are_ignored() -> None:
    want = deployment(resources={"requests": {"cpu": "0.5", "memory": "1Gi"}})
    have = deployment(
        resources={"requests": {"cpu": "500m", "memory": "1Gi"}},
        terminationMessagePath="/dev/termination-log",
    )
    have["spec"]["replicas"] = 7  # the HPA's
    have["metadata"]["labels"]["extra"] = "2"
    have["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    have["status"] = {"replicas": 7}
    # named lists match by name, in any order
    have["spec"]["template"]["spec"]["containers"].reverse()
    assert not needs_apply(want, have)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="evil:1"),
        lambda d: d["metadata"]["labels"].update(a="2"),
        lambda d: d["spec"]["template"]["spec"]["containers"].pop(),
        lambda d: d["spec"]["template"]["spec"]["containers"].append({"name": "extra"}),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(args=["serve", "--x"]),
    ],
    ids=["image", "label", "container removed", "container added", "args"],
)
def test_edits_of_owned_fields_need_apply(edit: Any) -> None:
    want = deployment(args=["serve"])
    have = deployment(args=["serve"])
    edit(have)
    assert needs_apply(want, have)


def test_booleans_are_not_numbers() -> None:
    assert needs_apply(
        {"kind": "X", "metadata": {}, "spec": {"flag": True}},
        {"kind": "X", "metadata": {}, "spec": {"flag": 1}},
    )
