//! ICE consent per address (issue 9 item 3): a spoofed connectivity check must not redirect
//! a session's media to an address that never asked for it.

use switchyard_shared::packet::stun::{write_binding_success, Class, Message};

use super::*;

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
/// The WebRTC subscriber's real address, and the victim a spoofer names as its source.
pub(super) const PEER: u16 = 6100;
const VICTIM: u16 = 6666;
const CONSENT: Duration = Duration::from_secs(30);

/// A static-key publisher at 5000 and an ICE subscriber (`subU`) latched at [`PEER`].
pub(super) fn latched_subscriber(e: &mut Engine, now: Instant) -> Context {
    add_pub(e, 1, Some(addr(5000)), PROFILE);
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddSubscriber {
            id: SessionId(2),
            stream: STREAM,
            remote: None,
            ssrcs: sub_ssrcs(32),
            payload_types: Vec::new(),
            extensions: None,
            rtx: [None; MAX_TRACKS],
            tracks: ALL_TRACKS,
            plain: false,
            srtp: Some(keys(PROFILE, 3, 2)),
            ice: Some(ice_creds("subU")),
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(2) })
    );
    let mut first = check("subU", "subU-password-0123456789", true);
    e.handle_datagram(&mut first, addr(PEER), now, &mut out);
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Latched {
            id: SessionId(2),
            remote: addr(PEER)
        }),
        "the first valid check fixes the address at once"
    );
    Context::new(PROFILE, &[1; 28]).expect("ctx")
}

/// The classes of the STUN messages sent to `port`, in order.
fn stun_to(out: &Capture, port: u16) -> Vec<Class> {
    out.sent
        .iter()
        .filter(|(a, _)| *a == addr(port))
        .filter_map(|(_, d)| Message::parse(d).ok().map(|m| m.class))
        .collect()
}

/// The peer's answer to our check `tid`, signed with `pwd`.
pub(super) fn answer(tid: &[u8; 12], mapped: SocketAddr, pwd: &str) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    let n = write_binding_success(&mut b, tid, mapped, pwd.as_bytes()).expect("answer");
    b.truncate(n);
    b
}

/// Where one publisher packet is sent to (RTP only; STUN is told apart by its first byte).
fn media_destinations(
    e: &mut Engine,
    publisher: &mut Context,
    seq: u16,
    now: Instant,
) -> Vec<SocketAddr> {
    let mut out = Capture::default();
    let mut p = srtp_packet(publisher, seq, 100);
    e.handle_datagram(&mut p, addr(5000), now, &mut out);
    out.sent
        .iter()
        .filter(|(_, d)| d.first().is_some_and(|b| (128..192).contains(b)))
        .map(|(a, _)| *a)
        .collect()
}

#[test]
fn a_spoofed_nomination_does_not_redirect_media() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let now = t0();
    let mut publisher = latched_subscriber(e, now);
    assert_eq!(
        media_destinations(e, &mut publisher, 1, now),
        vec![addr(PEER)]
    );

    // Someone who knows the session's credentials (the peer itself, or whoever saw the
    // signaling) sends a nominated check with the victim's address as its source.
    let mut out = Capture::default();
    let mut spoofed = check("subU", "subU-password-0123456789", true);
    e.handle_datagram(&mut spoofed, addr(VICTIM), now, &mut out);
    assert_eq!(e.poll_event(), None, "no move before the victim answered");
    assert_eq!(
        media_destinations(e, &mut publisher, 2, now),
        vec![addr(PEER)],
        "media stays with the address that consented"
    );
    // What went to the victim is STUN only: the answer and our own check, both small.
    assert_eq!(stun_to(&out, VICTIM), vec![Class::Success, Class::Request]);
    assert!(out.sent.iter().all(|(_, d)| d.len() <= 128));

    // The victim never answers: a few retransmissions, then the node gives up, and media
    // never went there.
    let mut out = Capture::default();
    for ms in (50..=3000).step_by(50) {
        let t = now + Duration::from_millis(ms);
        e.handle_timeout(t, &mut out);
        assert_eq!(e.poll_event(), None);
    }
    assert_eq!(
        stun_to(&out, VICTIM),
        vec![Class::Request; 4],
        "retransmissions only"
    );
    assert!(
        e.ice_transactions.is_empty(),
        "the abandoned check is forgotten"
    );
    let later = now + Duration::from_secs(3);
    assert_eq!(
        media_destinations(e, &mut publisher, 3, later),
        vec![addr(PEER)]
    );
}

