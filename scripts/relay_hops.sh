#!/usr/bin/env bash
# Latency a relay hop adds, and what the links carry: three nodes on loopback (one worker
# each), publishers and SUBS subscribers on A, each stream relayed to B and C with SUBS
# subscribers on each (switchyard-bench relay). MODE=star relays A→B and A→C (one hop each);
# MODE=chain relays A→B→C (C two hops away). Prints the bench's table per run.
#
#   cargo build --release -p switchyard -p switchyard-bench
#   MODE=chain SUBS=20 RATE=1000 DUR=10 ROUNDS=3 scripts/relay_hops.sh
#
# TARGET_DIR: cargo's target directory (default: target).
set -euo pipefail
T=${TARGET_DIR:-target}/release
out=$(mktemp -d)
pids=()
shms=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for s in "${shms[@]}"; do rm -rf "$s"; done
}
trap cleanup EXIT
i=0
for n in a b c; do
    shm=$(mktemp -d)
    shms+=("$shm")
    "$T/switchyard" up --node-id "hops-$n" --shm-dir "$shm" \
        --http-listen "127.0.0.1:$((18891 + i))" --workers 1 --pin false \
        --media-bind 127.0.0.1 --media-port $((18900 + 10 * i)) \
        --relay-port $((18950 + 10 * i)) > "$out/node-$n.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
done
for port in 18891 18892 18893; do
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.1; done
done
chain=()
[ "${MODE:-star}" = chain ] && chain=(--chain)
for round in $(seq "${ROUNDS:-3}"); do
    echo "== ${MODE:-star} round $round"
    "$T/switchyard-bench" relay --api http://127.0.0.1:18891 \
        --via http://127.0.0.1:18892,http://127.0.0.1:18893 "${chain[@]}" \
        --subscribers "${SUBS:-20}" --rate "${RATE:-1000}" --size 1200 \
        --duration "${DUR:-10}" --warmup 1 --bench-cores "" \
        --json "$out/${MODE:-star}-$round.json"
done
echo "reports: $out"
