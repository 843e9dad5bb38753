//! Issue #5, "Done means": three nodes in network namespaces sharing one Redis; a publisher on
//! A, a relay A→B and a relay B→C (a two-hop chain), 20 subscribers each on B and C; every
//! subscriber receives every packet over 10 s. Then B's data plane is killed and restarted:
//! its relay-in comes back with the same port and key, A is not touched, and new subscribers
//! on B (and those on C, downstream of B) receive again.
//!
//! Needs root, `ip` (iproute2) and `redis-server`; without root or tools it skips, loudly.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::netns::{is_root, skip, which, Net, NodeProc};
use common::{http, Http};
use switchyard_shared::command::SrtpProfile;
use switchyard_shared::srtp::Context;

const HEALTH_MS: u64 = 500;
/// 28 × 0x07: the publisher's key; 28 × 0x08: every subscriber's.
const PUB_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw==";
const SUB_KEY: &str = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICA==";
const SSRC: u32 = 4242;
const RATE: u64 = 200;

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

/// The sessions a node lists, without their live counters (`stats` moves with every packet;
/// what is compared here is which sessions exist, with what keys and addresses).
fn sessions(addr: &str) -> Vec<serde_json::Value> {
    let r = get(addr, "/v1/sessions").expect("sessions");
    assert_eq!(r.status, 200, "{}", r.body);
    let mut list = r.json()["sessions"].as_array().expect("list").clone();
    for s in &mut list {
        if let Some(o) = s.as_object_mut() {
            o.remove("stats");
        }
    }
    list
}

/// A subscriber socket on the host and the sequence numbers it decrypted.
struct Receiver {
    seqs: Arc<std::sync::Mutex<BTreeSet<u16>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn subscribe(api: &str, host: &str, stop: &Arc<AtomicBool>) -> Receiver {
    let sock = UdpSocket::bind((host, 0)).expect("bind subscriber");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let body = format!(
        r#"{{"role":"subscriber","stream":"live/cam","remote":"{}","localKey":"{SUB_KEY}"}}"#,
        sock.local_addr().expect("addr")
    );
    let r = post(api, "/v1/sessions", &body);
    assert_eq!(r.status, 201, "{}", r.body);
    let seqs = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let (out, stop_rx) = (seqs.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let mut ctx = Context::new(SrtpProfile::AeadAes128Gcm, &[8; 28]).expect("ctx");
        let mut buf = [0u8; 1500];
        while !stop_rx.load(Ordering::Relaxed) {
            let Ok(n) = sock.recv(&mut buf) else { continue };
            let mut pkt = buf[..n].to_vec();
            // A subscriber gets its own sequence numbers and timestamps (continuous across
            // joins and restarts): the publisher's number travels in the payload.
            if ctx.unprotect_rtp(&mut pkt).is_ok() && pkt.len() >= 14 {
                out.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(u16::from_be_bytes([pkt[12], pkt[13]]));
            }
        }
    });
    Receiver {
        seqs,
        stop: stop.clone(),
        thread: Some(thread),
    }
}

