"""Does an observed object already hold everything the operator wants in it? (pure)

`needs_apply(desired, observed)` answers whether a server-side apply would change
anything the operator owns: every field in `desired` must be present in `observed` with an
equal value. Fields only in `observed` (defaults the API server filled in, status, fields
other managers own, such as `spec.replicas` set by an HPA or `kubectl scale`) are ignored.
This is what lets an idle resync write nothing while a child edited by hand is restored.

Equality is semantic where the API server normalizes: quantities compare by value
(`1000m` == `1`, `0.5Gi` == `512Mi`), lists of named items (containers, env, ports, volumes)
match by name, other lists position by position.

What this module does NOT do: merge, patch or talk to the API server.
"""

from __future__ import annotations

from typing import Any

from ondeck_operator.api.fields import quantity

__all__ = ["needs_apply", "quantity", "subset"]


def _scalar_equal(want: Any, have: Any) -> bool:
    if want == have and type(want) is type(have):
        return True
    if isinstance(want, bool) or isinstance(have, bool):
        return False
    if isinstance(want, int | float | str) and isinstance(have, int | float | str):
        a, b = quantity(str(want)), quantity(str(have))
        return a is not None and a == b
    return False


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def subset(want: Any, have: Any) -> bool:
    """Whether `have` contains everything in `want` (recursively)."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return False
        return all(k in have and subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        if not isinstance(have, list):
            return False
        if _named(want) and _named(have):
            by_name = {item["name"]: item for item in have}
            return len(by_name) == len(want) and all(
                item["name"] in by_name and subset(item, by_name[item["name"]]) for item in want
            )
        return len(want) == len(have) and all(subset(a, b) for a, b in zip(want, have, strict=True))
    return _scalar_equal(want, have)


def needs_apply(desired: dict[str, Any], observed: dict[str, Any] | None) -> bool:
    """True when `observed` is missing or lacks (or contradicts) any field of `desired`."""
    if observed is None:
        return True
    meta_want = desired.get("metadata", {})
    meta_have = observed.get("metadata", {})
    for key in ("labels", "annotations", "ownerReferences"):
        if key in meta_want and not subset(meta_want[key], meta_have.get(key)):
            return True
    body_want = {k: v for k, v in desired.items() if k not in ("metadata", "apiVersion", "kind")}
    return not subset(body_want, observed)
