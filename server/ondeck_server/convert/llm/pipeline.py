"""The language-model lane of `ondeck-server convert`: a Hugging Face causal-LM folder
(local, pvc://, s3://bucket/prefix/ or a .tar.gz/.zip archive, convert/folders.py) →
onnxruntime-genai's builder → the gate against transformers →
`<store>/<digest>/genai/` + manifest.json (kind `llm`).

Like the tensor pipeline it is idempotent (a valid `<store>/<digest>` means nothing
runs), crash safe (built in a locked `.tmp-*` folder, published by one rename), and
reports stage timings through `Events`. The generic optimize/quantize stages never see
an LLM: the builder's folder is kept as it wrote it.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ondeck_server import __version__, artifact
from ondeck_server.convert import folders, onnx_tools, store
from ondeck_server.convert.digest import PIPELINE_VERSION, compute_digest
from ondeck_server.convert.errors import (
    ChecksumMismatch,
    FetchFailed,
    InvalidSettings,
    UnsupportedFormat,
)
from ondeck_server.convert.formats import Format
from ondeck_server.convert.llm import build, folder, gate
from ondeck_server.convert.quantize import Quantize

if TYPE_CHECKING:
    from ondeck_server.convert.run import ConvertRequest, Events, Outcome

BUILD_TIMEOUT_S = 3600.0
_PRECISION = {Quantize.NONE: "fp32", Quantize.INT4: "int4"}
_VERSIONED = ("onnxruntime-genai", "onnxruntime", "transformers", "torch", "tokenizers")


def applies(request: ConvertRequest) -> bool:
    """True for `--format hf-causal-lm`, or, when no format is given, a local/pvc folder
    whose config.json names a `*ForCausalLM` architecture."""
    if request.format is Format.HF_CAUSAL_LM:
        return True
    if request.format is not None:
        return False
    if folders.is_prefix(request.source) or folders.is_archive(request.source):
        return True  # folder-shaped: the tensor lane takes single files only, for now
    try:
        path = folders.local_folder(request.source, request.fetch)
    except (FetchFailed, InvalidSettings):
        return False
    return path is not None and folder.looks_like_hf_causal_lm(path)


def convert_llm(request: ConvertRequest, *, work: Path, events: Events) -> Outcome:
    from ondeck_server.convert.run import Outcome

    precision = _PRECISION.get(request.quantize)
    if precision is None:
        raise InvalidSettings(
            f"--quantize {request.quantize.value} is not available for language models on "
            "CPU: use none (fp32) or int4 (MatMulNBits, 4-bit weights)"
        )
    if request.remote is not None:
        raise InvalidSettings(
            "language-model artifacts cannot be uploaded to an object store yet: use a "
            "PVC artifact store (spec.artifacts.pvc)"
        )
    timings: dict[str, float] = {}
    start = time.perf_counter()
    path = folders.fetch_folder(
        request.source,
        dest=work / "source",
        settings=request.fetch,
        max_unpacked_bytes=request.max_unpacked_bytes,
        progress=events.bytes_progress(),
    )
    if not path.is_dir():
        raise UnsupportedFormat(
            f"{request.source} is not a folder: --format hf-causal-lm takes a Hugging Face "
            "model folder (config.json, *.safetensors, tokenizer files)"
        )
    source = folder.hash_folder(path, max_bytes=request.fetch.max_bytes)
    if request.sha256 is not None and source.sha256 != request.sha256:
        raise ChecksumMismatch(
            f"{request.source} has folder sha256 {source.sha256}, expected {request.sha256} "
            "(sha256 over the sorted '<file sha256>  <path>' lines, docs/llm.md): the folder "
            "changed or the checksum is wrong; nothing was converted"
        )
    config = folder.read_config(path)
    arch = folder.causal_lm_architecture(config)
    if arch is None:
        raise UnsupportedFormat(
            f"{request.source}/config.json names no *ForCausalLM architecture "
            f"({config.get('architectures')!r}); hf-causal-lm needs a causal language model"
        )
    _lap(timings, "fetch", start, events, f"{path.name} ({source.size_bytes} bytes, {arch})")

    version = build.genai_version()
    options = build.builder_options(precision, request.int4)
    thresholds = gate.default_thresholds(precision)
    settings = {
        "sourceKind": "hf-folder",
        "quantize": request.quantize.value,
        "builder": options,
        "validation": thresholds.model_dump(mode="json", by_alias=True),
    }
    versions = _versions(version)
    digest = compute_digest(
        source_sha256=source.sha256,
        extra_sha256={},
        fmt=Format.HF_CAUSAL_LM,
        settings=settings,
        versions=versions,
    )
    final = request.store / digest
    with store.store_lock(request.store):
        cached = _valid(final, digest)
        if cached is None and final.exists():
            shutil.rmtree(final)
    if cached is not None:
        store.point_ref(request.store, request.ref, digest)
        events.stage("cached", 0.0, f"{final} is already built")
        return Outcome(manifest=cached, path=final, cached=True)

    staging: Path | None = None
    try:
        with store.locked_temp_dir(request.store, f".tmp-{digest[:12]}-") as staging:
            genai = staging / artifact.GENAI_DIR
            start = time.perf_counter()
            build.run_builder(
                path, out=genai, cache=work / "builder-cache", options=options,
                timeout_s=BUILD_TIMEOUT_S,
            )  # fmt: skip
            _lap(timings, "convert", start, events, f"onnxruntime-genai {version}, {precision}")
            start = time.perf_counter()
            report = gate.run_gate(path, genai, thresholds=thresholds)
            _lap(
                timings,
                "validate",
                start,
                events,
                f"top-1 {report['top1Agreement']}, perplexity ratio "
                f"{report['perplexity']['ratio']}, greedy {report['greedy']['agreement']}",
            )
            start = time.perf_counter()
            manifest = artifact.Manifest(
                digest=digest,
                name=folders.source_name(request.source),
                source=artifact.SourceInfo(
                    uri=request.source,
                    sha256=source.sha256,
                    format=Format.HF_CAUSAL_LM.value,
                    sizeBytes=source.size_bytes,
                ),
                inputs=[],
                outputs=[],
                originalSizeBytes=_weights_bytes(path),
                sizeBytes=_tree_bytes(genai),
                settings=settings,
                validation=report,
                versions=versions,
                timings=timings,
                createdAt=datetime.now(UTC).isoformat(timespec="seconds"),
                kind=artifact.KIND_LLM,
                llm=_facts(config, arch, genai, options, source.files),
                precision=precision,
            )
            (staging / artifact.MANIFEST_FILE).write_text(manifest.to_json())
            store.finish_files(staging)
            _lap(timings, "write", start, events, str(final))
            published = store.publish(staging, request.store, digest)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    store.point_ref(request.store, request.ref, digest)
    return Outcome(manifest=artifact.read_manifest(published), path=published, cached=False)


def _lap(timings: dict[str, float], name: str, start: float, events: Events, detail: str) -> None:
    seconds = time.perf_counter() - start
    timings[name] = round(seconds, 3)
    events.stage(name, seconds, detail)


def _versions(genai_version: str) -> dict[str, str]:
    versions = {"ondeck": __version__, "pipeline": PIPELINE_VERSION}
    for package in _VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    versions["onnxruntime-genai"] = genai_version
    return versions


def _valid(final: Path, digest: str) -> artifact.Manifest | None:
    """The manifest of a complete LLM artifact for `digest`, else None."""
    if not artifact.is_complete(final) or not artifact.is_llm(final):
        return None
    manifest = artifact.read_manifest(final)
    if manifest.digest != digest:
        return None
    return manifest if _tree_bytes(final / artifact.GENAI_DIR) == manifest.size_bytes else None


def _facts(
    config: dict[str, Any], arch: str, genai: Path, options: dict[str, Any], files: dict[str, str]
) -> dict[str, Any]:
    import json

    genai_config = json.loads((genai / "genai_config.json").read_text())
    model = genai_config.get("model", {})
    decoder = model.get("decoder", {})
    return {
        "architecture": arch,
        "modelType": config.get("model_type"),
        "contextLength": model.get("context_length"),
        "vocabSize": model.get("vocab_size"),
        "numLayers": decoder.get("num_hidden_layers"),
        "numKeyValueHeads": decoder.get("num_key_value_heads"),
        "headSize": decoder.get("head_size"),
        # The KV cache's element type is the builder's past_key_values inputs' type (fp32
        # for CPU models, int4 included: only the weights are 4-bit).
        "kvBytesPerElement": onnx_tools.input_element_bytes(
            genai / artifact.MODEL_FILE, "past_key_values."
        ),
        "chatTemplate": (genai / "chat_template.jinja").is_file(),
        "builder": options,
        "sourceFiles": files,
        "files": {p.name: p.stat().st_size for p in sorted(genai.iterdir()) if p.is_file()},
    }


def _weights_bytes(path: Path) -> int:
    weights = [p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()]
    return sum(p.stat().st_size for p in weights) or _tree_bytes(path)


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
