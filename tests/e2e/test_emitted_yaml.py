"""What ondeck emits as YAML goes through the real tools unchanged (issue 15 item 11):
`kubectl apply --dry-run=server`, `kubectl create` and `kubectl get -o yaml` against the
real API server, and `helm template` of the chart, with values that some YAML reader takes
for a number, a bool, a null or a date.

Before the fix, kubectl refused `ondeck render` of examples/minilm (artifact key
`76821728860096e3`), of a model named `y`, and of pod labels such as `1e3`; the chart
printed a release named `y` as `app.kubernetes.io/instance: y`, a bool to kubectl.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane

from k8s_tools import helm_path, kubectl_path
from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.render import yaml_out
from ondeck_operator.render.args import artifact_key

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ondeck"
#: The values of the issue; each is a non-string to PyYAML, YAML 1.2 or Go when plain.
HOSTILE = [
    "y", "n", "1e3", "yes", "0462088682918e86", "76821728860096e3", "0x1F", "1_000", "~",
    "2001-12-14", "1:20", "on", "null", "0o17", ".inf", "017", "-1", "+1", "true", "",
]  # fmt: skip
NAMES = ["y", "n", "1e3", "yes", "0462088682918e86", "76821728860096e3", "on", "017", "true"]
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def kubectl(
    plane: ControlPlane, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(kubectl_path()), "--kubeconfig", str(plane.admin_kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}\n{stdin or ''}"
    return done


def _config_map(name: str, namespace: str) -> dict[str, Any]:
    labels = {f"l{i}": v for i, v in enumerate(HOSTILE) if LABEL_VALUE.fullmatch(v)}
    labels.update({v: "x" for v in HOSTILE if v and LABEL_VALUE.fullmatch(v)})
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {f"a{i}": v for i, v in enumerate(HOSTILE)},
        },
        "data": {
            **{f"d{i}": v for i, v in enumerate(HOSTILE)},
            **{v: v for v in HOSTILE if v and DATA_KEY.fullmatch(v)},
        },
    }


def test_hostile_strings_survive_kubectl_create_and_get(
    control_plane: ControlPlane, namespace: str
) -> None:
    sent = [_config_map(name, namespace) for name in NAMES]
    text = yaml_out.dump_all(sent)
    kubectl(control_plane, "apply", "--dry-run=server", "-f", "-", stdin=text)
    kubectl(control_plane, "create", "-f", "-", stdin=text)
    for obj in sent:
        got = yaml.safe_load(
            kubectl(
                control_plane, "get", "configmap", obj["metadata"]["name"], "-n", namespace,
                "-o", "yaml",
            ).stdout
        )  # fmt: skip
        assert got["metadata"]["name"] == obj["metadata"]["name"]
        assert got["metadata"]["labels"] == obj["metadata"]["labels"]
        assert got["metadata"]["annotations"] == obj["metadata"]["annotations"]
        assert got["data"] == obj["data"]
    # The check can fail: PyYAML's own output of the same objects is refused by kubectl.
    refused = kubectl(
        control_plane, "apply", "--dry-run=server", "-f", "-",
        stdin=yaml.safe_dump(_config_map("y", namespace)), check=False,
    )  # fmt: skip
    assert refused.returncode != 0


def _float_like_key_uri() -> str:
    for i in range(100_000):
        uri = f"s3://models/m{i}.onnx"
        spec = {"model": {"uri": uri}}
        md = ModelDeployment.from_manifest(
            {"apiVersion": "ondeck.io/v1alpha1", "kind": "ModelDeployment",
             "metadata": {"name": "m"}, "spec": spec}
        )  # fmt: skip
        if re.fullmatch(r"[0-9]+e[0-9]+", artifact_key(md.spec)):
            return uri
    raise AssertionError("no float-like artifact key in 100 000 URIs")


def _model_deployment(name: str, namespace: str, uri: str) -> dict[str, Any]:
    labels = {"a": "1e3", "b": "yes", "c": "0x1F", "d": "1_000", "e": "2001-12-14", "f": "n"}
    annotations = {
        "y": "~", "1e3": "1:20", "0462088682918e86": "", "yes": "0o17", "a.io/on": "2001-12-14",
        "n": ".inf", "off": "null",
    }  # fmt: skip
    return {
        "apiVersion": "ondeck.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": "0o17"}},
        "spec": {
            "model": {"uri": uri, "format": "onnx"},
            "server": {"podLabels": labels, "podAnnotations": annotations, "replicas": 2},
            "service": {"annotations": annotations},
            "ingress": {"host": f"{name}.example.com", "annotations": annotations},
        },
    }


@pytest.mark.parametrize("name", ["y", "n", "yes", "minilm", "examples-minilm"])
def test_ondeck_render_output_is_applied_unchanged(
    control_plane: ControlPlane, crds: None, namespace: str, tmp_path: Path, name: str
) -> None:
    if name == "examples-minilm":
        example = yaml.safe_load((ROOT / "examples/minilm/modeldeployment.yaml").read_text())
        example["metadata"]["namespace"] = namespace
        doc = example
        name = example["metadata"]["name"]
    else:
        uri = _float_like_key_uri() if name == "minilm" else "s3://models/m.onnx"
        doc = _model_deployment(name, namespace, uri)
    # The ModelDeployment itself, as ondeck's emitter writes it, round-trips.
    kubectl(control_plane, "create", "-f", "-", stdin=yaml_out.dump(doc))
    got = yaml.safe_load(
        kubectl(control_plane, "get", "modeldeployment", name, "-n", namespace, "-o", "yaml").stdout
    )
    assert got["metadata"].get("labels") == doc["metadata"].get("labels")
    for field in ("server", "service", "ingress"):
        for key in ("podLabels", "podAnnotations", "annotations"):
            if key in doc["spec"].get(field, {}):
                assert got["spec"][field][key] == doc["spec"][field][key], (field, key)
    # `ondeck render` of what the API server holds (its uid, its defaults).
    manifest = tmp_path / "md.yaml"
    manifest.write_text(yaml_out.dump(got))
    rendered = subprocess.run(
        [sys.executable, "-m", "ondeck_operator", "render", "-f", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    kubectl(control_plane, "apply", "--dry-run=server", "-f", "-", stdin=rendered.stdout)
    kubectl(control_plane, "create", "-f", "-", stdin=rendered.stdout)
    for obj in yaml.safe_load_all(rendered.stdout):
        kind, obj_name = obj["kind"].lower(), obj["metadata"]["name"]
        back = yaml.safe_load(
            kubectl(control_plane, "get", kind, obj_name, "-n", namespace, "-o", "yaml").stdout
        )
        for part in ("labels", "annotations"):  # the API server may add its own
            sent = obj["metadata"].get(part) or {}
            assert {k: back["metadata"][part][k] for k in sent} == sent, (kind, part)
        template = (obj.get("spec") or {}).get("template")
        if template is not None:  # the API server may add labels (the Job's own)
            got_meta = back["spec"]["template"]["metadata"]
            for part in ("labels", "annotations"):
                sent = template["metadata"].get(part) or {}
                assert {k: got_meta[part][k] for k in sent} == sent, (kind, part)


def test_helm_template_with_hostile_names_and_values_applies(
    control_plane: ControlPlane, crds: None, namespace: str, tmp_path: Path
) -> None:
    values: dict[str, Any] = {
        "fullnameOverride": "0462088682918e86",
        "replicaCount": 2,
        "operator": {"peering": {"enabled": True, "name": "1e3"}},
        "podLabels": {"a": "yes", "b": "1e3", "c": "0x1F", "d": "n"},
        "podAnnotations": {"y": "~", "n": "1:20", "on": "2001-12-14"},
        "serviceAccount": {"annotations": {"off": "0o17"}},
        "priorityClassName": "76821728860096e3",
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml_out.dump(values))
    done = subprocess.run(
        [str(helm_path()), "template", "y", str(CHART), "--namespace", namespace,
         "-f", str(values_file)],
        capture_output=True, text=True, timeout=120, check=False,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # helm's own text, as it is, through kubectl and the API server.
    kubectl(control_plane, "apply", "--dry-run=server", "-f", "-", stdin=done.stdout)
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    meta = deployment["spec"]["template"]["metadata"]
    assert meta["labels"]["app.kubernetes.io/instance"] == "y"
    assert {k: meta["labels"][k] for k in values["podLabels"]} == values["podLabels"]
    assert {k: meta["annotations"][k] for k in values["podAnnotations"]} == values["podAnnotations"]
    assert deployment["spec"]["template"]["spec"]["priorityClassName"] == "76821728860096e3"
    assert deployment["metadata"]["name"] == "0462088682918e86"
