//! The ICE-lite agent on virtual time: the peer, a spoofer and the victim are addresses,
//! every check and answer is built by hand.

use ring::rand::SystemRandom;
use switchyard_shared::packet::stun::write_binding_success;

use super::*;
use crate::testing::t0;

const LOCAL_PWD: &str = "server-password-0123456789";
const PEER_PWD: &str = "peer-password-0123456789";

fn creds() -> IceCredentials {
    IceCredentials {
        local_ufrag: "srv1".into(),
        local_pwd: LOCAL_PWD.into(),
        remote_ufrag: "peer".into(),
        remote_pwd: PEER_PWD.into(),
    }
}

fn agent(now: Instant) -> IceAgent {
    IceAgent::new(&creds(), now, &SystemRandom::new())
}

fn request(username: &str, pwd: &str, use_candidate: bool, buf: &mut [u8]) -> usize {
    write_binding_request(buf, &[7; 12], username, pwd.as_bytes(), use_candidate, 1, 2)
        .expect("fits")
}

/// A valid check from the peer.
fn check(nominate: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = request("srv1:peer", LOCAL_PWD, nominate, &mut buf);
    buf.truncate(n);
    buf
}

fn addr(p: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], p))
}

/// `a` handles a check from `src` (the session being at `current`).
fn handle(
    a: &mut IceAgent,
    nominate: bool,
    current: Option<SocketAddr>,
    src: SocketAddr,
    now: Instant,
) -> Result<Validated, Reject> {
    let c = check(nominate);
    let msg = Message::parse(&c).expect("parse");
    a.handle_request(&msg, current, (src, None), now, &SystemRandom::new())
}

/// A check the agent sent: where, its transaction id, the bytes.
type Sent = (SocketAddr, [u8; 12], Vec<u8>);

/// Everything `a` wants sent at `now` (the checks written out) and the transactions it
/// forgot.
fn drain(a: &mut IceAgent, now: Instant) -> (Vec<Sent>, Vec<[u8; 12]>) {
    let (mut checks, mut forgotten) = (Vec::new(), Vec::new());
    while let Some(p) = a.poll(now) {
        match p {
            Poll::Check {
                to, transaction_id, ..
            } => {
                let mut buf = vec![0u8; 256];
                let n = a
                    .write_check(&transaction_id, &mut buf)
                    .expect("check fits");
                buf.truncate(n);
                checks.push((to, transaction_id, buf));
            }
            Poll::Forget(t) => forgotten.push(t),
        }
    }
    (checks, forgotten)
}

/// The answer the peer at `mapped` gives to a check, signed with `pwd`.
fn answer(transaction_id: &[u8; 12], mapped: SocketAddr, pwd: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let n = write_binding_success(&mut buf, transaction_id, mapped, pwd.as_bytes()).expect("fits");
    buf.truncate(n);
    buf
}

fn respond(
    a: &mut IceAgent,
    resp: &[u8],
    src: SocketAddr,
    now: Instant,
) -> Result<Validated, Reject> {
    let msg = Message::parse(resp).expect("parse");
    a.handle_response(&msg, src, now)
}

/// An agent latched at `addr(1)` by a first check at `now`.
fn latched(now: Instant) -> IceAgent {
    let mut a = agent(now);
    assert_eq!(
        handle(&mut a, false, None, addr(1), now),
        Ok(Validated::Moved)
    );
    a
}

