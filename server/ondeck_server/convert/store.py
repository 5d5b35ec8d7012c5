"""The pipeline's side of the artifact store: locked temporary folders, cleaning up
after crashed writers, telling a valid artifact from a leftover, and turning disk errors
into StoreFailed.

Every temporary folder (`.tmp-*`) holds a `.lock` file that the process which made it
keeps flock()ed for as long as it lives (the file also names the writer: host, boot id,
pid). A folder is created and its lock taken under the store-wide `.lock`, and a cleaner
looks at the folders under that same lock, so it never sees a folder between its
creation and its lock: a `.tmp-*` folder whose lock nobody holds (or that has no lock
file) provably belongs to a dead writer and is removed at once, with no grace period,
and never a concurrent writer's work in progress. A crash-looping Job therefore leaves
at most the folders of its last attempt, which the next attempt removes first.
Checking, removing and publishing an artifact happen under the store-wide lock too, so
two writers of one digest cannot undo each other. Where the filesystem has no locks,
a folder whose writer ran on this machine in this boot and whose pid is gone is removed;
any other one only after six hours. Layout and publishing stay in ondeck_server.artifact.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ondeck_server import artifact
from ondeck_server.convert import onnx_tools
from ondeck_server.convert.errors import InvalidSettings, StoreFailed

# Where file locks are not supported (some network filesystems), a temporary folder of
# another machine (or boot) is only taken for abandoned after this long.
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
def locked_temp_dir(store: Path, prefix: str) -> Iterator[Path]:
    """A fresh `<store>/<prefix>*` folder (same filesystem as the artifact) whose `.lock`
    this process holds until the block ends; created and locked under the store lock.
    The folder is not removed here (the caller publishes or removes it)."""
    store.mkdir(parents=True, exist_ok=True)
    with store_lock(store):
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=store))
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
        os.write(fd, _owner().encode())
        yield folder
    finally:
        os.close(fd)


@contextlib.contextmanager
def work_dir(store: Path) -> Iterator[Path]:
    """A locked scratch folder inside the store, removed afterwards."""
    with locked_temp_dir(store, ".tmp-work-") as folder:
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def clean_stale(store: Path) -> list[Path]:
    """Remove `.tmp-*` folders no live process holds; returns what was removed."""
    removed: list[Path] = []
    if not store.is_dir():
        return removed
    with store_lock(store):
        for entry in sorted(store.glob(".tmp-*")):
            if entry.is_dir() and not entry.is_symlink() and _abandoned(entry):
                # Out of the way under the lock, deleted after it: a big folder does not
                # hold up other writers, and a cleaner killed halfway leaves only trash.
                trash = entry.with_name(".trash-" + entry.name.removeprefix(".tmp-"))
                try:
                    os.rename(entry, trash)
                except OSError:
                    continue
                removed.append(entry)
    for trash in sorted(store.glob(".trash-*")):
        shutil.rmtree(trash, ignore_errors=True)
    return removed


def _owner() -> str:
    """Who holds a temporary folder, written into its lock file."""
    return json.dumps({"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid()})


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _abandoned(folder: Path) -> bool:
    """True when the folder's writer is provably dead: its lock file is missing (it died
    before publishing, after dropping the file) or nobody holds the lock."""
    lock = folder / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:
        return _dead_owner(lock)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live writer holds it
    except OSError as exc:
        return exc.errno in _NO_LOCKS and _dead_owner(lock)
    finally:
        os.close(fd)
    return True


def _dead_owner(lock: Path) -> bool:
    """Without working locks: the writer ran here, in this boot, and its pid is gone; or
    the folder is older than any conversion."""
    try:
        owner = json.loads(lock.read_text() or "{}")
        age = time.time() - lock.stat().st_mtime
    except (OSError, ValueError):
        return False
    if owner.get("host") == socket.gethostname() and owner.get("boot") == _boot_id():
        pid = owner.get("pid")
        if isinstance(pid, int) and pid > 0:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False
    return age > _UNLOCKABLE_STALE_S


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


def finish_files(root: Path) -> None:
    """Make a staged artifact readable by the server (which may run as another user than
    the Job) and flush it to disk before the rename makes it visible: a crash after the
    rename must not leave a complete-looking folder of empty files. The writer's lock
    file is left alone (`publish` removes it)."""
    for entry in [root, *root.rglob("*")]:
        if entry.is_dir():
            entry.chmod(0o755)
        elif entry.is_file() and entry.name != LOCK_FILE:
            entry.chmod(0o644)
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def publish(staging: Path, store: Path, digest: str) -> Path:
    """Rename a finished staging folder to `<store>/<digest>`. The lock file is not part
    of the artifact; it goes under the store lock, so a cleaner never sees the live
    folder without it."""
    with store_lock(store):
        (staging / LOCK_FILE).unlink()
        return artifact.publish(staging, store, digest)


def point_ref(store: Path, ref: str | None, digest: str) -> None:
    """`--ref`: point `<store>/refs/<ref>` at the artifact (nothing when no ref)."""
    if ref is None:
        return
    try:
        artifact.point_ref(store, ref, digest)
    except artifact.ArtifactError as exc:
        raise InvalidSettings(f"--ref: {exc}") from None
