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
//!
//! The H.264 tests publish x264's output (`gstreamer1.0-plugins-ugly`) and watch it with
//! headless Chromium on the demo page, which reports the decoded frames and the codec in use
//! from `getStats()`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::browser::{find_chromium, num, one_chromium_test_at_a_time, Chromium, Reports};
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

/// Why GStreamer's webrtcbin cannot run here with `elements`, if it cannot.
fn missing(elements: &[&str]) -> Option<String> {
    if !netns::is_root() {
        return Some("needs root for a network namespace".into());
    }
    let probe = format!(
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); \
         from gi.repository import Gst; Gst.init(None); \
         missing = [e for e in {elements:?} if Gst.ElementFactory.find(e) is None]; \
         print(' '.join(missing)); raise SystemExit(1 if missing else 0)"
    );
    match Command::new(PYTHON).args(["-c", &probe]).output() {
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

const VP8_ELEMENTS: &[&str] = &[
    "webrtcbin",
    "nicesrc",
    "vp8enc",
    "opusenc",
    "rtpvp8pay",
    "rtpopuspay",
];
const H264_ELEMENTS: &[&str] = &[
    "webrtcbin",
    "nicesrc",
    "x264enc",
    "opusenc",
    "rtph264pay",
    "rtpopuspay",
];

/// The tests of this file one at a time: each runs a software encoder and a WebRTC
/// receiver, and two of them side by side on a two-core machine starve each other.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Skip with a loud line (or fail under CI) when `why` says something is missing.
fn skipped(test: &str, why: Option<String>) -> bool {
    let Some(why) = why else { return false };
    assert!(
        std::env::var("CI").is_err(),
        "CI must run the GStreamer test {test}: {why}"
    );
    netns::skip(test, &why);
    true
}

/// The publisher script in the network namespace, signaled through this test: its offer
/// POSTed to `path` on `node`, the answer handed back, its connection states read aside.
struct Publisher {
    child: Child,
    offer: String,
    answer: String,
    connected: mpsc::Receiver<()>,
    states: Option<JoinHandle<Vec<String>>>,
}

impl Publisher {
    fn start(net: &Net, node: &Node, path: &str, codec: &str, seconds: u32) -> Publisher {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &net.namespaces[0], PYTHON, SCRIPT])
            .arg(seconds.to_string())
            .args(["--codec", codec])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the GStreamer publisher");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut stdin = child.stdin.take().expect("stdin");

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
        let r = http_typed(
            &node.http_addr,
            "POST",
            path,
            "application/sdp",
            Some(offer.as_bytes()),
        )
        .expect("WHIP POST");
        assert_eq!(r.status, 201, "{}\noffer:\n{offer}", r.body);
        let answer = r.body.clone();
        writeln!(stdin, "{}\nEND", answer.trim_end()).expect("answer to the publisher");
        drop(stdin);

        let (connected_tx, connected) = mpsc::channel();
        let states = std::thread::spawn(move || {
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
        Publisher {
            child,
            offer,
            answer,
            connected,
            states: Some(states),
        }
    }

    /// Waits for the script to end by itself, then returns its connection states.
    fn finish(mut self) -> Vec<String> {
        let _ = self.child.wait();
        self.states
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // `ip netns exec` execs the script, so this is the python process itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn gstreamer_max_bundle_publisher_is_watched_over_whep() {
    if skipped("gstreamer_whip", missing(VP8_ELEMENTS)) {
        return;
    }
    let _serial = serial();
    let net = Net::new("g", 47).expect("network namespaces");
    let node = Node::spawn_bound(
        1,
        &net.host,
        vec!["--media-announce".into(), net.host.clone().into()],
    );
    node.wait_healthy();

    let publisher = Publisher::start(&net, &node, "/whip/gst/cam", "vp8", PUBLISH_S);
    assert!(
        publisher.offer.contains("a=bundle-only"),
        "the offer has the shape this test is about:\n{}",
        publisher.offer
    );
    let media: Vec<&str> = publisher
        .answer
        .lines()
        .filter(|l| l.starts_with("m="))
        .collect();
    assert_eq!(media.len(), 2, "{}", publisher.answer);
    assert!(
        media.iter().all(|m| !m.contains(" 0 UDP")),
        "both m-lines accepted: {media:?}"
    );
    let up = publisher
        .connected
        .recv_timeout(Duration::from_secs(30))
        .is_ok();

    // An independent WHEP subscriber (aiortc) decodes what GStreamer sends.
    let watched = up.then(|| {
        let py = common::aiortc::python().expect("python3 for aiortc");
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
    let states = publisher.finish();
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

/// x264 in GStreamer publishes H.264 (`codec`: the script's `--codec`); headless Chromium
/// watches over WHEP on the demo page and must decode it as H.264, negotiated as `profile`
/// (the first four hex digits of the profile-level-id Chromium reports for its decoder).
fn h264_is_decoded_by_chromium(test: &str, tag: &str, octet: u8, codec: &str, profile: &str) {
    let chromium = find_chromium();
    let why = missing(H264_ELEMENTS).or_else(|| {
        chromium
            .is_none()
            .then(|| "chromium is not installed (apt-get install -y chromium)".to_owned())
    });
    if skipped(test, why) {
        return;
    }
    let Some(bin) = chromium else { return };
    let _serial = serial();
    let _chromium = one_chromium_test_at_a_time();
    let net = Net::new(tag, octet).expect("network namespaces");
    let node = Node::spawn_bound(
        1,
        &net.host,
        vec!["--media-announce".into(), net.host.clone().into()],
    );
    node.wait_healthy();

    let stream = format!("gst/{codec}");
    let publisher = Publisher::start(&net, &node, &format!("/whip/{stream}"), codec, 60);
    assert!(
        publisher.answer.contains("H264/90000")
            && publisher.answer.contains("packetization-mode=1"),
        "the node accepted H.264:\n{}",
        publisher.answer
    );
    assert!(
        publisher
            .connected
            .recv_timeout(Duration::from_secs(30))
            .is_ok(),
        "the publisher connected"
    );

    let mut reports = Reports::start();
    let url = format!("{}/?watch={stream}&report={}/sub", node.api, reports.base);
    let watcher = Chromium::start(&bin, "watcher", &url);
    // 15 fps with a keyframe every 2 s: 100 frames take about 9 s once connected.
    let got = reports.wait("/sub", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") > 100.0 && num(r, "audioPacketsReceived") > 0.0
    });
    eprintln!("chromium watching {codec}: {got}");
    assert_eq!(got["videoCodec"], "video/H264", "{got}");
    let fmtp = got["videoFmtp"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        fmtp.contains(&format!("profile-level-id={profile}"))
            && fmtp.contains("packetization-mode=1"),
        "Chromium decodes it as profile {profile}: {got}"
    );
    assert_eq!(got["frameSize"], "320x240", "{got}");
    // The cached group, downloaded as an Annex B stream, decodes with FFmpeg's H.264
    // decoder: every access unit of it, from the IDR on.
    let py = common::aiortc::python().expect("python3 (checked with the GStreamer bindings)");
    let fetched =
        common::aiortc::fetch_group(&py, &format!("{}/v1/streams/{stream}/fetch", node.api));
    eprintln!("fetch {codec}: {fetched}");
    assert_eq!(fetched["status"], 200, "{fetched}");
    assert_eq!(fetched["content_type"], "video/h264", "{fetched}");
    assert_eq!(fetched["codec"], "h264", "{fetched}");
    let frames = fetched["frames"].as_u64().unwrap_or(0);
    assert!(frames >= 1, "{fetched}");
    assert_eq!(
        fetched["frames_decoded"].as_u64(),
        Some(frames),
        "{fetched}"
    );
    assert_eq!(fetched["first_key_frame"], true, "{fetched}");
    assert_eq!(
        (fetched["width"].as_u64(), fetched["height"].as_u64()),
        (Some(320), Some(240)),
        "{fetched}"
    );
    drop(watcher);
    drop(publisher);
    assert_eq!(
        node.metric_sum("switchyard_drops_total{worker=\"0\",reason=\"srtp_auth\"}"),
        0
    );
}

#[test]
fn gstreamer_h264_constrained_baseline_is_decoded_by_chromium() {
    // x264 signals constrained baseline as 42c0.., Chromium offers it as 42e0..: the same
    // profile (RFC 6184 names it by constraint_set1, not by the whole byte).
    h264_is_decoded_by_chromium("gstreamer_h264_chromium", "h", 48, "h264", "42e0");
}

#[test]
fn gstreamer_h264_high_profile_is_decoded_by_chromium() {
    // Chromium without a hardware decoder offers no High (64) entry; the node gives it the
    // stream on its High 4:4:4 (f4) entry, whose decoder decodes High.
    h264_is_decoded_by_chromium("gstreamer_h264_high_chromium", "i", 49, "h264-high", "f400");
}