#[test]
fn first_check_fixes_the_address_and_is_answered() {
    let now = t0();
    let mut a = agent(now);
    let c = check(false);
    let msg = Message::parse(&c).expect("parse");
    assert_eq!(addressed_ufrag(&msg), Some(&b"srv1"[..]));
    assert_eq!(
        handle(&mut a, false, None, addr(1), now),
        Ok(Validated::Moved),
        "no address yet: the first valid check fixes it at once"
    );
    assert_eq!(drain(&mut a, now), (vec![], vec![]), "nothing to verify");
    assert_eq!(
        handle(&mut a, true, Some(addr(1)), addr(1), now),
        Ok(Validated::Same)
    );
    assert!(a.nominated());

    // The answer is a valid, signed success response carrying the source address.
    let mut out = [0u8; 128];
    let len = a.write_success(&msg, addr(1), &mut out).expect("answer");
    let resp = Message::parse(&out[..len]).expect("parse answer");
    assert_eq!(resp.class, Class::Success);
    assert_eq!(resp.transaction_id, [7; 12]);
    assert_eq!(resp.xor_mapped_address(), Some(addr(1)));
    assert!(resp.check_integrity(LOCAL_PWD.as_bytes()));
    assert!(resp.check_fingerprint());
}

#[test]
fn a_spoofed_nomination_moves_nothing_and_sends_a_signed_check_there() {
    let now = t0();
    let mut a = latched(now);
    assert_eq!(
        handle(&mut a, true, Some(addr(1)), addr(66), now),
        Ok(Validated::Same),
        "a nomination from an address that never answered moves nothing"
    );
    let (checks, forgotten) = drain(&mut a, now);
    assert!(forgotten.is_empty());
    let [(to, tid, raw)] = &checks[..] else {
        panic!("one check, got {checks:?}");
    };
    assert_eq!(*to, addr(66));
    let m = Message::parse(raw).expect("our check parses");
    assert_eq!((m.class, m.method), (Class::Request, METHOD_BINDING));
    assert_eq!(m.transaction_id, *tid);
    assert_eq!(m.username(), Some("peer:srv1"));
    assert!(
        m.check_integrity(PEER_PWD.as_bytes()),
        "signed with the peer's password"
    );
    assert!(!m.check_integrity(LOCAL_PWD.as_bytes()));
    assert!(m.check_fingerprint());
    assert_eq!(m.attribute(attr::ICE_CONTROLLED).map(<[u8]>::len), Some(8));
    assert_eq!(m.attribute(attr::PRIORITY).map(<[u8]>::len), Some(4));
    assert!(m.attribute(attr::ICE_CONTROLLING).is_none());
    assert!(m.attribute(attr::USE_CANDIDATE).is_none());
    assert!(m.attribute(attr::USERNAME).is_some());
    // Repeats from the same address start nothing new.
    assert_eq!(
        handle(&mut a, true, Some(addr(1)), addr(66), now),
        Ok(Validated::Same)
    );
    assert_eq!(drain(&mut a, now).0.len(), 0);

    // Another address gets its own, unpredictable transaction id.
    handle(&mut a, false, Some(addr(1)), addr(67), now).expect("valid");
    let (other, _) = drain(&mut a, now);
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].0, addr(67));
    assert_ne!(other[0].1, *tid);
}

