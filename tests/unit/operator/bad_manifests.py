"""Invalid ModelDeployments, one per rule or constraint, with the field the error must
name and words of the message. Used by the pydantic and `ondeck validate` tests; the CEL
rules (`rule=True`) give the very same message from the API server."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .specs import FULL_SPEC, manifest

Doc = dict[str, Any]


@dataclass(frozen=True)
class Bad:
    id: str
    mutate: Callable[[Doc], object]
    field: str
    words: str
    rule: bool = False

    def manifest(self) -> Doc:
        doc = manifest(copy.deepcopy(FULL_SPEC))
        self.mutate(doc)
        return doc


def _spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]
    return spec


def _llm(doc: Doc, **llm: object) -> None:
    """A language model (format hf-causal-lm) with these `spec.llm` settings."""
    _spec(doc)["model"]["format"] = "hf-causal-lm"
    _spec(doc)["llm"] = llm


BAD: tuple[Bad, ...] = (
    # Cross-field rules (CEL in the CRD, model validators in pydantic).
    Bad("min-above-max", lambda d: _spec(d)["autoscaling"].update(minReplicas=9),
        "spec.autoscaling.minReplicas",
        "minReplicas must be less than or equal to maxReplicas", True),
    Bad("int8-static-without-calibration", lambda d: _spec(d)["optimize"].pop("calibration"),
        "spec.optimize.calibration", "quantize int8-static needs calibration", True),
    Bad("int4-settings-without-int4",
        lambda d: _spec(d)["optimize"].update(int4={"blockSize": 16}),
        "spec.optimize.int4", "int4 settings need quantize int4", True),
    Bad("int4-block-size-not-offered",
        lambda d: _spec(d)["optimize"].update(quantize="int4", int4={"blockSize": 48}),
        "spec.optimize.int4.blockSize", "blockSize must be one of 16, 32, 64, 128, 256", True),
    Bad("tls-without-host", lambda d: _spec(d)["ingress"].pop("host"),
        "spec.ingress.tls", "tls needs host", True),
    Bad("pvc-uri-bad-claim", lambda d: _spec(d)["model"].update(uri="pvc://Bad_Claim/m.onnx"),
        "spec.model.uri", "a pvc:// uri must be pvc://<claim>/<path>", True),
    Bad("pvc-uri-no-path", lambda d: _spec(d)["model"].update(uri="pvc://claim"),
        "spec.model.uri", "a pvc:// uri must be pvc://<claim>/<path>", True),
    Bad("pvc-calibration-bad-claim",
        lambda d: _spec(d)["optimize"].update(calibration="pvc://UPPER/c.npz"),
        "spec.optimize.calibration", "a pvc:// calibration must be", True),
    Bad("pvc-validation-data-bad-claim",
        lambda d: _spec(d)["optimize"].update(validation={"data": "pvc://UPPER/v.npz"}),
        "spec.optimize.validation.data", "a pvc:// validation data URI must be", True),
    Bad("pytorch-without-inputs", lambda d: _spec(d)["model"].update(format="pytorch"),
        "spec.model.inputs", "format pytorch needs inputs", True),
    Bad("duplicate-input-names",
        lambda d: _spec(d)["model"].update(
            inputs=[{"name": "x", "dtype": "float32", "shape": [1]}] * 2),
        "spec.model.inputs", "inputs names must be unique", True),
    Bad("input-dimension-zero",
        lambda d: _spec(d)["model"].update(
            inputs=[{"name": "x", "dtype": "float32", "shape": [-1, 0]}]),
        "spec.model.inputs[0].shape", "shape dimensions must be positive sizes or -1", True),
    Bad("input-without-dimensions",
        lambda d: _spec(d)["model"].update(inputs=[{"name": "x", "dtype": "float32", "shape": []}]),
        "spec.model.inputs[0].shape", "at least 1 item"),
    Bad("reserved-pod-label",
        lambda d: _spec(d)["server"]["podLabels"].update({"ondeck.io/model-deployment": "z"}),
        "spec.server.podLabels", "podLabels may not use the reserved prefixes", True),
    Bad("pod-label-bad-key", lambda d: _spec(d)["server"]["podLabels"].update({"bad key": "z"}),
        "spec.server.podLabels", "podLabels keys must be", True),
    Bad("pod-annotation-bad-key",
        lambda d: _spec(d)["server"]["podAnnotations"].update({"-x": "z"}),
        "spec.server.podAnnotations", "podAnnotations keys must be", True),
    Bad("node-selector-bad-key",
        lambda d: _spec(d)["server"]["nodeSelector"].update({"a/b/c": "z"}),
        "spec.server.nodeSelector", "nodeSelector keys must be", True),
    Bad("service-annotation-bad-key",
        lambda d: _spec(d)["service"]["annotations"].update({"x" * 64: "z"}),
        "spec.service.annotations", "annotations keys must be", True),
    Bad("ingress-annotation-bad-key",
        lambda d: _spec(d)["ingress"]["annotations"].update({"a b": "z"}),
        "spec.ingress.annotations", "annotations keys must be", True),
    Bad("env-value-and-value-from",
        lambda d: _spec(d)["server"]["env"].append(
            {"name": "Z", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
        "spec.server.env[2].valueFrom", "set value or valueFrom, not both", True),
    Bad("env-value-from-empty",
        lambda d: _spec(d)["server"]["env"].append({"name": "Z", "valueFrom": {}}),
        "spec.server.env[2].valueFrom.secretKeyRef",
        "set exactly one of secretKeyRef and configMapKeyRef", True),
    Bad("env-value-from-both",
        lambda d: _spec(d)["server"]["env"].append({"name": "Z", "valueFrom": {
            "secretKeyRef": {"name": "s", "key": "k"},
            "configMapKeyRef": {"name": "c", "key": "k"}}}),
        "spec.server.env[2].valueFrom.secretKeyRef",
        "set exactly one of secretKeyRef and configMapKeyRef", True),
    Bad("env-duplicate-names",
        lambda d: _spec(d)["server"]["env"].append({"name": "LOG_LEVEL", "value": "x"}),
        "spec.server.env", "env names must be unique", True),
    Bad("pvc-and-existing-claim", lambda d: _spec(d)["artifacts"].update(existingClaim="shared"),
        "spec.artifacts.existingClaim", "set pvc or existingClaim, not both", True),
    Bad("object-store-and-pvc", lambda d: _spec(d)["artifacts"].update(uri="s3://bucket/ondeck"),
        "spec.artifacts.uri",
        "set uri (an object store) or pvc/existingClaim (a claim), not both", True),
    Bad("store-credentials-without-uri",
        lambda d: _spec(d)["artifacts"].update(credentialsSecret="store-creds"),
        "spec.artifacts.credentialsSecret",
        "credentialsSecret and s3EndpointURL apply to an object store: set uri", True),
    Bad("autoscaling-without-cpu-request",
        lambda d: _spec(d)["server"]["resources"]["requests"].pop("cpu"),
        "spec.autoscaling", "autoscaling needs server.resources.requests.cpu", True),
    Bad("toleration-exists-with-value",
        lambda d: _spec(d)["server"]["tolerations"][0].update(operator="Exists"),
        "spec.server.tolerations[0].value", "value must be empty when operator is Exists", True),
    Bad("toleration-no-key-equal",
        lambda d: _spec(d)["server"]["tolerations"][0].pop("key"),
        "spec.server.tolerations[0].operator", "operator must be Exists when key is empty", True),
    Bad("toleration-seconds-without-no-execute",
        lambda d: _spec(d)["server"]["tolerations"][0].update(tolerationSeconds=30),
        "spec.server.tolerations[0].tolerationSeconds",
        "tolerationSeconds needs effect NoExecute", True),
    Bad("llm-without-hf-causal-lm", lambda d: _spec(d).update(llm={"maxContextLength": 512}),
        "spec.llm", "llm settings need model.format hf-causal-lm", True),
    Bad("requests-waiting-without-hf-causal-lm",
        lambda d: _spec(d)["autoscaling"].update(targetRequestsWaiting="2"),
        "spec.autoscaling", "targetRequestsWaiting needs model.format hf-causal-lm", True),
    Bad("name-not-dns-1035", lambda d: d["metadata"].update(name="1-iris"),
        "metadata.name", "is not a DNS-1035 label"),
    # Field constraints (the CRD's OpenAPI schema, pydantic field types).
    Bad("unknown-field", lambda d: _spec(d)["server"].update(replica=2),
        "spec.server.replica", "unknown field"),
    Bad("unknown-top-level-field", lambda d: d.update(specs={}),
        "specs", "unknown field"),
    Bad("bad-model-size", lambda d: _spec(d)["model"].update(size="2GB"),
        "spec.model.size", "is not a Kubernetes quantity"),
    Bad("bad-requests-waiting", lambda d: _llm(d) or _spec(d)["autoscaling"].update(
        targetRequestsWaiting="two"),
        "spec.autoscaling.targetRequestsWaiting", "is not a Kubernetes quantity"),
    Bad("bad-quantity", lambda d: _spec(d)["server"]["resources"]["limits"].update(memory="2GB"),
        "spec.server.resources.limits.memory", "is not a Kubernetes quantity"),
    Bad("negative-replicas", lambda d: _spec(d)["server"].update(replicas=-1),
        "spec.server.replicas", "greater than or equal to 0"),
    Bad("unknown-quantize", lambda d: _spec(d)["optimize"].update(quantize="int2"),
        "spec.optimize.quantize", "'none', 'int8', 'int8-static', 'fp16', 'int4' or 'auto'"),
    Bad("unknown-format", lambda d: _spec(d)["model"].update(format="tensorflow"),
        "spec.model.format", "'onnx', 'pytorch', 'sklearn' or 'hf-causal-lm'"),
    Bad("min-cosine-above-one",
        lambda d: _spec(d)["optimize"]["validation"].update(minCosine=1.5),
        "spec.optimize.validation.minCosine", "less than or equal to 1"),
    Bad("object-store-not-s3", lambda d: _spec(d).update(artifacts={"uri": "gs://bucket/x"}),
        "spec.artifacts.uri", "is not s3://<bucket>/<prefix>"),
    Bad("sha256-upper-case", lambda d: _spec(d)["model"].update(sha256="A" * 64),
        "spec.model.sha256", "is not 64 lower-case hexadecimal digits"),
    Bad("model-without-uri", lambda d: _spec(d)["model"].pop("uri"),
        "spec.model.uri", "required"),
    Bad("uri-unknown-scheme", lambda d: _spec(d)["model"].update(uri="ftp://host/m.onnx"),
        "spec.model.uri", "is not a file://, http(s)://, s3://, gs://, hf:// or pvc:// URI"),
    Bad("ingress-path-relative", lambda d: _spec(d)["ingress"].update(path="v2"),
        "spec.ingress.path", "is not a path starting with '/'"),
    Bad("ingress-host-upper-case", lambda d: _spec(d)["ingress"].update(host="Iris.Example.com"),
        "spec.ingress.host", "is not a lower-case DNS host name"),
    Bad("service-port-zero", lambda d: _spec(d)["service"].update(port=0),
        "spec.service.port", "greater than or equal to 1"),
    Bad("batch-size-zero", lambda d: _spec(d)["server"]["batching"].update(maxBatchSize=0),
        "spec.server.batching.maxBatchSize", "greater than or equal to 1"),
    Bad("llm-context-too-short", lambda d: _llm(d, maxContextLength=8),
        "spec.llm.maxContextLength", "greater than or equal to 16"),
    Bad("llm-context-too-long", lambda d: _llm(d, maxContextLength=(1 << 20) + 1),
        "spec.llm.maxContextLength", "less than or equal to 1048576"),
    Bad("llm-batch-size-zero", lambda d: _llm(d, maxBatchSize=0),
        "spec.llm.maxBatchSize", "greater than or equal to 1"),
    Bad("llm-batch-size-too-big", lambda d: _llm(d, maxBatchSize=4097),
        "spec.llm.maxBatchSize", "less than or equal to 4096"),
    Bad("llm-served-name-with-slash", lambda d: _llm(d, servedModelName="org/tiny"),
        "spec.llm.servedModelName", "is not a model name"),
    Bad("llm-served-name-too-long", lambda d: _llm(d, servedModelName="m" * 129),
        "spec.llm.servedModelName", "at most 128 characters"),
    Bad("pod-label-value-too-long", lambda d: _spec(d)["server"]["podLabels"].update(team="x" * 64),
        "spec.server.podLabels.team", "at most 63 characters"),
    Bad("credentials-secret-bad-name",
        lambda d: _spec(d)["model"].update(credentialsSecret="S3_Creds"),
        "spec.model.credentialsSecret", "is not a DNS-1123 subdomain"),
    Bad("max-replicas-missing", lambda d: _spec(d)["autoscaling"].pop("maxReplicas"),
        "spec.autoscaling.maxReplicas", "required"),
    Bad("replicas-not-a-number", lambda d: _spec(d)["server"].update(replicas="two"),
        "spec.server.replicas", "valid integer"),
    Bad("wrong-api-version", lambda d: d.update(apiVersion="ondeck.io/v1"),
        "apiVersion", "'ondeck.io/v1alpha1'"),
    Bad("missing-spec", lambda d: d.pop("spec"), "spec", "required"),
)  # fmt: skip
