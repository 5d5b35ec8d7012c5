"""The documented install of the Argo CD health check (docs/gitops.md) against the real API
server: `kubectl patch --type merge --patch-file argocd-cm-health.yaml` adds health.lua to
an existing argocd-cm ConfigMap verbatim and keeps the keys already there."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane
from kubernetes import client

from k8s_tools import kubectl_path

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KEY = "resource.customizations.health.ondeck.io_ModelDeployment"


def test_documented_patch_installs_the_health_check(
    control_plane: ControlPlane, admin_api: Any, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="argocd-cm"),
            data={"timeout.reconciliation": "180s"},
        ),
    )
    docs = (ROOT / "docs" / "gitops.md").read_text()
    (command,) = re.findall(
        r"```bash\n(kubectl -n argocd patch configmap argocd-cm.*?)\n```", docs, re.S
    )
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:3] == ["kubectl", "-n", "argocd"]
    argv = [str(kubectl_path()), "-n", namespace, *argv[3:]]
    done = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": str(control_plane.admin_kubeconfig)},
    )
    assert done.returncode == 0, done.stderr
    config_map: Any = core.read_namespaced_config_map("argocd-cm", namespace)
    data = config_map.data
    assert data[KEY] == (ROOT / "charts" / "ondeck" / "argocd" / "health.lua").read_text()
    assert data["timeout.reconciliation"] == "180s"
