#!/usr/bin/env bash
# Builds the Prometheus server the rollout tests query (tests/e2e/test_rollout_prometheus.py)
# from its Go module into ~/.cache/ondeck/tools/prometheus (or $ONDECK_TOOLS), unless it is
# there already; prints the binary's path. Prometheus 3.x is tagged v0.3xx.y as a Go module
# (v0.316.0 is Prometheus 3.16). The web UI's assets are not embedded: the HTTP API, which
# is what the operator uses, works without them. Takes ~15-20 minutes on 2 busy cores.
set -euo pipefail
version="${ONDECK_PROMETHEUS_MODULE_VERSION:-v0.316.0}"
tools="${ONDECK_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/ondeck/tools}"
if [[ -x "$tools/prometheus" ]]; then
  echo "$tools/prometheus"
  exit 0
fi
command -v go >/dev/null || { echo "build-prometheus: needs go (https://go.dev/dl)" >&2; exit 1; }
mkdir -p "$tools"
GOBIN="$tools" GOFLAGS=-mod=mod go install "github.com/prometheus/prometheus/cmd/prometheus@$version" >&2
echo "$tools/prometheus"
