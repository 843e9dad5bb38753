//! Errors a new user meets at start (issue 14, item 1): each is printed once, on one line,
//! says what to do, and exits with status 2 (configuration or bind error), and `up` gives up
//! on a child that fails that way instead of restarting it forever.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::BIN;

/// Run the binary with `args`, at most `within`; its output.
fn run(args: &[&str], within: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("SWITCHYARD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchyard");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "switchyard {args:?} still running after {within:?} (a restart loop?): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// The lines the binary printed as its error (`switchyard: ...`), not the log.
fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("switchyard: "))
        .map(str::to_owned)
        .collect()
}

fn assert_one_line_exit_2(out: &Output, want: &[&str]) -> String {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let lines = error_lines(out);
    assert_eq!(lines.len(), 1, "exactly one error line: {lines:#?}");
    let line = lines[0].clone();
    for w in want {
        assert!(line.contains(w), "{line:?} should say {w:?}");
    }
    line
}

fn tmp(name: &str, text: &str) -> String {
    let p = std::env::temp_dir().join(format!("swy-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn a_missing_config_file_is_one_line_and_exit_2() {
    let out = run(
        &["up", "--config", "/nonexistent/switchyard.toml"],
        Duration::from_secs(10),
    );
    let line = assert_one_line_exit_2(&out, &["/nonexistent/switchyard.toml", "--config"]);
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "the cause once: {line}"
    );
}

#[test]
fn bad_toml_says_line_and_column_once() {
    let path = tmp("bad.toml", "[media]\nport = \"ten thousand\"\n");
    for args in [
        vec!["dataplane", "--config", &path],
        // The old place of --config, before the subcommand (systemd units of earlier releases).
        vec!["--config", &path, "controlplane"],
    ] {
        let out = run(&args, Duration::from_secs(10));
        let line = assert_one_line_exit_2(&out, &["line 2, column 8", "expected u16"]);
        assert_eq!(line.matches("expected u16").count(), 1, "{line}");
    }
}

#[test]
fn overlapping_port_ranges_are_shown() {
    let out = run(
        &[
            "config",
            "--media-port",
            "10000",
            "--relay-port",
            "10002",
            "--workers",
            "4",
        ],
        Duration::from_secs(10),
    );
    assert_one_line_exit_2(&out, &["10000..=10003", "10002..=10005"]);
}

#[test]
fn up_does_not_restart_a_plane_whose_port_is_taken() {
    // The media port taken: the data plane exits 2 and `up` stops the node with 2.
    let udp = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let port = udp.local_addr().expect("addr").port().to_string();
    let relay = common::free_udp_ports(1).to_string();
    let http = format!("127.0.0.1:{}", common::free_tcp_port());
    let shm = std::env::temp_dir().join(format!("swy-cli-shm-{}", std::process::id()));
    std::fs::create_dir_all(&shm).expect("shm");
    let shm = shm.display().to_string();
    let base = |media: &str, http: &str| -> Vec<String> {
        [
            "up",
            "--node-id",
            "cli-errors",
            "--shm-dir",
            &shm,
            "--workers",
            "1",
            "--pin",
            "false",
            "--media-port",
            media,
            "--relay-port",
            &relay,
            "--http-listen",
            http,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args = base(&port, &http);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args, Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("started role=\"dataplane\"").count(),
        1,
        "no restart: {log}"
    );
    assert!(
        log.contains("Address already in use") && log.contains("not restarted"),
        "{log}"
    );
    drop(udp);

    // The HTTP port taken: the control plane exits 2, and so does `up`.
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = tcp.local_addr().expect("addr").to_string();
    let media = common::free_udp_ports(1).to_string();
    let args = base(&media, &taken);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args, Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("started role=\"controlplane\"").count(),
        1,
        "no restart: {log}"
    );
    let _ = std::fs::remove_dir_all(&shm);
}

#[test]
fn subcommands_list_only_the_flags_they_take() {
    let out = run(&["token", "sign", "--help"], Duration::from_secs(10));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--expires"), "{help}");
    for other in ["--media-port", "--http-listen", "--redis", "--workers"] {
        assert!(!help.contains(other), "token sign lists {other}: {help}");
    }
    let out = run(&["up", "--help"], Duration::from_secs(10));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("[default: 127.0.0.1:8080]") && help.contains("[default: 10000]"),
        "defaults shown: {help}"
    );
}
