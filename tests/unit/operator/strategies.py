"""Hypothesis strategies for valid ModelDeployment manifests (as parsed YAML), covering
every spec field, and for the reconciler's `RenderState`."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ondeck_operator.api.fields import Format, OptimizationLevel, Quantize, TensorDType
from ondeck_operator.render.manifests import RenderState

Doc = dict[str, Any]

dns_label = st.from_regex(r"\A[a-z]([-a-z0-9]{0,20}[a-z0-9])?\Z")
long_dns_label = st.from_regex(r"\A[a-z]([-a-z0-9]{0,61}[a-z0-9])?\Z")
subdomain = st.lists(dns_label, min_size=1, max_size=3).map(".".join)
label_value = st.from_regex(r"\A(([A-Za-z0-9][-A-Za-z0-9_.]{0,20})?[A-Za-z0-9])?\Z")
label_key = st.builds(
    lambda prefix, name: f"{prefix}/{name}" if prefix else name,
    st.none() | subdomain.filter(lambda s: not s.startswith(("ondeck.io", "app.kubernetes.io"))),
    st.from_regex(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?\Z"),
)
path_text = st.from_regex(r"\A[a-zA-Z0-9_.-]{1,12}(/[a-zA-Z0-9_.-]{1,12}){0,2}\Z")
quantity = st.one_of(
    st.integers(1, 64),
    st.sampled_from(["100m", "250m", "1", "2", "1.5", "512Mi", "1Gi", "2G", "10Gi"]),
)
hex_key = st.from_regex(r"\A[0-9a-f]{16}\Z")


def uri(claim: bool = True) -> st.SearchStrategy[str]:
    schemes = ["s3://bucket/", "https://models.example.com/", "gs://b/", "hf://org/repo/",
               "file:///models/"]  # fmt: skip
    plain = path_text.map(lambda p: "/models/" + p)
    scheme = st.builds(lambda s, p: s + p, st.sampled_from(schemes), path_text)
    pvc = st.builds(lambda c, p: f"pvc://{c}/{p}", dns_label, path_text)
    return st.one_of(scheme, plain, pvc) if claim else st.one_of(scheme, plain)


inputs = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.from_regex(r"\A[a-zA-Z_][a-zA-Z0-9_.]{0,10}\Z"),
            "dtype": st.sampled_from([d.value for d in TensorDType]),
            "shape": st.lists(st.just(-1) | st.integers(1, 64), min_size=1, max_size=4),
        }
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda i: i["name"],
)


@st.composite
def model(draw: st.DrawFn) -> Doc:
    doc: Doc = {"uri": draw(uri())}
    fmt = draw(st.sampled_from([None, *(f.value for f in Format)]))
    if fmt:
        doc["format"] = fmt
    if fmt == "pytorch" or draw(st.booleans()):
        doc["inputs"] = draw(inputs)
    if draw(st.booleans()):
        doc["sha256"] = draw(st.from_regex(r"\A[0-9a-f]{64}\Z"))
    if draw(st.booleans()):
        doc["credentialsSecret"] = draw(subdomain)
    if draw(st.booleans()):
        doc["s3EndpointURL"] = "http://" + draw(subdomain) + ":9000"
    if draw(st.booleans()):
        doc["allowUnsafePickle"] = draw(st.booleans())
    return doc


@st.composite
def optimize(draw: st.DrawFn) -> Doc:
    doc: Doc = {}
    quantize = draw(st.sampled_from([None, *(q.value for q in Quantize)]))
    if quantize:
        doc["quantize"] = quantize
    if quantize == "int8-static" or draw(st.booleans()):
        doc["calibration"] = draw(uri())
    if draw(st.booleans()):
        doc["level"] = draw(st.sampled_from([level.value for level in OptimizationLevel]))
    if draw(st.booleans()):
        doc["validation"] = {
            "samples": draw(st.integers(1, 10000)),
            "minCosine": draw(st.floats(0, 1)),
            "maxTop1Disagreement": draw(st.floats(0, 1)),
        }
    if draw(st.booleans()):
        doc["timeoutSeconds"] = draw(st.integers(60, 86400))
    if draw(st.booleans()):
        doc["resources"] = {"requests": {"cpu": draw(quantity)}, "limits": {"memory": "4Gi"}}
    return doc


env = st.lists(
    st.one_of(
        st.fixed_dictionaries({"name": st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,10}\Z"),
                               "value": st.text(max_size=10)}),
        st.fixed_dictionaries({"name": st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,10}\Z"),
                               "valueFrom": st.fixed_dictionaries(
                                   {"secretKeyRef": st.fixed_dictionaries(
                                       {"name": subdomain, "key": dns_label})})}),
    ),
    max_size=3,
    unique_by=lambda e: e["name"],
)  # fmt: skip

toleration = st.one_of(
    st.fixed_dictionaries({"operator": st.just("Exists")}),
    st.fixed_dictionaries(
        {
            "key": label_key,
            "operator": st.just("Equal"),
            "value": label_value,
            "effect": st.sampled_from(["NoSchedule", "PreferNoSchedule"]),
        }
    ),
    st.fixed_dictionaries(
        {
            "key": label_key,
            "operator": st.just("Exists"),
            "effect": st.just("NoExecute"),
            "tolerationSeconds": st.integers(0, 3600),
        }
    ),
)


@st.composite
def server(draw: st.DrawFn, *, needs_cpu: bool) -> Doc:
    doc: Doc = {}
    maybe = st.booleans()
    if draw(maybe):
        doc["image"] = "registry.example.com/" + draw(dns_label) + ":1"
    if draw(maybe):
        doc["imagePullPolicy"] = draw(st.sampled_from(["Always", "IfNotPresent", "Never"]))
    if draw(maybe):
        doc["imagePullSecrets"] = draw(st.lists(subdomain, max_size=2, unique=True))
    if draw(maybe):
        doc["replicas"] = draw(st.integers(0, 5))
    if draw(maybe) or needs_cpu:
        requests = {"memory": draw(quantity)}
        if needs_cpu or draw(maybe):
            requests["cpu"] = draw(quantity)
        doc["resources"] = {"requests": requests}
        if draw(maybe):
            doc["resources"]["limits"] = {"memory": draw(quantity)}
    if draw(maybe):
        doc["batching"] = {"maxBatchSize": draw(st.integers(1, 4096)),
                           "maxDelayMs": draw(st.floats(0, 1000))}  # fmt: skip
    for key, strategy in (
        ("threads", st.integers(1, 256)),
        ("maxBodyBytes", st.integers(1024, 2**31)),
        ("maxQueue", st.integers(1, 10000)),
        ("drainTimeoutSeconds", st.integers(0, 3600)),
        ("auth", st.fixed_dictionaries({"secretName": subdomain}, optional={"key": dns_label})),
        ("env", env),
        ("nodeSelector", st.dictionaries(label_key, label_value, max_size=3)),
        ("tolerations", st.lists(toleration, max_size=2)),
        ("serviceAccountName", subdomain),
        ("podAnnotations", st.dictionaries(label_key, st.text(max_size=20), max_size=3)),
        ("podLabels", st.dictionaries(label_key, label_value, max_size=3)),
    ):
        if draw(maybe):
            doc[key] = draw(strategy)
    if draw(maybe):
        doc["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [
                            {"key": draw(label_key), "operator": "In",
                             "values": [draw(label_value)]}]}
                    ]
                }
            }
        }  # fmt: skip
    return doc


@st.composite
def autoscaling(draw: st.DrawFn) -> Doc:
    low = draw(st.integers(1, 10))
    doc: Doc = {"minReplicas": low, "maxReplicas": draw(st.integers(low, 20))}
    if draw(st.booleans()):
        doc["targetCPUUtilization"] = draw(st.integers(1, 100))
    if draw(st.booleans()):
        doc["metric"] = {"name": draw(dns_label), "targetAverageValue": draw(quantity)}
    return doc


@st.composite
def ingress(draw: st.DrawFn) -> Doc:
    doc: Doc = {}
    if draw(st.booleans()):
        doc["host"] = draw(st.sampled_from(["", "*."])) + draw(subdomain)
        if draw(st.booleans()):
            doc["tls"] = {"secretName": draw(subdomain)}
    if draw(st.booleans()):
        doc["path"] = "/" + draw(st.sampled_from(["", "v2", "models/x"]))
    if draw(st.booleans()):
        doc["pathType"] = draw(st.sampled_from(["Prefix", "Exact", "ImplementationSpecific"]))
    if draw(st.booleans()):
        doc["className"] = draw(dns_label)
    if draw(st.booleans()):
        doc["annotations"] = draw(st.dictionaries(label_key, st.text(max_size=10), max_size=2))
    return doc


@st.composite
def artifacts(draw: st.DrawFn) -> Doc:
    choice = draw(st.sampled_from(["none", "pvc", "existing", "object-store"]))
    if choice == "existing":
        return {"existingClaim": draw(subdomain)}
    if choice == "object-store":
        bucket = draw(st.from_regex(r"[a-z0-9][-a-z0-9.]{1,20}[a-z0-9]", fullmatch=True))
        prefix = draw(st.sampled_from(["", "/", "/models", "/team-a/artifacts/"]))
        store: Doc = {"uri": f"s3://{bucket}{prefix}"}
        if draw(st.booleans()):
            store["credentialsSecret"] = draw(subdomain)
        if draw(st.booleans()):
            store["s3EndpointURL"] = "http://minio.storage:9000"
        return store
    if choice == "pvc":
        pvc: Doc = {}
        if draw(st.booleans()):
            pvc["size"] = draw(quantity)
        if draw(st.booleans()):
            pvc["storageClassName"] = draw(dns_label)
        if draw(st.booleans()):
            pvc["accessModes"] = draw(
                st.lists(st.sampled_from(["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"]),
                         min_size=1, max_size=2, unique=True)
            )  # fmt: skip
        return {"pvc": pvc}
    return {}


@st.composite
def llm(draw: st.DrawFn) -> Doc:
    doc: Doc = {}
    if draw(st.booleans()):
        doc["maxContextLength"] = draw(st.integers(16, 1 << 20))
    if draw(st.booleans()):
        doc["maxBatchSize"] = draw(st.integers(1, 4096))
    if draw(st.booleans()):
        doc["servedModelName"] = draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z"))
    return doc


@st.composite
def spec(draw: st.DrawFn) -> Doc:
    auto = draw(st.none() | autoscaling())
    doc: Doc = {"model": draw(model())}
    if draw(st.booleans()):
        doc["optimize"] = draw(optimize())
    srv = draw(server(needs_cpu=auto is not None))
    if srv:
        doc["server"] = srv
    if auto is not None:
        doc["autoscaling"] = auto
    if doc["model"].get("format") == "hf-causal-lm" and draw(st.booleans()):
        doc["llm"] = draw(llm())
    if draw(st.booleans()):
        doc["service"] = {
            "type": draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"])),
            "port": draw(st.integers(1, 65535)),
        }
    if draw(st.booleans()):
        doc["ingress"] = draw(ingress())
    arts = draw(artifacts())
    if arts or draw(st.booleans()):
        doc["artifacts"] = arts
    return doc


@st.composite
def manifests(draw: st.DrawFn) -> Doc:
    metadata: Doc = {"name": draw(long_dns_label)}
    if draw(st.booleans()):
        metadata["namespace"] = draw(long_dns_label)
    if draw(st.booleans()):
        metadata["uid"] = str(draw(st.uuids()))
    return {
        "apiVersion": "ondeck.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": metadata,
        "spec": draw(spec()),
    }


render_states = st.builds(
    RenderState,
    serving_key=st.none() | hex_key,
    serving_digest=st.none() | st.from_regex(r"\A[0-9a-f]{64}\Z"),
    wanted_built=st.booleans(),
)
