//! A whole node as users run it: the `switchyard` binary's two processes on loopback, driven
//! through the public surfaces (REST API, SRTP media from the bundled generator, /metrics).

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{Node, BIN};
use switchyard_bench::crypto::Profile;
use switchyard_bench::{run, LoadSpec, Target};

fn load(subscribers: usize, duration: Duration) -> LoadSpec {
    LoadSpec {
        publishers: 1,
        subscribers,
        duration,
        warmup: Duration::from_millis(500),
        rate: 200,
        size: 1000,
        bench_cores: Vec::new(),
        drain: Duration::from_millis(800),
        ..LoadSpec::default()
    }
}

#[test]
fn media_keeps_flowing_while_the_control_plane_restarts() {
    let mut node = Node::start(2);
    let target = Target::Node {
        api: node.api.clone(),
        profile: Profile::AeadAes128Gcm,
        cpu_pid: None,
        worker: None,
        webrtc: None,
    };
    // The issue's acceptance run: 1 publisher → 50 subscribers over 2 workers for 5 s.
    let spec = load(50, Duration::from_secs(5));
    let bench = std::thread::spawn(move || run(&spec, &target));

    // Let the bench create its 31 sessions and start sending, then kill the control plane.
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.metric_sum("switchyard_forwarded_packets_total{") < 1000 {
        assert!(Instant::now() < deadline, "media did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    node.kill_controlplane();
    let forwarded = node.forwarded_direct();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        node.forwarded_direct() > forwarded,
        "media must flow with no control plane"
    );
    node.start_controlplane();
    node.wait_healthy();

    // The restarted control plane rebuilt its view from the data plane's snapshot.
    let list = node.get("/v1/sessions").json();
    let sessions = list["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 51, "{list}");
    let workers: std::collections::BTreeSet<u64> = sessions
        .iter()
        .filter_map(|s| s["worker"].as_u64())
        .collect();
    assert_eq!(workers.len(), 2, "sessions are spread over both workers");
    assert_eq!(
        sessions.iter().filter(|s| s["role"] == "publisher").count(),
        1
    );
    assert!(
        sessions.iter().all(|s| s.get("localKey").is_none()),
        "keys are shown only at creation"
    );

    let report = bench.join().expect("bench thread").expect("bench run");
    assert!(report.sent_packets > 500, "{report:?}");
    assert_eq!(report.lost_packets, 0, "{report:?}");
    assert_eq!(report.errors.decrypt, 0, "{report:?}");
    assert_eq!(report.errors.ssrc_mismatch, 0, "{report:?}");
    assert_eq!(report.errors.misrouted, 0, "{report:?}");
    assert_eq!(report.errors.sequence_breaks, 0, "{report:?}");
    assert_eq!(report.errors.bad_payload, 0, "{report:?}");
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert_eq!(report.subscribers_total, 50);
    assert_eq!(
        report.received_packets, report.expected_packets,
        "{report:?}"
    );

    // The bench deleted its sessions through the restarted control plane.
    assert_eq!(
        node.get("/v1/sessions").json()["sessions"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(node.metric_sum("switchyard_sessions{"), 0);
}

#[test]
fn a_restarted_data_plane_gets_its_sessions_back() {
    restart_data_plane(false);
}

/// Issue 14: a clean SIGTERM leaves no ring or stats file in /dev/shm (the journal stays,
/// docs/crypto.md), and the control plane re-attaches to the next data plane's new ring.
#[test]
fn a_cleanly_stopped_data_plane_removes_its_shared_memory_and_comes_back() {
    restart_data_plane(true);
}

fn restart_data_plane(clean: bool) {
    let mut node = Node::start(2);
    let p = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"room/cam","ssrcs":[1111]}"#,
    );
    assert_eq!(p.status, 201, "{}", p.body);
    let s = node.post(
        "/v1/sessions",
        r#"{"role":"subscriber","stream":"room/cam","remote":"127.0.0.1:9"}"#,
    );
    assert_eq!(s.status, 201, "{}", s.body);
    let pid_before = node.wait_healthy()["dataplanePid"].clone();

    let (shm, id) = (node.shm.clone(), node.node_id.clone());
    let file = |ext: &str| shm.join(format!("switchyard-{id}.{ext}"));
    if clean {
        let status = node.stop_dataplane().expect("stopped");
        assert!(status.success(), "clean stop: {status:?}");
        assert!(!file("ring").exists(), "ring left behind");
        assert!(!file("stats").exists(), "stats left behind");
        assert!(file("srtp").exists(), "the SRTP journal must stay");
    } else {
        node.kill_dataplane();
        assert!(file("ring").exists() && file("stats").exists());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.get("/health").status != 503 {
        assert!(
            Instant::now() < deadline,
            "health must report the data plane down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"room/other"}"#,
    );
    assert_eq!(refused.status, 503, "{}", refused.body);

    node.start_dataplane();
    let health = node.wait_healthy();
    assert_ne!(health["dataplanePid"], pid_before);
    // Both sessions were provisioned again, with the same ids and keys.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.metric_sum("switchyard_sessions{") != 2 {
        assert!(
            Instant::now() < deadline,
            "sessions were not re-provisioned"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let list = node.get("/v1/sessions").json();
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(
        node.delete(&format!("/v1/sessions/{}", p.json()["id"]))
            .status,
        204
    );
    assert_eq!(
        node.delete(&format!("/v1/sessions/{}", s.json()["id"]))
            .status,
        204
    );
    assert_eq!(node.metric_sum("switchyard_sessions{"), 0);
}

/// Issue 9 item 5: a restarted control plane hands out no id it handed out before (not even
/// a deleted session's), serves WHEP for a WHIP publisher that outlived it, and still ends
/// sessions through the Locations the old one answered.
#[test]
fn a_restarted_control_plane_reuses_no_id_and_keeps_whip_media() {
    const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");
    const WATCH: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_subscribe.sdp");
    let mut node = Node::start(1);
    let addr = node.http_addr.clone();
    let sdp = |path: &str, body: &str| {
        common::http_typed(
            &addr,
            "POST",
            path,
            "application/sdp",
            Some(body.as_bytes()),
        )
        .expect("POST")
    };
    let id = |r: &common::Http| r.json()["id"].as_u64().expect("id");
    let whip = sdp("/whip/restart/cam", OFFER);
    assert_eq!(whip.status, 201, "{}", whip.body);
    let whip_location = whip.header("location").expect("Location");
    let kept = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"restart/a"}"#,
    );
    assert_eq!(kept.status, 201, "{}", kept.body);
    // The newest session is deleted: only the data plane can remember its id now.
    let gone = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"restart/b"}"#,
    );
    assert_eq!(gone.status, 201, "{}", gone.body);
    assert_eq!(
        node.delete(&format!("/v1/sessions/{}", id(&gone))).status,
        204
    );

    node.kill_controlplane();
    node.start_controlplane();
    node.wait_healthy();

    let after = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"restart/c"}"#,
    );
    assert_eq!(after.status, 201, "{}", after.body);
    assert!(
        id(&after) > id(&gone),
        "id {} handed out again after a restart (deleted session {}, live {})",
        id(&after),
        id(&gone),
        id(&kept)
    );
    // WHEP follows the publisher's negotiated codecs, restored from the snapshot.
    let whep = sdp("/whep/restart/cam", WATCH);
    assert_eq!(whep.status, 201, "{}", whep.body);
    assert!(whep.body.contains("a=sendonly"), "{}", whep.body);
    let whep_location = whep.header("location").expect("Location");
    // The old Location still ends the publisher (its secret came back with the snapshot).
    for location in [whep_location, whip_location] {
        let r = common::http(&node.http_addr, "DELETE", &location, None).expect("DELETE");
        assert_eq!(r.status, 200, "DELETE {location}: {}", r.body);
    }
}

