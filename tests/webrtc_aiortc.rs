//! WebRTC interop with an independent implementation: aiortc (Python, from PyPI) publishes
//! VP8 + Opus over WHIP to a real node and two aiortc subscribers pull it over WHEP, through
//! ICE-lite, DTLS-SRTP and the fan-out, and must decode it.
//!
//! A second test does the same with data channels: an aiortc publisher's channel messages
//! reach every WHEP subscriber of the stream, in order, and a subscriber joining later gets
//! the later ones.
//!
//! `tests/aiortc/setup.sh` installs the pinned aiortc into `target/aiortc-venv` on first run
//! (PyPI wheels). The test is skipped only when there is no `python3` at all; a failing
//! install fails the test. `SWITCHYARD_TEST_LOG=debug` shows the node's logs and
//! `AIORTC_VERBOSE=1` the clients' (aiortc, aioice) logs.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::aiortc::{client as client_with, python as aiortc_python, summary};
use common::{http_typed, Http, Node};

fn client(py: &Path, script: &str, url: &str, seconds: u32) -> Child {
    client_with(py, script, url, seconds, &[])
}

/// How long the publisher sends; the subscribers join after it connects and stay
/// [`SUBSCRIBE_S`], which must end before the publisher does.
const PUBLISH_S: u32 = 12;
const SUBSCRIBE_S: u32 = 5;

fn offer(node: &Node, path: &str, sdp: &str) -> Http {
    http_typed(
        &node.http_addr,
        "POST",
        path,
        "application/sdp",
        Some(sdp.as_bytes()),
    )
    .expect("POST offer")
}

