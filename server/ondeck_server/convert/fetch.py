"""Fetch a model (or calibration data) from where its URI points, and hash it.

Sources: a plain path or `file://`, `http(s)://` (streamed to disk with a size limit and
timeouts), `s3://bucket/key` (boto3, optional endpoint for S3-compatible stores,
credentials from the standard `AWS_*` environment variables), `gs://bucket/key` (extra
`gcs`), `hf://org/repo[@revision]/path` (extra `hf`) and `pvc://claim/path` (a claim the
operator mounted under `--pvc-root`). Local files are read in place, never copied.

The sha256 of what was fetched is computed while it is read and compared with the
expected one before anything else looks at the bytes. This module does not know about
model formats; errors are FetchFailed, ChecksumMismatch or InvalidSettings only.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict

from ondeck_server.convert.errors import (
    ChecksumMismatch,
    FetchFailed,
    InvalidSettings,
    PipelineError,
)

CHUNK = 1 << 20
#: Local files this large get a progress bar while they are hashed.
LOCAL_BAR_BYTES = 256 << 20
DEFAULT_MAX_BYTES = 64 << 30
DEFAULT_DEADLINE_S = 3600.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A PersistentVolumeClaim name (DNS-1123 subdomain): never '.', '..' or empty.
_CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class Progress(Protocol):
    """Where byte progress goes (the CLI draws a rich progress bar on stderr)."""

    def start(self, label: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


class FetchSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    s3_endpoint_url: str | None = None
    pvc_root: Path | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    deadline_s: float = DEFAULT_DEADLINE_S
    """The whole download, however steadily bytes trickle in (checked per chunk, so it
    can be overrun by at most one read timeout)."""


class Fetched(BaseModel):
    """A fetched file: where it lies now and what its bytes hash to."""

    uri: str
    path: Path
    sha256: str
    size_bytes: int
    downloaded: bool


def normalize_sha256(value: str) -> str:
    """Accept `HEX` or `sha256:HEX` in either case; raise InvalidSettings otherwise."""
    text = value.strip().lower().removeprefix("sha256:")
    if not _SHA256.match(text):
        raise InvalidSettings(
            f"--sha256 {value!r} is not a sha256: give 64 hex digits (sha256sum prints them)"
        )
    return text


def fetch(
    uri: str,
    *,
    dest: Path,
    settings: FetchSettings,
    expected_sha256: str | None = None,
    progress: Progress | None = None,
) -> Fetched:
    """Fetch `uri` (into `dest` when it is remote) and verify its sha256."""
    sink = progress if progress is not None else NoProgress()
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme in ("", "file"):
        fetched = _read_local(uri, _local_path(uri), settings=settings, progress=sink)
    elif scheme == "pvc":
        fetched = _read_local(uri, _pvc_path(uri, settings), settings=settings, progress=sink)
    elif scheme in ("http", "https"):
        fetched = _fetch_http(uri, dest=dest, settings=settings, progress=sink)
    elif scheme == "s3":
        fetched = _fetch_s3(uri, dest=dest, settings=settings, progress=sink)
    elif scheme == "gs":
        fetched = _fetch_gs(uri, dest=dest, settings=settings, progress=sink)
    elif scheme == "hf":
        fetched = _fetch_hf(uri, settings=settings, progress=sink)
    else:
        raise FetchFailed(
            f"{uri}: unknown scheme {scheme!r}; use a path, file://, http(s)://, s3://, gs://, "
            "hf:// or pvc://"
        )
    if expected_sha256 is not None and fetched.sha256 != expected_sha256:
        if fetched.downloaded:
            fetched.path.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{uri} has sha256 {fetched.sha256}, expected {expected_sha256}: the file changed "
            "or the checksum is wrong; fix spec.model.sha256 or the file, nothing was converted"
        )
    return fetched


def sibling_uri(uri: str, name: str) -> str:
    """The URI of a file next to `uri` (external data of an ONNX model)."""
    if "://" not in uri:
        return str(Path(uri).parent / name)
    head, _, _ = uri.rpartition("/")
    return f"{head}/{name}"


# ---------------------------------------------------------------- local and pvc


def _local_path(uri: str) -> Path:
    if uri.lower().startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise FetchFailed(f"{uri}: file:// URIs name a local path, e.g. file:///models/m.onnx")
        return Path(unquote(parts.path))
    return Path(uri).expanduser()


def _pvc_path(uri: str, settings: FetchSettings) -> Path:
    if settings.pvc_root is None:
        raise InvalidSettings(
            f"{uri}: pvc:// sources need --pvc-root, the folder the claims are mounted under"
        )
    parts = urlsplit(uri)
    claim, rel = parts.netloc, unquote(parts.path).lstrip("/")
    if not claim or not rel:
        raise FetchFailed(f"{uri}: write pvc://<claim>/<path inside the claim>")
    if not _CLAIM_NAME.match(claim):
        raise FetchFailed(
            f"{uri}: {claim[:64]!r} is not a claim name (lower-case letters, digits, '-' and "
            "'.', as Kubernetes names a PersistentVolumeClaim)"
        )
    # Resolve symbolic links before comparing: a link inside the claim that points out of
    # it (or out of --pvc-root) is refused like a '..' in the path.
    root = settings.pvc_root.resolve()
    base = (root / claim).resolve()
    path = (base / rel).resolve()
    if not base.is_relative_to(root) or base == root or not path.is_relative_to(base):
        raise FetchFailed(
            f"{uri}: the path leaves the claim {claim!r} (after following '..' and symbolic "
            "links); name a file inside the claim"
        )
    return path


def _read_local(uri: str, path: Path, *, settings: FetchSettings, progress: Progress) -> Fetched:
    if path.is_dir():
        raise FetchFailed(f"{uri} is a folder: point at the model file inside it")
    try:
        size = path.stat().st_size
        if size > settings.max_bytes:
            raise FetchFailed(f"{uri} is {size} bytes, over the limit of {settings.max_bytes}")
        # Hashing a local file is quick: a bar (with a meaningless transfer speed) only
        # where it takes long enough to be worth watching.
        bar = progress if size >= LOCAL_BAR_BYTES else NoProgress()
        with path.open("rb") as handle:
            digest = _hash_stream(handle, total=size, label=f"sha256 {path.name}", progress=bar)
    except FileNotFoundError:
        # The path only when it says more than the URI did (file://, pvc://).
        where = "" if str(path) == uri else f" ({path})"
        raise FetchFailed(f"{uri}: no such file{where}; check the path") from None
    except PermissionError:
        raise FetchFailed(f"{uri}: permission denied reading {path}") from None
    except OSError as exc:
        raise FetchFailed(f"{uri}: cannot read {path}: {exc.strerror or exc}") from None
    return Fetched(uri=uri, path=path, sha256=digest, size_bytes=size, downloaded=False)


def _hash_stream(handle: BinaryIO, *, total: int | None, label: str, progress: Progress) -> str:
    hasher = hashlib.sha256()
    progress.start(label, total)
    try:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            progress.advance(len(chunk))
    finally:
        progress.finish()
    return hasher.hexdigest()


class _Sink:
    """Writes downloaded chunks to a file, hashing and counting them on the way."""

    def __init__(
        self, uri: str, path: Path, *, settings: FetchSettings, progress: Progress
    ) -> None:
        self.uri, self.path, self.max_bytes = uri, path, settings.max_bytes
        self.progress = progress
        self.deadline_s = settings.deadline_s
        self.deadline = time.monotonic() + settings.deadline_s
        self.hasher = hashlib.sha256()
        self.size = 0

    def write_all(self, chunks: Iterator[bytes]) -> None:
        with self.path.open("wb") as out:
            for chunk in chunks:
                if time.monotonic() > self.deadline:
                    raise FetchFailed(
                        f"{self.uri}: the download did not finish within {self.deadline_s:g} s "
                        f"({self.size} bytes so far); the limit is --fetch-timeout "
                        "(ONDECK_FETCH_TIMEOUT): fix the slow source or raise it for a very "
                        "large model"
                    )
                self.size += len(chunk)
                if self.size > self.max_bytes:
                    raise FetchFailed(
                        f"{self.uri} is larger than the download limit of {self.max_bytes} "
                        "bytes; raise --max-download-bytes if the model really is that big"
                    )
                self.hasher.update(chunk)
                out.write(chunk)
                self.progress.advance(len(chunk))

    def result(self) -> Fetched:
        return Fetched(
            uri=self.uri,
            path=self.path,
            sha256=self.hasher.hexdigest(),
            size_bytes=self.size,
            downloaded=True,
        )


def _target(dest: Path, remote_path: str, uri: str) -> Path:
    name = PurePosixPath(unquote(remote_path)).name
    if not name or name in (".", ".."):
        raise FetchFailed(f"{uri} does not name a file; point at the model file itself")
    dest.mkdir(parents=True, exist_ok=True)
    return dest / name


def _check_size(uri: str, size: int | None, settings: FetchSettings) -> None:
    if size is not None and size > settings.max_bytes:
        raise FetchFailed(
            f"{uri} is {size} bytes, over the download limit of {settings.max_bytes}; "
            "raise --max-download-bytes if the model really is that big"
        )


@contextlib.contextmanager
def _cleanup_on_error(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- http(s)


def _fetch_http(uri: str, *, dest: Path, settings: FetchSettings, progress: Progress) -> Fetched:
    import httpx

    target = _target(dest, urlsplit(uri).path, uri)
    timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
    sink = _Sink(uri, target, settings=settings, progress=progress)
    # The bytes as stored, never a compressed encoding: the sha256 is over the file, and
    # a 1 MB gzip body could otherwise inflate to gigabytes.
    headers = {"Accept-Encoding": "identity"}
    try:
        with (
            _cleanup_on_error(target),
            httpx.stream(
                "GET", uri, timeout=timeout, follow_redirects=True, headers=headers
            ) as response,
        ):
            if response.status_code >= 400:
                raise FetchFailed(_http_status_message(uri, response.status_code))
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise FetchFailed(
                    f"{uri} was sent with Content-Encoding {encoding[:40]!r} although ondeck "
                    "asked for the plain file (identity): serve the model file uncompressed"
                )
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            _check_size(uri, total, settings)
            progress.start(target.name, total)
            try:
                sink.write_all(response.iter_raw())
            finally:
                progress.finish()
    except httpx.ConnectError as exc:
        raise FetchFailed(
            f"{uri}: cannot connect ({_reason(exc)}); check the host and port"
        ) from None
    except httpx.TimeoutException:
        raise FetchFailed(
            f"{uri}: timed out (connect {settings.connect_timeout_s:g} s, read "
            f"{settings.read_timeout_s:g} s); check that the server is up and reachable"
        ) from None
    except httpx.HTTPError as exc:
        raise FetchFailed(f"{uri}: download failed: {_reason(exc)}") from None
    return sink.result()


def _http_status_message(uri: str, status: int) -> str:
    if status == 404:
        return f"{uri} returned 404 Not Found; check the URL"
    if status in (401, 403):
        return (
            f"{uri} returned {status} ({'Unauthorized' if status == 401 else 'Forbidden'}); "
            "the server refuses access: use a URL that needs no credentials (e.g. a pre-signed "
            "URL) or an s3:// source with a credentials Secret"
        )
    return f"{uri} returned HTTP {status}; check the URL and the server"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- s3


def s3_client(settings: FetchSettings) -> Any:
    """A boto3 S3 client with the fetch timeouts and `--s3-endpoint-url` (credentials
    from the AWS_* environment). Shared by single objects and prefixes (folders.py)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.s3_endpoint_url, config=config
    )


