//! Headless Chromium publishes three VP8 simulcast layers (rids q/h/f, a 1280x720 fake
//! camera scaled by 4, 2 and 1) with WHIP from the demo page (`?simulcast=1`); a second page
//! watches with WHEP. The watcher must decode the best layer the publisher sends, and after
//! `POST /v1/sessions/{id}/layers {"maxLayer":0}` the lowest one, with no gap in decoding.
//!
//! The second test shapes one of two watchers' downlink (`common::lossy`: 400 kbit/s, a
//! drop-tail queue): the node's bandwidth estimate for that watcher must move it to the
//! lowest layer within 10 s with no freeze longer than a second, while the other keeps the
//! top layer; when the cap is lifted the first must climb back within 15 s.
//!
//! Needs Debian's `chromium`, like tests/browser.rs: without it the test fails, unless
//! `SWITCHYARD_SKIP_BROWSER=1` (ignored under `CI=true`, where a missing browser must fail).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::browser::{chromium, num, Chromium, Reports};
use common::lossy::Lossy;
use common::Node;
use serde_json::Value;

#[test]
fn chromium_simulcast_viewer_gets_the_best_layer_then_the_capped_one_without_a_gap() {
    let Some((bin, _serial)) = chromium() else {
        return;
    };
    let started = Instant::now();
    let node = Node::start(1);
    let mut reports = Reports::start();
    let (publisher, first) =
        publishing(&bin, &node.api, &mut reports, "publish=sim/cam&simulcast=1");
    let base = reports.base.clone();
    let url = |q: &str, path: &str| page(&node.api, &base, q, path);
    eprintln!("publisher connected: {}", first["layers"]);

    let watcher = Chromium::start(&bin, "watcher", &url("watch=sim/cam", "/sub"));
    // The node's estimate for the watcher starts low and probes up to the top layer.
    let top = reports.wait("/sub", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") > 100.0 && num(r, "frameWidth") >= 1280.0
    });
    let layers = reports.seen["/pub"]
        .last()
        .map(|r| r["layers"].clone())
        .unwrap_or_default();
    eprintln!(
        "watcher at the top: {} frames decoded, {}; publisher's layers: {layers}",
        top["framesDecoded"], top["frameSize"]
    );
    // It started from the cached group of the layer its first estimate picked, not from a
    // keyframe asked of the publisher (docs/webrtc.md, "Late joiners", simulcast).
    let starts = node.metric_sum("switchyard_late_join_starts_total");
    eprintln!("late join starts: {starts}");
    assert!(starts >= 1, "the watcher started from a layer's group");
    let widths: Vec<f64> = ["q", "h", "f"]
        .iter()
        .map(|rid| num(&layers[rid], "frameWidth"))
        .collect();
    assert!(
        widths.iter().filter(|&&w| w > 0.0).count() >= 2,
        "Chromium sends fewer than two layers: {layers}"
    );
    // The watcher's best is the widest layer being sent (all of them, at this bandwidth).
    let widest = widths.iter().copied().fold(0.0, f64::max);
    assert_eq!(num(&top, "frameWidth"), widest, "{top} vs {layers}");

    // The watcher's session, and the cap to the lowest layer.
    let sessions = node.get("/v1/sessions").json();
    let id = sessions["sessions"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["role"] == "subscriber"))
        .and_then(|s| s["id"].as_u64())
        .expect("the watcher's session");
    let capped_at = Instant::now();
    let r = node.post(&format!("/v1/sessions/{id}/layers"), r#"{"maxLayer":0}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    let before = reports.seen["/sub"].len();
    let low = reports.wait("/sub", Duration::from_secs(15), |r| {
        num(r, "frameWidth") > 0.0 && num(r, "frameWidth") <= 320.0
    });
    let switch_s = capped_at.elapsed().as_secs_f64();
    // Three more seconds on the low layer: decoding never stalled across the switch.
    let end = reports.wait("/sub", Duration::from_secs(10), |r| {
        num(r, "t") - num(&low, "t") >= 3000.0
    });
    let seen = &reports.seen["/sub"][before.saturating_sub(1)..];
    let decoded: Vec<f64> = seen.iter().map(|r| num(r, "framesDecoded")).collect();
    eprintln!(
        "capped: {} after {switch_s:.1} s; framesDecoded each second from the cap: {decoded:?}; \
         {}",
        low["frameSize"], end["frameSize"]
    );
    for w in decoded.windows(2) {
        assert!(w[1] > w[0], "decoding stalled: {decoded:?}");
    }
    assert_eq!(num(&end, "frameWidth"), num(&low, "frameWidth"));
    let switches = node.metric_sum("switchyard_layer_switches_total");
    assert!(switches >= 2, "layer switches: {switches}");

    reports.stop.store(true, Ordering::SeqCst);
    for path in ["/sub", "/pub"] {
        let closed = reports.wait(path, Duration::from_secs(15), |r| r["phase"] == "closed");
        assert_eq!(closed["deleteStatus"], 200, "{path}: {closed}");
    }
    drop(watcher);
    drop(publisher);
    eprintln!(
        "simulcast browser test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The demo page on `api` with query `q`, reporting to `base` (`Reports::base`) under
/// `path`.
fn page(api: &str, base: &str, q: &str, path: &str) -> String {
    format!("{api}/?{q}&report={base}{path}")
}

/// Chromium publishing from the demo page on `api` with query `q` (`publish=…`), reporting
/// to `/pub`; returned once it is connected and encoding, with that report.
fn publishing(bin: &PathBuf, api: &str, reports: &mut Reports, q: &str) -> (Chromium, Value) {
    let c = Chromium::start(bin, "publisher", &page(api, &reports.base, q, "/pub"));
    let first = reports.wait("/pub", Duration::from_secs(30), |r| {
        r["state"] == "connected" && num(r, "framesEncoded") > 0.0
    });
    (c, first)
}

/// What the publisher (`/pub`) last said of its layers, for messages.
fn publisher_layers(reports: &Reports) -> Value {
    reports.seen["/pub"]
        .last()
        .map(|r| r["layers"].clone())
        .unwrap_or_default()
}

/// The subscriber sessions on `node`, oldest first: (id, remote address as the node sees it).
fn subscribers(node: &Node) -> Vec<(u64, Option<SocketAddr>, Value)> {
    let sessions = node.get("/v1/sessions").json();
    let mut v: Vec<(u64, Option<SocketAddr>, Value)> = sessions["sessions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["role"] == "subscriber")
                .map(|s| {
                    let remote = s["remote"].as_str().and_then(|r| r.parse().ok());
                    (s["id"].as_u64().unwrap_or(0), remote, s.clone())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|s| s.2["createdMs"].as_u64().unwrap_or(0));
    v
}

#[test]
fn chromium_viewer_behind_a_400_kbit_cap_settles_on_the_low_layer_and_climbs_back() {
    capped_viewer("vp8", "simulcast=1", 320.0, 1.0);
}

/// The same with H.264 simulcast (Chromium's OpenH264 encoder, three layers): layers are
/// ranked by rate (H.264 picture sizes are in the SPS, not parsed), keyframes are IDRs.
#[test]
fn chromium_h264_simulcast_viewer_behind_a_400_kbit_cap_settles_low_and_climbs_back() {
    capped_viewer("h264", "simulcast=1", 320.0, 1.0);
}

/// Issue #12's SVC case: Chromium publishes VP9 with `scalabilityMode` L3T3 (three spatial
/// layers, 1280x720 on top, in one stream); the capped viewer gets a lower spatial layer
/// (the node drops the upper layers' packets for it) and keeps decoding; the other keeps
/// the top. Its longest freeze runs 0.7–1.0 s, a little over simulcast's (docs/webrtc.md,
/// "Scalable video"), so the bound is 2 s.
#[test]
fn chromium_vp9_svc_viewer_behind_a_400_kbit_cap_gets_a_lower_spatial_layer() {
    capped_viewer("vp9", "svc=L3T3", 640.0, 2.0);
}

/// AV1 with temporal layers (issue 12's "AV1 L1T3"): Chromium publishes one 1280x720 AV1
/// stream with `scalabilityMode` L1T3 (frames of temporal layers 0, 2, 1, 2, ...). Two
/// viewers; one is capped to the base layer (`POST /v1/sessions/{id}/layers`,
/// `{"maxLayer": 0}`) and gets only the frames of temporal layer 0, a quarter of them, and
/// keeps decoding without a keyframe; the other keeps every frame; the cap lifted, the first
/// is back to the full rate at the next layer-0 frame.
#[test]
fn chromium_av1_l1t3_viewer_capped_to_the_base_layer_gets_a_quarter_of_the_frames() {
    temporal_cap(
        "av1",
        "publish=av1/cam&svc=L1T3&codec=av1",
        "video/av1",
        r#"{"maxLayer":0}"#,
    );
}

/// VP8 simulcast with temporal layers (issue 12's "temporal layers dropped per viewer
/// too"): Chromium sends each of its three simulcast layers as L1T3 by default. A viewer
/// of the top layer capped with `{"maxTemporalLayer": 0}` gets a quarter of its frames,
/// numbered with no gap (sequence numbers and picture ids closed up over the dropped
/// frames), no keyframe asked; the other viewer keeps every frame; the cap lifted, the
/// first is back to the full rate at the next layer-0 frame.
#[test]
fn chromium_vp8_simulcast_viewer_capped_to_temporal_layer_0_gets_a_quarter_of_the_frames() {
    temporal_cap(
        "sim",
        "publish=sim/cam&simulcast=1",
        "video/vp8",
        r#"{"maxTemporalLayer":0}"#,
    );
}

/// Chromium publishing to `room`/cam with query `publish`, two viewers decoding
/// `codec`; the first capped with the layers body `cap`: a quarter of the other's frame
/// rate, no freeze, then every frame again once the cap is lifted (`{}`).
fn temporal_cap(room: &str, publish: &str, codec: &str, cap: &str) {
    // A VP8 viewer capped with maxTemporalLayer shows it in its session's stats.
    let shows_temporal = cap.contains("maxTemporalLayer");
    let Some((bin, _serial)) = chromium() else {
        return;
    };
    let started = Instant::now();
    let node = Node::start(1);
    let mut reports = Reports::start();
    let _publisher = publishing(&bin, &node.api, &mut reports, publish);
    let base = reports.base.clone();
    let url = |q: &str, path: &str| page(&node.api, &base, q, path);
    let watch = format!("watch={room}/cam");
    let _capped = Chromium::start(&bin, "capped", &url(&watch, "/capped"));
    reports.wait("/capped", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") > 60.0
    });
    let _open = Chromium::start(&bin, "open", &url(&watch, "/open"));
    let warm = reports.wait("/open", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") > 60.0
    });
    assert_eq!(
        warm["videoCodec"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some(codec),
        "{warm}"
    );
    // Frames decoded per second by each viewer over the next `secs` seconds of reports.
    let rate = |reports: &mut Reports, path: &str, secs: f64| -> f64 {
        let from = reports.seen[path].last().cloned().expect("a report");
        let to = reports.wait(path, Duration::from_secs(30), |r| {
            num(r, "t") - num(&from, "t") >= secs * 1000.0
        });
        (num(&to, "framesDecoded") - num(&from, "framesDecoded"))
            / ((num(&to, "t") - num(&from, "t")) / 1000.0)
    };
    let (capped_before, open_before) = (
        rate(&mut reports, "/capped", 4.0),
        rate(&mut reports, "/open", 1.0),
    );
    eprintln!(
        "before the cap: capped viewer {capped_before:.1} frames/s, the other {open_before:.1}"
    );
    assert!(
        capped_before > 8.0,
        "both decode every frame first: {capped_before:.1}"
    );

    let subs = subscribers(&node);
    assert_eq!(subs.len(), 2, "{subs:?}");
    let capped_id = subs[0].0;
    let layers = |body: &str| {
        let r = node.post(&format!("/v1/sessions/{capped_id}/layers"), body);
        assert_eq!(r.status, 204, "{}", r.body);
    };
    layers(cap);
    let freezes = reports.seen["/capped"]
        .last()
        .map_or(0.0, |r| num(r, "freezeCount"));
    std::thread::sleep(Duration::from_secs(2));
    let capped = rate(&mut reports, "/capped", 5.0);
    let open = rate(&mut reports, "/open", 1.0);
    let held = reports.seen["/capped"].last().cloned().expect("a report");
    if shows_temporal {
        let view = node.get(&format!("/v1/sessions/{capped_id}")).json();
        let temporal = &view["stats"]["temporalLayers"];
        assert!(
            temporal
                .as_array()
                .is_some_and(|a| a.contains(&serde_json::json!(0))),
            "GET /v1/sessions/{capped_id} shows temporal layer 0: {view}"
        );
    }
    eprintln!(
        "{codec} capped with {cap}: {capped:.1} frames/s (the other {open:.1}), {}; freezes since the cap: {}",
        held["frameSize"],
        num(&held, "freezeCount") - freezes
    );
    assert!(
        capped > 0.5,
        "the capped viewer kept decoding: {capped:.1} frames/s"
    );
    // Layer 0 is a quarter of the frames in the 0, 2, 1, 2 pattern; Chromium's measured
    // 9.2–11 of 30 here. Below 0.45 of the other viewer's rate tells it from layers 0 and
    // 1 (half the frames) with room for a loaded machine's noise.
    assert!(
        capped < 0.45 * open,
        "layer 0 alone is about a quarter of the frames: {capped:.1} against {open:.1} frames/s"
    );
    assert!(
        open > 0.6 * open_before,
        "the other viewer kept every frame: {open:.1}"
    );

    layers("{}");
    std::thread::sleep(Duration::from_secs(2));
    let back = rate(&mut reports, "/capped", 4.0);
    let open = rate(&mut reports, "/open", 1.0);
    eprintln!("cap lifted: {back:.1} frames/s (the other {open:.1})");
    assert!(
        back > 0.7 * open,
        "every frame again: {back:.1} against {open:.1}"
    );
    reports.stop.store(true, Ordering::SeqCst);
    eprintln!(
        "{codec} temporal cap browser test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Chromium publishes VP9 L3T3, then AV1 L1T3: each stream's cached group, downloaded as
/// IVF (`GET /v1/streams/{room}/{stream}/fetch`), decodes with FFmpeg's decoders (VP9
/// pictures of several spatial layers as superframes; AV1 temporal units in the
/// low-overhead format, for dav1d), every frame of it, from a keyframe. Early in the
/// stream, while the group since the publisher's first keyframe still fits the cache.
#[test]
fn chromium_vp9_and_av1_groups_download_as_ivf_that_ffmpeg_decodes() {
    let Some((bin, _serial)) = chromium() else {
        return;
    };
    let Some(py) = common::aiortc::python() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 is required under CI"
        );
        eprintln!("SKIPPED: python3 not found");
        return;
    };
    let node = Node::start(1);
    for codec in ["vp9", "av1"] {
        let mut reports = Reports::start();
        let layers = if codec == "vp9" { "L3T3" } else { "L1T3" };
        let q = format!("publish=fetch/{codec}&svc={layers}&codec={codec}");
        let publisher = publishing(&bin, &node.api, &mut reports, &q);
        let url = format!("{}/v1/streams/fetch/{codec}/fetch", node.api);
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            let got = common::aiortc::fetch_group(&py, &url);
            if got["status"] == 200 && got["frames"].as_u64().unwrap_or(0) >= 10 {
                break got;
            }
            assert!(
                Instant::now() < deadline,
                "{codec}: no group of 10 frames: {got}"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        eprintln!("fetch {codec} {layers}: {got}");
        assert_eq!(got["content_type"], "video/x-ivf", "{got}");
        assert_eq!(got["codec"], codec, "{got}");
        let (frames, decoded) = (
            got["frames"].as_u64().unwrap_or(0),
            got["frames_decoded"].as_u64().unwrap_or(0),
        );
        // A VP9 picture of three spatial layers is one IVF frame (a superframe) and
        // decodes as three, each shown.
        let per_picture = if codec == "vp9" { 1..=3 } else { 1..=1 };
        assert!(
            decoded >= frames * per_picture.start() && decoded <= frames * per_picture.end(),
            "every frame decodes: {got}"
        );
        assert_eq!(got["first_key_frame"], true, "{got}");
        assert_eq!(got["errors"], serde_json::json!([]), "{got}");
        assert!(got["max_width"].as_u64().unwrap_or(0) >= 320, "{got}");
        drop(publisher);
        reports.stop.store(true, Ordering::SeqCst);
    }
}

/// `layering`: the publisher page's query for its layers; `low_width`: the widest picture
/// the capped viewer may decode under the cap; `max_freeze`: its longest freeze, seconds.
fn capped_viewer(codec: &str, layering: &str, low_width: f64, max_freeze: f64) {
    let Some((bin, _serial)) = chromium() else {
        return;
    };
    let started = Instant::now();
    // Every client reaches the node through the proxy: the node announces its address.
    let node = Node::start_with_args(1, &["--media-announce", "127.0.0.2"]);
    let port = node.media_port;
    let listen: SocketAddr = format!("127.0.0.2:{port}").parse().expect("addr");
    let upstream: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let proxy = Lossy::start(listen, upstream, 0.0, Duration::ZERO);
    let mut reports = Reports::start();
    let _publisher = publishing(
        &bin,
        &node.api,
        &mut reports,
        &format!("publish=bwe/cam&{layering}&codec={codec}"),
    );
    let base = reports.base.clone();
    let url = |q: &str, path: &str| page(&node.api, &base, q, path);
    // The capped watcher first, so its session is the older one.
    let _capped = Chromium::start(&bin, "capped", &url("watch=bwe/cam", "/capped"));
    reports.wait("/capped", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") > 30.0
    });
    let _open = Chromium::start(&bin, "open", &url("watch=bwe/cam", "/open"));
    // Both climb to the publisher's top layer (the node probes its way up from the
    // low layer a new estimate allows).
    let top = |r: &Value| num(r, "frameWidth") > 640.0 && num(r, "framesDecoded") > 60.0;
    let a = reports.wait("/capped", Duration::from_secs(40), top);
    let b = reports.wait("/open", Duration::from_secs(40), top);
    eprintln!(
        "{codec}: both at the top: {} and {} ({})",
        a["frameSize"], b["frameSize"], a["videoCodec"]
    );
    assert_eq!(
        a["videoCodec"].as_str().map(str::to_ascii_lowercase),
        Some(format!("video/{codec}")),
        "{a}"
    );
    let subs = subscribers(&node);
    assert_eq!(subs.len(), 2, "{subs:?}");
    let (capped_id, capped_remote) = (subs[0].0, subs[0].1.expect("the capped viewer's address"));
    let estimate =
        |id: u64| node.get(&format!("/v1/sessions/{id}")).json()["stats"]["estimateBps"].as_u64();
    eprintln!(
        "estimates before the cap: {:?} {:?}",
        estimate(capped_id),
        estimate(subs[1].0)
    );

    proxy.shape(capped_remote, Some(400_000));
    let capped_at = Instant::now();
    let before = reports.seen["/capped"].last().cloned().expect("a report");
    let low = reports.wait("/capped", Duration::from_secs(10), |r| {
        num(r, "frameWidth") > 0.0 && num(r, "frameWidth") <= low_width
    });
    let settle_s = capped_at.elapsed().as_secs_f64();
    // It stays there: five more seconds under the cap.
    let held = reports.wait("/capped", Duration::from_secs(10), |r| {
        num(r, "t") - num(&low, "t") >= 5000.0
    });
    let d = |k: &str| num(&held, k) - num(&before, k);
    // Chromium adds a freeze's whole duration when it ends: the largest growth of the
    // total between two reports (one a second) bounds the longest freeze.
    let window: Vec<&Value> = reports.seen["/capped"]
        .iter()
        .filter(|r| num(r, "t") >= num(&before, "t") && num(r, "t") <= num(&held, "t"))
        .collect();
    let longest = window
        .windows(2)
        .map(|w| num(w[1], "totalFreezesDuration") - num(w[0], "totalFreezesDuration"))
        .fold(0.0, f64::max);
    for r in &window {
        eprintln!(
            "  t {:>6.1} s  {:>9}  decoded {:>5}  received {:>5}  lost {:>4}  nacks {:>4}  frozen {:>5.2} s  {:>5} kbit/s  pli {}",
            (num(r, "t") - num(&before, "t")) / 1000.0,
            r["frameSize"].as_str().unwrap_or("-"),
            num(r, "framesDecoded"),
            num(r, "framesReceived"),
            num(r, "videoPacketsLost"),
            num(r, "videoNacksSent"),
            num(r, "totalFreezesDuration"),
            num(r, "recvKbps"),
            num(r, "pliSent"),
        );
    }
    eprintln!(
        "node: {} keyframe requests forwarded to the publisher ({} throttled), {} retransmitted",
        node.metric_sum("switchyard_pli_forwarded_total"),
        node.metric_sum("switchyard_pli_throttled_total"),
        node.metric_sum("switchyard_retransmitted_packets_total"),
    );
    let capped_estimate = estimate(capped_id);
    eprintln!(
        "capped: {} after {settle_s:.1} s; then {}; {} freezes, {:.2} s frozen (the longest \
         at most {longest:.2} s), {} frames decoded under the cap; estimate \
         {capped_estimate:?}; proxy dropped {}",
        low["frameSize"],
        held["frameSize"],
        d("freezeCount"),
        d("totalFreezesDuration"),
        d("framesDecoded"),
        proxy.shaped_drops.load(Ordering::Relaxed)
    );
    assert!(
        num(&held, "frameWidth") <= low_width,
        "stays on the low layer: {held}"
    );
    assert!(
        longest < max_freeze,
        "no freeze longer than {max_freeze} s: {window:?}"
    );
    assert!(d("framesDecoded") > 100.0, "kept decoding: {held}");
    assert!(
        capped_estimate.is_some_and(|e| e < 600_000),
        "{capped_estimate:?}"
    );
    // The other watcher kept the top layer (1280 wide, or less where Chromium scaled its
    // top layer down for CPU: wider than the middle layer's 640 either way).
    let on_top = |r: &Value| num(r, "frameWidth") > 640.0;
    let open = reports.seen["/open"].last().cloned().expect("a report");
    assert!(
        on_top(&open),
        "{open}; publisher: {}",
        publisher_layers(&reports)
    );

    proxy.shape(capped_remote, None);
    let lifted_at = Instant::now();
    let back = reports.wait("/capped", Duration::from_secs(15), on_top);
    eprintln!(
        "cap lifted: {} after {:.1} s; estimate {:?}; probes {} ({} carried, {} failed)",
        back["frameSize"],
        lifted_at.elapsed().as_secs_f64(),
        estimate(capped_id),
        node.metric_sum("switchyard_bwe_probes_total"),
        node.metric_sum("switchyard_bwe_probes_carried_total"),
        node.metric_sum("switchyard_bwe_probes_failed_total"),
    );
    let open = reports.seen["/open"].last().cloned().expect("a report");
    assert!(
        on_top(&open),
        "{open}; publisher: {}",
        publisher_layers(&reports)
    );
    reports.stop.store(true, Ordering::SeqCst);
    eprintln!(
        "{codec} bandwidth estimation browser test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A simulcast stream watched on another node: Chromium publishes three layers on node A,
/// a Chromium viewer watches on node C, which relays the stream from A (the automatic
/// cascade). Every layer crosses the link once; C's relay-in tells them apart with the
/// publisher's map and serves its viewer one layer: the top, then (capped on C) the lowest,
/// asked from A's publisher through the link. Needs Redis and Chromium.
#[test]
fn chromium_viewer_on_another_node_gets_layers_of_a_relayed_simulcast_stream() {
    relayed_layers("simcascade", "simulcast=1&codec=vp8");
}

/// The same with VP9 SVC (L3T3): the spatial layers cross the link in one stream and C,
/// told the source's VP9 payload type with the relay, drops the upper ones for its capped
/// viewer.
#[test]
fn chromium_viewer_on_another_node_gets_spatial_layers_of_a_relayed_vp9_svc_stream() {
    relayed_layers("svccascade", "svc=L3T3&codec=vp9");
}

/// `layering`: the publisher page's query for its layers and codec.
fn relayed_layers(room: &str, layering: &str) {
    let Some((bin, _serial)) = chromium() else {
        return;
    };
    if !common::Redis::required("relayed simulcast browser test") {
        return;
    }
    let pair = common::cluster::cascade_pair(room);
    let (a, c) = (&pair.a, &pair.c);
    let mut reports = Reports::start();
    let base = reports.base.clone();
    let _publisher = publishing(
        &bin,
        &a.api,
        &mut reports,
        &format!("publish={room}/cam&{layering}"),
    );
    pair.wait_cascade();
    let _watcher = Chromium::start(
        &bin,
        "watcher",
        &format!("{}/?watch={room}/cam&report={base}/sub", c.api),
    );
    let top = reports.wait("/sub", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") > 60.0 && num(r, "frameWidth") > 640.0
    });
    eprintln!(
        "watcher on c: {} ({} frames); publisher's layers: {}",
        top["frameSize"],
        top["framesDecoded"],
        publisher_layers(&reports)
    );
    let codec = layering.rsplit("codec=").next().unwrap_or_default();
    assert_eq!(
        top["videoCodec"].as_str().map(str::to_ascii_lowercase),
        Some(format!("video/{codec}")),
        "{top}"
    );
    let relays = c.get("/v1/relays").json();
    assert_eq!(relays["incoming"][0]["sourceNode"], "a", "{relays}");
    // Capped on C: the lowest layer, continuously decoded.
    let subs = c.get("/v1/sessions").json();
    let id = subs["sessions"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["role"] == "subscriber"))
        .and_then(|s| s["id"].as_u64())
        .expect("the watcher's session on c");
    let r = c.post(&format!("/v1/sessions/{id}/layers"), r#"{"maxLayer":0}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    let before = reports.seen["/sub"].last().cloned().expect("a report");
    let low = reports.wait("/sub", Duration::from_secs(15), |r| {
        num(r, "frameWidth") > 0.0 && num(r, "frameWidth") <= 320.0
    });
    let end = reports.wait("/sub", Duration::from_secs(10), |r| {
        num(r, "t") - num(&low, "t") >= 3000.0
    });
    eprintln!(
        "capped on c: {} then {}; {} frames decoded since the cap, {:.2} s frozen",
        low["frameSize"],
        end["frameSize"],
        num(&end, "framesDecoded") - num(&before, "framesDecoded"),
        num(&end, "totalFreezesDuration") - num(&before, "totalFreezesDuration"),
    );
    assert!(num(&end, "frameWidth") <= 320.0, "{end}");
    assert!(
        num(&end, "framesDecoded") - num(&low, "framesDecoded") > 45.0,
        "kept decoding on the low layer: {end}"
    );
    reports.stop.store(true, Ordering::SeqCst);
}
