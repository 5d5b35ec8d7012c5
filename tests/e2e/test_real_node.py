"""End to end on a real node: the chart, the operator image, a conversion Job running the
converter image, model server pods running the server image, a Service through kube-proxy.

`helm install` the chart with the locally built images (imagePullPolicy Never) → `kubectl
apply` an iris ModelDeployment whose scikit-learn model is served over HTTP from the node's
bridge address → the Job's container converts it and its termination message reaches the
status → the server pods pass their readiness probes under restricted Pod Security, which
the namespace enforces → a V2 request to the Service's ClusterIP (kube-proxy's iptables
rules) gives scikit-learn's answers → `kubectl logs` reaches the kubelet → a corrupt
model and a wrong sha256 fail in the real converter container with their reasons and
error lines in the status while iris keeps serving → iris itself updated to the corrupt
model fails its new Job while its old pod keeps answering → a model from moto's S3 on the
node's bridge, with credentials from a Secret, goes Ready and answers → deleting the
ModelDeployments garbage-collects everything they owned.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from node import RealCluster, wait_until

from k8s_tools import helm_path, kubectl_path

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
UID = 65532


def kubectl(cluster: RealCluster, *args: str, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(
        [str(kubectl_path()), "--kubeconfig", str(cluster.plane.admin_kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def get(cluster: RealCluster, *args: str) -> Any:
    return json.loads(kubectl(cluster, "get", *args, "-o", "json"))


def converter_image_supported(tmp_path: Path) -> bool:
    """Whether the operator's config takes `converterImage` (asked through `ondeck render`)."""
    config = tmp_path / "probe-config.yaml"
    config.write_text(yaml.safe_dump({"converterImage": "probe:1"}))
    manifest = tmp_path / "probe.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "ondeck.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "probe", "namespace": "default"},
                "spec": {"model": {"uri": "https://example.invalid/m.onnx"}},
            }
        )
    )
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ondeck"),
            *("render", "-f", str(manifest), "--config", str(config)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode == 0


def _split(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def helm_install(
    cluster: RealCluster, namespace: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """`helm install` the chart with the local images, watching `namespace`."""
    images = cluster.images
    operator_repo, operator_tag = _split(images.operator)
    server_repo, server_tag = _split(images.server)
    converter_repo, converter_tag = _split(images.converter)
    converter = converter_image_supported(tmp_path)
    if not converter:
        # The operator has no converterImage yet: Job and server both run the converter
        # image (it serves too), so the scikit-learn source still converts.
        server_repo, server_tag = converter_repo, converter_tag
    sets = [
        f"image.repository={operator_repo}",
        f"image.tag={operator_tag}",
        "image.pullPolicy=Never",
        "replicaCount=1",
        f"watch.namespaces={{{namespace}}}",
        f"config.serverImage.repository={server_repo}",
        f"config.serverImage.tag={server_tag}",
        "config.imagePullPolicy=Never",
        "config.jobBackoffLimit=0",
        "resources.requests.cpu=50m",
    ]
    if converter:
        sets += [
            f"config.converterImage.repository={converter_repo}",
            f"config.converterImage.tag={converter_tag}",
        ]
    return subprocess.run(
        [
            *(str(helm_path()), "install", "ondeck", str(REPO / "charts" / "ondeck")),
            *("--kubeconfig", str(cluster.plane.admin_kubeconfig)),
            *("--namespace", "ondeck-system", "--create-namespace", "--wait", "--timeout", "5m"),
            *[arg for item in sets for arg in ("--set", item)],
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def helm_uninstall(cluster: RealCluster) -> None:
    subprocess.run(
        [
            *(str(helm_path()), "uninstall", "ondeck", "--namespace", "ondeck-system"),
            *("--kubeconfig", str(cluster.plane.admin_kubeconfig), "--wait"),
        ],
        capture_output=True,
        timeout=180,
        check=False,
    )


def restricted_namespace(cluster: RealCluster) -> str:
    """A new namespace where restricted Pod Security is enforced; its name."""
    namespace = f"ml-{uuid.uuid4().hex[:6]}"
    kubectl(cluster, "create", "namespace", namespace)
    kubectl(
        cluster,
        *("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"),
    )
    return namespace


def small_iris(namespace: str, model_server: str) -> dict[str, Any]:
    """The iris ModelDeployment with requests small enough for the one node."""
    return {
        "apiVersion": "ondeck.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {
            "model": {"uri": f"{model_server}/iris.skops", "format": "sklearn"},
            "optimize": {"resources": {"requests": {"cpu": "200m", "memory": "512Mi"}}},
            "server": {
                "replicas": 1,
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            },
        },
    }


def md_ready(cluster: RealCluster, namespace: str, name: str = "iris") -> bool:
    """Ready is True for the ModelDeployment's current generation."""
    md = get(cluster, "modeldeployment", name, "-n", namespace)
    conditions = {c["type"]: c for c in (md.get("status") or {}).get("conditions", [])}
    ready = conditions.get("Ready", {})
    return bool(
        ready.get("status") == "True"
        and ready.get("observedGeneration") == md["metadata"]["generation"]
    )


class ClusterIPClient:
    """A client looping V2 requests for iris rows on a Service's ClusterIP (kube-proxy's
    rules) in a thread; every exception or wrong label counts as a failure."""

    def __init__(self, cluster: RealCluster, namespace: str, service: str = "iris") -> None:
        from pipeline import models

        found = get(cluster, "service", service, "-n", namespace)
        (port,) = [p["port"] for p in found["spec"]["ports"]]
        self.url = f"http://{found['spec']['clusterIP']}:{port}/v2/models/iris/infer"
        x, _ = models.iris()
        rows = x[::15]
        self.expected = models.sklearn_models()["iris_pipeline"].predict(rows).tolist()
        self.body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(rows.shape),
                        "datatype": "FP32",
                        "data": rows.reshape(-1).tolist(),
                    }
                ]
            }
        ).encode()
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def once(self) -> bool:
        request = urllib.request.Request(
            self.url, data=self.body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            outputs = {o["name"]: o["data"] for o in json.loads(response.read())["outputs"]}
        if outputs["label"] != self.expected:
            raise AssertionError(f"wrong answer {outputs['label']}")
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.once()
                self.ok += 1
            except Exception as exc:  # every failure counts, whatever it is
                self.failures.append(repr(exc))
            time.sleep(0.05)

    def start(self) -> None:
        wait_until("a first answer through the ClusterIP", self.once, timeout=60)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def assert_none_failed(self) -> None:
        total = self.ok + len(self.failures)
        assert not self.failures, f"{len(self.failures)} failed of {total}: {self.failures[:5]}"
        assert self.ok >= 20, self.ok


@pytest.fixture
def model_server(real_cluster: RealCluster, tmp_path: Path) -> Iterator[str]:
    """An HTTP server on the node's bridge address serving iris.skops; its base URL."""
    sys.path.insert(0, str(REPO / "tests"))
    from pipeline import models

    folder = tmp_path / "www"
    folder.mkdir()
    models.save_skops(models.sklearn_models()["iris_pipeline"], folder / "iris.skops")
    # a "new version" that answers like the old one, for the canary test
    (folder / "iris-v2.skops").write_bytes((folder / "iris.skops").read_bytes())
    (folder / "broken.onnx").write_bytes(b"this is not an ONNX model\n" * 40)
    from controlplane import free_port

    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "http.server", "--bind", real_cluster.node.ip, str(port)),
            *("--directory", str(folder)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{real_cluster.node.ip}:{port}"
    try:
        wait_until(
            "the model HTTP server",
            lambda: urllib.request.urlopen(f"{url}/iris.skops", timeout=2).status == 200,
            timeout=30,
        )
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def s3_server(real_cluster: RealCluster, tmp_path: Path) -> Iterator[str]:
    """moto's S3 server on the node's bridge address, bucket `models` holding iris.skops;
    its endpoint URL. Credentials: any key (moto does not check them here)."""
    boto3 = pytest.importorskip("boto3")
    sys.path.insert(0, str(REPO / "tests"))
    from moto_server import moto_server
    from pipeline import models

    with moto_server(tmp_path / "moto.log", host=real_cluster.node.ip) as url:
        client = boto3.client(
            "s3", endpoint_url=url, region_name="us-east-1",
            aws_access_key_id="node-test", aws_secret_access_key="node-test-secret",
        )  # fmt: skip
        client.create_bucket(Bucket="models")
        skops = tmp_path / "iris.skops"
        models.save_skops(models.sklearn_models()["iris_pipeline"], skops)
        client.upload_file(str(skops), "models", "team/iris.skops")
        yield url


@pytest.fixture
def artifact_volume(real_cluster: RealCluster, tmp_path: Path) -> Iterator[list[str]]:
    """hostPath PersistentVolumes (no storage class) the artifact claims bind to, one per
    ModelDeployment a test makes (each has its own claim)."""
    names = []
    for _ in range(5):  # one claim per artifact: iris (twice), broken, wrongsum, iris-s3
        folder = real_cluster.node.workdir / f"pv-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        os.chown(folder, UID, UID)
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": folder.name},
            "spec": {
                "capacity": {"storage": "20Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(folder), "type": "Directory"},
            },
        }
        kubectl(real_cluster, "apply", "-f", "-", stdin=json.dumps(pv))
        names.append(folder.name)
    yield names
    for name in names:
        kubectl(real_cluster, "delete", "pv", name, "--wait=false", check=False)


def test_chart_operator_job_pods_and_service_on_a_real_node(
    real_cluster: RealCluster,
    model_server: str,
    s3_server: str,
    artifact_volume: list[str],
    tmp_path: Path,
) -> None:
    from pipeline import models

    cluster = real_cluster
    images = cluster.images
    namespace = restricted_namespace(cluster)
    started = time.monotonic()
    timings: dict[str, float] = {}

    # 1. helm install with the local images.
    helm = helm_install(cluster, namespace, tmp_path)
    converter = converter_image_supported(tmp_path)
    try:
        assert helm.returncode == 0, helm.stderr + cluster.node.logs()
        timings["helm install --wait"] = time.monotonic() - started
        (operator_pod,) = get(
            cluster, "pods", "-n", "ondeck-system", "-l", "app.kubernetes.io/name=ondeck"
        )["items"]
        assert operator_pod["spec"]["containers"][0]["image"] == images.operator
        assert operator_pod["status"]["phase"] == "Running"

        # 2. the ModelDeployment.
        manifest = {
            "apiVersion": "ondeck.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": namespace},
            "spec": {
                "model": {"uri": f"{model_server}/iris.skops", "format": "sklearn"},
                "optimize": {
                    "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}},
                },
                "server": {
                    "replicas": 1,
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                },
            },
        }
        kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(manifest))

        def ready() -> dict[str, Any] | None:
            md = get(cluster, "modeldeployment", "iris", "-n", namespace)
            status = md.get("status") or {}
            conditions = {c["type"]: c for c in status.get("conditions", [])}
            if conditions.get("Ready", {}).get("status") == "True":
                return dict(md)
            return None

        md = wait_until("the ModelDeployment to be Ready", ready, timeout=600, node=cluster.node)
        timings["apply → Ready"] = time.monotonic() - started - timings["helm install --wait"]
        status = md["status"]
        assert status["phase"] == "Ready"
        assert status["artifact"]["digest"]

        # The Job ran the converter image and ended with a termination message.
        (job_pod,) = get(
            cluster, "pods", "-n", namespace, "-l", "app.kubernetes.io/component=converter"
        )["items"]
        (job_container,) = job_pod["status"]["containerStatuses"]
        assert job_pod["spec"]["containers"][0]["image"] == images.converter
        terminated = job_container["state"]["terminated"]
        assert terminated["exitCode"] == 0
        assert status["artifact"]["digest"] in terminated.get("message", ""), terminated

        # The server pods run the server image under the restricted profile, and are ready.
        (server_pod,) = get(
            cluster, "pods", "-n", namespace, "-l", "app.kubernetes.io/component=server"
        )["items"]
        assert server_pod["spec"]["containers"][0]["image"] == (
            images.server if converter else images.converter
        )
        assert all(c["ready"] for c in server_pod["status"]["containerStatuses"])
        assert ipaddress.ip_address(server_pod["status"]["podIP"]) in cluster.node.net.subnet

        # 3. a V2 request through the Service's ClusterIP (kube-proxy's rules).
        service = get(cluster, "service", "iris", "-n", namespace)
        cluster_ip = service["spec"]["clusterIP"]
        (port,) = [p["port"] for p in service["spec"]["ports"]]
        x, _ = models.iris()
        rows = x[::7]
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "data": rows.reshape(-1).tolist(),
                }
            ]
        }

        def answer() -> dict[str, Any]:
            request = urllib.request.Request(
                f"http://{cluster_ip}:{port}/v2/models/iris/infer",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return dict(json.loads(response.read()))

        result = wait_until("an answer through the ClusterIP", answer, timeout=60)
        outputs = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in result["outputs"]}
        estimator = models.sklearn_models()["iris_pipeline"]
        assert (outputs["label"] == estimator.predict(rows)).all()
        np.testing.assert_allclose(
            outputs["probabilities"], estimator.predict_proba(rows), atol=1e-4
        )

        # 4. kubectl logs reaches the kubelet on the node's (non-loopback) address.
        logs = kubectl(cluster, "logs", "-n", namespace, server_pod["metadata"]["name"])
        assert logs.strip()

        # 5. bad models fail in the real converter container, their error line reaches
        #    the status through the termination message, and iris keeps serving.
        broken = {
            "broken": {"uri": f"{model_server}/broken.onnx", "format": "onnx"},
            "wrongsum": {
                "uri": f"{model_server}/iris.skops",
                "format": "sklearn",
                "sha256": "0" * 64,
            },
        }
        for name, model in broken.items():
            bad = {
                **manifest,
                "metadata": {"name": name, "namespace": namespace},
                "spec": {**manifest["spec"], "model": model},
            }
            kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(bad))

        def failed(name: str) -> dict[str, Any] | None:
            md = get(cluster, "modeldeployment", name, "-n", namespace)
            status = md.get("status") or {}
            if status.get("phase") != "Failed":
                return None
            return {c["type"]: c for c in status.get("conditions", [])}["Ready"]

        expect = {
            "broken": ("ConversionFailed", "broken.onnx is not a valid ONNX model"),
            "wrongsum": ("ChecksumMismatch", f"expected {'0' * 64}"),
        }
        for name, (reason, text) in expect.items():
            ready_condition = wait_until(
                f"{name} to fail", lambda n=name: failed(n), timeout=300, node=cluster.node
            )
            assert ready_condition["status"] == "False"
            assert ready_condition["reason"] == reason, ready_condition
            assert text in ready_condition["message"], ready_condition
        assert answer()["outputs"]  # iris still answers
        timings["bad models → Failed"] = time.monotonic() - started - sum(timings.values())

        # 6. iris itself gets a broken model: its new Job fails, its old pods keep serving.
        kubectl(
            cluster,
            *("patch", "modeldeployment", "iris", "-n", namespace, "--type", "merge"),
            *("-p", json.dumps({"spec": {"model": broken["broken"]}})),
        )

        def not_ready(name: str) -> dict[str, Any] | None:
            md = get(cluster, "modeldeployment", name, "-n", namespace)
            status = md.get("status") or {}
            ready = {c["type"]: c for c in status.get("conditions", [])}.get("Ready", {})
            generation = md["metadata"]["generation"]
            if ready.get("status") != "False" or ready.get("observedGeneration") != generation:
                return None
            if ready.get("reason") in ("Converting", "Deploying"):
                return None  # not decided yet
            return {"phase": status.get("phase"), **ready}

        ready_condition = wait_until(
            "iris's new model to fail", lambda: not_ready("iris"), timeout=300, node=cluster.node
        )
        assert ready_condition["reason"] == "ConversionFailed", ready_condition
        # The old version serves on: phase stays Ready, the condition says why not the new.
        assert ready_condition["phase"] == "Ready", ready_condition
        assert "is still serving" in ready_condition["message"], ready_condition
        served_pods = get(
            cluster, "pods", "-n", namespace, "-l", "app.kubernetes.io/component=server"
        )["items"]
        assert [p["metadata"]["name"] for p in served_pods] == [server_pod["metadata"]["name"]]
        still = answer()
        assert (
            np.asarray(next(o for o in still["outputs"] if o["name"] == "label")["data"])
            == models.sklearn_models()["iris_pipeline"].predict(rows)
        ).all()
        timings["broken update, old pods serve"] = (
            time.monotonic() - started - sum(timings.values())
        )

        # 7. a model from S3 (moto on the node's bridge) with credentials from a Secret.
        kubectl(
            cluster,
            *("create", "secret", "generic", "s3-reader", "-n", namespace),
            "--from-literal=AWS_ACCESS_KEY_ID=node-test",
            "--from-literal=AWS_SECRET_ACCESS_KEY=node-test-secret",
            "--from-literal=AWS_REGION=us-east-1",
        )
        from_s3 = {
            **manifest,
            "metadata": {"name": "iris-s3", "namespace": namespace},
            "spec": {
                **manifest["spec"],
                "model": {
                    "uri": "s3://models/team/iris.skops",
                    "format": "sklearn",
                    "credentialsSecret": "s3-reader",
                    "s3EndpointURL": s3_server,
                },
            },
        }
        kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(from_s3))

        def s3_ready() -> bool:
            md = get(cluster, "modeldeployment", "iris-s3", "-n", namespace)
            conditions = {c["type"]: c for c in (md.get("status") or {}).get("conditions", [])}
            return conditions.get("Ready", {}).get("status") == "True"

        wait_until("iris-s3 to be Ready", s3_ready, timeout=600, node=cluster.node)
        s3_service = get(cluster, "service", "iris-s3", "-n", namespace)
        request = urllib.request.Request(
            f"http://{s3_service['spec']['clusterIP']}:{port}/v2/models/iris-s3/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        s3_answer = wait_until(
            "an answer from iris-s3",
            lambda: json.loads(urllib.request.urlopen(request, timeout=10).read()),
            timeout=60,
        )
        s3_labels = next(o for o in s3_answer["outputs"] if o["name"] == "label")["data"]
        assert s3_labels == models.sklearn_models()["iris_pipeline"].predict(rows).tolist()
        timings["S3 model → Ready"] = time.monotonic() - started - sum(timings.values())

        # 8. delete: everything the ModelDeployments owned is garbage collected.
        kubectl(
            cluster,
            *("delete", "modeldeployment", "iris", "broken", "wrongsum", "iris-s3"),
            *("-n", namespace),
            "--wait=true",
        )

        def collected() -> bool:
            left = []
            for kind in ("deployments", "jobs", "services", "persistentvolumeclaims", "pods"):
                items = get(cluster, kind, "-n", namespace)["items"]
                left += [f"{kind}/{i['metadata']['name']}" for i in items]
            return not left

        wait_until("garbage collection", collected, timeout=180, node=cluster.node)
        timings["total"] = time.monotonic() - started
        print("\nreal node timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    except BaseException:
        print(kubectl(cluster, "get", "all,events", "-A", check=False)[-6000:])
        print(
            kubectl(
                cluster, "logs", "-n", "ondeck-system", "deploy/ondeck", "--tail=80", check=False
            )
        )
        raise
    finally:
        helm_uninstall(cluster)
        kubectl(cluster, "delete", "namespace", namespace, "--wait=false", check=False)


def test_a_spec_change_rolls_out_with_no_failed_request(
    real_cluster: RealCluster, model_server: str, artifact_volume: list[str], tmp_path: Path
) -> None:
    """While a client loops on the Service's ClusterIP, a serving setting changes: the
    Deployment rolls (maxSurge 1, maxUnavailable 0, preStop sleep, readiness probes) and
    not one request fails."""
    cluster = real_cluster
    namespace = restricted_namespace(cluster)
    helm = helm_install(cluster, namespace, tmp_path)
    try:
        assert helm.returncode == 0, helm.stderr
        manifest = small_iris(namespace, model_server)
        manifest["spec"]["server"]["batching"] = {"maxBatchSize": 32}
        kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(manifest))
        wait_until(
            "the ModelDeployment to be Ready",
            lambda: md_ready(cluster, namespace),
            timeout=600,
            node=cluster.node,
        )
        client = ClusterIPClient(cluster, namespace)
        old_pods = {
            p["metadata"]["name"]
            for p in get(
                cluster, "pods", "-n", namespace, "-l", "app.kubernetes.io/component=server"
            )["items"]
        }
        client.start()
        try:
            time.sleep(2)
            kubectl(
                cluster,
                *("patch", "modeldeployment", "iris", "-n", namespace, "--type", "merge"),
                *("-p", json.dumps({"spec": {"server": {"batching": {"maxBatchSize": 16}}}})),
            )

            def rolled() -> bool:
                pods = get(
                    cluster, "pods", "-n", namespace, "-l", "app.kubernetes.io/component=server"
                )["items"]
                names = {p["metadata"]["name"] for p in pods}
                return bool(
                    names
                    and not names & old_pods
                    and all(
                        c["ready"] for p in pods for c in p["status"].get("containerStatuses", [])
                    )
                )

            wait_until("the rollout to replace every pod", rolled, timeout=300, node=cluster.node)
            wait_until(
                "the ModelDeployment to be Ready again",
                lambda: md_ready(cluster, namespace),
                timeout=120,
            )
            time.sleep(3)
        finally:
            client.stop()
        client.assert_none_failed()
        print(f"\nrollout: {client.ok} requests through the ClusterIP, 0 failed")
        kubectl(cluster, "delete", "modeldeployment", "iris", "-n", namespace, "--wait=true")
    except BaseException:
        print(kubectl(cluster, "get", "all,events", "-n", namespace, check=False)[-5000:])
        raise
    finally:
        helm_uninstall(cluster)
        kubectl(cluster, "delete", "namespace", namespace, "--wait=false", check=False)


