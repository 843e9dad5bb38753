#!/usr/bin/env bash
# Run every packet-parser fuzz target for FUZZ_SECONDS (default 30) each, seeded from
# tests/corpora. Fails on the first crash; the crashing input is left in fuzz/artifacts/.
# Works on stable Rust via RUSTC_BOOTSTRAP (cargo-fuzz needs nightly-only flags).
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
targets=(fuzz_rtp fuzz_rtcp fuzz_stun fuzz_demux fuzz_sdp fuzz_depay)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1

# Which corpus folders seed which target.
seeds_for() {
    case "$1" in
        fuzz_rtp) echo rtp crashes-rtp ;;
        fuzz_rtcp) echo rtcp crashes-rtcp ;;
        fuzz_stun) echo stun ;;
        fuzz_demux) echo rtp rtcp stun crashes-rtp crashes-rtcp ;;
        fuzz_sdp) echo sdp ;;
        fuzz_depay) ;;
    esac
}

for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    for dir in $(seeds_for "$target"); do
        cp -n tests/corpora/"$dir"/* "$corpus"/ 2>/dev/null || true
    done
    echo "== $target for ${seconds}s"
    cargo fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
echo "fuzz: all targets ran ${seconds}s without a crash"
