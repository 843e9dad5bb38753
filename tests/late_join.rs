//! Late joiners (issue 12, item 6): an aiortc publisher that behaves as OBS does (a
//! keyframe every 6 s, keyframe requests ignored) publishes VP8 to a node of two workers;
//! WHEP viewers (aiortc) join one after another at different points of the publisher's
//! keyframe interval. With `media.late_join` (the default) each starts from the packets
//! since the last keyframe, replayed from the node's cache at once, on whichever worker it
//! lands: its first video frame comes within a second or two of its POST. The same run
//! against a node with `late_join = false` is the baseline, measured side by side: there a
//! viewer waits for the publisher's next keyframe, up to 6 s. Both are printed
//! (docs/webrtc.md, "Late joiners").
//!
//! Needs python3 (aiortc from PyPI): skipped loudly without it, a failure under CI=true.

mod common;

use std::time::Duration;

use common::aiortc::{client, fetch_group, python, summary};
use common::Node;

/// The aiortc venv's python: None (skipped loudly) without python3, a failure under CI.
fn aiortc() -> Option<std::path::PathBuf> {
    let py = python();
    if py.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 is required under CI"
        );
        eprintln!("SKIPPED late_join: python3 not found");
    }
    py
}

/// The publisher's keyframe interval, seconds.
const KEYFRAME_EVERY: f64 = 6.0;
/// Viewers per node, joining this far apart (not a divisor of the keyframe interval, so
/// they land at different points of it).
const VIEWERS: usize = 4;
const APART: Duration = Duration::from_millis(1700);

