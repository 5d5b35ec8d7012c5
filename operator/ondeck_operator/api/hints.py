"""Hints for manifest errors, computed from the API types themselves: the field a typo
most resembles ("did you mean `uri`?") and the quoting hint for a value YAML read as a
number or a boolean where a string was meant (`sha256: 0000…`).

Pure functions over pydantic model classes: no I/O. `format_errors` (spec.py) uses them;
any other validator of manifests (the JSON-schema path of `ondeck validate`) can call
`unknown_field_message` with the location and the key it refuses.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel

#: Where the field names live, for a user who wants the whole list.
REFERENCE_DOC = "docs/reference/modeldeployment.md"
#: How close a typo must be to a field name to be suggested (difflib's ratio).
SAME_LEVEL_CUTOFF = 0.6
#: A stricter bar for a field one level further down (`maxBatch` under `server` means
#: `batching.maxBatchSize`): only a clear resemblance is worth the detour.
NESTED_CUTOFF = 0.75


def field_names(model: type[BaseModel]) -> list[str]:
    """The names a manifest uses for `model`'s fields (camelCase aliases), in order."""
    return [info.alias or name for name, info in model.model_fields.items()]


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation holds: `X`, `X | None`, `list[X]`, `dict[str, X]`,
    `Annotated[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is None:
        return
    for arg in typing.get_args(annotation):
        if origin is typing.Annotated:
            yield from _models_in(arg)
            return
        yield from _models_in(arg)


def _child_model(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            found = list(_models_in(info.annotation))
            return found[0] if found else None
    return None


def model_at(root: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class at a location in a manifest (`("spec", "model")` → ModelSource);
    list indexes and map keys are stepped over. None where the path leaves the types."""
    model: type[BaseModel] | None = root
    for part in path:
        if model is None:
            return None
        if isinstance(part, int) or str(part).isdigit():
            continue  # a list index: the element type is the model found already
        child = _child_model(model, str(part))
        if child is None and not _is_field(model, str(part)):
            # A map key (dict[str, X]): the model is X, already found by the field.
            continue
        model = child
    return model


def _is_field(model: type[BaseModel], key: str) -> bool:
    return any(key in (name, info.alias) for name, info in model.model_fields.items())


def suggest(model: type[BaseModel], key: str) -> str | None:
    """The field of `model` a wrong key most resembles: a field of this level (`url` →
    `uri`, `optimise` → `optimize`, case or snake_case aside), else a field one level down
    given with its parent (`maxBatch` under ServerSpec → `batching.maxBatchSize`)."""
    names = field_names(model)
    folded = {_fold(n): n for n in names}
    if _fold(key) in folded:
        return folded[_fold(key)]
    close = difflib.get_close_matches(key, names, n=1, cutoff=SAME_LEVEL_CUTOFF)
    if close:
        return close[0]
    nested: dict[str, str] = {}
    for name, info in model.model_fields.items():
        for child in _models_in(info.annotation):
            for leaf in field_names(child):
                nested.setdefault(leaf, f"{info.alias or name}.{leaf}")
    folded_nested = {_fold(n): n for n in nested}
    if _fold(key) in folded_nested:
        return nested[folded_nested[_fold(key)]]
    close = difflib.get_close_matches(key, list(nested), n=1, cutoff=NESTED_CUTOFF)
    return nested[close[0]] if close else None


def _fold(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def unknown_field_message(
    root: type[BaseModel] | None, parent: Sequence[str | int], key: str
) -> str:
    """What to say about an unknown `key` in the object at `parent` (a location from the
    manifest's root, without the key): the field it resembles when there is one."""
    model = model_at(root, parent) if root is not None else None
    guess = suggest(model, key) if model is not None else None
    if guess is not None:
        return f"unknown field; did you mean `{guess}`? (see {REFERENCE_DOC})"
    return f"unknown field (check the spelling; see {REFERENCE_DOC})"


def yaml_scalar_hint(key: str, value: object) -> str | None:
    """For a string field that YAML gave a number or a boolean: how to quote it. YAML reads
    `0000…` and `1e10` as numbers and `yes`/`on` as true, and the original text is gone
    by then, so the hint shows the shape of the fix rather than the value."""
    if isinstance(value, bool):
        what = "a boolean (true/false, yes/no, on/off)"
    elif isinstance(value, int | float):
        what = "a number"
    else:
        return None
    return f'must be a string, but YAML read the value as {what}; put it in quotes: {key}: "…"'


__all__ = [
    "NESTED_CUTOFF",
    "REFERENCE_DOC",
    "SAME_LEVEL_CUTOFF",
    "field_names",
    "model_at",
    "suggest",
    "unknown_field_message",
    "yaml_scalar_hint",
]
