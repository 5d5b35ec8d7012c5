"""A language model served in a pod on the real node (kubelet + containerd), from the
server image built from Dockerfile.server.

The conversion Job of a language model needs the converter image with torch (several GB
of CUDA from PyPI), which CI does not build; so the Job's own rendered argv runs here, on
the host, into the folder a hostPath PersistentVolume exposes, as test_llm_operator.py
does with the simulated kubelet. Everything after it is what the operator would apply:
`render()` of the tinyllm ModelDeployment with the conversion's summary, applied with
kubectl into a namespace that enforces restricted Pod Security. The server pod (read-only
root filesystem, non-root, the memory limit of the KV-cache formula, the startup probe)
must become ready and answer the official `openai` client through the Service's ClusterIP
with the text onnxruntime-genai's own greedy search gives for the same artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import test_real_node as real
from llm_job import run_the_jobs_command
from node import RealCluster, wait_until

from llm.greedy import og_greedy
from ondeck_operator.api.operator_config import OperatorConfig
from ondeck_operator.api.spec import ModelDeployment
from ondeck_operator.reconcile.status import parse_summary
from ondeck_operator.render.args import artifact_key
from ondeck_operator.render.manifests import RenderState, render, render_job
from ondeck_operator.render.sizing import server_memory, to_quantity

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

PROMPT = "The"
NEW_TOKENS = 24


def _convert_like_the_job(md: ModelDeployment, config: OperatorConfig, store: Path) -> str:
    """The rendered Job's argv run on the host, `store` standing for the artifact claim;
    the termination message (the JSON summary)."""
    from llm import tinyllm

    work = store.parent
    (container,) = render_job(md, config)["spec"]["template"]["spec"]["containers"]
    folder = tinyllm.for_tests(work / "tinyllm")
    return run_the_jobs_command(container["args"], folder, work, store=store)


def _volume(cluster: RealCluster, namespace: str, store: Path) -> None:
    """A hostPath PersistentVolume on `store`, bound ahead to the claim `llm-store`."""
    for folder in [store, *store.rglob("*")]:
        os.chown(folder, real.UID, real.UID)
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"llm-{namespace}"},
        "spec": {
            "capacity": {"storage": "5Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": str(store), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": "llm-store"},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "llm-store", "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "5Gi"}},
            "storageClassName": "",
            "volumeName": pv["metadata"]["name"],
        },
    }
    for obj in (pv, pvc):
        real.kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(obj))


def test_the_server_image_serves_a_language_model_in_a_pod(
    real_cluster: RealCluster, tmp_path: Path
) -> None:
    import openai

    cluster = real_cluster
    namespace = real.restricted_namespace(cluster)
    manifest: dict[str, Any] = {
        "apiVersion": "ondeck.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "tinyllm", "namespace": namespace, "uid": str(uuid.uuid4())},
        "spec": {
            "model": {"uri": "pvc://models/tinyllm/", "format": "hf-causal-lm"},
            "optimize": {"quantize": "int4"},
            "artifacts": {"existingClaim": "llm-store"},
            "llm": {"maxContextLength": 128, "maxBatchSize": 2, "servedModelName": "tiny-chat"},
            "server": {"replicas": 1, "resources": {"requests": {"cpu": "500m"}}},
        },
    }
    md = ModelDeployment.from_manifest(manifest)
    config = OperatorConfig.model_validate(
        {"serverImage": cluster.images.server, "imagePullPolicy": "Never"}
    )
    store = tmp_path / "store"
    store.mkdir()
    key = artifact_key(md.spec)
    report = parse_summary(_convert_like_the_job(md, config, store), key=key)
    assert (report.kind, report.precision) == ("llm", "int4")
    assert report.digest
    _volume(cluster, namespace, store)
    try:
        state = RenderState(
            serving_key=key, serving_digest=report.digest, wanted_built=True, artifact=report
        )
        objects = [o for o in render(md, config, state) if o["kind"] in ("Deployment", "Service")]
        assert [o["kind"] for o in objects] == ["Deployment", "Service"]
        for obj in objects:
            obj["metadata"].pop("ownerReferences", None)  # no ModelDeployment object here
        listed = {"apiVersion": "v1", "kind": "List", "items": objects}
        real.kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(listed))

        def ready_pod() -> dict[str, Any] | None:
            pods = real.get(
                cluster, "pods", "-n", namespace, "-l", "app.kubernetes.io/component=server"
            )["items"]
            statuses = pods[0]["status"].get("containerStatuses", []) if pods else []
            return pods[0] if statuses and all(s["ready"] for s in statuses) else None

        pod = wait_until("the LLM server pod", ready_pod, timeout=600, node=cluster.node)
        (container,) = pod["spec"]["containers"]
        assert container["image"] == cluster.images.server
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        # sized by the KV-cache formula from the conversion's report, not the defaults
        memory = server_memory(md.spec, report)
        assert memory is not None
        assert container["resources"]["requests"]["memory"] == to_quantity(memory.request)
        assert container["resources"]["limits"]["memory"] == to_quantity(memory.limit)

        service = real.get(cluster, "service", "tinyllm", "-n", namespace)
        (port,) = [p["port"] for p in service["spec"]["ports"]]
        client = openai.OpenAI(
            base_url=f"http://{service['spec']['clusterIP']}:{port}/v1",
            api_key="unused",
            max_retries=0,
            timeout=120,
        )
        assert [m.id for m in client.models.list()] == ["tiny-chat"]
        expected, _ = og_greedy(store / report.digest / "genai", PROMPT, NEW_TOKENS)
        answer = client.completions.create(
            model="tiny-chat", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0
        )
        assert answer.choices[0].text == expected
        streamed = client.completions.create(
            model="tiny-chat", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0, stream=True
        )
        assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == expected
        chat = client.chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=8,
            temperature=0,
        )
        assert chat.usage is not None
        assert chat.usage.completion_tokens > 0

        # the memory limit of the KV-cache formula held: no restart (an OOM kill restarts)
        again = real.get(cluster, "pod", pod["metadata"]["name"], "-n", namespace)
        assert [s["restartCount"] for s in again["status"]["containerStatuses"]] == [0]
        logs = real.kubectl(cluster, "logs", "-n", namespace, pod["metadata"]["name"])
        assert "serving model 'tiny-chat'" in logs, logs[-2000:]
    except BaseException:
        print(real.kubectl(cluster, "get", "all,events", "-n", namespace, check=False)[-6000:])
        raise
    finally:
        real.kubectl(cluster, "delete", "namespace", namespace, "--wait=false", check=False)
        real.kubectl(cluster, "delete", "pv", f"llm-{namespace}", "--wait=false", check=False)
        shutil.rmtree(tmp_path / "sources", ignore_errors=True)
