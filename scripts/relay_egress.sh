#!/usr/bin/env bash
# Relay egress against subscriber egress on one data plane worker: the same publisher load
# fanned out to SUBS subscribers, then to SUBS relay-out sessions (switchyard-bench
# --relay-out), interleaved for ROUNDS rounds. Prints, per run, packets/s out, loss and the
# data plane's CPU per forwarded packet.
#
#   cargo build --release -p switchyard -p switchyard-bench
#   SUBS=100 DUR=5 ROUNDS=3 scripts/relay_egress.sh
#
# TARGET_DIR: cargo's target directory (default: target).
set -euo pipefail
T=${TARGET_DIR:-target}/release
shm=$(mktemp -d)
out=$(mktemp -d)
"$T/switchyard" up --node-id relayperf --shm-dir "$shm" --http-listen 127.0.0.1:18591 \
    --workers 1 --media-bind 127.0.0.1 --media-port 18600 --relay-port 18700 --engine uring \
    > "$out/node.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$shm"' EXIT
for _ in $(seq 100); do curl -fs http://127.0.0.1:18591/health > /dev/null && break; sleep 0.1; done
for round in $(seq "${ROUNDS:-3}"); do
    for mode in subscriber relay-out; do
        flag=()
        [ "$mode" = relay-out ] && flag=(--relay-out)
        "$T/switchyard-bench" fanout --api http://127.0.0.1:18591 --subscribers "${SUBS:-100}" \
            --rate 1000 --size 1200 --duration "${DUR:-5}" --warmup 1 "${flag[@]}" \
            --json "$out/$mode-$round.json" > "$out/$mode-$round.txt" 2>&1
        python3 - "$out/$mode-$round.json" "$mode" "$round" << 'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<10} round {sys.argv[3]}: out {r['out_pps']:.0f} pps, "
      f"lost {r['lost_packets']}, data plane {r['dataplane_cpu']:.2f} cores, "
      f"{r['cpu_ns_per_packet']:.0f} ns/packet, errors {sum(r['errors'].values())}")
PY
    done
done
echo "reports: $out"
