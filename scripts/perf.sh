#!/usr/bin/env bash
# The single-node benchmark behind docs/performance.md. One data plane worker pinned to core 1,
# the bench on core 0. Side by side, in rounds (so machine noise hits every variant alike):
# the node with AEAD_AES_128_GCM and AES_CM_128_HMAC_SHA1_80 (io_uring engine, sends batched
# with sendmmsg: the default), GCM on io_uring with one SENDMSG SQE per datagram, GCM on the
# recvmmsg/sendmmsg engine, and the plain reflector (no crypto, one thread on core 1), all at
# the same fan-out. Then a ramp per variant. JSON reports land in target/perf/ and
# scripts/perf-summary.py prints the medians.
#
# Usage: [ROUNDS=3] [SUBS=200] [RAMP="--start 20 ..."] scripts/perf.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switchyard -p switchyard-bench
out=target/perf
rm -rf "$out" && mkdir -p "$out"
rounds=${ROUNDS:-3}
subs=${SUBS:-200}
# shellcheck disable=SC2206 # RAMP is split into arguments on purpose
ramp=(${RAMP:---start 20 --step 1.5 --max 2000 --step-duration 4 --p99-us 5000})
load=(--rate 1000 --size 1200 --bench-cores 0)
bench=./target/release/switchyard-bench

pids=()
shms=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "${shms[@]}"
}
trap cleanup EXIT
start_node() { # name http-port media-port engine [uring_sendmmsg]
    local shm
    shm=$(mktemp -d)
    shms+=("$shm")
    printf '[media]\nuring_sendmmsg = %s\n' "${5:-true}" > "$shm/config.toml"
    ./target/release/switchyard up --config "$shm/config.toml" --node-id "$1" --shm-dir "$shm" \
        --http-listen "127.0.0.1:$2" --workers 1 --media-bind 127.0.0.1 --media-port "$3" \
        --relay-port "$(($3 + 5))" \
        --engine "$4" > "$out/node-$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$2/health" >/dev/null && return; sleep 0.1; done
    echo "node $1 did not come up" >&2
    exit 1
}
start_node uring 18480 19480 uring
start_node mmsg 18481 19490 mmsg
start_node sqe 18482 19500 uring false
uring=(--api http://127.0.0.1:18480)
mmsg=(--api http://127.0.0.1:18481)
sqe=(--api http://127.0.0.1:18482)

for r in $(seq "$rounds"); do
    echo "== round $r: $subs subscribers"
    $bench fanout "${uring[@]}" --profile gcm --subscribers "$subs" --duration 5 "${load[@]}" --json "$out/fanout-gcm-$r.json"
    $bench fanout "${uring[@]}" --profile cm --subscribers "$subs" --duration 5 "${load[@]}" --json "$out/fanout-cm-$r.json"
    $bench fanout "${sqe[@]}" --profile gcm --subscribers "$subs" --duration 5 "${load[@]}" --json "$out/fanout-gcm-sqe-$r.json"
    $bench fanout "${mmsg[@]}" --profile gcm --subscribers "$subs" --duration 5 "${load[@]}" --json "$out/fanout-gcm-mmsg-$r.json"
    $bench reflector --core 1 --subscribers "$subs" --duration 5 "${load[@]}" --json "$out/reflector-$r.json"
done
echo "== ramps"
$bench ramp "${uring[@]}" --profile gcm "${ramp[@]}" "${load[@]}" --json "$out/ramp-gcm.json"
$bench ramp "${uring[@]}" --profile cm "${ramp[@]}" "${load[@]}" --json "$out/ramp-cm.json"
$bench ramp --reflector --core 1 "${ramp[@]}" "${load[@]}" --json "$out/ramp-reflector.json"
python3 scripts/perf-summary.py "$out"
