"""The import-linter contracts in .importlinter hold: the operator and the server never
import each other, the operator's layers (handlers -> reconcile -> render -> types) point
one way, and the pure core imports neither kopf nor kubernetes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        found = shutil.which("lint-imports")
        if found is None:
            pytest.skip("needs import-linter: pip install import-linter (dev extra)")
        exe = Path(found)
    proc = subprocess.run(
        [str(exe), "--no-cache", "--config", str(ROOT / ".importlinter")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