/// An offer as aiortc writes it, recorded for the SDP unit tests.
const AIORTC_OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/aiortc_publish.sdp");

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn aiortc_publishes_over_whip_and_subscribes_over_whep() {
    let Some(py) = aiortc_python() else {
        eprintln!("SKIPPED webrtc_aiortc: python3 not found; install python3 to run it");
        return;
    };
    let node = Node::start(2);

    // Signaling errors, with plain HTTP.
    let r = offer(&node, "/whep/room/nobody", AIORTC_OFFER);
    assert_eq!(r.status, 404, "WHEP with no publisher: {r:?}");
    let r = offer(&node, "/whip/room/cam", "this is not an SDP offer\r\n");
    assert_eq!(r.status, 400, "garbage offer: {r:?}");
    let unusable = AIORTC_OFFER
        .replace("opus/48000/2", "speex/48000")
        .replace("VP8/90000", "theora/90000")
        .replace("H264/90000", "H263/90000");
    let r = offer(&node, "/whip/room/cam", &unusable);
    assert_eq!(r.status, 406, "offer with no usable codec: {r:?}");
    assert_eq!(node.metric_sum("switchyard_sessions{"), 0);

    // One publisher, then two subscribers: least-loaded placement spreads the three sessions
    // over both workers, so at least one subscriber is fed across workers.
    let started = Instant::now();
    let publisher = client(
        &py,
        "whip_client.py",
        &format!("{}/whip/room/cam", node.api),
        PUBLISH_S,
    );
    wait_until("the publisher's media", Duration::from_secs(20), || {
        node.metric_sum("switchyard_rx_packets_total{") > 100
    });
    let url = format!("{}/whep/room/cam", node.api);
    let subs = [
        client(&py, "whep_client.py", &url, SUBSCRIBE_S),
        client(&py, "whep_client.py", &url, SUBSCRIBE_S),
    ];
    wait_until("three sessions", Duration::from_secs(10), || {
        node.metric_sum("switchyard_sessions{") == 3
    });
    let workers: std::collections::BTreeSet<u64> = node.get("/v1/sessions").json()["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["worker"].as_u64())
        .collect();
    assert_eq!(workers.len(), 2, "sessions on both workers: {workers:?}");

    for (i, sub) in subs.into_iter().enumerate() {
        let s = summary(sub, "whep_client");
        eprintln!("subscriber {i}: {s}");
        assert_eq!(s["connection"], "connected", "{s}");
        assert!(
            s["video_frames"].as_u64().unwrap_or(0) > 30,
            "subscriber {i} decoded too few video frames: {s}"
        );
        assert!(
            s["audio_frames"].as_u64().unwrap_or(0) > 0,
            "subscriber {i} got no audio: {s}"
        );
        assert_eq!(s["delete_status"], 200, "{s}");
    }
    let p = summary(publisher, "whip_client");
    eprintln!("publisher: {p}");
    assert_eq!(p["connection"], "connected", "{p}");
    assert_eq!(p["delete_status"], 200, "{p}");

    // Every DELETE ended its session in both planes.
    wait_until("no sessions left", Duration::from_secs(5), || {
        node.metric_sum("switchyard_sessions{") == 0
    });
    assert_eq!(node.metric_sum("switchyard_control_sessions{"), 0);
    eprintln!("aiortc interop took {:?}", started.elapsed());
}

/// The messages a client summary lists for one channel label.
fn messages(v: &serde_json::Value, label: &str) -> Vec<String> {
    v[label]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Where `got` sits in `sent` as one contiguous run (nothing lost, duplicated or reordered).
fn contiguous_in(sent: &[String], got: &[String], what: &str) -> usize {
    assert!(!got.is_empty(), "{what}: no messages");
    (0..sent.len())
        .find(|&i| sent[i..].starts_with(got))
        .unwrap_or_else(|| panic!("{what}: not a contiguous run of the sent messages: {got:?}"))
}

#[test]
fn aiortc_data_channels_reach_every_whep_subscriber_in_order() {
    let Some(py) = aiortc_python() else {
        eprintln!("SKIPPED webrtc_aiortc: python3 not found; install python3 to run it");
        return;
    };
    let node = Node::start(2);
    const PUBLISH: u32 = 10;
    let publisher = client_with(
        &py,
        "whip_client.py",
        &format!("{}/whip/room/chat", node.api),
        PUBLISH,
        &["--datachannel"],
    );
    wait_until("the publisher's messages", Duration::from_secs(20), || {
        node.metric_sum("switchyard_datachannel_messages_in_total{") > 5
    });
    let url = format!("{}/whep/room/chat", node.api);
    let dc = ["--datachannel"];
    let early = [
        client_with(&py, "whep_client.py", &url, 5, &dc),
        client_with(&py, "whep_client.py", &url, 5, &dc),
    ];
    std::thread::sleep(Duration::from_millis(2500));
    let late = client_with(&py, "whep_client.py", &url, 3, &dc);

    let p = summary(publisher, "whip_client");
    let sent_chat = messages(&p["sent"], "chat");
    let sent_late = messages(&p["sent"], "late");
    eprintln!(
        "publisher: {} chat and {} late messages sent",
        sent_chat.len(),
        sent_late.len()
    );
    assert_eq!(p["connection"], "connected", "{p}");
    assert!(sent_chat.len() > 100, "{p}");

    let mut starts = Vec::new();
    for (i, sub) in early.into_iter().chain([late]).enumerate() {
        let s = summary(sub, "whep_client");
        assert_eq!(s["connection"], "connected", "subscriber {i}: {s}");
        let chat = messages(&s["received"], "chat");
        eprintln!("subscriber {i}: {} chat messages", chat.len());
        let start = contiguous_in(&sent_chat, &chat, &format!("subscriber {i} chat"));
        assert!(chat.len() > 20, "subscriber {i} got too few: {s}");
        // Text and binary, empty ones and the 60000-byte one, each as it was sent.
        if i < 2 {
            let has = |f: &dyn Fn(&str) -> bool| chat.iter().any(|m| f(m));
            assert!(
                has(&|m| m.starts_with("t:text ")),
                "subscriber {i}: no text"
            );
            assert!(has(&|m| m.starts_with("b:6:")), "subscriber {i}: no binary");
            assert!(has(&|m| m == "t:"), "subscriber {i}: no empty text");
            assert!(
                has(&|m| m.starts_with("b:0:")),
                "subscriber {i}: no empty binary"
            );
            assert!(
                has(&|m| m.starts_with("b:60000:")),
                "subscriber {i}: no large one"
            );
        }
        // "late" was opened after the subscribers joined; they get it all the same.
        let late_msgs = messages(&s["received"], "late");
        contiguous_in(&sent_late, &late_msgs, &format!("subscriber {i} late"));
        // Its own channel is not mirrored back to it.
        assert!(messages(&s["received"], "upstream").is_empty(), "{s}");
        starts.push(start);
    }
    assert!(
        starts[2] > starts[0].max(starts[1]),
        "the late subscriber starts later in the stream: {starts:?}"
    );

    // Every subscriber's own message was dropped and counted.
    assert!(node.metric_sum("switchyard_datachannel_messages_dropped_total{") >= 3);
    assert!(
        node.metric_sum("switchyard_datachannel_messages_out_total{") >= 3 * 20,
        "messages out"
    );
    wait_until("no sessions left", Duration::from_secs(5), || {
        node.metric_sum("switchyard_sessions{") == 0
    });
}
