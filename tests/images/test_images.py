"""The real images, built from the repo's Dockerfiles, do their jobs under the pod security
context `ondeck render` puts on pods.

The converter image converts an ONNX MLP with int8 quantization and a scikit-learn skops
pipeline with the exact arguments of the rendered conversion Job; the slim server image
serves each artifact with the rendered Deployment's arguments, and its V2 answers match
ONNX Runtime and scikit-learn on this machine. Every container runs as uid 65532 with a
read-only root filesystem, every capability dropped, no-new-privileges and Docker's
default seccomp profile (RuntimeDefault), with a tmpfs at /tmp like the pod's emptyDir.
Conversion containers have no network; server containers sit on a bridge network the test
creates (`--internal`: no route out); the operator image talks to a control plane on
loopback. The operator image starts and answers its health probe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from images.tools import (
    UID,
    Container,
    Images,
    docker,
    internal_network,
    restricted_flags,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ONDECK = str(Path(sys.executable).parent / "ondeck")
SOURCES = "/sources"


def render(manifest: dict[str, Any], workdir: Path) -> dict[str, dict[str, Any]]:
    """`ondeck render` of one ModelDeployment: {kind: object} of what the operator creates."""
    path = workdir / f"{manifest['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    done = subprocess.run(
        [ONDECK, "render", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {doc["kind"]: doc for doc in yaml.safe_load_all(done.stdout) if doc}


def pod_of(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, its only container) of a Job or Deployment."""
    spec = obj["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container["volumeMounts"]}


def run_flags(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """docker run flags for the rendered pod: security context, env, /tmp like its emptyDir."""
    flags = restricted_flags(pod["securityContext"], container["securityContext"])
    for var in container.get("env", []):
        flags += ["--env", f"{var['name']}={var['value']}"]
    tmp = mounts(container)["tmp"]["mountPath"]
    flags += ["--tmpfs", f"{tmp}:rw,size=512m,mode=1777"]
    return flags


def md(name: str, uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ondeck.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"model": {"uri": uri, **spec.pop("model", {})}, **spec},
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The artifact store every test shares (the PVC), owned by the pods' uid."""
    folder = tmp_path_factory.mktemp("store")
    os.chown(folder, UID, UID)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelzoo import build_mlp
    from pipeline import models

    folder = tmp_path_factory.mktemp("sources")
    build_mlp(folder / "mlp.onnx")
    models.save_skops(models.sklearn_models()["iris_pipeline"], folder / "iris.skops")
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def convert(
    image: str, manifest: dict[str, Any], *, sources: Path, store: Path, workdir: Path
) -> dict[str, Any]:
    """Run the rendered conversion Job's container in `image`; its termination message."""
    objects = render(manifest, workdir)
    pod, container = pod_of(objects["Job"])
    assert container["command"] == ["ondeck-server"]
    artifacts = mounts(container)["artifacts"]["mountPath"]
    termination = workdir / f"{manifest['metadata']['name']}.termination-log"
    termination.write_text("")
    os_chown(termination)
    flags = [
        *run_flags(pod, container),
        "--network",
        "none",
        "--volume",
        f"{store}:{artifacts}",
        "--volume",
        f"{sources}:{SOURCES}:ro",
        "--volume",
        f"{termination}:{container['terminationMessagePath']}",
        "--entrypoint",
        container["command"][0],
    ]
    job = Container.run(image, flags, container["args"])
    try:
        code = job.wait()
        assert code == 0, job.logs()[-4000:]
    finally:
        job.remove()
    message: dict[str, Any] = json.loads(termination.read_text())
    return message


def os_chown(path: Path) -> None:
    os.chown(path, UID, UID)


@pytest.fixture
def network() -> Iterator[str]:
    with internal_network() as name:
        yield name


def serve(
    image: str, manifest: dict[str, Any], *, store: Path, workdir: Path, network: str
) -> tuple[Container, str]:
    """Run the rendered Deployment's container in `image`; (container, base URL)."""
    objects = render(manifest, workdir)
    pod, container = pod_of(objects["Deployment"])
    artifacts = mounts(container)["artifacts"]
    assert artifacts.get("readOnly") is True
    (port,) = [p["containerPort"] for p in container["ports"]]
    flags = [
        *run_flags(pod, container),
        "--network",
        network,
        "--volume",
        f"{store}:{artifacts['mountPath']}:ro",
        "--entrypoint",
        container["command"][0],
    ]
    server = Container.run(image, flags, container["args"])
    url = f"http://{server.ip(network)}:{port}"
    probe = container["readinessProbe"]["httpGet"]["path"]
    wait_until(
        "the server's readiness probe",
        lambda: urllib.request.urlopen(f"{url}{probe}", timeout=2).status == 200,
        timeout=120,
        container=server,
    )
    return server, url


def infer(url: str, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    body = {
        "inputs": [
            {
                "name": key,
                "shape": list(value.shape),
                "datatype": "FP32",
                "data": value.reshape(-1).tolist(),
            }
            for key, value in feeds.items()
        ]
    }
    request = urllib.request.Request(
        f"{url}/v2/models/{name}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    return {out["name"]: np.asarray(out["data"]).reshape(out["shape"]) for out in answer["outputs"]}


def assert_restricted(container: Container) -> None:
    """What the kernel says about the server process: uid, caps, no_new_privs, seccomp."""
    status = dict(
        line.split(":\t", 1) for line in container.exec("cat", "/proc/1/status").splitlines()
    )
    assert status["Uid"].split()[:2] == [str(UID), str(UID)]
    assert status["Gid"].split()[:2] == [str(UID), str(UID)]
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # a filter: Docker's default profile
    done = docker("exec", container.name, "touch", "/opt/venv/x", check=False)
    assert done.returncode != 0
    assert "Read-only file system" in done.stderr


def test_image_sizes_are_reported(images: Images) -> None:
    assert set(images.refs) >= {"ondeck-server", "ondeck-converter", "ondeck-operator"}
    # The slim server image holds no source-framework converter.
    assert images.sizes["ondeck-server"] < images.sizes["ondeck-converter"]
    print(images.report())


def test_slim_server_image_has_no_source_converters(images: Images) -> None:
    probe = (
        "import importlib.util as u; "
        "print([m for m in ('sklearn', 'torch', 'skl2onnx', 'kopf') if u.find_spec(m)])"
    )
    done = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "python", images.server, "-c", probe
    )
    assert done.stdout.strip() == "[]"
    done = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "python", images.converter, "-c", probe
    )
    assert "sklearn" in done.stdout
    assert "skl2onnx" in done.stdout


def test_converter_image_converts_and_server_image_serves_onnx_int8(
    images: Images, sources: Path, store: Path, tmp_path: Path, network: str
) -> None:
    from modelzoo import reference

    # A random MLP on generated samples has near-tied logits: 7-bit int8 weights flip
    # 2 of 64 top-1 picks at cosine 0.9998 on an AVX2 CPU. The images are under test here.
    manifest = md(
        "mlp",
        f"file://{SOURCES}/mlp.onnx",
        optimize={"quantize": "int8", "validation": {"maxTop1Disagreement": 0.1}},
    )
    report = convert(images.converter, manifest, sources=sources, store=store, workdir=tmp_path)
    digest = report["digest"]
    artifact = store / digest / "model.onnx"
    assert artifact.is_file()
    assert artifact.stat().st_uid == UID
    assert artifact.stat().st_size < (sources / "mlp.onnx").stat().st_size / 2  # int8 weights
    server, url = serve(images.server, manifest, store=store, workdir=tmp_path, network=network)
    try:
        assert_restricted(server)
        rng = np.random.default_rng(0)
        features = rng.standard_normal((8, 256)).astype(np.float32)
        (logits,) = infer(url, "mlp", {"input": features}).values()
        (quantized,) = reference(artifact, {"input": features}).values()
        (original,) = reference(sources / "mlp.onnx", {"input": features}).values()
        np.testing.assert_allclose(logits, quantized, rtol=1e-3, atol=1e-3)
        cosine = np.sum(logits * original, 1) / (
            np.linalg.norm(logits, axis=1) * np.linalg.norm(original, axis=1)
        )
        assert float(cosine.min()) > 0.99
    finally:
        server.remove()


def test_converter_image_converts_and_server_image_serves_sklearn(
    images: Images, sources: Path, store: Path, tmp_path: Path, network: str
) -> None:
    from pipeline import models

    manifest = md("iris", f"file://{SOURCES}/iris.skops", model={"format": "sklearn"})
    report = convert(images.converter, manifest, sources=sources, store=store, workdir=tmp_path)
    assert (store / report["digest"] / "manifest.json").is_file()
    server, url = serve(images.server, manifest, store=store, workdir=tmp_path, network=network)
    try:
        assert_restricted(server)
        x, _ = models.iris()
        answers = infer(url, "iris", {"input": x[::10]})
        estimator = models.sklearn_models()["iris_pipeline"]
        assert (answers["label"] == estimator.predict(x[::10])).all()
        np.testing.assert_allclose(
            answers["probabilities"], estimator.predict_proba(x[::10]), atol=1e-4
        )
    finally:
        server.remove()


def test_slim_server_image_refuses_sklearn_naming_the_converter(
    images: Images, sources: Path, store: Path, tmp_path: Path
) -> None:
    manifest = md("iris-slim", f"file://{SOURCES}/iris.skops", model={"format": "sklearn"})
    objects = render(manifest, tmp_path)
    pod, container = pod_of(objects["Job"])
    flags = [
        *run_flags(pod, container),
        *(
            "--network",
            "none",
            "--volume",
            f"{store}:{mounts(container)['artifacts']['mountPath']}",
        ),
        *("--volume", f"{sources}:{SOURCES}:ro", "--entrypoint", "ondeck-server"),
    ]
    job = Container.run(images.server, flags, container["args"])
    try:
        assert job.wait() != 0
        logs = job.logs()
    finally:
        job.remove()
    assert "sklearn" in logs.lower() or "scikit-learn" in logs.lower(), logs[-2000:]


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from e2e.controlplane import MissingBinaryError, control_plane_binaries, start_control_plane

    try:
        binaries = control_plane_binaries()
    except MissingBinaryError as exc:
        pytest.skip(f"needs {exc}")
    plane = start_control_plane(tmp_path_factory.mktemp("control-plane"), binaries=binaries)
    try:
        yield plane
    finally:
        plane.stop()


def test_operator_image_starts_and_answers_its_health_probe(
    images: Images, control_plane: Any, tmp_path: Path
) -> None:
    from e2e.controlplane import free_port, write_kubeconfig

    repo = Path(__file__).resolve().parents[2]
    for crds in (repo / "crds", repo / "charts" / "ondeck" / "crds"):
        done = subprocess.run(
            [
                "kubectl",
                "--kubeconfig",
                str(control_plane.admin_kubeconfig),
                "apply",
                "-f",
                str(crds),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    # A kubeconfig with the admin credentials inline, readable by the image's user.
    folder = tmp_path / "kube"
    folder.mkdir()
    kubeconfig = write_kubeconfig(
        folder / "config",
        server=control_plane.server,
        ca_file=control_plane.ca_file,
        user={
            "client-certificate-data": _b64(control_plane.admin_cert),
            "client-key-data": _b64(control_plane.admin_key),
        },
    )
    os_chown(kubeconfig)
    chart = yaml.safe_load((repo / "charts" / "ondeck" / "values.yaml").read_text())
    health, metrics = free_port(), free_port()
    # As the chart's pod: its securityContext, an emptyDir at /tmp.
    flags = [
        *restricted_flags(chart["podSecurityContext"], chart["securityContext"]),
        *("--network", "host", "--volume", f"{folder}:/kube:ro"),
        *("--tmpfs", "/tmp:rw,size=64m,mode=1777"),
    ]
    operator = Container.run(
        images.operator,
        flags,
        [
            *("operator", "--kubeconfig", "/kube/config", "--namespaces", "default"),
            *("--bind", "127.0.0.1", "--health-port", str(health)),
            *("--metrics-port", str(metrics), "--log-format", "text"),
        ],
    )
    try:
        for path in ("/healthz", "/readyz"):
            wait_until(
                f"the operator's {path}",
                lambda path=path: (
                    urllib.request.urlopen(f"http://127.0.0.1:{health}{path}", timeout=2).status
                    == 200
                ),
                timeout=90,
                container=operator,
            )
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as rsp:
            assert rsp.status == 200
        assert_restricted(operator)
    finally:
        operator.remove()


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()
