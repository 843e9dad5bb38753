//! A node on a host with two addresses (issue 11): in a network namespace whose one interface
//! carries 10.x and 192.168.x, both routed, with `media.announce` unset and media bound to
//! 0.0.0.0. The WHIP/WHEP answers list both addresses; a Chromium that can reach the node only
//! on the first publishes, a Chromium that can reach it only on the second plays. The second
//! one is what used to fail: the node's replies left from the kernel's choice of source
//! (the first address, the one on the client's subnet) and the browser discarded them, until
//! the data plane learned the destination of each datagram (IP_PKTINFO) and answered from it.
//!
//! And a node whose clients cannot use UDP at all (corporate networks, some hotels): with all
//! their UDP to the node dropped, Chromium publishes and watches over ICE-TCP (RFC 6544), and
//! with UDP open it picks UDP (the first test's paths are UDP while TCP is offered too).
//!
//! Each browser runs in its own namespace without `--allow-loopback-in-peer-connection`, as a
//! browser on another host; nftables in its namespace drops its UDP to the address it must
//! not use. Needs root, iproute2, nftables and Debian's `chromium`; skipped loudly without
//! them, and a failure under CI=true.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{find_chromium, num, one_chromium_test_at_a_time, Chromium, Reports};
use common::netns::{self, ip, Net, PORT};
use serde_json::Value;

/// Why this test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if std::env::var("SWITCHYARD_SKIP_BROWSER").as_deref() == Ok("1") {
        return Some("SWITCHYARD_SKIP_BROWSER=1".into());
    }
    if !netns::is_root() {
        return Some("needs root for network namespaces".into());
    }
    if find_chromium().is_none() {
        return Some("chromium is not installed (apt-get install -y chromium)".into());
    }
    if Command::new("nft").arg("--version").output().is_err() {
        return Some("nft is not installed (apt-get install -y nftables)".into());
    }
    None
}

/// Skip loudly on a laptop; fail under CI=true, where every tool must be there.
fn ready(test: &str) -> bool {
    match missing() {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test} cannot run under CI=true: {why}")
        }
        Some(why) => {
            netns::skip(test, &why);
            false
        }
    }
}

/// Load an nftables ruleset into namespace `ns`.
pub fn nft(ns: &str, rules: &str) {
    use std::io::Write;
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("write rules");
    assert!(c.wait().expect("nft").success(), "nft in {ns}: {rules}");
}

/// One plane of a node inside `ns`, media bound to every address and nothing announced.
fn plane(ns: &str, role: &str, http: &str, shm: &std::path::Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, common::BIN, role])
        .args(["--node-id", "mh"])
        .arg("--shm-dir")
        .arg(shm)
        .args(["--http-listen", http])
        // Auth off on the namespace's own address: a private test network.
        .arg("--insecure")
        .args(["--media-bind", "0.0.0.0"])
        .args(["--workers", "1", "--pin", "false"])
        // The suite keeps this machine's CPUs busy: judge the node by its own load.
        .env("SWITCHYARD_HOST_LOAD", "false")
        .env(
            "RUST_LOG",
            std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {role}: {e}"))
}

