//! The engine on its own clock (issue 10): after the inputs, nothing but `poll_timeout` and
//! `handle_timeout` on virtual time drives what is due, and the deadlines only move forward,
//! so a loop that sleeps until `poll_timeout` never spins.

use super::ice_consent::{latched_subscriber, PEER};
use super::relay::{add_relay_in, link, link_packet, nacked, K_BACK, K_FWD, SOURCE};
use super::*;

/// Advance virtual time to the engine's next deadline and handle it; returns that time.
/// Checks that the deadline is not in the past and that handling it leaves nothing due.
fn step(e: &mut Engine, now: Instant, out: &mut Capture) -> Instant {
    let next = e.poll_timeout().expect("a deadline");
    assert!(next >= now, "deadlines never go back");
    e.handle_timeout(next, out);
    assert!(
        e.poll_timeout().is_none_or(|t| t > next),
        "nothing left due at {next:?}: a loop sleeping until poll_timeout would spin"
    );
    next
}

/// A packet lost on a relay link is NACKed upstream at once, then every `NACK_RETRY`, up to
/// `NACK_TRIES` times, each at the deadline the engine announced, and nothing earlier.
#[test]
fn a_relay_nack_is_retried_at_the_engines_deadlines() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_relay_in(e, 1, Some(addr(SOURCE)));
    let start = t0();
    let ms = |m: u64| start + Duration::from_millis(m);
    let mut out = Capture::default();
    // The engine's first deadline is its first round of receiver reports, at creation.
    assert_eq!(e.poll_timeout(), Some(start));
    e.handle_timeout(start, &mut out);
    assert_eq!(e.poll_timeout(), Some(start + rr::RR_INTERVAL));

    let mut fwd = link(K_FWD);
    let mut back = link(K_BACK);
    for seq in [10u16, 11, 13] {
        let mut p = link_packet(&mut fwd, seq);
        e.handle_relay_datagram(&mut p, addr(SOURCE), ms(5), &mut out);
    }
    assert_eq!(e.poll_timeout(), Some(ms(5)), "12 is missing: due at once");

    let mut now = ms(5);
    let mut nacks = Vec::new();
    while e
        .poll_timeout()
        .is_some_and(|t| t < start + rr::RR_INTERVAL)
    {
        let due = e.poll_timeout().expect("due");
        if due > now {
            // A millisecond before the deadline nothing goes out.
            let mut early = Capture::default();
            e.handle_timeout(due - Duration::from_millis(1), &mut early);
            assert!(nacked(&early.sent, addr(SOURCE), &mut back).is_empty());
        }
        let mut out = Capture::default();
        now = step(e, now, &mut out);
        assert_eq!(nacked(&out.sent, addr(SOURCE), &mut back), [12]);
        nacks.push(now.duration_since(start).as_millis());
    }
    assert_eq!(
        nacks,
        [5, 35, 65, 95],
        "at once, then every NACK_RETRY (30 ms), NACK_TRIES (4) times"
    );
    assert_eq!(
        e.poll_timeout(),
        Some(start + rr::RR_INTERVAL),
        "given up: no NACK deadline left"
    );
    assert_eq!(get(&f.stats, 0, Counter::RelayNacksSent), 4);
}

/// An ICE session nobody checks any more: on virtual time alone its consent ends 30 s
/// after the last valid check (within one sweep), and the engine says so once.
#[test]
fn consent_expires_on_the_engines_deadlines() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let start = t0();
    let _publisher = latched_subscriber(e, start);
    let mut out = Capture::default();
    let mut now = start;
    let mut refreshed = None;
    let mut wakeups = 0;
    let expired = loop {
        now = step(e, now, &mut out);
        wakeups += 1;
        if refreshed.is_none() && now >= start + Duration::from_secs(10) {
            // The peer's consent check at +10 s: consent runs from here.
            let mut c = check("subU", "subU-password-0123456789", false);
            e.handle_datagram(&mut c, addr(PEER), now, &mut out);
            refreshed = Some(now);
        }
        if let Some(ev) = e.poll_event() {
            assert_eq!(ev, WorkerEvent::ConsentExpired { id: SessionId(2) });
            break now;
        }
        assert!(wakeups < 200, "{wakeups} wake-ups and still no expiry");
    };
    let refreshed = refreshed.expect("refreshed");
    let lapse = expired.duration_since(refreshed);
    assert!(
        (ice::CONSENT_TIMEOUT..=ice::CONSENT_TIMEOUT + CONSENT_SWEEP).contains(&lapse),
        "expired {lapse:?} after the last check"
    );
    // About one wake-up a second (consent sweep and receiver reports), not a spin.
    assert!(wakeups <= 90, "{wakeups} wake-ups for 41 s");
    for _ in 0..3 {
        now = step(e, now, &mut out);
        assert_eq!(e.poll_event(), None, "reported once");
    }
}

/// Issue 10 part 4: with 100 workers, a subscriber on worker 64 gets its media from the
/// publisher on worker 0. (As a `u64` mask taken `% 64`, worker 64 was bit 0: the
/// publisher's own worker, which then sent nothing across.)
#[test]
fn media_reaches_worker_64_of_100() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let mut f = fixture(100);
    add_pub(&mut f.engines[0], 1, Some(addr(5000)), profile);
    let mut out = Capture::default();
    f.engines[0].handle_command(
        WorkerCommand::SetRemoteWorkers {
            stream: STREAM,
            workers: [64].into_iter().collect(),
        },
        t0(),
        &mut out,
    );
    f.engines[64].handle_command(
        WorkerCommand::SetPublisherWorker {
            stream: STREAM,
            worker: Some(0),
        },
        t0(),
        &mut out,
    );
    let msgs = add_sub(&mut f.engines[64], 2, 6002, profile);
    f.pump(msgs);
    let mut publisher = Context::new(profile, &[1; 28]).expect("ctx");
    let mut p = srtp_packet(&mut publisher, 1, 200);
    f.engines[0].handle_datagram(&mut p, addr(5000), t0(), &mut out);
    let msgs = std::mem::take(&mut out.to_workers);
    assert_eq!(
        msgs.iter().map(|(w, _)| *w).collect::<Vec<_>>(),
        [64],
        "one handle, to worker 64 and to no one else"
    );
    let mut delivered = Capture::default();
    for (w, msg) in msgs {
        f.engines[usize::from(w)].handle_inbound(msg, t0(), &mut delivered);
    }
    assert_eq!(delivered.sent.len(), 1);
    assert_eq!(delivered.sent[0].0, addr(6002));
}
