#!/usr/bin/env bash
# Frame-shaped fan-out, side by side (docs/performance.md, "Frame-shaped load and segmented
# egress"): one data plane worker pinned to core 1, the bench's threads on core 0, one
# publisher sending video frames as bursts (FRAME, default 9.5 Mbit/s at 30 fps in
# 1,200-byte packets: 33 packets a frame, ~990 packets/s), fanned out to SUBS subscribers.
# In each round every variant runs once, back to back, for each subscriber count and with
# the subscribers reading plainly and with UDP_GRO, so the machine's noise hits all alike:
#
#   node-gso      AEAD_AES_128_GCM, io_uring (sendmmsg first), media.gso = auto (default)
#   node-nogso    the same with media.gso = off: one datagram per message
#   mmsg-gso      GCM on the recvmmsg/sendmmsg engine, GSO on
#   mmsg-nogso    the same, GSO off
#   cm-gso        AES_CM_128_HMAC_SHA1_80, io_uring, GSO on
#   node-pad      node-gso with media.pad_video_to = 16 (equal sizes within a frame)
#   refl          the plain reflector: recvmmsg → sendmmsg, one datagram per message, no crypto
#   refl-gso      the reflector sending each subscriber a batch's datagrams as UDP_SEGMENT
#
# JSON reports land in target/perf-gso/; the summary prints medians per cell and the
# reflector's CPU per packet over each variant's ("vs refl": 2.0 means half the CPU).
#
# Usage: [ROUNDS=3] [SUBS="200 400"] [GRO="off on"] [DUR=5] [VARIANTS="..."] \
#        [FRAME="--video 9500000 --fps 30"] scripts/perf-gso.sh [BIN_DIR]
#   BIN_DIR holds release `switchyard` and `switchyard-bench` (default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release}
rounds=${ROUNDS:-3}
subs_list=${SUBS:-200 400}
gro_list=${GRO:-off on}
dur=${DUR:-5}
variants=${VARIANTS:-node-gso node-nogso mmsg-gso mmsg-nogso cm-gso refl refl-gso}
# shellcheck disable=SC2206 # FRAME is split into arguments on purpose
frame=(${FRAME:---video 9500000 --fps 30 --keyframe-every 0})
load=(--size 1200 --bench-cores 0 --duration "$dur" --warmup 1 "${frame[@]}")
bench="$bin/switchyard-bench"
out=target/perf-gso
rm -rf "$out" && mkdir -p "$out"

pids=()
shms=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "${shms[@]}"
}
trap cleanup EXIT
start_node() { # name http-port media-port engine gso [pad_video_to]
    local shm
    shm=$(mktemp -d)
    shms+=("$shm")
    printf '[media]\ngso = "%s"\npad_video_to = %s\n' "$5" "${6:-0}" > "$shm/config.toml"
    SWITCHYARD_HOST_LOAD=false "$bin/switchyard" up --config "$shm/config.toml" --node-id "$1" \
        --shm-dir "$shm" --http-listen "127.0.0.1:$2" --workers 1 --media-bind 127.0.0.1 \
        --media-port "$3" --relay-port "$(($3 + 5))" --engine "$4" > "$out/node-$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$2/health" >/dev/null && return; sleep 0.1; done
    echo "node $1 did not come up" >&2
    exit 1
}
port() { # variant -> http port of its node
    case $1 in
        node-gso | cm-gso) echo 18480 ;;
        node-nogso) echo 18481 ;;
        mmsg-gso) echo 18482 ;;
        mmsg-nogso) echo 18483 ;;
        node-pad) echo 18484 ;;
    esac
}
start_node uring-gso 18480 19480 uring auto
start_node uring-nogso 18481 19490 uring off
start_node mmsg-gso 18482 19500 mmsg auto
start_node mmsg-nogso 18483 19510 mmsg off
case " $variants " in *" node-pad "*) start_node uring-pad 18484 19520 uring auto 16 ;; esac

for r in $(seq "$rounds"); do
    for subs in $subs_list; do
        for gro in $gro_list; do
            g=()
            [ "$gro" = on ] && g=(--gro)
            echo "== round $r: $subs subscribers, GRO receivers $gro"
            for v in $variants; do
                f="$out/$v-$subs-gro$gro-$r.json"
                case $v in
                    refl) "$bench" reflector --core 1 --subscribers "$subs" "${load[@]}" "${g[@]}" --json "$f" >/dev/null ;;
                    refl-gso) "$bench" reflector --gso --core 1 --subscribers "$subs" "${load[@]}" "${g[@]}" --json "$f" >/dev/null ;;
                    cm-*) "$bench" fanout --api "http://127.0.0.1:$(port "$v")" --profile cm --subscribers "$subs" "${load[@]}" "${g[@]}" --json "$f" >/dev/null ;;
                    *) "$bench" fanout --api "http://127.0.0.1:$(port "$v")" --profile gcm --subscribers "$subs" "${load[@]}" "${g[@]}" --json "$f" >/dev/null ;;
                esac
                python3 - "$f" "$v" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("   %-11s out %9.0f pps  loss %6.2f%%  %6.0f ns/pkt  cores %.2f" % (
    sys.argv[2], r["out_pps"], r["loss_ratio"] * 100, r["cpu_ns_per_packet"] or 0, r["dataplane_cpu"] or 0))
PY
            done
        done
    done
done
python3 - "$out" "$variants" "$subs_list" "$gro_list" <<'EOF'
import glob, json, os, statistics, sys
out, variants, subs_list, gro_list = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
def runs(v, s, g):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, f"{v}-{s}-gro{g}-*.json")))]
print("| subscribers | GRO receivers | variant | runs | out pps (median) | loss (median) | data plane cores | CPU ns/packet (median) | each round | vs refl |")
print("|---|---|---|---|---|---|---|---|---|---|")
for s in subs_list:
    for g in gro_list:
        ref = runs("refl", s, g)
        ref_ns = statistics.median(r["cpu_ns_per_packet"] for r in ref) if ref else None
        for v in variants:
            rs = runs(v, s, g)
            if not rs:
                continue
            med = lambda f: statistics.median(f(r) for r in rs)
            ns = med(lambda r: r["cpu_ns_per_packet"] or 0)
            each = ", ".join(f"{(r['cpu_ns_per_packet'] or 0):,.0f}" for r in rs)
            vs = f"{ref_ns / ns:.2f}" if ref_ns and ns else "-"
            print(f"| {s} | {g} | {v} | {len(rs)} | {med(lambda r: r['out_pps']):,.0f} | {med(lambda r: r['loss_ratio']) * 100:.2f}% "
                  f"| {med(lambda r: r['dataplane_cpu'] or 0):.2f} | {ns:,.0f} | {each} | {vs} |")
EOF
