"""The artifact digest: a sha256 over everything that determines the artifact's bytes
and its acceptance - the fetched bytes' sha256 (and those of external data and
calibration files), the format, the declared inputs, the optimize/quantize/validation
settings and the converter versions. The same digest means the same artifact, so a
present, valid `<store>/<digest>` lets a rerun skip all work.

Pure functions (versions are read from package metadata, nothing is imported).
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from typing import Any

from ondeck_server import __version__
from ondeck_server.convert.formats import Format

# Bump when a change to the pipeline changes the artifacts it writes.
PIPELINE_VERSION = "1"

_COMMON = ("onnx", "onnxruntime", "onnxconverter-common", "numpy")
_PER_FORMAT = {
    Format.ONNX: (),
    Format.PYTORCH: ("torch",),
    Format.SKLEARN: ("scikit-learn", "skl2onnx", "skops"),
}


def converter_versions(fmt: Format) -> dict[str, str]:
    versions = {"ondeck": __version__, "pipeline": PIPELINE_VERSION}
    for package in (*_COMMON, *_PER_FORMAT[fmt]):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def compute_digest(
    *,
    source_sha256: str,
    extra_sha256: dict[str, str],
    fmt: Format,
    settings: dict[str, Any],
    versions: dict[str, str],
) -> str:
    identity = {
        "source": source_sha256,
        "extra": dict(sorted(extra_sha256.items())),
        "format": fmt.value,
        "settings": settings,
        "versions": versions,
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
