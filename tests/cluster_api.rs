//! The cluster REST API on a real node (in-memory store): the node registers itself at
//! start, rooms are placed by capacity, drained/unhealthy/overloaded nodes get none, health
//! checks mark a node down and up again, and bad input gets JSON 4xx.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Node;

const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");
const WATCH: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_subscribe.sdp");

/// POST the fixture offer for `path` (a publish offer to /whip, a watch offer to /whep).
fn post_sdp(node: &Node, path: &str) -> common::Http {
    let offer = if path.starts_with("/whep") {
        WATCH
    } else {
        OFFER
    };
    common::http_typed(
        &node.http_addr,
        "POST",
        path,
        "application/sdp",
        Some(offer.as_bytes()),
    )
    .expect("POST offer")
}

/// A stand-in node that answers `GET /health` with 200 (503 while `sick`) until stopped.
struct FakeNode {
    stop: Arc<AtomicBool>,
    sick: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeNode {
    fn start(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind fake node");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let sick = Arc::new(AtomicBool::new(false));
        let (flag, ill) = (stop.clone(), sick.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let answer: &[u8] = if ill.load(Ordering::Relaxed) {
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        };
                        let _ = s.write_all(answer);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            stop,
            sick,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn node_field(node: &Node, id: &str, field: &str) -> serde_json::Value {
    let list = node.get("/v1/nodes").json();
    list["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["nodeId"] == id)
        .map_or(serde_json::Value::Null, |n| n[field].clone())
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rooms_are_placed_by_capacity_and_health() {
    let dir = std::env::temp_dir().join(format!("swy-cluster-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("switchyard.toml");
    std::fs::write(&config, "[cluster]\nhealth_interval_ms = 200\n").expect("config");
    // Only this test runs in this binary, so the variable reaches exactly its node.
    std::env::set_var("SWITCHYARD_CONFIG", &config);
    let node = Node::start(1);

    // The node registered itself: 1 worker × 500 consumers.
    wait_for("self registration", || {
        node_field(&node, "test", "capacity") == 500
    });
    // Its first health check may run before the data plane is in sync (503); the next
    // one, an interval later, marks it healthy.
    wait_for("healthy", || node_field(&node, "test", "healthy") == true);
    assert_eq!(node_field(&node, "test", "url"), node.api.as_str());

    let r = node.post("/v1/rooms/meet", r#"{"maxPeerCount": 4}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let j = r.json();
    assert_eq!(j["node"], "test");
    assert_eq!(j["consumers"], 12);
    assert_eq!(j["whipUrl"], format!("{}/whip/meet", node.api));
    assert_eq!(j["whepUrl"], format!("{}/whep/meet", node.api));
    let r = node.post("/v1/rooms/meet", r#"{"maxPeerCount": 4}"#);
    assert_eq!(r.status, 409, "{}", r.body);
    let r = node.post(
        "/v1/rooms",
        r#"{"maxPeerCount": 2, "eventNotificationUri": "https://hooks.test/x"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let generated = r.json()["roomId"].as_str().expect("id").to_owned();
    assert_eq!(generated.len(), 16);

    // Bad input: JSON 400s.
    for (path, body) in [
        ("/v1/rooms/x", r#"{"maxPeerCount": 0}"#),
        ("/v1/rooms/x", r#"{"maxPeerCount": 1001}"#),
        ("/v1/rooms/x", r#"{"maxPeers": 2}"#),
        ("/v1/rooms/x", ""),
        (
            "/v1/rooms/x",
            r#"{"maxPeerCount": 2, "eventNotificationUri": "ftp://a"}"#,
        ),
        ("/v1/rooms/bad%20id", r#"{"maxPeerCount": 2}"#),
        (
            "/v1/nodes/register",
            r#"{"nodeId": "n", "url": "ftp://n", "mediaAddress": "a", "workers": 1}"#,
        ),
        (
            "/v1/nodes/register",
            r#"{"nodeId": "n/", "url": "http://n", "mediaAddress": "a", "workers": 1}"#,
        ),
        (
            "/v1/nodes/register",
            r#"{"nodeId": "n", "url": "http://n", "mediaAddress": "a", "workers": 0}"#,
        ),
        ("/v1/nodes/test/heartbeat", r#"{"load": {"cpu": -1}}"#),
    ] {
        let r = node.post(path, body);
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        assert!(r.json()["error"].is_string());
    }
    assert_eq!(node.get("/v1/resolve").status, 400);
    assert_eq!(node.get("/v1/resolve?room=nope").status, 404);
    assert_eq!(node.post("/v1/nodes/nobody/drain", "").status, 404);

    // Too big for any node: 503 with the reason.
    let r = node.post("/v1/rooms/huge", r#"{"maxPeerCount": 30}"#);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("no node has room"),
        "{}",
        r.body
    );

    // A second node with 4 workers (2,000 consumers) takes what the first cannot.
    let port = common::free_tcp_port();
    let fake = FakeNode::start(port);
    let url = format!("http://127.0.0.1:{port}");
    let body = format!(
        r#"{{"nodeId": "n2", "url": "{url}", "mediaAddress": "127.0.0.2", "workers": 4, "labels": {{"pool": "a"}}}}"#
    );
    let r = node.post("/v1/nodes/register", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["capacity"], 2000);
    let r = node.post("/v1/rooms/big", r#"{"maxPeerCount": 30}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["node"], "n2");
    assert_eq!(r.json()["whipUrl"], format!("{url}/whip/big"));
    let r = node.get("/v1/resolve?room=big");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["nodeUrl"], url.as_str());

    // Drained: no new rooms; resumed: rooms again.
    assert_eq!(node.post("/v1/nodes/n2/drain", "").status, 200);
    assert_eq!(
        node.post("/v1/rooms/big2", r#"{"maxPeerCount": 30}"#)
            .status,
        503
    );
    assert_eq!(node.delete("/v1/nodes/n2/drain").status, 200);
    assert_eq!(
        node.post("/v1/rooms/big2", r#"{"maxPeerCount": 30}"#)
            .status,
        201
    );
    assert_eq!(node_field(&node, "n2", "reserved"), 1740);

    // Its /health answers 503: unhealthy at the next check, so a room that n2 would take
    // (it is the freer node) goes to the other one. An answer, even a 503, keeps it
    // registered: only silence makes a node dead (docs/cluster.md, "When a node dies").
    fake.sick.store(true, Ordering::Relaxed);
    wait_for("n2 unhealthy", || {
        node_field(&node, "n2", "healthy") == false
    });
    let r = node.post("/v1/rooms/big3", r#"{"maxPeerCount": 15}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["node"], "test");
    std::thread::sleep(Duration::from_millis(800));
    fake.sick.store(false, Ordering::Relaxed);
    wait_for("n2 healthy again", || {
        node_field(&node, "n2", "healthy") == true
    });

    // Overloaded by its own report: the small room goes to n2 instead.
    let r = node.post(
        "/v1/nodes/test/heartbeat",
        r#"{"load": {"cpu": 0.93, "bandwidth": 0.2}}"#,
    );
    assert_eq!(r.json()["overloaded"], true);
    let r = node.post("/v1/rooms/small", r#"{"maxPeerCount": 2}"#);
    assert_eq!(r.json()["node"], "n2", "{}", r.body);
    node.post("/v1/nodes/test/heartbeat", r#"{"load": {"cpu": 0.1}}"#);

    // Discovery: a WHIP/WHEP POST for a room on n2 is sent there with a 307; one for a
    // room on this node, or for a room the cluster does not know, is served here.
    for kind in ["whip", "whep"] {
        let r = post_sdp(&node, &format!("/{kind}/small/cam"));
        assert_eq!(r.status, 307, "{kind}: {}", r.body);
        assert_eq!(
            r.header("location").as_deref(),
            Some(format!("{url}/{kind}/small/cam").as_str()),
            "{}",
            r.headers
        );
        assert_eq!(r.json()["node"], "n2");
    }
    let r = post_sdp(&node, "/whip/meet/cam");
    assert_eq!(r.status, 201, "{}", r.body);
    let r = post_sdp(&node, "/whip/unplaced/cam");
    assert_eq!(r.status, 201, "{}", r.body);
    let r = post_sdp(&node, "/whep/unplaced/cam");
    assert_eq!(r.status, 201, "{}", r.body);

    // Closing gives the capacity back.
    assert_eq!(node.delete("/v1/rooms/big").status, 204);
    assert_eq!(node.delete("/v1/rooms/big").status, 404);
    assert_eq!(node_field(&node, "n2", "reserved"), 870 + 2);
    assert_eq!(node_field(&node, "test", "reserved"), 12 + 2 + 210);
    let rooms = node.get("/v1/rooms").json();
    let ids: Vec<&str> = rooms["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| r["roomId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 5, "{rooms}");
    assert!(ids.contains(&generated.as_str()) && ids.contains(&"meet"));
    drop(fake);
    let _ = std::fs::remove_dir_all(&dir);
}
