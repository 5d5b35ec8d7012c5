#!/usr/bin/env bash
# Builds ondeck's images from the repo's Dockerfiles on a local base image, with no registry.
#
#   bash scripts/build-images.sh [--tag TAG]      (default tag: dev)
#
# 1. The base: a Debian bookworm rootfs made with debootstrap (Python 3.11 + venv + pip),
#    with this machine's CA bundle in it (pip inside a build reaches the package index
#    through it), imported as `ondeck-base:bookworm-<hash>`. Its tarball is cached outside
#    the clone ($ONDECK_IMAGE_CACHE, default ~/.cache/ondeck/images) and reused; the hash
#    covers the package list and the CA bundle, so a change makes a new one.
# 2. The images, each from its Dockerfile unchanged except the base
#    (`--build-arg PYTHON_IMAGE=<base>`), built with `--network host`:
#      ondeck-server:TAG      Dockerfile.server     (serving; ONNX-only conversion)
#      ondeck-converter:TAG   Dockerfile.converter  (the conversion Job; PYTORCH=0 by default
#                                                    here: set ONDECK_CONVERTER_PYTORCH=1 to
#                                                    add torch from PyPI, several GB of CUDA)
#      ondeck-operator:TAG    Dockerfile.operator
#      ondeck-pause:TAG       the pod sandbox image of the e2e tests' node (sleeps)
#    The legacy builder is used (DOCKER_BUILDKIT=0): BuildKit would fetch its Dockerfile
#    frontend from a registry. Docker's layer cache makes an unchanged rebuild take seconds.
# Prints one line per image on stdout: `<name>:<tag> <size in bytes>`.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=dev
if [[ "${1:-}" == "--tag" ]]; then
  tag="${2:?--tag needs a value}"
fi

log() { echo "build-images: $*" >&2; }

command -v docker >/dev/null || { log "docker is required (bash scripts/setup.sh --dev)"; exit 1; }
docker info >/dev/null 2>&1 || { log "the docker daemon does not answer (bash scripts/setup.sh --dev starts it)"; exit 1; }

cache="${ONDECK_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ondeck/images}"
suite=bookworm
packages=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
ca_bundle=/etc/ssl/certs/ca-certificates.crt
key="$( { echo "$suite $packages"; cat "$ca_bundle" 2>/dev/null || true; } | sha256sum | cut -c1-12)"
base="ondeck-base:$suite-$key"
tarball="$cache/base-$suite-$key.tar"

if ! docker image inspect "$base" >/dev/null 2>&1; then
  if [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null || { log "debootstrap is required (apt-get install debootstrap)"; exit 1; }
    [[ "$(id -u)" == 0 ]] || { log "debootstrap needs root"; exit 1; }
    mkdir -p "$cache"
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' EXIT
    log "debootstrap $suite into $root (about a minute)"
    if ! debootstrap --variant=minbase --include="$packages" "$suite" "$root" \
      "${ONDECK_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$cache/debootstrap.log" 2>&1; then
      tail -n 30 "$cache/debootstrap.log" >&2
      log "debootstrap failed (whole log: $cache/debootstrap.log)"
      exit 1
    fi
    if [[ -s "$ca_bundle" ]]; then
      cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . >"$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    trap - EXIT
  fi
  log "importing $tarball as $base"
  docker import "$tarball" "$base" >/dev/null
fi

build() {
  local name="$1" dockerfile="$2"
  shift 2
  local started=$SECONDS
  log "building $name:$tag from $dockerfile"
  local out
  out="$(mktemp)"
  if ! DOCKER_BUILDKIT=0 docker build --network host --file "$dockerfile" \
    --build-arg "PYTHON_IMAGE=$base" "$@" --tag "$name:$tag" . >"$out" 2>&1; then
    tail -n 60 "$out" >&2
    rm -f "$out"
    log "building $name:$tag failed"
    exit 1
  fi
  rm -f "$out"
  log "built $name:$tag in $((SECONDS - started)) s"
}

build ondeck-server Dockerfile.server
build ondeck-converter Dockerfile.converter --build-arg "PYTORCH=${ONDECK_CONVERTER_PYTORCH:-0}"
build ondeck-operator Dockerfile.operator
# The pod sandbox ("pause") image of the e2e tests' node: no registry to pull one from.
printf 'FROM %s\nCMD ["sleep", "infinity"]\n' "$base" \
  | DOCKER_BUILDKIT=0 docker build --quiet --tag "ondeck-pause:$tag" - >/dev/null

for name in ondeck-server ondeck-converter ondeck-operator ondeck-pause; do
  echo "$name:$tag $(docker image inspect --format '{{.Size}}' "$name:$tag")"
done
