#!/usr/bin/env bash
# End-to-end check of ondeck on a throwaway kind cluster, for machines with Docker:
#   1. create a kind cluster          5. serve a small ONNX model from inside the cluster
#   2. build both images              6. apply a ModelDeployment, wait for condition Ready
#   3. kind load them                 7. port-forward, run one V2 inference with curl
#   4. helm install the operator      8. clean up (the cluster is deleted on exit, always)
#
#   bash scripts/e2e-kind.sh            run everything, delete the cluster at the end
#   bash scripts/e2e-kind.sh --keep     keep the cluster afterwards, to look around
#
# Needs docker (a running engine), kind, kubectl, helm, curl, and the dev environment
# (`bash scripts/setup.sh`) whose Python writes the test model. Settings (environment):
#   ONDECK_KIND_CLUSTER   cluster name             (default ondeck-e2e)
#   ONDECK_IMAGE_TAG      tag of the built images  (default e2e)
#   ONDECK_KIND_TIMEOUT   each wait's timeout      (default 10m)
#   KIND_NODE_IMAGE       kind node image          (default: kind's own)
#
# ondeck's CI cannot run this script: its machines have no Docker engine. CI runs the
# same chart against a real kube-apiserver instead (tests/e2e/test_helm_install.py) and
# checks this script with shellcheck (tests/shipping/test_e2e_kind_script.py).
set -euo pipefail

cd "$(dirname "$0")/.."

cluster="${ONDECK_KIND_CLUSTER:-ondeck-e2e}"
tag="${ONDECK_IMAGE_TAG:-e2e}"
timeout="${ONDECK_KIND_TIMEOUT:-10m}"
python="${PYTHON:-.venv/bin/python}"
operator_ns="ondeck-system"
model_ns="ondeck-e2e"
model="e2e-linear"
keep=0

usage() {
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
}

log() {
  printf '\e[1m[e2e-kind]\e[0m %s\n' "$*" >&2
}

die() {
  printf '[e2e-kind] error: %s\n' "$*" >&2
  exit 1
}

while (($#)); do
  case "$1" in
    --keep) keep=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || die "$tool is not installed (see the header of $0)"
done
docker info >/dev/null 2>&1 || die "the Docker engine is not running"
[[ -x "$python" ]] || die "$python not found: run 'bash scripts/setup.sh' (or set PYTHON)"

work="$(mktemp -d)"
port_forward_pid=""
created=0

cleanup() {
  local status=$?
  if [[ -n "$port_forward_pid" ]]; then
    kill "$port_forward_pid" 2>/dev/null || true
  fi
  if ((status != 0 && created)); then
    log "failed; state of the cluster:"
    kubectl get modeldeployments,jobs,deployments,pods -A -o wide >&2 || true
    kubectl -n "$operator_ns" logs deployment/ondeck --tail=50 >&2 || true
  fi
  if ((created && !keep)); then
    log "deleting kind cluster $cluster"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  elif ((created)); then
    log "kept kind cluster $cluster (delete it with: kind delete cluster --name $cluster)"
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. cluster
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  die "a kind cluster named $cluster exists already; delete it or set ONDECK_KIND_CLUSTER"
fi
log "creating kind cluster $cluster"
create_args=(--name "$cluster" --wait 120s)
if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
  create_args+=(--image "$KIND_NODE_IMAGE")
fi
kind create cluster "${create_args[@]}"
created=1
kubectl config use-context "kind-$cluster" >/dev/null

# 2. and 3. images
log "building ondeck-operator:$tag and ondeck-server:$tag"
docker build --file Dockerfile.operator --tag "ondeck-operator:$tag" .
docker build --file Dockerfile.server --tag "ondeck-server:$tag" .
log "loading the images into the cluster"
kind load docker-image --name "$cluster" "ondeck-operator:$tag" "ondeck-server:$tag"

# 4. operator, in a namespace that enforces Pod Security "restricted"
kubectl create namespace "$operator_ns"
kubectl label namespace "$operator_ns" pod-security.kubernetes.io/enforce=restricted
log "installing the chart"
helm install ondeck charts/ondeck \
  --namespace "$operator_ns" \
  --set image.repository=ondeck-operator \
  --set image.tag="$tag" \
  --set image.pullPolicy=Never \
  --set config.serverImage.repository=ondeck-server \
  --set config.serverImage.tag="$tag" \
  --set config.converterImage.repository= \
  --set config.imagePullPolicy=Never \
  --wait --timeout "$timeout"

# 5. a small ONNX model (4 features -> 3 scores), served over HTTP inside the cluster
#    (ONNX: the server image converts it, so no converter image is built or loaded)
kubectl create namespace "$model_ns"
kubectl label namespace "$model_ns" pod-security.kubernetes.io/enforce=restricted
"$python" - "$work/model.onnx" <<'PY'
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

rng = np.random.default_rng(0)
weight = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "weight")
bias = numpy_helper.from_array(np.zeros(3, dtype=np.float32), "bias")
graph = helper.make_graph(
    [helper.make_node("Gemm", ["input", "weight", "bias"], ["output"])],
    "e2e-linear",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
    [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
    initializer=[weight, bias],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
save(model, sys.argv[1])
PY
sha256="$(sha256sum "$work/model.onnx" | cut -d' ' -f1)"
kubectl -n "$model_ns" create configmap model-files --from-file=model.onnx="$work/model.onnx"
kubectl -n "$model_ns" apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: model-files
spec:
  selector:
    matchLabels: {app: model-files}
  template:
    metadata:
      labels: {app: model-files}
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: http
          image: ondeck-server:$tag
          imagePullPolicy: Never
          command: [python, -m, http.server, "8000", --directory, /models]
          ports: [{name: http, containerPort: 8000}]
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          volumeMounts: [{name: models, mountPath: /models}]
      volumes:
        - name: models
          configMap: {name: model-files}
---
apiVersion: v1
kind: Service
metadata:
  name: model-files
spec:
  selector: {app: model-files}
  ports: [{name: http, port: 8000, targetPort: http}]
EOF
kubectl -n "$model_ns" rollout status deployment/model-files --timeout "$timeout"

# 6. the ModelDeployment
log "applying ModelDeployment $model"
kubectl -n "$model_ns" apply -f - <<EOF
apiVersion: ondeck.io/v1alpha1
kind: ModelDeployment
metadata:
  name: $model
spec:
  model:
    uri: http://model-files.$model_ns.svc:8000/model.onnx
    format: onnx
    sha256: "$sha256"
  optimize:
    level: basic
  server:
    replicas: 1
EOF
log "waiting for $model to be Ready (conversion Job, then the server rollout)"
kubectl -n "$model_ns" wait "modeldeployment/$model" --for=condition=Ready --timeout "$timeout"
kubectl -n "$model_ns" get "modeldeployment/$model" -o wide

# 7. one V2 inference through the Service
port=18080
kubectl -n "$model_ns" port-forward "service/$model" "$port:80" >"$work/port-forward.log" 2>&1 &
port_forward_pid=$!
ready=0
for _ in $(seq 1 60); do
  if curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null; then
    ready=1
    break
  fi
  sleep 1
done
((ready)) || die "the model server did not answer through port-forward: $(cat "$work/port-forward.log")"
log "V2 inference"
response="$(curl -sf -X POST "http://127.0.0.1:$port/v2/models/$model/infer" \
  -H 'Content-Type: application/json' \
  -d '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}')"
printf '%s\n' "$response"
grep -q '"outputs"' <<<"$response" || die "the inference response has no outputs"
log "passed"
