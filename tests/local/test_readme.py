"""README's first command is what a new user runs on a fresh clone: it must stay exactly
as documented, and `ondeck run` on the iris example must work with only what
`scripts/setup.sh` (no --dev) installs — checked by running it with the packages of the
other extras (operator: kopf, kubernetes; pytorch; the MiniLM stack) made unimportable."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from .runner import OndeckRun, free_port

ROOT = Path(__file__).resolve().parents[2]
FIRST_COMMAND = (
    "bash scripts/setup.sh && .venv/bin/ondeck run -f examples/iris/modeldeployment.yaml"
)
NOT_INSTALLED_BY_SETUP = ("kopf", "kubernetes", "torch", "transformers", "sentence_transformers")

BLOCKER = """
import sys
from importlib.abc import MetaPathFinder

BLOCKED = {blocked!r}


class _Blocker(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            message = f"No module named {{name!r}} (blocked by the test)"
            raise ModuleNotFoundError(message, name=name)
        return None


sys.meta_path.insert(0, _Blocker())
"""


def test_readme_first_command_is_unchanged() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line and not line.startswith("#")]
    assert commands[0] == FIRST_COMMAND


def test_setup_without_dev_installs_server_and_sklearn_extras() -> None:
    script = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'pip install -q -e ".[server,sklearn]"' in script


def test_iris_runs_without_the_operator_and_pytorch_extras(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(NOT_INSTALLED_BY_SETUP)))
    probe = subprocess.run(
        [sys.executable, "-c", "import kopf"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "blocked by the test" in probe.stderr  # the blocker works
    args = ["-f", str(ROOT / "examples/iris/modeldeployment.yaml"), "--store", str(tmp_path / "s")]
    run = OndeckRun([*args, "--port", str(free_port())], env={"PYTHONPATH": str(site)})
    try:
        run.wait_banner()
        response = run.send("V1")
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] in (0, 1, 2)
    finally:
        assert run.stop(signal.SIGINT) == 0
    assert not any("blocked by the test" in line for line in run.err)


def test_readme_tour_names_the_crd_printer_columns() -> None:
    """The tour's `kubectl get md` comment shows what kubectl prints: the CRD's columns."""
    import yaml

    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^kubectl get md\s+# (.+)$", readme, re.MULTILINE)
    assert match, "README's tour lost its `kubectl get md` line"
    crd = yaml.safe_load((ROOT / "crds" / "modeldeployments.ondeck.io.yaml").read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    columns = ["NAME"] + [c["name"].upper() for c in served["additionalPrinterColumns"]]
    assert match.group(1).split() == columns
