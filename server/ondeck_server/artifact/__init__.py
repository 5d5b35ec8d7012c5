"""The artifact layout shared by the pipeline (which writes it) and the server (which
reads it):

    <store>/<digest>/model.onnx      (+ external data files)
    <store>/<digest>/genai/...       a language model instead: onnxruntime-genai's folder
    <store>/<digest>/manifest.json   (kind "tensor" or "llm")
    <store>/refs/<name> -> ../<digest>

(the same layout as objects in an s3:// store: see remote_store.py)

This module holds the manifest schema, how a path given to `serve` resolves to a model,
and the atomic-publish helpers. It does not convert, optimize or serve anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ondeck_server.artifact.batching import Batching

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
GENAI_DIR = "genai"
KIND_LLM = "llm"
REFS_DIR = "refs"
SCHEMA_VERSION = 1
_REF_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")


class ArtifactError(Exception):
    """An artifact folder is missing, incomplete or unreadable."""


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class TensorInfo(_Model):
    """One model input or output as the V2 protocol describes it."""

    name: str
    datatype: str = Field(description="V2 datatype: FP32, INT64, BOOL, BYTES, ...")
    shape: list[int] = Field(description="-1 for a dynamic dimension")


class SourceInfo(_Model):
    uri: str
    sha256: str
    format: str
    size_bytes: int = Field(alias="sizeBytes")


class Manifest(_Model):
    """manifest.json: everything known about how an artifact was made."""

    schema_version: int = Field(default=SCHEMA_VERSION, alias="schemaVersion")
    digest: str
    name: str | None = None
    source: SourceInfo
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    original_size_bytes: int = Field(alias="originalSizeBytes")
    size_bytes: int = Field(alias="sizeBytes")
    settings: dict[str, Any] = Field(default_factory=dict)
    validation: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    created_at: str | None = Field(default=None, alias="createdAt")
    batching: Batching | None = Field(
        default=None,
        description="whether requests of different callers may share a model run; absent "
        "in artifacts made before ondeck recorded it (the server then checks at load)",
    )

    kind: str = Field(
        default="tensor", description="tensor (model.onnx) or llm (genai/, a language model)"
    )
    llm: dict[str, Any] | None = Field(
        default=None, description="a language model's facts: architecture, context, builder"
    )
    precision: str | None = Field(
        default=None,
        description="the served weights' number type: fp32, fp16, int8, int4 (absent in "
        "artifacts made before ondeck recorded it)",
    )

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


class ResolvedModel(BaseModel):
    """What `serve` needs: the ONNX file, and the manifest when there is one."""

    model_path: Path
    manifest: Manifest | None = None


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_FILE
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{folder} has no {MANIFEST_FILE}: not an ondeck artifact") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"{path} is invalid at {where}: {first['msg']}") from exc


def is_complete(folder: Path) -> bool:
    """True when `folder` holds a model and a manifest that parses."""
    if not (folder / MODEL_FILE).is_file() and not (folder / GENAI_DIR / MODEL_FILE).is_file():
        return False
    try:
        read_manifest(folder)
    except ArtifactError:
        return False
    return True


def is_llm(path: Path) -> bool:
    """True when `path` (a folder or a refs/ link) is a language-model artifact."""
    folder = Path(path)
    return folder.is_dir() and (folder / GENAI_DIR / "genai_config.json").is_file()


def resolve(path: Path) -> ResolvedModel:
    """A `model.onnx`, an artifact folder, or a `refs/<name>` link, to a loadable model."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"model path {path} does not exist")
    if path.is_file():
        if path.suffix != ".onnx":
            raise ArtifactError(f"{path} is not an .onnx file or an artifact folder")
        return ResolvedModel(model_path=path)
    folder = path.resolve()
    model = folder / MODEL_FILE
    if not model.is_file():
        raise ArtifactError(f"{path} has no {MODEL_FILE}: give a model.onnx or an artifact folder")
    manifest = read_manifest(folder) if (folder / MANIFEST_FILE).exists() else None
    return ResolvedModel(model_path=model, manifest=manifest)


def staging_dir(store: Path, digest: str) -> Path:
    """A fresh temporary folder inside `store` (same filesystem, so rename is atomic)."""
    store.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{digest[:12]}-", dir=store))


def publish(staging: Path, store: Path, digest: str) -> Path:
    """Rename a finished staging folder to `<store>/<digest>`. When another writer got
    there first with a complete artifact, keep theirs and drop ours."""
    final = store / digest
    if final.exists():
        if is_complete(final):
            shutil.rmtree(staging, ignore_errors=True)
            return final
        # A leftover that is not complete (an older crash): replace it.
        shutil.rmtree(final)
    os.rename(staging, final)
    return final


def valid_ref_name(ref: str) -> bool:
    """True when `ref` can name `<store>/refs/<ref>`."""
    return _REF_NAME.match(ref) is not None


def point_ref(store: Path, ref: str, digest: str) -> Path:
    """Atomically point `<store>/refs/<ref>` at `<store>/<digest>`."""
    if not valid_ref_name(ref):
        raise ArtifactError(
            f"ref name {ref!r} must be lower-case letters, digits, '.', '_' or '-' (≤ 253)"
        )
    refs = store / REFS_DIR
    refs.mkdir(parents=True, exist_ok=True)
    link = refs / ref
    tmp = refs / f".{ref}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(Path("..") / digest, tmp)
    os.replace(tmp, link)
    return link


def summary(
    manifest: Manifest, *, path: Path | str, ref: str | None, cached: bool
) -> dict[str, Any]:
    """The one-line JSON summary `convert` prints and writes to the termination log
    (`path`: the artifact folder, or its s3:// URI in an object store)."""
    return {
        "digest": manifest.digest,
        "path": str(path),
        "ref": ref,
        "sizeBytes": manifest.size_bytes,
        "originalSizeBytes": manifest.original_size_bytes,
        "format": manifest.source.format,
        "quantize": applied_quantize(manifest),
        "inputs": [t.model_dump(by_alias=True) for t in manifest.inputs],
        "outputs": [t.model_dump(by_alias=True) for t in manifest.outputs],
        "validation": manifest.validation,
        "cached": cached,
        # What the operator sizes the server's memory and disk from (docs/operations.md).
        "kind": manifest.kind,
        "sourceSizeBytes": manifest.source.size_bytes,
        "precision": manifest.precision,
        "llm": llm_sizing(manifest.llm) if manifest.kind == KIND_LLM else None,
    }


def applied_quantize(manifest: Manifest) -> str:
    """The quantization the model has: the requested mode, or what `auto` chose."""
    chosen = (manifest.validation.get("auto") or {}).get("chosen")
    return str(chosen or manifest.settings.get("quantize", "none"))


#: The language-model facts the conversion summary carries (the KV-cache formula's terms).
LLM_SIZING_FACTS = (
    "numLayers",
    "numKeyValueHeads",
    "headSize",
    "kvBytesPerElement",
    "contextLength",
)


def llm_sizing(facts: dict[str, Any] | None) -> dict[str, Any]:
    """The KV-cache terms of a language model's manifest facts (absent ones left out)."""
    return {k: facts[k] for k in LLM_SIZING_FACTS if facts and facts.get(k) is not None}


def dumps_compact(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)
