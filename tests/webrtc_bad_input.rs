//! Hostile input on the WebRTC path of a real node: checks with a wrong ICE password, DTLS
//! from an address ICE never validated, a ClientHello flood. Each is dropped and counted
//! under its reason, never answered, and creates no session state.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::Node;
use switchyard_shared::packet::stun;

const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");

fn answer_attr<'a>(answer: &'a str, name: &str) -> &'a str {
    answer
        .lines()
        .find_map(|l| l.trim_end().strip_prefix(name))
        .unwrap_or_else(|| panic!("answer has no {name}"))
}

fn drops(node: &Node, reason: &str) -> u64 {
    node.metric_sum(&format!(
        r#"switchyard_drops_total{{worker="0",reason="{reason}"}}"#
    ))
}

#[test]
fn bad_checks_and_stray_dtls_are_dropped_counted_and_unanswered() {
    let node = Node::start(1);
    let r = common::http_typed(
        &node.http_addr,
        "POST",
        "/whip/bad/cam",
        "application/sdp",
        Some(OFFER.as_bytes()),
    )
    .expect("POST");
    assert_eq!(r.status, 201, "{}", r.body);
    let ufrag = answer_attr(&r.body, "a=ice-ufrag:").to_owned();
    let pwd = answer_attr(&r.body, "a=ice-pwd:").to_owned();
    let remote_ufrag = OFFER
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .expect("offer ufrag");
    let media = ("127.0.0.1", node.media_port);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 1500];
    let username = format!("{ufrag}:{remote_ufrag}");

    // A check signed with the wrong password: counted, unanswered.
    let mut req = [0u8; 256];
    let n =
        stun::write_binding_request(&mut req, &[1; 12], &username, b"wrong-password", true, 1, 2)
            .expect("request");
    sock.send_to(&req[..n], media).expect("send");
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "a bad check gets no answer"
    );

    // DTLS from an address ICE never validated, and a ClientHello flood from another:
    // counted at the worker, never handed to the slow path.
    let mut hello = vec![22u8, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60, 1, 0, 0, 48];
    hello.resize(73, 0);
    sock.send_to(&hello, media).expect("send");
    let flood = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..500 {
        flood.send_to(&hello, media).expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while drops(&node, "stun") < 1 || drops(&node, "dtls") < 501 {
        assert!(
            Instant::now() < deadline,
            "stun {} dtls {}",
            drops(&node, "stun"),
            drops(&node, "dtls")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(drops(&node, "stun"), 1);
    assert_eq!(drops(&node, "dtls"), 501);

    // The right password is answered: the session was usable all along.
    let n = stun::write_binding_request(&mut req, &[2; 12], &username, pwd.as_bytes(), true, 1, 2)
        .expect("request");
    sock.send_to(&req[..n], media).expect("send");
    let (len, _) = sock.recv_from(&mut buf).expect("a valid check is answered");
    let resp = stun::Message::parse(&buf[..len]).expect("STUN answer");
    assert!(resp.check_integrity(pwd.as_bytes()));
    assert_eq!(
        resp.xor_mapped_address(),
        Some(sock.local_addr().expect("addr"))
    );

    // None of it created state: still exactly the one session, which DELETE ends.
    assert_eq!(node.metric_sum("switchyard_sessions{"), 1);
    let location = r
        .headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("location:")
                .then(|| l["location:".len()..].trim().to_owned())
        })
        .expect("Location");
    let d = common::http(&node.http_addr, "DELETE", &location, None).expect("DELETE");
    assert_eq!(d.status, 200);
    assert_eq!(node.metric_sum("switchyard_sessions{"), 0);
}

#[test]
fn bad_offers_get_clear_errors() {
    let node = Node::start(1);
    let post = |path: &str, ct: &str, body: &[u8]| {
        common::http_typed(&node.http_addr, "POST", path, ct, Some(body)).expect("POST")
    };
    let big = format!("{OFFER}{}", "a=x-padding:0123456789\r\n".repeat(2000));
    let no_bundle: String = OFFER
        .lines()
        .filter(|l| !l.starts_with("a=group:BUNDLE"))
        .map(|l| format!("{l}\n"))
        .collect();
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "/whip/r/s",
            "application/sdp",
            b"not sdp at all".to_vec(),
            400,
        ),
        ("/whip/r/s", "application/sdp", big.into_bytes(), 413),
        (
            "/whip/r/s",
            "application/json",
            OFFER.as_bytes().to_vec(),
            415,
        ),
        ("/whip/r/s", "application/sdp", no_bundle.into_bytes(), 400),
        (
            "/whip/r%20x/s",
            "application/sdp",
            OFFER.as_bytes().to_vec(),
            400,
        ),
        (
            "/whep/r/nobody",
            "application/sdp",
            OFFER.as_bytes().to_vec(),
            404,
        ),
    ];
    for (path, ct, body, status) in cases {
        let r = post(path, ct, &body);
        assert_eq!(r.status, status, "{path} {ct}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{}", r.body);
    }
    assert_eq!(node.metric_sum("switchyard_sessions{"), 0);
}
