"""Folder-shaped model sources: a model that is many files (a Hugging Face folder; later a
model.onnx with its external data) fetched onto local disk as one folder.

- a local folder, `file://` or `pvc://claim/path/`: used where it lies (pvc:// confined
  to its claim's mount, fetch._pvc_path);
- `s3://bucket/prefix/` (the trailing `/` says "every object under it"): each object
  streamed to `<dest>/<relative key>` (boto3's managed transfer: multipart, never a
  whole file in memory);
- an archive, local or `http(s)://`, named `.tar`, `.tar.gz`, `.tgz` or `.zip`:
  downloaded like a file, then unpacked into `<dest>`.

Unpacking refuses, before writing anything, every member that is an absolute path,
holds `..`, is a link (symbolic or hard) or a device, and any archive whose members add
up to more than `max_unpacked_bytes`; the bytes actually written are counted too, so a
zip whose headers understate its sizes is stopped at the same bound. Object keys under an
s3 prefix get the same path checks. The folder's identity (sha256) is computed afterwards
over the files, never over the archive (llm/folder.py), so the same model has the same
sha256 whichever way it arrives.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import unquote, urlsplit

from ondeck_server.convert.errors import FetchFailed, UnsafeModel
from ondeck_server.convert.fetch import (
    CHUNK,
    FetchSettings,
    Progress,
    _local_path,
    _pvc_path,
    fetch,
    s3_client,
    s3_failure,
)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
#: More members than this is not a model folder (and a cheap way to exhaust inodes).
MAX_MEMBERS = 10_000


def is_archive(uri: str) -> bool:
    path = urlsplit(uri).path if "://" in uri else uri
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def is_prefix(uri: str) -> bool:
    """An object-store prefix: `s3://bucket/some/prefix/` (trailing slash)."""
    return uri.lower().startswith("s3://") and uri.endswith("/")


def source_name(uri: str) -> str:
    """A readable name for the model: the last path segment without archive suffixes."""
    path = urlsplit(uri).path if "://" in uri else uri
    name = PurePosixPath(unquote(path).rstrip("/")).name or "model"
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "model"
    return name


def local_folder(uri: str, settings: FetchSettings) -> Path | None:
    """The folder a local, file:// or pvc:// source names, without fetching; None for
    remote sources."""
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme in ("", "file"):
        return _local_path(uri)
    if scheme == "pvc":
        return _pvc_path(uri, settings)
    return None


def fetch_folder(
    uri: str,
    *,
    dest: Path,
    settings: FetchSettings,
    max_unpacked_bytes: int,
    progress: Progress,
) -> Path:
    """The source as a folder on local disk (in `dest` when it had to be fetched)."""
    if is_prefix(uri):
        return _fetch_prefix(uri, dest=dest, settings=settings)
    if is_archive(uri):
        archive = fetch(uri, dest=dest / "archive", settings=settings, progress=progress)
        out = dest / "unpacked"
        try:
            unpack(archive.path, out, max_bytes=max_unpacked_bytes)
        finally:
            if archive.downloaded:
                archive.path.unlink(missing_ok=True)
        return _single_top_folder(out)
    path = local_folder(uri, settings)
    if path is None:
        raise FetchFailed(
            f"{uri}: a model folder comes from a local folder, pvc://claim/path, "
            "s3://bucket/prefix/ (ending in '/') or a .tar.gz/.tgz/.tar/.zip archive"
        )
    return path


def _single_top_folder(out: Path) -> Path:
    """Archives made with `tar czf m.tgz model/` hold one folder: use it."""
    entries = list(out.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return out


# ---------------------------------------------------------------- archives


def _safe_relative(name: str, where: str) -> PurePosixPath:
    """`name` as a relative path inside the folder, or UnsafeModel."""
    text = name.replace("\\", "/")
    path = PurePosixPath(text)
    if not text or path.is_absolute() or text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise UnsafeModel(f"{where}: member {name!r} has an absolute path; refusing to unpack")
    if ".." in path.parts:
        raise UnsafeModel(f"{where}: member {name!r} leaves the folder ('..'); refusing to unpack")
    return path


def unpack(archive: Path, out: Path, *, max_bytes: int) -> None:
    """Unpack a tar or zip archive into `out` (created), refusing what module docs list."""
    out.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            _unzip(archive, out, max_bytes=max_bytes)
        else:
            _untar(archive, out, max_bytes=max_bytes)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise FetchFailed(f"{archive.name} is not a readable archive: {exc}") from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _untar(archive: Path, out: Path, *, max_bytes: int) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        if len(members) > MAX_MEMBERS:
            raise UnsafeModel(f"{archive.name} has {len(members)} members (at most {MAX_MEMBERS})")
        total = 0
        for member in members:
            _safe_relative(member.name, archive.name)
            if member.issym() or member.islnk():
                raise UnsafeModel(
                    f"{archive.name}: member {member.name!r} is a link; model archives hold "
                    "plain files only"
                )
            if not (member.isfile() or member.isdir()):
                raise UnsafeModel(
                    f"{archive.name}: member {member.name!r} is a device or fifo; refusing"
                )
            total += member.size
            _check_total(archive.name, total, max_bytes)
        for member in members:
            target = out / _safe_relative(member.name, archive.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            source = tar.extractfile(member)
            if source is None:  # pragma: no cover - isfile() members always have data
                continue
            with source:
                _copy(source, target, archive=archive.name, limit=member.size)


def _unzip(archive: Path, out: Path, *, max_bytes: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise UnsafeModel(f"{archive.name} has {len(infos)} members (at most {MAX_MEMBERS})")
        total = 0
        for info in infos:
            _safe_relative(info.filename, archive.name)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeModel(
                    f"{archive.name}: member {info.filename!r} is a link; model archives hold "
                    "plain files only"
                )
            total += info.file_size
            _check_total(archive.name, total, max_bytes)
        written = 0
        for info in infos:
            target = out / _safe_relative(info.filename, archive.name)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as source:
                # The header's size may lie: count what is really inflated.
                written += _copy(source, target, archive=archive.name, limit=max_bytes - written)


def _check_total(name: str, total: int, max_bytes: int) -> None:
    if total > max_bytes:
        raise UnsafeModel(
            f"{name} unpacks to more than {max_bytes} bytes (--max-unpacked-bytes); refusing "
            "to unpack it"
        )


def _copy(source: IO[bytes], target: Path, *, archive: str, limit: int) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        handle = target.open("xb")
    except (FileExistsError, IsADirectoryError):
        raise UnsafeModel(
            f"{archive}: {target.name} is in the archive twice (or also a folder); refusing"
        ) from None
    with handle as sink:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise UnsafeModel(
                    f"{archive}: {target.name} inflates past what its header says "
                    "(or past --max-unpacked-bytes); refusing to unpack it"
                )
            sink.write(chunk)
    return written


# ---------------------------------------------------------------- s3 prefixes


def _fetch_prefix(uri: str, *, dest: Path, settings: FetchSettings) -> Path:
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, unquote(parts.path).lstrip("/")
    if not bucket:
        raise FetchFailed(f"{uri}: write s3://<bucket>/<prefix>/")
    out = dest / "prefix"
    try:
        client = s3_client(settings)
        objects: list[tuple[str, PurePosixPath, int]] = []
        total = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = str(item["Key"])
                if key.endswith("/"):  # a "folder" marker some tools create
                    continue
                relative = _safe_relative(key[len(prefix) :], uri)
                size = int(item.get("Size", 0))
                total += size
                if total > settings.max_bytes:
                    raise FetchFailed(
                        f"{uri}: the objects under the prefix add up to more than "
                        f"{settings.max_bytes} bytes (--max-download-bytes)"
                    )
                objects.append((key, relative, size))
                if len(objects) > MAX_MEMBERS:
                    raise UnsafeModel(f"{uri} holds more than {MAX_MEMBERS} objects")
        if not objects:
            raise FetchFailed(f"{uri}: no objects under this prefix; check the bucket and prefix")
        transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
        for key, relative, _ in objects:
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target), Config=transfer)
    except (BotoCoreError, ClientError) as exc:
        raise s3_failure(uri, exc, bucket=bucket, key=prefix, settings=settings) from None
    return out
