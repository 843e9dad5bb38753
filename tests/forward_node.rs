//! `node://` forward destinations (issue #5, SRS-style forward to hot-standby nodes): two real
//! nodes sharing one Redis and one auth key. A forward on A with `node://b` relays every
//! stream under its prefix to B, where a subscriber gets the media; the target down at first
//! makes the egress back off until it is up; deleting the forward or the publisher leaving
//! closes the relay; `node://host:port` reaches a control plane by address.
//!
//! Needs `redis-server` on the PATH (scripts/test.sh installs it); skipped loudly without.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::cluster::{cluster, wait, Cluster};
use serde_json::Value;

/// Forward helpers on top of the shared cluster fixture.
trait Standby {
    fn egresses(&self, id: &str) -> Vec<Value>;
}

impl Standby for Cluster {
    /// The egresses of forward `id` on node A.
    fn egresses(&self, id: &str) -> Vec<Value> {
        let r = self.call(0, "GET", &format!("/v1/forwards/{id}"), None);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["egresses"].as_array().expect("egresses").clone()
    }
}

fn list(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

/// SRTP from `sender` (SSRC 4242, key 28 × 0x07) to A's media port; what `receiver` (key
/// 28 × 0x08) gets of it: distinct sequence numbers.
fn send_and_receive(c: &Cluster, sender: &UdpSocket, receiver: &UdpSocket, sent: u16) -> usize {
    use switchyard_shared::command::SrtpProfile;
    use switchyard_shared::srtp::Context;

    let mut tx = Context::new(SrtpProfile::AeadAes128Gcm, &[7; 28]).expect("ctx");
    let mut rx = Context::new(SrtpProfile::AeadAes128Gcm, &[8; 28]).expect("ctx");
    let media = ("127.0.0.1", c.nodes[0].media_port);
    receiver
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    std::thread::scope(|s| {
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
                    got.insert(u16::from_be_bytes([pkt[2], pkt[3]]));
                }
            }
            got.len()
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
    })
}

#[test]
fn node_forward_relays_to_a_standby_that_comes_up_late() {
    let Some(mut c) = cluster("standby", 2, "") else {
        return;
    };
    // B's control plane is down at first (its registry entry stays).
    c.nodes[1].kill_controlplane();

    let r = c.call(
        0,
        "POST",
        "/v1/forwards",
        Some(r#"{"id":"standby","prefix":"m/","destinations":["node://b"]}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["destinations"], serde_json::json!(["node://b"]));

    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b64 = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw=="; // 28 × 0x07
    let body = format!(
        r#"{{"role":"publisher","stream":"m/cam","remoteKey":"{b64}","ssrcs":[4242],"remote":"{}"}}"#,
        sender.local_addr().expect("addr")
    );
    let r = c.call(0, "POST", "/v1/sessions", Some(&body));
    assert_eq!(r.status, 201, "{}", r.body);
    let publisher = r.json()["id"].as_u64().expect("id");

    // One egress (not one per track), backing off with the error shown.
    wait("the egress backs off while B is down", || {
        let e = c.egresses("standby");
        e.len() == 1 && e[0]["state"] == "backoff" && e[0]["attempts"].as_u64() >= Some(1)
    });
    let e = &c.egresses("standby")[0];
    assert_eq!(e["destination"], "node://b");
    assert_eq!(e["stream"], "m/cam");
    assert!(e["remote"].is_null(), "{e}");
    assert!(
        e["lastError"].as_str().is_some_and(|m| !m.is_empty()),
        "{e}"
    );
    // No SDP file for a node destination.
    let r = c.call(0, "GET", "/v1/forwards/standby/sdp?stream=m/cam", None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("node"), "{}", r.body);

    // B comes up: the next retry opens the relay.
    c.nodes[1].start_controlplane();
    c.nodes[1].wait_healthy();
    wait("the egress is active once B is up", || {
        c.egresses("standby")[0]["state"] == "active"
    });
    let e = &c.egresses("standby")[0];
    assert_eq!(e["attempts"], 0, "{e}");
    assert!(e["lastError"].is_null(), "{e}");
    let out = list(&c.relays(0), "outgoing");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["targetNode"], "b");
    assert_eq!(out[0]["sessionId"], e["session"]);
    let incoming = list(&c.relays(1), "incoming");
    assert_eq!(incoming.len(), 1, "{incoming:?}");
    assert_eq!(incoming[0]["stream"], "m/cam");
    assert_eq!(incoming[0]["sourceNode"], "a");

    // A subscriber on B gets the media published on A.
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b64 = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICA=="; // 28 × 0x08
    let body = format!(
        r#"{{"role":"subscriber","stream":"m/cam","remote":"{}","localKey":"{b64}","ssrcs":[777]}}"#,
        receiver.local_addr().expect("addr")
    );
    let r = c.call(1, "POST", "/v1/sessions", Some(&body));
    assert_eq!(r.status, 201, "{}", r.body);
    let sent = 300u16;
    let got = send_and_receive(&c, &sender, &receiver, sent);
    assert!(got >= usize::from(sent) - 5, "received {got} of {sent}");

    // Deleting the forward closes the relay at both ends.
    let r = c.call(0, "DELETE", "/v1/forwards/standby", None);
    assert_eq!(r.status, 204, "{}", r.body);
    wait("the relay closes with the forward", || {
        list(&c.relays(0), "outgoing").is_empty() && list(&c.relays(1), "incoming").is_empty()
    });

    // node://host:port reaches B's control plane by address; the publisher leaving closes
    // the relay.
    let body = format!(
        r#"{{"id":"byaddr","destinations":["node://{}"]}}"#,
        c.nodes[1].http_addr
    );
    let r = c.call(0, "POST", "/v1/forwards", Some(&body));
    assert_eq!(r.status, 201, "{}", r.body);
    wait("the relay by address is active", || {
        let e = c.egresses("byaddr");
        e.len() == 1 && e[0]["state"] == "active"
    });
    let out = list(&c.relays(0), "outgoing");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["targetNode"], "b");
    let r = c.call(0, "DELETE", &format!("/v1/sessions/{publisher}"), None);
    assert_eq!(r.status, 204, "{}", r.body);
    wait("the relay closes when the publisher leaves", || {
        list(&c.relays(0), "outgoing").is_empty()
            && list(&c.relays(1), "incoming").is_empty()
            && c.egresses("byaddr").is_empty()
    });
}
