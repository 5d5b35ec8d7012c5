"""The artifact store on S3 (or an S3-compatible store): the same layout as a folder
store (see ondeck_server.artifact), as objects under `s3://<bucket>/<prefix>/`:

    <prefix>/<digest>/model.onnx      (+ external data files)
    <prefix>/<digest>/manifest.json   (uploaded LAST: the artifact exists iff it does)
    <prefix>/refs/<name>              (a small object holding the digest)

`convert --store s3://…` builds in a local folder store, then calls `upload`; `serve
--model s3://…/refs/<name>` (or `…/<digest>`) calls `download` into a local cache folder
and loads that. Shared by the pipeline and the server, so it imports neither.

Credentials: `ONDECK_STORE_AWS_ACCESS_KEY_ID` / `ONDECK_STORE_AWS_SECRET_ACCESS_KEY` /
`ONDECK_STORE_AWS_SESSION_TOKEN` (and `ONDECK_STORE_AWS_REGION`) when set (the operator
mounts the store's Secret with that prefix, so it never collides with the model source's
credentials), else boto3's usual chain (`AWS_*` variables, ~/.aws, instance roles).
It does not convert or serve, and never deletes anything from the bucket.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from ondeck_server import artifact

STORE_ENV_PREFIX = "ONDECK_STORE_"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_MAX_REF_BYTES = 1024


class RemoteStoreError(artifact.ArtifactError):
    """The object store is unreachable, refuses access, or lacks the artifact."""


class StoreLocation(BaseModel):
    """`s3://<bucket>/<prefix>`, parsed."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    prefix: str = ""

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)


def is_remote(value: str) -> bool:
    """True for an `s3://` URI (the only object store so far)."""
    return value[:5].lower() == "s3://"


