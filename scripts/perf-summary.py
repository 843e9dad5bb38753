#!/usr/bin/env python3
"""Medians of scripts/perf.sh's JSON reports, as the Markdown tables in docs/performance.md."""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "target/perf"


def load(pattern):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, pattern)))]


variants = [
    ("node, AEAD_AES_128_GCM, io_uring + sendmmsg (default)", "fanout-gcm-[0-9]*.json"),
    ("node, AES_CM_128_HMAC_SHA1_80, io_uring + sendmmsg (default)", "fanout-cm-[0-9]*.json"),
    ("node, AEAD_AES_128_GCM, io_uring, one SENDMSG SQE per datagram", "fanout-gcm-sqe-*.json"),
    ("node, AEAD_AES_128_GCM, recvmmsg/sendmmsg", "fanout-gcm-mmsg-*.json"),
    ("reflector (plain, no crypto)", "reflector-*.json"),
]
ref = statistics.median(r["cpu_ns_per_packet"] for r in load("reflector-*.json"))
print("| variant | runs | out pps (median) | loss (median) | p50 µs | p99 µs | data plane cores | CPU ns/packet (median) | vs reflector |")
print("|---|---|---|---|---|---|---|---|---|")
for name, pat in variants:
    rs = load(pat)
    if not rs:
        continue
    med = lambda f: statistics.median(f(r) for r in rs)
    ns = med(lambda r: r["cpu_ns_per_packet"])
    print(
        f"| {name} | {len(rs)} | {med(lambda r: r['out_pps']):,.0f} | {med(lambda r: r['loss_ratio']) * 100:.2f}% "
        f"| {med(lambda r: r['latency_us']['p50']):,.0f} | {med(lambda r: r['latency_us']['p99']):,.0f} "
        f"| {med(lambda r: r['dataplane_cpu']):.2f} | {ns:,.0f} | {ref / ns * 100:.0f}% |"
    )
print()
print("| ramp | capacity (out pps) | subscribers | steps (subs: out pps, loss, p99 µs, ns/pkt) |")
print("|---|---|---|---|")
for name in ["gcm", "cm", "reflector"]:
    p = os.path.join(out, f"ramp-{name}.json")
    if not os.path.exists(p):
        continue
    r = json.load(open(p))
    steps = "; ".join(
        f"{s['subscribers']}: {s['out_pps']:,.0f}, {s['loss_ratio'] * 100:.2f}%, "
        f"{s['latency_us']['p99']:,}, {s['cpu_ns_per_packet'] or 0:,.0f}"
        for s in r["steps"]
    )
    print(f"| {name} | {r.get('capacity_pps', 0):,.0f} | {r.get('capacity_subscribers_total', '')} | {steps} |")
