"""The local artifact store as `ondeck ls / inspect / gc` and `ondeck run` see it.

The layout is the contract in docs/architecture.md, read from the files (the operator
never imports the server): `<store>/<digest>/manifest.json` + `model.onnx`, and
`<store>/refs/<name> -> ../<digest>`. `ondeck run` points two refs at what it serves: the
artifact key (so a pinned sha256 is found without a fetch) and the model's name (so a
person finds it). Temporary folders (`.tmp-*`) hold a `.lock` file their writer keeps
flock()ed while it lives; one nobody holds belongs to a dead writer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REFS_DIR = "refs"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
LOCK_FILE = ".lock"
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
#: `ondeck run`'s artifact-key refs (render.args.ARTIFACT_KEY_LENGTH hex digits).
KEY_REF_RE = re.compile(r"^[0-9a-f]{16}$")
REF_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")
#: gc leaves younger artifacts alone: a conversion publishes its folder first and points
#: its ref a moment later.
GC_GRACE_S = 600.0


class Artifact(BaseModel):
    """One complete artifact folder and what its manifest says."""

    model_config = ConfigDict(frozen=True)

    digest: str
    path: Path
    refs: tuple[str, ...] = ()
    manifest: dict[str, Any] = Field(default_factory=dict)
    bytes_on_disk: int = 0
    created: dt.datetime | None = None

    @property
    def names(self) -> list[str]:
        """The refs a person gave (model names), not the artifact keys."""
        return [r for r in self.refs if not KEY_REF_RE.match(r)]

    @property
    def source(self) -> str:
        return str((self.manifest.get("source") or {}).get("uri", "?"))

    @property
    def format(self) -> str:
        return str((self.manifest.get("source") or {}).get("format", "?"))

    @property
    def quantize(self) -> str:
        """The mode asked for; with `auto`, the one it chose too (`auto: int8-static`)."""
        asked = str((self.manifest.get("settings") or {}).get("quantize", "none"))
        auto = (self.manifest.get("validation") or {}).get("auto")
        chosen = auto.get("chosen") if isinstance(auto, dict) else None
        return f"{asked}: {chosen}" if chosen else asked

    @property
    def size_bytes(self) -> int:
        return int(self.manifest.get("sizeBytes") or 0)

    @property
    def original_size_bytes(self) -> int:
        return int(self.manifest.get("originalSizeBytes") or 0)

    def gate(self) -> str:
        """The accuracy gate's figures in a few words."""
        v = self.manifest.get("validation") or {}
        if not v:
            return "-"
        parts = []
        if v.get("cosine") is not None:
            parts.append(f"cos {float(v['cosine']):.4f}")
        if v.get("top1Disagreement") is not None:
            parts.append(f"top-1 {float(v['top1Disagreement']):.2%}")
        verdict = "passed" if v.get("passed") else "FAILED"
        return f"{verdict} ({', '.join(parts)})" if parts else verdict


def refs(store: Path) -> dict[str, str]:
    """`refs/<name>` → the digest it points at (dangling ones too)."""
    out: dict[str, str] = {}
    folder = store / REFS_DIR
    if not folder.is_dir():
        return out
    for link in sorted(folder.iterdir()):
        if link.name.startswith(".") or not link.is_symlink():
            continue
        out[link.name] = Path(os.readlink(link)).name
    return out


def _du(folder: Path) -> int:
    total = 0
    for entry in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if entry.is_file() and not entry.is_symlink():
                total += entry.stat().st_size
    return total


def artifacts(store: Path) -> list[Artifact]:
    """The complete artifacts in `store`, newest first, each with the refs to it."""
    by_digest: dict[str, list[str]] = {}
    for name, digest in refs(store).items():
        by_digest.setdefault(digest, []).append(name)
    found = []
    if not store.is_dir():
        return []
    for folder in store.iterdir():
        if not DIGEST_RE.match(folder.name) or not folder.is_dir():
            continue
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not a complete artifact
        if not isinstance(manifest, dict):
            continue
        found.append(
            Artifact(
                digest=folder.name,
                path=folder,
                refs=tuple(sorted(by_digest.get(folder.name, []))),
                manifest=manifest,
                bytes_on_disk=_du(folder),
                created=_created(manifest, folder),
            )
        )
    return sorted(found, key=lambda a: a.created or dt.datetime.min.replace(tzinfo=dt.UTC))[::-1]


def _created(manifest: dict[str, Any], folder: Path) -> dt.datetime:
    text = manifest.get("createdAt")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(folder.stat().st_mtime, tz=dt.UTC)


class NotFound(LookupError):
    """No artifact, or more than one, answers to a name."""


