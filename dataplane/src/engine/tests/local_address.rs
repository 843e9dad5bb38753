//! The node's address a session talks to (issue #11): on a host with several addresses,
//! everything sent to a session leaves from the address its peer sent to, and only traffic
//! that authenticated decides which that is.

use std::net::IpAddr;

use switchyard_shared::packet::stun::{Class, Message};

use super::ice_consent::{latched_subscriber, PEER};
use super::*;

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const SUB_PWD: &str = "subU-password-0123456789";

/// The node's two addresses: the one the peer uses, and another.
fn a() -> Option<IpAddr> {
    Some("10.203.0.1".parse().expect("ip"))
}
fn b() -> Option<IpAddr> {
    Some("10.204.0.1".parse().expect("ip"))
}

/// The source address of everything `out` sent to `port`, in order.
fn froms_to(out: &Capture, port: u16) -> Vec<Option<IpAddr>> {
    out.sent
        .iter()
        .zip(&out.froms)
        .filter(|((to, _), _)| *to == addr(port))
        .map(|(_, f)| *f)
        .collect()
}

/// The source addresses media to [`PEER`] leaves from after one publisher packet (to `a`).
fn media_from(
    e: &mut Engine,
    publisher: &mut Context,
    seq: u16,
    now: Instant,
) -> Vec<Option<IpAddr>> {
    let mut out = Capture::default();
    let mut p = srtp_packet(publisher, seq, 100);
    e.handle_datagram_to(&mut p, addr(5000), a(), now, &mut out);
    out.sent
        .iter()
        .zip(&out.froms)
        .filter(|((to, d), _)| {
            *to == addr(PEER) && d.first().is_some_and(|x| (128..192).contains(x))
        })
        .map(|(_, f)| *f)
        .collect()
}

/// An SRTCP PLI from the subscriber (its inbound key is `[3; 28]`).
fn sub_pli(sub_tx: &mut Context) -> Vec<u8> {
    let mut fb = vec![0u8; 100];
    let n = rtcp::write_pli(&mut fb, 0xabc, 32).expect("pli");
    let n = sub_tx.protect_rtcp(&mut fb, n).expect("protect");
    fb.truncate(n);
    fb
}

#[test]
fn answers_and_media_leave_from_the_address_the_peer_checked() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let now = t0();
    let mut publisher = latched_subscriber(e, now);
    // latched_subscriber's first check carried no destination: the kernel's choice so far.
    assert_eq!(media_from(e, &mut publisher, 1, now), vec![None]);

    // A consent check from the peer to A: answered from A, and A is the session's now.
    let mut out = Capture::default();
    let mut c = check("subU", SUB_PWD, true);
    e.handle_datagram_to(&mut c, addr(PEER), a(), now, &mut out);
    assert_eq!(froms_to(&out, PEER), vec![a()], "the answer leaves from A");
    assert_eq!(media_from(e, &mut publisher, 2, now), vec![a()]);
    // The static publisher learned A from its own authenticated media: its PLI goes from A.
    let mut sub_tx = Context::new(PROFILE, &[3; 28]).expect("ctx");
    let mut out = Capture::default();
    let mut fb = sub_pli(&mut sub_tx);
    let t = now + Duration::from_secs(1);
    e.handle_datagram_to(&mut fb, addr(PEER), a(), t, &mut out);
    assert_eq!(
        froms_to(&out, 5000),
        vec![a()],
        "PLI to the publisher from A"
    );

    // Spoofed datagrams with the peer's source address, to B: a check that does not
    // authenticate, SRTCP and SRTP that do not, and a DTLS record. None is answered from
    // B and none moves the session.
    let mut out = Capture::default();
    let mut bad_check = check("subU", "not-the-password-0123456", true);
    let mut bad_rtcp = sub_pli(&mut Context::new(PROFILE, &[9; 28]).expect("ctx"));
    let mut bad_rtp = srtp_packet(&mut Context::new(PROFILE, &[9; 28]).expect("ctx"), 3, 50);
    let mut dtls = vec![22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0];
    for d in [&mut bad_check, &mut bad_rtcp, &mut bad_rtp, &mut dtls] {
        e.handle_datagram_to(d, addr(PEER), b(), now, &mut out);
    }
    assert!(froms_to(&out, PEER).is_empty(), "nothing answers a forgery");
    assert_eq!(
        media_from(e, &mut publisher, 3, now),
        vec![a()],
        "still from A"
    );

    // A valid check from a new address, to B: answered from B, the agent's own check to it
    // leaves from B too (the pair the peer checked), and media stays on A meanwhile.
    const OTHER: u16 = 6200;
    let mut out = Capture::default();
    let mut c = check("subU", SUB_PWD, false);
    e.handle_datagram_to(&mut c, addr(OTHER), b(), now, &mut out);
    let classes: Vec<Class> = out
        .sent
        .iter()
        .filter(|(to, _)| *to == addr(OTHER))
        .filter_map(|(_, d)| Message::parse(d).ok().map(|m| m.class))
        .collect();
    assert_eq!(classes, vec![Class::Success, Class::Request]);
    assert_eq!(froms_to(&out, OTHER), vec![b(), b()]);
    assert_eq!(media_from(e, &mut publisher, 4, now), vec![a()]);

    // The peer itself moves to B (a valid check from its address): media follows.
    let mut out = Capture::default();
    let mut c = check("subU", SUB_PWD, true);
    e.handle_datagram_to(&mut c, addr(PEER), b(), now, &mut out);
    assert_eq!(froms_to(&out, PEER), vec![b()]);
    assert_eq!(media_from(e, &mut publisher, 5, now), vec![b()]);
    // ... and back to A with SRTCP that authenticates.
    let mut out = Capture::default();
    let mut fb = sub_pli(&mut sub_tx);
    e.handle_datagram_to(
        &mut fb,
        addr(PEER),
        a(),
        now + Duration::from_secs(2),
        &mut out,
    );
    assert_eq!(media_from(e, &mut publisher, 6, now), vec![a()]);
}
