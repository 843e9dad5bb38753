#!/usr/bin/env bash
# Soak: one node (`switchyard up`, 1 worker) under steady publisher and viewer churn for
# DURATION seconds, recording the RSS of both planes. Each round runs switchyard-bench
# fanout (PUBS publishers with SUBS subscribers each, SRTP over /v1/sessions) for ROUND
# seconds; every WEBRTC_EVERY-th round joins as WebRTC peers instead (WHIP/WHEP, ICE,
# DTLS-SRTP). Each round creates its sessions and deletes them at the end, so the node sees
# sessions come and go for the whole run. RSS is sampled every SAMPLE seconds.
#
#   cargo build --release -p switchyard -p switchyard-bench
#   DURATION=1800 scripts/soak.sh            # writes $OUT/rss.csv, $OUT/rss.svg, $OUT/summary.txt
#
# The summary gives the RSS of each plane at the end of the warm-up (WARMUP seconds) and at
# the end, and the growth between them; a node that leaks per session grows with the rounds.
# TITLE: the chart's title.
# TARGET_DIR: cargo's target directory (default: target). PORT, MEDIA_PORT, RELAY_PORT: the
# node's HTTP, media and relay ports (18791, 18800, 18850). OUT: where results go (a new
# temporary directory by default).
set -euo pipefail
T=${TARGET_DIR:-target}/release
DURATION=${DURATION:-1800}
WARMUP=${WARMUP:-300}
ROUND=${ROUND:-6}
PUBS=${PUBS:-4}
SUBS=${SUBS:-8}
RATE=${RATE:-300}
SAMPLE=${SAMPLE:-10}
WEBRTC_EVERY=${WEBRTC_EVERY:-3}
PORT=${PORT:-18791}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
shm=$(mktemp -d)
up=""
sampler=""
cleanup() {
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
    if [ -n "$up" ]; then kill "$up" 2>/dev/null || true; wait "$up" 2>/dev/null || true; fi
    rm -rf "$shm"
}
trap cleanup EXIT

"$T/switchyard" up --node-id soak --shm-dir "$shm" --http-listen "127.0.0.1:$PORT" \
    --workers 1 --pin false --media-bind 127.0.0.1 --media-port "${MEDIA_PORT:-18800}" \
    --relay-port "${RELAY_PORT:-18850}" > "$OUT/node.log" 2>&1 &
up=$!
api="http://127.0.0.1:$PORT"
for _ in $(seq 200); do curl -fs "$api/health" > /dev/null && break; sleep 0.1; done
dp=$(curl -fs "$api/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["dataplanePid"])')
# The control plane is the other child of `up`.
cp=$(pgrep -P "$up" | grep -vx "$dp" | head -1)
echo "node: up=$up controlplane=$cp dataplane=$dp; results in $OUT"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
start=$(date +%s)
echo "seconds,controlplane_kib,dataplane_kib,rounds" > "$OUT/rss.csv"
echo 0 > "$OUT/rounds"
(
    while sleep "$SAMPLE"; do
        echo "$(( $(date +%s) - start )),$(rss_kib "$cp"),$(rss_kib "$dp"),$(cat "$OUT/rounds")" >> "$OUT/rss.csv"
    done
) &
sampler=$!

round=0
failed=0
while [ $(( $(date +%s) - start )) -lt "$DURATION" ]; do
    round=$((round + 1))
    webrtc=()
    [ $((round % WEBRTC_EVERY)) -eq 0 ] && webrtc=(--webrtc --join-parallel 8)
    if ! "$T/switchyard-bench" fanout --api "$api" "${webrtc[@]}" --publishers "$PUBS" \
        --subscribers "$SUBS" --rate "$RATE" --size 1000 --duration "$ROUND" --warmup 0.5 \
        --bench-cores "" > "$OUT/round-last.txt" 2>&1; then
        failed=$((failed + 1))
        cp "$OUT/round-last.txt" "$OUT/round-$round-failed.txt"
    fi
    echo "$round" > "$OUT/rounds"
done
kill "$sampler" 2>/dev/null || true
sampler=""
sessions=$(curl -fs "$api/v1/sessions" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["sessions"]))')

TITLE=${TITLE:-switchyard soak: RSS under publisher/viewer churn} \
python3 - "$OUT" "$WARMUP" "$round" "$failed" "$sessions" "$PUBS" "$SUBS" <<'EOF'
import csv, os, sys
out, warmup, rounds, failed, sessions, pubs, subs = sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:])
rows = [r for r in csv.DictReader(open(f"{out}/rss.csv")) if int(r["dataplane_kib"]) > 0]
t = [float(r["seconds"]) for r in rows]
series = {"controlplane": [int(r["controlplane_kib"]) / 1024 for r in rows],
          "dataplane": [int(r["dataplane_kib"]) / 1024 for r in rows]}
at_warm = next((i for i, s in enumerate(t) if s >= warmup), 0)
lines = [f"rounds {rounds} ({failed} failed), {pubs} publishers x {subs} subscribers per round, "
         f"sessions left at the end: {sessions}"]
for name, v in series.items():
    w, end, peak = v[at_warm], v[-1], max(v[at_warm:])
    lines.append(f"{name}: {v[0]:.1f} MiB at start, {w:.1f} MiB after warm-up ({t[at_warm]:.0f} s), "
                 f"{end:.1f} MiB at the end ({t[-1]:.0f} s), peak after warm-up {peak:.1f} MiB, "
                 f"growth after warm-up {100 * (end - w) / w:+.1f}%")
open(f"{out}/summary.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

# A dependency-free SVG line chart: RSS of each plane over time, warm-up shaded.
W, H, L, R, TOP, B = 760, 360, 70, 20, 30, 50
tmax = max(t) or 1
vmax = max(max(v) for v in series.values()) * 1.15 or 1
x = lambda s: L + (W - L - R) * s / tmax
y = lambda m: H - B - (H - TOP - B) * m / vmax
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<rect x="{L}" y="{TOP}" width="{x(min(warmup, tmax)) - L:.1f}" height="{H - TOP - B}" fill="#eee"/>',
       f'<text x="{L + 4}" y="{TOP + 14}" fill="#666">warm-up</text>',
       f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
       f'<line x1="{L}" y1="{TOP}" x2="{L}" y2="{H - B}" stroke="black"/>',
       f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">seconds</text>',
       f'<text x="16" y="{H / 2}" transform="rotate(-90 16 {H / 2})" text-anchor="middle">RSS (MiB)</text>',
       f'<text x="{W / 2}" y="18" text-anchor="middle">{os.environ["TITLE"]} ({rounds} rounds)</text>']
for i in range(6):
    m = vmax * i / 5
    svg.append(f'<text x="{L - 6}" y="{y(m) + 4:.1f}" text-anchor="end">{m:.0f}</text>')
    svg.append(f'<line x1="{L}" y1="{y(m):.1f}" x2="{W - R}" y2="{y(m):.1f}" stroke="#ddd"/>')
    s = tmax * i / 5
    svg.append(f'<text x="{x(s):.1f}" y="{H - B + 16}" text-anchor="middle">{s:.0f}</text>')
for (name, v), color in zip(series.items(), ["#1f77b4", "#d62728"]):
    pts = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(t, v))
    svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
    svg.append(f'<text x="{W - R - 4}" y="{y(v[-1]) - 6:.1f}" text-anchor="end" fill="{color}">{name} {v[-1]:.1f} MiB</text>')
svg.append("</svg>")
open(f"{out}/rss.svg", "w").write("\n".join(svg) + "\n")
EOF
echo "results: $OUT"
