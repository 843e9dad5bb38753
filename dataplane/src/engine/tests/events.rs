//! Events for the slow path (issue 9 item 9): while nobody takes them, the worker's queue
//! stays bounded. An address that keeps moving is one pending event, not one per move; an
//! event for a session that went is dropped; lifecycle answers are never dropped.

use switchyard_shared::packet::stun::{Class, Message};

use super::ice_consent::{answer, latched_subscriber, PEER};
use super::*;

/// Session 2 moves to `to`: a nominated check from there, the agent's check back, its
/// answer a round trip later. Returns the time after the move.
fn move_to(e: &mut Engine, to: u16, at: Instant) -> Instant {
    let mut out = Capture::default();
    let mut nominated = check("subU", "subU-password-0123456789", true);
    e.handle_datagram(&mut nominated, addr(to), at, &mut out);
    let tid = out
        .sent
        .iter()
        .filter(|(a, _)| *a == addr(to))
        .filter_map(|(_, d)| Message::parse(d).ok())
        .find(|m| m.class == Class::Request)
        .expect("the agent checks the new address")
        .transaction_id;
    let later = at + Duration::from_millis(20);
    let mut a = answer(&tid, addr(to), PEER_PWD);
    e.handle_datagram(&mut a, addr(to), later, &mut out);
    later
}

fn drain(e: &mut Engine) -> Vec<WorkerEvent> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

/// A client flapping its nominated pair while the slow path takes nothing (before: one
/// `Latched` per move, +24 MiB in 10 s across the planes): one pending event, carrying the
/// latest address.
#[test]
fn a_flapping_address_is_one_pending_event() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let mut t = t0();
    let _publisher = latched_subscriber(e, t);
    const OTHER: u16 = 6200;
    const MOVES: u16 = 200;
    for k in 0..MOVES {
        t = move_to(e, if k % 2 == 0 { OTHER } else { PEER }, t);
    }
    let last = if MOVES % 2 == 0 { PEER } else { OTHER };
    let idx = e.by_id[&SessionId(2)];
    assert_eq!(e.sessions.get(idx).and_then(|s| s.remote), Some(addr(last)));
    assert_eq!(
        drain(e),
        vec![WorkerEvent::Latched {
            id: SessionId(2),
            remote: addr(last)
        }],
        "one event for all the moves, with the address that counts now"
    );
    assert_eq!(
        get(&f.stats, 0, Counter::WorkerEventsCoalesced),
        u64::from(MOVES) - 1
    );
}

/// A move still queued when its session is removed is dropped; the removal is not.
#[test]
fn a_pending_move_of_a_removed_session_is_dropped() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let t = t0();
    let _publisher = latched_subscriber(e, t);
    move_to(e, 6200, t);
    let mut out = Capture::default();
    e.handle_command(WorkerCommand::Remove { id: SessionId(2) }, t0(), &mut out);
    assert_eq!(drain(e), vec![WorkerEvent::Removed { id: SessionId(2) }]);
}

/// A DTLS flood from a session's validated address while the slow path takes nothing:
/// what waits is bounded by `MAX_PENDING_EVENTS` (before, the worker moved every event into
/// a vector of its own each turn, so the engine's limit never saw a full queue and the
/// vector grew without bound). Nothing the slow path already has is lost or reordered.
#[test]
fn a_dtls_flood_waits_bounded_while_the_slow_path_is_full() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddSubscriber {
            id: SessionId(5),
            stream: STREAM,
            remote: None,
            ssrcs: sub_ssrcs(80),
            payload_types: Vec::new(),
            extensions: None,
            rtx: [None; MAX_TRACKS],
            tracks: ALL_TRACKS,
            plain: false,
            srtp: None,
            ice: Some(ice_creds("subD")),
        },
        t0(),
        &mut out,
    );
    let now = t0();
    let mut first = check("subD", "subD-password-0123456789", true);
    e.handle_datagram(&mut first, addr(PEER), now, &mut out);
    // The slow path's queue: room for four events, then full for good.
    let queue = crossbeam_queue::ArrayQueue::new(4);
    let (turns, per_turn) = (50, 100);
    for turn in 0..turns {
        for k in 0..per_turn {
            let mut record = vec![22u8, 0xfe, 0xfd, turn as u8, k as u8];
            e.handle_datagram(&mut record, addr(PEER), now, &mut out);
        }
        crate::worker::hand_over(e, &queue);
        assert!(e.pending_events() <= MAX_PENDING_EVENTS, "turn {turn}");
    }
    let taken: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
    assert_eq!(
        taken[..2],
        [
            WorkerEvent::Added { id: SessionId(5) },
            WorkerEvent::Latched {
                id: SessionId(5),
                remote: addr(PEER)
            }
        ]
    );
    assert!(matches!(&taken[2], WorkerEvent::Dtls { data, .. } if data[3..] == [0, 0]));
    let kept = taken.len() - 2 + e.pending_events();
    assert_eq!(kept, MAX_PENDING_EVENTS + 2, "what fits is kept");
    assert_eq!(
        get(&f.stats, 0, Counter::DropDtls),
        (turns * per_turn - kept) as u64
    );
    // The first record that did not fit in the queue is the next one out.
    assert!(matches!(e.poll_event(), Some(WorkerEvent::Dtls { data, .. }) if data[3..] == [0, 2]));
}
