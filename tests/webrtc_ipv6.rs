//! IPv4 and IPv6 host candidates on one worker port: a node bound to `::` (dual-stack) with
//! `media.announce` and `media.announce6` answers WHIP with both candidates, and ICE checks
//! to either address are answered from the same worker port.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::Node;
use switchyard_shared::packet::stun;

const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/chrome_publish.sdp");

#[test]
fn both_families_are_candidates_and_both_get_answers() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    }
    let dir = std::env::temp_dir().join(format!("swy-ipv6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        "[media]\nannounce = \"127.0.0.1\"\nannounce6 = \"::1\"\n",
    )
    .expect("config");
    let node = Node::spawn_bound(1, "::", vec!["--config".into(), config.clone().into()]);
    node.wait_healthy();

    let r = common::http_typed(
        &node.http_addr,
        "POST",
        "/whip/v6/cam",
        "application/sdp",
        Some(OFFER.as_bytes()),
    )
    .expect("POST");
    assert_eq!(r.status, 201, "{}", r.body);
    let port = node.media_port;
    let candidates: Vec<&str> = r
        .body
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    let has = |addr: &str| {
        candidates
            .iter()
            .any(|c| c.contains(&format!(" {addr} {port} typ host")))
    };
    assert!(has("127.0.0.1") && has("::1"), "{candidates:?}");

    let attr = |name: &str| {
        r.body
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(name))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let (ufrag, pwd) = (attr("a=ice-ufrag:"), attr("a=ice-pwd:"));
    let remote = OFFER
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .expect("offer ufrag");
    for (local, target) in [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "::1")] {
        let sock = UdpSocket::bind(local).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut req = [0u8; 256];
        let n = stun::write_binding_request(
            &mut req,
            &[7; 12],
            &format!("{ufrag}:{remote}"),
            pwd.as_bytes(),
            false,
            1,
            2,
        )
        .expect("request");
        let dst = SocketAddr::new(target.parse().expect("ip"), port);
        sock.send_to(&req[..n], dst).expect("send");
        let mut buf = [0u8; 1500];
        let (len, from) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no answer over {target}: {e}"));
        assert_eq!(from, dst, "answered from the candidate's address");
        let m = stun::Message::parse(&buf[..len]).expect("STUN");
        assert!(m.check_integrity(pwd.as_bytes()));
        assert_eq!(
            m.xor_mapped_address(),
            Some(sock.local_addr().expect("addr"))
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