#[test]
fn late_joiners_start_from_the_cached_group_not_the_next_keyframe() {
    let Some(py) = aiortc() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("swy-late-join-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let off = dir.join("off.toml");
    std::fs::write(&off, "[media]\nlate_join = false\n").expect("config");

    let mut results = Vec::new();
    for (name, args) in [
        ("cached", Vec::new()),
        (
            "baseline",
            vec!["--config".into(), off.clone().into_os_string()],
        ),
    ] {
        let node = Node::spawn_named(name, 2, args);
        node.wait_healthy();
        let url = |p: &str| format!("{}/{p}/live/cam", node.api);
        let mut publisher = client(
            &py,
            "whip_client.py",
            &url("whip"),
            40,
            &["--keyframe-every", &KEYFRAME_EVERY.to_string()],
        );
        // The first keyframe went out at the start; a viewer joins a little later.
        std::thread::sleep(Duration::from_secs(3));
        let mut viewers = Vec::new();
        for _ in 0..VIEWERS {
            viewers.push(client(&py, "whep_client.py", &url("whep"), 9, &[]));
            std::thread::sleep(APART);
        }
        let mut ttff = Vec::new();
        for v in viewers {
            let s = summary(v, "whep_client");
            assert_eq!(s["connection"], "connected", "{name}: {s}");
            let t = s["first_frame_s"]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: a viewer decoded no video: {s}"));
            ttff.push(t);
        }
        if name == "cached" {
            fetch_decodes(&py, &node.api);
        }
        let starts = node.metric_sum("switchyard_late_join_starts_total");
        let packets = node.metric_sum("switchyard_late_join_packets_total");
        eprintln!(
            "{name}: time to first video frame {ttff:?} s; groups replayed {starts}, \
             {packets} packets"
        );
        let _ = publisher.kill();
        let _ = publisher.wait();
        results.push((name, ttff, starts));
    }
    let (_, cached, starts) = &results[0];
    let (_, baseline, baseline_starts) = &results[1];
    assert!(
        *starts >= VIEWERS as u64,
        "every viewer started from the cached group: {starts}"
    );
    assert_eq!(*baseline_starts, 0, "late_join = false replays nothing");
    for t in cached {
        // The POST, ICE, DTLS and the replay on loopback: well under the 6 s a viewer
        // waits without the cache when it joins just after a keyframe.
        assert!(*t < 2.0, "a cached start took {t:.2} s: {cached:?}");
    }
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    eprintln!(
        "median time to first frame: {:.2} s with the cache, {:.2} s without",
        median(cached),
        median(baseline)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The group a viewer is started from, downloaded as a file (`GET .../fetch`), decodes
/// with FFmpeg's VP8 decoder: every frame written, from a keyframe, at the publisher's
/// 320x240. What is not there is a 404 with a reason.
fn fetch_decodes(py: &std::path::Path, api: &str) {
    let url = format!("{api}/v1/streams/live/cam/fetch");
    let got = fetch_group(py, &url);
    eprintln!("fetch: {got}");
    assert_eq!(got["status"], 200, "{got}");
    assert_eq!(got["content_type"], "video/x-ivf", "{got}");
    assert_eq!(got["codec"], "vp8", "{got}");
    let frames = got["frames"].as_u64().unwrap_or(0);
    assert!(frames >= 1, "{got}");
    assert_eq!(
        got["frames_decoded"].as_u64(),
        Some(frames),
        "every frame decodes: {got}"
    );
    assert_eq!(got["first_key_frame"], true, "{got}");
    assert_eq!(
        (got["width"].as_u64(), got["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(got["errors"], serde_json::json!([]), "{got}");
    for (path, why) in [
        ("live/cam/fetch?track=0", "not a video track"),
        ("live/nobody/fetch", "no publisher"),
    ] {
        let got = fetch_group(py, &format!("{api}/v1/streams/{path}"));
        assert_eq!(got["status"], 404, "{path}: {got}");
        assert!(
            got["error"].as_str().is_some_and(|e| e.contains(why)),
            "{got}"
        );
    }
}

/// A Chromium viewer of the same publisher (one worker): it starts from the cached group
/// too, decodes the whole group at once, and does not lag behind for it: its jitter buffer
/// holds frames for tens of milliseconds on average, and it decodes live at 30 frames/s
/// with no freeze.
#[test]
fn a_chromium_late_joiner_decodes_at_once_and_keeps_up() {
    let Some(py) = aiortc() else {
        return;
    };
    let Some((bin, _serial)) = common::browser::chromium() else {
        return;
    };
    let node = Node::start(1);
    let mut publisher = client(
        &py,
        "whip_client.py",
        &format!("{}/whip/live/cam", node.api),
        40,
        &["--keyframe-every", &KEYFRAME_EVERY.to_string()],
    );
    std::thread::sleep(Duration::from_secs(4));
    let mut reports = common::browser::Reports::start();
    let base = reports.base.clone();
    let started = std::time::Instant::now();
    let _viewer = common::browser::Chromium::start(
        &bin,
        "viewer",
        &format!("{}/?watch=live/cam&report={base}/sub", node.api),
    );
    let num = common::browser::num;
    let first = reports.wait("/sub", Duration::from_secs(30), |r| {
        num(r, "framesDecoded") > 0.0
    });
    let first_s = started.elapsed().as_secs_f64();
    let later = reports.wait("/sub", Duration::from_secs(30), |r| {
        num(r, "t") - num(&first, "t") >= 8000.0
    });
    let fps = (num(&later, "framesDecoded") - num(&first, "framesDecoded"))
        / ((num(&later, "t") - num(&first, "t")) / 1000.0);
    eprintln!(
        "Chromium: first report with video {first_s:.2} s after its start (page load \
         included), {} frames decoded then (the group), {} ms in the jitter buffer on \
         average; 8 s later {fps:.1} frames/s, {} ms, {} freezes",
        first["framesDecoded"],
        first["jitterBufferMs"],
        later["jitterBufferMs"],
        later["freezeCount"]
    );
    assert!(
        node.metric_sum("switchyard_late_join_starts_total") >= 1,
        "started from the cached group"
    );
    // The next keyframe is up to 6 s away: decoding this early is the cached group.
    assert!(first_s < 5.0, "first frame after {first_s:.2} s");
    assert_eq!(num(&later, "freezeCount"), 0.0, "{later}");
    assert!(fps > 20.0, "live at the publisher's 30 frames/s: {fps:.1}");
    assert!(
        num(&later, "jitterBufferMs") < 250.0,
        "the replayed group left no lag behind: {later}"
    );
    reports
        .stop
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = publisher.kill();
    let _ = publisher.wait();
}

/// Across a relay: the same publisher on node `a`, viewers on node `c` through the WHEP
/// cascade. The relay-out `a` opens to `c` is started from `a`'s cached group, `c`'s
/// relay-in keeps its own group from it, and `c`'s viewers start from that, on a stream
/// whose publisher ignores keyframe requests. Needs Redis.
#[test]
fn a_viewer_on_another_node_starts_from_the_relayed_group() {
    let Some(py) = aiortc() else {
        return;
    };
    if !common::Redis::required("a_viewer_on_another_node_starts_from_the_relayed_group") {
        return;
    }
    let pair = common::cluster::cascade_pair("late-join-relay");
    let mut publisher = client(
        &py,
        "whip_client.py",
        &format!("{}/whip/relayed/cam", pair.a.api),
        40,
        &["--keyframe-every", &KEYFRAME_EVERY.to_string()],
    );
    pair.wait_cascade();
    std::thread::sleep(Duration::from_secs(1));
    let mut ttff = Vec::new();
    for _ in 0..2 {
        let v = client(
            &py,
            "whep_client.py",
            &format!("{}/whep/relayed/cam", pair.c.api),
            4,
            &[],
        );
        let s = summary(v, "whep_client");
        let t = s["first_frame_s"]
            .as_f64()
            .unwrap_or_else(|| panic!("a viewer on c decoded no video: {s}"));
        ttff.push(t);
        std::thread::sleep(APART);
    }
    let on_a = pair.a.metric_sum("switchyard_late_join_starts_total");
    let on_c = pair.c.metric_sum("switchyard_late_join_starts_total");
    eprintln!(
        "viewers on c: time to first video frame {ttff:?} s; groups replayed on a {on_a} \
         (the relay-out), on c {on_c}"
    );
    assert!(on_a >= 1, "the relay-out started from a's group");
    assert!(on_c >= 1, "a viewer on c started from c's group");
    for t in &ttff {
        assert!(*t < 3.0, "a start on c took {t:.2} s: {ttff:?}");
    }
    let _ = publisher.kill();
    let _ = publisher.wait();
}
