"""`helm install` of charts/ondeck into the real control plane (kube-apiserver with RBAC and
Pod Security admission, kube-controller-manager), with the real helm binary.

- The chart installs into a namespace that enforces Pod Security "restricted": the
  Deployment controller's ReplicaSet creates both operator pods (admission accepts them)
  and records no FailedCreate event. A control install whose pods break the profile is
  refused in the same namespace, so the check can fail.
- The operator's ServiceAccount gets exactly what it needs (asked of the API server with
  SubjectAccessReviews): ModelDeployment status yes, Secrets no; in namespaced mode only
  in the watched namespace.
- `helm uninstall` leaves nothing behind but the CRDs.
- `ondeck operator`, run with the installed Deployment's environment, ConfigMap and
  ServiceAccount token (namespaced mode: only the chart's Roles authorize it), takes a
  ModelDeployment to Ready with the chart's server image and storage class.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from controlplane import ControlPlane, free_port
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from k8s_tools import helm_path

pytestmark = pytest.mark.e2e

CHART = Path(__file__).resolve().parents[2] / "charts" / "ondeck"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
T = TypeVar("T")


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Helm:
    """The real helm binary against the test control plane, with its own state folders."""

    def __init__(self, kubeconfig: Path, home: Path) -> None:
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm_path()), *args],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env=self.env,
        )


@pytest.fixture
def helm(control_plane: ControlPlane, tmp_path: Path) -> Helm:
    return Helm(control_plane.admin_kubeconfig, tmp_path / "helm")


@pytest.fixture
def restricted_namespace(admin_api: Any) -> Iterator[str]:
    core = client.CoreV1Api(admin_api)
    name = f"ondeck-{uuid.uuid4().hex[:8]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=RESTRICTED))
    )
    try:
        yield name
    finally:
        core.delete_namespace(name)


def _install_args(release: str, namespace: str, *sets: str) -> list[str]:
    args = ["install", release, str(CHART), "--namespace", namespace]
    # A unique peering name: other tests may hold a ClusterKopfPeering of their own.
    for item in (f"operator.peering.name={release}", *sets):
        args += ["--set", item]
    return args


def _pods(core: client.CoreV1Api, namespace: str, release: str) -> list[Any]:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    return list(core.list_namespaced_pod(namespace, label_selector=selector).items)


def _failed_creates(core: client.CoreV1Api, namespace: str) -> list[str]:
    events = core.list_namespaced_event(namespace, field_selector="reason=FailedCreate").items
    return [str(e.message) for e in events]


def _can(admin_api: Any, *, user: str, verb: str, resource: str, namespace: str = "",
         group: str = "", subresource: str = "") -> bool:  # fmt: skip
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                resource=resource,
                group=group,
                namespace=namespace or None,
                subresource=subresource or None,
            ),
        )
    )
    result: Any = client.AuthorizationV1Api(admin_api).create_subject_access_review(review)
    return bool(result.status.allowed)


def _leftovers(admin_api: Any, namespace: str, release: str) -> list[str]:
    """Every object of the release still in the API (by the chart's instance label)."""
    core, apps = client.CoreV1Api(admin_api), client.AppsV1Api(admin_api)
    rbac, policy = client.RbacAuthorizationV1Api(admin_api), client.PolicyV1Api(admin_api)
    custom = client.CustomObjectsApi(admin_api)
    found: list[str] = []
    listings: list[tuple[str, Callable[..., Any]]] = [
        ("Deployment", lambda: apps.list_namespaced_deployment(namespace)),
        ("ReplicaSet", lambda: apps.list_namespaced_replica_set(namespace)),
        ("Pod", lambda: core.list_namespaced_pod(namespace)),
        ("ConfigMap", lambda: core.list_namespaced_config_map(namespace)),
        ("ServiceAccount", lambda: core.list_namespaced_service_account(namespace)),
        ("PodDisruptionBudget", lambda: policy.list_namespaced_pod_disruption_budget(namespace)),
        ("Role", lambda: rbac.list_role_for_all_namespaces()),
        ("RoleBinding", lambda: rbac.list_role_binding_for_all_namespaces()),
        ("ClusterRole", lambda: rbac.list_cluster_role()),
        ("ClusterRoleBinding", lambda: rbac.list_cluster_role_binding()),
    ]
    for kind, listing in listings:
        for item in listing().items:
            labels = item.metadata.labels or {}
            owned = labels.get("app.kubernetes.io/instance") == release
            if owned or release in item.metadata.name:
                found.append(f"{kind} {item.metadata.namespace or ''}/{item.metadata.name}")
    peerings: Any = custom.list_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings")
    found += [
        f"ClusterKopfPeering {p['metadata']['name']}"
        for p in peerings["items"]
        if p["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == release
    ]
    peerings = custom.list_cluster_custom_object("kopf.dev", "v1", "kopfpeerings")
    found += [
        f"KopfPeering {p['metadata']['namespace']}/{p['metadata']['name']}"
        for p in peerings["items"]
        if p["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == release
    ]
    return found


def _crds(admin_api: Any) -> set[str]:
    crds: Any = client.ApiextensionsV1Api(admin_api).list_custom_resource_definition()
    return {str(c.metadata.name) for c in crds.items}


def test_install_in_a_restricted_namespace_then_uninstall(
    admin_api: Any, helm: Helm, restricted_namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    namespace = restricted_namespace
    release = f"ondeck-{uuid.uuid4().hex[:6]}"

    done = helm(*_install_args(release, namespace))
    assert done.returncode == 0, done.stderr
    assert "watches ModelDeployments in every namespace" in done.stdout  # NOTES

    assert {"modeldeployments.ondeck.io", "clusterkopfpeerings.kopf.dev"} <= _crds(admin_api)
    pods = _wait_for("both operator pods", lambda: len(_pods(core, namespace, release)) == 2)
    assert pods
    for pod in _pods(core, namespace, release):
        assert pod.spec.security_context.run_as_non_root is True
        assert pod.spec.service_account_name == release
    assert _failed_creates(core, namespace) == []

    account = f"system:serviceaccount:{namespace}:{release}"
    assert _can(admin_api, user=account, verb="patch", resource="modeldeployments",
                group="ondeck.io", subresource="status", namespace="anywhere")  # fmt: skip
    assert _can(admin_api, user=account, verb="create", resource="jobs", group="batch",
                namespace="anywhere")  # fmt: skip
    assert _can(admin_api, user=account, verb="patch", resource="clusterkopfpeerings",
                group="kopf.dev")  # fmt: skip
    assert not _can(admin_api, user=account, verb="get", resource="secrets", namespace=namespace)
    assert not _can(admin_api, user=account, verb="delete", resource="modeldeployments",
                    group="ondeck.io", namespace="anywhere")  # fmt: skip

    done = helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "90s")
    assert done.returncode == 0, done.stderr
    # The garbage collector removes the ReplicaSet and pods after Helm deleted the Deployment.
    _wait_for("nothing of the release left", lambda: not _leftovers(admin_api, namespace, release))
    assert {"modeldeployments.ondeck.io", "kopfpeerings.kopf.dev"} <= _crds(admin_api)
    status = helm("status", release, "--namespace", namespace)
    assert status.returncode != 0
    assert "release: not found" in status.stderr


def test_pods_that_break_the_profile_are_refused(
    admin_api: Any, helm: Helm, restricted_namespace: str
) -> None:
    """The control case: the same namespace refuses a pod without a seccomp profile."""
    core = client.CoreV1Api(admin_api)
    release = f"ondeck-{uuid.uuid4().hex[:6]}"
    done = helm(
        *_install_args(release, restricted_namespace, "podSecurityContext.seccompProfile=null")
    )
    assert done.returncode == 0, done.stderr
    messages = _wait_for(
        "a FailedCreate event", lambda: _failed_creates(core, restricted_namespace)
    )
    assert any('violates PodSecurity "restricted:latest"' in m for m in messages), messages
    assert _pods(core, restricted_namespace, release) == []
    assert helm("uninstall", release, "--namespace", restricted_namespace).returncode == 0


def test_namespaced_mode_grants_only_the_watched_namespace(
    admin_api: Any, helm: Helm, restricted_namespace: str, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    release = f"ondeck-{uuid.uuid4().hex[:6]}"
    done = helm(*_install_args(release, restricted_namespace, f"watch.namespaces={{{namespace}}}"))
    assert done.returncode == 0, done.stderr
    _wait_for("both operator pods", lambda: len(_pods(core, restricted_namespace, release)) == 2)
    account = f"system:serviceaccount:{restricted_namespace}:{release}"
    assert _can(admin_api, user=account, verb="create", resource="deployments", group="apps",
                namespace=namespace)  # fmt: skip
    assert _can(admin_api, user=account, verb="patch", resource="kopfpeerings", group="kopf.dev",
                namespace=namespace)  # fmt: skip
    assert not _can(admin_api, user=account, verb="create", resource="deployments", group="apps",
                    namespace="default")  # fmt: skip
    assert not _can(admin_api, user=account, verb="patch", resource="clusterkopfpeerings",
                    group="kopf.dev")  # fmt: skip
    custom = client.CustomObjectsApi(admin_api)
    peering: Any = custom.get_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", release
    )
    assert peering["metadata"]["name"] == release
    done = helm("uninstall", release, "--namespace", restricted_namespace, "--wait")
    assert done.returncode == 0, done.stderr
    _wait_for(
        "nothing of the release left",
        lambda: not _leftovers(admin_api, restricted_namespace, release),
    )
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", release)
    assert gone.value.status == 404


def test_operator_runs_on_exactly_what_the_chart_installed(
    control_plane: ControlPlane,
    admin_api: Any,
    helm: Helm,
    restricted_namespace: str,
    namespace: str,
    job_outcomes: dict[Any, Any],
    kubelet: Any,
    tmp_path: Path,
) -> None:
    """Namespaced mode end to end: `ondeck operator` runs with the installed Deployment's
    environment, the installed ConfigMap and the installed ServiceAccount's token (so only
    the chart's Roles authorize it), and takes a ModelDeployment to Ready."""
    from kubelet_sim import JobOutcome
    from operator_harness import Cluster, manifest, summary

    from ondeck_operator.api.spec import ModelDeployment
    from ondeck_operator.render.args import artifact_key

    release = f"ondeck-{uuid.uuid4().hex[:6]}"
    done = helm(
        *_install_args(
            release,
            restricted_namespace,
            f"watch.namespaces={{{namespace}}}",
            "config.serverImage.repository=registry.example.com/ml/ondeck-server",
            "config.serverImage.tag=9.9.9",
            "config.converterImage.repository=registry.example.com/ml/ondeck-converter",
            "config.converterImage.tag=9.9.9",
            "config.artifactStorageClass=fast-ssd",
            "operator.logLevel=debug",
        )
    )
    assert done.returncode == 0, done.stderr
    installed = helm("get", "manifest", release, "--namespace", restricted_namespace)
    assert installed.returncode == 0, installed.stderr
    (deployment,) = [
        d for d in yaml.safe_load_all(installed.stdout) if d and d["kind"] == "Deployment"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    config_map: Any = client.CoreV1Api(admin_api).read_namespaced_config_map(
        release, restricted_namespace
    )
    config = tmp_path / "config.yaml"
    config.write_text(config_map.data["config.yaml"])

    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    for item in container["env"]:
        env[item["name"]] = item.get("value") or f"{release}-7d4b9c-x2x9q"  # downward API
    health_port = free_port()
    env |= {
        # Only what differs between a pod and a process on this machine.
        "ONDECK_CONFIG": str(config),
        "ONDECK_HEALTH_PORT": str(health_port),
        "ONDECK_METRICS_PORT": str(free_port()),
        "ONDECK_BIND": "127.0.0.1",
        "KUBECONFIG": str(
            control_plane.service_account_kubeconfig(
                tmp_path / "sa.kubeconfig", namespace=restricted_namespace, name=release
            )
        ),
    }
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ondeck_operator", *container["args"]],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                url = f"http://127.0.0.1:{health_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        _wait_for("the operator's /readyz", ready)
        cluster = Cluster(admin_api, namespace)
        md = cluster.create(manifest("iris"))
        key = artifact_key(ModelDeployment.from_manifest(md).spec)
        job_outcomes[(namespace, key)] = JobOutcome.success(summary(key))
        try:
            cluster.wait_ready("iris", timeout=60)
        except AssertionError:
            raise AssertionError(log.read_text()[-4000:]) from None
        (job,) = cluster.jobs("iris")
        assert job.spec.template.spec.containers[0].image == (
            "registry.example.com/ml/ondeck-converter:9.9.9"
        )
        claims: Any = client.CoreV1Api(admin_api).list_namespaced_persistent_volume_claim(namespace)
        (claim,) = claims.items
        assert claim.spec.storage_class_name == "fast-ssd"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    done = helm("uninstall", release, "--namespace", restricted_namespace, "--wait")
    assert done.returncode == 0, done.stderr


def test_documented_upgrade_path(
    control_plane: ControlPlane, admin_api: Any, helm: Helm, restricted_namespace: str,
    namespace: str,
) -> None:  # fmt: skip
    """docs/install.md's upgrade: CRDs by server-side apply, then `helm upgrade
    --reuse-values`; a config change rolls the operator, a mode change swaps the RBAC."""
    from k8s_tools import kubectl_path

    apps, rbac = client.AppsV1Api(admin_api), client.RbacAuthorizationV1Api(admin_api)
    custom = client.CustomObjectsApi(admin_api)
    release = f"ondeck-{uuid.uuid4().hex[:6]}"
    ns = restricted_namespace
    assert helm(*_install_args(release, ns)).returncode == 0

    def checksum() -> str:
        deployment: Any = apps.read_namespaced_deployment(release, ns)
        return str(deployment.spec.template.metadata.annotations["checksum/config"])

    before = checksum()
    applied = subprocess.run(
        [str(kubectl_path()), "apply", "--server-side", "-f", str(CHART / "crds")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": str(control_plane.admin_kubeconfig)},
    )
    assert applied.returncode == 0, applied.stderr
    assert "modeldeployments.ondeck.io serverside-applied" in applied.stdout

    upgrade = ("upgrade", release, str(CHART), "--namespace", ns, "--reuse-values")
    done = helm(*upgrade, "--set", "config.artifactStorageClass=gold")
    assert done.returncode == 0, done.stderr
    config_map: Any = client.CoreV1Api(admin_api).read_namespaced_config_map(release, ns)
    assert "artifactStorageClass: gold" in config_map.data["config.yaml"]
    assert checksum() != before
    assert rbac.read_cluster_role(f"{release}-{ns}").rules

    done = helm(*upgrade, "--set", f"watch.namespaces={{{namespace}}}")
    assert done.returncode == 0, done.stderr
    assert rbac.read_namespaced_role(release, namespace).rules
    with pytest.raises(ApiException) as gone:
        rbac.read_cluster_role(f"{release}-{ns}")
    assert gone.value.status == 404
    assert custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", release)
    with pytest.raises(ApiException) as gone:
        custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", release)
    assert gone.value.status == 404
    # --reuse-values kept the earlier change.
    config_map = client.CoreV1Api(admin_api).read_namespaced_config_map(release, ns)
    assert "artifactStorageClass: gold" in config_map.data["config.yaml"]

    assert helm("uninstall", release, "--namespace", ns, "--wait").returncode == 0
    _wait_for("nothing of the release left", lambda: not _leftovers(admin_api, ns, release))
