"""Helpers of the operator end-to-end tests: CRDs, the operator's RBAC, the operator process.

`install_crds()` applies the generated ModelDeployment CRD and kopf's peering CRDs;
`install_operator_rbac()` creates a ServiceAccount bound (ClusterRole + binding) to exactly
the rules in `charts/ondeck/files/operator-rules.yaml` and returns a kubeconfig with that
ServiceAccount's token, so a permission missing from the rules fails a test.
`OperatorProcess` runs `python -m ondeck_operator operator ...` as a subprocess against
that kubeconfig, and can be stopped (SIGTERM) or killed (SIGKILL) by PID.

Nothing here imports pytest; the benchmark uses it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from controlplane import REPO, ControlPlane, free_port
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.render.args import artifact_key

CRD_FILE = REPO / "crds" / "modeldeployments.ondeck.io.yaml"
PEERING_CRDS = REPO / "charts" / "ondeck" / "files" / "kopf-peering-crds.yaml"
RULES_FILE = REPO / "charts" / "ondeck" / "files" / "operator-rules.yaml"
OPERATOR_NAMESPACE = "ondeck-system"
OPERATOR_ACCOUNT = "ondeck-operator"
GROUP, VERSION, PLURAL = "ondeck.io", "v1alpha1", "modeldeployments"
TIMEOUT = 30.0

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll `probe` every 0.1 s until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except ApiException as exc:
            if exc.status != 404:
                raise
            value, last = None, exc
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last})")


def install_crds(api: client.ApiClient) -> None:
    ext: Any = client.ApiextensionsV1Api(api)
    docs = [yaml.safe_load(CRD_FILE.read_text())]
    docs += [d for d in yaml.safe_load_all(PEERING_CRDS.read_text()) if d]
    for doc in docs:
        try:
            ext.create_custom_resource_definition(doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
    for doc in docs:
        name = doc["metadata"]["name"]

        def established(name: str = name) -> bool:
            crd = ext.read_custom_resource_definition(name)
            return any(
                c.type == "Established" and c.status == "True"
                for c in (crd.status.conditions or [])
            )

        wait_for(f"CRD {name} established", established)


def operator_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load(RULES_FILE.read_text())["rules"]
    return rules


def install_operator_rbac(plane: ControlPlane, api: client.ApiClient, workdir: Path) -> Path:
    """ServiceAccount + ClusterRole (exactly the chart's rules) + binding; its kubeconfig."""
    core: Any = client.CoreV1Api(api)
    rbac: Any = client.RbacAuthorizationV1Api(api)
    with contextlib.suppress(ApiException):
        core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    with contextlib.suppress(ApiException):
        core.create_namespaced_service_account(
            OPERATOR_NAMESPACE, {"metadata": {"name": OPERATOR_ACCOUNT}}
        )
    with contextlib.suppress(ApiException):
        rbac.create_cluster_role(
            {"metadata": {"name": "ondeck-operator"}, "rules": operator_rules()}
        )
    with contextlib.suppress(ApiException):
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": "ondeck-operator"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "ondeck-operator",
                },
                "subjects": [
                    {
                        "kind": "ServiceAccount",
                        "name": OPERATOR_ACCOUNT,
                        "namespace": OPERATOR_NAMESPACE,
                    }
                ],
            }
        )
    kubeconfig: Path = plane.service_account_kubeconfig(
        workdir / "operator.kubeconfig", namespace=OPERATOR_NAMESPACE, name=OPERATOR_ACCOUNT
    )
    return kubeconfig


def summary(key: str, *, digest: str | None = None) -> str:
    """A conversion summary as `ondeck-server convert` writes it to the termination log."""
    digest = digest or hashlib.sha256(key.encode()).hexdigest()
    return json.dumps(
        {
            "digest": digest,
            "path": f"/artifacts/{digest}",
            "ref": key,
            "sizeBytes": 1200,
            "originalSizeBytes": 4800,
            "format": "sklearn",
            "quantize": "int8",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
            "validation": {"samples": 64, "minCosine": 0.999, "top1Disagreement": 0.0},
            "cached": False,
            "kind": "tensor",
            "sourceSizeBytes": 4800,
            "precision": "int8",
            "llm": None,
        },
        separators=(",", ":"),
    )


class OperatorProcess:
    """`ondeck operator` as a subprocess (its own session) with its log in a file."""

    def __init__(
        self,
        *,
        kubeconfig: Path,
        namespaces: list[str],
        workdir: Path,
        name: str = "operator",
        extra: list[str] | None = None,
        config: dict[str, Any] | None = None,
        log_level: str = "debug",
    ) -> None:
        self.health_port, self.metrics_port = free_port(), free_port()
        self.log = workdir / f"{name}.log"
        self.name = name
        config_file = workdir / f"{name}-config.yaml"
        config_file.write_text(yaml.safe_dump(config or {"jobBackoffLimit": 0}))
        self.argv = [
            sys.executable,
            "-m",
            "ondeck_operator",
            "operator",
            "--kubeconfig",
            str(kubeconfig),
            "--namespaces",
            ",".join(namespaces),
            "--config",
            str(config_file),
            "--bind",
            "127.0.0.1",
            "--health-port",
            str(self.health_port),
            "--metrics-port",
            str(self.metrics_port),
            "--pod-name",
            name,
            "--resync-seconds",
            "30",
            "--retry-min-seconds",
            "0.2",
            "--retry-max-seconds",
            "2",
            "--log-level",
            log_level,
            *(extra or []),
        ]
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONDECK_")}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        if wait:
            wait_for(f"{self.name} /readyz", self.ready, timeout=60)
        return self

    def _get(self, port: int, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as rsp:
                return rsp.status, rsp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def ready(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
        try:
            return self._get(self.health_port, "/readyz")[0] == 200
        except OSError:
            return False

    def healthz(self) -> tuple[int, dict[str, Any]]:
        status, body = self._get(self.health_port, "/healthz")
        return status, json.loads(body)

    def metrics(self) -> dict[str, float]:
        """The operator's Prometheus samples: {'name{labels}': value}."""
        _, body = self._get(self.metrics_port, "/metrics")
        samples = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a node dies."""
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def manifest(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "https://models.example.com/iris.onnx", "format": "onnx"},
            **spec,
        },
    }
    return body


class Cluster:
    """Small helpers over the admin client for one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.policy = client.PolicyV1Api(api)
        self.api = api

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        created = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)
        return cast(dict[str, Any], created)

    def md(self, name: str) -> dict[str, Any]:
        got = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return cast(dict[str, Any], got)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec}
        )

    def condition(self, name: str, ctype: str) -> dict[str, Any] | None:
        status = self.md(name).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == ctype), None)

    def jobs(self, name: str) -> list[Any]:
        selector = f"ondeck.io/model-deployment={name}"
        return list(self.batch.list_namespaced_job(self.ns, label_selector=selector).items)

    def key(self, name: str) -> str:
        return artifact_key(ModelDeployment.from_manifest(self.md(name)).spec)

    def wait_ready(self, name: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            md = self.md(name)
            status = md.get("status") or {}
            cond = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
            generation = md["metadata"]["generation"]
            if (
                cond
                and cond["status"] == "True"
                and cond.get("observedGeneration") == generation
                and status.get("observedGeneration") == generation
            ):
                return md
            return None

        return wait_for(f"{name} Ready", ready, timeout)
