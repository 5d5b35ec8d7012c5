"""The Argo CD examples next to the health check: the two Applications and the argocd-cm
patch that installs health.lua.

The operator Application's Helm values must pass the chart's values.schema.json and render
with the real helm; the models Application must point at a folder whose every manifest is
a valid ModelDeployment; the sync waves must order the operator first; the argocd-cm patch
must carry health.lua byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .conftest import CHART, ROOT, Render

ARGOCD = CHART / "argocd"
REPO_URL = "https://github.com/ondeck/ondeck.git"


def _load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((ARGOCD / name).read_text())
    assert isinstance(doc, dict)
    return doc


def _wave(app: dict[str, Any]) -> int:
    return int(app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])


def test_health_patch_carries_health_lua_verbatim() -> None:
    patch = _load("argocd-cm-health.yaml")
    (key,) = patch["data"]
    assert key == "resource.customizations.health.ondeck.io_ModelDeployment"
    assert patch["data"][key] == (ARGOCD / "health.lua").read_text()


def test_operator_application_installs_this_chart_with_valid_values(
    render: Render, tmp_path: Path
) -> None:
    app = _load("application-operator.yaml")
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    source = app["spec"]["source"]
    assert source["repoURL"] == REPO_URL
    assert (ROOT / source["path"]) == CHART
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert source["targetRevision"] == f"v{chart['appVersion']}"
    values = source["helm"]["valuesObject"]
    jsonschema.validate(values, json.loads((CHART / "values.schema.json").read_text()))
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    objects = render([values_file])
    assert any(o["kind"] == "Deployment" for o in objects)
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    labels = app["spec"]["syncPolicy"]["managedNamespaceMetadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_models_application_syncs_a_folder_of_valid_model_deployments() -> None:
    from ondeck_operator.api.spec import ModelDeployment
    from ondeck_operator.codegen.crd import validation_schema

    app = _load("application-models.yaml")
    source = app["spec"]["source"]
    assert source["repoURL"] == REPO_URL
    folder = ROOT / source["path"]
    manifests = sorted(folder.rglob(source["directory"]["include"]))
    assert manifests
    for path in manifests:
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            jsonschema.validate(doc, validation_schema())
            md = ModelDeployment.from_manifest(doc)
            assert md.metadata.namespace in (None, app["spec"]["destination"]["namespace"])
    assert "SkipDryRunOnMissingResource=true" in app["spec"]["syncPolicy"]["syncOptions"]


def test_sync_waves_put_the_operator_first() -> None:
    assert _wave(_load("application-operator.yaml")) < _wave(_load("application-models.yaml"))