/// Issue 9: statically keyed sessions are provisioned again after a data-plane restart with
/// the same keys. The new data plane must neither reuse an SRTP or SRTCP index under those
/// keys (a two-time pad / GCM nonce reuse) nor forget a publisher's rollover counter.
#[test]
fn a_restarted_data_plane_never_reuses_an_srtp_index() {
    use switchyard_shared::srtp::{Context, Profile as P, MAX_OVERHEAD};
    let mut node = Node::start(1);
    let health = node.wait_healthy();
    let media: std::net::SocketAddr = format!("127.0.0.1:{}", health["mediaPort"])
        .parse()
        .expect("media address");
    let publisher = UdpSocket::bind("127.0.0.1:0").expect("publisher socket");
    let viewer = UdpSocket::bind("127.0.0.1:0").expect("viewer socket");
    viewer
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    // The keys below in base64: the publisher protects with 0x11…, the node protects to
    // the viewer with 0x44….
    let (pub_in, sub_out) = ([0x11u8; 28], [0x44u8; 28]);
    let p = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"room/cam","ssrcs":[1111],"profile":"AEAD_AES_128_GCM",
            "remoteKey":"EREREREREREREREREREREREREREREREREREREQ==",
            "localKey":"IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIg=="}"#,
    );
    assert_eq!(p.status, 201, "{}", p.body);
    let s = node.post(
        "/v1/sessions",
        &format!(
            r#"{{"role":"subscriber","stream":"room/cam","remote":"{}","ssrcs":[2222],
                "profile":"AEAD_AES_128_GCM",
                "remoteKey":"MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMw==",
                "localKey":"RERERERERERERERERERERERERERERERERERERA=="}}"#,
            viewer.local_addr().expect("addr")
        ),
    );
    assert_eq!(s.status, 201, "{}", s.body);

    // The publisher's context and the viewer's: real peers, they live across the restart.
    let mut tx = Context::new(P::AeadAes128Gcm, &pub_in).expect("publisher ctx");
    let mut rx = Context::new(P::AeadAes128Gcm, &sub_out).expect("viewer ctx");
    let mut seq = 65_500u16;
    let send_media = |tx: &mut Context, seq: &mut u16, sr: bool| {
        let mut b = vec![0x80, 96];
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&(u32::from(*seq) * 3000).to_be_bytes());
        b.extend_from_slice(&1111u32.to_be_bytes());
        b.extend_from_slice(&[0x5a; 200]);
        let n = b.len();
        b.resize(n + MAX_OVERHEAD, 0);
        let n = tx.protect_rtp(&mut b, n).expect("protect");
        publisher.send_to(&b[..n], media).expect("send");
        *seq = seq.wrapping_add(1);
        if sr {
            // A sender report: the node forwards it to the viewer under SRTCP.
            let mut r = vec![0x80, 200, 0, 6];
            r.extend_from_slice(&1111u32.to_be_bytes());
            r.extend_from_slice(&[0; 8]); // NTP
            r.extend_from_slice(&(u32::from(*seq) * 3000).to_be_bytes());
            r.extend_from_slice(&[0, 0, 0, 9, 0, 0, 7, 0]);
            let n = r.len();
            r.resize(n + MAX_OVERHEAD, 0);
            let n = tx.protect_rtcp(&mut r, n).expect("protect rtcp");
            publisher.send_to(&r[..n], media).expect("send rtcp");
        }
    };
    // Everything the viewer receives must authenticate with its one context: an index
    // reused under its key is a replay to it, and a wrong ROC fails authentication.
    let receive = |rx: &mut Context, rtp: &mut usize, rtcp: &mut usize, bad: &mut Vec<String>| {
        let mut buf = [0u8; 1500];
        while let Ok(n) = viewer.recv(&mut buf) {
            let pkt = &mut buf[..n];
            let is_rtcp = (192..=223).contains(&pkt[1]);
            let r = if is_rtcp {
                rx.unprotect_rtcp(pkt).map(|_| *rtcp += 1)
            } else {
                rx.unprotect_rtp(pkt).map(|_| *rtp += 1)
            };
            if let Err(e) = r {
                bad.push(format!("{} {e}", if is_rtcp { "SRTCP" } else { "SRTP" }));
            }
        }
    };
    let (mut rtp, mut rtcp, mut bad) = (0, 0, Vec::new());
    // Past the sequence wrap (the publisher's ROC becomes 1), with sender reports.
    for i in 0..60 {
        send_media(&mut tx, &mut seq, i % 10 == 9);
        std::thread::sleep(Duration::from_millis(5));
    }
    receive(&mut rx, &mut rtp, &mut rtcp, &mut bad);
    assert!(
        rtp >= 40 && rtcp >= 1,
        "before: {rtp} RTP, {rtcp} RTCP, {bad:?}"
    );
    assert!(bad.is_empty(), "{bad:?}");

    let pid_before = node.wait_healthy()["dataplanePid"].clone();
    node.kill_dataplane();
    // Until the control plane has seen the death, /health and the old stats file still say
    // 200 and 2 sessions: wait for it, then for the new data plane's own count.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.get("/health").status != 503 {
        assert!(
            Instant::now() < deadline,
            "health must report the data plane down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.start_dataplane();
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.wait_healthy()["dataplanePid"] == pid_before {
        assert!(
            Instant::now() < deadline,
            "the new data plane never reported"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.metric_sum("switchyard_sessions{") != 2 {
        assert!(
            Instant::now() < deadline,
            "sessions were not re-provisioned"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut rtp, mut rtcp) = (0, 0);
    for i in 0..60 {
        send_media(&mut tx, &mut seq, i % 10 == 9);
        std::thread::sleep(Duration::from_millis(5));
    }
    receive(&mut rx, &mut rtp, &mut rtcp, &mut bad);
    assert!(bad.is_empty(), "after the restart: {bad:?}");
    // Loopback under a loaded machine may drop a few; the old data plane got none through.
    assert!(
        rtp >= 40,
        "the publisher at ROC 1 must get through after the restart: {rtp} of 60"
    );
    assert!(rtcp >= 1, "sender reports after the restart: {rtcp}");
}

#[test]
fn bad_requests_get_json_errors_and_change_nothing() {
    let node = Node::start(1);
    let ok = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"a/b","profile":"AES_CM_128_HMAC_SHA1_80"}"#,
    );
    assert_eq!(ok.status, 201, "{}", ok.body);
    assert!(ok
        .headers
        .to_ascii_lowercase()
        .contains("location: /v1/sessions/"));
    let created = ok.json();
    assert_eq!(created["profile"], "AES_CM_128_HMAC_SHA1_80");
    assert_eq!(
        created["localKey"].as_str().map(str::len),
        Some(40),
        "30 bytes in base64"
    );

    let big = format!(
        r#"{{"role":"publisher","stream":"{}"}}"#,
        "x".repeat(70_000)
    );
    let cases: Vec<(&str, &str, &str, u16, &str)> = vec![
        ("POST", "/v1/sessions", "{not json", 400, "invalid JSON"),
        ("POST", "/v1/sessions", "", 400, "invalid JSON"),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"king","stream":"a"}"#,
            400,
            "role",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"publisher","stream":"a b"}"#,
            400,
            "stream",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"publisher","stream":""}"#,
            400,
            "stream",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"subscriber","stream":"a/b"}"#,
            400,
            "remote",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"subscriber","stream":"a/b","remote":"nowhere"}"#,
            400,
            "remote",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"subscriber","stream":"a/b","remote":"0.0.0.0:5"}"#,
            400,
            "remote",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"publisher","stream":"c","profile":"NULL"}"#,
            400,
            "profile",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"publisher","stream":"c","remoteKey":"AAAA"}"#,
            400,
            "remoteKey",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"publisher","stream":"c","localKey":"!!"}"#,
            400,
            "localKey",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"publisher","stream":"c","ssrcs":[0]}"#,
            400,
            "ssrcs",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"publisher","stream":"c","ssrcs":[5,5]}"#,
            400,
            "ssrcs",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"publisher","stream":"c","ssrcs":[1,2,3,4,5]}"#,
            400,
            "ssrcs",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"publisher","stream":"c","worker":7}"#,
            400,
            "worker",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"publisher","stream":"c","extra":1}"#,
            400,
            "extra",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"role":"publisher","stream":"a/b"}"#,
            409,
            "stream busy",
        ),
        ("POST", "/v1/sessions", &big, 413, "larger than"),
        ("GET", "/v1/sessions/999", "", 404, "no such session"),
        ("GET", "/v1/sessions/abc", "", 404, "no such session"),
        ("DELETE", "/v1/sessions/999", "", 404, "no such session"),
        ("GET", "/nope", "", 404, "no such resource"),
        ("PUT", "/v1/sessions", "", 405, "method not allowed"),
    ];
    for (method, path, body, status, needle) in cases {
        let r = common::http(&node.http_addr, method, path, Some(body.as_bytes())).expect("http");
        assert_eq!(r.status, status, "{method} {path} {body:.80}: {}", r.body);
        let err = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            err.contains(needle),
            "{method} {path}: {err:?} lacks {needle:?}"
        );
    }
    // Nothing changed: one session, in the table and in the data plane.
    let list = node.get("/v1/sessions").json();
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(node.metric_sum("switchyard_sessions{"), 1);
    assert_eq!(node.metric_sum("switchyard_dataplane_up"), 1);
}

