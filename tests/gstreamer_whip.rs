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
//! installed by scripts/test.sh) and aiortc for the WHEP subscriber (tests/aiortc/setup.sh);
//! skipped loudly without them, and a failure under CI=true.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::{self, Net};
use common::{http_typed, Node};

const PYTHON: &str = "/usr/bin/python3";
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/gstreamer/whip_publish.py"
);
/// The publisher sends this long after its answer; the subscriber joins once it is connected
/// and watches [`SUBSCRIBE_S`] (15 fps: more than 100 frames need 7 s of decoded video).
const PUBLISH_S: u32 = 22;
const SUBSCRIBE_S: u32 = 12;

/// aiortc's python (tests/aiortc/setup.sh installs it on first use).
fn aiortc_python() -> std::path::PathBuf {
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/aiortc/setup.sh"
        ))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/aiortc/setup.sh");
    assert!(out.status.success(), "tests/aiortc/setup.sh failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let py = stdout
        .lines()
        .last()
        .expect("setup.sh prints the python path");
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(py.trim())
}

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
fn gstreamer_max_bundle_publisher_is_watched_over_whep() {
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
        .args(["netns", "exec", &net.namespaces[0], PYTHON, SCRIPT])
        .arg(PUBLISH_S.to_string())
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

    // The publisher's states, read aside while a WHEP subscriber watches.
    let (connected_tx, connected) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut states = Vec::new();
        for line in out.lines().map_while(Result::ok) {
            if let Some(s) = line.strip_prefix("STATE ") {
                if s.ends_with("pc=connected")
                    && !states.iter().any(|x: &String| x.ends_with("pc=connected"))
                {
                    let _ = connected_tx.send(());
                }
                states.push(s.to_owned());
            }
        }
        states
    });
    let up = connected.recv_timeout(Duration::from_secs(30)).is_ok();

    // An independent WHEP subscriber (aiortc) decodes what GStreamer sends.
    let watched = up.then(|| {
        let py = aiortc_python();
        let child = Command::new(&py)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/aiortc/whep_client.py"
            ))
            .arg(format!("{}/whep/gst/cam", node.api))
            .args(["--seconds", &SUBSCRIBE_S.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the aiortc WHEP subscriber");
        let out = child.wait_with_output().expect("WHEP subscriber");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let last = stdout.lines().last().unwrap_or_default().to_owned();
        serde_json::from_str::<serde_json::Value>(&last)
            .unwrap_or_else(|e| panic!("WHEP subscriber: no JSON summary ({e}): {stdout}"))
    });
    let _ = client.wait();
    let states = reader.join().expect("publisher reader");
    assert!(up, "ICE and DTLS completed: {states:?}");
    let s = watched.expect("watched");
    assert!(
        s["video_frames"].as_u64().unwrap_or(0) > 100,
        "the WHEP subscriber decoded GStreamer's VP8: {s}"
    );
    assert!(
        s["audio_frames"].as_u64().unwrap_or(0) > 0,
        "the WHEP subscriber got GStreamer's Opus: {s}"
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
