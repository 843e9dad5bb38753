//! Viewer continuity (issue 13, item 3): three real nodes on loopback share one
//! `redis-server`; an aiortc publisher on `a`, aiortc viewers on `b` and `c` through the
//! WHEP cascade (both pull from `a`). Both of `a`'s processes are SIGKILLed; once `a` is
//! removed, the publisher publishes again through the room's URL on `c` (a 307 to the
//! room's new node, `b`). The viewers never POST again: `c` re-pulls the stream from `b`
//! into the same relay-in and `b`'s publisher replaces its relay, and both viewers decode
//! again with one SSRC per kind and few packets lost (a restarted numbering would count
//! thousands lost). The media gap each viewer saw is printed (docs/cluster.md).
//!
//! The second test makes a chain instead (relays `a` → `b` → `c`, set up through the REST
//! API): when the publisher comes back on `b` it replaces `b`'s relay, and `b` opens its
//! relay to `c` again into `c`'s same relay-in (the new publisher's SSRCs).
//!
//! `SWITCHYARD_CONTINUITY_HEALTH_MS` sets the health interval of the first two (default
//! 500 ms); the third runs with the default 5000 ms and bounds the removal and the gaps.
//!
//! Needs `redis-server` and `python3` (aiortc from PyPI): skipped loudly without them, a
//! failure under CI=true.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::aiortc::{client, python, summary};
use common::netns::{is_root, skip, which, Net, NodeProc};
use common::{Http, Node, Redis};

/// How long each viewer watches: the kill comes a few seconds in, recovery within the
/// removal (three intervals) and a relay tick or two after the new publisher.
const EXTRA_VIEW_S: u64 = 14;

