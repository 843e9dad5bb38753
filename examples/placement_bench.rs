//! Placement benchmark (issue #4): rooms placed per second and the latency of
//! `POST /v1/rooms` with 1 and with 2 control planes sharing one `redis-server`.
//!
//! `cargo build --release --bin switchyard && cargo run --release --example placement_bench
//! -- [SECONDS] [THREADS]` (defaults 10 s, 8 threads). The control planes are real
//! `switchyard controlplane` processes (binary: `SWITCHYARD_BIN`, else `switchyard` next to
//! this example's directory) with no data plane: the rooms go to two registered stand-in
//! nodes whose `/health` answers 200 and whose capacity never runs out.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request with `Connection: close`; returns the status.
fn request(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

/// A stand-in node answering 200 to everything (its health checks).
fn fake_node() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    url
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHYARD_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|examples| examples.parent())
        .expect("target dir")
        .join("switchyard")
}

fn run(planes: usize, seconds: u64, threads: usize) {
    let dir = std::env::temp_dir().join(format!("swy-placement-{}-{planes}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let redis_port = free_port();
    let _redis = Kill(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)"),
    );
    wait_listening(&format!("127.0.0.1:{redis_port}"));
    let redis = format!("redis://127.0.0.1:{redis_port}/");

    let mut addrs = Vec::new();
    let mut children = Vec::new();
    for i in 0..planes {
        let addr = format!("127.0.0.1:{}", free_port());
        let shm = dir.join(format!("cp{i}"));
        std::fs::create_dir_all(&shm).expect("shm");
        children.push(Kill(
            Command::new(binary())
                .arg("controlplane")
                .args(["--node-id", &format!("cp{i}")])
                .arg("--shm-dir")
                .arg(&shm)
                .args(["--http-listen", &addr])
                .args(["--media-port", &free_port().to_string()])
                .args(["--workers", "1", "--pin", "false", "--redis", &redis])
                .env("RUST_LOG", "error")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn controlplane"),
        ));
        wait_listening(&addr);
        addrs.push(addr);
    }
    for n in 0..2 {
        let body = format!(
            r#"{{"nodeId": "bench-{n}", "url": "{}", "mediaAddress": "192.0.2.{n}", "workers": 1024}}"#,
            fake_node()
        );
        let (status, text) =
            request(&addrs[0], "POST", "/v1/nodes/register", &body).expect("register");
        assert_eq!(status, 200, "{text}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let addr = addrs[t % addrs.len()].clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let path = format!("/v1/rooms/p{planes}-t{t}-{i}");
                    i += 1;
                    match request(&addr, "POST", &path, r#"{"maxPeerCount": 2}"#) {
                        Ok((201, _)) => {
                            ok += 1;
                            hist.record(t0.elapsed().as_micros() as u64)
                                .expect("record");
                        }
                        Ok((status, body)) => {
                            failed += 1;
                            if failed <= 3 {
                                eprintln!("POST {path}: {status} {body}");
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            if failed <= 3 {
                                eprintln!("POST {path}: {e}");
                            }
                        }
                    }
                }
                (hist, ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let (mut ok, mut failed) = (0u64, 0u64);
    for w in workers {
        let (h, o, f) = w.join().expect("thread");
        hist.add(h).expect("merge");
        ok += o;
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Every placed room is in the store exactly once.
    let (status, body) = request(&addrs[0], "GET", "/v1/rooms", "").expect("list");
    assert_eq!(status, 200);
    let listed = serde_json::from_str::<serde_json::Value>(&body).expect("json")["rooms"]
        .as_array()
        .map_or(0, Vec::len);
    println!(
        "control planes: {planes}  threads: {threads}  rooms placed: {ok} in {elapsed:.1} s = {:.0} rooms/s  failed: {failed}  listed: {listed}  POST /v1/rooms latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ok as f64 / elapsed,
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
    );
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds = args.next().map_or(10, |s| s.parse().expect("SECONDS"));
    let threads = args.next().map_or(8, |s| s.parse().expect("THREADS"));
    for planes in [1, 2] {
        run(planes, seconds, threads);
    }
}
