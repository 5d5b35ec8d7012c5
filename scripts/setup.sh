#!/usr/bin/env bash
# Sets up a fresh machine for ondeck in ./.venv.
#   bash scripts/setup.sh         what `ondeck run` needs (server + scikit-learn converter)
#   bash scripts/setup.sh --dev   everything: all extras, test tools, Debian tools (etcd-server,
#                                 lua5.4, shellcheck, docker.io, containerd, CNI plugins, iptables,
#                                 conntrack, debootstrap; dockerd is started when not running),
#                                 the Kubernetes control plane and node binaries for e2e tests,
#                                 Prometheus (the rollout analysis test queries a real one)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

# Starts dockerd when it is installed and not answering (machines without systemd, like CI
# containers); its log goes to /var/log/ondeck-dockerd.log. A running daemon is left alone.
start_dockerd() {
  command -v dockerd >/dev/null || return 0
  docker info >/dev/null 2>&1 && return 0
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl start docker || true
  else
    setsid dockerd >>/var/log/ondeck-dockerd.log 2>&1 </dev/null &
  fi
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "setup: dockerd did not start (see /var/log/ondeck-dockerd.log)" >&2
  return 1
}

python="${PYTHON:-python3}"
"$python" -c 'import sys; assert sys.version_info >= (3, 11), "ondeck needs Python 3.11+"' \
  || { echo "setup: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip

if (( dev )); then
  if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    missing=()
    # The images and the e2e tests' real node: Docker to build and run the images,
    # containerd/runc, CNI plugins, iptables and conntrack for the node, debootstrap for
    # the local base image.
    for pkg in etcd-server lua5.4 shellcheck docker.io containerd runc \
      containernetworking-plugins iptables conntrack debootstrap; do
      dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if (( ${#missing[@]} )); then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    start_dockerd
  fi
  .venv/bin/python -m pip install -q -e ".[dev]"
  bash scripts/build-control-plane.sh >/dev/null
  bash scripts/build-node.sh >/dev/null
  bash scripts/build-prometheus.sh >/dev/null
else
  .venv/bin/python -m pip install -q -e ".[server,sklearn]"
fi
echo "setup: ready (.venv)" >&2
