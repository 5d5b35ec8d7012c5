"""Hostile manifest files (issue 15 item 5): YAML bombs, deep nesting, wrong encodings and
huge values give one line `ManifestError: <file>: <why>` and exit 2 from the one reader
that `ondeck validate`, `ondeck render` and `ondeck run` share — never a traceback, never
gigabytes of memory.

The CLI runs in a subprocess under an address-space cap (RLIMIT_AS, 2 GiB), so a regression
fails here with a MemoryError instead of taking the machine down. Before the fix the
1 KB "billion laughs" below used more than 4 GB, 20 000 `[` printed a RecursionError, a
latin-1 file a UnicodeDecodeError, and a 50 MB `uri` came back whole in the error.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ondeck_operator.local import ManifestError
from ondeck_operator.local.manifest import (
    MAX_ALIAS_NODES,
    MAX_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_NODES,
    load_manifest,
    read_documents,
)

ADDRESS_SPACE_CAP = 2 * 1024**3

MD = """\
apiVersion: ondeck.io/v1alpha1
kind: ModelDeployment
metadata: {name: m}
spec:
  model: {uri: model.onnx}
"""


def billion_laughs() -> bytes:
    """The classic: 9 levels of 9 aliases each, 9^9 "lol"s expanded, 342 bytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return ("\n".join(lines) + "\n").encode()


def _uri(size: int) -> bytes:
    return MD.replace("model.onnx", "s3://b/" + "a" * size).encode()


#: name -> (file bytes, the message after "ManifestError: <file>: ")
CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "billion-laughs": (
        billion_laughs,
        f"refused at line 5: YAML aliases expand to more than {MAX_ALIAS_NODES} values",
    ),
    "alias-inside-itself": (
        lambda: b"a: &a [*a]\n",
        "refused at line 1: a YAML alias refers to a value that contains it",
    ),
    "20000-nested-brackets": (
        lambda: b"[" * 20_000,
        f"refused at line 1: nested deeper than {MAX_DEPTH} levels",
    ),
    "deep-block-mappings": (
        lambda: "".join(f"{'  ' * i}k:\n" for i in range(200)).encode(),
        f"refused at line {MAX_DEPTH + 1}: nested deeper than {MAX_DEPTH} levels",
    ),
    "150000-values": (
        lambda: ("[" + ",".join(["0"] * 150_000) + "]\n").encode(),
        f"refused at line 1: more than {MAX_NODES} values",
    ),
    "latin-1": (
        lambda: MD.replace("{name: m}", "{name: caf\xe9}").encode("latin-1"),
        "not UTF-8 text (byte 0xe9 at offset 73); save the file as UTF-8",
    ),
    "utf-16-without-bom": (
        lambda: MD.encode("utf-16-le"),
        "holds NUL bytes (UTF-16 or UTF-32 without a byte order mark?); save the file as UTF-8",
    ),
    "bad-utf-16-after-bom": (
        lambda: MD.encode("utf-16") + b"\x00\xd8",
        "not UTF-16 text (byte 0x00 at offset 214); save the file as UTF-8",
    ),
    "50-MB-uri": (
        lambda: _uri(50 * 1024 * 1024),
        "larger than 1 MiB, the limit for a manifest file",
    ),
    "impossible-date": (
        lambda: (MD + "  x: 2001-02-30\n").encode(),
        "a value cannot be read: day is out of range for month",
    ),
    "5000-digit-int": (
        lambda: (MD + "  x: " + "9" * 5000 + "\n").encode(),
        "a value cannot be read: Exceeds the limit (4300 digits) for integer string "
        "conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase "
        "the limit",
    ),
    "control-character": (
        lambda: b"a: \x01\n",
        "not valid YAML: character #x0001 at offset 3 is not allowed in YAML",
    ),
    "unknown-tag": (
        lambda: b"a: !!python/object:os.system [id]\n",
        "not valid YAML at line 1: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object:os.system'",
    ),
}


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_the_reader_refuses_with_one_line(tmp_path: Path, case: str) -> None:
    make, message = CASES[case]
    path = _write(tmp_path, case, make())
    with pytest.raises(ManifestError) as info:
        read_documents(path)
    assert info.value.one_line() == f"ManifestError: {path}: {message}"
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.one_line() == f"ManifestError: {path}: {message}"