def s3_failure(
    uri: str, exc: Exception, *, bucket: str, key: str, settings: FetchSettings
) -> FetchFailed:
    """The one-line FetchFailed for a botocore error while reading `uri`."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    where = f" at {settings.s3_endpoint_url}" if settings.s3_endpoint_url else ""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return FetchFailed(
            f"{uri}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(spec.model.credentialsSecret mounts them in the cluster)"
        )
    if isinstance(exc, EndpointConnectionError):
        return FetchFailed(
            f"{uri}: cannot connect to the S3 endpoint{where}; check --s3-endpoint-url"
        )
    if isinstance(exc, ClientError):
        return FetchFailed(_s3_error_message(uri, bucket, key, exc.response))
    return FetchFailed(f"{uri}: S3 download failed{where}: {_reason(exc)}")


def _fetch_s3(uri: str, *, dest: Path, settings: FetchSettings, progress: Progress) -> Fetched:
    from botocore.exceptions import BotoCoreError, ClientError

    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path).lstrip("/")
    if not bucket or not key:
        raise FetchFailed(f"{uri}: write s3://<bucket>/<key>")
    target = _target(dest, key, uri)
    sink = _Sink(uri, target, settings=settings, progress=progress)
    try:
        client = s3_client(settings)
        head = client.head_object(Bucket=bucket, Key=key)
        total = int(head.get("ContentLength", 0))
        _check_size(uri, total, settings)
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        progress.start(target.name, total)
        with _cleanup_on_error(target):
            try:
                sink.write_all(iter(lambda: body.read(CHUNK), b""))
            finally:
                progress.finish()
    except (BotoCoreError, ClientError) as exc:
        raise s3_failure(uri, exc, bucket=bucket, key=key, settings=settings) from None
    return sink.result()


def _s3_error_message(uri: str, bucket: str, key: str, response: dict[str, Any]) -> str:
    error = response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in ("NoSuchBucket",):
        return f"{uri}: bucket {bucket!r} does not exist; check the bucket name and endpoint"
    if code in ("404", "NoSuchKey", "NotFound") or status == 404:
        return f"{uri}: no object {key!r} in bucket {bucket!r}; check the key"
    if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return (
            f"{uri}: access denied ({code}); the credentials in AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY cannot read this object"
        )
    return f"{uri}: S3 error {code or status}: {error.get('Message', 'no message')}"


# ---------------------------------------------------------------- gs and hf (optional extras)


def _fetch_gs(uri: str, *, dest: Path, settings: FetchSettings, progress: Progress) -> Fetched:
    try:
        from google.cloud import storage  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise FetchFailed(
            f"{uri}: gs:// sources need the gcs extra; install it with "
            "pip install 'ondeck[gcs]' (the server image: build arg EXTRAS=gcs)"
        ) from None
    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path).lstrip("/")
    if not bucket or not key:
        raise FetchFailed(f"{uri}: write gs://<bucket>/<object>")
    target = _target(dest, key, uri)
    try:
        blob = storage.Client().bucket(bucket).get_blob(key)
        if blob is None:
            raise FetchFailed(f"{uri}: no object {key!r} in bucket {bucket!r}; check the name")
        _check_size(uri, blob.size, settings)
        with _cleanup_on_error(target):
            blob.download_to_filename(str(target))
    except PipelineError:
        raise
    except Exception as exc:  # the google client raises many unrelated classes
        raise FetchFailed(f"{uri}: GCS download failed: {_reason(exc)}") from None
    return _rehash(uri, target, settings=settings, progress=progress)


def _fetch_hf(uri: str, *, settings: FetchSettings, progress: Progress) -> Fetched:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise FetchFailed(
            f"{uri}: hf:// sources need the hf extra; install it with pip install 'ondeck[hf]'"
        ) from None
    parts = urlsplit(uri)
    segments = [s for s in unquote(parts.netloc + parts.path).split("/") if s]
    if len(segments) < 3:
        raise FetchFailed(f"{uri}: write hf://<org>/<repo>[@revision]/<path/to/file>")
    repo, _, revision = segments[1].partition("@")
    repo_id, filename = f"{segments[0]}/{repo}", "/".join(segments[2:])
    try:
        local = hf_hub_download(repo_id=repo_id, filename=filename, revision=revision or None)
    except Exception as exc:  # huggingface_hub raises a family of HTTP and offline errors
        raise FetchFailed(
            f"{uri}: Hugging Face download failed ({type(exc).__name__}: {_reason(exc)}); "
            "check the repo, the file and HF_TOKEN, and that HF_HUB_OFFLINE is not set"
        ) from None
    path = Path(local)
    fetched = _rehash(uri, path, settings=settings, progress=progress)
    return fetched.model_copy(update={"downloaded": False})


def _rehash(uri: str, path: Path, *, settings: FetchSettings, progress: Progress) -> Fetched:
    size = path.stat().st_size
    _check_size(uri, size, settings)
    with path.open("rb") as handle:
        digest = _hash_stream(handle, total=size, label=path.name, progress=progress)
    return Fetched(uri=uri, path=path, sha256=digest, size_bytes=size, downloaded=True)


def file_sha256(path: Path) -> str:
    """sha256 of a local file (used for external data and calibration files)."""
    with path.open("rb") as handle:
        return _hash_stream(handle, total=None, label=path.name, progress=NoProgress())


__all__ = [
    "DEFAULT_MAX_BYTES",
    "FetchSettings",
    "Fetched",
    "NoProgress",
    "Progress",
    "fetch",
    "file_sha256",
    "normalize_sha256",
    "sibling_uri",
]