/// A node in `ns`, its API on `addr`; returns once it is healthy.
fn start_node(net: &Net, ns: &str, addr: &str) -> (Planes, String) {
    let http = format!("{addr}:{PORT}");
    let shm = net.dir.join("shm");
    std::fs::create_dir_all(&shm).expect("shm dir");
    let node = Planes(vec![
        plane(ns, "dataplane", &http, &shm),
        plane(ns, "controlplane", &http, &shm),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::http(&http, "GET", "/health", None).map_or(true, |r| r.status != 200) {
        assert!(
            Instant::now() < deadline,
            "node in {ns} never became healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (node, http)
}

/// Sum of a metric's series in `/metrics`.
fn metric(http: &str, name: &str) -> u64 {
    let body = common::http(http, "GET", "/metrics", None)
        .expect("metrics")
        .body;
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

struct Planes(Vec<Child>);

impl Drop for Planes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn offered(r: &Value) -> Vec<String> {
    r["offered"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn chromium_reaches_a_two_address_node_on_either_address() {
    let test = "multihome::chromium_reaches_a_two_address_node_on_either_address";
    if !ready(test) {
        return;
    }
    let _serial = one_chromium_test_at_a_time();
    let bin = find_chromium().expect("chromium");
    let started = Instant::now();
    let net = Net::new("m", 49).expect("network namespaces");
    let (node_ns, pub_ns, sub_ns) = (&net.namespaces[0], &net.namespaces[1], &net.namespaces[2]);
    let first = format!("{}.1", net.subnet);
    // The second address: another subnet on the same interface, routed to from the clients.
    let second_net = format!("192.168.{}", 10 + std::process::id() % 240);
    let second = format!("{second_net}.1");
    ip(&[
        "-n",
        node_ns,
        "addr",
        "add",
        &format!("{second}/24"),
        "dev",
        "eth0",
    ])
    .expect("addr");
    for ns in [pub_ns, sub_ns] {
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &format!("{second_net}.0/24"),
            "dev",
            "eth0",
        ])
        .expect("route");
    }
    // The publisher's browser can reach the node only on its first address, the watcher's
    // only on its second (UDP; signalling stays on the first).
    let drop_udp_to = |ns: &str, addr: &str| {
        nft(
            ns,
            &format!(
                "table inet swy {{\n chain out {{\n  type filter hook output priority 0;\n  \
                 ip daddr {addr} meta l4proto udp drop\n }}\n}}\n"
            ),
        )
    };
    drop_udp_to(pub_ns, &second);
    drop_udp_to(sub_ns, &first);

    let http = format!("{first}:{PORT}");
    let shm = net.dir.join("shm");
    std::fs::create_dir_all(&shm).expect("shm dir");
    let _node = Planes(vec![
        plane(node_ns, "dataplane", &http, &shm),
        plane(node_ns, "controlplane", &http, &shm),
    ]);
    let api = format!("http://{http}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::http(&http, "GET", "/health", None).map_or(true, |r| r.status != 200) {
        assert!(
            Instant::now() < deadline,
            "node in {node_ns} never became healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut reports = Reports::start_on(&net.host);
    let base = reports.base.clone();
    let allow = [first.as_str(), second.as_str(), net.host.as_str()];
    let publisher = Chromium::start_in_netns(
        &bin,
        "mh-publisher",
        &format!("{api}/?publish=mh/cam&report={base}/pub"),
        pub_ns,
        &allow,
    );
    let p = reports.wait("/pub", Duration::from_secs(40), |r| {
        r["state"] == "connected" && num(r, "framesEncoded") > 0.0 && r["path"].is_string()
    });
    eprintln!("publisher: {p}");
    let candidates = offered(&p);
    for addr in [&first, &second] {
        assert!(
            candidates
                .iter()
                .any(|c| c.starts_with(&format!("udp {addr}:"))),
            "the answer does not offer {addr}: {candidates:?}"
        );
    }
    assert!(
        p["path"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("udp {first}:"))),
        "publisher path: {p}"
    );

    let watcher = Chromium::start_in_netns(
        &bin,
        "mh-watcher",
        &format!("{api}/?watch=mh/cam&report={base}/sub"),
        sub_ns,
        &allow,
    );
    let w = reports.wait("/sub", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") > 100.0 && num(r, "audioPacketsReceived") > 0.0
    });
    eprintln!("watcher: {w}");
    assert!(
        w["path"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("udp {second}:"))),
        "watcher path: {w}"
    );
    drop(watcher);
    drop(publisher);
    eprintln!(
        "multihome test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn chromium_without_udp_publishes_and_watches_over_ice_tcp() {
    let test = "multihome::chromium_without_udp_publishes_and_watches_over_ice_tcp";
    if !ready(test) {
        return;
    }
    let _serial = one_chromium_test_at_a_time();
    let bin = find_chromium().expect("chromium");
    let started = Instant::now();
    let net = Net::new("t", 50).expect("network namespaces");
    let (node_ns, pub_ns, sub_ns) = (&net.namespaces[0], &net.namespaces[1], &net.namespaces[2]);
    let node_addr = format!("{}.1", net.subnet);
    // Both browsers' networks drop every UDP packet to the node; TCP (the page, WHIP/WHEP and
    // ICE-TCP) gets through.
    for ns in [pub_ns, sub_ns] {
        nft(
            ns,
            &format!(
                "table inet swy {{\n chain out {{\n  type filter hook output priority 0;\n  \
                 ip daddr {node_addr} meta l4proto udp drop\n }}\n}}\n"
            ),
        );
    }
    let (_node, http) = start_node(&net, node_ns, &node_addr);
    let api = format!("http://{http}");
    let mut reports = Reports::start_on(&net.host);
    let base = reports.base.clone();
    let allow = [node_addr.as_str(), net.host.as_str()];
    let publisher = Chromium::start_in_netns(
        &bin,
        "tcp-publisher",
        &format!("{api}/?publish=tcp/cam&report={base}/pub"),
        pub_ns,
        &allow,
    );
    let p = reports.wait("/pub", Duration::from_secs(40), |r| {
        r["state"] == "connected" && num(r, "framesEncoded") > 0.0 && r["path"].is_string()
    });
    eprintln!("publisher: {p}");
    let over_tcp = |r: &Value| {
        r["path"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("tcp {node_addr}:")))
    };
    assert!(over_tcp(&p), "publisher path: {p}");
    let watcher = Chromium::start_in_netns(
        &bin,
        "tcp-watcher",
        &format!("{api}/?watch=tcp/cam&report={base}/sub"),
        sub_ns,
        &allow,
    );
    let w = reports.wait("/sub", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") > 100.0 && num(r, "audioPacketsReceived") > 0.0
    });
    eprintln!("watcher: {w}");
    assert!(over_tcp(&w), "watcher path: {w}");
    let (rx, tx) = (
        metric(&http, "switchyard_tcp_rx_packets_total"),
        metric(&http, "switchyard_tcp_tx_packets_total"),
    );
    eprintln!("ICE-TCP packets in {rx}, out {tx}");
    assert!(rx > 100 && tx > 100, "rx {rx} tx {tx}");
    assert!(metric(&http, "switchyard_tcp_connections") >= 2);
    drop(watcher);
    drop(publisher);
    eprintln!("ICE-TCP test took {:.1} s", started.elapsed().as_secs_f64());
}