#[test]
fn forged_or_misdirected_answers_move_nothing() {
    let now = t0();
    let mut a = latched(now);
    handle(&mut a, true, Some(addr(1)), addr(2), now).expect("valid");
    let (checks, _) = drain(&mut a, now);
    let tid = checks[0].1;

    // Unsigned.
    let mut buf = [0u8; 128];
    let mut w = Writer::new(&mut buf, Class::Success, METHOD_BINDING, &tid).expect("w");
    w.xor_mapped_address(addr(2)).expect("xma");
    w.fingerprint().expect("fp");
    let n = w.finish();
    assert_eq!(
        respond(&mut a, &buf[..n], addr(2), now),
        Err(Reject::Integrity)
    );
    // Signed with our own password: what anyone holding the answer SDP could produce.
    let ours = answer(&tid, addr(2), LOCAL_PWD);
    assert_eq!(respond(&mut a, &ours, addr(2), now), Err(Reject::Integrity));
    // Correct, but from another address than the check went to.
    let good = answer(&tid, addr(2), PEER_PWD);
    assert_eq!(
        respond(&mut a, &good, addr(3), now),
        Err(Reject::Unsolicited)
    );
    assert_eq!(
        respond(&mut a, &good, addr(1), now),
        Err(Reject::Unsolicited)
    );
    // Signed, from there, but for another transaction.
    let guess = answer(&[9; 12], addr(2), PEER_PWD);
    assert_eq!(
        respond(&mut a, &guess, addr(2), now),
        Err(Reject::Unsolicited)
    );
    // A flipped bit in the fingerprint.
    let mut bad_fp = good.clone();
    let last = bad_fp.len() - 1;
    bad_fp[last] ^= 1;
    assert_eq!(
        respond(&mut a, &bad_fp, addr(2), now),
        Err(Reject::Fingerprint)
    );
    // A request is not an answer.
    let req = check(true);
    assert_eq!(
        respond(&mut a, &req, addr(2), now),
        Err(Reject::Unsolicited)
    );
    assert!(!a.nominated());

    // The real answer: the peer nominated that address, so the session moves there.
    let later = now + Duration::from_millis(30);
    assert_eq!(respond(&mut a, &good, addr(2), later), Ok(Validated::Moved));
    assert!(a.nominated());
    let (checks, forgotten) = drain(&mut a, later);
    assert!(checks.is_empty(), "no retransmission after the answer");
    assert_eq!(forgotten, vec![tid]);
    // A duplicate answer (to a retransmission) is nothing.
    assert_eq!(
        respond(&mut a, &good, addr(2), later),
        Err(Reject::Unsolicited)
    );
}

#[test]
fn a_verified_address_waits_for_the_nomination() {
    let now = t0();
    let mut a = latched(now);
    handle(&mut a, false, Some(addr(1)), addr(2), now).expect("valid");
    let (checks, _) = drain(&mut a, now);
    let good = answer(&checks[0].1, addr(2), PEER_PWD);
    assert_eq!(
        respond(&mut a, &good, addr(2), now),
        Ok(Validated::Same),
        "answered, but the peer uses the other address"
    );
    // Nominated later: it has answered already, so the move is immediate.
    let t = now + Duration::from_secs(3);
    handle(&mut a, false, Some(addr(1)), addr(1), t).expect("valid");
    assert_eq!(
        handle(&mut a, true, Some(addr(1)), addr(2), t),
        Ok(Validated::Moved)
    );
    assert_eq!(drain(&mut a, t).0.len(), 0);
}

#[test]
fn the_latest_nomination_counts() {
    let now = t0();
    let mut a = latched(now);
    handle(&mut a, true, Some(addr(1)), addr(2), now).expect("valid");
    let (checks, _) = drain(&mut a, now);
    // The peer nominates its first address again before the answer comes.
    handle(&mut a, true, Some(addr(1)), addr(1), now).expect("valid");
    assert!(a.nominated());
    let good = answer(&checks[0].1, addr(2), PEER_PWD);
    assert_eq!(respond(&mut a, &good, addr(2), now), Ok(Validated::Same));
}

#[test]
fn a_verified_address_takes_over_when_the_current_one_goes_quiet() {
    let now = t0();
    let mut a = latched(now);
    handle(&mut a, false, Some(addr(1)), addr(2), now).expect("valid");
    let (checks, _) = drain(&mut a, now);
    let good = answer(&checks[0].1, addr(2), PEER_PWD);
    assert_eq!(respond(&mut a, &good, addr(2), now), Ok(Validated::Same));
    // NAT rebinding: the peer's checks now come from addr(2) only, never nominated again.
    let t = now + Duration::from_secs(10);
    assert_eq!(
        handle(&mut a, false, Some(addr(1)), addr(2), t),
        Ok(Validated::Same)
    );
    let t = now + QUIET;
    assert_eq!(
        handle(&mut a, false, Some(addr(1)), addr(2), t),
        Ok(Validated::Moved)
    );
    // Consent now runs from that move.
    assert!(!a.expire(t + CONSENT_TIMEOUT - Duration::from_secs(1)));
}