def parse_store(uri: str) -> StoreLocation:
    """`s3://bucket[/prefix]` to a StoreLocation; RemoteStoreError when malformed."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise RemoteStoreError(f"{uri} is not an object store: write s3://<bucket>/<prefix>")
    prefix = unquote(parts.path).strip("/")
    if any(seg in ("", ".", "..") for seg in prefix.split("/")) and prefix:
        raise RemoteStoreError(f"{uri}: the prefix may not hold empty, '.' or '..' segments")
    return StoreLocation(bucket=parts.netloc, prefix=prefix)


def parse_model(uri: str) -> tuple[StoreLocation, str | None, str | None]:
    """`s3://…/refs/<name>` → (store, name, None); `s3://…/<digest>` → (store, None, digest)."""
    location = parse_store(uri)
    path = PurePosixPath(location.prefix)
    if path.parent.name == artifact.REFS_DIR and artifact.valid_ref_name(path.name):
        return location.model_copy(update={"prefix": _folder(path.parent.parent)}), path.name, None
    if _DIGEST.match(path.name):
        return location.model_copy(update={"prefix": _folder(path.parent)}), None, path.name
    raise RemoteStoreError(
        f"{uri} names no artifact: write s3://<bucket>/<prefix>/refs/<name> or "
        "s3://<bucket>/<prefix>/<digest> (64 hex digits)"
    )


def _folder(path: PurePosixPath) -> str:
    return "" if str(path) == "." else str(path)


def client(endpoint_url: str | None) -> Any:
    """A boto3 S3 client with short timeouts and the store's credentials (see above)."""
    import boto3
    from botocore.config import Config

    explicit = {
        "aws_access_key_id": os.environ.get(f"{STORE_ENV_PREFIX}AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": os.environ.get(f"{STORE_ENV_PREFIX}AWS_SECRET_ACCESS_KEY"),
        "aws_session_token": os.environ.get(f"{STORE_ENV_PREFIX}AWS_SESSION_TOKEN"),
    }
    config = Config(
        connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}
    )
    explicit["region_name"] = os.environ.get(f"{STORE_ENV_PREFIX}AWS_REGION")
    session = boto3.session.Session(**{k: v for k, v in explicit.items() if v})
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def _error(uri: str, exc: BaseException, *, endpoint_url: str | None) -> RemoteStoreError:
    """One readable RemoteStoreError for any botocore failure."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    where = f" at {endpoint_url}" if endpoint_url else ""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return RemoteStoreError(
            f"{uri}: no credentials for the artifact store; set {STORE_ENV_PREFIX}AWS_ACCESS_KEY_ID"
            " and ..._SECRET_ACCESS_KEY, or AWS_* (spec.artifacts.credentialsSecret in a cluster)"
        )
    if isinstance(exc, EndpointConnectionError):
        return RemoteStoreError(
            f"{uri}: cannot connect to the S3 endpoint{where}; check --s3-endpoint-url"
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code == "NoSuchBucket":
            return RemoteStoreError(f"{uri}: the bucket does not exist{where}; create it first")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return RemoteStoreError(
                f"{uri}: access denied ({code}); the store's credentials cannot use this bucket"
            )
        return RemoteStoreError(f"{uri}: S3 error {code}: {error.get('Message', 'no message')}")
    text = str(exc).strip().splitlines()
    return RemoteStoreError(f"{uri}: S3 request failed{where}: {text[0] if text else exc}")


def _missing(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _get(s3: Any, location: StoreLocation, key: str) -> bytes | None:
    """An object's bytes, or None when there is no such object."""
    from botocore.exceptions import BotoCoreError, ClientError

    uri = f"s3://{location.bucket}/{key}"
    try:
        body: bytes = s3.get_object(Bucket=location.bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        if _missing(exc):
            return None
        raise _error(uri, exc, endpoint_url=s3.meta.endpoint_url) from None
    return body


def remote_manifest(
    store_uri: str, digest: str, *, endpoint_url: str | None
) -> artifact.Manifest | None:
    """The manifest of `<store>/<digest>` when that object exists and parses, else None."""
    location = parse_store(store_uri)
    data = _get(client(endpoint_url), location, location.key(digest, artifact.MANIFEST_FILE))
    if data is None:
        return None
    try:
        manifest = artifact.Manifest.model_validate_json(data)
    except ValidationError:
        return None
    return manifest if manifest.digest == digest else None


def upload(folder: Path, *, store_uri: str, digest: str, endpoint_url: str | None) -> str:
    """Upload a complete local artifact folder to `<store>/<digest>/`, the manifest last;
    returns the artifact's URI."""
    from botocore.exceptions import BotoCoreError, ClientError

    location = parse_store(store_uri)
    s3 = client(endpoint_url)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != artifact.MANIFEST_FILE)
    for path in [*files, folder / artifact.MANIFEST_FILE]:
        key = location.key(digest, path.name)
        try:
            s3.upload_file(str(path), location.bucket, key)
        except (ClientError, BotoCoreError) as exc:
            raise _error(f"s3://{location.bucket}/{key}", exc, endpoint_url=endpoint_url) from None
        except Exception as exc:  # boto3's transfer manager wraps errors in its own classes
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError | BotoCoreError):
                raise _error(
                    f"s3://{location.bucket}/{key}", cause, endpoint_url=endpoint_url
                ) from None
            raise
    return f"{location.uri}/{digest}"


