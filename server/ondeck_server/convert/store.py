"""The pipeline's side of the artifact store: locked temporary folders, cleaning up
after crashed writers, telling a valid artifact from a leftover, and turning disk errors
into StoreFailed.

Every temporary folder (`.tmp-*`, see artifact.staging_dir) holds a `.lock` file that
the process which made it keeps flock()ed for as long as it lives. A crashed process
loses its locks, so a cleaner removes exactly the folders nobody holds, and never a
concurrent writer's work in progress. Checking, removing and publishing an artifact
happen under a store-wide `.lock`, so two writers of one digest cannot undo each other.
Layout and publishing themselves stay in ondeck_server.artifact.
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
from ondeck_server.convert import onnx_tools
from ondeck_server.convert.errors import StoreFailed

# A folder this young may be between its creation and its lock: leave it alone.
_GRACE_S = 30.0
# Where file locks are not supported (some network filesystems), a temporary folder is
# only taken for abandoned after this long.
_UNLOCKABLE_STALE_S = 6 * 3600.0
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_WRITE = {errno.EROFS, errno.EACCES, errno.EPERM}
LOW_SPACE_BYTES = 1 << 20
LOCK_FILE = ".lock"
"""In a temporary folder: held by the folder's writer. In the store: held while an
artifact is checked, removed or published (short critical sections)."""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[Path]:
    """Hold an exclusive flock on the file `path` (created if needed) while the block
    runs. A regular file opened read-write, not a directory: that is what flock needs
    on NFS. Where the filesystem has no locks, the block runs unlocked."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
        yield path
    finally:
        os.close(fd)


def store_lock(store: Path) -> contextlib.AbstractContextManager[Path]:
    """The store-wide lock around check-and-remove and publish of an artifact."""
    store.mkdir(parents=True, exist_ok=True)
    return locked(store / LOCK_FILE)


@contextlib.contextmanager
def work_dir(store: Path) -> Iterator[Path]:
    """A locked scratch folder inside the store (same filesystem as the artifact),
    removed afterwards."""
    store.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".tmp-work-", dir=store))
    try:
        with locked(folder / LOCK_FILE):
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
            age = now - entry.lstat().st_mtime
        except OSError:
            continue
        if age < grace_s:
            continue
        if _abandoned(entry / LOCK_FILE, age=age):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _abandoned(lock: Path, *, age: float) -> bool:
    """True when no live process holds `lock` (a missing lock file: the writer died
    before taking it, or is about to publish, which the grace period covers)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:
        return age > _UNLOCKABLE_STALE_S
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live writer holds it
    except OSError as exc:
        return exc.errno in _NO_LOCKS and age > _UNLOCKABLE_STALE_S
    finally:
        os.close(fd)
    return True


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