impl Receiver {
    fn got(&self, range: std::ops::RangeInclusive<u16>) -> usize {
        let s = self.seqs.lock().unwrap_or_else(|p| p.into_inner());
        range.filter(|q| s.contains(q)).count()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Also when an assertion unwinds past the receivers: stop them all, then join.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Send sequence numbers `seqs` at [`RATE`] per second from the publisher's socket.
fn send(sock: &UdpSocket, ctx: &mut Context, to: &str, seqs: std::ops::RangeInclusive<u16>) {
    let start = Instant::now();
    for (i, seq) in seqs.enumerate() {
        let mut buf = vec![0u8; 12 + 200 + 16];
        buf[0] = 0x80;
        buf[1] = 96;
        buf[2..4].copy_from_slice(&seq.to_be_bytes());
        buf[4..8].copy_from_slice(&(u32::from(seq) * 450).to_be_bytes());
        buf[8..12].copy_from_slice(&SSRC.to_be_bytes());
        buf[12..14].copy_from_slice(&seq.to_be_bytes()); // what subscribers check
        let n = ctx.protect_rtp(&mut buf, 212).expect("protect");
        sock.send_to(&buf[..n], to).expect("send");
        let due = start + Duration::from_micros(1_000_000 / RATE * (i as u64 + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

#[test]
fn relays_across_three_namespaces() {
    if !is_root() {
        return skip("relay_netns", "not running as root");
    }
    let Ok(redis_bin) = which("redis-server") else {
        return skip(
            "relay_netns",
            "redis-server not found (scripts/test.sh installs it)",
        );
    };
    let mut net = match Net::new("r", 78) {
        Ok(n) => n,
        Err(e) => return skip("relay_netns", &format!("cannot build the namespaces: {e}")),
    };
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
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let dir = net.dir.join(id);
        std::fs::create_dir_all(&dir).expect("node dir");
        let config = dir.join("switchyard.toml");
        std::fs::write(
            &config,
            // Relays between namespaces over plain HTTP: a private test network.
            format!("[cluster]\nhealth_interval_ms = {HEALTH_MS}\nallow_plain_http_keys = true\n"),
        )
        .expect("config");
        let mut n = NodeProc {
            id: id.to_owned(),
            ns: net.namespaces[i].clone(),
            addr: format!("{}.{}", net.subnet, i + 1),
            workers: 2,
            shm: dir,
            config,
            extra: vec!["--relay-port".into(), "21000".into()],
            dataplane: None,
            controlplane: None,
        };
        n.start(&redis);
        net.nodes.push(n);
    }
    let api: Vec<String> = net.nodes.iter().map(NodeProc::http_addr).collect();
    for a in &api {
        wait_for(&format!("{a}/health"), Duration::from_secs(30), || {
            get(a, "/health").is_some_and(|r| r.status == 200)
        });
        wait_for("3 registered nodes", Duration::from_secs(30), || {
            get(a, "/v1/nodes").is_some_and(|r| {
                r.json()["nodes"]
                    .as_array()
                    .is_some_and(|l| l.len() == 3 && l.iter().all(|n| n["healthy"] == true))
            })
        });
    }

    // The publisher on A sends from a host socket; relays A→B and B→C.
    let publisher = UdpSocket::bind((net.host.as_str(), 0)).expect("bind publisher");
    let body = format!(
        r#"{{"role":"publisher","stream":"live/cam","remote":"{}","remoteKey":"{PUB_KEY}","ssrcs":[{SSRC}]}}"#,
        publisher.local_addr().expect("addr")
    );
    let r = post(&api[0], "/v1/sessions", &body);
    assert_eq!(r.status, 201, "{}", r.body);
    let media_a = r.json()["mediaAddress"].as_str().expect("media").to_owned();
    let r = post(
        &api[0],
        "/v1/streams/live/cam/relays",
        r#"{"targetNode":"b"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = post(
        &api[1],
        "/v1/streams/live/cam/relays",
        r#"{"targetNode":"c"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["hops"], serde_json::json!(["a", "b"]));
    let r = post(
        &api[2],
        "/v1/streams/live/cam/relays",
        r#"{"targetNode":"a"}"#,
    );
    assert_eq!(r.status, 409, "C→A closes a loop: {}", r.body);

    let stop = Arc::new(AtomicBool::new(false));
    let on_b: Vec<Receiver> = (0..20)
        .map(|_| subscribe(&api[1], &net.host, &stop))
        .collect();
    let on_c: Vec<Receiver> = (0..20)
        .map(|_| subscribe(&api[2], &net.host, &stop))
        .collect();
    let mut ctx = Context::new(SrtpProfile::AeadAes128Gcm, &[7; 28]).expect("ctx");
    let phase1 = 1..=(RATE * 10) as u16;
    send(&publisher, &mut ctx, &media_a, phase1.clone());
    std::thread::sleep(Duration::from_millis(500));
    for (node, list) in [("b", &on_b), ("c", &on_c)] {
        for (i, r) in list.iter().enumerate() {
            assert_eq!(
                r.got(phase1.clone()),
                phase1.len(),
                "subscriber {i} on {node} lost packets"
            );
        }
    }

    // B's data plane dies and comes back: its relay-in is provisioned again with the same
    // port and key, and A keeps sending to it untouched.
    let a_before = sessions(&api[0]);
    let b = &mut net.nodes[1];
    if let Some(mut dp) = b.dataplane.take() {
        let _ = dp.kill();
        let _ = dp.wait();
    }
    // Until B's control plane saw the old process gone, its sockets may still hold the ports.
    wait_for(
        "B reports its data plane down",
        Duration::from_secs(10),
        || get(&api[1], "/health").is_some_and(|r| r.status == 503),
    );
    b.dataplane = Some(b.spawn("dataplane", &redis));
    wait_for("B healthy again", Duration::from_secs(30), || {
        get(&api[1], "/health").is_some_and(|r| r.status == 200)
    });
    wait_for("B's relay-in back", Duration::from_secs(10), || {
        sessions(&api[1]).iter().any(|s| s["role"] == "relay-in")
    });
    assert_eq!(sessions(&api[0]), a_before, "A was not touched");
    let fresh: Vec<Receiver> = (0..5)
        .map(|_| subscribe(&api[1], &net.host, &stop))
        .collect();
    let phase2 = phase1.end() + 1..=phase1.end() + (RATE * 3) as u16;
    send(&publisher, &mut ctx, &media_a, phase2.clone());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for (i, r) in fresh.iter().enumerate() {
        assert_eq!(
            r.got(phase2.clone()),
            phase2.len(),
            "new subscriber {i} on B after B's data plane restart"
        );
    }
    for (i, r) in on_c.iter().enumerate() {
        assert_eq!(
            r.got(phase2.clone()),
            phase2.len(),
            "subscriber {i} on C (through B) after B's restart"
        );
    }
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
