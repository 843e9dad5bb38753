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
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http, Http, BIN};
use switchyard_shared::command::SrtpProfile;
use switchyard_shared::srtp::Context;

const HEALTH_MS: u64 = 500;
const PORT: u16 = 8080;
/// 28 × 0x07: the publisher's key; 28 × 0x08: every subscriber's.
const PUB_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw==";
const SUB_KEY: &str = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICA==";
const SSRC: u32 = 4242;
const RATE: u64 = 200;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn skip(why: &str) {
    eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED relay_netns: {why}");
    eprintln!("!!! (needs root, iproute2 `ip netns` and redis-server; CI runs it as root)");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// One node's processes and where it lives.
struct NodeProc {
    id: String,
    ns: String,
    addr: String,
    workers: u16,
    shm: PathBuf,
    config: PathBuf,
    dataplane: Option<Child>,
    controlplane: Option<Child>,
}

impl NodeProc {
    fn http_addr(&self) -> String {
        format!("{}:{PORT}", self.addr)
    }

    fn spawn(&self, role: &str, redis: &str) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, BIN, role])
            .arg("--config")
            .arg(&self.config)
            .args(["--node-id", &self.id])
            .arg("--shm-dir")
            .arg(&self.shm)
            .args(["--http-listen", &self.http_addr()])
            .args(["--media-bind", &self.addr])
            .args(["--media-announce", &self.addr])
            .args(["--media-port", "20000"])
            .args(["--relay-port", "21000"])
            .args(["--workers", &self.workers.to_string()])
            .args(["--pin", "false"])
            .args(["--redis", redis])
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {role} of {}: {e}", self.id))
    }

    fn start(&mut self, redis: &str) {
        self.dataplane = Some(self.spawn("dataplane", redis));
        self.controlplane = Some(self.spawn("controlplane", redis));
    }

    /// SIGKILL both planes (`ip netns exec` execs the command, so the child is the node).
    fn kill(&mut self) {
        for c in [self.controlplane.take(), self.dataplane.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Everything the test creates; torn down in `Drop`, also when the test panics.
struct Net {
    bridge: String,
    host: String,
    subnet: String,
    namespaces: Vec<String>,
    nodes: Vec<NodeProc>,
    redis: Option<Child>,
    dir: PathBuf,
}

impl Net {
    fn new() -> Result<Net, String> {
        let pid = std::process::id();
        // A /24 per test process, so concurrent runs do not share routes.
        let subnet = format!("10.78.{}", 10 + pid % 240);
        let dir = std::env::temp_dir().join(format!("swy-relay-netns-{pid}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut net = Net {
            bridge: format!("swyr{pid}"),
            host: format!("{subnet}.254"),
            subnet,
            namespaces: Vec::new(),
            nodes: Vec::new(),
            redis: None,
            dir,
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for i in 1..=3u32 {
            let ns = format!("swyr{pid}n{i}");
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let veth = format!("swyw{pid}{i}");
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &net.bridge, "up"])?;
            let addr = format!("{}.{i}", net.subnet);
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    fn redis_url(&self, port: u16) -> String {
        format!("redis://{}:{port}", self.host)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if let Some(mut r) = self.redis.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        // Deleting a namespace deletes its veth end, and the peer with it.
        let _ = ip(&["link", "del", &self.bridge]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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

fn sessions(addr: &str) -> Vec<serde_json::Value> {
    let r = get(addr, "/v1/sessions").expect("sessions");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["sessions"].as_array().expect("list").clone()
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
        return skip("not running as root");
    }
    let Ok(redis_bin) = which("redis-server") else {
        return skip("redis-server not found (scripts/test.sh installs it)");
    };
    let mut net = match Net::new() {
        Ok(n) => n,
        Err(e) => return skip(&format!("cannot build the namespaces: {e}")),
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
            format!("[cluster]\nhealth_interval_ms = {HEALTH_MS}\n"),
        )
        .expect("config");
        let mut n = NodeProc {
            id: id.to_owned(),
            ns: net.namespaces[i].clone(),
            addr: format!("{}.{}", net.subnet, i + 1),
            workers: 2,
            shm: dir,
            config,
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

fn which(bin: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(bin))
                .find(|f| f.is_file())
        })
        .ok_or(())
}
