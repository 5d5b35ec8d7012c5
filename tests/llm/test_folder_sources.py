"""Folder-shaped sources (convert/folders.py): the tiny LLaMA folder as a .tar.gz over
HTTP, a .zip on disk and an s3:// prefix (moto server) gives the very artifact the local
folder gave — same folder sha256, same digest, a cache hit — and hostile archives are
refused before anything is written."""

from __future__ import annotations

import functools
import http.server
import io
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from moto_server import moto_server
from ondeck_server.convert import ConvertRequest, Format, UnsafeModel, convert
from ondeck_server.convert.fetch import FetchSettings
from ondeck_server.convert.folders import unpack
from ondeck_server.convert.run import Outcome

MIB = 1 << 20


@pytest.fixture(scope="module")
def archives(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archives")
    with tarfile.open(root / "tinyllm.tar.gz", "w:gz") as tar:
        tar.add(tiny_folder, arcname="tinyllm")
    with zipfile.ZipFile(root / "tinyllm.zip", "w") as zf:  # files at the top, no folder
        for path in sorted(tiny_folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(tiny_folder).as_posix())
    return root


@pytest.fixture(scope="module")
def http_root(archives: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(archives))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("boto3")
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


def _same_artifact(outcome: Outcome, fp32_artifact: Outcome) -> None:
    assert outcome.manifest.digest == fp32_artifact.manifest.digest
    assert outcome.manifest.source.sha256 == fp32_artifact.manifest.source.sha256
    assert outcome.cached is True  # nothing rebuilt: the folder is the same model


def test_a_tar_gz_over_http_is_the_same_model_as_the_folder(
    fp32_artifact: Outcome, llm_store: Path, http_root: str
) -> None:
    outcome = convert(
        ConvertRequest(source=f"{http_root}/tinyllm.tar.gz", store=llm_store)
    )  # format inferred: an archive goes to the folder lane
    _same_artifact(outcome, fp32_artifact)


def test_a_zip_on_disk_is_the_same_model_as_the_folder(
    fp32_artifact: Outcome, llm_store: Path, archives: Path
) -> None:
    outcome = convert(
        ConvertRequest(
            source=str(archives / "tinyllm.zip"), store=llm_store, format=Format.HF_CAUSAL_LM
        )
    )
    _same_artifact(outcome, fp32_artifact)


def test_an_s3_prefix_is_the_same_model_as_the_folder(
    fp32_artifact: Outcome,
    llm_store: Path,
    tiny_folder: Path,
    moto: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=moto)
    client.create_bucket(Bucket="llms")
    for path in sorted(tiny_folder.rglob("*")):
        if path.is_file():
            key = f"team/tinyllm/{path.relative_to(tiny_folder).as_posix()}"
            client.upload_file(str(path), "llms", key)
    client.put_object(Bucket="llms", Key="team/tinyllm/", Body=b"")  # a folder marker
    outcome = convert(
        ConvertRequest(
            source="s3://llms/team/tinyllm/",
            store=llm_store,
            fetch=FetchSettings(s3_endpoint_url=moto),
        )
    )
    _same_artifact(outcome, fp32_artifact)
    assert outcome.manifest.name == "tinyllm"


# ---------------------------------------------------------------- hostile archives


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ([(_info("../evil.txt"), b"x")], "leaves the folder ('..')"),
        ([(_info("/etc/evil.txt"), b"x")], "has an absolute path"),
        ([(_info("m/link", tarfile.SYMTYPE, "/etc/passwd"), b"")], "is a link"),
        ([(_info("m/hard", tarfile.LNKTYPE, "/etc/passwd"), b"")], "is a link"),
        ([(_info("m/dev", tarfile.CHRTYPE), b"")], "is a device or fifo"),
        ([(_info("m/a"), b"x"), (_info("m/a"), b"y")], "is in the archive twice"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "device", "duplicate"],
)
def test_hostile_tar_members_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], says: str
) -> None:
    archive = _tar(tmp_path / "m.tar.gz", members)
    with pytest.raises(UnsafeModel, match=says.replace("(", r"\(").replace(")", r"\)")):
        unpack(archive, tmp_path / "out", max_bytes=MIB)
    assert not (tmp_path / "out").exists()  # nothing left behind
    assert not (tmp_path.parent / "evil.txt").exists()


def test_a_tar_over_the_size_bound_is_refused_before_writing(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "big.tar.gz", [(_info("m/zeros"), bytes(2 * MIB))])
    with pytest.raises(UnsafeModel, match=r"--max-unpacked-bytes"):
        unpack(archive, tmp_path / "out", max_bytes=MIB)
    assert not (tmp_path / "out").exists()


def test_hostile_zip_members_are_refused(tmp_path: Path) -> None:
    for name, says in (("../evil.txt", r"\('\.\.'\)"), ("/abs.txt", "absolute path")):
        archive = tmp_path / "m.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr(name, b"x")
        with pytest.raises(UnsafeModel, match=says):
            unpack(archive, tmp_path / "out", max_bytes=MIB)
    link = zipfile.ZipInfo("m/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeModel, match="is a link"):
        unpack(archive, tmp_path / "out", max_bytes=MIB)


def test_a_zip_bomb_is_refused_by_its_sizes(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/zeros", bytes(64 * MIB))
    assert archive.stat().st_size < MIB // 8  # tiny on disk
    with pytest.raises(UnsafeModel, match=r"--max-unpacked-bytes"):
        unpack(archive, tmp_path / "out", max_bytes=8 * MIB)
    assert not (tmp_path / "out").exists()


def test_a_hostile_archive_source_fails_the_conversion_with_one_clear_error(
    tmp_path: Path,
) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", [(_info("../../evil.txt"), b"x")])
    with pytest.raises(UnsafeModel) as err:
        convert(ConvertRequest(source=str(archive), store=tmp_path / "store"))
    assert err.value.one_line().startswith("UnsafeModel: evil.tar.gz: member '../../evil.txt'")
    assert not any((tmp_path / "store").glob("*/manifest.json"))
