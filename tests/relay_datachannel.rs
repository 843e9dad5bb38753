//! Data channels across nodes (issue #5): an aiortc WHIP publisher's data channel messages
//! on node A cross the relay link to node B.
//!
//! - `data_channel_events_cross_a_hand_built_relay_link`: the link built by hand through
//!   `/v1/sessions` (relay-in on B, relay-out on A, as in `tests/relay_link.rs`). The
//!   publisher's channels are open before the relay-out starts, so it also shows a late
//!   relay getting an open for each. A WHEP subscriber on A still gets the messages; B's
//!   counters show every event arriving and none dropped.
//! - `data_channel_messages_reach_whep_subscribers_on_a_b_and_c`: the cluster API (`POST
//!   /v1/streams/{room}/{stream}/relays`) builds a chain A → B → C (B relays on what it
//!   receives) and aiortc WHEP subscribers on A, B and C all receive the publisher's
//!   messages in order, the 60000-byte one (fragmented on each link) included.
//!
//! Both need `python3` (aiortc is installed into `target/aiortc-venv` by
//! `tests/aiortc/setup.sh`); the second also `redis-server`. Skipped loudly without.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::aiortc::{python as aiortc_python, summary};
use common::{http_typed, Node, Redis};

fn client(py: &Path, script: &str, url: &str, seconds: u32) -> Child {
    common::aiortc::client(py, script, url, seconds, &["--datachannel"])
}

const K_FWD: u8 = 0x11;
const K_BACK: u8 = 0x22;

