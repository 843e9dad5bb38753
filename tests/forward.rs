//! Forwards to plain RTP (issue #5): a node started with a `[[forward]]` in its config file
//! copies a published stream to a UDP receiver here, unencrypted, one port per track; a
//! forward made with `POST /v1/forwards` does the same until `DELETE` stops it; the SDP file
//! describing a destination parses.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::Node;
use switchyard_shared::command::SrtpProfile;
use switchyard_shared::srtp::Context;

const AUDIO_SSRC: u32 = 1111;
const VIDEO_SSRC: u32 = 2222;

/// A recorder: RTP and RTCP sockets for audio (`base`, `base + 1`) and video (`base + 2`,
/// `base + 3`) on an even base port.
struct Receiver {
    base: u16,
    audio: UdpSocket,
    video: UdpSocket,
    _rtcp: [UdpSocket; 2],
}

impl Receiver {
    fn bind() -> Receiver {
        for _ in 0..200 {
            let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let base = probe.local_addr().expect("addr").port() & !1;
            drop(probe);
            if base > 60000 {
                continue;
            }
            let socks: Vec<UdpSocket> = (0..4)
                .map_while(|i| UdpSocket::bind(("127.0.0.1", base + i)).ok())
                .collect();
            let mut it = socks.into_iter();
            let (Some(a), Some(ar), Some(v), Some(vr)) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                continue; // not all four were free: another base
            };
            for s in [&a, &v] {
                s.set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
            }
            return Receiver {
                base,
                audio: a,
                video: v,
                _rtcp: [ar, vr],
            };
        }
        panic!("no four free UDP ports");
    }

    fn url(&self) -> String {
        format!("rtp://127.0.0.1:{}", self.base)
    }

    /// Everything waiting on `sock` now (after a short settle).
    fn drain(sock: &UdpSocket) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_millis(400);
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                out.push(buf[..n].to_vec());
            }
        }
        out
    }
}

/// The publisher: an SRTP sender with a known key, at a fixed address.
struct Publisher {
    sock: UdpSocket,
    ctx: Context,
    media: SocketAddr,
    seq: u16,
}

