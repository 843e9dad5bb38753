//! Relays between real nodes (issue #5): two or three `switchyard` nodes on loopback, one
//! Redis, one shared auth key; every request with a cluster token unless the test is about
//! tokens.
//!
//! - `relays_are_set_up_over_rest`: the REST flow between two control planes (key exchange,
//!   idempotence, concurrent requests, loop refusal, tokens, DELETE of both ends, control
//!   plane and data plane restarts).
//! - `whep_cascades_to_the_publishing_node`: a WHEP on B for a stream published (WHIP) on A is
//!   answered by B through a relay; concurrent WHEPs make one relay; the relay ends after the
//!   grace period once the last subscriber left.
//! - `media_crosses_a_relay`: SRTP from a publisher on A reaches a subscriber on B through the
//!   relay.
//!
//! Needs `redis-server` on the PATH (scripts/test.sh installs it); skipped loudly without.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::cluster::{cli, cluster, wait, Cluster};
use common::{http_with, Http};

const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");
const WATCH: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_subscribe.sdp");

fn role_count(sessions: &[serde_json::Value], role: &str, stream: &str) -> usize {
    sessions
        .iter()
        .filter(|s| s["role"] == role && s["stream"] == stream)
        .count()
}

/// A static publisher of `stream` on node `i` sending SSRC `ssrc`, keyed with 28 × 0x07.
fn publish(c: &Cluster, i: usize, stream: &str, ssrc: u32, remote: Option<std::net::SocketAddr>) {
    let b64 = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw=="; // 28 × 0x07
    let remote = remote.map_or(String::new(), |r| format!(r#","remote":"{r}""#));
    let body = format!(
        r#"{{"role":"publisher","stream":"{stream}","remoteKey":"{b64}","ssrcs":[{ssrc}]{remote}}}"#
    );
    let r = c.call(i, "POST", "/v1/sessions", Some(&body));
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn relays_are_set_up_over_rest() {
    let Some(mut c) = cluster("rest", 2, "") else {
        return;
    };
    publish(&c, 0, "room1/cam", 4242, None);
    let path = "/v1/streams/room1/cam/relays";
    let to_b = r#"{"targetNode":"b"}"#;

    // Tokens: none, a bad one, a user token that may publish the stream: all refused.
    let r = c.call_as(0, "POST", path, Some(to_b), None);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = c.call_as(0, "POST", path, Some(to_b), Some("not.a.token"));
    assert_eq!(r.status, 401, "{}", r.body);
    let user = cli(&["token", "sign", "--key", &c.key, "--publish", "room1"]);
    let r = c.call_as(0, "POST", path, Some(to_b), Some(&user));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["error"].is_string());
    let r = c.call_as(1, "POST", "/v1/relays/ingress", Some("{}"), Some(&user));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(c.sessions(1).len(), 0, "nothing was created on b");

    // Input errors.
    let r = c.call(0, "POST", "/v1/streams/room1/none/relays", Some(to_b));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = c.call(0, "POST", path, Some(r#"{"targetNode":"zz"}"#));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = c.call(0, "POST", path, Some(r#"{"targetNode":"a"}"#));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = c.call(0, "POST", path, Some("{}"));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = c.call(0, "POST", path, Some("not json"));
    assert_eq!(r.status, 400, "{}", r.body);

    // The relay: created once, returned again after.
    let r = c.call(0, "POST", path, Some(to_b));
    assert_eq!(r.status, 201, "{}", r.body);
    let relay = r.json();
    assert_eq!(relay["targetNode"], "b");
    assert_eq!(relay["hops"], serde_json::json!(["a"]));
    let b_relay = format!("127.0.0.1:{}", c.nodes[1].relay_port);
    assert_eq!(
        relay["remote"],
        b_relay.as_str(),
        "b's relay socket, worker 0"
    );
    let again = c.call(0, "POST", path, Some(to_b));
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["sessionId"], relay["sessionId"]);
    assert_eq!(again.json()["relayId"], relay["relayId"]);

    // Both ends: a relay-out on a to b's relay socket, a relay-in on b that publishes the
    // stream there (sessions, /v1/streams, the relay list).
    let a = c.sessions(0);
    assert_eq!(role_count(&a, "relay-out", "room1/cam"), 1, "{a:?}");
    let out = a
        .iter()
        .find(|s| s["role"] == "relay-out")
        .expect("relay-out");
    assert_eq!(out["remote"], b_relay.as_str());
    assert_eq!(out["profile"], "AEAD_AES_128_GCM");
    let b = c.sessions(1);
    assert_eq!(role_count(&b, "relay-in", "room1/cam"), 1, "{b:?}");
    let inn = b
        .iter()
        .find(|s| s["role"] == "relay-in")
        .expect("relay-in");
    assert_eq!(inn["id"], relay["relayId"]);
    assert_eq!(inn["mediaAddress"], b_relay.as_str());
    let incoming = &c.relays(1)["incoming"];
    assert_eq!(incoming[0]["stream"], "room1/cam");
    assert_eq!(incoming[0]["sourceNode"], "a");
    assert_eq!(incoming[0]["hops"], serde_json::json!(["a"]));
    let streams = c.call(1, "GET", "/v1/streams", None).json();
    assert_eq!(streams["streams"][0]["stream"], "room1/cam", "{streams}");

    // Loops: b may not relay the stream back to a (refused by b before asking), nor may
    // anyone open an ingress on a for a relay that already went through a.
    let r = c.call(1, "POST", path, Some(r#"{"targetNode":"a"}"#));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.json()["error"].as_str().expect("error").contains("loop"));
    let r = c.call(
        0,
        "POST",
        "/v1/relays/ingress",
        Some(r#"{"stream":"room9/x","sourceNode":"b","hops":["a","b"]}"#),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.json()["error"].as_str().expect("error").contains("loop"));
    let r = c.call(
        1,
        "POST",
        "/v1/relays/ingress",
        Some(r#"{"stream":"room1/cam","sourceNode":"c","hops":["c"]}"#),
    );
    assert_eq!(
        r.status, 409,
        "another source for a relayed stream: {}",
        r.body
    );
    let metrics = c.nodes[0].get("/metrics").body;
    assert!(
        metrics.contains("switchyard_relay_setup_failures_total{reason=\"loop\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_relays_active{direction=\"out\"} 1"));

    // Concurrent requests for one (stream, target) make one relay.
    publish(
        &c,
        0,
        "room1/mic",
        4343,
        Some("127.0.0.1:40001".parse().expect("addr")),
    );
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    let r = c.call(0, "POST", "/v1/streams/room1/mic/relays", Some(to_b));
                    (r.status, r.json())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 201).count(),
        1,
        "{answers:?}"
    );
    assert!(answers.iter().all(|(s, _)| *s == 200 || *s == 201));
    assert!(answers
        .iter()
        .all(|(_, j)| j["sessionId"] == answers[0].1["sessionId"]));
    assert_eq!(role_count(&c.sessions(1), "relay-in", "room1/mic"), 1);
    assert_eq!(role_count(&c.sessions(0), "relay-out", "room1/mic"), 1);

    // A target named by its control plane's address (a node outside the registry) works the
    // same; the relay is then known under the node id the target answered with.
    publish(&c, 0, "room1/screen", 4444, None);
    let by_addr = format!(r#"{{"address":"{}"}}"#, c.nodes[1].http_addr);
    let r = c.call(0, "POST", "/v1/streams/room1/screen/relays", Some(&by_addr));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["targetNode"], "b");
    let r2 = c.call(0, "POST", "/v1/streams/room1/screen/relays", Some(to_b));
    assert_eq!(r2.status, 200, "{}", r2.body);
    assert_eq!(r2.json()["sessionId"], r.json()["sessionId"]);
    let r = c.call(0, "DELETE", "/v1/streams/room1/screen/relays/b", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.call(
        0,
        "POST",
        "/v1/streams/room1/screen/relays",
        Some(r#"{"address":"127.0.0.1:1"}"#),
    );
    assert_eq!(r.status, 502, "nothing listens there: {}", r.body);

    // A control plane restart (either end) loses no relay.
    let before_a = c.call(0, "GET", path, None).json();
    c.nodes[0].kill_controlplane();
    c.nodes[1].kill_controlplane();
    c.nodes[0].start_controlplane();
    c.nodes[1].start_controlplane();
    c.nodes[0].wait_healthy();
    c.nodes[1].wait_healthy();
    assert_eq!(c.call(0, "GET", path, None).json(), before_a);
    assert_eq!(c.relays(1)["incoming"].as_array().map(Vec::len), Some(2));
    let again = c.call(0, "POST", path, Some(to_b));
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["sessionId"], relay["sessionId"]);

    // b's data plane restarts: its relay-in comes back with the same id, worker and port,
    // without a touching a.
    let a_before = c.sessions(0);
    let pid_before = c.nodes[1].wait_healthy()["dataplanePid"].clone();
    c.nodes[1].kill_dataplane();
    // As tests/node.rs does: until b's control plane saw the old process gone, its sockets
    // (io_uring releases them after the exit) may still hold the ports.
    wait("b reports its data plane down", || {
        http_with(&c.nodes[1].http_addr, "GET", "/health", "", &[], None)
            .is_ok_and(|r| r.status == 503)
    });
    c.nodes[1].start_dataplane();
    wait("b's new data plane in sync", || {
        http_with(&c.nodes[1].http_addr, "GET", "/health", "", &[], None).is_ok_and(|r| {
            r.status == 200
                && r.json()["dataplanePid"].is_u64()
                && r.json()["dataplanePid"] != pid_before
        })
    });
    wait("b's relay-in re-provisioned", || {
        c.sessions(1)
            .iter()
            .any(|s| s["id"] == relay["relayId"] && s["mediaAddress"] == b_relay.as_str())
    });
    assert_eq!(c.sessions(0), a_before);

    // DELETE ends both ends.
    let r = c.call(0, "DELETE", "/v1/streams/room1/cam/relays/b", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["targetEnded"], true);
    assert_eq!(role_count(&c.sessions(0), "relay-out", "room1/cam"), 0);
    assert_eq!(role_count(&c.sessions(1), "relay-in", "room1/cam"), 0);
    let listed = c.call(0, "GET", path, None).json();
    assert_eq!(listed["relays"].as_array().map(Vec::len), Some(0));
    let r = c.call(0, "DELETE", "/v1/streams/room1/cam/relays/b", None);
    assert_eq!(r.status, 404, "{}", r.body);
    // The other relay is untouched.
    assert_eq!(role_count(&c.sessions(1), "relay-in", "room1/mic"), 1);
}

#[test]
fn whep_cascades_to_the_publishing_node() {
    let Some(c) = cluster("cascade", 2, "relay_grace_ms = 1000\n") else {
        return;
    };
    let r = c.call(0, "POST", "/whip/live/cam", Some(OFFER));
    assert_eq!(r.status, 201, "{}", r.body);

    // Once a's streams are in the store, a WHEP on b is answered by b (not redirected).
    let mut answer = None;
    wait("b answers the WHEP itself", || {
        let r = c.call(1, "POST", "/whep/live/cam", Some(WATCH));
        assert_ne!(r.status, 307, "cascade is on: {}", r.body);
        let ok = r.status == 201;
        if ok {
            answer = Some(r);
        }
        ok
    });
    let answer = answer.expect("answer");
    let b_port = format!(" {} typ host", c.nodes[1].media_port);
    assert!(
        answer.body.contains(&b_port),
        "b's candidate: {}",
        answer.body
    );
    let mut locations = vec![answer.header("location").expect("Location")];

    let incoming = c.relays(1)["incoming"].clone();
    assert_eq!(incoming[0]["stream"], "live/cam", "{incoming}");
    assert_eq!(incoming[0]["sourceNode"], "a");
    assert_eq!(incoming[0]["cascade"], true);
    assert_eq!(role_count(&c.sessions(0), "relay-out", "live/cam"), 1);

    // More subscribers at once: one relay still.
    let more: Vec<Http> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| c.call(1, "POST", "/whep/live/cam", Some(WATCH))))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for r in &more {
        assert_eq!(r.status, 201, "{}", r.body);
        locations.push(r.header("location").expect("Location"));
    }
    assert_eq!(role_count(&c.sessions(0), "relay-out", "live/cam"), 1);
    assert_eq!(role_count(&c.sessions(1), "relay-in", "live/cam"), 1);

    // The last subscriber leaves: after the grace period (1 s here) the relay ends, both ends.
    for l in &locations {
        let r = c.call(1, "DELETE", l, None);
        assert!(
            r.status == 200 || r.status == 204,
            "{l}: {} {}",
            r.status,
            r.body
        );
    }
    wait("the relay ends after the grace period", || {
        role_count(&c.sessions(0), "relay-out", "live/cam") == 0
            && role_count(&c.sessions(1), "relay-in", "live/cam") == 0
    });
    assert_eq!(c.relays(1)["incoming"].as_array().map(Vec::len), Some(0));
    // The publisher on a is untouched, and a new subscriber on b cascades again.
    assert_eq!(role_count(&c.sessions(0), "publisher", "live/cam"), 1);
    wait("b cascades again", || {
        c.call(1, "POST", "/whep/live/cam", Some(WATCH)).status == 201
    });
}

/// SRTP media from a publisher on a reaches a subscriber on b over the relay link.
#[test]
fn media_crosses_a_relay() {
    use switchyard_shared::command::SrtpProfile;
    use switchyard_shared::srtp::Context;

    let Some(c) = cluster("media", 2, "") else {
        return;
    };
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    publish(
        &c,
        0,
        "m/cam",
        4242,
        Some(sender.local_addr().expect("addr")),
    );
    let r = c.call(
        0,
        "POST",
        "/v1/streams/m/cam/relays",
        Some(r#"{"targetNode":"b"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    // b's relay-in starts with the publisher's SSRCs in track order (not arrival order).
    let relay_in = c
        .sessions(1)
        .into_iter()
        .find(|s| s["role"] == "relay-in")
        .expect("relay-in on b");
    assert_eq!(relay_in["ssrcs"], serde_json::json!([4242]));

    // A subscriber on b with a key we know.
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
    receiver
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let b64 = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICA=="; // 28 × 0x08
    let body = format!(
        r#"{{"role":"subscriber","stream":"m/cam","remote":"{}","localKey":"{b64}","ssrcs":[777]}}"#,
        receiver.local_addr().expect("addr")
    );
    let r = c.call(1, "POST", "/v1/sessions", Some(&body));
    assert_eq!(r.status, 201, "{}", r.body);

    let mut tx = Context::new(SrtpProfile::AeadAes128Gcm, &[7; 28]).expect("ctx");
    let mut rx = Context::new(SrtpProfile::AeadAes128Gcm, &[8; 28]).expect("ctx");
    let media = ("127.0.0.1", c.nodes[0].media_port);
    let sent = 300u16;
    // Received while sent: 300 datagrams waiting unread overflow a default receive buffer.
    let got = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut got = std::collections::BTreeSet::new();
            let mut buf = [0u8; 1500];
            let deadline = Instant::now() + Duration::from_secs(5);
            while got.len() < usize::from(sent) && Instant::now() < deadline {
                let Ok(n) = receiver.recv(&mut buf) else {
                    continue;
                };
                let mut pkt = buf[..n].to_vec();
                if rx.unprotect_rtp(&mut pkt).is_ok() {
                    // The subscriber's own sequence numbers: distinct per packet.
                    got.insert(u16::from_be_bytes([pkt[2], pkt[3]]));
                }
            }
            got
        });
        for seq in 1..=sent {
            let mut buf = vec![0u8; 12 + 100 + 16];
            buf[0] = 0x80;
            buf[1] = 96;
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            buf[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
            buf[8..12].copy_from_slice(&4242u32.to_be_bytes());
            let n = tx.protect_rtp(&mut buf, 112).expect("protect");
            sender.send_to(&buf[..n], media).expect("send");
            std::thread::sleep(Duration::from_millis(2));
        }
        reader.join().expect("reader")
    });
    // The first packets may arrive before b's relay-in latched; every later one must.
    assert!(
        got.len() >= usize::from(sent) - 5,
        "received {} of {sent}",
        got.len()
    );
    assert!(c.nodes[1].metric_sum("switchyard_relay_rx_packets_total{") >= u64::from(sent) - 5);
    assert!(c.nodes[0].metric_sum("switchyard_relay_tx_packets_total{") >= u64::from(sent) - 5);
}
