"""What `ondeck --help` and `ondeck --version` show a new user: user commands grouped,
the developer commands apart, help text without the docstrings' line breaks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ondeck_operator import __version__
from ondeck_operator.cli import help_text


def _ondeck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ondeck_operator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "TERM": "dumb"},
    )


def test_version() -> None:
    done = _ondeck("--version")
    assert (done.returncode, done.stdout) == (0, f"ondeck {__version__}\n")


def test_help_groups_commands_and_keeps_developer_commands_apart() -> None:
    done = _ondeck("--help")
    assert done.returncode == 0
    text = done.stdout
    panels = ["On this machine", "Manifests and clusters", "For ondeck's developers"]
    positions = [text.index(p) for p in panels]
    assert positions == sorted(positions)
    developer = text[positions[2] :]
    assert "crd" in developer
    assert "docs-reference" in developer
    users = text[: positions[2]]
    assert " crd " not in users
    assert "docs-reference" not in users
    for command in ("run", "predict", "ls", "inspect", "gc", "validate", "render", "operator"):
        assert f" {command} " in users, command
    # One line per command at 200 columns: the docstrings' line breaks are gone.
    run_line = next(line for line in text.splitlines() if "│ run " in line)
    assert (
        "Run a ModelDeployment on this machine: convert the model like the cluster's Job "
        "does, serve it like the Deployment does, and print how to call it. Ctrl-C stops it."
        in run_line
    )


def test_help_text_joins_paragraph_lines() -> None:
    assert help_text("First line\n    goes on.\n\n    Second\n    paragraph.") == (
        "First line goes on.\n\nSecond paragraph."
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["ondeck", "--help"],
        ["ondeck", "run", "--help"],
        ["ondeck", "gc", "--help"],
        ["ondeck", "validate", "--help"],
        ["ondeck-server", "--help"],
        ["ondeck-server", "serve", "--help"],
        ["ondeck-server", "convert", "--help"],
    ],
)
def test_no_plain_flag_shows_a_value_in_help(argv: list[str]) -> None:
    """Issue 16: `--help <bool>`, `--convert-only <bool>`: a flag takes no value."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--help" in done.stdout
    assert "<bool>" not in done.stdout
    assert "list[" not in done.stdout  # a Python type is no metavar