def point_ref(store_uri: str, ref: str, digest: str, *, endpoint_url: str | None) -> str:
    """Write `<store>/refs/<ref>` holding `digest` (one PUT: atomic); returns its URI."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not artifact.valid_ref_name(ref):
        raise RemoteStoreError(
            f"ref name {ref!r} must be lower-case letters, digits, '.', '_' or '-' (≤ 253)"
        )
    location = parse_store(store_uri)
    key = location.key(artifact.REFS_DIR, ref)
    try:
        client(endpoint_url).put_object(
            Bucket=location.bucket, Key=key, Body=digest.encode(), ContentType="text/plain"
        )
    except (ClientError, BotoCoreError) as exc:
        raise _error(f"s3://{location.bucket}/{key}", exc, endpoint_url=endpoint_url) from None
    return f"s3://{location.bucket}/{key}"


def download(model_uri: str, *, cache: Path, endpoint_url: str | None) -> Path:
    """Download the artifact `model_uri` names (a ref or a digest) into `<cache>/<digest>`
    (kept across runs: a complete copy there is used as is); returns that folder."""
    from botocore.exceptions import BotoCoreError, ClientError

    location, ref, digest = parse_model(model_uri)
    s3 = client(endpoint_url)
    if ref is not None:
        data = _get(s3, location, location.key(artifact.REFS_DIR, ref))
        if data is None:
            raise RemoteStoreError(
                f"{model_uri}: no such ref in the artifact store; convert the model with "
                f"--store {location.uri} --ref {ref} first, or check the URI"
            )
        digest = data[:_MAX_REF_BYTES].decode(errors="replace").strip()
        if not _DIGEST.match(digest):
            raise RemoteStoreError(f"{model_uri}: the ref does not hold a digest ({digest[:80]!r})")
    assert digest is not None
    final = cache / digest
    if artifact.is_complete(final):
        return final
    manifest_key = location.key(digest, artifact.MANIFEST_FILE)
    if _get(s3, location, manifest_key) is None:
        raise RemoteStoreError(
            f"{model_uri}: no artifact {digest} in {location.uri} (no {artifact.MANIFEST_FILE});"
            " it was never converted there or its upload did not finish"
        )
    staging = artifact.staging_dir(cache, digest)
    try:
        names = _list(s3, location, digest, uri=model_uri)
        for name in sorted(names, key=lambda n: n == artifact.MANIFEST_FILE):
            try:
                s3.download_file(location.bucket, location.key(digest, name), str(staging / name))
            except (ClientError, BotoCoreError) as exc:
                raise _error(model_uri, exc, endpoint_url=endpoint_url) from None
        if not artifact.is_complete(staging):
            raise RemoteStoreError(
                f"{model_uri}: the downloaded artifact {digest} has no {artifact.MODEL_FILE}"
                " or an invalid manifest"
            )
        _check_download(staging, model_uri=model_uri, digest=digest)
        return artifact.publish(staging, cache, digest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_download(folder: Path, *, model_uri: str, digest: str) -> None:
    """The downloaded files are the artifact the manifest describes: its own digest, and
    for a tensor model the model and its external data files adding up to the manifest's
    `sizeBytes` (an object missing or cut short, e.g. a `.data` file of a model over
    2 GiB, is caught here rather than as a load error in onnxruntime)."""
    manifest = artifact.read_manifest(folder)
    if manifest.digest != digest:
        raise RemoteStoreError(
            f"{model_uri}: the manifest under {digest} is for artifact {manifest.digest}; the "
            "store was written by hand or is corrupt"
        )
    if manifest.kind != "tensor":
        return
    files = [p for p in folder.iterdir() if p.is_file() and p.name != artifact.MANIFEST_FILE]
    got = sum(p.stat().st_size for p in files)
    if got != manifest.size_bytes:
        names = ", ".join(sorted(p.name for p in files))
        raise RemoteStoreError(
            f"{model_uri}: the artifact {digest} downloaded as {got} bytes ({names}) but its "
            f"manifest says {manifest.size_bytes}: an object is missing or incomplete in "
            "the store; convert the model again to rebuild it"
        )


def _list(s3: Any, location: StoreLocation, digest: str, *, uri: str) -> list[str]:
    """The file names directly under `<store>/<digest>/`."""
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = location.key(digest) + "/"
    names: list[str] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=location.bucket, Prefix=prefix
        ):
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(prefix) :]
                if name and "/" not in name and name not in (".", ".."):
                    names.append(name)
    except (ClientError, BotoCoreError) as exc:
        raise _error(uri, exc, endpoint_url=s3.meta.endpoint_url) from None
    return names
