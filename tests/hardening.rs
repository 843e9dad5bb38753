//! What a node exposes and how much one client can take, on real node processes (issue 9,
//! items 6, 7, 8 and 13): room hooks need a cluster token or an allow-listed URL; stalled
//! HTTP connections are capped and closed; session creation has per-client quotas and a
//! rate limit; no open API on a public address by default, and no relay keys over plain HTTP
//! to a remote peer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{cli, Http, Node, BIN};

const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A one-worker node started with `toml` as its config file.
fn node_with(tag: &str, toml: &str) -> (Node, TempDir) {
    let dir = std::env::temp_dir().join(format!("swy-hard-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("switchyard.toml");
    std::fs::write(&config, toml).expect("write config");
    let node = Node::start_with_args(1, &["--config", config.to_str().expect("path")]);
    (node, TempDir(dir))
}

fn send(node: &Node, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> Http {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    let ctype = if path.starts_with("/whip/") || path.starts_with("/whep/") {
        "application/sdp"
    } else {
        "application/json"
    };
    common::http_with(
        &node.http_addr,
        method,
        path,
        ctype,
        &headers,
        body.map(str::as_bytes),
    )
    .expect("request")
}

fn error_of(r: &Http) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_owned()
}

/// Item 6: a user token whose root covers a room, or no token on a public room, may not
/// point the room's events at an arbitrary URL (SSRF); a cluster token may, and anyone may
/// use a URL under `[cluster] hook_allow`.
#[test]
fn room_hooks_need_a_cluster_token_or_an_allowed_url() {
    let key = cli(&["token", "generate"]);
    let (node, _dir) = node_with(
        "hooks",
        &format!(
            "[auth]\nkey = \"{key}\"\npublic = \"anon\"\n\
             [cluster]\nhook_allow = [\"https://hooks.invalid/\"]\n"
        ),
    );
    let user = cli(&[
        "token",
        "sign",
        "--key",
        &key,
        "--root",
        "room1",
        "--publish",
        "",
        "--expires",
        "10m",
    ]);
    let cluster = cli(&["token", "sign", "--key", &key, "--cluster"]);
    // The node registers itself with the (in-memory) store right after it starts.
    let create = |room: &str, hook: &str, token: Option<&str>| {
        let body = format!(r#"{{"maxPeerCount": 2, "eventNotificationUri": "{hook}"}}"#);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = send(
                &node,
                "POST",
                &format!("/v1/rooms/{room}"),
                Some(&body),
                token,
            );
            if r.status != 503 || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for (room, hook, token) in [
        (
            "room1",
            "http://169.254.169.254/latest/meta-data",
            Some(&user),
        ),
        ("room1", "https://hooks.invalid.evil.test/x", Some(&user)),
        ("room1", "https://hooks.invalid@evil.test/x", Some(&user)),
        ("anon", "http://127.0.0.1:6379/", None),
    ] {
        let r = create(room, hook, token.map(String::as_str));
        assert_eq!(r.status, 403, "{hook}: {}", r.body);
        assert!(error_of(&r).contains("eventNotificationUri"), "{}", r.body);
    }
    let r = create("room1", "https://hooks.invalid/room1", Some(&user));
    assert_eq!(r.status, 201, "an allow-listed hook: {}", r.body);
    let r = create("room2", "http://10.0.0.9:9000/hook", Some(&cluster));
    assert_eq!(r.status, 201, "a cluster token sets any hook: {}", r.body);
    let r = send(&node, "DELETE", "/v1/rooms/room1", None, Some(&user));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = send(
        &node,
        "POST",
        "/v1/rooms/room1",
        Some(r#"{"maxPeerCount": 2}"#),
        Some(&user),
    );
    assert_eq!(r.status, 201, "no hook, no restriction: {}", r.body);
}

/// Whether the server closed `s` (EOF or reset) rather than just not answering yet.
fn closed(mut s: &TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => true,
        // A 408 or 503 before the close counts as closed too.
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Item 7: slow-loris. Connections over `[http] max_connections` are closed at once; those
/// that never finish their request head are closed after `header_read_timeout_ms`, as is an
/// idle keep-alive connection; `/health` answers again as soon as they are gone.
#[test]
fn stalled_connections_are_capped_and_timed_out() {
    let (node, _dir) = node_with(
        "loris",
        "[http]\nmax_connections = 40\nheader_read_timeout_ms = 2000\n",
    );
    let start = Instant::now();
    let stalled: Vec<TcpStream> = (0..120)
        .map(|_| {
            let mut s = TcpStream::connect(&node.http_addr).expect("connect");
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let early = stalled.iter().filter(|s| closed(s)).count();
    assert!(
        start.elapsed() < Duration::from_millis(1800),
        "the check ran late"
    );
    assert!(
        (70..=85).contains(&early),
        "{early} of 120 closed at once; want the ~80 over the cap of 40"
    );
    std::thread::sleep(Duration::from_millis(2600).saturating_sub(start.elapsed()));
    let mut open = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    for s in &stalled {
        while !closed(s) {
            if Instant::now() > deadline {
                open += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(
        open, 0,
        "stalled connections still held after the header timeout"
    );
    assert_eq!(node.get("/health").status, 200);

    // An idle keep-alive connection goes too.
    let mut idle = TcpStream::connect(&node.http_addr).expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    idle.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).expect("answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "idle keep-alive connection held for {:?}",
        t.elapsed()
    );
}

fn whip(node: &Node, path: &str, token: Option<&str>) -> Http {
    send(node, "POST", path, Some(OFFER), token)
}

/// Item 8: one client cannot fill the node. Anonymous clients (public prefix) have a cap of
/// live sessions per source address, tokens one per token, and both a token-bucket rate of
/// session creation; over either, 429 with a JSON error and `Retry-After`. Cluster tokens
/// are exempt; an ended session gives its place back.
#[test]
fn session_creation_has_quotas_and_a_rate_limit() {
    let key = cli(&["token", "generate"]);
    let (node, _dir) = node_with(
        "quota",
        &format!(
            "[auth]\nkey = \"{key}\"\npublic = \"anon\"\n\
             [limits]\nsessions_per_address = 2\nsessions_per_token = 50\n\
             session_burst = 4\nsession_interval_ms = 5000\n"
        ),
    );
    let user = cli(&[
        "token",
        "sign",
        "--key",
        &key,
        "--root",
        "room1",
        "--publish",
        "",
        "--expires",
        "10m",
    ]);
    let cluster = cli(&["token", "sign", "--key", &key, "--cluster"]);

    // Anonymous: two live sessions from this address, the third refused.
    let a1 = whip(&node, "/whip/anon/a1", None);
    assert_eq!(a1.status, 201, "{}", a1.body);
    assert_eq!(whip(&node, "/whip/anon/a2", None).status, 201);
    let r = whip(&node, "/whip/anon/a3", None);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(error_of(&r).contains("sessions"), "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{}", r.headers);

    // A token: its burst of four, then the rate limit.
    for i in 1..=4 {
        let r = whip(&node, &format!("/whip/room1/c{i}"), Some(&user));
        assert_eq!(r.status, 201, "c{i}: {}", r.body);
    }
    let r = whip(&node, "/whip/room1/c5", Some(&user));
    assert_eq!(r.status, 429, "{}", r.body);
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=5).contains(&wait), "Retry-After: {wait}");

    // Cluster tokens are not limited.
    for i in 1..=6 {
        let r = whip(&node, &format!("/whip/room2/x{i}"), Some(&cluster));
        assert_eq!(r.status, 201, "x{i}: {}", r.body);
    }

    // An ended session frees its place.
    let location = a1.header("location").expect("Location");
    assert_eq!(send(&node, "DELETE", &location, None, None).status, 200);
    let r = whip(&node, "/whip/anon/a3", None);
    assert_eq!(r.status, 201, "{}", r.body);

    let metrics = node.get("/metrics").body;
    for reason in ["quota", "rate"] {
        let line = format!("switchyard_sessions_throttled_total{{reason=\"{reason}\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line:?} in /metrics"));
        assert!(n >= 1, "{line}{n}");
    }
}

/// Item 13: with auth off, `up` and `controlplane` refuse a non-loopback API address unless
/// told `--insecure`, and the default address is loopback.
#[test]
fn an_open_api_is_not_served_on_a_public_address() {
    let shm = std::env::temp_dir().join(format!("swy-hard-bind-{}", std::process::id()));
    std::fs::create_dir_all(&shm).expect("dir");
    let _cleanup = TempDir(shm.clone());
    let media = common::free_udp_ports(1);
    let relay = common::free_udp_ports_apart(1, media);
    for role in ["up", "controlplane"] {
        let listen = format!("0.0.0.0:{}", common::free_tcp_port());
        let mut child = std::process::Command::new(BIN)
            .arg(role)
            .arg("--shm-dir")
            .arg(&shm)
            .args(["--http-listen", &listen, "--workers", "1", "--pin", "false"])
            .args(["--media-bind", "127.0.0.1"])
            .args(["--media-port", &media.to_string()])
            .args(["--relay-port", &relay.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                // SAFETY: kill(2) on our own child, so `up` stops its children too.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let _ = child.wait();
                panic!("{role} served an open API on {listen}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        let _ = child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr);
        assert_eq!(status.code(), Some(2), "{role}: {stderr}");
        assert!(
            stderr.contains("--insecure") && stderr.contains("auth"),
            "{role}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    let printed = cli(&["config"]);
    assert!(
        printed.contains("listen = \"127.0.0.1:8080\""),
        "the default API address is loopback: {printed}"
    );
}

/// Item 13: a relay's link keys travel in the ingress answer, so a source does not ask a
/// remote target for one over plain `http://` (unless `[cluster] allow_plain_http_keys`).
#[test]
fn relay_keys_do_not_go_over_plain_http_to_a_remote_node() {
    let node = Node::start(1);
    let r = node.post("/v1/sessions", r#"{"role":"publisher","stream":"r/cam"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let t = Instant::now();
    let r = node.post(
        "/v1/streams/r/cam/relays",
        r#"{"address":"192.0.2.1:8080"}"#,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(error_of(&r).contains("allow_plain_http_keys"), "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(2), "it tried to connect");
    // Loopback is fine: this one is tried (and nobody listens there).
    let r = node.post("/v1/streams/r/cam/relays", r#"{"address":"127.0.0.1:1"}"#);
    assert_eq!(r.status, 502, "{}", r.body);
}
