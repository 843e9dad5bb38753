//! Headless Chromium against a real node: one page publishes a fake camera and microphone
//! with WHIP, a second page watches it with WHEP, both from the demo page at `GET /` driven
//! by query parameters. The pages POST a getStats summary every second to a listener this
//! test runs on 127.0.0.1; answering "stop" makes a page hang up (DELETE on its Location).
//! The publisher page also sends a data channel message a second, which must reach the
//! watcher through the node.
//!
//! Needs Debian's `chromium` (`scripts/test.sh` installs it). Without it the test fails,
//! unless `SWITCHYARD_SKIP_BROWSER=1`. Chromium's flags keep all traffic on the machine
//! (docs/webrtc.md, "Browser test").

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::Node;
use serde_json::Value;

/// The Chromium tests run one at a time: each drives two browsers with fake 640x480 video,
/// and two such tests side by side on a small machine starve each other's encoders and
/// WebRTC timers (the first page then reports nothing within its deadline).
fn one_chromium_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SWITCHYARD_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// One headless Chromium showing one page, in its own process group so the renderer and
/// helper processes go with it. Killed by process group id (its PID) on drop.
struct Chromium {
    child: Child,
    dir: PathBuf,
    name: &'static str,
}

impl Chromium {
    fn start(bin: &PathBuf, name: &'static str, url: &str) -> Chromium {
        let dir = std::env::temp_dir().join(format!("swy-chromium-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("chromium dir");
        let log = std::fs::File::create(dir.join("chromium.log")).expect("chromium log");
        let child = Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--use-fake-device-for-media-stream=fps=30",
                "--use-fake-ui-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,DialMediaRouteProvider",
                // Nothing leaves the machine: no name lookups, no background services.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1 , EXCLUDE [::1]",
                "--no-proxy-server",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-domain-reliability",
                "--disable-breakpad",
                "--disable-client-side-phishing-detection",
                "--no-pings",
                "--no-first-run",
                "--no-default-browser-check",
                "--password-store=basic",
                "--use-mock-keychain",
                "--mute-audio",
                // Full rate for a page nobody looks at.
                "--disable-background-timer-throttling",
                "--disable-backgrounding-occluded-windows",
                "--disable-renderer-backgrounding",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Chromium { child, dir, name }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SIGTERM lets the browser process end and reap its helpers; whatever is left of
        // its process group after 3 s gets SIGKILL.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the process this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill(2) on the process group this test created for this Chromium (its id
        // is the browser's PID; Linux reuses no PID while a group of that id has members).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default();
            // No D-Bus in a container: Chromium complains about it on every start.
            let tail: Vec<_> = log
                .lines()
                .filter(|l| !l.contains("dbus") && !l.contains("unexpected operator"))
                .rev()
                .take(30)
                .collect();
            eprintln!("--- chromium {} log (last lines) ---", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pages' reports, by path (`/pub`, `/sub`), from a listener on 127.0.0.1.
struct Reports {
    base: String,
    rx: mpsc::Receiver<(String, Value)>,
    stop: Arc<AtomicBool>,
    seen: HashMap<String, Vec<Value>>,
    next: HashMap<String, usize>,
}

impl Reports {
    fn start() -> Reports {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind report listener");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                if let Some(r) = serve(s, &flag) {
                    if tx.send(r).is_err() {
                        return;
                    }
                }
            }
        });
        Reports {
            base,
            rx,
            stop,
            seen: HashMap::new(),
            next: HashMap::new(),
        }
    }

    /// The first report on `path` not returned or passed over before that satisfies
    /// `pred`; panics on a page error or at the deadline.
    fn wait(&mut self, path: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let list = self.seen.get(path).map_or(&[][..], Vec::as_slice);
            let next = self.next.entry(path.to_owned()).or_default();
            while *next < list.len() {
                *next += 1;
                if pred(&list[*next - 1]) {
                    return list[*next - 1].clone();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let (p, v) = match self.rx.recv_timeout(left) {
                Ok(r) => r,
                Err(_) => panic!(
                    "no report on {path} matched within {within:?}; last reports: {}",
                    self.last()
                ),
            };
            assert_ne!(v["phase"], "error", "page {p} failed: {v}");
            self.seen.entry(p).or_default().push(v);
        }
    }

    fn last(&self) -> String {
        let mut out = String::new();
        for (p, v) in &self.seen {
            out += &format!(
                "\n  {p} ({} reports): {}",
                v.len(),
                v.last().unwrap_or(&Value::Null)
            );
        }
        out
    }
}

/// Read one request; answer "stop" once the test asked for it, "ok" otherwise.
fn serve(mut s: TcpStream, stop: &AtomicBool) -> Option<(String, Value)> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len.min(1 << 20)];
    r.read_exact(&mut body).ok()?;
    let answer = if stop.load(Ordering::SeqCst) {
        "stop"
    } else {
        "ok"
    };
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Headers: *\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    if method != "POST" {
        return None;
    }
    Some((path, serde_json::from_slice(&body).ok()?))
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

#[test]
fn chromium_publishes_with_whip_and_watches_with_whep() {
    if std::env::var("SWITCHYARD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SWITCHYARD_SKIP_BROWSER=1: browser test skipped");
        return;
    }
    let _serial = one_chromium_test_at_a_time();
    let bin = find_chromium().expect(
        "chromium not found: install it (apt-get install -y chromium; scripts/test.sh does), \
         point SWITCHYARD_CHROMIUM at it, or set SWITCHYARD_SKIP_BROWSER=1 to skip this test",
    );
    let started = Instant::now();
    let node = Node::start(1);
    let mut reports = Reports::start();

