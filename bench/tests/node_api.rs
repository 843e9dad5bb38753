//! The node path up to the media: health, session creation, error mapping and cleanup,
//! against a fake control API on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use switchyard_bench::crypto::Profile;
use switchyard_bench::{run, LoadSpec, Target};

/// Reads one request: (request line, body).
fn read_request(s: &mut TcpStream) -> (String, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.trim().parse().expect("length"));
            if raw.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).into_owned();
                return (head.lines().next().unwrap_or_default().to_owned(), body);
            }
        }
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "client closed mid-request");
        raw.extend_from_slice(&buf[..n]);
    }
}

fn respond(s: &mut TcpStream, status: &str, body: &str) {
    let r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(r.as_bytes()).expect("write");
}

#[test]
fn sessions_are_created_then_deleted_when_setup_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let api = format!("http://{}", listener.local_addr().expect("addr"));
    let server = std::thread::spawn(move || {
        let mut log = Vec::new();
        for conn in listener.incoming() {
            let mut s = conn.expect("accept");
            let (line, body) = read_request(&mut s);
            log.push((line.clone(), body));
            match line.split(' ').take(2).collect::<Vec<_>>()[..] {
                ["GET", "/health"] => respond(
                    &mut s,
                    "200 OK",
                    &format!(
                        r#"{{"status":"ok","dataplanePid":{},"workers":1}}"#,
                        std::process::id()
                    ),
                ),
                ["POST", "/v1/sessions"] if log.len() == 2 => respond(
                    &mut s,
                    "201 Created",
                    r#"{"id":1,"worker":0,"mediaAddress":"127.0.0.1:9","stream":"bench/s0",
                        "role":"publisher","profile":"AEAD_AES_128_GCM","remote":"127.0.0.1:1",
                        "remoteKey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw==",
                        "localKey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw==","ssrcs":[1,2,3,4]}"#,
                ),
                ["POST", "/v1/sessions"] => {
                    respond(&mut s, "409 Conflict", r#"{"error":"stream busy"}"#)
                }
                ["DELETE", _] => {
                    respond(&mut s, "204 No Content", "");
                    return log;
                }
                ["GET", "/quit"] => {
                    respond(&mut s, "200 OK", "{}");
                    return log;
                }
                _ => respond(&mut s, "404 Not Found", r#"{"error":"no route"}"#),
            }
        }
        log
    });
    let spec = LoadSpec {
        subscribers: 2,
        duration: Duration::from_secs(1),
        bench_cores: Vec::new(),
        ..LoadSpec::default()
    };
    let target = Target::Node {
        api: api.clone(),
        profile: Profile::AeadAes128Gcm,
        cpu_pid: None,
        worker: None,
    };
    let err = run(&spec, &target).expect_err("setup must fail");
    // The second POST's 409 ends the setup.
    assert!(err.to_string().contains("stream busy"), "{err}");
    // Unblocks the server if the bench never sent the DELETE (then the asserts below fail);
    // after a DELETE the listener is gone and this fails harmlessly.
    let _ = switchyard_bench::http::request("GET", &format!("{api}/quit"), None);
    let log = server.join().expect("server");
    assert_eq!(log[0].0, "GET /health HTTP/1.1");
    assert_eq!(log[1].0, "POST /v1/sessions HTTP/1.1");
    let req: serde_json::Value = serde_json::from_str(&log[1].1).expect("json body");
    assert_eq!(req["role"], "publisher");
    assert_eq!(req["stream"], "bench/s0");
    assert_eq!(req["profile"], "AEAD_AES_128_GCM");
    assert!(req["remote"]
        .as_str()
        .expect("remote")
        .starts_with("127.0.0.1:"));
    assert_eq!(
        log.last().expect("delete").0,
        "DELETE /v1/sessions/1 HTTP/1.1"
    );
}
