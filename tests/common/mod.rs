//! Real node processes for integration tests: `switchyard dataplane` and `switchyard
//! controlplane` from this build, on loopback, with their shared-memory files in a private
//! directory, killed when the test ends.

#![allow(dead_code)] // each test binary uses a different part

pub mod aiortc;
pub mod browser;
pub mod capture;
pub mod cdp;
pub mod cluster;
pub mod lossy;
pub mod netns;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A response: status and body.
#[derive(Debug)]
pub struct Http {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Http {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The value of the first response header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// Run the `switchyard` binary with `args` (e.g. `token generate`); its trimmed stdout.
pub fn cli(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("run switchyard");
    assert!(
        out.status.success(),
        "switchyard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// One HTTP/1.1 request with `Connection: close`.
/// The sum of the values of the lines of a `/metrics` page that start with `prefix`.
pub fn metric_sum(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub fn http(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Http> {
    http_typed(addr, method, path, "application/json", body)
}

/// [`http`] with the body's Content-Type, e.g. `application/sdp` for WHIP/WHEP offers.
pub fn http_typed(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<&[u8]>,
) -> std::io::Result<Http> {
    http_with(addr, method, path, content_type, &[], body)
}

/// [`http_typed`] with extra request headers, e.g. `("Authorization", "Bearer …")`.
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Http> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    // A server may answer (413) before reading a large body and close; that is fine.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // Bodies here are small and not chunked except axum's streaming ones, which we don't use.
    Ok(Http {
        status,
        headers: headers.to_owned(),
        body: body.to_owned(),
    })
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free TCP port")
}

/// `n` consecutive ports on 127.0.0.1 free for UDP and for TCP alike, below the kernel's
/// ephemeral range (32768 and up by default). A worker binds both on its media port
/// (ICE-TCP): a port in the ephemeral range could be any test's outgoing TCP connection at
/// the moment the node starts, and its data plane would refuse to start.
pub fn free_udp_ports(n: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Spread the test processes over the range; within one, walk it.
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..500 {
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = 20_000 + ((seed.wrapping_add(k.wrapping_mul(97))) % 12_000) as u16;
        if u32::from(base) + u32::from(n) > 32_000 {
            continue;
        }
        let held: Vec<_> = (0..n)
            .map_while(|i| {
                let u = UdpSocket::bind(("127.0.0.1", base + i)).ok()?;
                let t = TcpListener::bind(("127.0.0.1", base + i)).ok()?;
                Some((u, t))
            })
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no {n} consecutive free UDP and TCP ports");
}

/// `n` consecutive free UDP ports on 127.0.0.1 that do not overlap `[avoid, avoid + n)`
/// (a node's relay ports next to its media ports: both ranges must bind).
pub fn free_udp_ports_apart(n: u16, avoid: u16) -> u16 {
    for _ in 0..50 {
        let base = free_udp_ports(n);
        if base >= avoid.saturating_add(n) || avoid >= base.saturating_add(n) {
            return base;
        }
    }
    panic!("no {n} free UDP ports apart from {avoid}");
}

/// A node: data plane and control plane processes.
pub struct Node {
    pub api: String,
    pub http_addr: String,
    /// `--media-bind` of both planes (127.0.0.1 unless [`Node::spawn_bound`] says otherwise).
    pub media_bind: String,
    pub media_port: u16,
    /// `--relay-port`: worker `i`'s relay socket is `relay_port + i`. Always set, so nodes
    /// of parallel tests never contend for the default.
    pub relay_port: u16,
    /// `--node-id` (`test` unless [`Node::spawn_named`] says otherwise).
    pub node_id: String,
    pub workers: u16,
    pub shm: PathBuf,
    pub dataplane: Option<Child>,
    pub controlplane: Option<Child>,
    /// Flags both processes get after the usual ones (see [`Node::spawn_with`]).
    pub extra: Vec<std::ffi::OsString>,
    /// Each process's stderr (its log) goes to `<shm>/<role>.log`, appended across
    /// restarts, instead of the test's output (see [`Node::start_logged`]).
    pub logs: bool,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Node {
    pub fn start(workers: u16) -> Node {
        let node = Node::spawn_with(workers, Vec::new());
        node.wait_healthy();
        node
    }

    /// [`Node::start`] with extra arguments for both planes (global flags such as
    /// `--config FILE`; the node's own flags still override the file).
    pub fn start_with_args(workers: u16, extra_args: &[&str]) -> Node {
        let node = Node::spawn_with(workers, extra_args.iter().map(Into::into).collect());
        node.wait_healthy();
        node
    }

    /// Start both processes with `extra` flags appended, without waiting for the node to
    /// answer (for flags such as `--http-certificate` that change how it answers).
    pub fn spawn_with(workers: u16, extra: Vec<std::ffi::OsString>) -> Node {
        Node::spawn_bound(workers, "127.0.0.1", extra)
    }

    /// [`Node::spawn_with`] with the media sockets bound to `media_bind` (e.g. `::`).
    pub fn spawn_bound(workers: u16, media_bind: &str, extra: Vec<std::ffi::OsString>) -> Node {
        Node::spawn_full("test", workers, media_bind, extra)
    }

    /// [`Node::spawn_with`] with node id `id` (nodes of one cluster need distinct ids).
    pub fn spawn_named(id: &str, workers: u16, extra: Vec<std::ffi::OsString>) -> Node {
        Node::spawn_full(id, workers, "127.0.0.1", extra)
    }

    /// [`Node::start`] with each process's log in a file ([`Node::log_lines`] counts them).
    pub fn start_logged(workers: u16) -> Node {
        let node = Node::spawn_logged("test", workers, "127.0.0.1", Vec::new(), true);
        node.wait_healthy();
        node
    }

    /// Lines `role` (`dataplane` or `controlplane`) has logged so far (a [`Node::start_logged`]
    /// node).
    pub fn log_lines(&self, role: &str) -> usize {
        std::fs::read(self.shm.join(format!("{role}.log")))
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
    }

    /// What `role` has logged so far (a [`Node::start_logged`] node), for failure messages.
    pub fn log_text(&self, role: &str) -> String {
        std::fs::read_to_string(self.shm.join(format!("{role}.log"))).unwrap_or_default()
    }

    fn spawn_full(
        id: &str,
        workers: u16,
        media_bind: &str,
        extra: Vec<std::ffi::OsString>,
    ) -> Node {
        Node::spawn_logged(id, workers, media_bind, extra, false)
    }

    fn spawn_logged(
        id: &str,
        workers: u16,
        media_bind: &str,
        extra: Vec<std::ffi::OsString>,
        logs: bool,
    ) -> Node {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shm = std::env::temp_dir().join(format!("swy-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&shm).expect("shm dir");
        let http_addr = format!("127.0.0.1:{}", free_tcp_port());
        let media_port = free_udp_ports(workers);
        let mut node = Node {
            api: format!("http://{http_addr}"),
            http_addr,
            media_bind: media_bind.to_owned(),
            media_port,
            relay_port: free_udp_ports_apart(workers, media_port),
            node_id: id.to_owned(),
            workers,
            shm,
            dataplane: None,
            controlplane: None,
            extra,
            logs,
        };
        node.start_dataplane();
        node.start_controlplane();
        node
    }

    fn command(&self, role: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg(role)
            .args(["--node-id", &self.node_id])
            .arg("--shm-dir")
            .arg(&self.shm)
            .args(["--http-listen", &self.http_addr])
            .args(["--media-bind", &self.media_bind])
            .args(["--media-port", &self.media_port.to_string()])
            .args(["--relay-port", &self.relay_port.to_string()])
            .args(["--workers", &self.workers.to_string()])
            .args(["--pin", "false"])
            // The suite itself keeps this machine's CPUs busy: judge nodes by their own load.
            .env("SWITCHYARD_HOST_LOAD", "false")
            // SWITCHYARD_TEST_LOG=debug shows the node's logs while debugging a test.
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .args(&self.extra)
            .stdin(Stdio::null());
        if self.logs {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.shm.join(format!("{role}.log")))
                .expect("log file");
            c.stderr(log);
        }
        c
    }

    pub fn start_dataplane(&mut self) {
        self.dataplane = Some(self.command("dataplane").spawn().expect("spawn dataplane"));
    }

    pub fn start_controlplane(&mut self) {
        self.controlplane = Some(
            self.command("controlplane")
                .spawn()
                .expect("spawn controlplane"),
        );
    }

    pub fn kill_controlplane(&mut self) {
        if let Some(mut c) = self.controlplane.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the data plane and wait for it to exit (a clean stop); its exit status.
    pub fn stop_dataplane(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.dataplane.take()?;
        // SAFETY: kill(2) on the child this test started and has not reaped.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        c.wait().ok()
    }

    pub fn kill_dataplane(&mut self) {
        if let Some(mut c) = self.dataplane.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn get(&self, path: &str) -> Http {
        http(&self.http_addr, "GET", path, None).expect("GET")
    }

    pub fn post(&self, path: &str, body: &str) -> Http {
        http(&self.http_addr, "POST", path, Some(body.as_bytes())).expect("POST")
    }

    pub fn delete(&self, path: &str) -> Http {
        http(&self.http_addr, "DELETE", path, None).expect("DELETE")
    }

    /// Wait until /health answers 200; returns its JSON.
    pub fn wait_healthy(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http(&self.http_addr, "GET", "/health", None) {
                if r.status == 200 {
                    return r.json();
                }
            }
            assert!(Instant::now() < deadline, "node did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sum over workers of a metric line's values, e.g. `switchyard_sessions{`.
    pub fn metric_sum(&self, prefix: &str) -> u64 {
        metric_sum(&self.get("/metrics").body, prefix)
    }
}

impl Node {
    /// Packets forwarded so far, read from the data plane's stats file directly (works with
    /// no control plane running).
    pub fn forwarded_direct(&self) -> u64 {
        use switchyard_shared::stats::{Counter, Stats};
        let stats = Stats::open(&self.shm.join(format!("switchyard-{}.stats", self.node_id)))
            .expect("stats file");
        (0..stats.workers())
            .filter_map(|w| stats.worker(w))
            .map(|c| c.get(Counter::Forwarded))
            .sum()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_controlplane();
        self.kill_dataplane();
        let _ = std::fs::remove_dir_all(&self.shm);
    }
}

/// The process id of the redis-server answering on `port` (`INFO server`), if one does.
fn redis_pid(port: u16) -> Option<u32> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"INFO server\r\n").ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("process_id:") || !text[text.find("process_id:")?..].contains('\n') {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let at = text.find("process_id:")? + "process_id:".len();
    text[at..].lines().next()?.trim().parse().ok()
}

/// A real `redis-server` on 127.0.0.1 for cluster tests, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// Start one on `port` with its files in `dir`. `durable`: append-only file fsynced on
    /// every write, so a restart on the same `dir` finds everything again.
    pub fn start(dir: &std::path::Path, port: u16, durable: bool) -> Redis {
        Redis::try_start(dir, port, durable).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Redis::start`] on a free port. Free ports are picked by binding port 0 and letting it
    /// go, so two tests of one binary can pick the same one; the loser's server exits at
    /// once and its test would talk to the winner's. So: check the server answering is ours,
    /// and try another port when it is not.
    pub fn start_free(dir: &std::path::Path, durable: bool) -> Redis {
        let mut last = String::new();
        for _ in 0..5 {
            match Redis::try_start(dir, free_tcp_port(), durable) {
                Ok(r) => return r,
                Err(e) => last = e,
            }
        }
        panic!("no redis-server of our own after 5 ports: {last}");
    }

    fn try_start(dir: &std::path::Path, port: u16, durable: bool) -> Result<Redis, String> {
        let persistence: &[&str] = if durable {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let mut redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = redis.child.try_wait() {
                return Err(format!("redis-server on port {port} exited: {status}"));
            }
            // The server that answers must be the one we started, not another test's.
            if let Some(pid) = redis_pid(port) {
                if pid == redis.child.id() {
                    return Ok(redis);
                }
                redis.kill();
                return Err(format!("port {port} is another redis-server's (pid {pid})"));
            }
            if Instant::now() > deadline {
                redis.kill();
                return Err(format!("redis-server did not listen on {port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether `test` can run: true with `redis-server` on the PATH; without it, a loud skip
    /// on a laptop and a failure under `CI=true`, where a skipped test would pass unseen.
    pub fn required(test: &str) -> bool {
        if Self::installed() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} cannot run under CI=true: redis-server is not installed"
        );
        eprintln!("\n!!!!! SKIPPED {test}: redis-server is not installed (apt-get install redis-server) !!!!!\n");
        false
    }

    /// Whether `redis-server` is on the PATH (tests skip loudly without it).
    pub fn installed() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
