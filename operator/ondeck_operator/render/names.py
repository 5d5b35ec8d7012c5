"""Deterministic names of the objects a ModelDeployment owns, always valid DNS-1035
labels (lower-case, start with a letter, at most 63 characters) so that any kind —
Service included — accepts them. A name that would be too long keeps its suffix and is
shortened in front with a hash of the full name, so distinct inputs stay distinct.

Pure string functions; nothing here knows about Kubernetes clients.
"""

from __future__ import annotations

import hashlib
import re

from ondeck_operator.api.constants import DNS_LABEL_MAX

_INVALID = re.compile(r"[^a-z0-9-]+")
_DASHES = re.compile(r"-{2,}")
HASH_LENGTH = 8


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def _clean(text: str) -> str:
    text = _DASHES.sub("-", _INVALID.sub("-", text.lower()))
    return text.strip("-")


def child_name(base: str, *suffix: str, max_length: int = DNS_LABEL_MAX) -> str:
    """`base-suffix...`, cleaned to a DNS-1035 label of at most `max_length` characters.

    Unchanged when it already is one. Otherwise invalid characters become `-`, a leading
    digit gets an `x` in front, the part before the suffix is cut to fit, and
    `-<hash of the original>` is added before the suffix, so two inputs never share a name.
    """
    raw = "-".join([base, *suffix])
    tail = _clean("-".join(suffix))
    head = _clean(base) or "x"
    if not head[0].isalpha():
        head = f"x{head}"
    name = f"{head}-{tail}" if tail else head
    if name == raw and len(name) <= max_length:
        return name
    digest = _hash(raw)
    room = max_length - len(tail) - HASH_LENGTH - (2 if tail else 1)
    if room < 1:
        # The suffix alone is too long: keep a letter, then the hash.
        return f"x{digest}"[:max_length]
    head = head[:room].rstrip("-") or "x"
    return f"{head}-{digest}-{tail}" if tail else f"{head}-{digest}"


def server_name(md_name: str) -> str:
    """Deployment, Service, Ingress, HorizontalPodAutoscaler and PodDisruptionBudget."""
    return child_name(md_name)


def job_name(md_name: str, key: str) -> str:
    """The conversion Job for artifact `key`."""
    return child_name(md_name, "convert", key)


def pvc_name(md_name: str, key: str) -> str:
    """The claim holding artifact `key`."""
    return child_name(md_name, "artifacts", key)
