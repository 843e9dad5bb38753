//! Segmented egress under real browser traffic: headless Chromium publishes VP8 and Opus
//! with WHIP (the demo page's fake camera), two more pages watch with WHEP, and the node
//! (one worker, `media.gso = "auto"`, the default) sends each viewer's queued packets as
//! `UDP_SEGMENT` messages. The viewers must decode as they do without it; and the test
//! reports how often this traffic forms runs the kernel can segment:
//!
//! - from the data plane: `switchyard_tx_destination_batch` (packets one viewer had queued
//!   per send) and `switchyard_tx_segments_per_message` (what went out per message);
//! - from the publisher's packets themselves, seen on loopback by a packet socket
//!   (`common::capture`, root only): per video frame the packet sizes, how many messages
//!   the segment rule needs, and what RTP padding (RFC 3550 §5.1, the P bit) would cost to
//!   make each frame one run.
//!
//! A second test does the same with the demo page's simulcast publisher (a 1280x720 camera
//! in three VP8 layers), whose top layer has frames of several packets.
//!
//! Needs Debian's `chromium`, like tests/browser.rs: without it the test fails, unless
//! `SWITCHYARD_SKIP_BROWSER=1` (ignored under `CI=true`, where a missing browser must fail).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::browser::{chromium, num, Chromium, Reports};
use common::capture::{Capture, Seen};
use common::Node;

const BOUNDS: [&str; 8] = ["1", "2", "4", "8", "16", "32", "64", "+Inf"];

/// A histogram's cumulative buckets, its sum and count (worker 0) from one `/metrics`
/// scrape (separate scrapes would mix moments).
fn histogram(metrics: &str, name: &str) -> ([u64; 8], u64, u64) {
    let value = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut b = [0u64; 8];
    for (i, le) in BOUNDS.iter().enumerate() {
        b[i] = value(&format!(
            "switchyard_{name}_bucket{{worker=\"0\",le=\"{le}\"}}"
        ));
    }
    let sum = value(&format!("switchyard_{name}_sum{{"));
    let count = value(&format!("switchyard_{name}_count{{"));
    (b, sum, count)
}

/// A counter's value (worker 0) in one scrape.
fn counter(metrics: &str, name: &str) -> u64 {
    histogram_line(metrics, &format!("switchyard_{name}{{worker=\"0\"}}"))
}