def find(store: Path, what: str) -> Artifact:
    """The artifact a ref name, a digest or a digest prefix (at least 4 digits) names."""
    every = artifacts(store)
    by_ref = [a for a in every if what in a.refs]
    if by_ref:
        return by_ref[0]
    if len(what) >= 4 and re.fullmatch(r"[0-9a-f]+", what):
        by_digest = [a for a in every if a.digest.startswith(what)]
        if len(by_digest) == 1:
            return by_digest[0]
        if len(by_digest) > 1:
            raise NotFound(f"{what} is the start of {len(by_digest)} digests; give more digits")
    names = sorted({n for a in every for n in a.names})
    known = f"; known names: {', '.join(names)}" if names else ""
    raise NotFound(f"no artifact named {what!r} in {store}{known}")


def point_ref(store: Path, name: str, digest: str) -> Path:
    """Atomically point `<store>/refs/<name>` at `<store>/<digest>` (as `convert --ref`)."""
    if not REF_NAME_RE.match(name):
        raise ValueError(f"{name!r} cannot name a ref")
    folder = store / REFS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / name
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(Path("..") / digest, tmp)
    os.replace(tmp, link)
    return link


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """The store-wide lock the converter takes to check, remove or publish an artifact."""
    fd = os.open(store / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _abandoned(folder: Path) -> bool:
    """A temporary folder whose writer is dead: no lock file, or a lock nobody holds."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live writer holds it (or locks do not work here: keep it)
    finally:
        os.close(fd)
    return True


def leftovers(store: Path) -> list[Path]:
    """Temporary folders of dead writers (`.tmp-*`) and half-removed ones (`.trash-*`)."""
    if not store.is_dir():
        return []
    out = [p for p in sorted(store.glob(".trash-*")) if p.is_dir() and not p.is_symlink()]
    for entry in sorted(store.glob(".tmp-*")):
        if entry.is_dir() and not entry.is_symlink() and _abandoned(entry):
            out.append(entry)
    return sorted(out)


def remove_leftovers(store: Path) -> list[Path]:
    """Remove what `leftovers` finds, under the store lock; returns what was removed."""
    if not store.is_dir():
        return []
    with store_lock(store):
        found = leftovers(store)
        for path in found:
            shutil.rmtree(path, ignore_errors=True)
    return found


class GcPlan(BaseModel):
    """What `ondeck gc` removes: artifacts no named ref points to (with the artifact-key
    refs to them: those are a cache), refs to nothing, and leftovers of dead writers."""

    artifacts: list[Artifact] = Field(default_factory=list)
    dangling_refs: list[str] = Field(default_factory=list)
    leftovers: list[Path] = Field(default_factory=list)
    kept_young: list[Artifact] = Field(default_factory=list)

    def bytes(self) -> int:
        return sum(a.bytes_on_disk for a in self.artifacts) + sum(_du(p) for p in self.leftovers)


def gc_plan(store: Path, *, now: dt.datetime | None = None) -> GcPlan:
    now = now or dt.datetime.now(tz=dt.UTC)
    every = artifacts(store)
    digests = {a.digest for a in every}
    plan = GcPlan(leftovers=leftovers(store))
    plan.dangling_refs = sorted(
        n for n, d in refs(store).items() if d not in digests and not (store / d).is_dir()
    )
    for a in every:
        if a.names:
            continue  # a named ref keeps it; artifact-key refs are only a cache
        age = (now - a.created).total_seconds() if a.created else GC_GRACE_S
        mtime_age = now.timestamp() - a.path.stat().st_mtime
        if min(age, mtime_age) < GC_GRACE_S:
            plan.kept_young.append(a)
        else:
            plan.artifacts.append(a)
    return plan


def gc(store: Path, plan: GcPlan) -> None:
    """Carry a plan out under the store lock, re-checking that nothing points at what goes."""
    with store_lock(store):
        current = refs(store)
        named = {d for n, d in current.items() if not KEY_REF_RE.match(n)}
        for a in plan.artifacts:
            if a.digest in named:
                continue  # named since the plan was made
            for name, digest in current.items():
                if digest == a.digest:
                    (store / REFS_DIR / name).unlink(missing_ok=True)
            shutil.rmtree(a.path, ignore_errors=True)
        for name in plan.dangling_refs:
            link = store / REFS_DIR / name
            if link.is_symlink() and not (store / Path(os.readlink(link)).name).is_dir():
                link.unlink(missing_ok=True)
        for path in plan.leftovers:
            if path.name.startswith(".trash-") or _abandoned(path):
                shutil.rmtree(path, ignore_errors=True)


def age(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """`42s`, `5m`, `3h`, `2d` (as kubectl prints ages)."""
    if when is None:
        return "?"
    seconds = int(((now or dt.datetime.now(tz=dt.UTC)) - when).total_seconds())
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds // span}{unit}"
    return f"{max(seconds, 0)}s"


__all__ = [
    "GC_GRACE_S",
    "Artifact",
    "GcPlan",
    "NotFound",
    "age",
    "artifacts",
    "find",
    "gc",
    "gc_plan",
    "leftovers",
    "point_ref",
    "refs",
    "remove_leftovers",
]
