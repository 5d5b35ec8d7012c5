#!/usr/bin/env bash
# Builds the node binaries (kubelet, kube-proxy) and kube-scheduler from the k8s.io/kubernetes
# Go module, like scripts/build-control-plane.sh builds the API server, into a cache outside
# the clone keyed by version, so reruns skip the build. The e2e tests' real node
# (tests/e2e/node.py) runs them next to the control plane.
# Prints the folder holding the binaries on stdout.
set -euo pipefail

version="${ONDECK_K8S_VERSION:-1.36.3}"
cache="${ONDECK_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ondeck/node}"
out="$cache/v$version"
binaries=(kubelet kube-proxy kube-scheduler)

have=1
for b in "${binaries[@]}"; do [[ -x "$out/$b" ]] || have=0; done
if (( have )); then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "build-node: go is required (https://go.dev/dl)" >&2; exit 1; }

# 1.36's kubelet also needs k8s.io/cri-streaming; unpublished ones are dropped below.
staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice
  externaljwt kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl
  kubelet metrics mount-utils pod-security-admission sample-apiserver sample-cli-plugin
  sample-controller streaming)
minor="v0.${version#1.}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init ondeck.local/node >/dev/null 2>&1
{
  echo "require k8s.io/kubernetes v$version"
  echo "replace ("
  for m in "${staging[@]}"; do echo "  k8s.io/$m => k8s.io/$m $minor"; done
  echo ")"
} >>go.mod
{
  echo "//go:build tools"
  echo
  echo "package tools"
  echo
  echo "import ("
  for b in "${binaries[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$b\""; done
  echo ")"
} >tools.go
for m in "${staging[@]}"; do
  if ! go list -m "k8s.io/$m@$minor" >/dev/null 2>&1; then
    sed -i "\#k8s.io/$m => #d" go.mod
  fi
done
go mod tidy >&2
mkdir -p "$out.tmp"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$version" \
  -o "$out.tmp/" "${binaries[@]/#/k8s.io/kubernetes/cmd/}" >&2
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
