//! GStreamer's WHIP publisher shape against a real node (issue 11): `webrtcbin` with
//! max-bundle offers its second track as a `bundle-only` m-line (port 0), without the MID
//! header extension, with an RSA certificate. The node used to reject that m-line and the
//! client never completed ICE.
//!
//! libnice gathers no loopback candidates, so the publisher runs in a network namespace and
//! reaches the node over a veth pair: the node's media sockets are bound to the host side of
//! the bridge and announce it. Signaling goes through this test (the script prints its offer
//! and reads the answer). Needs root, iproute2 and GStreamer's webrtcbin for python3
//! (`python3-gi gir1.2-gst-plugins-bad-1.0 gstreamer1.0-nice gstreamer1.0-plugins-{base,good,bad}`,
//! installed by scripts/test.sh); skipped loudly without them, and a failure under CI=true.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{self, Net};
use common::{http_typed, Node};

const PYTHON: &str = "/usr/bin/python3";
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/gstreamer/whip_publish.py"
);

/// Why GStreamer's webrtcbin cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !netns::is_root() {
        return Some("needs root for a network namespace".into());
    }
    let probe = "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); \
                 from gi.repository import Gst; Gst.init(None); \
                 missing = [e for e in ('webrtcbin', 'nicesrc', 'vp8enc', 'opusenc', 'rtpvp8pay', 'rtpopuspay') \
                            if Gst.ElementFactory.find(e) is None]; \
                 print(' '.join(missing)); raise SystemExit(1 if missing else 0)";
    match Command::new(PYTHON).args(["-c", probe]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "GStreamer elements missing: {}{}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Some(format!("{PYTHON}: {e}")),
    }
}

#[test]
fn gstreamer_max_bundle_publisher_connects_and_sends_both_tracks() {
    if let Some(why) = missing() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the GStreamer test: {why}"
        );
        netns::skip("gstreamer_whip", &why);
        return;
    }
    let net = Net::new("g", 47).expect("network namespaces");
    let node = Node::spawn_bound(
        1,
        &net.host,
        vec!["--media-announce".into(), net.host.clone().into()],
    );
    node.wait_healthy();

    let mut client = Command::new("ip")
        .args(["netns", "exec", &net.namespaces[0], PYTHON, SCRIPT, "8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the GStreamer publisher");
    let mut out = BufReader::new(client.stdout.take().expect("stdout"));
    let mut stdin = client.stdin.take().expect("stdin");

    // The offer, as webrtcbin wrote it.
    let mut line = String::new();
    let mut offer = String::new();
    let mut in_offer = false;
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).expect("read the publisher") > 0,
            "the publisher ended before its offer"
        );
        match line.trim_end() {
            "OFFER" => in_offer = true,
            "END" if in_offer => break,
            l if in_offer => {
                offer.push_str(l);
                offer.push_str("\r\n");
            }
            _ => {}
        }
    }
    assert!(
        offer.contains("a=bundle-only"),
        "the offer has the shape this test is about:\n{offer}"
    );

    let r = http_typed(
        &node.http_addr,
        "POST",
        "/whip/gst/cam",
        "application/sdp",
        Some(offer.as_bytes()),
    )
    .expect("WHIP POST");
    assert_eq!(r.status, 201, "{}", r.body);
    let answer = r.body.clone();
    let media: Vec<&str> = answer.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(media.len(), 2, "{answer}");
    assert!(
        media.iter().all(|m| !m.contains(" 0 UDP")),
        "both m-lines accepted: {media:?}"
    );
    writeln!(stdin, "{}\nEND", answer.trim_end()).expect("answer to the publisher");
    drop(stdin);

    let mut states = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 || Instant::now() > deadline {
            break;
        }
        if let Some(s) = line.trim_end().strip_prefix("STATE ") {
            states.push(s.to_owned());
        }
    }
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        states.iter().any(|s| s.ends_with("pc=connected")),
        "ICE and DTLS completed: {states:?}"
    );
    // Both tracks arrived and authenticated (one publisher, two SSRCs from a=ssrc).
    let rx = node.metric_sum("switchyard_rx_packets_total{");
    assert!(rx > 100, "media reached the node: {rx} packets");
    assert_eq!(
        node.metric_sum("switchyard_drops_total{worker=\"0\",reason=\"srtp_auth\"}"),
        0
    );
    let sessions = node.get("/v1/sessions").json();
    let publisher = sessions["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["role"] == "publisher"))
        .cloned()
        .expect("the publisher's session");
    assert_eq!(
        publisher["ssrcs"].as_array().map(Vec::len),
        Some(2),
        "video and audio: {publisher}"
    );
}
