//! The admin CLI (issue 14 item 4) against a real node with auth on: every list's table and
//! JSON output, `session kick` ending a session for real, `drain` stopping placements and
//! `drain --shutdown` stopping the node, `token verify` taking what the node takes and
//! refusing what it refuses; errors one line, exit status 2 for what the command was given,
//! 1 with the API's own message when the API refuses.
//!
//! Over HTTPS too (`--ca-file`, `--insecure-tls`).
//!
//! The node publishes a plain SRTP stream (a publisher fed real packets from this test and
//! a subscriber) and a WHIP publisher (a recorded Chrome offer that never connects, so its
//! session waits in ICE `checking`).

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{cli, http_with, Http, Node, BIN};
use serde_json::Value;
use switchyard_controlplane::auth::{self, Claims};
use switchyard_shared::srtp::{Context, Profile, MAX_OVERHEAD};

const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");

/// The binary with `args` and `env` (nothing of the caller's SWITCHYARD_* environment),
/// at most 20 s.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHYARD_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchyard");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("switchyard {args:?} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Its stdout, after checking it succeeded and printed nothing on stderr.
fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}: {stderr}");
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

/// Its error: exit status `code`, nothing on stdout, one line on stderr saying each of `want`.
fn failed(out: &Output, code: i32, want: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{out:?}: {stderr}");
    assert!(out.stdout.is_empty(), "no output: {out:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    for w in want {
        assert!(lines[0].contains(w), "{:?} should say {w:?}", lines[0]);
    }
    lines[0].to_owned()
}

/// A table's rows as column → cell, columns found where the header has two spaces before
/// a name; every cell must start at its column (the columns are aligned).
fn table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    let b = header.as_bytes();
    let mut starts = vec![0];
    for i in 2..b.len() {
        if b[i] != b' ' && b[i - 1] == b' ' && b[i - 2] == b' ' {
            starts.push(i);
        }
    }
    let end = |k: usize, len: usize| starts.get(k + 1).copied().unwrap_or(len).min(len);
    let names: Vec<String> = (0..starts.len())
        .map(|k| header[starts[k]..end(k, header.len())].trim().to_owned())
        .collect();
    lines
        .map(|l| {
            assert_eq!(l, l.trim_end(), "no trailing spaces");
            names
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    let s = starts[k].min(l.len());
                    if k > 0 && s < l.len() {
                        assert_eq!(&l[s - 2..s], "  ", "column {name} aligned in {l:?}");
                    }
                    (name.clone(), l[s..end(k, l.len())].trim().to_owned())
                })
                .collect()
        })
        .collect()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("JSON output")
}

struct Secured {
    node: Node,
    key: String,
    token: String,
    config: std::path::PathBuf,
}

impl Drop for Secured {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

impl Secured {
    fn start(test: &str) -> Secured {
        let key = cli(&["token", "generate"]);
        let config =
            std::env::temp_dir().join(format!("swy-admin-{test}-{}.toml", std::process::id()));
        std::fs::write(
            &config,
            format!(
                "[auth]\nkey = \"{key}\"\n[cluster]\nhealth_interval_ms = 300\n\
                 shutdown_grace_ms = 5000\n"
            ),
        )
        .expect("config");
        let node = Node::start_with_args(1, &["--config", config.to_str().expect("path")]);
        let token = cli(&["token", "sign", "--key", &key, "--cluster"]);
        let s = Secured {
            node,
            key,
            token,
            config,
        };
        // The control plane registers its node in its first health round, just after start.
        wait("the node registered and healthy", || {
            s.get("/v1/nodes")["nodes"][0]["healthy"] == true
        });
        s
    }

    /// The CLI against this node with the cluster token.
    fn admin(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--api", &self.node.api, "--token", &self.token]);
        run(&all, &[])
    }

    fn call(&self, method: &str, path: &str, ctype: &str, body: Option<&str>) -> Http {
        let bearer = format!("Bearer {}", self.token);
        http_with(
            &self.node.http_addr,
            method,
            path,
            ctype,
            &[("Authorization", &bearer)],
            body.map(str::as_bytes),
        )
        .expect("HTTP")
    }

