"""Which kind of model file is this? Format inference from the file's bytes.

Zip archives are told apart by their members (skops: `schema.json`; TorchScript:
`<name>/code/`; `torch.export`: `<name>/archive_format`; a plain `torch.save` pickle:
`<name>/data.pkl` only, a state_dict when its pickle names no class beyond tensors and
dicts), pickles by their first opcode, ONNX by parsing the protobuf. This module only
reads the file (pickle opcodes are listed, never executed); it converts nothing.
"""

from __future__ import annotations

import pickletools
import zipfile
from enum import StrEnum
from pathlib import Path

from ondeck_server.convert.errors import UnsupportedFormat


class Format(StrEnum):
    """The `--format` values (the framework a model comes from)."""

    ONNX = "onnx"
    PYTORCH = "pytorch"
    SKLEARN = "sklearn"
    HF_CAUSAL_LM = "hf-causal-lm"
    """A Hugging Face causal-LM folder (convert/llm); never a single file."""


class SourceKind(StrEnum):
    """The file kind within a format: what loader to use."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch-export"
    SKOPS = "skops"
    PICKLE = "pickle"

    @property
    def framework(self) -> Format:
        return _FORMAT_OF[self]


_FORMAT_OF = {
    SourceKind.ONNX: Format.ONNX,
    SourceKind.TORCHSCRIPT: Format.PYTORCH,
    SourceKind.TORCH_EXPORT: Format.PYTORCH,
    SourceKind.SKOPS: Format.SKLEARN,
    SourceKind.PICKLE: Format.SKLEARN,
}
_PICKLE_EXT = {".pkl", ".pickle", ".joblib"}
_TORCH_EXT = {".pt", ".pth", ".pt2", ".torchscript", ".ts"}
# joblib's compressors: zlib, gzip, bz2, lzma/xz.
_COMPRESSED = (b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00\x00")
# What a `torch.save` of weights only (a state_dict, or a checkpoint dict holding some)
# names in its pickle: containers and tensor rebuilders, no module class.
_WEIGHTS_ONLY_MODULES = ("collections", "torch", "torch._utils", "builtins", "__builtin__")
# A state_dict's pickle holds names and tensor references only (the tensors are other
# members): a bigger one is not read.
_MAX_PICKLE_SCAN = 64 * 2**20
_SAVE_AS = (
    "torch.export.save(torch.export.export(model, example_args), 'model.pt2') or "
    "torch.jit.save(torch.jit.script(model), 'model.pt')"
)
_HELP = (
    "give an ONNX model (.onnx), a TorchScript (torch.jit.save) or torch.export (.pt2) "
    "file, or a scikit-learn model saved with skops (.skops) or joblib/pickle"
)


def infer_kind(
    path: Path, *, declared: Format | None = None, name: str | None = None
) -> SourceKind:
    """The kind of model in `path`; `name` is the original file name (for its suffix).

    Raises UnsupportedFormat when the file is none of the known kinds, or a different
    format than `declared`.
    """
    suffix = Path(name or path.name).suffix.lower()
    detected = _detect(path, suffix)
    if detected is None:
        if declared is not None and _looks_like(declared, suffix):
            # The user said what it is and the name agrees: let the loader report the damage.
            return _default_kind(declared, suffix)
        hint = f" (--format {declared.value} was given)" if declared else ""
        raise UnsupportedFormat(
            f"{name or path.name} is not a model file ondeck reads{hint}; {_HELP}"
        )
    if declared is not None and detected.framework is not declared:
        raise UnsupportedFormat(
            f"{name or path.name} is a {detected.framework.value} model ({detected.value}), but "
            f"--format {declared.value} was given; fix spec.model.format or leave it out"
        )
    return detected


def _detect(path: Path, suffix: str) -> SourceKind | None:
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04"):
        return _detect_zip(path)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return SourceKind.PICKLE
    if suffix in _PICKLE_EXT and head.startswith(_COMPRESSED):
        return SourceKind.PICKLE
    if suffix == ".onnx" or _parses_as_onnx(path):
        return SourceKind.ONNX
    return None


def _detect_zip(path: Path) -> SourceKind | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return None
    if "schema.json" in names:
        return SourceKind.SKOPS
    if any(n.endswith("/archive_format") for n in names):
        return SourceKind.TORCH_EXPORT
    if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
        return SourceKind.TORCHSCRIPT
    pickled = [n for n in names if n.endswith("/data.pkl")]
    if pickled:
        if _weights_only(path, pickled[0]):
            raise UnsupportedFormat(
                f"{path.name} is a torch.save of a state_dict: weights only, without the "
                "model's architecture, so there is nothing to run; load it into your model "
                f"(model.load_state_dict(...)) and save the whole model with {_SAVE_AS}"
            )
        raise UnsupportedFormat(
            f"{path.name} is a torch.save pickle of a whole Python module, which needs its "
            f"source code to load (and runs code when loaded); save the model with {_SAVE_AS}"
        )
    return None


def _weights_only(path: Path, member: str) -> bool:
    """True when the pickle `member` names only containers and tensors (a state_dict)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo(member).file_size > _MAX_PICKLE_SCAN:
                return False
            data = archive.read(member)
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError):
        return False
    # Protocol 4's STACK_GLOBAL takes its names from the stack: such a pickle counts as
    # a module (torch.save writes protocol 2, whose GLOBAL carries them).
    if any(name == "STACK_GLOBAL" for name, _ in ops):
        return False
    modules = {str(arg).split(" ", 1)[0] for name, arg in ops if name == "GLOBAL"}
    return bool(modules) and modules <= set(_WEIGHTS_ONLY_MODULES)


def _parses_as_onnx(path: Path) -> bool:
    import onnx
    from google.protobuf.message import DecodeError

    if path.stat().st_size > 2**31 - 1:
        return False
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError):
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def _looks_like(fmt: Format, suffix: str) -> bool:
    if fmt is Format.ONNX:
        return suffix == ".onnx"
    if fmt is Format.PYTORCH:
        return suffix in _TORCH_EXT
    return suffix in _PICKLE_EXT or suffix == ".skops"


def _default_kind(fmt: Format, suffix: str) -> SourceKind:
    if fmt is Format.ONNX:
        return SourceKind.ONNX
    if fmt is Format.PYTORCH:
        return SourceKind.TORCH_EXPORT if suffix == ".pt2" else SourceKind.TORCHSCRIPT
    return SourceKind.SKOPS if suffix == ".skops" else SourceKind.PICKLE
