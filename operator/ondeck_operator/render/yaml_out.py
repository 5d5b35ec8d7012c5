"""The one YAML emitter for what ondeck prints for users (`ondeck render`): every string
comes back as the same string from any YAML 1.1 or 1.2 reader.

PyYAML quotes a string only when *its own* YAML 1.1 resolver would read it as something
else. Other readers resolve more: Go's YAML (kubectl, helm, Argo CD, Flux) reads `y`, `n`,
`1e3` and `76821728860096e3` as a bool or a float, a YAML 1.2 reader (ruamel.yaml, the
yaml npm package, snakeyaml-engine) reads `0o17` as an int and `1e3` as a float. An artifact
key that is all digits and one `e` (about 1 in 2 800 keys) or a model named `y` made
`kubectl apply` refuse `ondeck render`'s output.

The rule here is deliberately wider than any one resolver: a string is single-quoted when
it could be anything but a string to some reader:

- it starts with a digit, optionally after a sign and/or a dot (every int, float,
  timestamp and sexagesimal form in 1.1, 1.2 core, 1.2 JSON and Go: `0x1F`, `0o17`, `1_000`,
  `1e3`, `.5`, `-1:20`, `2001-12-14`);
- it is `.inf`/`.nan` with any sign and any case;
- it is, in any case, one of the 1.1 bools (`y n yes no on off true false`) or nulls
  (`null ~`), or the 1.1 merge/value keys `<<` and `=`, or empty.

Quoting a string that needed none (`1Gi`) costs two characters and changes nothing for any
reader. Mapping keys are strings too and follow the same rule.

Pure: imports only PyYAML.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

_NUMBER_LIKE = re.compile(r"[-+]?\.?[0-9]")
_SPECIAL_FLOAT = re.compile(r"[-+]?\.(inf|nan)", re.IGNORECASE)
_WORDS = frozenset(
    {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "<<", "=", ""}
)


def needs_quotes(text: str) -> bool:
    """True when some YAML 1.1, 1.2 or Go reader could read `text`, unquoted, as a
    non-string (see the module docstring for the rule)."""
    return (
        text.lower() in _WORDS
        or _NUMBER_LIKE.match(text) is not None
        or _SPECIAL_FLOAT.fullmatch(text) is not None
    )


class SafeDumper(yaml.SafeDumper):
    """PyYAML's safe dumper with the quoting rule of this module."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # "'" asks for single quotes; the emitter falls back to double quotes (with escapes)
    # where single quotes cannot hold the text, and never to plain.
    style = "'" if needs_quotes(data) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


SafeDumper.add_representer(str, _represent_str)

#: Lines are folded past this width (as before); folding never changes a string.
WIDTH = 100


def dump_all(documents: Iterable[Any], *, allow_unicode: bool = False) -> str:
    """Several documents, `---`-separated, keys in the order given."""
    text: str = yaml.dump_all(
        documents,
        Dumper=SafeDumper,
        sort_keys=False,
        width=WIDTH,
        allow_unicode=allow_unicode,
    )
    return text


def dump(document: Any, *, allow_unicode: bool = False) -> str:
    """One document, keys in the order given."""
    return dump_all([document], allow_unicode=allow_unicode)