    fn get(&self, path: &str) -> Value {
        let r = self.call("GET", path, "application/json", None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.json()
    }
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `count` SRTP packets of SSRC 1111 protected with 28 × 0x11 to `media`.
fn send_media(media: std::net::SocketAddr, count: u16) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("publisher socket");
    let mut tx = Context::new(Profile::AeadAes128Gcm, &[0x11; 28]).expect("context");
    for seq in 1..=count {
        let mut b = vec![0x80, 96];
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
        b.extend_from_slice(&1111u32.to_be_bytes());
        b.extend_from_slice(&[0x5a; 200]);
        let n = b.len();
        b.resize(n + MAX_OVERHEAD, 0);
        let n = tx.protect_rtp(&mut b, n).expect("protect");
        socket.send_to(&b[..n], media).expect("send");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_admin_cli_lists_kicks_and_drains() {
    let mut s = Secured::start("lists");
    let api = s.node.api.clone();

    // Refusals: the API's own reason, one line, exit status 1.
    failed(
        &run(&["nodes", "list", "--api", &api], &[]),
        1,
        &["GET /v1/nodes", "401", "missing bearer token", "--token"],
    );
    failed(
        &run(
            &["nodes", "list", "--api", &api, "--token", "nonsense"],
            &[],
        ),
        1,
        &["401", "malformed token"],
    );
    let user = cli(&["token", "sign", "--key", &s.key, "--publish", "room1"]);
    failed(
        &run(&["sessions", "list", "--api", &api, "--token", &user], &[]),
        1,
        &["403", "this endpoint needs a cluster token"],
    );
    // What the command was given: exit status 2.
    failed(
        &run(&["nodes", "list", "--api", "ftp://x"], &[]),
        2,
        &["--api", "ftp://x"],
    );
    failed(
        &run(&["session", "kick", "seven", "--api", &api], &[]),
        2,
        &["seven"],
    );
    failed(
        &run(&["nodes", "list", "--api", "http://127.0.0.1:1"], &[]),
        1,
        &["cannot reach the API at http://127.0.0.1:1"],
    );

    // Something to list: a plain SRTP publisher fed real packets, its subscriber, a WHIP
    // publisher, a room.
    let viewer = UdpSocket::bind("127.0.0.1:0").expect("viewer socket");
    let r = s.call(
        "POST",
        "/v1/sessions",
        "application/json",
        Some(
            r#"{"role":"publisher","stream":"room1/cam","ssrcs":[1111],
                "remoteKey":"EREREREREREREREREREREREREREREREREREREQ=="}"#,
        ),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let publisher = r.json()["id"].as_u64().expect("id");
    let r = s.call(
        "POST",
        "/v1/sessions",
        "application/json",
        Some(&format!(
            r#"{{"role":"subscriber","stream":"room1/cam","remote":"{}"}}"#,
            viewer.local_addr().expect("addr")
        )),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let subscriber = r.json()["id"].as_u64().expect("id");
    let r = s.call("POST", "/whip/room1/screen", "application/sdp", Some(OFFER));
    assert_eq!(r.status, 201, "{}", r.body);
    let whip: u64 = r
        .header("location")
        .and_then(|l| l.rsplit('/').next()?.split('-').next()?.parse().ok())
        .expect("session id in the Location");
    let r = s.call(
        "POST",
        "/v1/rooms/room1",
        "application/json",
        Some(r#"{"maxPeerCount":3}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    send_media(
        format!("127.0.0.1:{}", s.node.media_port)
            .parse()
            .expect("addr"),
        50,
    );
    wait("the publisher's 50 packets counted", || {
        s.get("/v1/streams")["streams"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["packetsIn"].as_u64() >= Some(50)))
    });

    // nodes list
    let rows = table(&ok(&s.admin(&["nodes", "list"])));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let n = &rows[0];
    let mut columns: Vec<&str> = n.keys().map(String::as_str).collect();
    columns.sort_unstable();
    assert_eq!(
        columns,
        [
            "CAPACITY",
            "HEARTBEAT",
            "LOAD",
            "MEDIA",
            "NODE",
            "RESERVED",
            "STATUS",
            "URL",
            "WORKERS"
        ]
    );
    assert_eq!(n["NODE"], "test");
    assert_eq!(n["STATUS"], "ok");
    assert_eq!(n["URL"], api);
    assert_eq!(n["WORKERS"], "1");
    assert_eq!(n["RESERVED"], "6", "room1 reserves 3 × 2 consumers");
    assert!(n["HEARTBEAT"].ends_with(" ago"), "{n:?}");
    let j = json(&s.admin(&["nodes", "list", "--json"]));
    assert_eq!(j["nodes"][0]["nodeId"], "test");
    assert_eq!(j["nodes"][0]["url"], api.as_str());
    assert_eq!(j["nodes"][0]["reserved"], 6);

    // rooms list
    let rows = table(&ok(&s.admin(&["rooms", "list"])));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["ROOM"], "room1");
    assert_eq!(rows[0]["NODE"], "test");
    assert_eq!(rows[0]["MAX PEERS"], "3");
    assert_eq!(rows[0]["CONSUMERS"], "6");
    assert_eq!(rows[0]["WHIP URL"], format!("{api}/whip/room1"));
    let j = json(&s.admin(&["rooms", "list", "--json"]));
    assert_eq!(j, s.get("/v1/rooms"), "the API's answer as it is");

    // streams list: this node's, with counters; --prefix; every node's from the store.
    let rows = table(&ok(&s.admin(&["streams", "list"])));
    let by_name: BTreeMap<&str, &BTreeMap<String, String>> =
        rows.iter().map(|r| (r["STREAM"].as_str(), r)).collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["room1/cam", "room1/screen"]
    );
    let cam = by_name["room1/cam"];
    assert_eq!(cam["WEBRTC"], "no");
    assert_eq!(cam["SUBSCRIBERS"], "1");
    assert!(
        cam["PACKETS IN"].parse::<u64>().expect("a number") >= 50,
        "{cam:?}"
    );
    assert!(cam["BYTES IN"].ends_with(" KiB"), "{cam:?}");
    assert_eq!(by_name["room1/screen"]["WEBRTC"], "yes");
    let rows = table(&ok(&s.admin(&["streams", "list", "--prefix", "room1/c"])));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["STREAM"], "room1/cam");
    let j = json(&s.admin(&["streams", "list", "--json"]));
    assert_eq!(j["streams"].as_array().map(Vec::len), Some(2), "{j}");
    wait("this node's streams in the cluster store", || {
        s.get("/v1/cluster/streams")["streams"]
            .as_array()
            .is_some_and(|l| l.len() == 2)
    });
    let rows = table(&ok(&s.admin(&["streams", "list", "--cluster"])));
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r["NODE"], "test");
        assert_eq!(r["RELAYED FROM"], "-", "published here");
    }
    let j = json(&s.admin(&["streams", "list", "--cluster", "--json"]));
    assert_eq!(j["streams"][0]["stream"], "room1/cam");
    assert_eq!(j["streams"][0]["relayedFrom"], Value::Null);

