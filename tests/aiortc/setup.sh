#!/usr/bin/env bash
# Installs aiortc (an independent WebRTC implementation, from PyPI wheels) into a venv for the
# WHIP/WHEP interop test (tests/webrtc_aiortc.rs). Idempotent: does nothing when the venv
# already has the pinned version. Prints the venv's python path last.
#
# Usage: tests/aiortc/setup.sh [VENV_DIR]   (default: target/aiortc-venv)
set -euo pipefail
cd "$(dirname "$0")/../.."

# Pinned so the interop test is reproducible; bump deliberately.
AIORTC_VERSION=1.16.0
VENV="${1:-target/aiortc-venv}"
PY="$VENV/bin/python"

if [ -x "$PY" ] && "$PY" -c "import aiortc, sys; sys.exit(aiortc.__version__ != '$AIORTC_VERSION')" 2>/dev/null; then
  echo "$PY"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV" >&2
fi
# Wheels only: never build av/cryptography from source on a CI machine.
"$PY" -m pip install --quiet --only-binary=:all: "aiortc==$AIORTC_VERSION" >&2
"$PY" -c "import aiortc; print('aiortc', aiortc.__version__)" >&2
echo "$PY"
