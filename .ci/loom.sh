#!/bin/sh
# Model-check the shared-memory ring's SPSC index protocol with loom
# (shared/src/ring/spsc.rs, `loom_tests`). Under --cfg switchyard_loom the ring's atomics come from loom
# (shared/src/ring/sync.rs) and the mmap-backed parts are compiled out.
# A separate target dir keeps the loom-flavoured build from invalidating the normal one.
set -eu
cd "$(dirname "$0")/.."
# A crate-specific cfg name, not the conventional `loom`: tokio (pulled in by the webrtc-srtp
# oracle dev-dependency) also reacts to `--cfg loom` and then fails to build.
export RUSTFLAGS="--cfg switchyard_loom ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
exec cargo test -p switchyard-shared --release --lib ring:: "$@"