    // sessions list, also with the API and token from the environment.
    let out = run(
        &["sessions", "list"],
        &[("SWITCHYARD_API", &api), ("SWITCHYARD_TOKEN", &s.token)],
    );
    let rows = table(&ok(&out));
    let by_id: BTreeMap<u64, &BTreeMap<String, String>> = rows
        .iter()
        .map(|r| (r["ID"].parse().expect("id"), r))
        .collect();
    assert_eq!(
        by_id.keys().copied().collect::<Vec<_>>(),
        [publisher, subscriber, whip]
    );
    assert_eq!(by_id[&publisher]["ROLE"], "publisher");
    assert_eq!(by_id[&publisher]["TRANSPORT"], "srtp");
    assert!(
        by_id[&publisher]["LAST PACKET"].ends_with("s ago"),
        "{rows:?}"
    );
    assert_eq!(by_id[&subscriber]["ROLE"], "subscriber");
    assert_eq!(
        by_id[&subscriber]["REMOTE"],
        viewer.local_addr().expect("addr").to_string()
    );
    assert_eq!(by_id[&whip]["STREAM"], "room1/screen");
    assert_eq!(by_id[&whip]["TRANSPORT"], "webrtc ice checking");
    let j = json(&s.admin(&["sessions", "list", "--json"]));
    assert_eq!(j["sessions"].as_array().map(Vec::len), Some(3), "{j}");