#[test]
fn a_quiet_address_that_never_answered_takes_nothing_over() {
    let now = t0();
    let mut a = latched(now);
    let t = now + Duration::from_secs(20);
    assert_eq!(
        handle(&mut a, true, Some(addr(1)), addr(2), t),
        Ok(Validated::Same)
    );
    let (checks, _) = drain(&mut a, t);
    assert_eq!(checks.len(), 1);
}

#[test]
fn checks_are_retransmitted_then_abandoned() {
    let now = t0();
    let mut a = latched(now);
    assert_eq!(a.poll_timeout(), None);
    handle(&mut a, true, Some(addr(1)), addr(66), now).expect("valid");
    let mut sent = Vec::new();
    let mut forgotten = Vec::new();
    let mut t = now;
    while t < now + Duration::from_secs(3) {
        let (c, f) = drain(&mut a, t);
        sent.extend(c.into_iter().map(|(to, tid, _)| (t - now, to, tid)));
        forgotten.extend(f);
        t += Duration::from_millis(50);
    }
    let at: Vec<u64> = sent.iter().map(|(d, _, _)| d.as_millis() as u64).collect();
    assert_eq!(at, vec![0, 200, 400, 600, 800], "{sent:?}");
    let tid = sent[0].2;
    assert!(
        sent.iter().all(|&(_, to, t)| to == addr(66) && t == tid),
        "one transaction"
    );
    assert_eq!(forgotten, vec![tid], "abandoned after VERIFY_TIMEOUT");
    assert_eq!(a.poll_timeout(), None);
    // A late answer is for nobody.
    let late = answer(&tid, addr(66), PEER_PWD);
    assert_eq!(
        respond(&mut a, &late, addr(66), t),
        Err(Reject::Unsolicited)
    );
    // The address may try again: a fresh transaction.
    handle(&mut a, true, Some(addr(1)), addr(66), t).expect("valid");
    let (again, _) = drain(&mut a, t);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].1, tid);
}

#[test]
fn verifications_are_bounded_per_session() {
    let now = t0();
    let mut a = latched(now);
    for p in 10..20 {
        handle(&mut a, p % 2 == 0, Some(addr(1)), addr(p), now).expect("valid");
    }
    let (checks, _) = drain(&mut a, now);
    let to: Vec<SocketAddr> = checks.iter().map(|c| c.0).collect();
    assert_eq!(to, vec![addr(10), addr(11)], "MAX_CANDIDATES, first come");
    assert_eq!(a.transactions().count(), MAX_CANDIDATES);
    // Nominations elsewhere do not displace a verification in flight.
    handle(&mut a, true, Some(addr(1)), addr(30), now).expect("valid");
    assert_eq!(drain(&mut a, now), (vec![], vec![]));

    // addr(11) answers (verified, not nominated); addr(10) is abandoned later.
    let good = answer(&checks[1].1, addr(11), PEER_PWD);
    assert_eq!(respond(&mut a, &good, addr(11), now), Ok(Validated::Same));
    assert_eq!(drain(&mut a, now).1, vec![checks[1].1]);
    // A nomination may take a verified candidate's slot: it proved nothing is lost by
    // asking it again.
    handle(&mut a, true, Some(addr(1)), addr(31), now).expect("valid");
    let (c, f) = drain(&mut a, now);
    assert_eq!(c.iter().map(|c| c.0).collect::<Vec<_>>(), vec![addr(31)]);
    assert!(
        f.is_empty(),
        "its transaction was forgotten when it answered"
    );
    assert_eq!(a.transactions().count(), MAX_CANDIDATES);
    // A check that does not nominate takes no slot while both are in flight.
    handle(&mut a, false, Some(addr(1)), addr(32), now).expect("valid");
    assert_eq!(drain(&mut a, now).0.len(), 0);
}

#[test]
fn without_the_peer_password_nothing_moves() {
    let now = t0();
    let mut c = creds();
    c.remote_pwd.clear();
    let mut a = IceAgent::new(&c, now, &SystemRandom::new());
    assert_eq!(
        handle(&mut a, false, None, addr(1), now),
        Ok(Validated::Moved)
    );
    assert_eq!(
        handle(&mut a, true, Some(addr(1)), addr(2), now),
        Ok(Validated::Same)
    );
    assert_eq!(drain(&mut a, now), (vec![], vec![]));
}