def test_what_yaml_allows_still_reads(tmp_path: Path) -> None:
    """UTF-8 with a BOM, UTF-16 and UTF-32 with a BOM (YAML allows all of them), a few
    aliases, a file just under the size limit, and nesting just at the depth limit."""
    for encoding in ("utf-8-sig", "utf-16", "utf-16-be", "utf-32"):
        data = MD.encode(encoding)
        if encoding == "utf-16-be":
            data = b"\xfe\xff" + data
        path = _write(tmp_path, encoding, data)
        assert load_manifest(path).md.metadata.name == "m", encoding
    aliases = MD + "  server:\n    podLabels: &l {team: a}\n    podAnnotations: *l\n"
    loaded = load_manifest(_write(tmp_path, "aliases", aliases.encode()))
    assert loaded.raw["spec"]["server"]["podAnnotations"] == {"team": "a"}
    padding = MAX_MANIFEST_BYTES - len(MD) - 1
    assert load_manifest(_write(tmp_path, "big", (MD + "#" * padding + "\n").encode()))
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert read_documents(_write(tmp_path, "nested", nested.encode())) != []


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ondeck_operator", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_limit_memory,
        cwd=tmp_path,
    )


COMMANDS = {
    "validate": ["validate", "-f"],
    "render": ["render", "-f"],
    "run": ["run", "--store", "store", "--port", "1", "-f"],
}
CLI_CASES = [
    (case, command)
    for case in ("billion-laughs", "20000-nested-brackets", "50-MB-uri")
    for command in COMMANDS
] + [("latin-1", "render"), ("utf-16-without-bom", "validate"), ("impossible-date", "run")]


@pytest.mark.parametrize(("case", "command"), CLI_CASES, ids=[f"{c}-{m}" for c, m in CLI_CASES])
def test_every_command_exits_2_with_one_line_under_a_memory_cap(
    tmp_path: Path, case: str, command: str
) -> None:
    make, message = CASES[case]
    path = _write(tmp_path, case, make())
    done = _cli(tmp_path, *COMMANDS[command], str(path))
    assert done.stderr.splitlines() == [f"ManifestError: {path}: {message}"], done.stderr[-3000:]
    assert done.returncode == 2
    assert done.stdout == ""


def test_a_long_value_is_not_echoed_whole(tmp_path: Path) -> None:
    """Under the size limit a 1 MB `uri` is read, and refused by the schema: the error
    shows its first characters and its length, not the megabyte."""
    path = _write(tmp_path, "long-uri", _uri(1_000_000))
    done = _cli(tmp_path, "validate", "-f", str(path))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"SpecError: {path}: spec.model.uri: 's3://b/{'a' * 72}... (1000007 characters) "
        "is longer than 2048 characters"
    ]
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    line = info.value.one_line()
    assert len(line) < 700, line[:1000]


YAMLISH = st.lists(
    st.sampled_from([*"[]{}&*!|>-?:,'\"#%@`~\n\t ab01e.", "&a ", "*a", "<<: ", "!!", "\xe9"]),
    max_size=200,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(YAMLISH.map(str.encode), st.binary(max_size=200)))
def test_any_bytes_give_documents_or_one_manifest_error(data: bytes) -> None:
    """Whatever the bytes, the reader returns documents or raises ManifestError with one
    line: never another exception (a traceback for the user)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "md.yaml"
        path.write_bytes(data)
        line = ""
        try:
            read_documents(path)
        except ManifestError as exc:
            line = exc.one_line()
        assert "\n" not in line