#[test]
fn media_moves_only_after_the_new_address_answers() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let now = t0();
    let mut publisher = latched_subscriber(e, now);
    const NEW: u16 = 6200;

    let mut out = Capture::default();
    let mut nominated = check("subU", "subU-password-0123456789", true);
    e.handle_datagram(&mut nominated, addr(NEW), now, &mut out);
    assert_eq!(e.poll_event(), None);
    let ours = &out.sent.last().expect("our check").1;
    let tid = Message::parse(ours).expect("check").transaction_id;
    let drops = get(&f.stats, 0, Counter::DropStun);

    // Answers that do not prove the new address answered: the right id from the old
    // address, signed with our password (the answer SDP's), an unknown id.
    let e = &mut f.engines[0];
    for (src, id, pwd) in [
        (PEER, tid, PEER_PWD),
        (NEW, tid, "subU-password-0123456789"),
        (NEW, [0x55; 12], PEER_PWD),
    ] {
        let mut a = answer(&id, addr(src), pwd);
        e.handle_datagram(&mut a, addr(src), now, &mut out);
        assert_eq!(e.poll_event(), None);
    }
    assert_eq!(get(&f.stats, 0, Counter::DropStun), drops + 3);
    let e = &mut f.engines[0];
    assert_eq!(
        media_destinations(e, &mut publisher, 1, now),
        vec![addr(PEER)]
    );

    // The real answer, a round trip later: media goes to the new address from now on, and
    // the old one is a stranger.
    let t = now + Duration::from_millis(40);
    let mut a = answer(&tid, addr(NEW), PEER_PWD);
    e.handle_datagram(&mut a, addr(NEW), t, &mut out);
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Latched {
            id: SessionId(2),
            remote: addr(NEW)
        })
    );
    assert_eq!(media_destinations(e, &mut publisher, 2, t), vec![addr(NEW)]);
    assert!(e.ice_transactions.is_empty());
    // No retransmission after the answer.
    let mut out = Capture::default();
    e.handle_timeout(t + Duration::from_secs(1), &mut out);
    assert_eq!(stun_to(&out, NEW), vec![]);
}

#[test]
fn a_flood_of_spoofed_sources_costs_a_bounded_number_of_checks() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let now = t0();
    let mut publisher = latched_subscriber(e, now);
    let mut out = Capture::default();
    for p in 0..500u16 {
        let mut spoofed = check("subU", "subU-password-0123456789", p % 2 == 0);
        e.handle_datagram(&mut spoofed, addr(20000 + p), now, &mut out);
    }
    for ms in (50..=3000).step_by(50) {
        e.handle_timeout(now + Duration::from_millis(ms), &mut out);
    }
    assert_eq!(e.poll_event(), None, "nothing moved");
    let requests = out
        .sent
        .iter()
        .filter(|(_, d)| Message::parse(d).is_ok_and(|m| m.class == Class::Request))
        .count();
    // The first two sources get their checks (and retransmissions); the other 498 get an
    // answer each and nothing else.
    assert_eq!(
        requests,
        ice::MAX_CANDIDATES * usize::from(ice::MAX_TRANSMISSIONS)
    );
    assert!(e.ice_transactions.is_empty(), "all forgotten");
    let t = now + Duration::from_secs(3);
    assert_eq!(
        media_destinations(e, &mut publisher, 1, t),
        vec![addr(PEER)]
    );
}

#[test]
fn checks_from_another_address_do_not_keep_consent() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let now = t0();
    let _publisher = latched_subscriber(e, now);
    let mut out = Capture::default();
    // The peer has gone; a spoofer keeps sending valid checks under another source.
    for s in [10, 20, 29] {
        let mut spoofed = check("subU", "subU-password-0123456789", false);
        let at = now + Duration::from_secs(s);
        e.handle_datagram(&mut spoofed, addr(VICTIM), at, &mut out);
        e.handle_timeout(at, &mut out);
        assert_eq!(e.poll_event(), None);
    }
    e.handle_timeout(now + CONSENT, &mut out);
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::ConsentExpired { id: SessionId(2) }),
        "only the session's own address refreshes its consent"
    );
}
