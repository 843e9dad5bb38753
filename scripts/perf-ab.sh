#!/usr/bin/env bash
# Before/after check of docs/performance.md's single-worker figure: the default variant of
# scripts/perf.sh (one data plane worker pinned to core 1, AEAD_AES_128_GCM, io_uring with
# sendmmsg; one publisher at 1000 packets/s of 1200 bytes, SUBS subscribers; the generator
# on core 0) run against two builds, interleaved in rounds so the machine's noise hits both
# alike, with the plain reflector in every round as the yardstick. Prints the medians and
# the after/before ratio of the data plane's CPU time per forwarded packet.
#
# Usage: [ROUNDS=5] [SUBS=200] scripts/perf-ab.sh BEFORE_BIN_DIR AFTER_BIN_DIR
#   Each directory holds a release `switchyard`; BEFORE_BIN_DIR's `switchyard-bench` drives
#   both. E.g. build the old tree with `git worktree add /tmp/before HEAD` and
#   `CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p switchyard -p switchyard-bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:?BEFORE_BIN_DIR}
after=${2:?AFTER_BIN_DIR}
rounds=${ROUNDS:-5}
subs=${SUBS:-200}
load=(--rate 1000 --size 1200 --bench-cores 0)
bench="$before/switchyard-bench"
out=target/perf-ab
rm -rf "$out" && mkdir -p "$out"

pids=()
shms=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "${shms[@]}"
}
trap cleanup EXIT
start_node() { # name binary-dir http-port media-port
    local shm
    shm=$(mktemp -d)
    shms+=("$shm")
    printf '[media]\nuring_sendmmsg = true\n' > "$shm/config.toml"
    "$2/switchyard" up --config "$shm/config.toml" --node-id "$1" --shm-dir "$shm" \
        --http-listen "127.0.0.1:$3" --workers 1 --media-bind 127.0.0.1 --media-port "$4" \
        --relay-port "$(($4 + 5))" --engine uring > "$out/node-$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$3/health" >/dev/null && return; sleep 0.1; done
    echo "node $1 did not come up" >&2
    exit 1
}
start_node before "$before" 18480 19480
start_node after "$after" 18481 19490

for r in $(seq "$rounds"); do
    echo "== round $r: $subs subscribers"
    "$bench" fanout --api http://127.0.0.1:18480 --profile gcm --subscribers "$subs" --duration 5 "${load[@]}" --json "$out/before-$r.json"
    "$bench" fanout --api http://127.0.0.1:18481 --profile gcm --subscribers "$subs" --duration 5 "${load[@]}" --json "$out/after-$r.json"
    "$bench" reflector --core 1 --subscribers "$subs" --duration 5 "${load[@]}" --json "$out/reflector-$r.json"
done
python3 - "$out" <<'EOF'
import glob, json, os, statistics, sys
out = sys.argv[1]
def runs(name):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, f"{name}-*.json")))]
ref = statistics.median(r["cpu_ns_per_packet"] for r in runs("reflector"))
print("| build | runs | out pps (median) | loss (median) | data plane cores | CPU ns/packet (median) | each run | vs reflector |")
print("|---|---|---|---|---|---|---|---|")
ns = {}
for name in ["before", "after", "reflector"]:
    rs = runs(name)
    med = lambda f: statistics.median(f(r) for r in rs)
    ns[name] = med(lambda r: r["cpu_ns_per_packet"])
    each = ", ".join(f"{r['cpu_ns_per_packet']:,.0f}" for r in rs)
    print(f"| {name} | {len(rs)} | {med(lambda r: r['out_pps']):,.0f} | {med(lambda r: r['loss_ratio']) * 100:.2f}% "
          f"| {med(lambda r: r['dataplane_cpu']):.2f} | {ns[name]:,.0f} | {each} | {ref / ns[name] * 100:.0f}% |")
print()
print(f"after / before, CPU ns per packet (median): {ns['after'] / ns['before']:.3f}")
EOF
