//! aiortc (Python, from PyPI) as an independent WebRTC peer: its WHIP and WHEP clients in
//! `tests/aiortc/` run for a fixed time, end their session with a DELETE and print a JSON
//! summary. `tests/aiortc/setup.sh` installs the pinned aiortc into `target/aiortc-venv` on
//! first use. `AIORTC_VERBOSE=1` shows the clients' logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The venv's python, installing aiortc on first use; None when python3 is missing (a
/// failing install fails the test).
pub fn python() -> Option<PathBuf> {
    if Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        return None;
    }
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join("tests/aiortc/setup.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/aiortc/setup.sh");
    assert!(out.status.success(), "tests/aiortc/setup.sh failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let py = stdout
        .lines()
        .last()
        .expect("setup.sh prints the python path");
    Some(Path::new(ROOT).join(py.trim()))
}

/// Start `script` (`whip_client.py` or `whep_client.py`) against `url` for `seconds`.
pub fn client(py: &Path, script: &str, url: &str, seconds: u32, extra: &[&str]) -> Child {
    let mut c = Command::new(py);
    c.arg(Path::new(ROOT).join("tests/aiortc").join(script))
        .arg(url)
        .args(["--seconds", &seconds.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if std::env::var_os("AIORTC_VERBOSE").is_some() {
        c.arg("--verbose");
    }
    c.spawn().unwrap_or_else(|e| panic!("spawn {script}: {e}"))
}

/// Wait for a client and parse the JSON summary it prints last.
pub fn summary(child: Child, what: &str) -> serde_json::Value {
    let out = child.wait_with_output().expect("wait for client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{what}: no JSON summary ({e}); stdout: {stdout:?}"));
    assert!(out.status.success(), "{what} failed: {v}");
    v
}

/// `GET url` (a stream's `/fetch`) with `tests/aiortc/fetch_group.py`: the status, the
/// `X-Switchyard-*` headers and what FFmpeg's decoders made of the file, as JSON.
pub fn fetch_group(py: &Path, url: &str) -> serde_json::Value {
    let out = Command::new(py)
        .arg(Path::new(ROOT).join("tests/aiortc/fetch_group.py"))
        .arg(url)
        .stderr(Stdio::inherit())
        .output()
        .expect("run fetch_group.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fetch_group.py failed: {stdout}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("fetch_group.py: no JSON ({e}): {stdout:?}"))
}
