//! Three nodes, each in its own network namespace with its own address, sharing one Redis:
//! rooms land on the freest node, a SIGKILLed node is marked unhealthy within two health
//! intervals and gets no new rooms, it takes rooms again once restarted, and a WHIP POST to
//! the wrong node is redirected (307) to one that accepts it (201). Issue #4, "Done means".
//!
//! Needs root, `ip` (iproute2) and `redis-server`; without them it skips, loudly.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{is_root, skip, which, Net, NodeProc};
use common::{http, http_typed, Http};

const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");
const HEALTH_MS: u64 = 500;

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "timed out ({limit:?}) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    start.elapsed()
}

fn get(addr: &str, path: &str) -> Option<Http> {
    http(addr, "GET", path, None).ok()
}

fn post(addr: &str, path: &str, body: &str) -> Http {
    http(addr, "POST", path, Some(body.as_bytes()))
        .unwrap_or_else(|e| panic!("POST {addr}{path}: {e}"))
}

/// `healthy` of every node as `addr`'s control plane lists them, by id.
fn health(addr: &str) -> Vec<(String, bool, u64)> {
    let Some(r) = get(addr, "/v1/nodes").filter(|r| r.status == 200) else {
        return Vec::new();
    };
    r.json()["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    (
                        n["nodeId"].as_str().unwrap_or("").to_owned(),
                        n["healthy"] == true,
                        n["capacity"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn node_healthy(addr: &str, id: &str) -> Option<bool> {
    health(addr)
        .into_iter()
        .find(|(n, _, _)| n == id)
        .map(|(_, h, _)| h)
}

fn redis_up(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

/// Host and port of an `http://host:port/...` URL, and its path.
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (host.to_owned(), path.to_owned())
}

#[test]
fn three_nodes_in_namespaces() {
    if !is_root() {
        return skip("cluster_netns", "not running as root");
    }
    let Ok(redis_bin) = which("redis-server") else {
        return skip(
            "cluster_netns",
            "redis-server not found (scripts/test.sh installs it)",
        );
    };
    let mut net = match Net::new("c", 77) {
        Ok(n) => n,
        Err(e) => {
            return skip(
                "cluster_netns",
                &format!("cannot build the namespaces: {e}"),
            )
        }
    };

    // Redis on the host, on the bridge's address: every namespace reaches it.
    let redis_port = common::free_tcp_port();
    net.redis = Some(
        Command::new(redis_bin)
            .args(["--bind", &net.host.clone()])
            .args(["--port", &redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn redis-server"),
    );
    let redis_addr = format!("{}:{redis_port}", net.host);
    wait_for("redis", Duration::from_secs(10), || redis_up(&redis_addr));
    let redis = net.redis_url(redis_port);

    // Nodes 1, 2, 3 with 1, 2, 3 workers: capacities 500, 1000, 1500.
    for i in 1..=3u16 {
        let dir = net.dir.join(format!("n{i}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        let config = dir.join("switchyard.toml");
        std::fs::write(
            &config,
            format!("[cluster]\nhealth_interval_ms = {HEALTH_MS}\n"),
        )
        .expect("config");
        let mut n = NodeProc {
            id: format!("n{i}"),
            ns: net.namespaces[usize::from(i) - 1].clone(),
            addr: format!("{}.{i}", net.subnet),
            workers: i,
            shm: dir,
            config,
            extra: Vec::new(),
            dataplane: None,
            controlplane: None,
        };
        n.start(&redis);
        net.nodes.push(n);
    }
    let addrs: Vec<String> = net.nodes.iter().map(NodeProc::http_addr).collect();
    let a1 = addrs[0].clone();
    // Every node answers its own /health (data plane attached), and every control plane
    // sees all three, healthy, with their capacities.
    for a in &addrs {
        wait_for(&format!("{a}/health"), Duration::from_secs(30), || {
            get(a, "/health").is_some_and(|r| r.status == 200)
        });
    }
    for a in &addrs {
        wait_for(
            &format!("3 healthy nodes seen from {a}"),
            Duration::from_secs(30),
            || {
                let h = health(a);
                h.len() == 3
                    && h.iter().all(|(_, ok, _)| *ok)
                    && h.iter().map(|(_, _, c)| *c).collect::<Vec<_>>() == [500, 1000, 1500]
            },
        );
    }

    // Rooms of 25 peers (600 consumers) fit n2 and n3 only; each goes to the freer one.
    let room = |name: &str| post(&a1, &format!("/v1/rooms/{name}"), r#"{"maxPeerCount": 25}"#);
    let r = room("r1");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["node"], "n3", "1500 free beats 1000: {}", r.body);
    assert_eq!(r.json()["consumers"], 600);
    // Now n2 (1000 free) is the freest.

    // SIGKILL node 2: unhealthy within two health intervals, seen from every control plane.
    net.nodes[1].kill();
    let t = wait_for(
        "n2 unhealthy",
        Duration::from_millis(2 * HEALTH_MS + 1000),
        || node_healthy(&a1, "n2") == Some(false),
    );
    eprintln!("n2 marked unhealthy {t:?} after SIGKILL");
    assert!(
        t <= Duration::from_millis(2 * HEALTH_MS + 250),
        "n2 took {t:?} to be marked unhealthy (health interval {HEALTH_MS} ms)"
    );
    assert_eq!(node_healthy(&addrs[2], "n2"), Some(false));
    // The room n2 would have taken goes elsewhere (n3: 900 free).
    let r = room("r2");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["node"], "n3", "{}", r.body);
    // n3 has 300 free now and n1 only 500: nothing fits a 600 room while n2 is down.
    let r = room("r3");
    assert_eq!(r.status, 503, "{}", r.body);

    // Restart node 2: healthy again, and it takes the next room.
    let redis2 = redis.clone();
    net.nodes[1].start(&redis2);
    let t = wait_for("n2 healthy again", Duration::from_secs(30), || {
        node_healthy(&a1, "n2") == Some(true)
            && get(&addrs[1], "/health").is_some_and(|r| r.status == 200)
    });
    eprintln!("n2 healthy {t:?} after restart");
    let r = room("r3");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["node"], "n2", "{}", r.body);

    // WHIP to the wrong node: 307 to the room's node, where the same POST succeeds.
    for (room, node, from) in [("r1", "n3", &a1), ("r3", "n2", &addrs[2])] {
        let path = format!("/whip/{room}/cam");
        let r = http_typed(
            from,
            "POST",
            &path,
            "application/sdp",
            Some(OFFER.as_bytes()),
        )
        .expect("WHIP POST");
        assert_eq!(r.status, 307, "{}", r.body);
        let location = r.header("location").expect("Location");
        let i = node[1..].parse::<usize>().expect("node number") - 1;
        assert_eq!(location, format!("http://{}{path}", addrs[i]));
        let (host, target) = split_url(&location);
        let r = http_typed(
            &host,
            "POST",
            &target,
            "application/sdp",
            Some(OFFER.as_bytes()),
        )
        .expect("WHIP POST to Location");
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(r.body.starts_with("v=0"), "{}", r.body);
        assert!(
            r.body.contains(&format!("{}.{} ", net.subnet, i + 1)),
            "candidate on the node's own address: {}",
            r.body
        );
    }
}