    let base = reports.base.clone();
    let url = |q: &str, path: &str| format!("{}/?{q}&report={base}{path}", node.api);
    let publisher = Chromium::start(&bin, "publisher", &url("publish=browser/cam", "/pub"));
    let first = reports.wait("/pub", Duration::from_secs(30), |r| {
        r["state"] == "connected" && num(r, "framesEncoded") > 0.0 && num(r, "bytesSent") > 0.0
    });
    eprintln!("publisher connected: {first}");

    let watcher = Chromium::start(&bin, "watcher", &url("watch=browser/cam", "/sub"));
    // The publisher page also sends "tick <n>" once a second on its data channel, which the
    // node relays to the watcher on a channel it opens towards it.
    let got = reports.wait("/sub", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") > 100.0
            && num(r, "audioPacketsReceived") > 0.0
            && num(r, "chatReceived") > 2.0
    });
    eprintln!("watcher: {got}");
    assert!(
        got["chatLast"]
            .as_str()
            .is_some_and(|m| m.starts_with("tick ")),
        "data channel message: {got}"
    );
    let streams = node.get("/v1/streams").json();
    assert_eq!(
        streams,
        serde_json::json!({"streams": [{"stream": "browser/cam", "subscribers": 1}]})
    );

    // Five more seconds of publisher samples for its send bitrate.
    let from = reports.seen["/pub"]
        .last()
        .cloned()
        .expect("publisher report");
    let to = reports.wait("/pub", Duration::from_secs(15), |r| {
        num(r, "t") - num(&from, "t") >= 5000.0
    });
    let kbps =
        (num(&to, "bytesSent") - num(&from, "bytesSent")) * 8.0 / (num(&to, "t") - num(&from, "t"));
    eprintln!(
        "publisher send bitrate {kbps:.0} kbit/s over {:.1} s (available outgoing {} kbit/s)",
        (num(&to, "t") - num(&from, "t")) / 1000.0,
        to["availableOutgoingKbps"]
    );
    let series: Vec<String> = reports.seen["/pub"]
        .iter()
        .map(|r| format!("{}/{}", r["sendKbps"], r["availableOutgoingKbps"]))
        .collect();
    eprintln!(
        "publisher send/available kbit/s, 1 s apart: {}",
        series.join(" ")
    );
    // With the node's transport-cc feedback Chromium's estimate grows past its 300 kbit/s
    // start (without feedback it falls to ~90): the issue's bar is 500 kbit/s.
    assert!(kbps > 500.0, "publisher sends only {kbps:.0} kbit/s");

    // Hang up both pages: each DELETEs its session.
    reports.stop.store(true, Ordering::SeqCst);
    for path in ["/sub", "/pub"] {
        let closed = reports.wait(path, Duration::from_secs(15), |r| r["phase"] == "closed");
        assert_eq!(closed["deleteStatus"], 200, "{path}: {closed}");
    }
    drop(watcher);
    drop(publisher);

    let deadline = Instant::now() + Duration::from_secs(10);
    while node.metric_sum("switchyard_sessions{") != 0 {
        assert!(Instant::now() < deadline, "sessions left after DELETE");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        node.get("/v1/streams").json()["streams"],
        serde_json::json!([])
    );
    eprintln!("browser test took {:.1} s", started.elapsed().as_secs_f64());
}

/// No browser needed: the demo page is served and `/v1/streams` lists streams with a
/// publisher (plain ones too) and their subscriber counts.
#[test]
fn demo_page_and_stream_list() {
    let node = Node::start(1);
    let page = node.get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .headers
        .to_ascii_lowercase()
        .contains("content-type: text/html"));
    assert!(page.body.contains("RTCPeerConnection") && page.body.contains("/v1/streams"));

    assert_eq!(
        node.get("/v1/streams").json(),
        serde_json::json!({"streams": []})
    );
    let publisher = r#"{"role":"publisher","stream":"plain/cam","remote":"127.0.0.1:40000"}"#;
    assert_eq!(node.post("/v1/sessions", publisher).status, 201);
    // A subscriber alone does not make a stream live.
    let early = r#"{"role":"subscriber","stream":"other/cam","remote":"127.0.0.1:40003"}"#;
    assert_eq!(node.post("/v1/sessions", early).status, 201);
    for port in [40001, 40002] {
        let sub =
            format!(r#"{{"role":"subscriber","stream":"plain/cam","remote":"127.0.0.1:{port}"}}"#);
        assert_eq!(node.post("/v1/sessions", &sub).status, 201);
    }
    assert_eq!(
        node.get("/v1/streams").json(),
        serde_json::json!({"streams": [{"stream": "plain/cam", "subscribers": 2}]})
    );
}