fn health_ms() -> u64 {
    std::env::var("SWITCHYARD_CONTINUITY_HEALTH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn wait(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node's API as the test drives it, wherever the node runs.
struct Host {
    addr: String,
    api: String,
}

impl Host {
    fn at(addr: String) -> Host {
        Host {
            api: format!("http://{addr}"),
            addr,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Http {
        common::http(&self.addr, method, path, body.map(str::as_bytes)).expect(method)
    }

    fn get(&self, path: &str) -> Http {
        self.call("GET", path, None)
    }

    fn post(&self, path: &str, body: &str) -> Http {
        self.call("POST", path, Some(body))
    }

    fn delete(&self, path: &str) -> Http {
        self.call("DELETE", path, None)
    }

    /// The sum over workers of a metric line's values.
    fn metric_sum(&self, prefix: &str) -> u64 {
        common::metric_sum(&self.get("/metrics").body, prefix)
    }
}

/// Where the three nodes run: processes on loopback sharing a `redis-server`, or each in a
/// network namespace of its own on a bridge, Redis on the host (`common::netns`).
enum Place {
    Loopback {
        nodes: Box<[Node; 3]>,
        _redis: Redis,
    },
    Namespaces(Net),
}

impl Place {
    /// Nodes `a`, `b`, `c` with health interval `health`, healthy and registered. None
    /// when the place cannot be had here (skipped loudly; under CI a failure).
    fn start(name: &str, netns: bool, health: u64, dir: &std::path::Path) -> Option<Place> {
        let config = dir.join("switchyard.toml");
        // The namespaces are a private test network: relay keys may cross it in plain HTTP.
        let plain = if netns {
            "allow_plain_http_keys = true\n"
        } else {
            ""
        };
        std::fs::write(
            &config,
            format!("[cluster]\nhealth_interval_ms = {health}\n{plain}"),
        )
        .expect("config");
        if !netns {
            let redis = Redis::start_free(dir, false);
            let args = || -> Vec<std::ffi::OsString> {
                vec![
                    "--config".into(),
                    config.clone().into(),
                    "--redis".into(),
                    redis.url().into(),
                ]
            };
            let nodes = ["a", "b", "c"].map(|id| Node::spawn_named(id, 1, args()));
            for n in &nodes {
                n.wait_healthy();
            }
            return Some(Place::Loopback {
                nodes: Box::new(nodes),
                _redis: redis,
            });
        }
        let ci = std::env::var("CI").as_deref() == Ok("true");
        let unavailable = |why: String| {
            assert!(!ci, "{name}: {why} (required under CI)");
            skip(name, &why);
        };
        if !is_root() {
            unavailable("not running as root".into());
            return None;
        }
        let Ok(redis_bin) = which("redis-server") else {
            unavailable("redis-server not found".into());
            return None;
        };
        let mut net = match Net::new("k", 78) {
            Ok(n) => n,
            Err(e) => {
                unavailable(format!("cannot build the namespaces: {e}"));
                return None;
            }
        };
        let port = common::free_tcp_port();
        net.redis = Some(
            std::process::Command::new(redis_bin)
                .args(["--bind", &net.host.clone()])
                .args(["--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdout(std::process::Stdio::null())
                .stdin(std::process::Stdio::null())
                .spawn()
                .expect("spawn redis-server"),
        );
        let redis = net.redis_url(port);
        let redis_addr = format!("{}:{port}", net.host);
        wait("redis", Duration::from_secs(10), || {
            std::net::TcpStream::connect(&redis_addr).is_ok()
        });
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            let dir = net.dir.join(id);
            std::fs::create_dir_all(&dir).expect("node dir");
            let mut n = NodeProc {
                id: id.into(),
                ns: net.namespaces[i].clone(),
                addr: format!("{}.{}", net.subnet, i + 1),
                workers: 1,
                shm: dir.clone(),
                config: config.clone(),
                extra: Vec::new(),
                dataplane: None,
                controlplane: None,
            };
            n.start(&redis);
            net.nodes.push(n);
        }
        let place = Place::Namespaces(net);
        for h in place.hosts() {
            wait("a node's health", Duration::from_secs(30), || {
                common::http(&h.addr, "GET", "/health", None).is_ok_and(|r| r.status == 200)
            });
        }
        Some(place)
    }

    fn hosts(&self) -> [Host; 3] {
        match self {
            Place::Loopback { nodes, .. } => {
                nodes.each_ref().map(|n| Host::at(n.http_addr.clone()))
            }
            Place::Namespaces(net) => [0, 1, 2].map(|i| Host::at(net.nodes[i].http_addr())),
        }
    }

    /// SIGKILL both of `a`'s processes.
    fn kill_a(&mut self) {
        match self {
            Place::Loopback { nodes, .. } => {
                nodes[0].kill_controlplane();
                nodes[0].kill_dataplane();
            }
            Place::Namespaces(net) => net.nodes[0].kill(),
        }
    }
}

fn nodes(node: &Host) -> Vec<serde_json::Value> {
    let r = node.get("/v1/nodes");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["nodes"].as_array().expect("nodes").clone()
}

/// The ids of `node`'s WHEP subscribers.
fn viewers(node: &Host) -> Vec<u64> {
    let r = node.get("/v1/sessions");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s["role"] == "subscriber")
        .filter_map(|s| s["id"].as_u64())
        .collect()
}

/// The relay feeding `stream` on `node`: its source node and relay-in session.
fn incoming(node: &Host) -> Option<(String, u64)> {
    let r = node.get("/v1/relays");
    let v = r.json();
    let i = v["incoming"].as_array()?.first()?.clone();
    Some((i["sourceNode"].as_str()?.to_owned(), i["relayId"].as_u64()?))
}

/// Issue 13's first "Done means" as written: the three nodes each in a network namespace
/// of its own (addresses on a bridge, Redis on the host), the default health interval. `a`
/// is removed and the viewers on `b` and `c` keep their sessions and see video again
/// within the 3 s target. Needs root and `ip`.
#[test]
fn in_network_namespaces_the_viewers_gap_stays_under_3_s() {
    let (removed, gaps) = run_with(
        "in_network_namespaces_the_viewers_gap_stays_under_3_s",
        Shape::Cascade,
        5000,
        true,
    );
    assert!(
        removed < Duration::from_secs(4),
        "removed after {removed:?}"
    );
    for (node, gap) in gaps {
        assert!(gap < 3.0, "viewer on {node}: a {gap:.2} s gap");
    }
}

/// How the stream reaches `b` and `c`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    /// Both pull from `a` through the WHEP cascade.
    Cascade,
    /// Relays `a` → `b` → `c`, set up through the REST API.
    Chain,
    /// A `node://b` forward on `a` (a hot standby), then the cascade: `c` pulls from `a`.
    /// The publisher is running when `a` dies and re-POSTs at once, not after the removal.
    Standby,
}

#[test]
fn viewers_keep_their_sessions_when_the_source_node_dies() {
    run(
        "viewers_keep_their_sessions_when_the_source_node_dies",
        Shape::Cascade,
    );
}

#[test]
fn a_chain_follows_the_publisher_to_its_new_node() {
    run(
        "a_chain_follows_the_publisher_to_its_new_node",
        Shape::Chain,
    );
}

/// Issue 13's hot standby: with a `node://b` forward of the stream and a publisher that
/// re-POSTs to the room's URL as soon as its node dies, the viewers on `b` and `c` see a
/// gap under a second with the default health interval. The node the POST reaches finds
/// `a` refusing connections and removes it (the room goes to `b`, which holds the
/// stream); `c`, which removed `a` itself, re-pulls from `b` at once; `b`'s publisher
/// replaces the standby relay and reopens `b`'s relay to `c`.
#[test]
fn with_a_hot_standby_the_viewers_gap_stays_under_a_second() {
    let (removed, gaps) = run_with(
        "with_a_hot_standby_the_viewers_gap_stays_under_a_second",
        Shape::Standby,
        5000,
        false,
    );
    assert!(
        removed < Duration::from_secs(3),
        "removed after {removed:?}"
    );
    for (node, gap) in gaps {
        assert!(gap < 1.0, "viewer on {node}: a {gap:.2} s gap");
    }
}

/// The default health interval (5 s): three silent rounds would take 10 to 15 s, but the
/// relays that went quiet on `b` and `c` find `a`'s host refusing connections and remove
/// it at once, so the viewers' gap stays near the 3 s target (measured 2.3–2.8 s; the
/// bound leaves room for a loaded machine).
#[test]
fn with_the_default_interval_a_dead_source_is_found_by_its_quiet_relays() {
    let (removed, gaps) = run_with(
        "with_the_default_interval_a_dead_source_is_found_by_its_quiet_relays",
        Shape::Cascade,
        5000,
        false,
    );
    assert!(
        removed < Duration::from_secs(4),
        "removed after {removed:?}"
    );
    for (node, gap) in gaps {
        assert!(gap < 4.5, "viewer on {node}: a {gap:.2} s gap");
    }
}

/// `shape`: how `b` and `c` get the stream.
fn run(name: &str, shape: Shape) {
    run_with(name, shape, health_ms(), false);
}

/// [`run`] with health interval `health` (ms), in network namespaces when `netns`: how long
/// after the kill `a` was removed, and each viewer's video gap (node, seconds).
fn run_with(
    name: &str,
    shape: Shape,
    health: u64,
    netns: bool,
) -> (Duration, Vec<(&'static str, f64)>) {
    let Some(py) = python() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name}: python3 is required under CI"
        );
        eprintln!("SKIPPED {name}: python3 not found; install python3 to run it");
        return (Duration::ZERO, Vec::new());
    };
    if !Redis::required(name) {
        return (Duration::ZERO, Vec::new());
    }
    let dir = std::env::temp_dir().join(format!("swy-continuity-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let Some(mut place) = Place::start(name, netns, health, &dir) else {
        return (Duration::ZERO, Vec::new());
    };
    let [a, b, c] = place.hosts();
    wait("three healthy nodes", Duration::from_secs(20), || {
        let l = nodes(&b);
        l.len() == 3 && l.iter().all(|n| n["healthy"] == true)
    });
    // The room goes to a (b and c drained while it is placed); c stays drained, so when
    // a dies the room moves to b. Draining stops placements only: c still serves viewers.
    for id in ["b", "c"] {
        assert_eq!(b.post(&format!("/v1/nodes/{id}/drain"), "").status, 200);
    }
    let r = b.post("/v1/rooms/live", r#"{"maxPeerCount": 2}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["node"], "a");
    assert_eq!(b.delete("/v1/nodes/b/drain").status, 200);

    let mut first = client(
        &py,
        "whip_client.py",
        &format!("{}/whip/live/cam", a.api),
        600,
        &[],
    );
    wait(
        "the publisher's media on a",
        Duration::from_secs(30),
        || a.metric_sum("switchyard_rx_packets_total{") > 100,
    );
    let c_source = match shape {
        Shape::Chain => {
            let path = "/v1/streams/live/cam/relays";
            let r = a.post(path, r#"{"targetNode": "b"}"#);
            assert_eq!(r.status, 201, "{}", r.body);
            let r = b.post(path, r#"{"targetNode": "c"}"#);
            assert_eq!(r.status, 201, "{}", r.body);
            "b"
        }
        Shape::Standby => {
            let r = a.post(
                "/v1/forwards",
                r#"{"prefix": "live/", "destinations": ["node://b"]}"#,
            );
            assert_eq!(r.status, 201, "{}", r.body);
            wait("the standby relay on b", Duration::from_secs(20), || {
                incoming(&b).is_some_and(|(src, _)| src == "a")
            });
            "a"
        }
        Shape::Cascade => "a",
    };
    // The kill comes after a few seconds of media; the viewers watch on for long enough to
    // see the node removed and the publisher back.
    let view_s = 4 + (3 * health).div_ceil(1000) + EXTRA_VIEW_S;
    let watchers: Vec<_> = [&b, &c]
        .iter()
        .map(|n| {
            client(
                &py,
                "whep_client.py",
                &format!("{}/whep/live/cam", n.api),
                view_s as u32,
                &["--gaps"],
            )
        })
        .collect();
    for (n, source) in [(&b, "a"), (&c, c_source)] {
        wait(
            "a viewer fed through the cascade",
            Duration::from_secs(30),
            || {
                incoming(n).is_some_and(|(src, _)| src == source)
                    && n.metric_sum("switchyard_tx_packets_total{") > 200
            },
        );
    }
    let c_viewers = viewers(&c);
    let (_, c_relay) = incoming(&c).expect("c's relay");
    assert_eq!(c_viewers.len(), 1, "{c_viewers:?}");
    // The returning publisher through the room's URL on any node: c answers with a 307 to
    // the room's new node, b, which the client follows. With the standby it is already
    // running (its offer made) and POSTs the moment the trigger file appears.
    let trigger = dir.join("republish");
    let republish = |extra: &[&str]| {
        client(
            &py,
            "whip_client.py",
            &format!("{}/whip/live/cam", c.api),
            (EXTRA_VIEW_S + 10) as u32,
            extra,
        )
    };
    let ready = (shape == Shape::Standby)
        .then(|| republish(&["--start-when", trigger.to_str().expect("utf-8 path")]));
    std::thread::sleep(Duration::from_secs(2));

    // Both of a's processes die at once; its publisher's connection dies with them.
    let killed = Instant::now();
    let killed_wall = wall();
    place.kill_a();
    let _ = first.kill();
    let _ = first.wait();
    if ready.is_some() {
        std::fs::write(&trigger, b"").expect("trigger");
    }
    // Watched on the node list, which suspects nobody: `/v1/resolve` would find `a` dead
    // itself (a client about to be sent there), and the removal measured would be the
    // test's own doing, not the relays'.
    let removed_by = |within| {
        wait("a removed", within, || {
            let l = nodes(&b);
            !l.is_empty() && l.iter().all(|n| n["nodeId"] != "a")
        });
        let removed = killed.elapsed();
        let r = b.get("/v1/resolve?room=live");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["node"], "b", "the room moved with the removal");
        removed
    };
    let (removed_after, republished_wall, second) = match ready {
        Some(second) => (removed_by(Duration::from_secs(10)), killed_wall, second),
        None => {
            let removed = removed_by(Duration::from_millis(10 * health + 5000));
            (removed, wall(), republish(&[]))
        }
    };
    wait(
        "c's relay taken over by b's publisher",
        Duration::from_secs(20),
        || {
            incoming(&c).is_some_and(|(src, _)| src == "b")
                && c.metric_sum("switchyard_relays_retargeted_total") >= 1
        },
    );
    let (_, relay_after) = incoming(&c).expect("c's relay");
    assert_eq!(relay_after, c_relay, "the same relay-in session on c");
    assert_eq!(viewers(&c), c_viewers, "c's viewer kept its session");

    let mut gaps = Vec::new();
    for (node, w) in ["b", "c"].into_iter().zip(watchers) {
        let s = summary(w, "whep_client");
        eprintln!("viewer on {node}: {s}");
        assert_eq!(s["connection"], "connected", "{s}");
        assert_eq!(
            s["delete_status"], 200,
            "the viewer's own session to the end: {s}"
        );
        // One SSRC per kind, and no restarted numbering (it would count as thousands lost).
        let inbound = s["inbound"].as_array().expect("inbound stats");
        for kind in ["audio", "video"] {
            let streams: Vec<_> = inbound.iter().filter(|i| i["kind"] == kind).collect();
            assert_eq!(streams.len(), 1, "{node}: one {kind} SSRC: {s}");
            let lost = streams[0]["packetsLost"].as_i64().unwrap_or(i64::MAX);
            assert!(lost.abs() < 500, "{node}: {kind} numbering continuous: {s}");
        }
        // The pause of video across the switch: it began about when a died (a frame in
        // flight may land just after) and ended once the new publisher was there.
        let (from, to) = s["gaps"]
            .as_array()
            .expect("gaps")
            .iter()
            .filter(|g| g[0] == "video")
            .map(|g| (g[1].as_f64().unwrap_or(0.0), g[2].as_f64().unwrap_or(0.0)))
            .find(|&(from, to)| from < killed_wall + 1.0 && to > killed_wall)
            .unwrap_or_else(|| panic!("{node}: no pause in video across the kill: {s}"));
        assert!(
            to > republished_wall,
            "{node}: video resumed after the publisher came back: {s}"
        );
        gaps.push((node, to - from, to - republished_wall, from - killed_wall));
    }
    drop(second);
    eprintln!(
        "{name}: health interval {health} ms: a removed {:.2} s after the kill",
        removed_after.as_secs_f64()
    );
    for &(node, gap, after_republish, before_kill) in &gaps {
        eprintln!(
            "viewer on {node}: video gap {gap:.2} s (last frame {:.2} s after the kill; \
             first frame {after_republish:.2} s after the new publisher started)",
            before_kill
        );
    }
    drop(place);
    let _ = std::fs::remove_dir_all(&dir);
    (
        removed_after,
        gaps.into_iter()
            .map(|(node, gap, _, _)| (node, gap))
            .collect(),
    )
}