def test_a_canary_is_promoted_on_its_analysis_with_no_failed_request(
    real_cluster: RealCluster, model_server: str, artifact_volume: list[str], tmp_path: Path
) -> None:
    """A new model version rolled out as a canary on the real node: the operator (its image,
    in a pod) runs the candidate beside stable behind the one Service (replica-ratio
    split: 1 + 1 pods, 50 %), reads both pods' /metrics over the pod network, judges each
    interval and promotes; a client looping on the Service's ClusterIP (kube-proxy's
    rules) the whole time sees not one failed request, and some of its requests were
    answered by the candidate (counted in the recorded analysis)."""
    cluster = real_cluster
    namespace = restricted_namespace(cluster)
    helm = helm_install(cluster, namespace, tmp_path)
    try:
        assert helm.returncode == 0, helm.stderr
        manifest = small_iris(namespace, model_server)
        manifest["spec"]["rollout"] = {
            "strategy": "canary",
            "steps": [{"weight": 50, "pause": "20s"}],
            "analysis": {
                "interval": "5s",
                "maxErrorRate": 0.01,
                # a loaded 2-core machine: the latency ratio is not what is tested
                "maxLatencyRatio": 20,
                "minRequests": 5,
            },
        }
        kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(manifest))

        def md() -> dict[str, Any]:
            return dict(get(cluster, "modeldeployment", "iris", "-n", namespace))

        wait_until(
            "the ModelDeployment to be Ready",
            lambda: md_ready(cluster, namespace),
            timeout=600,
            node=cluster.node,
        )
        first_key = md()["status"]["artifact"]["key"]
        client = ClusterIPClient(cluster, namespace)
        client.start()
        seen: dict[str, Any] = {}
        try:
            time.sleep(2)
            kubectl(
                cluster,
                *("patch", "modeldeployment", "iris", "-n", namespace, "--type", "merge"),
                *("-p", json.dumps({"spec": {"model": {"uri": f"{model_server}/iris-v2.skops"}}})),
            )

            def promoted() -> bool:
                status = md().get("status") or {}
                rollout = status.get("rollout") or {}
                analysis = rollout.get("analysis") or {}
                if rollout.get("phase") == "Canary" and analysis.get("verdict") == "Pass":
                    seen["passed"] = analysis
                if rollout.get("phase") == "RolledBack":
                    seen["rolledBack"] = rollout  # ends the wait: fail at once, not at 600 s
                return rollout.get("phase") in ("Promoted", "RolledBack")

            wait_until("the canary to be promoted", promoted, timeout=600, node=cluster.node)
            assert "rolledBack" not in seen, f"rolled back: {seen['rolledBack']}"
            wait_until(
                "the ModelDeployment to be Ready again",
                lambda: md_ready(cluster, namespace),
                timeout=300,
            )

            def only_new_pods() -> bool:
                pods = get(
                    cluster, "pods", "-n", namespace, "-l", "app.kubernetes.io/component=server"
                )["items"]
                return bool(
                    pods
                    and all(p["metadata"].get("deletionTimestamp") is None for p in pods)
                    and all(
                        c["ready"] for p in pods for c in p["status"].get("containerStatuses", [])
                    )
                    and len(pods) == 1
                )

            wait_until("one ready server pod after promotion", only_new_pods, timeout=300)
            time.sleep(3)
        finally:
            client.stop()
        status = md()["status"]
        assert (status.get("artifact") or {}).get("key") not in (None, first_key), status
        assert seen.get("passed"), "no analysis passed during the canary step"
        assert seen["passed"]["candidateRequests"] >= 5, seen["passed"]
        client.assert_none_failed()
        print(
            f"\ncanary: {client.ok} requests through the ClusterIP, 0 failed; "
            f"the passing analysis: {seen['passed']}"
        )
        kubectl(cluster, "delete", "modeldeployment", "iris", "-n", namespace, "--wait=true")
    except BaseException:
        print(kubectl(cluster, "get", "all,events", "-n", namespace, check=False)[-5000:])
        print(
            kubectl(
                cluster,
                "logs",
                "-n",
                "ondeck-system",
                "-l",
                "app.kubernetes.io/name=ondeck",
                "--tail=80",
                check=False,
            )
        )
        raise
    finally:
        helm_uninstall(cluster)
        kubectl(cluster, "delete", "namespace", namespace, "--wait=false", check=False)
