"""The documentation builds with `mkdocs build --strict`: a broken link, a missing nav
page or an unknown anchor fails this test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _nav_pages(nav: list[object]) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        if isinstance(entry, str):
            pages.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages.extend(_nav_pages(value) if isinstance(value, list) else [str(value)])
    return pages


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("needs mkdocs: pip install -e '.[dev]'")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_nav_lists_only_existing_pages() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    missing = [p for p in _nav_pages(config["nav"]) if not (ROOT / "docs" / p).is_file()]
    assert missing == []


def test_readme_links_point_at_files() -> None:
    import re

    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "README links into docs/"
    broken = [t for t in local if not (ROOT / t).exists()]
    assert broken == []


def test_security_rbac_table_matches_the_operator_rules() -> None:
    """docs/security.md lists exactly the rules the chart grants the operator."""
    rules_file = ROOT / "charts" / "ondeck" / "files" / "operator-rules.yaml"
    if not rules_file.is_file():
        pytest.skip(f"needs {rules_file.relative_to(ROOT)} (the operator's RBAC rules)")
    granted = {
        (group, resource, verb)
        for rule in yaml.safe_load(rules_file.read_text())["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## RBAC", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("API groups", "---"):
            continue
        groups = ["" if g.strip() == "core" else g.strip(" `") for g in cells[0].split(",")]
        resources = [r.strip(" `") for r in cells[1].split(",")]
        verbs = [v.strip() for v in cells[2].split(",")]
        documented |= {(g, r, v) for g in groups for r in resources for v in verbs}
    assert documented == granted
