#!/usr/bin/env bash
# Sets up a fresh machine for ondeck in ./.venv.
#   bash scripts/setup.sh         what `ondeck run` needs (server + scikit-learn converter)
#   bash scripts/setup.sh --dev   everything: all extras, test tools, Debian tools (etcd-server,
#                                 lua5.4, shellcheck) and the Kubernetes control plane for e2e tests
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

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
    for pkg in etcd-server lua5.4 shellcheck; do
      dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if (( ${#missing[@]} )); then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
  fi
  .venv/bin/python -m pip install -q -e ".[dev]"
  bash scripts/build-control-plane.sh >/dev/null
else
  .venv/bin/python -m pip install -q -e ".[server,sklearn]"
fi
echo "setup: ready (.venv)" >&2