    // session kick: the session is gone from the node.
    let out = ok(&s.admin(&["session", "kick", &whip.to_string()]));
    assert_eq!(out, format!("session {whip} ended\n"));
    let r = s.call(
        "GET",
        &format!("/v1/sessions/{whip}"),
        "application/json",
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let j = json(&s.admin(&["session", "kick", &subscriber.to_string(), "--json"]));
    assert_eq!(j, serde_json::json!({"id": subscriber, "ended": true}));
    let left: Vec<u64> = s.get("/v1/sessions")["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|x| x["id"].as_u64())
        .collect();
    assert_eq!(left, [publisher]);
    failed(
        &s.admin(&["session", "kick", &whip.to_string()]),
        1,
        &[
            &format!("DELETE /v1/sessions/{whip}"),
            "404",
            "no such session",
        ],
    );

    // drain: no new room goes to the node; --resume undoes it.
    let out = ok(&s.admin(&["drain", "test"]));
    assert!(out.starts_with("node test: draining"), "{out}");
    assert_eq!(
        table(&ok(&s.admin(&["nodes", "list"])))[0]["STATUS"],
        "draining"
    );
    let r = s.call(
        "POST",
        "/v1/rooms/room2",
        "application/json",
        Some(r#"{"maxPeerCount":2}"#),
    );
    assert_eq!(r.status, 503, "a drained node takes no room: {}", r.body);
    let j = json(&s.admin(&["drain", "test", "--resume", "--json"]));
    assert_eq!(j["draining"], false);
    let r = s.call(
        "POST",
        "/v1/rooms/room2",
        "application/json",
        Some(r#"{"maxPeerCount":2}"#),
    );
    assert_eq!(r.status, 201, "placed again after --resume: {}", r.body);
    failed(
        &s.admin(&["drain", "nobody"]),
        1,
        &["POST /v1/nodes/nobody/drain", "404"],
    );
    failed(
        &s.admin(&["drain", "other", "--shutdown"]),
        1,
        &["409", "through its own API"],
    );
    failed(
        &s.admin(&["drain", "test", "--shutdown", "--resume"]),
        2,
        &["--resume"],
    );

    // drain --shutdown: no new session, and the control plane exits 0 (no WebRTC session
    // is left to wait for: plain RTP sessions are not waited for).
    let out = ok(&s.admin(&["drain", "test", "--shutdown"]));
    assert!(out.starts_with("node test: shutting down"), "{out}");
    let c = s.node.controlplane.as_mut().expect("running");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = c.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the control plane still runs 15 s after drain --shutdown"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status 0: {status}");
    s.node.controlplane = None;
    failed(&s.admin(&["nodes", "list"]), 1, &["cannot reach the API"]);
}

#[test]
fn token_verify_takes_what_the_node_takes() {
    let s = Secured::start("verify");
    let api = s.node.api.clone();
    let config = s.config.to_str().expect("path");
    let user = cli(&[
        "token",
        "sign",
        "--key",
        &s.key,
        "--root",
        "room1",
        "--publish",
        "alice",
        "--subscribe",
        "",
        "--expires",
        "30m",
    ]);

    // Valid: against the node's own config file, and against the key.
    let out = ok(&run(
        &["token", "verify", "--config", config, &s.token],
        &[],
    ));
    let fields: BTreeMap<&str, &str> = out
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(k, v)| (k, v.trim())))
        .collect();
    assert!(
        fields["valid"].starts_with("yes: HS256") && fields["valid"].contains(config),
        "{out}"
    );
    assert_eq!(fields["root"], "(everything)");
    assert!(fields["cluster"].starts_with("yes"), "{out}");
    assert!(fields["expires"].contains("UTC (in "), "{out}");
    let out = ok(&run(
        &["token", "verify", &user],
        &[("SWITCHYARD_AUTH_KEY", &s.key)],
    ));
    assert!(out.contains("root       room1\n"), "{out}");
    assert!(out.contains("publish    alice\n"), "{out}");
    assert!(out.contains("subscribe  (anything under root)\n"), "{out}");
    assert!(out.contains("cluster    no\n"), "{out}");
    let j = json(&run(
        &["token", "verify", "--key", &s.key, "--json", &user],
        &[],
    ));
    assert_eq!(j["valid"], true);
    assert_eq!(j["algorithm"], "HS256");
    assert_eq!(j["claims"]["root"], "room1");
    assert_eq!(j["claims"]["pub"], serde_json::json!(["alice"]));
    let left = j["expiresInS"].as_u64().expect("expiresInS");
    assert!((1700..=1800).contains(&left), "{j}");
    // The node takes it too.
    ok(&run(
        &["nodes", "list", "--api", &api, "--token", &s.token],
        &[],
    ));

    // Tampered: one character of the signature changed. Refused, as the node refuses it.
    let mut bytes = s.token.clone().into_bytes();
    let at = bytes.len() - 10;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    failed(
        &run(&["token", "verify", "--config", config, &tampered], &[]),
        1,
        &["token refused: bad signature"],
    );
    failed(
        &run(&["nodes", "list", "--api", &api, "--token", &tampered], &[]),
        1,
        &["401", "bad signature"],
    );
    // Signed with another key: the same.
    let other = cli(&["token", "generate"]);
    let foreign = cli(&["token", "sign", "--key", &other, "--cluster"]);
    failed(
        &run(&["token", "verify", "--config", config, &foreign], &[]),
        1,
        &["bad signature"],
    );
    // Expired an hour ago: says when.
    let expired = auth::sign_hs256(
        &s.key,
        &Claims {
            root: "room1".into(),
            exp: Some(auth::now_s() - 3600),
            ..Claims::default()
        },
    )
    .expect("sign");
    failed(
        &run(&["token", "verify", "--key", &s.key, &expired], &[]),
        1,
        &["token expired at ", " UTC"],
    );
    failed(
        &run(&["token", "verify", "--key", &s.key, "not.a.token"], &[]),
        1,
        &["malformed"],
    );

    // Nothing to verify with, or a key that is not one: exit status 2.
    failed(
        &run(&["token", "verify", &s.token], &[]),
        2,
        &["--key", "--config"],
    );
    failed(
        &run(&["token", "verify", "--key", "not base64!", &s.token], &[]),
        2,
        &["auth.key"],
    );
    let no_auth =
        std::env::temp_dir().join(format!("swy-admin-noauth-{}.toml", std::process::id()));
    std::fs::write(&no_auth, "[cluster]\nhealth_interval_ms = 300\n").expect("config");
    failed(
        &run(
            &[
                "token",
                "verify",
                "--config",
                no_auth.to_str().expect("path"),
                &s.token,
            ],
            &[],
        ),
        2,
        &["no [auth] key"],
    );
    let _ = std::fs::remove_file(&no_auth);
}

#[test]
fn admin_commands_take_only_their_flags() {
    let help = |args: &[&str], env: &[(&str, &str)]| ok(&run(args, env));
    let h = help(&["nodes", "list", "--help"], &[]);
    for want in [
        "--api",
        "[default: http://127.0.0.1:8080]",
        "--token",
        "--json",
    ] {
        assert!(h.contains(want), "nodes list --help lacks {want}: {h}");
    }
    for other in ["--media-port", "--redis", "--prefix", "--shutdown", "--key"] {
        assert!(!h.contains(other), "nodes list lists {other}: {h}");
    }
    let h = help(&["streams", "list", "--help"], &[]);
    assert!(h.contains("--prefix") && h.contains("--cluster"), "{h}");
    let h = help(&["drain", "--help"], &[]);
    assert!(h.contains("--shutdown") && h.contains("--resume"), "{h}");
    assert!(!h.contains("--prefix"), "{h}");
    let h = help(&["token", "verify", "--help"], &[]);
    assert!(
        h.contains("--key") && h.contains("--public-key") && h.contains("--config"),
        "{h}"
    );
    assert!(!h.contains("--api"), "{h}");
    let h = help(&["up", "--help"], &[]);
    assert!(!h.contains("--api") && !h.contains("--token"), "{h}");
    // A token in the environment is never printed.
    let h = help(
        &["sessions", "list", "--help"],
        &[("SWITCHYARD_TOKEN", "secret-token-value")],
    );
    assert!(
        h.contains("SWITCHYARD_TOKEN") && !h.contains("secret-token-value"),
        "{h}"
    );
}

/// Over HTTPS (a self-signed certificate for 127.0.0.1): verified with `--ca-file`, taken
/// as it is with `--insecure-tls`, refused otherwise.
#[test]
fn the_admin_cli_speaks_https() {
    let dir = std::env::temp_dir().join(format!("swy-admin-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("rcgen");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    let node = Node::spawn_with(
        1,
        vec![
            "--http-certificate".into(),
            cert.clone().into(),
            "--http-private-key".into(),
            key.into(),
        ],
    );
    let api = format!("https://{}", node.http_addr);
    let cert = cert.to_str().expect("path");
    wait("the node registered, over HTTPS", || {
        let out = run(&["nodes", "list", "--api", &api, "--insecure-tls"], &[]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\ntest ")
    });
    let rows = table(&ok(&run(
        &["nodes", "list", "--api", &api, "--ca-file", cert],
        &[],
    )));
    assert_eq!(rows[0]["NODE"], "test");
    assert_eq!(rows[0]["URL"], api, "the node registers its https:// URL");
    // Without either: the system's CA bundle does not know this certificate.
    let out = run(&["nodes", "list", "--api", &api], &[]);
    if std::path::Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        failed(&out, 1, &["cannot reach the API", "TLS"]);
    } else {
        failed(&out, 2, &["--ca-file"]);
    }
    failed(
        &run(
            &[
                "nodes",
                "list",
                "--api",
                &api,
                "--ca-file",
                "/nonexistent.pem",
            ],
            &[],
        ),
        2,
        &["--ca-file", "/nonexistent.pem"],
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
