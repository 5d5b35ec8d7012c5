"""scripts/e2e-kind.sh, checked without Docker (no engine runs here, so it cannot run whole).

shellcheck must pass; the script must refuse to start, with one readable line, when a
tool is missing; and every piece it feeds a cluster is checked for real: the Python that
writes the test model runs and the model answers the script's V2 request in ONNX
Runtime, the ModelDeployment it applies passes the API types and the generated CRD
schema, the file-server Deployment passes strict Kubernetes validation and Pod Security
"restricted", and the chart accepts the script's `helm install --set` flags.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Render

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "e2e-kind.sh"
TEXT = SCRIPT.read_text()
VARIABLES = {
    "tag": "e2e",
    "model": "e2e-linear",
    "model_ns": "ondeck-e2e",
    "sha256": "0" * 64,
}


def _heredoc(opener: str, terminator: str, index: int = 0) -> str:
    """The body of the `index`-th heredoc opened by `opener` (e.g. `<<'PY'`)."""
    bodies = re.findall(rf"{re.escape(opener)}\n(.*?)\n{terminator}\n", TEXT, flags=re.S)
    return str(bodies[index])


def _expand(body: str) -> str:
    return re.sub(r"\$(\w+)", lambda m: VARIABLES[m.group(1)], body)


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("needs shellcheck: apt-get install shellcheck (bash scripts/setup.sh --dev)")
    done = subprocess.run(
        [shellcheck, "--external-sources", "--severity=style", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def test_header_says_ci_cannot_run_it() -> None:
    header = TEXT.split("set -euo pipefail", 1)[0]
    assert "CI cannot run this script" in header
    assert "no Docker engine" in header


def test_refuses_to_start_without_its_tools(tmp_path: Path) -> None:
    # A PATH holding only bash's basics: docker, kind, kubectl and helm are all missing.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "cat", "sed", "printf"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": str(bin_dir)},
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"[e2e-kind] error: docker is not installed (see the header of {SCRIPT})"
    ]


def test_unknown_argument_is_refused() -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "[e2e-kind] error: unknown argument: --fast (see --help)"


def test_test_model_answers_the_scripts_request(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    model = tmp_path / "model.onnx"
    subprocess.run(
        [sys.executable, "-", str(model)],
        input=_heredoc("<<'PY'", "PY"),
        text=True,
        timeout=120,
        check=True,
    )
    (payload,) = re.findall(r"-d '(\{\"inputs\".*?)'\)", TEXT)
    request = json.loads(payload)["inputs"][0]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == request["name"]
    assert request["datatype"] == "FP32"
    data = np.array(request["data"], dtype=np.float32).reshape(request["shape"])
    (output,) = session.run(None, {request["name"]: data})
    assert output.shape == (1, 3)


def _applied(index: int) -> list[dict[str, Any]]:
    body = _expand(_heredoc("apply -f - <<EOF", "EOF", index))
    return [doc for doc in yaml.safe_load_all(body) if doc]


def test_model_deployment_passes_the_api_types_and_the_crd_schema() -> None:
    import jsonschema

    from ondeck_operator.api.spec import ModelDeployment
    from ondeck_operator.codegen.crd import validation_schema

    (manifest,) = _applied(1)
    jsonschema.validate(manifest, validation_schema())
    md = ModelDeployment.from_manifest(manifest)
    assert md.metadata.name == VARIABLES["model"]
    assert md.spec.model.uri == "http://model-files.ondeck-e2e.svc:8000/model.onnx"
    assert "/v2/models/$model/infer" in TEXT
    assert 'wait "modeldeployment/$model" --for=condition=Ready' in TEXT


def test_file_server_is_valid_and_restricted() -> None:
    import kubernetes_validate

    deployment, service = _applied(0)
    for obj in (deployment, service):
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_chart_accepts_the_scripts_install_flags(render: Render) -> None:
    install = TEXT.split("helm install ondeck charts/ondeck", 1)[1].split("--wait", 1)[0]
    sets = [_expand(s).strip('"') for s in re.findall(r"--set (\S+)", install)]
    sets = [s.replace('"', "") for s in sets]
    assert len(sets) == 7
    objects = render(sets=sets, namespace="ondeck-system")
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ondeck-operator:e2e"
    assert container["imagePullPolicy"] == "Never"
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["serverImage"] == "ondeck-server:e2e"
    assert config["converterImage"] == "ondeck-server:e2e"  # the model is ONNX
    assert config["imagePullPolicy"] == "Never"
