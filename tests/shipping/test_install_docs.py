"""docs/install.md shows what a wrong value prints: each `$ helm install …` transcript in the
page is replayed with the real helm (`--dry-run=client`, nothing reaches a cluster) and
must print exactly the lines the page shows."""

from __future__ import annotations

import re
import shlex

import pytest

from .conftest import ROOT, Helm

PAGE = ROOT / "docs" / "install.md"


def _transcripts() -> list[tuple[list[str], list[str]]]:
    found = []
    for block in re.findall(r"```text\n(.*?)```", PAGE.read_text(), re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, *output = [line for line in chunk.splitlines() if line.strip()]
            found.append((shlex.split(command), output))
    return found


TRANSCRIPTS = _transcripts()


def test_the_page_has_transcripts() -> None:
    assert len(TRANSCRIPTS) >= 2


@pytest.mark.parametrize(("argv", "expected"), TRANSCRIPTS, ids=lambda v: " ".join(v)[:60])
def test_transcript_matches_real_helm(helm: Helm, argv: list[str], expected: list[str]) -> None:
    assert argv[:2] == ["helm", "install"]
    args = [str(ROOT / a) if a == "charts/ondeck" else a for a in argv[2:]]
    done = helm("install", *args, "--dry-run=client")
    assert done.returncode != 0
    printed = [line for line in done.stderr.splitlines() if line.strip()]
    assert printed == expected
