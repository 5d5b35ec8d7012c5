"""A Hugging Face model folder as a source: what it is and what its bytes hash to.

The folder's sha256 is defined over its regular files, sorted by relative path (bytes,
POSIX separators): the sha256 of the text `"<file sha256>  <relative path>\\n"` per
file, which is exactly what this shell pipeline prints:

    cd FOLDER && find . -type f -printf '%P\\0' | LC_ALL=C sort -z \\
        | xargs -0 sha256sum | sha256sum

Symbolic links are refused (they could make the conversion read files outside the
folder); hidden files count like any other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ondeck_server.convert.errors import FetchFailed, UnsafeModel, UnsupportedFormat

CONFIG = "config.json"
_CHUNK = 1 << 20


class FolderSource(BaseModel):
    """A model folder on local disk with its identity."""

    path: Path
    sha256: str
    size_bytes: int
    files: dict[str, str]
    """relative path → file sha256"""


def looks_like_hf_causal_lm(path: Path) -> bool:
    """A folder with a config.json naming a `*ForCausalLM` architecture."""
    try:
        return path.is_dir() and bool(causal_lm_architecture(read_config(path)))
    except (UnsupportedFormat, FetchFailed):
        return False


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnsupportedFormat(
            f"{folder} has no {CONFIG}: a hf-causal-lm source is a Hugging Face model folder "
            "(config.json, *.safetensors, tokenizer files)"
        ) from None
    except (OSError, ValueError) as exc:
        raise UnsupportedFormat(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UnsupportedFormat(f"{path} is not a JSON object")
    return data


def causal_lm_architecture(config: dict[str, Any]) -> str | None:
    archs = config.get("architectures") or []
    for arch in archs if isinstance(archs, list) else []:
        if isinstance(arch, str) and arch.endswith("ForCausalLM"):
            return arch
    return None


def hash_folder(folder: Path, *, max_bytes: int) -> FolderSource:
    """The folder's identity (see the module docstring); refuses links and size overruns."""
    files: dict[str, str] = {}
    total = 0
    root = folder.resolve()
    for entry in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix().encode()):
        rel = entry.relative_to(root).as_posix()
        if entry.is_symlink():
            raise UnsafeModel(
                f"{folder}/{rel} is a symbolic link; links could make the conversion read "
                "files outside the model folder: copy the file into the folder instead"
            )
        if not entry.is_file():
            continue
        total += entry.stat().st_size
        if total > max_bytes:
            raise FetchFailed(f"{folder} holds more than the limit of {max_bytes} bytes")
        files[rel] = _file_sha256(entry)
    listing = "".join(f"{files[rel]}  {rel}\n" for rel in files)
    digest = hashlib.sha256(listing.encode()).hexdigest()
    return FolderSource(path=root, sha256=digest, size_bytes=total, files=files)


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()