fn histogram_line(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Per bucket (non-cumulative) counts between two readings, as "≤1: n, ≤2: n, …".
fn delta(a: &([u64; 8], u64, u64), b: &([u64; 8], u64, u64)) -> (String, u64, u64) {
    let mut parts = Vec::new();
    let mut prev = 0;
    for (i, le) in BOUNDS.iter().enumerate() {
        let cum = b.0[i] - a.0[i];
        parts.push(format!("≤{le}: {}", cum.saturating_sub(prev)));
        assert!(cum >= prev, "histogram not cumulative: {a:?} {b:?}");
        prev = cum;
    }
    (parts.join(", "), b.1 - a.1, b.2 - a.2)
}

/// Messages the segment rule (equal sizes, a shorter last one, ≤ 64, ≤ 65,507 bytes) needs
/// for `sizes` sent back to back to one destination.
fn runs(sizes: &[usize]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < sizes.len() {
        let seg = sizes[i];
        let (mut count, mut bytes) = (1, seg);
        i += 1;
        while i < sizes.len() && count < 64 && sizes[i] <= seg && bytes + sizes[i] <= 65_507 {
            count += 1;
            bytes += sizes[i];
            i += 1;
            if sizes[i - 1] < seg {
                break;
            }
        }
        n += 1;
    }
    n
}

/// What the publisher's video frames look like to the segment rule, from the datagrams it
/// sent to the node.
fn frame_report(seen: &[Seen]) -> String {
    // RTP only (RFC 5761/7983): not STUN, DTLS or RTCP.
    let rtp: Vec<&Seen> = seen
        .iter()
        .filter(|s| (128..192).contains(&s.head[0]) && !(192..224).contains(&s.head[1]))
        .collect();
    let ssrc = |s: &Seen| u32::from_be_bytes([s.head[8], s.head[9], s.head[10], s.head[11]]);
    let mut bytes: HashMap<u32, usize> = HashMap::new();
    for s in &rtp {
        *bytes.entry(ssrc(s)).or_default() += s.len;
    }
    let Some((&video, _)) = bytes.iter().max_by_key(|(_, b)| **b) else {
        return "no RTP seen".into();
    };
    // Frames: consecutive packets of the video SSRC with one RTP timestamp.
    let mut frames: Vec<Vec<usize>> = Vec::new();
    let mut last_ts = None;
    for s in rtp.iter().filter(|s| ssrc(s) == video) {
        let ts = u32::from_be_bytes([s.head[4], s.head[5], s.head[6], s.head[7]]);
        if last_ts != Some(ts) {
            frames.push(Vec::new());
            last_ts = Some(ts);
        }
        if let Some(f) = frames.last_mut() {
            f.push(s.len);
        }
    }
    let packets: usize = frames.iter().map(Vec::len).sum();
    let total: usize = frames.iter().flatten().sum();
    let multi: Vec<&Vec<usize>> = frames.iter().filter(|f| f.len() > 1).collect();
    let one_run = multi.iter().filter(|f| runs(f) == 1).count();
    let msgs: usize = frames.iter().map(|f| runs(f)).sum();
    // Padding every packet but a frame's last to the frame's largest: one run per frame.
    let pad_max: usize = frames
        .iter()
        .map(|f| {
            let m = f.iter().copied().max().unwrap_or(0);
            f[..f.len() - 1].iter().map(|l| m - l).sum::<usize>()
        })
        .sum();
    let msgs_max: usize = frames.iter().map(|f| f.len().div_ceil(54)).sum();
    // Padding every packet but a frame's last to a multiple of k (stateless: no need to
    // know the rest of the frame).
    let round = |k: usize| {
        let mut cost = 0;
        let mut m = 0;
        for f in &frames {
            let mut r: Vec<usize> = f.clone();
            let last = r.len() - 1;
            for l in &mut r[..last] {
                let up = l.div_ceil(k) * k;
                cost += up - *l;
                *l = up;
            }
            m += runs(&r);
        }
        (m, cost)
    };
    let (m8, c8) = round(8);
    let (m16, c16) = round(16);
    let (m32, c32) = round(32);
    let mut per_frame: Vec<usize> = frames.iter().map(Vec::len).collect();
    per_frame.sort_unstable();
    let pct = |c: usize| 100.0 * c as f64 / total.max(1) as f64;
    let examples: Vec<String> = multi.iter().take(6).map(|f| format!("{f:?}")).collect();
    format!(
        "video SSRC {video:#x}: {} frames, {packets} packets, {total} bytes; packets per frame \
         median {}, max {}; frames of 2+ packets: {} ({} of them one equal-size run as sent); \
         messages per frame under the segment rule: {:.2} as sent ({msgs} for {packets} \
         packets), {:.2} with every packet padded to its frame's largest (+{pad_max} bytes, \
         {:.2} %), {:.2} rounded up to 8 bytes (+{c8}, {:.2} %), {:.2} to 16 (+{c16}, \
         {:.2} %), {:.2} to 32 (+{c32}, {:.2} %); first multi-packet frames' sizes: {}",
        frames.len(),
        per_frame.get(per_frame.len() / 2).copied().unwrap_or(0),
        per_frame.last().copied().unwrap_or(0),
        multi.len(),
        one_run,
        msgs as f64 / frames.len().max(1) as f64,
        msgs_max as f64 / frames.len().max(1) as f64,
        pct(pad_max),
        m8 as f64 / frames.len().max(1) as f64,
        pct(c8),
        m16 as f64 / frames.len().max(1) as f64,
        pct(c16),
        m32 as f64 / frames.len().max(1) as f64,
        pct(c32),
        examples.join(" "),
    )
}

/// One publisher page (`publish` query), two watchers; measure for `window` once both
/// decode; assert they kept decoding and print the run-length report. `pad`: the node's
/// `media.pad_video_to`.
fn measure(publish: &str, window: Duration, pad: u16) {
    let Some((bin, _serial)) = chromium() else {
        return;
    };
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("swy-gso-browser-{}-{pad}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("config.toml");
    std::fs::write(&config, format!("[media]\npad_video_to = {pad}\n")).expect("config");
    let node = Node::start_with_args(1, &["--config", config.to_str().expect("utf-8")]);
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let capture = match Capture::start(node.media_port) {
        Ok(c) => Some(c),
        Err(e) if !ci => {
            eprintln!("frame sizes not measured: {e}");
            None
        }
        Err(e) => panic!("CI=true: {e}"),
    };
    let mut reports = Reports::start();
    let base = reports.base.clone();
    let url = |q: &str, path: &str| format!("{}/?{q}&report={base}{path}", node.api);
    let _publisher = Chromium::start(&bin, "publisher", &url(publish, "/pub"));
    reports.wait("/pub", Duration::from_secs(30), |r| {
        r["state"] == "connected" && num(r, "framesEncoded") > 0.0
    });
    let _w1 = Chromium::start(&bin, "watcher1", &url("watch=gso/cam", "/w1"));
    let _w2 = Chromium::start(&bin, "watcher2", &url("watch=gso/cam", "/w2"));
    let mut first = Vec::new();
    for w in ["/w1", "/w2"] {
        first.push(reports.wait(w, Duration::from_secs(60), |r| {
            num(r, "framesDecoded") > 60.0
        }));
    }
    assert_eq!(
        node.metric_sum("switchyard_gso_refused_total"),
        0,
        "loopback segments"
    );
    let m = node.get("/metrics").body;
    let (seg0, batch0) = (
        histogram(&m, "tx_segments_per_message"),
        histogram(&m, "tx_destination_batch"),
    );
    let (gso0, tx0) = (
        counter(&m, "gso_segments_total"),
        counter(&m, "tx_packets_total"),
    );
    std::thread::sleep(window);
    let m = node.get("/metrics").body;
    let (seg1, batch1) = (
        histogram(&m, "tx_segments_per_message"),
        histogram(&m, "tx_destination_batch"),
    );
    let (gso1, tx1) = (
        counter(&m, "gso_segments_total"),
        counter(&m, "tx_packets_total"),
    );
    let seen = capture.map(Capture::finish);
    let mut last = Vec::new();
    for w in ["/w1", "/w2"] {
        last.push(reports.wait(w, Duration::from_secs(10), |_| true));
    }
    let secs = window.as_secs_f64();
    for (a, b) in first.iter().zip(&last) {
        let fps = (num(b, "framesDecoded") - num(a, "framesDecoded"))
            / ((num(b, "t") - num(a, "t")) / 1000.0);
        eprintln!(
            "watcher: {fps:.1} frames/s decoded, {}x{}, {} packets lost, {} frames dropped",
            b["frameWidth"], b["frameHeight"], b["packetsLost"], b["framesDropped"]
        );
        assert!(fps > 10.0, "a watcher decoded {fps:.1} frames/s: {b}");
    }
    let (seg, datagrams, messages) = delta(&seg0, &seg1);
    let (batch, batched, batches) = delta(&batch0, &batch1);
    eprintln!(
        "{publish}, media.pad_video_to = {pad}, {secs:.0} s, one worker, two WHEP viewers:\n  datagrams sent {datagrams} \
         in {messages} messages ({:.3} per message); {} in UDP_SEGMENT messages ({:.1} %)\n  \
         segments per message: {seg}\n  datagrams one viewer had queued per send \
         ({batches} sends, {:.2} per send): {batch}",
        datagrams as f64 / messages.max(1) as f64,
        gso1 - gso0,
        100.0 * (gso1 - gso0) as f64 / datagrams.max(1) as f64,
        batched as f64 / batches.max(1) as f64,
    );
    // Every datagram the worker sent went through the planner once (the counters are
    // written at the end of the same loop turn).
    let sent = tx1 - tx0;
    assert!(
        datagrams * 10 >= sent * 9 && datagrams <= sent + sent / 10 + 100,
        "segments-per-message sum {datagrams} vs tx_packets {sent}"
    );
    if let Some(seen) = seen {
        let mut by_src: HashMap<std::net::SocketAddrV4, usize> = HashMap::new();
        for s in &seen {
            *by_src.entry(s.src).or_default() += s.len;
        }
        // The publisher is the source that sent the node the most bytes.
        if let Some((&publisher, _)) = by_src.iter().max_by_key(|(_, b)| **b) {
            let theirs: Vec<Seen> = seen.into_iter().filter(|s| s.src == publisher).collect();
            eprintln!("  publisher's packets: {}", frame_report(&theirs));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn chromium_vp8_viewers_through_segmented_egress() {
    measure("publish=gso/cam", Duration::from_secs(15), 0);
}

#[test]
fn chromium_simulcast_top_layer_through_segmented_egress() {
    measure("publish=gso/cam&simulcast=1", Duration::from_secs(15), 0);
}

/// `media.pad_video_to = 16`: Chromium's viewers decode padded packets as they do their
/// own, and a frame's packets leave in fewer messages.
#[test]
fn chromium_vp8_viewers_of_padded_video() {
    measure("publish=gso/cam", Duration::from_secs(15), 16);
}

#[test]
fn the_segment_rule_counts_runs() {
    assert_eq!(runs(&[1200, 1200, 700]), 1);
    assert_eq!(runs(&[1111, 1111, 1112, 1112]), 2);
    assert_eq!(runs(&[1112, 1111, 1111]), 2);
    assert_eq!(runs(&[1200; 60]), 2);
    assert_eq!(runs(&[]), 0);
}
