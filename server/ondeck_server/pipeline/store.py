"""The pipeline's side of the artifact store: locked temporary folders, cleaning up
after crashed writers, telling a valid artifact from a leftover, and turning disk errors
into StoreFailed.

Every temporary folder (`.tmp-*`, see artifact.staging_dir) is flock()ed by the process
that made it for as long as it lives. A crashed process loses its locks, so a cleaner
removes exactly the folders nobody holds, and never a concurrent writer's work in
progress. Layout and publishing themselves stay in ondeck_server.artifact.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ondeck_server import artifact
from ondeck_server.pipeline import onnx_tools
from ondeck_server.pipeline.errors import StoreFailed

# A folder this young may be between its creation and its lock: leave it alone.
_GRACE_S = 30.0
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_WRITE = {errno.EROFS, errno.EACCES, errno.EPERM}
LOW_SPACE_BYTES = 1 << 20


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` while the block runs."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(fd)


@contextlib.contextmanager
def work_dir(store: Path) -> Iterator[Path]:
    """A locked scratch folder inside the store (same filesystem as the artifact),
    removed afterwards."""
    store.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".tmp-work-", dir=store))
    try:
        with locked(folder):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def clean_stale(store: Path, *, grace_s: float = _GRACE_S) -> list[Path]:
    """Remove `.tmp-*` folders no live process holds; returns what was removed."""
    removed: list[Path] = []
    if not store.is_dir():
        return removed
    now = time.time()
    for entry in sorted(store.glob(".tmp-*")):
        try:
            if now - entry.lstat().st_mtime < grace_s:
                continue
            fd = os.open(entry, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live writer holds it
        try:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        finally:
            os.close(fd)
    return removed


def valid_artifact(folder: Path, digest: str) -> artifact.Manifest | None:
    """The manifest of a complete artifact for `digest`, or None for anything else
    (absent, half written, another digest's content, a model of the wrong size)."""
    if not artifact.is_complete(folder):
        return None
    manifest = artifact.read_manifest(folder)
    if manifest.digest != digest:
        return None
    try:
        size = onnx_tools.total_size(folder / artifact.MODEL_FILE)
    except Exception:  # an unreadable model file is not a valid artifact
        return None
    return manifest if size == manifest.size_bytes else None


def disk_error(exc: OSError, store: Path) -> StoreFailed | None:
    """A StoreFailed for disk-full or not-writable errors; None for other OSErrors."""
    if exc.errno in _DISK_FULL:
        return StoreFailed(
            f"no space left in the artifact store {store} ({exc.strerror or exc}); give it "
            "more room (spec.artifacts.pvc.size) or remove unused artifacts"
        )
    if exc.errno in _NO_WRITE:
        return StoreFailed(
            f"cannot write to the artifact store {store} ({exc.strerror or exc}); mount it "
            "read-write for the conversion Job"
        )
    return None


def nearly_full(store: Path) -> bool:
    """True when the store has (almost) no free space left: a tool that failed while
    writing there most likely failed for that reason."""
    try:
        return shutil.disk_usage(store).free < LOW_SPACE_BYTES
    except OSError:
        return False
