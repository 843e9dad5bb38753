//! ICE consent per address on a real node (issue 9 item 3): a valid, nominated check from a
//! new source does not move the session; the worker checks that source itself, from its
//! media socket, and only an authenticated answer from there moves it.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::Node;
use serde_json::Value;
use switchyard_shared::packet::stun;

const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");

fn attr<'a>(sdp: &'a str, name: &str) -> &'a str {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name}"))
}

/// The one session's address as the control plane knows it.
fn remote(node: &Node) -> Option<SocketAddr> {
    let r = common::http(&node.http_addr, "GET", "/v1/sessions", None).expect("GET");
    let v: Value = serde_json::from_str(&r.body).expect("JSON");
    v["sessions"][0]["remote"].as_str()?.parse().ok()
}

fn wait_remote(node: &Node, want: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while remote(node) != Some(want) {
        assert!(Instant::now() < deadline, "remote {:?}", remote(node));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every STUN message `sock` receives within `wait`.
fn receive(sock: &UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => got.push(buf[..n].to_vec()),
            Err(_) => break,
        }
    }
    got
}

#[test]
fn a_nominated_check_from_a_new_address_moves_media_only_after_it_answers() {
    let node = Node::start(1);
    let r = common::http_typed(
        &node.http_addr,
        "POST",
        "/whip/consent/cam",
        "application/sdp",
        Some(OFFER.as_bytes()),
    )
    .expect("POST");
    assert_eq!(r.status, 201, "{}", r.body);
    let (ufrag, pwd) = (attr(&r.body, "a=ice-ufrag:"), attr(&r.body, "a=ice-pwd:"));
    let (peer_ufrag, peer_pwd) = (attr(OFFER, "a=ice-ufrag:"), attr(OFFER, "a=ice-pwd:"));
    let media = SocketAddr::from(([127, 0, 0, 1], node.media_port));
    let check = |sock: &UdpSocket, id: u8, nominate: bool| {
        let mut req = [0u8; 256];
        let n = stun::write_binding_request(
            &mut req,
            &[id; 12],
            &format!("{ufrag}:{peer_ufrag}"),
            pwd.as_bytes(),
            nominate,
            1,
            2,
        )
        .expect("request");
        sock.send_to(&req[..n], media).expect("send");
    };
    let bind = || UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (peer, victim, moved) = (bind(), bind(), bind());
    let addr = |s: &UdpSocket| s.local_addr().expect("addr");

    // The first valid check fixes the address at once.
    check(&peer, 1, false);
    assert_eq!(receive(&peer, Duration::from_millis(300)).len(), 1);
    wait_remote(&node, addr(&peer));

    // A nominated check naming the victim as its source (here: sent from the victim's
    // socket, which never answers). It gets the answer and the node's own checks, never
    // the session.
    check(&victim, 2, true);
    let got = receive(&victim, Duration::from_secs(3));
    let msgs: Vec<stun::Message<'_>> = got
        .iter()
        .map(|d| stun::Message::parse(d).expect("only STUN reaches the victim"))
        .collect();
    assert_eq!(msgs[0].class, stun::Class::Success);
    let checks = &msgs[1..];
    assert!(
        (1..=5).contains(&checks.len()),
        "a few checks, then the node gives up: {}",
        checks.len()
    );
    for c in checks {
        assert_eq!(c.class, stun::Class::Request);
        assert_eq!(c.username(), Some(format!("{peer_ufrag}:{ufrag}").as_str()));
        assert!(c.check_integrity(peer_pwd.as_bytes()));
        assert_eq!(c.transaction_id, checks[0].transaction_id);
    }
    assert_eq!(
        remote(&node),
        Some(addr(&peer)),
        "media stays with the peer"
    );

    // A new address of the real peer: it answers the node's check, and the session moves.
    check(&moved, 3, true);
    let got = receive(&moved, Duration::from_millis(500));
    let ours = got
        .iter()
        .filter_map(|d| stun::Message::parse(d).ok())
        .find(|m| m.class == stun::Class::Request)
        .expect("the node checks the new address");
    let mut answer = [0u8; 128];
    let n = stun::write_binding_success(
        &mut answer,
        &ours.transaction_id,
        addr(&moved),
        peer_pwd.as_bytes(),
    )
    .expect("answer");
    moved.send_to(&answer[..n], media).expect("send");
    wait_remote(&node, addr(&moved));
}
