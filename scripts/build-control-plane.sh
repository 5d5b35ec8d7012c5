#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager from the k8s.io/kubernetes Go module
# (the envtest pattern) into a cache outside the clone, keyed by version, so reruns skip
# the build. k8s.io/kubernetes replaces its staging modules with local paths, so a small
# wrapper module requires it and pins every k8s.io/* staging module to the matching v0.x.
# Prints the folder holding the binaries on stdout.
set -euo pipefail

version="${ONDECK_K8S_VERSION:-1.36.3}"
cache="${ONDECK_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ondeck/control-plane}"
out="$cache/v$version"

if [[ -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" ]]; then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "build-control-plane: go is required (https://go.dev/dl)" >&2; exit 1; }

staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
  kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet
  metrics mount-utils pod-security-admission sample-apiserver sample-cli-plugin
  sample-controller streaming)
minor="v0.${version#1.}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init ondeck.local/control-plane >/dev/null 2>&1
{
  echo "require k8s.io/kubernetes v$version"
  echo "replace ("
  for m in "${staging[@]}"; do echo "  k8s.io/$m => k8s.io/$m $minor"; done
  echo ")"
} >>go.mod
cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
GO
# Drop replace lines for staging modules this release does not publish.
for m in "${staging[@]}"; do
  if ! go list -m "k8s.io/$m@$minor" >/dev/null 2>&1; then
    sed -i "\#k8s.io/$m => #d" go.mod
  fi
done
go mod tidy >&2
mkdir -p "$out.tmp"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$version" \
  -o "$out.tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager >&2
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