impl Publisher {
    fn create(node: &Node) -> (Publisher, u64) {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let me = sock.local_addr().expect("addr");
        let b64 = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw=="; // 28 × 0x07
        let body = format!(
            r#"{{"role":"publisher","stream":"room/cam","remote":"{me}","remoteKey":"{b64}",
                "ssrcs":[{AUDIO_SSRC},{VIDEO_SSRC}],"clockRates":[48000,90000],
                "codecs":[
                  {{"kind":"audio","payloadType":111,"name":"opus","clockRate":48000,"channels":2,"fmtp":"minptime=10;useinbandfec=1"}},
                  {{"kind":"video","payloadType":96,"name":"VP8","clockRate":90000}}]}}"#
        );
        let created = node.post("/v1/sessions", &body);
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.json()["id"].as_u64().expect("id");
        let p = Publisher {
            sock,
            ctx: Context::new(SrtpProfile::AeadAes128Gcm, &[7u8; 28]).expect("ctx"),
            media: SocketAddr::from(([127, 0, 0, 1], node.media_port)),
            seq: 1000,
        };
        (p, id)
    }

    /// The payload of packet `seq` on `ssrc`: recognisable after the trip.
    fn payload(ssrc: u32, seq: u16) -> Vec<u8> {
        (0..160u32)
            .map(|i| (i ^ u32::from(seq) ^ ssrc) as u8)
            .collect()
    }

    /// `n` audio and `n` video packets, interleaved.
    fn send(&mut self, n: u16) {
        for _ in 0..n {
            self.seq = self.seq.wrapping_add(1);
            for (ssrc, pt) in [(AUDIO_SSRC, 111u8), (VIDEO_SSRC, 96)] {
                let payload = Self::payload(ssrc, self.seq);
                let mut buf = vec![0u8; 12 + payload.len() + 16];
                buf[0] = 0x80;
                buf[1] = pt;
                buf[2..4].copy_from_slice(&self.seq.to_be_bytes());
                buf[4..8].copy_from_slice(&(u32::from(self.seq) * 960).to_be_bytes());
                buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
                buf[12..12 + payload.len()].copy_from_slice(&payload);
                let len = self
                    .ctx
                    .protect_rtp(&mut buf, 12 + payload.len())
                    .expect("protect");
                self.sock.send_to(&buf[..len], self.media).expect("send");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The forward's egresses, once `want` of them are active.
fn wait_active(node: &Node, id: &str, want: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let f = node.get(&format!("/v1/forwards/{id}"));
        assert_eq!(f.status, 200, "{}", f.body);
        let f = f.json();
        let active = f["egresses"]
            .as_array()
            .map_or(0, |e| e.iter().filter(|e| e["state"] == "active").count());
        if active == want {
            return f;
        }
        assert!(Instant::now() < deadline, "egresses not active: {f}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The SSRC the egress session sending to `remote` uses for `track`.
fn egress_ssrc(node: &Node, remote: u16, track: usize) -> u32 {
    let list = node.get("/v1/sessions").json();
    let s = list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["remote"] == format!("127.0.0.1:{remote}"))
        .unwrap_or_else(|| panic!("no session to port {remote}: {list}"));
    assert_eq!(
        s["profile"],
        serde_json::Value::Null,
        "plain: no SRTP profile"
    );
    s["ssrcs"][track].as_u64().expect("ssrc") as u32
}

/// Check what a receiver socket got: clear RTP, the egress SSRC, the publisher's payload
/// type, consecutive sequence numbers and the publisher's payloads.
fn check_stream(packets: &[Vec<u8>], ssrc: u32, pt: u8, origin_ssrc: u32, first_seq: u16) {
    assert!(packets.len() >= 10, "got {} packets", packets.len());
    let mut last: Option<u16> = None;
    for (i, p) in packets.iter().enumerate() {
        assert_eq!(p.len(), 12 + 160, "clear RTP: no SRTP tag");
        assert_eq!(p[0] >> 6, 2, "RTP version");
        assert_eq!(p[1] & 0x7f, pt);
        assert_eq!(u32::from_be_bytes([p[8], p[9], p[10], p[11]]), ssrc);
        let seq = u16::from_be_bytes([p[2], p[3]]);
        if let Some(l) = last {
            assert_eq!(seq, l.wrapping_add(1), "sequence continuity");
        }
        last = Some(seq);
        let sent_seq = first_seq.wrapping_add(i as u16);
        assert_eq!(
            p[12..],
            Publisher::payload(origin_ssrc, sent_seq)[..],
            "payload of packet {i}"
        );
    }
}

#[test]
fn forwards_deliver_plain_rtp_per_track_and_stop_when_deleted() {
    let rec = Receiver::bind();
    let dir = std::env::temp_dir().join(format!("swy-forward-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[[forward]]\nid = \"rec\"\nprefix = \"room/\"\ndestinations = [\"{}\"]\n",
            rec.url()
        ),
    )
    .expect("config");
    let node = Node::start_with_args(1, &["--config", config.to_str().expect("utf-8 path")]);

    // The config's forward is there before anything is published.
    let listed = node.get("/v1/forwards").json();
    assert_eq!(listed["forwards"][0]["id"], "rec", "{listed}");
    assert_eq!(listed["forwards"][0]["fromConfig"], true);

    let (mut publisher, publisher_id) = Publisher::create(&node);
    let f = wait_active(&node, "rec", 2);
    let ports: Vec<u64> = f["egresses"]
        .as_array()
        .expect("egresses")
        .iter()
        .map(|e| {
            u64::from(
                e["remote"]
                    .as_str()
                    .expect("remote")
                    .rsplit(':')
                    .next()
                    .expect("port")
                    .parse::<u16>()
                    .expect("port"),
            )
        })
        .collect();
    let base = u64::from(rec.base);
    assert!(ports.contains(&base) && ports.contains(&(base + 2)), "{f}");

    // Media: audio on the base port, video two above, each unencrypted and continuous.
    let first = publisher.seq.wrapping_add(1);
    publisher.send(30);
    let audio = Receiver::drain(&rec.audio);
    let video = Receiver::drain(&rec.video);
    check_stream(
        &audio,
        egress_ssrc(&node, rec.base, 0),
        111,
        AUDIO_SSRC,
        first,
    );
    check_stream(
        &video,
        egress_ssrc(&node, rec.base + 2, 1),
        96,
        VIDEO_SSRC,
        first,
    );
    assert_eq!(audio.len(), 30);
    assert_eq!(video.len(), 30);

    // The SDP file a recorder opens.
    let sdp = node.get("/v1/forwards/rec/sdp?stream=room/cam");
    assert_eq!(sdp.status, 200, "{}", sdp.body);
    assert_eq!(
        sdp.header("content-type").as_deref(),
        Some("application/sdp")
    );
    let parsed = sdp::SessionDescription::try_from(sdp.body.clone()).expect("SDP parses");
    assert_eq!(parsed.media_descriptions.len(), 2, "{}", sdp.body);
    for line in [
        format!("m=audio {} RTP/AVP 111", rec.base),
        "a=rtpmap:111 opus/48000/2".to_owned(),
        "a=fmtp:111 minptime=10;useinbandfec=1".to_owned(),
        format!("m=video {} RTP/AVP 96", rec.base + 2),
        "a=rtpmap:96 VP8/90000".to_owned(),
        "c=IN IP4 127.0.0.1".to_owned(),
    ] {
        assert!(
            sdp.body.lines().any(|l| l == line),
            "{line:?} missing:\n{}",
            sdp.body
        );
    }
    assert_eq!(
        node.get("/v1/forwards/rec/sdp").status,
        400,
        "stream missing"
    );
    assert_eq!(
        node.get("/v1/forwards/rec/sdp?stream=other/cam").status,
        404
    );
    assert_eq!(
        node.get("/v1/forwards/rec/sdp?stream=room/none").status,
        404
    );
    assert_eq!(
        node.get("/v1/forwards/nope/sdp?stream=room/cam").status,
        404
    );

    // A second stream under the prefix cannot have the same destination ports: its egress
    // fails, shows why, and is retried with backoff (the first stream is not disturbed).
    let two = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"room/two","ssrcs":[3333]}"#,
    );
    assert_eq!(two.status, 201, "{}", two.body);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = node.get("/v1/forwards/rec").json();
        let failing = f["egresses"].as_array().and_then(|e| {
            e.iter()
                .find(|e| e["stream"] == "room/two" && e["state"] == "backoff")
                .cloned()
        });
        if let Some(e) = failing {
            assert!(e["attempts"].as_u64() >= Some(1), "{e}");
            let err = e["lastError"].as_str().unwrap_or_default();
            assert!(err.contains("already used"), "{e}");
            assert!(e["retryInMs"].as_u64() <= Some(30_000), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "no backoff shown: {f}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(node.metric_sum("switchyard_forward_retries_total") >= 1);
    assert_eq!(
        node.metric_sum(r#"switchyard_forward_egresses{state="backoff"}"#),
        1
    );
    let two_id = two.json()["id"].as_u64().expect("id");
    assert_eq!(node.delete(&format!("/v1/sessions/{two_id}")).status, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.metric_sum(r#"switchyard_forward_egresses{state="backoff"}"#) != 0 {
        assert!(
            Instant::now() < deadline,
            "egress of a gone publisher stays"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A forward made through the API works the same.
    let second = Receiver::bind();
    for bad in [
        r#"{"destinations":["node://a b"]}"#,
        r#"{"destinations":["node://host:0"]}"#,
        r#"{"destinations":[]}"#,
        r#"{"destinations":["rtp://127.0.0.1:5005"]}"#,
        r#"{"destinations":["rtp://127.0.0.1:5004"],"extra":1}"#,
        r#"{"prefix":"a b","destinations":["rtp://127.0.0.1:5004"]}"#,
        "not json",
    ] {
        let r = node.post("/v1/forwards", bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.json()["error"].is_string());
    }
    let created = node.post(
        "/v1/forwards",
        &format!(
            r#"{{"prefix":"room/","destinations":["{}"]}}"#,
            second.url()
        ),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created.header("location"),
        Some(format!("/v1/forwards/{id}"))
    );
    wait_active(&node, &id, 2);
    let first = publisher.seq.wrapping_add(1);
    publisher.send(20);
    let audio2 = Receiver::drain(&second.audio);
    check_stream(
        &audio2,
        egress_ssrc(&node, second.base, 0),
        111,
        AUDIO_SSRC,
        first,
    );
    assert_eq!(
        Receiver::drain(&rec.audio).len(),
        20,
        "the first forward still runs"
    );
    let _ = Receiver::drain(&second.video);
    let _ = Receiver::drain(&rec.video);
    assert_eq!(
        node.metric_sum(r#"switchyard_forward_egresses{state="active"}"#),
        4
    );

    // DELETE stops the flow to the second receiver only.
    assert_eq!(node.delete(&format!("/v1/forwards/{id}")).status, 204);
    assert_eq!(node.delete(&format!("/v1/forwards/{id}")).status, 404);
    assert_eq!(
        node.delete("/v1/forwards/rec").status,
        409,
        "config forwards stay"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.metric_sum("switchyard_control_sessions{role=\"subscriber\"}") != 2 {
        assert!(Instant::now() < deadline, "egress sessions not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    publisher.send(10);
    assert!(
        Receiver::drain(&second.audio).is_empty(),
        "deleted forward still sends"
    );
    assert!(
        Receiver::drain(&second.video).is_empty(),
        "deleted forward still sends"
    );
    assert_eq!(Receiver::drain(&rec.audio).len(), 10);

    // The publisher leaves: its egresses go with it.
    assert_eq!(
        node.delete(&format!("/v1/sessions/{publisher_id}")).status,
        204
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.get("/v1/sessions").json()["sessions"]
        .as_array()
        .map(Vec::len)
        != Some(0)
    {
        assert!(Instant::now() < deadline, "egresses outlived the publisher");
        std::thread::sleep(Duration::from_millis(50));
    }
    let f = node.get("/v1/forwards/rec").json();
    assert_eq!(f["egresses"].as_array().map(Vec::len), Some(0), "{f}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn api_forwards_survive_a_control_plane_restart_with_redis() {
    if !common::Redis::required("api_forwards_survive_a_control_plane_restart_with_redis") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("swy-forward-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let redis = common::Redis::start_free(&dir, false);
    let mut node = Node::start_with_args(1, &["--redis", &redis.url()]);
    let rec = Receiver::bind();
    let (mut publisher, _) = Publisher::create(&node);
    let created = node.post(
        "/v1/forwards",
        &format!(r#"{{"id":"keep","destinations":["{}"]}}"#, rec.url()),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let before = wait_active(&node, "keep", 2);
    let sessions = |f: &serde_json::Value| -> Vec<u64> {
        let mut s: Vec<u64> = f["egresses"]
            .as_array()
            .expect("egresses")
            .iter()
            .filter_map(|e| e["session"].as_u64())
            .collect();
        s.sort_unstable();
        s
    };

    node.kill_controlplane();
    node.start_controlplane();
    node.wait_healthy();
    // Back from the store, and the running egresses adopted rather than set up twice.
    let after = wait_active(&node, "keep", 2);
    assert_eq!(sessions(&after), sessions(&before), "{after}");
    assert_eq!(
        node.get("/v1/sessions").json()["sessions"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "publisher and two egresses, no duplicates"
    );
    let first = publisher.seq.wrapping_add(1);
    publisher.send(15);
    let audio = Receiver::drain(&rec.audio);
    check_stream(
        &audio,
        egress_ssrc(&node, rec.base, 0),
        111,
        AUDIO_SSRC,
        first,
    );

    // Deleted, it stays deleted across the next restart.
    assert_eq!(node.delete("/v1/forwards/keep").status, 204);
    node.kill_controlplane();
    node.start_controlplane();
    node.wait_healthy();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(node.get("/v1/forwards/keep").status, 404);
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.get("/v1/sessions").json()["sessions"]
        .as_array()
        .map(Vec::len)
        != Some(1)
    {
        assert!(
            Instant::now() < deadline,
            "egresses of a deleted forward remain"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(node);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
