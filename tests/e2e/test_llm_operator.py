"""A language model through the operator on the real control plane (issue 10, "The
operator"): the tinyllm ModelDeployment's conversion Job runs its rendered `ondeck-server
convert` command for real on the tiny LLaMA (int4), the simulated kubelet hands its
termination log back as the pod's termination message, and the ModelDeployment goes
Ready. The server's pod spec (args, spec.llm.sampling's default flags, memory from the
KV-cache formula, probes) is read back from the real Deployment and pod, the
HorizontalPodAutoscaler with the vllm:num_requests_waiting Pods metric from the real API
server, and `kubectl get md` shows the kind and the precision.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubelet_sim import JobOutcome
from llm_job import run_the_jobs_command
from operator_harness import Cluster, manifest, wait_for

from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.render.args import artifact_key

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MI = 1 << 20
GI = 1 << 30


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llm import tinyllm

    folder: Path = tinyllm.for_tests(tmp_path_factory.mktemp("tinyllm"))
    return folder


@pytest.fixture
def cluster(admin_api: Any, namespace: str) -> Cluster:
    return Cluster(admin_api, namespace)


def _mi(n: int) -> str:
    mib = -(-n // MI)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def test_tinyllm_goes_ready_sized_from_its_artifact(
    cluster: Cluster,
    start_operator: Any,
    job_outcomes: dict[Any, Any],
    kubelet: Any,
    control_plane: Any,
    tiny_folder: Path,
    tmp_path: Path,
) -> None:
    start_operator()
    body = manifest(
        "tinyllm",
        model={"uri": "pvc://models/tinyllm/", "format": "hf-causal-lm", "size": "2Gi"},
        optimize={"quantize": "int4"},
        llm={
            "maxContextLength": 128,
            "maxBatchSize": 4,
            "servedModelName": "tiny-chat",
            # stored by the real API server under the CRD's schema, then rendered as flags
            "sampling": {"temperature": 0.7, "topP": 0.9, "topK": 40, "maxTokens": 64},
        },
        autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetRequestsWaiting": "2"},
    )
    md = cluster.create(body)
    key = artifact_key(ModelDeployment.from_manifest(md).spec)

    (job,) = wait_for("the conversion Job", lambda: cluster.jobs("tinyllm"))
    container = job.spec.template.spec.containers[0]
    # The Job sized from spec.model.size: 4 x 2 GiB + 1 GiB for a language model.
    assert container.resources.requests == {"cpu": "1", "memory": "9Gi"}
    assert container.resources.limits == {"memory": _mi(9 * GI + 9 * GI // 4)}
    message = run_the_jobs_command(
        list(container.args), tiny_folder, tmp_path, store=tmp_path / "store"
    )
    summary = json.loads(message)
    assert (summary["kind"], summary["precision"]) == ("llm", "int4")
    job_outcomes[(cluster.ns, key)] = JobOutcome.success(message)

    ready = cluster.wait_ready("tinyllm", timeout=60)
    artifact = ready["status"]["artifact"]
    assert (artifact["kind"], artifact["precision"], artifact["key"]) == ("llm", "int4", key)
    assert artifact["validation"]["passed"] is True
    assert artifact["llm"] == summary["llm"]

    deployment = cluster.apps.read_namespaced_deployment("tinyllm", cluster.ns)
    pods = wait_for(
        "the server pod",
        lambda: cluster.core.list_namespaced_pod(
            cluster.ns, label_selector="ondeck.io/model-deployment=tinyllm,"
            "app.kubernetes.io/component=server",
        ).items,
    )  # fmt: skip
    for server in (deployment.spec.template.spec.containers[0], pods[0].spec.containers[0]):
        args = server.args
        assert args[:3] == ["serve", "--model", f"/artifacts/{summary['digest']}"]
        assert args[args.index("--name") + 1] == "tiny-chat"
        assert args[args.index("--max-batch-size") + 1] == "4"
        assert args[args.index("--max-context-length") + 1] == "128"
        flags = ["--default-temperature", "--default-top-p", "--default-top-k"]
        flags.append("--default-max-tokens")
        assert [args[args.index(f) + 1] for f in flags] == ["0.7", "0.9", "40", "64"]
        # weights + 2 x layers x KV heads x head size x bytes x context x 4 sequences + 768
        # MiB, the context capped by maxContextLength (the server allocates that many)
        terms = summary["llm"]
        kv = 2 * terms["numLayers"] * terms["numKeyValueHeads"] * terms["headSize"]
        kv *= terms["kvBytesPerElement"] * min(terms["contextLength"], 128) * 4
        request = summary["sizeBytes"] + kv + 768 * MI
        assert server.resources.requests == {"cpu": "1", "memory": _mi(request)}
        assert server.resources.limits == {"memory": _mi(request + 512 * MI)}
        assert server.startup_probe.http_get.path == "/v2/health/ready"
        assert (server.startup_probe.period_seconds, server.startup_probe.failure_threshold) == (
            5,
            120,
        )
        assert server.readiness_probe.http_get.path == "/v2/health/ready"
        assert server.liveness_probe.http_get.path == "/v2/health/live"

    hpa = cluster.autoscaling.read_namespaced_horizontal_pod_autoscaler("tinyllm", cluster.ns)
    pods_metric = hpa.spec.metrics[1]
    assert pods_metric.type == "Pods"
    assert pods_metric.pods.metric.name == "vllm:num_requests_waiting"
    assert pods_metric.pods.target.average_value == "2"

    from k8s_tools import kubectl_path

    shown = subprocess.run(
        [str(kubectl_path()), "--kubeconfig", str(control_plane.admin_kubeconfig),
         f"--cache-dir={tmp_path / 'kube-cache'}", "-n", cluster.ns, "get", "md", "tinyllm"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split("\n")  # fmt: skip
    header, row = shown[0].split(), shown[1].split()
    assert dict(zip(header, row, strict=False))["KIND"] == "llm"
    assert dict(zip(header, row, strict=False))["PRECISION"] == "int4"
