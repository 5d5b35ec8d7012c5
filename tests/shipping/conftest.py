"""Fixtures of the shipping tests: the real helm binary and a chart renderer."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s_tools import helm_path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ondeck"
#: values files the chart is linted and rendered with, by name.
VALUE_SETS: dict[str, list[Path]] = {
    "default": [],
    "namespaced": [CHART / "ci" / "namespaced-values.yaml"],
    "all-features": [CHART / "ci" / "all-features-values.yaml"],
}
MONITORING_API = "monitoring.coreos.com/v1"

Helm = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm() -> Helm:
    """Run the real helm binary; returns the finished process (never raises on failure)."""
    binary = str(helm_path())

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    return run


def value_args(values: Sequence[Path] = (), sets: Sequence[str] = ()) -> list[str]:
    args: list[str] = []
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


@pytest.fixture(scope="session")
def render(helm: Helm) -> Render:
    """`helm template` → the rendered objects (fails the test on a render error)."""

    def run(
        values: Sequence[Path] = (),
        *,
        sets: Sequence[str] = (),
        api_versions: Sequence[str] = (),
        namespace: str = "ondeck-system",
        include_crds: bool = False,
    ) -> list[dict[str, Any]]:
        args = ["template", "ondeck", str(CHART), "--namespace", namespace]
        args += value_args(values, sets)
        for api in api_versions:
            args += ["--api-versions", api]
        if include_crds:
            args.append("--include-crds")
        done = helm(*args)
        assert done.returncode == 0, done.stderr
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    return run
