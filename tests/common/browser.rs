//! Headless Chromium for integration tests: one browser per page, with the flags that keep it
//! working and its traffic on this machine (../shared/BROWSER-TESTS.md), on loopback or inside
//! a network namespace; and the listener the demo page POSTs its getStats summaries to.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The Chromium tests run one at a time: each drives two browsers with fake 640x480 video,
/// and two such tests side by side on a small machine starve each other's encoders and
/// WebRTC timers (the first page then reports nothing within its deadline).
pub fn one_chromium_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Chromium and the lock that runs its tests one at a time; None (said loudly) with
/// `SWITCHYARD_SKIP_BROWSER=1`. A missing browser fails the test.
pub fn chromium() -> Option<(PathBuf, std::sync::MutexGuard<'static, ()>)> {
    if std::env::var("SWITCHYARD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SWITCHYARD_SKIP_BROWSER=1: browser test skipped");
        return None;
    }
    let serial = one_chromium_test_at_a_time();
    let bin = find_chromium().expect(
        "chromium not found: install it (apt-get install -y chromium; scripts/test.sh does), \
         point SWITCHYARD_CHROMIUM at it, or set SWITCHYARD_SKIP_BROWSER=1 to skip this test",
    );
    Some((bin, serial))
}

pub fn find_chromium() -> Option<PathBuf> {
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
pub struct Chromium {
    child: Child,
    dir: PathBuf,
    name: &'static str,
}

impl Chromium {
    /// A page on this host, against a node on loopback (so with
    /// `--allow-loopback-in-peer-connection`).
    pub fn start(bin: &PathBuf, name: &'static str, url: &str) -> Chromium {
        Chromium::launch(bin, name, url, None, &[])
    }

    /// A page in network namespace `ns`, as a browser on another host: no loopback flag,
    /// so it checks only from its real addresses. `addresses` are the IP literals the page
    /// talks to (they must be let through the resolver rule that stops every name lookup).
    pub fn start_in_netns(
        bin: &PathBuf,
        name: &'static str,
        url: &str,
        ns: &str,
        addresses: &[&str],
    ) -> Chromium {
        Chromium::launch(bin, name, url, Some(ns), addresses)
    }

    fn launch(
        bin: &PathBuf,
        name: &'static str,
        url: &str,
        ns: Option<&str>,
        addresses: &[&str],
    ) -> Chromium {
        let dir = std::env::temp_dir().join(format!("swy-chromium-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("chromium dir");
        let log = std::fs::File::create(dir.join("chromium.log")).expect("chromium log");
        let mut rules =
            "MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1 , EXCLUDE [::1]".to_owned();
        for a in addresses {
            rules += &format!(" , EXCLUDE {a}");
        }
        // `ip netns exec` execs the browser: the child's PID is still Chromium's.
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                // A camera needs a secure context; the page comes over plain HTTP from a
                // private address, which only localhost gets for free.
                let origin: String = url.split('/').take(3).collect::<Vec<_>>().join("/");
                c.arg(format!(
                    "--unsafely-treat-insecure-origin-as-secure={origin}"
                ));
                c
            }
            None => {
                let mut c = Command::new(bin);
                c.arg("--allow-loopback-in-peer-connection");
                c
            }
        };
        let child = cmd
            .arg(format!("--host-resolver-rules={rules}"))
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--use-fake-device-for-media-stream=fps=30",
                "--use-fake-ui-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,DialMediaRouteProvider",
                // Nothing leaves the machine: no name lookups (the resolver rule above), no
                // background services.
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

/// The pages' reports, by path (`/pub`, `/sub`), from a listener on 127.0.0.1 (or the address
/// [`Reports::start_on`] names).
pub struct Reports {
    pub base: String,
    pub rx: mpsc::Receiver<(String, Value)>,
    pub stop: Arc<AtomicBool>,
    pub seen: HashMap<String, Vec<Value>>,
    next: HashMap<String, usize>,
}

impl Reports {
    pub fn start() -> Reports {
        Reports::start_on("127.0.0.1")
    }

    /// Listen on `ip` (a bridge address pages in network namespaces can reach).
    pub fn start_on(ip: &str) -> Reports {
        let listener = TcpListener::bind((ip, 0)).expect("bind report listener");
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
    pub fn wait(&mut self, path: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
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

    pub fn last(&self) -> String {
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

pub fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}