#[test]
fn bad_checks_are_rejected_and_change_nothing() {
    let now = t0();
    let mut a = agent(now);
    let rng = SystemRandom::new();
    let mut buf = [0u8; 256];
    let n = request("srv1:peer", "wrong-password", true, &mut buf);
    let msg = Message::parse(&buf[..n]).expect("parse");
    assert_eq!(
        a.handle_request(&msg, None, (addr(1), None), now, &rng),
        Err(Reject::Integrity)
    );
    // Signed with the peer's password: a check goes the other way.
    let n = request("srv1:peer", PEER_PWD, true, &mut buf);
    let msg = Message::parse(&buf[..n]).expect("parse");
    assert_eq!(
        a.handle_request(&msg, None, (addr(1), None), now, &rng),
        Err(Reject::Integrity)
    );
    let n = request("srv1:other", LOCAL_PWD, true, &mut buf);
    let msg = Message::parse(&buf[..n]).expect("parse");
    assert_eq!(
        a.handle_request(&msg, None, (addr(1), None), now, &rng),
        Err(Reject::Username)
    );
    // A flipped bit in the fingerprint.
    let n = request("srv1:peer", LOCAL_PWD, true, &mut buf);
    buf[n - 1] ^= 1;
    let msg = Message::parse(&buf[..n]).expect("parse");
    assert_eq!(
        a.handle_request(&msg, None, (addr(1), None), now, &rng),
        Err(Reject::Fingerprint)
    );
    // An answer is not a request.
    let resp = answer(&[7; 12], addr(1), LOCAL_PWD);
    let msg = Message::parse(&resp).expect("parse");
    assert_eq!(
        a.handle_request(&msg, None, (addr(1), None), now, &rng),
        Err(Reject::NotARequest)
    );
    assert!(!a.nominated());
    // Consent never given: expires 30 s after creation, and reports it once.
    assert!(!a.expire(now + Duration::from_secs(29)));
    assert!(a.expire(now + CONSENT_TIMEOUT));
    assert!(!a.expire(now + Duration::from_secs(60)));
}

#[test]
fn consent_is_refreshed_by_valid_checks_from_the_address_only() {
    let now = t0();
    let mut a = agent(now);
    let later = now + Duration::from_secs(25);
    handle(&mut a, true, None, addr(1), later).expect("valid");
    assert!(!a.expire(now + Duration::from_secs(50)));
    // Valid checks from another address (a spoofer, or a candidate the peer is not using)
    // keep nothing alive for addr(1).
    for s in [30, 40, 50] {
        let t = later + Duration::from_secs(s);
        handle(&mut a, false, Some(addr(1)), addr(2), t).expect("valid");
        drain(&mut a, t);
    }
    assert!(a.expire(later + CONSENT_TIMEOUT));
}

#[test]
fn consent_of_a_verified_candidate_lapses_on_its_own() {
    let now = t0();
    let mut a = latched(now);
    handle(&mut a, false, Some(addr(1)), addr(2), now).expect("valid");
    let (checks, _) = drain(&mut a, now);
    let good = answer(&checks[0].1, addr(2), PEER_PWD);
    assert_eq!(respond(&mut a, &good, addr(2), now), Ok(Validated::Same));
    // The peer keeps its address alive but stops checking addr(2).
    let t = now + CONSENT_TIMEOUT;
    handle(&mut a, false, Some(addr(1)), addr(1), t).expect("valid");
    assert!(!a.expire(t));
    // A nomination of addr(2) now needs a fresh answer.
    assert_eq!(
        handle(&mut a, true, Some(addr(1)), addr(2), t),
        Ok(Validated::Same)
    );
    let (checks, _) = drain(&mut a, t);
    assert_eq!(checks.len(), 1);
}
