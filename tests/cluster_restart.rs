//! Redis mode: SIGKILL a node's control plane and start it again; `GET /v1/nodes` and
//! `GET /v1/rooms` list exactly the same nodes, rooms and reservations as before (issue #4,
//! "killing the control plane and restarting it loses no room, reservation or node").
//!
//! Needs `redis-server` on the PATH (scripts/test.sh installs it); skipped loudly without.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{Node, Redis};

/// A stand-in node that answers every request (its `GET /health`) with 200, so the health
/// checks keep it healthy; the thread lives as long as the test process.
fn fake_node() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake node");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    url
}

/// Nodes by id with the fields that are registry state (not the live health, load and
/// heartbeat, which the checks refresh).
fn nodes(node: &Node) -> Vec<serde_json::Value> {
    let r = node.get("/v1/nodes");
    assert_eq!(r.status, 200, "{}", r.body);
    let mut list: Vec<serde_json::Value> = r.json()["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let mut n = n.clone();
            let o = n.as_object_mut().expect("object");
            for live in ["healthy", "overloaded", "heartbeatMs", "load"] {
                o.remove(live);
            }
            n
        })
        .collect();
    list.sort_by(|a, b| a["nodeId"].as_str().cmp(&b["nodeId"].as_str()));
    list
}

fn rooms(node: &Node) -> Vec<serde_json::Value> {
    let r = node.get("/v1/rooms");
    assert_eq!(r.status, 200, "{}", r.body);
    let mut list = r.json()["rooms"].as_array().expect("rooms").clone();
    list.sort_by(|a, b| a["roomId"].as_str().cmp(&b["roomId"].as_str()));
    list
}

#[test]
fn controlplane_restart_loses_nothing() {
    if !Redis::required("controlplane_restart_loses_nothing") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("swy-cluster-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let redis = Redis::start_free(&dir, false);
    let mut node = Node::start_with_args(1, &["--redis", &redis.url()]);

    // The node registers itself; two more nodes (bigger, so they take rooms too) register
    // through the API, one of them drained after a few placements.
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes(&node).is_empty() {
        assert!(Instant::now() < deadline, "node did not register itself");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (id, workers, pool) in [("extra-a", 2, "default"), ("extra-b", 3, "acme")] {
        let body = serde_json::json!({
            "nodeId": id,
            "url": fake_node(),
            "mediaAddress": "192.0.2.7",
            "workers": workers,
            "labels": {"pool": pool, "region": "test"},
        });
        let r = node.post("/v1/nodes/register", &body.to_string());
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let mut created = Vec::new();
    for i in 0..12 {
        let peers = 2 + i % 4;
        let hook = if i % 3 == 0 {
            format!(r#", "eventNotificationUri": "http://hooks.test/{i}""#)
        } else {
            String::new()
        };
        let r = node.post(
            &format!("/v1/rooms/restart-{i:02}"),
            &format!(r#"{{"maxPeerCount": {peers}{hook}}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        created.push(r.json()["node"].as_str().expect("node").to_owned());
        if i == 5 {
            let r = node.post("/v1/nodes/extra-a/drain", "");
            assert!(r.status < 300, "{} {}", r.status, r.body);
        }
    }
    // A generated id, and one deleted room (its capacity given back before the kill).
    let r = node.post("/v1/rooms", r#"{"maxPeerCount": 3}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(node.delete("/v1/rooms/restart-01").status, 204);

    let nodes_before = nodes(&node);
    let rooms_before = rooms(&node);
    assert_eq!(nodes_before.len(), 3, "{nodes_before:?}");
    assert_eq!(rooms_before.len(), 12);
    let reserved: u64 = nodes_before
        .iter()
        .map(|n| n["reserved"].as_u64().expect("reserved"))
        .sum();
    let consumers: u64 = rooms_before
        .iter()
        .map(|r| r["consumers"].as_u64().expect("consumers"))
        .sum();
    assert_eq!(reserved, consumers, "{nodes_before:?}");
    eprintln!("rooms placed on {created:?}");

    node.kill_controlplane(); // SIGKILL
    assert!(
        common::http(&node.http_addr, "GET", "/health", None).is_err(),
        "control plane still answering after SIGKILL"
    );
    node.start_controlplane();
    node.wait_healthy();

    // The restarted control plane registers its own node again at start (docs/cluster.md,
    // "Nodes"): the same entry, reservation included, with a new registration time.
    let mut nodes_after = nodes(&node);
    let mut nodes_before = nodes_before;
    for list in [&mut nodes_before, &mut nodes_after] {
        let own = list
            .iter_mut()
            .find(|n| n["nodeId"] == "test")
            .expect("own node");
        own.as_object_mut().expect("object").remove("registeredMs");
    }
    assert_eq!(nodes_after, nodes_before, "nodes changed over a restart");
    assert_eq!(rooms(&node), rooms_before, "rooms changed over a restart");

    // The restarted control plane still refuses a duplicate and places new rooms.
    let r = node.post("/v1/rooms/restart-00", r#"{"maxPeerCount": 2}"#);
    assert_eq!(r.status, 409, "{}", r.body);
    let r = node.post("/v1/rooms/after-restart", r#"{"maxPeerCount": 2}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    drop(node);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
