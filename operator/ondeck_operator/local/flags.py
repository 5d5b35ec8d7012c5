"""The converter's error lines in manifest terms.

`ondeck-server convert` names its own flags in its errors (`--min-cosine`, "use a gentler
--quantize"); a user of `ondeck run -f md.yaml` wrote manifest fields
(`spec.optimize.validation.minCosine`). The table from flags to fields is not written
down a second time: it is read off `render.args.convert_args`, the one place that maps
fields to flags, by changing one spec field at a time and watching which flag changes.

Pure: no I/O.
"""

from __future__ import annotations

import enum
import functools
import re
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from ondeck_operator.api.spec import ModelDeploymentSpec
from ondeck_operator.render.args import convert_args


class FlagField(BaseModel):
    """One converter flag and the manifest field it comes from."""

    model_config = ConfigDict(frozen=True)

    flag: str
    field: str
    #: The values of an enum field (`--level basic` reads `spec.optimize.level: basic`).
    values: frozenset[str] = frozenset()


_BASE: dict[str, Any] = {"model": {"uri": "model.onnx"}}


def _unwrap(annotation: Any) -> Any:
    """`X | None` → X; `Annotated[X, ...]` → X."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _sample(annotation: Any) -> Any:
    """Some value of a type, enough for `convert_args` to read (no validation)."""
    kind = _unwrap(annotation)
    origin = typing.get_origin(kind)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return next(iter(kind))
    if kind is bool:
        return True
    if kind is int:
        return 1
    if kind is float:
        return 0.5
    if kind is str:
        return "sample"
    if origin is list:
        return [_sample(typing.get_args(kind)[0])]
    if origin is dict:
        return {}
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind.model_construct(
            **{name: _sample(info.annotation) for name, info in kind.model_fields.items()}
        )
    return None


def _other(annotation: Any, current: Any) -> Any:
    """A value of the type that differs from `current`."""
    kind = _unwrap(annotation)
    if current is None:
        return _sample(annotation)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return next((m for m in kind if m != current), current)
    if kind is bool:
        return not current
    if kind is int:
        return current + 1
    if kind is float:
        return current / 2 + 0.125
    if kind is str:
        return current + "-other"
    return None  # lists and maps that are set already: not varied


def _leaves(
    model: BaseModel, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], str, Any, BaseModel]]:
    """(manifest path, python name, annotation, owner) of every leaf field under `model`."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        alias = (info.alias or name,)
        if isinstance(value, BaseModel):
            yield from _leaves(value, (*path, *alias))
        else:
            yield (*path, *alias), name, info.annotation, model


def _replace(model: BaseModel, path: list[str], value: Any) -> BaseModel:
    """`model` with the field at the python-name `path` set to `value`, unvalidated."""
    head, *rest = path
    new = value if not rest else _replace(getattr(model, head), rest, value)
    return model.model_copy(update={head: new})


def _python_path(model: BaseModel, manifest_path: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    node: Any = model
    for alias in manifest_path:
        for name, info in type(node).model_fields.items():
            if (info.alias or name) == alias:
                out.append(name)
                node = getattr(node, name)
                break
    return out


def _flags(argv: list[str]) -> dict[str, str | None]:
    """`--flag value` pairs (None for a flag with no value) of an argv."""
    out: dict[str, str | None] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[arg] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def _argv(spec: ModelDeploymentSpec) -> dict[str, str | None]:
    return _flags(convert_args(spec, store="store", ref=None))


@functools.cache
def convert_flag_fields() -> tuple[FlagField, ...]:
    """Every flag `convert_args` derives from a spec field, with that field."""
    base = ModelDeploymentSpec.model_validate(_BASE)
    before = _argv(base)
    found: dict[str, FlagField] = {}
    for manifest_path, _name, annotation, _owner in _leaves(base, ("spec",)):
        current = base
        python_path = _python_path(base, manifest_path[1:])
        node: Any = base
        for name in python_path:
            node = getattr(node, name)
        other = _other(annotation, node)
        if other is None or other == node:
            continue
        varied = _replace(current, python_path, other)
        after = _argv(typing.cast(ModelDeploymentSpec, varied))
        kind = _unwrap(annotation)
        values = (
            frozenset(str(m.value) for m in kind)
            if isinstance(kind, type) and issubclass(kind, enum.Enum)
            else frozenset()
        )
        for flag in sorted(set(before) | set(after)):
            if before.get(flag, "absent") != after.get(flag, "absent"):
                found.setdefault(
                    flag, FlagField(flag=flag, field=".".join(manifest_path), values=values)
                )
    return tuple(sorted(found.values(), key=lambda f: f.flag))


_FLAG_RE = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)(?![\w-])(?: ([\w.+-]+))?")


def in_manifest_terms(line: str) -> str:
    """A converter error line with its flags named as manifest fields: `--min-cosine` →
    `spec.optimize.validation.minCosine`, `--level basic` → `spec.optimize.level: basic`,
    and `--allow-unsafe-pickle (spec.model.allowUnsafePickle)` said once. Flags that come
    from no manifest field (`--store`, `--max-download-bytes`) stay as they are."""
    table = {f.flag: f for f in convert_flag_fields()}

    def name(match: re.Match[str]) -> str:
        entry = table.get(match.group(1))
        word = match.group(2)
        if entry is None:
            return match.group(0)
        if word is not None and word in entry.values:
            return f"{entry.field}: {word}"
        return entry.field + (f" {word}" if word is not None else "")

    text = _FLAG_RE.sub(name, line)
    for entry in table.values():
        text = text.replace(f"{entry.field} ({entry.field})", entry.field)
    return text


__all__ = ["FlagField", "convert_flag_fields", "in_manifest_terms"]
