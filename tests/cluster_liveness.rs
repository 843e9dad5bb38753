//! When a node dies (issue 13, items 1 and 2): three real nodes on loopback share one
//! `redis-server`; a room is placed on `a`, then both of `a`'s processes are SIGKILLed.
//! Within three health intervals `/v1/resolve` on `b` names a live node; WHIP offers for the
//! room are served by live nodes (a publisher re-POSTing after its node died publishes
//! again); `a`'s entry, lease and reservations are gone from the store; the room's hook
//! heard `node-down` and `room-moved`; `a` restarted with the same id is a live node again.
//!
//! Needs `redis-server` on the PATH: skipped loudly without it, a failure under CI=true.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{Node, Redis};
use switchyard_controlplane::cluster::redis::RedisStore;
use switchyard_controlplane::cluster::Store;

const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");
/// Short, so the test is quick; the rule is in intervals, so this is the default's shape.
const HEALTH_MS: u64 = 400;

/// A hook that records the JSON body of every POST it gets.
fn hook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind hook");
    let url = format!("http://{}/events", listener.local_addr().expect("addr"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read until the body named by Content-Length is in.
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        if let Ok(v) = serde_json::from_str(&body[..len]) {
                            seen.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                        }
                        break;
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (url, got)
}

fn post_offer(node: &Node, path: &str) -> common::Http {
    common::http_typed(
        &node.http_addr,
        "POST",
        path,
        "application/sdp",
        Some(OFFER.as_bytes()),
    )
    .expect("POST offer")
}

fn nodes(node: &Node) -> Vec<serde_json::Value> {
    let r = node.get("/v1/nodes");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["nodes"].as_array().expect("nodes").clone()
}

fn wait(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        // Short: the time to removal is measured through this loop.
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_dead_node_is_removed_and_its_room_moves() {
    if !Redis::required("a_dead_node_is_removed_and_its_room_moves") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("swy-liveness-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let redis = Redis::start_free(&dir, false);
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        format!("[cluster]\nhealth_interval_ms = {HEALTH_MS}\n"),
    )
    .expect("config");
    let args = || -> Vec<std::ffi::OsString> {
        vec![
            "--config".into(),
            config.clone().into(),
            "--redis".into(),
            redis.url().into(),
        ]
    };
    let mut a = Node::spawn_named("a", 1, args());
    let b = Node::spawn_named("b", 1, args());
    let c = Node::spawn_named("c", 1, args());
    for n in [&a, &b, &c] {
        n.wait_healthy();
    }
    wait("three healthy nodes", Duration::from_secs(20), || {
        let l = nodes(&b);
        l.len() == 3 && l.iter().all(|n| n["healthy"] == true)
    });

    // The room goes to a: the others are drained while it is placed.
    let (hook_url, events) = hook();
    for id in ["b", "c"] {
        assert_eq!(b.post(&format!("/v1/nodes/{id}/drain"), "").status, 200);
    }
    let r = b.post(
        "/v1/rooms/town",
        &format!(r#"{{"maxPeerCount": 4, "eventNotificationUri": "{hook_url}"}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["node"], "a");
    for id in ["b", "c"] {
        assert_eq!(b.delete(&format!("/v1/nodes/{id}/drain")).status, 200);
    }
    // A publisher on a, whose node is about to die.
    let r = post_offer(&b, "/whip/town/cam");
    assert_eq!(r.status, 307, "{}", r.body);
    let r = post_offer(&a, "/whip/town/cam");
    assert_eq!(r.status, 201, "{}", r.body);
    let a_registered = nodes(&b)
        .iter()
        .find(|n| n["nodeId"] == "a")
        .map(|n| n["registeredMs"].as_u64().expect("registeredMs"))
        .expect("a listed");

    // Both of a's processes die at once.
    let killed = Instant::now();
    a.kill_controlplane();
    a.kill_dataplane();
    let mut resolved = serde_json::Value::Null;
    wait(
        "resolve on b names a live node",
        Duration::from_secs(10),
        || {
            let r = b.get("/v1/resolve?room=town");
            assert_eq!(r.status, 200, "{}", r.body);
            resolved = r.json();
            resolved["node"] != "a"
        },
    );
    let gone_after = killed.elapsed();
    eprintln!("a gone from resolve after {gone_after:?} ({HEALTH_MS} ms intervals)");
    // The third silent check comes at most three intervals after the kill (rounds run at a
    // fixed rate); on top come that probe's refusal, the removal script, the re-placement and
    // this loop's poll: a few milliseconds when the machine is quiet, but CI runs this beside
    // the rest of the suite on two cores, so half an interval of slack keeps the check about
    // the rule and not about the scheduler. `/v1/resolve` itself finds `a` refusing
    // connections and removes it sooner (0.32 s measured here; 0.94-1.12 s before it did).
    assert!(
        gone_after <= Duration::from_millis(3 * HEALTH_MS + HEALTH_MS / 2),
        "took {gone_after:?}, more than 3 health intervals"
    );
    let new_node = resolved["node"].as_str().expect("node").to_owned();
    assert!(new_node == "b" || new_node == "c", "{resolved}");
    assert_eq!(
        resolved["whipUrl"],
        format!("{}/whip/town", if new_node == "b" { &b } else { &c }.api)
    );

    // The publisher re-POSTs to any node: a live node publishes it, never a.
    for (node, stream) in [(&b, "cam"), (&c, "cam2")] {
        let r = post_offer(node, &format!("/whip/town/{stream}"));
        let served_by = match r.status {
            201 => node,
            307 => {
                let location = r.header("location").expect("Location");
                assert!(
                    !location.starts_with(&a.api),
                    "307 to the dead node: {location}"
                );
                let target = if location.starts_with(&b.api) { &b } else { &c };
                assert!(location.starts_with(&target.api), "{location}");
                let r = post_offer(target, &format!("/whip/town/{stream}"));
                assert_eq!(r.status, 201, "{}", r.body);
                target
            }
            s => panic!("WHIP on {}: {s} {}", node.node_id, r.body),
        };
        assert_eq!(served_by.node_id, new_node);
    }

    // The store: a's entry, lease and streams gone; the room holds its consumers on its new
    // node and nothing is reserved for a dead node.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = RedisStore::new(&redis.url()).expect("store");
    rt.block_on(async {
        let listed = store.list_nodes().await.expect("nodes");
        assert!(listed.iter().all(|n| n.node_id != "a"), "{listed:?}");
        let lapsed = store.lapsed(0).await.expect("lapsed");
        assert!(lapsed.is_empty(), "{lapsed:?}");
        let rooms = store.list_rooms().await.expect("rooms");
        assert_eq!(rooms.len(), 1);
        assert_eq!(rooms[0].node, new_node);
        let reserved: u64 = listed.iter().map(|n| n.reserved).sum();
        assert_eq!(reserved, rooms[0].consumers, "{listed:?}");
        assert!(store
            .stream_sources("town/cam")
            .await
            .expect("sources")
            .iter()
            .all(|(n, _)| n != "a"));
    });
    let mut redis_cli = std::process::Command::new("redis-cli");
    redis_cli.args([
        "-p",
        &redis.port.to_string(),
        "EXISTS",
        "{switchyard}:lease:a",
    ]);
    if let Ok(out) = redis_cli.output() {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    }

    // The hook heard both, in order.
    wait("node-down and room-moved", Duration::from_secs(5), || {
        events.lock().unwrap_or_else(|p| p.into_inner()).len() >= 2
    });
    let got = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let kinds: Vec<&str> = got.iter().filter_map(|e| e["event"].as_str()).collect();
    let down = kinds
        .iter()
        .position(|k| *k == "node-down")
        .expect("node-down");
    let moved = kinds
        .iter()
        .position(|k| *k == "room-moved")
        .expect("room-moved");
    assert!(down < moved, "{got:?}");
    assert_eq!(got[down]["node"], "a");
    assert_eq!(got[moved]["node"], new_node.as_str());
    assert_eq!(got[moved]["from"], "a");

    // a comes back with the same id: a new, live entry with nothing reserved, and it stays.
    a.start_dataplane();
    a.start_controlplane();
    a.wait_healthy();
    wait("a registered again", Duration::from_secs(10), || {
        nodes(&b).iter().any(|n| {
            n["nodeId"] == "a"
                && n["healthy"] == true
                && n["reserved"] == 0
                && n["registeredMs"].as_u64() > Some(a_registered)
        })
    });
    std::thread::sleep(Duration::from_millis(4 * HEALTH_MS));
    assert!(
        nodes(&b)
            .iter()
            .any(|n| n["nodeId"] == "a" && n["healthy"] == true),
        "a removed again after it came back"
    );
    let r = b.get("/v1/resolve?room=town");
    assert_eq!(r.json()["node"], new_node.as_str(), "{}", r.body);

    drop((a, b, c));
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With the default health interval (5 s) three silent rounds take 10 to 15 s; a publisher
/// re-POSTing in that window must not be sent back to its dead node. The node it asks
/// connects to the room's node first: refused three times, it is removed there and then,
/// the room moves, and the offer is served by a live node within about a second.
#[test]
fn an_offer_for_a_dead_nodes_room_is_not_sent_there() {
    if !Redis::required("an_offer_for_a_dead_nodes_room_is_not_sent_there") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("swy-liveness-offer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let redis = Redis::start_free(&dir, false);
    // The default health interval: no config.
    let args = || -> Vec<std::ffi::OsString> { vec!["--redis".into(), redis.url().into()] };
    let mut a = Node::spawn_named("a", 1, args());
    let b = Node::spawn_named("b", 1, args());
    for n in [&a, &b] {
        n.wait_healthy();
    }
    wait("two nodes", Duration::from_secs(20), || {
        nodes(&b).len() == 2
    });
    assert_eq!(b.post("/v1/nodes/b/drain", "").status, 200);
    let r = b.post("/v1/rooms/square", r#"{"maxPeerCount": 4}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["node"], "a");
    assert_eq!(b.delete("/v1/nodes/b/drain").status, 200);
    let r = post_offer(&a, "/whip/square/cam");
    assert_eq!(r.status, 201, "{}", r.body);

    a.kill_controlplane();
    a.kill_dataplane();
    let asked = Instant::now();
    let r = post_offer(&b, "/whip/square/cam");
    let took = asked.elapsed();
    eprintln!("offer on b right after a died: {} after {took:?}", r.status);
    assert_eq!(
        r.status, 201,
        "served by the live node, not sent to a: {}",
        r.body
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(b.get("/v1/resolve?room=square").json()["node"], "b");
    assert!(b.metric_sum("switchyard_cluster_fast_verdicts_total") >= 1);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
