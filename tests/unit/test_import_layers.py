"""The import-linter contracts in .importlinter hold: the operator and the server never
import each other, each half's layers (docs/architecture.md) point one way, the pure core
imports no kopf, kubernetes or aiohttp, and the model server imports no converter.
import-linter is a dev dependency: without it this test fails, it never skips."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint_imports() -> Path:
    exe = Path(sys.executable).with_name("lint-imports")
    if exe.exists():
        return exe
    found = shutil.which("lint-imports")
    assert found is not None, "lint-imports is missing: pip install -e '.[dev]' (import-linter)"
    return Path(found)


def test_import_contracts_are_kept() -> None:
    proc = subprocess.run(
        [str(_lint_imports()), "--no-cache", "--config", str(ROOT / ".importlinter")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