fn key(k: u8) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = [k; 28];
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let v = c
            .iter()
            .enumerate()
            .fold(0u32, |v, (i, &b)| v | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
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

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn created(node: &Node, body: &str) -> serde_json::Value {
    let r = node.post("/v1/sessions", body);
    assert_eq!(r.status, 201, "{body}: {}", r.body);
    r.json()
}

#[test]
fn data_channel_events_cross_a_hand_built_relay_link() {
    let Some(py) = aiortc_python() else {
        eprintln!("SKIPPED relay_datachannel: python3 not found; install python3 to run it");
        return;
    };
    let a = Node::start(1);
    let b = Node::start(1);
    const STREAM: &str = "room/chat";
    let publisher = client(
        &py,
        "whip_client.py",
        &format!("{}/whip/{STREAM}", a.api),
        10,
    );
    wait_until("the publisher's messages", Duration::from_secs(20), || {
        a.metric_sum("switchyard_datachannel_messages_in_total{") > 5
    });
    // The link: B's relay-in first (it latches nothing: A's relay socket is given), then
    // A's relay-out, which joins A's hub after the publisher's channels opened.
    created(
        &b,
        &format!(
            r#"{{"role":"relay-in","stream":"{STREAM}","worker":0,"remote":"127.0.0.1:{}","profile":"AEAD_AES_128_GCM","remoteKey":"{}","localKey":"{}"}}"#,
            a.relay_port,
            key(K_FWD),
            key(K_BACK)
        ),
    );
    created(
        &a,
        &format!(
            r#"{{"role":"relay-out","stream":"{STREAM}","worker":0,"remote":"127.0.0.1:{}","profile":"AEAD_AES_128_GCM","remoteKey":"{}","localKey":"{}"}}"#,
            b.relay_port,
            key(K_BACK),
            key(K_FWD)
        ),
    );
    let viewer = client(
        &py,
        "whep_client.py",
        &format!("{}/whep/{STREAM}", a.api),
        4,
    );
    wait_until("events over the link", Duration::from_secs(10), || {
        b.metric_sum("switchyard_relay_datachannel_events_in_total{") > 50
    });

    let p = summary(publisher, "whip_client");
    let sent_chat = messages(&p["sent"], "chat");
    assert!(sent_chat.len() > 100, "{p}");
    let s = summary(viewer, "whep_client on A");
    let chat = messages(&s["received"], "chat");
    contiguous_in(&sent_chat, &chat, "A's viewer");

    let out = a.metric_sum("switchyard_relay_datachannel_events_out_total{");
    let into = b.metric_sum("switchyard_relay_datachannel_events_in_total{");
    eprintln!("events: {out} sent by A, {into} received by B");
    // The opens of the channels already open, then messages and closes.
    assert!(out > 50, "A sent {out}");
    assert_eq!(
        into, out,
        "every event A sent arrived (no loss on loopback)"
    );
    assert_eq!(
        b.metric_sum("switchyard_datachannel_messages_dropped_total{"),
        0,
        "nothing malformed, lost or on an unknown channel at B"
    );
    assert!(b.metric_sum("switchyard_relay_rx_packets_total{") >= into);
}

#[test]
fn data_channel_messages_reach_whep_subscribers_on_a_b_and_c() {
    let Some(py) = aiortc_python() else {
        eprintln!("SKIPPED relay_datachannel: python3 not found; install python3 to run it");
        return;
    };
    if !Redis::required("relay_datachannel") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("swy-dcrelay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let redis = Redis::start_free(&dir, false);
    let config = dir.join("switchyard.toml");
    std::fs::write(&config, "[cluster]\nhealth_interval_ms = 300\n").expect("config");
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            Node::spawn_named(
                id,
                1,
                vec![
                    "--config".into(),
                    config.clone().into(),
                    "--redis".into(),
                    redis.url().into(),
                ],
            )
        })
        .collect();
    for n in &nodes {
        n.wait_healthy();
    }
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    wait_until("every node registered", Duration::from_secs(20), || {
        let r = a.get("/v1/nodes");
        r.status == 200
            && r.json()["nodes"]
                .as_array()
                .is_some_and(|l| l.len() == 3 && l.iter().all(|x| x["healthy"] == true))
    });

    let publisher = client(
        &py,
        "whip_client.py",
        &format!("{}/whip/room/chat", a.api),
        14,
    );
    wait_until("the publisher's messages", Duration::from_secs(20), || {
        a.metric_sum("switchyard_datachannel_messages_in_total{") > 5
    });
    // The chain: A relays to B, and B relays what it receives on to C.
    let r = a.post("/v1/streams/room/chat/relays", r#"{"targetNode":"b"}"#);
    assert!(r.status == 201 || r.status == 200, "{}", r.body);
    wait_until("B relays on to C", Duration::from_secs(10), || {
        let r = b.post("/v1/streams/room/chat/relays", r#"{"targetNode":"c"}"#);
        r.status == 201 || r.status == 200
    });
    let incoming = c.get("/v1/relays").json()["incoming"].clone();
    assert_eq!(incoming[0]["sourceNode"], "b", "{incoming}");
    // B and C answer a WHEP for the relayed stream once they know its codecs.
    const WATCH: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_subscribe.sdp");
    for node in [b, c] {
        wait_until(
            "a WHEP answer for the relayed stream",
            Duration::from_secs(10),
            || {
                let r = http_typed(
                    &node.http_addr,
                    "POST",
                    "/whep/room/chat",
                    "application/sdp",
                    Some(WATCH.as_bytes()),
                )
                .expect("POST");
                if r.status != 201 {
                    return false;
                }
                if let Some(l) = r.header("location") {
                    node.delete(&l);
                }
                true
            },
        );
    }
    let on_a = client(
        &py,
        "whep_client.py",
        &format!("{}/whep/room/chat", a.api),
        5,
    );
    let on_b = client(
        &py,
        "whep_client.py",
        &format!("{}/whep/room/chat", b.api),
        5,
    );
    let on_c = client(
        &py,
        "whep_client.py",
        &format!("{}/whep/room/chat", c.api),
        5,
    );

    let p = summary(publisher, "whip_client");
    let sent_chat = messages(&p["sent"], "chat");
    assert!(sent_chat.len() > 100, "{p}");
    for (name, sub) in [("A", on_a), ("B", on_b), ("C", on_c)] {
        let s = summary(sub, &format!("whep_client on {name}"));
        assert_eq!(s["connection"], "connected", "{name}: {s}");
        let chat = messages(&s["received"], "chat");
        eprintln!("subscriber on {name}: {} chat messages", chat.len());
        contiguous_in(&sent_chat, &chat, &format!("subscriber on {name}"));
        assert!(chat.len() > 20, "subscriber on {name} got too few: {s}");
        assert!(
            chat.iter().any(|m| m.starts_with("b:60000:")),
            "subscriber on {name}: the large message (fragmented on the link) is missing"
        );
    }
    assert!(a.metric_sum("switchyard_relay_datachannel_events_out_total{") > 20);
    assert!(b.metric_sum("switchyard_relay_datachannel_events_in_total{") > 20);
    assert!(b.metric_sum("switchyard_relay_datachannel_events_out_total{") > 20);
    assert!(c.metric_sum("switchyard_relay_datachannel_events_in_total{") > 20);
    // C's only relay is B's: the chain, not a second link from A.
    assert_eq!(
        c.get("/v1/relays").json()["incoming"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    drop(nodes);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
