//! JWT auth on a real node configured with an `[auth]` key: tokens made with the
//! `switchyard token` CLI; expired, tampered, missing and out-of-scope tokens are refused with
//! a reason; valid ones and the public prefix work.

mod common;

use common::{cli, Http, Node, BIN};
use switchyard_controlplane::auth::{self, Claims};

const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");
const WATCH: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_subscribe.sdp");

struct Secured {
    node: Node,
    key: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn secured_node() -> Secured {
    // One folder per node: the tests run in parallel, and a shared config file let one
    // test's node start with another's key ("bad signature" now and then).
    static NODES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let key = cli(&["token", "generate"]);
    let dir = std::env::temp_dir().join(format!("swy-auth-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        format!("[auth]\nkey = \"{key}\"\npublic = \"anon\"\n"),
    )
    .expect("write config");
    let node = Node::start_with_args(1, &["--config", config.to_str().expect("path")]);
    Secured {
        node,
        key,
        _dir: TempDir(dir),
    }
}

fn send(node: &Node, method: &str, path: &str, sdp: bool, token: Option<&str>) -> Http {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    let (ctype, body) = if sdp && path.starts_with("/whep/") {
        ("application/sdp", Some(WATCH.as_bytes()))
    } else if sdp {
        ("application/sdp", Some(OFFER.as_bytes()))
    } else if method == "POST" && path == "/v1/sessions" {
        (
            "application/json",
            Some(&br#"{"role":"publisher","stream":"raw/cam"}"#[..]),
        )
    } else if method == "POST" {
        ("application/json", Some(&br#"{"maxPeerCount":2}"#[..]))
    } else {
        ("application/json", None)
    };
    common::http_with(&node.http_addr, method, path, ctype, &headers, body).expect("request")
}

fn assert_refused(r: &Http, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains(reason), "{error:?} should say {reason:?}");
    if status == 401 {
        assert!(
            r.headers
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{}",
            r.headers
        );
    }
}

#[test]
fn tokens_are_checked_with_reasons() {
    let s = secured_node();
    let node = &s.node;
    let publish = cli(&[
        "token",
        "sign",
        "--key",
        &s.key,
        "--root",
        "room1",
        "--publish",
        "cam",
        "--expires",
        "10m",
    ]);
    let cluster = cli(&[
        "token",
        "sign",
        "--key",
        &s.key,
        "--cluster",
        "--expires",
        "never",
    ]);

    // Open endpoints need nothing.
    assert_eq!(node.get("/health").status, 200);
    assert_eq!(node.get("/metrics").status, 200);
    assert_eq!(node.get("/v1/streams").status, 200);

    // Missing token outside the public prefix.
    assert_refused(
        &send(node, "POST", "/whip/room1/cam", true, None),
        401,
        "missing bearer token",
    );
    assert_refused(
        &send(node, "GET", "/v1/sessions", false, None),
        401,
        "missing",
    );
    // Expired.
    let expired = auth::sign_hs256(
        &s.key,
        &Claims {
            root: "room1".into(),
            publish: vec!["cam".into()],
            exp: Some(auth::now_s() - 3600),
            ..Claims::default()
        },
    )
    .expect("sign");
    assert_refused(
        &send(node, "POST", "/whip/room1/cam", true, Some(&expired)),
        401,
        "token expired",
    );
    // Tampered: the payload of a wider token with the signature of the narrow one.
    let wide = auth::sign_hs256(
        &s.key,
        &Claims {
            root: String::new(),
            publish: vec![String::new()],
            exp: Some(auth::now_s() + 600),
            ..Claims::default()
        },
    )
    .expect("sign");
    let narrow: Vec<&str> = publish.split('.').collect();
    let wide: Vec<&str> = wide.split('.').collect();
    let tampered = format!("{}.{}.{}", narrow[0], wide[1], narrow[2]);
    assert_refused(
        &send(node, "POST", "/whip/room2/cam", true, Some(&tampered)),
        401,
        "bad signature",
    );
    // Signed with another key.
    let foreign = cli(&[
        "token",
        "sign",
        "--key",
        &cli(&["token", "generate"]),
        "--cluster",
    ]);
    assert_refused(
        &send(node, "GET", "/v1/sessions", false, Some(&foreign)),
        401,
        "bad signature",
    );
    assert_refused(
        &send(node, "GET", "/v1/sessions", false, Some("not.a.jwt")),
        401,
        "malformed",
    );
    // Valid, but not for this path or action.
    assert_refused(
        &send(node, "POST", "/whip/room2/cam", true, Some(&publish)),
        403,
        "room2/cam",
    );
    assert_refused(
        &send(node, "POST", "/whep/room1/cam", true, Some(&publish)),
        403,
        "subscribe",
    );
    assert_refused(
        &send(node, "POST", "/v1/sessions", false, Some(&publish)),
        403,
        "cluster token",
    );
    assert_refused(
        &send(node, "POST", "/v1/nodes/test/drain", false, Some(&publish)),
        403,
        "cluster token",
    );

    // Valid tokens work.
    let r = send(node, "POST", "/whip/room1/cam", true, Some(&publish));
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.starts_with("v=0"), "{}", r.body);
    let r = send(node, "POST", "/v1/sessions", false, Some(&cluster));
    assert_eq!(r.status, 201, "{}", r.body);
    let r = send(node, "GET", "/v1/nodes", false, Some(&cluster));
    assert_eq!(r.status, 200, "{}", r.body);
    // A room under the token's root may be created by it.
    let r = send(node, "POST", "/v1/rooms/room1", false, Some(&publish));
    assert_eq!(r.status, 201, "{}", r.body);

    // The public prefix needs no token.
    let r = send(node, "POST", "/whip/anon/cam", true, None);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = send(node, "POST", "/whep/anon/cam", true, None);
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn token_cli_rejects_unexpiring_user_tokens() {
    let key = cli(&["token", "generate"]);
    let out = std::process::Command::new(BIN)
        .args([
            "token",
            "sign",
            "--key",
            &key,
            "--root",
            "r",
            "--expires",
            "never",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let token = cli(&[
        "token",
        "sign",
        "--key",
        &key,
        "--root",
        "r",
        "--publish",
        "",
        "--subscribe",
        "a",
        "--subscribe",
        "b",
    ]);
    let auth = auth::Auth::from_config(&switchyard_shared::config::AuthSection {
        key: Some(key),
        ..Default::default()
    })
    .expect("config")
    .expect("enabled");
    let c = auth.verify(&token).expect("valid");
    assert_eq!(c.root, "r");
    assert_eq!(c.publish, vec![String::new()]);
    assert_eq!(c.subscribe, vec!["a", "b"]);
    let exp = c.exp.expect("exp");
    assert!(exp > auth::now_s() + 3500 && exp <= auth::now_s() + 3600);
}

/// The session id: the leading digits of a WHIP/WHEP Location's last segment (what an
/// attacker learns by counting, since ids are sequential).
fn id_of(location: &str) -> String {
    let last = location.rsplit('/').next().unwrap_or_default();
    last.chars().take_while(char::is_ascii_digit).collect()
}

/// Issue 9 item 4: being allowed on a stream is not enough to end a session on it. Only the
/// full resource URL the POST answered (an unguessable secret in it) ends or patches a
/// session; the bare id, or a wrong secret, gets 404 like a session that does not exist.
#[test]
fn a_session_ends_only_through_its_own_location() {
    let s = secured_node();
    let node = &s.node;
    let sign = |args: &[&str]| {
        let mut all = vec!["token", "sign", "--key", &s.key, "--expires", "10m"];
        all.extend_from_slice(args);
        cli(&all)
    };
    let publish = sign(&["--root", "room1", "--publish", "cam"]);
    let viewer_a = sign(&["--root", "room1", "--subscribe", "cam"]);
    let viewer_b = sign(&["--root", "room1", "--subscribe", "cam"]);
    let cluster = cli(&["token", "sign", "--key", &s.key, "--cluster"]);
    let live = |id: &str| -> bool {
        let r = send(node, "GET", "/v1/sessions", false, Some(&cluster));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .any(|v| v["id"].as_u64().map(|n| n.to_string()).as_deref() == Some(id))
    };
    let location = |r: &Http| {
        assert_eq!(r.status, 201, "{}", r.body);
        r.header("location").expect("Location")
    };

    // One viewer's token must not end another viewer's session.
    location(&send(node, "POST", "/whip/room1/cam", true, Some(&publish)));
    let a = location(&send(
        node,
        "POST",
        "/whep/room1/cam",
        true,
        Some(&viewer_a),
    ));
    let a_id = id_of(&a);
    assert!(!a_id.is_empty(), "{a}");
    let guessed = format!("/whep/room1/cam/{a_id}");
    for method in ["DELETE", "PATCH"] {
        let r = send(node, method, &guessed, false, Some(&viewer_b));
        assert_refused(&r, 404, "no such session");
    }
    let forged = format!("{a}{}", if a.ends_with('0') { "1" } else { "0" });
    assert_refused(
        &send(node, "DELETE", &forged, false, Some(&viewer_b)),
        404,
        "no such session",
    );
    assert!(live(&a_id), "viewer A's session survived viewer B");
    // The owner's Location works, and the stream check still applies to it.
    assert_refused(
        &send(node, "DELETE", &a, false, Some(&publish)),
        403,
        "subscribe",
    );
    assert_eq!(send(node, "DELETE", &a, false, Some(&viewer_a)).status, 200);
    assert!(!live(&a_id));

    // An anonymous client on the public prefix must not end the publisher there.
    let p = location(&send(node, "POST", "/whip/anon/cam", true, None));
    let p_id = id_of(&p);
    let r = send(
        node,
        "DELETE",
        &format!("/whip/anon/cam/{p_id}"),
        false,
        None,
    );
    assert_refused(&r, 404, "no such session");
    // Malformed resource segments are 404s too, never a 5xx.
    for bad in ["x", "-", "1-", "1-zz", "99999999999999999999999-00"] {
        let r = send(
            node,
            "DELETE",
            &format!("/whip/anon/cam/{bad}"),
            false,
            None,
        );
        assert_refused(&r, 404, "no such session");
    }
    assert!(live(&p_id), "the publisher survived the anonymous DELETE");
    assert_eq!(send(node, "DELETE", &p, false, None).status, 200);
    assert!(!live(&p_id));
}
