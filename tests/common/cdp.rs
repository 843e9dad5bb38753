//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! the browser reads commands on fd 3 and writes answers and events on fd 4, each message
//! a JSON object ended by a NUL byte): load a page, evaluate an expression in it, take a
//! screenshot, and collect what the page reported as errors (uncaught exceptions,
//! `console.error`, failed loads and other error log entries).
//!
//! No port is opened and nothing but the page is loaded; name lookups fail under the same
//! resolver rule as tests/common/browser.rs (../shared/BROWSER-TESTS.md).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One Chromium with one page, attached for commands.
pub struct Page {
    child: Child,
    to_browser: std::fs::File,
    from_browser: mpsc::Receiver<Value>,
    session: String,
    next_id: u64,
    /// Every event received so far, in order.
    pub events: Vec<Value>,
    dir: PathBuf,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two new descriptors into the array on success.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Page {
    /// Starts Chromium (`bin`) with a blank page of `width` × `height` CSS pixels.
    pub fn launch(bin: &Path, width: u32, height: u32) -> Page {
        let dir = std::env::temp_dir().join(format!(
            "swy-cdp-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("profile dir");
        let (cmd_read, cmd_write) = pipe();
        let (out_read, out_write) = pipe();
        let (r, w) = (cmd_read.as_raw_fd(), out_write.as_raw_fd());
        let log = std::fs::File::create(dir.join("chromium.log")).expect("log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
            "--no-proxy-server",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-domain-reliability",
            "--disable-breakpad",
            "--no-pings",
            "--no-first-run",
            "--no-default-browser-check",
            "--password-store=basic",
            "--use-mock-keychain",
            "--mute-audio",
        ])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) on
        // descriptors this process owns. dup2 onto 3 and 4 clears their close-on-exec flag;
        // moving `r` out of the way first keeps the second dup2 from clobbering it.
        unsafe {
            cmd.pre_exec(move || {
                let r_high = libc::fcntl(r, libc::F_DUPFD_CLOEXEC, 10);
                let w_high = libc::fcntl(w, libc::F_DUPFD_CLOEXEC, 10);
                if r_high < 0
                    || w_high < 0
                    || libc::dup2(r_high, 3) < 0
                    || libc::dup2(w_high, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        drop((cmd_read, out_write));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(std::fs::File::from(out_read));
            let mut buf = Vec::new();
            while reader.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                buf.clear();
            }
        });
        let mut page = Page {
            child,
            to_browser: std::fs::File::from(cmd_write),
            from_browser: rx,
            session: String::new(),
            next_id: 0,
            events: Vec::new(),
            dir,
        };
        // The blank page the browser opened: attach to it (flat session mode).
        let deadline = Instant::now() + Duration::from_secs(20);
        let target = loop {
            let targets = page.call(None, "Target.getTargets", json!({}));
            if let Some(t) = targets["targetInfos"]
                .as_array()
                .and_then(|l| l.iter().find(|t| t["type"] == "page"))
            {
                break t["targetId"].clone();
            }
            assert!(Instant::now() < deadline, "no page target: {targets}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let attached = page.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        page.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.command(domain, json!({}));
        }
        page
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("{method}: the browser is gone ({e})"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    /// A command to the page.
    pub fn command(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// Loads `url` and waits for its load event.
    pub fn navigate(&mut self, url: &str) {
        let seen = self.events.len();
        self.command("Page.navigate", json!({ "url": url }));
        self.wait_event(seen, "Page.loadEventFired", Duration::from_secs(30));
    }

    fn wait_event(&mut self, from: usize, method: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.events[from..].iter().any(|e| e["method"] == method) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(left) {
                Ok(v) => self.events.push(v),
                Err(_) => panic!("no {method} within {within:?}"),
            }
        }
    }

    /// The value of a JavaScript expression in the page (JSON-serialisable values only).
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.command(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// A PNG of the whole page (beyond the window), written to `path`.
    pub fn screenshot(&mut self, path: &Path) -> usize {
        use base64::Engine as _;
        let r = self.command(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64");
        std::fs::write(path, &png).expect("write screenshot");
        png.len()
    }

    /// What the page reported as errors: uncaught exceptions, `console.error`/`assert`, and
    /// error entries of the browser's log (a failed load, a blocked resource, ...).
    pub fn errors(&mut self) -> Vec<String> {
        // Let events already on their way arrive.
        while let Ok(v) = self.from_browser.recv_timeout(Duration::from_millis(200)) {
            self.events.push(v);
        }
        self.events
            .iter()
            .filter_map(|e| match e["method"].as_str()? {
                "Runtime.exceptionThrown" => Some(e["params"]["exceptionDetails"].to_string()),
                "Runtime.consoleAPICalled"
                    if matches!(e["params"]["type"].as_str(), Some("error" | "assert")) =>
                {
                    Some(e["params"]["args"].to_string())
                }
                "Log.entryAdded" if e["params"]["entry"]["level"] == "error" => {
                    Some(e["params"]["entry"].to_string())
                }
                _ => None,
            })
            .collect()
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the browser this test started, then on its process group (its
        // id is the browser's PID), so renderer and helpers go too.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default();
            eprintln!("--- chromium log (last lines) ---");
            for l in log.lines().rev().take(20).collect::<Vec<_>>().iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
