#!/usr/bin/env bash
# The quality gates CI runs before the tests: ruff check, ruff format --check,
# mypy --strict and the import-linter contracts. Runs all four, reports each, and exits 1
# when any failed. Needs the dev venv (bash scripts/setup.sh --dev).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
failed=0
gate() {
  local name=$1
  shift
  echo "gates: $name" >&2
  if ! "$@"; then
    echo "gates: FAILED: $name" >&2
    failed=1
  fi
}
gate "ruff check" .venv/bin/ruff check .
gate "ruff format --check" .venv/bin/ruff format --check .
gate "mypy --strict" .venv/bin/mypy --strict operator server tests/contract
gate "lint-imports" .venv/bin/lint-imports --no-cache
if (( failed )); then
  echo "gates: a quality gate failed (see above); CONTRIBUTING.md says how to run each" >&2
fi
exit "$failed"