#[test]
fn every_kind_of_bad_input_is_counted_under_its_reason() {
    use switchyard_shared::command::SrtpProfile;
    use switchyard_shared::srtp::Context;

    let node = Node::start(1);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let me = sock.local_addr().expect("addr");
    let media = ("127.0.0.1", node.media_port);
    // A publisher at our address with a key we know.
    let key = [7u8; 28];
    let b64 = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw=="; // 28 × 0x07
    let body = format!(
        r#"{{"role":"publisher","stream":"bad/input","remote":"{me}","remoteKey":"{b64}","ssrcs":[4242]}}"#
    );
    let created = node.post("/v1/sessions", &body);
    assert_eq!(created.status, 201, "{}", created.body);

    let rtp = |ctx: &mut Context, seq: u16| {
        let mut buf = vec![0u8; 12 + 100 + 16];
        buf[0] = 0x80;
        buf[1] = 96;
        buf[2..4].copy_from_slice(&seq.to_be_bytes());
        buf[8..12].copy_from_slice(&4242u32.to_be_bytes());
        let n = ctx.protect_rtp(&mut buf, 112).expect("protect");
        buf.truncate(n);
        buf
    };
    let mut good = Context::new(SrtpProfile::AeadAes128Gcm, &key).expect("ctx");
    let mut wrong = Context::new(SrtpProfile::AeadAes128Gcm, &[9; 28]).expect("ctx");
    let first = rtp(&mut good, 1);
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut random = vec![0u8; 300];
    for b in &mut random {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Keep the first byte out of the RTP/STUN/DTLS ranges: "unknown kind".
        *b = rng as u8;
    }
    random[0] = 0xff;
    let stun_garbage = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let sent: Vec<(&str, Vec<u8>)> = vec![
        ("oversize", vec![0x80; 1600]),
        ("unknown_kind", random),
        ("malformed", vec![0x80, 96, 0]),
        ("srtp_auth", rtp(&mut wrong, 2)),
        ("replay", first.clone()),
        ("stun", stun_garbage.to_vec()),
        (
            "dtls",
            vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff],
        ),
    ];
    // The good packet first (accepted), then each bad one; the replay is the good one again.
    sock.send_to(&first, media).expect("send");
    for (_, bytes) in &sent {
        sock.send_to(bytes, media).expect("send");
    }
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    stranger.send_to(&rtp(&mut good, 3), media).expect("send");

    let deadline = Instant::now() + Duration::from_secs(10);
    let reasons: Vec<&str> = sent
        .iter()
        .map(|(r, _)| *r)
        .chain(["unknown_source"])
        .collect();
    loop {
        let missing: Vec<&str> = reasons
            .iter()
            .copied()
            .filter(|r| {
                node.metric_sum(&format!(
                    r#"switchyard_drops_total{{worker="0",reason="{r}"}}"#
                )) != 1
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not counted exactly once: {missing:?}\n{}",
            node.get("/metrics").body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = node.get("/metrics").body;
    for family in [
        "# TYPE switchyard_rx_packets_total counter",
        "# TYPE switchyard_sessions gauge",
        "# TYPE switchyard_command_ring_depth gauge",
    ] {
        assert!(text.contains(family), "missing {family}");
    }
    assert_eq!(
        node.metric_sum(r#"switchyard_rx_packets_total{worker="0"}"#),
        sent.len() as u64 + 2
    );
    // The worker survived all of it: the node is healthy and the session still there.
    assert_eq!(node.get("/health").status, 200);
    assert_eq!(node.metric_sum("switchyard_sessions{"), 1);
}

#[test]
fn up_starts_a_node_and_stops_on_sigterm() {
    let shm = std::env::temp_dir().join(format!("swy-up-{}", std::process::id()));
    std::fs::create_dir_all(&shm).expect("dir");
    let http_addr = format!("127.0.0.1:{}", common::free_tcp_port());
    let port = common::free_udp_ports(1);
    let mut up = std::process::Command::new(BIN)
        .env("SWITCHYARD_HOST_LOAD", "false")
        .arg("up")
        .arg("--shm-dir")
        .arg(&shm)
        .args([
            "--http-listen",
            &http_addr,
            "--workers",
            "1",
            "--pin",
            "false",
        ])
        .args([
            "--media-bind",
            "127.0.0.1",
            "--media-port",
            &port.to_string(),
            "--relay-port",
            &common::free_udp_ports_apart(1, port).to_string(),
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn up");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = common::http(&http_addr, "GET", "/health", None) {
            if r.status == 200 {
                assert_eq!(r.json()["workers"], 1);
                break;
            }
        }
        assert!(Instant::now() < deadline, "up did not become healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(up.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = up.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = up.kill();
            panic!("up did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // Both children are gone: the port is free again.
    assert!(std::net::TcpListener::bind(&http_addr).is_ok());
    let _ = std::fs::remove_dir_all(&shm);
}

#[test]
fn bad_config_exits_with_status_2() {
    let out = std::process::Command::new(BIN)
        .args(["dataplane", "--node-id", "bad id!"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node.id"));
    let out = std::process::Command::new(BIN)
        .args(["controlplane", "--config", "/nonexistent/switchyard.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/switchyard.toml");
    let c = switchyard_shared::config::Config::load(std::path::Path::new(path)).expect("parse");
    c.validate().expect("valid");
    assert_eq!(
        c,
        switchyard_shared::config::Config::default(),
        "the example shows the defaults"
    );
    let out = std::process::Command::new(BIN)
        .args(["--config", path, "config"])
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("port = 10000"));
}

#[test]
fn bench_cleans_up_when_setup_fails_halfway() {
    let node = Node::start(1);
    // Stream bench/s1 already has a publisher, so the bench's second publisher gets 409
    // after it created the first publisher and its subscribers.
    let taken = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"bench/s1"}"#,
    );
    assert_eq!(taken.status, 201, "{}", taken.body);
    let spec = LoadSpec {
        publishers: 2,
        subscribers: 3,
        duration: Duration::from_secs(1),
        bench_cores: Vec::new(),
        ..LoadSpec::default()
    };
    let target = Target::Node {
        api: node.api.clone(),
        profile: Profile::AeadAes128Gcm,
        cpu_pid: None,
        worker: None,
        webrtc: None,
    };
    let err = run(&spec, &target).expect_err("setup must fail");
    assert!(err.to_string().contains("stream busy"), "{err}");
    // Everything the bench created is gone; the other publisher is untouched.
    let list = node.get("/v1/sessions").json();
    let sessions = list["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{list}");
    assert_eq!(sessions[0]["id"], taken.json()["id"]);
    assert_eq!(node.metric_sum("switchyard_sessions{"), 1);
}

/// Offsets of the rings' indices in `switchyard-<node>.ring` (shared/src/ring/layout.rs):
/// each on its own 128-byte line, commands first.
const COMMANDS_HEAD: u64 = 128;
const COMMANDS_TAIL: u64 = 256;
const EVENTS_TAIL: u64 = 640;

/// Scribble `value` over the index at `offset` of the node's ring file as it is now.
fn corrupt_ring(node: &Node, offset: u64, value: u64) {
    use std::os::unix::fs::FileExt;
    let path = node.shm.join(format!("switchyard-{}.ring", node.node_id));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("ring file");
    f.write_all_at(&value.to_ne_bytes(), offset)
        .expect("write ring file");
}

/// CPU time (user + system, clock ticks: 1/100 s) the process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces): state is the 3rd field, utime
    // and stime the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// Wait until `/health` is 200 with `"ring": "ok"`; returns its JSON.
fn wait_ring_ok(node: &Node) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = node.get("/health");
        if h.status == 200 && h.json()["ring"] == "ok" {
            return h.json();
        }
        assert!(
            Instant::now() < deadline,
            "no healthy ring again: {}",
            h.body
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 9 item 11: a corrupted command ring is survived. Before, a bad tail made the slow
/// path spin at 99% CPU and log ~435k lines a second, and a bad head made every new session
/// 503 while `/health` said 200. Now either is found within a turn, logged once, and the
/// data plane puts a new file in place that the control plane attaches to; sessions live on.
#[test]
fn a_corrupted_command_ring_is_logged_once_and_recreated() {
    let mut node = Node::start_logged(1);
    let health = node.wait_healthy();
    assert_eq!(health["ring"], "ok", "{health}");
    let dp = node.dataplane.as_ref().expect("data plane").id();
    let first = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"room/a","ssrcs":[1]}"#,
    );
    assert_eq!(first.status, 201, "{}", first.body);
    let logged = |n: &Node| n.log_lines("dataplane") + n.log_lines("controlplane");
    let quiet = logged(&node);

    // A bad tail: found, one new file, no spinning, no flood of log lines.
    let cpu = cpu_ticks(dp);
    corrupt_ring(&node, COMMANDS_TAIL, 0x0bad_0bad_0bad);
    wait_ring_ok(&node);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(dp) - cpu;
    assert!(
        used < 60,
        "data plane used {used} ticks in ~1 s after a bad tail"
    );
    let after_tail = logged(&node) - quiet;
    assert!(after_tail <= 8, "{after_tail} log lines for one bad tail");
    let second = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"room/b","ssrcs":[2]}"#,
    );
    assert_eq!(second.status, 201, "{}", second.body);

    // A bad head (of the new file): new sessions work again, the old ones are still there.
    corrupt_ring(&node, COMMANDS_HEAD, u64::MAX);
    std::thread::sleep(Duration::from_millis(300));
    wait_ring_ok(&node);
    let third = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"room/c","ssrcs":[3]}"#,
    );
    assert_eq!(third.status, 201, "{}", third.body);
    let list = node.get("/v1/sessions").json();
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(3), "{list}");

    // What /health says while the ring is corrupt: with the data plane stopped, nobody
    // replaces the file the control plane found corrupt.
    let stop = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &dp.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig}");
    };
    stop("-STOP");
    corrupt_ring(&node, EVENTS_TAIL, u64::MAX);
    let deadline = Instant::now() + Duration::from_secs(5);
    let h = loop {
        let h = node.get("/health");
        if h.json()["ring"] == "corrupt" {
            break h;
        }
        if Instant::now() > deadline {
            stop("-CONT");
            panic!("/health never reported the corrupt ring: {}", h.body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let refused = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"room/d","ssrcs":[4]}"#,
    );
    stop("-CONT");
    assert_eq!(h.status, 503, "{}", h.body);
    assert_eq!(h.json()["status"], "unavailable", "{}", h.body);
    assert_eq!(refused.status, 503, "{}", refused.body);
    wait_ring_ok(&node);
    let fourth = node.post(
        "/v1/sessions",
        r#"{"role":"publisher","stream":"room/d","ssrcs":[4]}"#,
    );
    assert_eq!(fourth.status, 201, "{}", fourth.body);
    let total = logged(&node) - quiet;
    let logs = format!(
        "data plane:\n{}\ncontrol plane:\n{}",
        node.log_text("dataplane"),
        node.log_text("controlplane")
    );
    assert!(
        total <= 24,
        "{total} log lines for three corruptions:\n{logs}"
    );
    // SWITCHYARD_TEST_SHOW_LOGS=1 shows what was logged even when the test passes.
    if std::env::var_os("SWITCHYARD_TEST_SHOW_LOGS").is_some() {
        eprintln!("{logs}");
    }
    node.kill_controlplane();
}
