"""Fetching sources for real: local paths, pvc://, a loopback HTTP server, and a moto S3
server with IAM authentication. Every failure is checked for the exact message."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from ondeck_server.convert.errors import ChecksumMismatch, FetchFailed, InvalidSettings
from ondeck_server.convert.fetch import (
    Fetched,
    FetchSettings,
    fetch,
    normalize_sha256,
    sibling_uri,
)
from pipeline.conftest import S3, Sources, free_port


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plain_path_and_file_uri_are_read_in_place(sources: Sources, tmp_path: Path) -> None:
    path = sources["mlp.onnx"]
    for uri in (str(path), f"file://{path}"):
        got = fetch(uri, dest=tmp_path / "dl", settings=FetchSettings())
        assert got == Fetched(
            uri=uri,
            path=path,
            sha256=sha256_of(path),
            size_bytes=path.stat().st_size,
            downloaded=False,
        )
    assert not (tmp_path / "dl").exists()


def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(FetchFailed) as info:
        fetch(str(tmp_path / "nope.onnx"), dest=tmp_path, settings=FetchSettings())
    assert info.value.message == (f"{tmp_path / 'nope.onnx'}: no such file; check the path")


def test_folder_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="is a folder: point at the model file inside it"):
        fetch(str(tmp_path), dest=tmp_path, settings=FetchSettings())


def test_pvc_uri_resolves_under_the_pvc_root(sources: Sources, tmp_path: Path) -> None:
    settings = FetchSettings(pvc_root=sources.root.parent)
    sources["mlp.onnx"]  # built on first use
    got = fetch(f"pvc://{sources.root.name}/mlp.onnx", dest=tmp_path, settings=settings)
    assert got.path == sources["mlp.onnx"]
    assert got.sha256 == sha256_of(sources["mlp.onnx"])


def test_pvc_uri_cannot_leave_its_claim(sources: Sources, tmp_path: Path) -> None:
    settings = FetchSettings(pvc_root=sources.root)
    with pytest.raises(FetchFailed) as info:
        fetch("pvc://external/../mlp.onnx", dest=tmp_path, settings=settings)
    assert info.value.one_line() == (
        "FetchFailed: pvc://external/../mlp.onnx: the path leaves the claim 'external' (after "
        "following '..' and symbolic links); name a file inside the claim"
    )


def test_pvc_uri_cannot_name_a_claim_outside_the_root(sources: Sources, tmp_path: Path) -> None:
    """`pvc://../x` read the file next to --pvc-root (issue 15, item 6)."""
    root = tmp_path / "claims"
    (root / "models").mkdir(parents=True)
    (tmp_path / "outside.onnx").write_bytes(sources["mlp.onnx"].read_bytes())
    settings = FetchSettings(pvc_root=root)
    for uri in ("pvc://../outside.onnx", "pvc://./../outside.onnx", "pvc://%2E%2E/outside.onnx"):
        with pytest.raises(FetchFailed) as info:
            fetch(uri, dest=tmp_path, settings=settings)
        assert info.value.one_line().startswith(f"FetchFailed: {uri}: "), info.value.one_line()
    with pytest.raises(FetchFailed) as info:
        fetch("pvc://../outside.onnx", dest=tmp_path, settings=settings)
    assert info.value.one_line() == (
        "FetchFailed: pvc://../outside.onnx: '..' is not a claim name (lower-case letters, "
        "digits, '-' and '.', as Kubernetes names a PersistentVolumeClaim)"
    )


def test_pvc_uri_cannot_follow_a_symlink_out_of_its_claim(sources: Sources, tmp_path: Path) -> None:
    root = tmp_path / "claims"
    (root / "models").mkdir(parents=True)
    (tmp_path / "outside.onnx").write_bytes(sources["mlp.onnx"].read_bytes())
    (root / "models" / "link.onnx").symlink_to(tmp_path / "outside.onnx")
    (root / "escape").symlink_to(tmp_path)  # a "claim" that is a link out of the root
    settings = FetchSettings(pvc_root=root)
    for uri, claim in (
        ("pvc://models/link.onnx", "models"),
        ("pvc://escape/outside.onnx", "escape"),
    ):
        with pytest.raises(FetchFailed) as info:
            fetch(uri, dest=tmp_path, settings=settings)
        assert info.value.one_line() == (
            f"FetchFailed: {uri}: the path leaves the claim {claim!r} (after following '..' "
            "and symbolic links); name a file inside the claim"
        )


def test_pvc_uri_needs_a_pvc_root(tmp_path: Path) -> None:
    with pytest.raises(InvalidSettings) as info:
        fetch("pvc://models/iris.onnx", dest=tmp_path, settings=FetchSettings())
    assert info.value.message == (
        "pvc://models/iris.onnx: pvc:// sources need --pvc-root, the folder the claims are "
        "mounted under"
    )


def test_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(FetchFailed) as info:
        fetch("ftp://example.com/m.onnx", dest=tmp_path, settings=FetchSettings())
    assert info.value.message == (
        "ftp://example.com/m.onnx: unknown scheme 'ftp'; use a path, file://, http(s)://, "
        "s3://, gs://, hf:// or pvc://"
    )


# ---------------------------------------------------------------- sha256


def test_sha256_mismatch_fails_before_anything_else(sources: Sources, tmp_path: Path) -> None:
    path = sources["mlp.onnx"]
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as info:
        fetch(str(path), dest=tmp_path, settings=FetchSettings(), expected_sha256=wrong)
    assert info.value.message == (
        f"{path} has sha256 {sha256_of(path)}, expected {wrong}: the file changed or the "
        "checksum is wrong; fix spec.model.sha256 or the file, nothing was converted"
    )


def test_sha256_mismatch_removes_the_download(
    sources: Sources, http_url: str, tmp_path: Path
) -> None:
    sources["mlp.onnx"]
    with pytest.raises(ChecksumMismatch):
        fetch(
            f"{http_url}/mlp.onnx",
            dest=tmp_path,
            settings=FetchSettings(),
            expected_sha256="f" * 64,
        )
    assert list(tmp_path.iterdir()) == []


def test_sha256_forms() -> None:
    digest = "AB" * 32
    assert normalize_sha256(f"sha256:{digest}") == digest.lower()
    with pytest.raises(InvalidSettings) as info:
        normalize_sha256("abc")
    assert info.value.message == (
        "--sha256 'abc' is not a sha256: give 64 hex digits (sha256sum prints them)"
    )


# ---------------------------------------------------------------- HTTP


def test_http_download_is_streamed_and_verified(
    sources: Sources, http_url: str, tmp_path: Path
) -> None:
    expected = sha256_of(sources["mlp.onnx"])
    got = fetch(
        f"{http_url}/mlp.onnx", dest=tmp_path, settings=FetchSettings(), expected_sha256=expected
    )
    assert got.downloaded
    assert got.path == tmp_path / "mlp.onnx"
    assert got.path.read_bytes() == sources["mlp.onnx"].read_bytes()
    assert got.sha256 == expected


def test_http_404(http_url: str, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed) as info:
        fetch(f"{http_url}/missing.onnx", dest=tmp_path, settings=FetchSettings())
    assert info.value.message == f"{http_url}/missing.onnx returned 404 Not Found; check the URL"
    assert list(tmp_path.iterdir()) == []


def test_http_403(http_url: str, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed) as info:
        fetch(f"{http_url}/private/mlp.onnx", dest=tmp_path, settings=FetchSettings())
    assert info.value.message == (
        f"{http_url}/private/mlp.onnx returned 403 (Forbidden); the server refuses access: use "
        "a URL that needs no credentials (e.g. a pre-signed URL) or an s3:// source with a "
        "credentials Secret"
    )


def test_http_size_limit(sources: Sources, http_url: str, tmp_path: Path) -> None:
    size = sources["mlp.onnx"].stat().st_size
    with pytest.raises(FetchFailed) as info:
        fetch(f"{http_url}/mlp.onnx", dest=tmp_path, settings=FetchSettings(max_bytes=1000))
    assert info.value.message == (
        f"{http_url}/mlp.onnx is {size} bytes, over the download limit of 1000; raise "
        "--max-download-bytes if the model really is that big"
    )
    assert list(tmp_path.iterdir()) == []


def test_http_size_limit_while_streaming(sources: Sources, http_url: str, tmp_path: Path) -> None:
    sources["mlp.onnx"]
    with pytest.raises(FetchFailed) as info:
        fetch(
            f"{http_url}/stream/mlp.onnx",
            dest=tmp_path,
            settings=FetchSettings(max_bytes=100_000),
        )
    assert info.value.message == (
        f"{http_url}/stream/mlp.onnx is larger than the download limit of 100000 bytes; "
        "raise --max-download-bytes if the model really is that big"
    )
    assert list(tmp_path.iterdir()) == []
    got = fetch(f"{http_url}/stream/mlp.onnx", dest=tmp_path, settings=FetchSettings())
    assert got.path.read_bytes() == sources["mlp.onnx"].read_bytes()


def test_http_unreachable_port(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/mlp.onnx"
    with pytest.raises(FetchFailed) as info:
        fetch(url, dest=tmp_path, settings=FetchSettings(connect_timeout_s=2))
    assert info.value.message.startswith(f"{url}: cannot connect (")
    assert info.value.message.endswith("); check the host and port")


def test_sibling_uri() -> None:
    assert sibling_uri("s3://b/dir/m.onnx", "m.onnx.data") == "s3://b/dir/m.onnx.data"
    assert sibling_uri("/models/m.onnx", "w.bin") == "/models/w.bin"


# ---------------------------------------------------------------- S3


def test_s3_download_with_credentials(
    s3: S3, sources: Sources, aws_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in s3.env().items():
        aws_env.setenv(key, value)
    got = fetch(
        f"s3://{s3.bucket}/team/iris_pipeline.skops",
        dest=tmp_path,
        settings=FetchSettings(s3_endpoint_url=s3.endpoint),
    )
    assert got.path.read_bytes() == sources["iris_pipeline.skops"].read_bytes()
    assert got.sha256 == sha256_of(sources["iris_pipeline.skops"])


def test_s3_missing_credentials(s3: S3, aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uri = f"s3://{s3.bucket}/team/mlp.onnx"
    with pytest.raises(FetchFailed) as info:
        fetch(uri, dest=tmp_path, settings=FetchSettings(s3_endpoint_url=s3.endpoint))
    assert info.value.message == (
        f"{uri}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(spec.model.credentialsSecret mounts them in the cluster)"
    )


def test_s3_wrong_credentials(s3: S3, aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    uri = f"s3://{s3.bucket}/team/mlp.onnx"
    with pytest.raises(FetchFailed) as info:
        fetch(uri, dest=tmp_path, settings=FetchSettings(s3_endpoint_url=s3.endpoint))
    assert info.value.message == (
        f"{uri}: access denied (403); the credentials in AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY cannot read this object"
    )


def test_s3_missing_key(s3: S3, aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in s3.env().items():
        aws_env.setenv(key, value)
    uri = f"s3://{s3.bucket}/team/absent.onnx"
    with pytest.raises(FetchFailed) as info:
        fetch(uri, dest=tmp_path, settings=FetchSettings(s3_endpoint_url=s3.endpoint))
    assert info.value.message == (
        f"{uri}: no object 'team/absent.onnx' in bucket '{s3.bucket}'; check the key"
    )


def test_s3_unreachable_endpoint(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    aws_env.setenv("AWS_ACCESS_KEY_ID", "x")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "y")
    endpoint = f"http://127.0.0.1:{free_port()}"
    settings = FetchSettings(s3_endpoint_url=endpoint, connect_timeout_s=1)
    with pytest.raises(FetchFailed) as info:
        fetch("s3://models/m.onnx", dest=tmp_path, settings=settings)
    assert info.value.message == (
        f"s3://models/m.onnx: cannot connect to the S3 endpoint at {endpoint}; "
        "check --s3-endpoint-url"
    )


# ---------------------------------------------------------------- optional extras


@pytest.mark.skipif(
    importlib.util.find_spec("google.cloud.storage") is not None
    if importlib.util.find_spec("google.cloud") is not None
    else False,
    reason="needs google-cloud-storage absent: it is installed here",
)
def test_gs_without_the_gcs_extra(tmp_path: Path) -> None:
    with pytest.raises(FetchFailed) as info:
        fetch("gs://models/m.onnx", dest=tmp_path, settings=FetchSettings())
    assert info.value.message == (
        "gs://models/m.onnx: gs:// sources need the gcs extra; install it with "
        "pip install 'ondeck[gcs]' (the server image: build arg EXTRAS=gcs)"
    )


def test_hf_offline_is_a_fetch_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("huggingface_hub", reason="needs huggingface-hub (the hf extra)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FetchFailed) as info:
        fetch("hf://acme/iris@main/model.onnx", dest=tmp_path, settings=FetchSettings())
    assert info.value.message.startswith("hf://acme/iris@main/model.onnx: Hugging Face download")
    assert info.value.message.endswith(
        "check the repo, the file and HF_TOKEN, and that HF_HUB_OFFLINE is not set"
    )


def test_hf_uri_needs_a_file(tmp_path: Path) -> None:
    with pytest.raises(FetchFailed) as info:
        fetch("hf://acme/iris", dest=tmp_path, settings=FetchSettings())
    assert info.value.message == (
        "hf://acme/iris: write hf://<org>/<repo>[@revision]/<path/to/file>"
    )