/// One request with an SDP body (`common::http` sends JSON).
fn post_sdp(node: &Node, path: &str, sdp: &str) -> common::Http {
    let mut s = TcpStream::connect(&node.http_addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{sdp}",
        node.http_addr,
        sdp.len()
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (headers, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    common::Http {
        status: headers
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        headers: headers.to_owned(),
        body: body.to_owned(),
    }
}

fn location(r: &common::Http) -> String {
    r.headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .expect("Location header")
        .to_owned()
}

/// No browser needed: WHIP then WHEP signaling with Chrome's offers is accepted by both
/// planes (the data plane once refused every WHEP subscriber: it wanted a remote address
/// that only ICE provides), and DELETE on the Locations leaves no session.
#[test]
fn whep_subscriber_of_a_whip_publisher_is_accepted() {
    let node = Node::start(1);
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/controlplane/src/sdp/fixtures");
    let offer =
        |name: &str| std::fs::read_to_string(format!("{fixtures}/{name}")).expect("fixture");
    let publish = post_sdp(&node, "/whip/sig/cam", &offer("chrome_publish.sdp"));
    assert_eq!(publish.status, 201, "{}", publish.body);
    let subscribe = post_sdp(&node, "/whep/sig/cam", &offer("chrome_subscribe.sdp"));
    assert_eq!(subscribe.status, 201, "{}", subscribe.body);
    assert!(subscribe.body.starts_with("v=0"), "{}", subscribe.body);
    assert_eq!(
        node.get("/v1/streams").json(),
        serde_json::json!({"streams": [{"stream": "sig/cam", "subscribers": 1}]})
    );
    for r in [&subscribe, &publish] {
        assert_eq!(node.delete(&location(r)).status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.metric_sum("switchyard_sessions{") != 0 {
        assert!(Instant::now() < deadline, "sessions left after DELETE");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue #5: Chromium publishes on node A (WHIP) and a second Chromium plays the stream from
/// node C (WHEP on C's own demo page): C has no publisher, finds A in the cluster store and
/// relays the stream to itself (the automatic cascade). Needs Redis and Chromium.
#[test]
fn chromium_on_c_plays_a_stream_published_on_a_through_the_cascade() {
    if std::env::var("SWITCHYARD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SWITCHYARD_SKIP_BROWSER=1: browser test skipped");
        return;
    }
    if !common::Redis::installed() {
        eprintln!("\n!!!!! SKIPPED cascade browser test: redis-server is not installed !!!!!\n");
        return;
    }
    let _serial = one_chromium_test_at_a_time();
    let bin = find_chromium().expect(
        "chromium not found: install it (apt-get install -y chromium; scripts/test.sh does), \
         point SWITCHYARD_CHROMIUM at it, or set SWITCHYARD_SKIP_BROWSER=1 to skip this test",
    );
    let dir = std::env::temp_dir().join(format!("swy-browser-cascade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let redis = common::Redis::start(&dir, common::free_tcp_port(), false);
    let config = dir.join("switchyard.toml");
    std::fs::write(&config, "[cluster]\nhealth_interval_ms = 300\n").expect("config");
    let extra = || -> Vec<std::ffi::OsString> {
        vec![
            "--config".into(),
            config.clone().into(),
            "--redis".into(),
            redis.url().into(),
        ]
    };
    let a = Node::spawn_named("a", 1, extra());
    let c = Node::spawn_named("c", 1, extra());
    a.wait_healthy();
    c.wait_healthy();
    let mut reports = Reports::start();
    let base = reports.base.clone();
    let publisher = Chromium::start(
        &bin,
        "publisher",
        &format!("{}/?publish=cascade/cam&report={base}/pub", a.api),
    );
    reports.wait("/pub", Duration::from_secs(30), |r| {
        r["state"] == "connected" && num(r, "framesEncoded") > 0.0
    });
    // C learns of A's stream from the store within a second or two.
    let deadline = Instant::now() + Duration::from_secs(10);
    let registered = |n: &Node| {
        n.get("/v1/nodes").json()["nodes"]
            .as_array()
            .is_some_and(|l| l.len() == 2)
    };
    while !registered(&c) {
        assert!(Instant::now() < deadline, "nodes did not register");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let watcher = Chromium::start(
        &bin,
        "watcher",
        &format!("{}/?watch=cascade/cam&report={base}/sub", c.api),
    );
    let got = reports.wait("/sub", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") > 100.0 && num(r, "audioPacketsReceived") > 0.0
    });
    eprintln!("watcher on c: {got}");
    let relays = c.get("/v1/relays").json();
    assert_eq!(relays["incoming"][0]["sourceNode"], "a", "{relays}");
    assert_eq!(relays["incoming"][0]["cascade"], true, "{relays}");
    reports.stop.store(true, Ordering::SeqCst);
    for path in ["/sub", "/pub"] {
        reports.wait(path, Duration::from_secs(15), |r| r["phase"] == "closed");
    }
    drop(watcher);
    drop(publisher);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
