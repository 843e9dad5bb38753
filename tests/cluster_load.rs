//! A node's own load on a real node: a tiny `consumers_per_worker` and a few sessions make it
//! overloaded (`/health` 503 with the reason, `overloaded` in the registry); room events reach
//! the room's `eventNotificationUri`; the room's capacity comes back when its last session
//! ends and the grace period passes, and that of a room nobody joins when the idle timeout
//! passes.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Node;

/// A hook that records the JSON body of every POST it gets.
fn hook() -> (String, mpsc::Receiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind hook");
    let url = format!("http://{}/hooks/room", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then Content-Length bytes of body.
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        let body = &buf[end + 4..end + 4 + len];
                        if let Ok(v) = serde_json::from_slice(body) {
                            let _ = tx.send(v);
                        }
                        break;
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (url, rx)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn next_event(rx: &mpsc::Receiver<serde_json::Value>) -> serde_json::Value {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("an event within 10 s")
}

fn reserved(node: &Node) -> serde_json::Value {
    node.get("/v1/nodes").json()["nodes"][0]["reserved"].clone()
}

#[test]
fn overload_events_and_idle_rooms() {
    let dir = std::env::temp_dir().join(format!("swy-cluster-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        "[cluster]\nhealth_interval_ms = 200\nconsumers_per_worker = 2\nroom_close_grace_ms = 300\nroom_idle_timeout_ms = 2000\n",
    )
    .expect("config");
    // Only this test runs in this binary, so the variable reaches exactly its node.
    std::env::set_var("SWITCHYARD_CONFIG", &config);
    let node = Node::start(1);
    wait_for("healthy", || {
        node.get("/v1/nodes").json()["nodes"][0]["healthy"] == true
    });
    let (url, events) = hook();

    let body = format!(r#"{{"maxPeerCount": 2, "eventNotificationUri": "{url}"}}"#);
    let r = node.post("/v1/rooms/meet", &body);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(reserved(&node), 2);

    // Two sessions on a node sized for two: sessions at 1.0 ≥ 0.8.
    let mut ids = Vec::new();
    for (role, remote) in [("publisher", 40000), ("subscriber", 40002)] {
        let r = node.post(
            "/v1/sessions",
            &format!(r#"{{"role":"{role}","stream":"meet/cam","remote":"127.0.0.1:{remote}"}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.json()["id"].clone());
        let e = next_event(&events);
        assert_eq!(e["event"], "peer-joined", "{e}");
        assert_eq!(e["roomId"], "meet");
        assert_eq!(e["stream"], "meet/cam");
        assert_eq!(e["role"], role);
    }
    wait_for("/health 503 overloaded", || {
        let h = node.get("/health");
        h.status == 503 && h.json()["status"] == "overloaded"
    });
    let h = node.get("/health").json();
    assert!(
        h["error"].as_str().unwrap().contains("sessions at 1.00"),
        "{h}"
    );
    assert_eq!(h["load"]["sessions"], 1.0);
    assert_eq!(node.get("/v1/nodes").json()["nodes"][0]["overloaded"], true);
    let metrics = node.get("/metrics").body;
    assert!(
        metrics.contains("switchyard_node_overloaded 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_cluster_placements_total{node=\"test\"} 1"),
        "{metrics}"
    );

    // Sessions end: peer-left twice, then (after the grace period) room-closed, the
    // reservation is gone and the node is healthy again.
    for id in &ids {
        let id = id
            .as_u64()
            .map_or_else(|| id.to_string(), |n| n.to_string());
        assert_eq!(node.delete(&format!("/v1/sessions/{id}")).status, 204);
        assert_eq!(next_event(&events)["event"], "peer-left");
    }
    let e = next_event(&events);
    assert_eq!(e["event"], "room-closed", "{e}");
    assert_eq!(e["roomId"], "meet");
    assert_eq!(reserved(&node), 0);
    assert_eq!(node.get("/v1/rooms/meet").status, 404);
    wait_for("/health 200", || node.get("/health").status == 200);
    wait_for("not overloaded", || {
        node.get("/v1/nodes").json()["nodes"][0]["overloaded"] == false
    });
    let metrics = node.get("/metrics").body;
    assert!(
        metrics.contains("switchyard_rooms_closed_idle_total 1"),
        "{metrics}"
    );

    // A room nobody ever joins: closed room_idle_timeout_ms after its creation, capacity
    // back, room-closed sent.
    let created = Instant::now();
    let r = node.post("/v1/rooms/lonely", &body);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(reserved(&node), 2);
    let e = next_event(&events);
    assert_eq!(e["event"], "room-closed", "{e}");
    assert_eq!(e["roomId"], "lonely");
    assert!(
        created.elapsed() >= Duration::from_millis(1900),
        "closed after {:?}, before the idle timeout",
        created.elapsed()
    );
    assert_eq!(reserved(&node), 0);
    assert_eq!(node.get("/v1/rooms/lonely").status, 404);
    let metrics = node.get("/metrics").body;
    assert!(
        metrics.contains("switchyard_rooms_closed_idle_total 2"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
