//! Late joiners through the engine (`prime`): a VP8 publisher on worker 0 has sent a
//! keyframe and a few delta frames; a subscriber that joins then, on the publisher's worker
//! or on another one, gets that group at once, from the keyframe, numbered continuously
//! into the live packets that follow, and no keyframe is asked of the publisher. Before any
//! keyframe, a new subscriber gets the keyframe request as it always did.

use switchyard_shared::command::{UplinkTrack, VideoCodec};

use super::uplink::add_uplink_pub;
use super::*;

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const VP8: u8 = 96;
const PUBLISHER: u16 = 5000;

/// A VP8 packet of frame `ts`: the first of its frame (`first`) carries the start of
/// partition 0, and a keyframe's has the payload header's P bit clear.
fn vp8_packet(ctx: &mut Context, seq: u16, ts: u32, (first, key): (bool, bool)) -> Vec<u8> {
    vp8_sized(ctx, seq, ts, (first, key), 72)
}

/// [`vp8_packet`] of `len` bytes of RTP.
fn vp8_sized(
    ctx: &mut Context,
    seq: u16,
    ts: u32,
    (first, key): (bool, bool),
    len: usize,
) -> Vec<u8> {
    let mut buf = vec![0u8; len + 32];
    buf[0] = 0x80;
    buf[1] = VP8;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&PUB_SSRC.to_be_bytes());
    buf[12] = if first { 0x10 } else { 0x00 };
    buf[13] = if key { 0x00 } else { 0x01 };
    for (i, b) in buf[14..len].iter_mut().enumerate() {
        *b = (i as u8) ^ (seq as u8);
    }
    let n = ctx.protect_rtp(&mut buf, len).expect("protect");
    buf.truncate(n);
    buf
}

/// A publisher on worker 0 of two (worker 1 has its subscribers too), its one track VP8.
fn two_workers() -> Fixture {
    set_up(fixture(2))
}

/// [`two_workers`] on `f`.
fn set_up(mut f: Fixture) -> Fixture {
    add_uplink_pub(
        &mut f.engines[0],
        vec![UplinkTrack {
            nack: true,
            rtx: None,
            video: Some(VideoCodec::Vp8(VP8)),
        }],
    );
    publisher_on_0_viewers_on_1(&mut f);
    f
}

/// Frames `from..to` (three packets each; frame 0 and every 100th a keyframe), sent to
/// worker 0, what went to other workers delivered there. Sequence numbers 1000 + 3 × frame.
fn frames(f: &mut Fixture, tx: &mut Context, range: std::ops::Range<u32>) -> Capture {
    let mut out = Capture::default();
    for frame in range {
        for k in 0..3u32 {
            let seq = (1000 + frame * 3 + k) as u16;
            let mut p = vp8_packet(tx, seq, frame * 3000, (k == 0, frame % 100 == 0));
            f.engines[0].handle_datagram(&mut p, addr(PUBLISHER), t0(), &mut out);
            // Handles go home as they would, or the publisher's pool runs dry.
            f.pump_into(&mut out);
        }
    }
    out
}

/// Subscriber `id` (port 6000 + id, keys as `add_sub`'s) joins on worker `w`; what the
/// workers sent, their messages to each other delivered until none are left.
fn join(f: &mut Fixture, w: usize, id: u64) -> Capture {
    join_at(f, w, id, t0())
}

/// [`join`] at `now`.
fn join_at(f: &mut Fixture, w: usize, id: u64, now: Instant) -> Capture {
    let mut out = Capture::default();
    f.engines[w].handle_command(sub_command(id, 6000 + id as u16, PROFILE), now, &mut out);
    f.pump_at(&mut out, now);
    out
}

/// What viewer `id` got: (its sequence number, the publisher's sequence number's low
/// byte, whether the packet starts a keyframe).
fn got(out: &Capture, id: u8) -> Vec<(u16, u8, bool)> {
    let mut rx = Context::new(PROFILE, &[id; 28]).expect("ctx");
    got_with(&mut rx, &out.sent, id)
}

/// [`got`] of datagrams `sent`, decrypted with the viewer's context `rx`.
fn got_with(rx: &mut Context, sent: &[(SocketAddr, Vec<u8>)], id: u8) -> Vec<(u16, u8, bool)> {
    let mut v = Vec::new();
    for (dst, bytes) in sent {
        if *dst != addr(6000 + u16::from(id))
            || bytes.get(1).is_some_and(|&b| (200..=206).contains(&b))
        {
            continue;
        }
        let mut b = bytes.clone();
        let n = rx.unprotect_rtp(&mut b).expect("viewer decrypts");
        let h = rtp::Header::parse(&b[..n]).expect("rtp");
        let p = &b[h.payload_offset..n];
        // `vp8_packet`'s pattern starts with the publisher's sequence number's low byte.
        v.push((h.sequence, p[2], p[0] & 0x10 != 0 && p[1] & 0x01 == 0));
    }
    v
}

fn continuous(v: &[(u16, u8, bool)]) -> bool {
    v.windows(2)
        .all(|w| w[1].0 == w[0].0.wrapping_add(1) && w[1].1 == w[0].1.wrapping_add(1))
}

#[test]
fn a_late_joiner_gets_the_group_since_the_keyframe_at_once() {
    let mut f = two_workers();
    let mut tx = Context::new(PROFILE, &[1; 28]).expect("ctx");
    // Frames 0..=104: keyframes at 0 and 100, so the group is frames 100..=104: 15
    // packets from 1300.
    frames(&mut f, &mut tx, 0..105);
    let plis = |f: &Fixture| get(&f.stats, 0, Counter::PliForwarded);
    let before = plis(&f);
    // The second joiner comes a frame later: its group has grown by that frame.
    for (w, id, len) in [(0usize, 2u64, 15usize), (1, 3, 18)] {
        let out = join(&mut f, w, id);
        let v = got(&out, id as u8);
        assert_eq!(v.len(), len, "worker {w}: the whole group at once: {v:?}");
        assert!(v[0].2, "from the keyframe: {v:?}");
        assert_eq!(v[0].1, (1300u16 & 0xff) as u8);
        assert!(continuous(&v), "{v:?}");
        // The live packets go on from there, numbered on.
        let frame = 105 + w as u32;
        let live = frames(&mut f, &mut tx, frame..frame + 1);
        let mut all = v;
        all.extend(got(&live, id as u8));
        assert_eq!(all.len(), len + 3, "{all:?}");
        assert!(continuous(&all), "{all:?}");
    }
    assert_eq!(
        plis(&f),
        before,
        "nobody asked the publisher for a keyframe"
    );
    assert_eq!(get(&f.stats, 0, Counter::LateJoinStarts), 2);
    assert_eq!(
        get(&f.stats, 0, Counter::LateJoinPackets) + get(&f.stats, 1, Counter::LateJoinPackets),
        33
    );
}

/// Before the first keyframe there is no group: the new subscriber gets what comes live
/// and a keyframe is asked for, as before.
#[test]
fn without_a_keyframe_a_joiner_asks_for_one() {
    let mut f = two_workers();
    let mut tx = Context::new(PROFILE, &[1; 28]).expect("ctx");
    let mut out = Capture::default();
    for k in 0..3u16 {
        let mut p = vp8_packet(&mut tx, 500 + k, 9000, (k == 0, false));
        f.engines[0].handle_datagram(&mut p, addr(PUBLISHER), t0(), &mut out);
    }
    let before = get(&f.stats, 0, Counter::PliForwarded);
    for (w, id) in [(0usize, 2u64), (1, 3)] {
        let out = join(&mut f, w, id);
        assert!(got(&out, id as u8).is_empty());
    }
    assert!(get(&f.stats, 0, Counter::PliForwarded) > before);
    assert_eq!(get(&f.stats, 0, Counter::LateJoinStarts), 0);
}

/// A 2 s group is not handed to a new viewer in one burst: the replay is paced at four
/// times the rate the group came at, the live packets that come meanwhile join its queue,
/// and the viewer reaches the live edge about a third of the group's length later, its
/// numbering continuous throughout. The same on the publisher's worker and on another,
/// and for a group that outgrows the cache while it is replayed.
#[test]
fn a_late_joiners_replay_is_paced_and_catches_up_with_the_live_edge() {
    // (worker, frames of group, last frame, caught up between .. ms): a 2 s group, and a
    // 3 s one that grows past the cache's 1,024 packets while it is replayed (its live
    // packets must still wait for the replay: the group is no use to a new start by then,
    // but this one is under way).
    for (w, group, end, (lo, hi)) in [
        (0usize, 60u32, 105u32, (450u64, 900u64)),
        (1, 60, 105, (450, 900)),
        (0, 90, 150, (700, 1300)),
        (1, 90, 150, (700, 1300)),
    ] {
        let mut f = set_up(fixture_limited(
            2,
            Limits {
                nack_cache: 1024,
                in_flight: 64,
                ..test_limits()
            },
        ));
        let mut tx = Context::new(PROFILE, &[1; 28]).expect("ctx");
        let frame_at = |frame: u32| t0() + Duration::from_micros(u64::from(frame) * 33_333);
        // 30 frames/s of ten 1,100-byte packets (2.6 Mbit/s); one keyframe, at frame 0.
        let mut sent_at = std::collections::HashMap::new();
        let mut send = |f: &mut Fixture, frame: u32, out: &mut Capture| {
            let now = frame_at(frame);
            for k in 0..10u32 {
                let seq = (1000 + frame * 10 + k) as u16;
                let mut p = vp8_sized(&mut tx, seq, frame * 3000, (k == 0, frame == 0), 1100);
                f.engines[0].handle_datagram(&mut p, addr(PUBLISHER), now, out);
                f.pump_at(out, now);
                sent_at.insert(seq as u8, now);
            }
        };
        let mut sink = Capture::default();
        for frame in 0..group {
            send(&mut f, frame, &mut sink);
        }
        let plis = get(&f.stats, 0, Counter::PliForwarded);
        // Joins as frame `group` is due: 600 packets (660 kB, 2 s) of group, or 900.
        let id = 2u8;
        let joined = frame_at(group) - Duration::from_millis(1);
        let first = join_at(&mut f, w, u64::from(id), joined);
        let mut rx = Context::new(PROFILE, &[id; 28]).expect("ctx");
        let burst = got_with(&mut rx, &first.sent, id);
        assert!(
            (1..=8).contains(&burst.len()),
            "worker {w}: a few packets at once, not the group: {}",
            burst.len()
        );
        assert!(burst[0].2, "from the keyframe");
        // Then live frames and the replay's timer, in time order, for 1.5 s.
        let mut viewer: Vec<(Instant, (u16, u8, bool))> =
            burst.into_iter().map(|p| (joined, p)).collect();
        let mut frame = group;
        loop {
            let due = f.engines[0].poll_timeout();
            let next_frame = frame_at(frame);
            let mut out = Capture::default();
            let now = match due {
                Some(t) if t < next_frame => {
                    f.engines[0].handle_timeout(t, &mut out);
                    f.pump_at(&mut out, t);
                    t
                }
                _ => {
                    if frame == end {
                        break;
                    }
                    send(&mut f, frame, &mut out);
                    frame += 1;
                    next_frame
                }
            };
            for p in got_with(&mut rx, &out.sent, id) {
                viewer.push((now, p));
            }
        }
        let seqs: Vec<_> = viewer.iter().map(|(_, p)| *p).collect();
        assert!(continuous(&seqs), "worker {w}: no gap, no repeat");
        assert_eq!(seqs.first().map(|p| p.1), Some((1000u16 & 0xff) as u8));
        assert_eq!(
            seqs.len(),
            end as usize * 10,
            "the group and every live packet since"
        );
        // The rate: any 100 ms of the replay carries at most 4 × 2.6 Mbit/s of it and one
        // burst (140 kB), where unpaced the whole group went at once.
        for (i, (t, _)) in viewer.iter().enumerate() {
            let n = viewer[i..]
                .iter()
                .take_while(|(u, _)| *u < *t + Duration::from_millis(100))
                .count();
            assert!(n * 1100 <= 150_000, "worker {w}: {n} packets in 100 ms");
        }
        // Caught up: from some point on every packet goes as it comes.
        let live_from = viewer
            .iter()
            .rposition(|(t, p)| sent_at.get(&p.1) != Some(t))
            .map_or(0, |i| i + 1);
        let caught_up = viewer[live_from].0 - joined;
        assert!(
            caught_up > Duration::from_millis(lo) && caught_up < Duration::from_millis(hi),
            "worker {w}, {group} frames: live after {caught_up:?} (a third of the group at \
             4 times its rate)"
        );
        assert_eq!(
            get(&f.stats, 0, Counter::PliForwarded),
            plis,
            "no keyframe asked"
        );
        assert_eq!(get(&f.stats, 0, Counter::LateJoinAborted), 0);
    }
}

/// A replay that cannot go on (here: the subscriber's worker's queue is full) ends, and
/// the subscriber is asked a keyframe for, as without a group.
#[test]
fn a_replay_that_cannot_finish_asks_for_a_keyframe() {
    let mut f = two_workers();
    let mut tx = Context::new(PROFILE, &[1; 28]).expect("ctx");
    frames(&mut f, &mut tx, 0..105);
    let before = get(&f.stats, 0, Counter::PliForwarded);
    let mut out = Capture::default();
    f.engines[1].handle_command(sub_command(3, 6003, PROFILE), t0(), &mut out);
    let [(0, prime @ Inbound::Prime { .. })] = <[_; 1]>::try_from(out.to_workers).expect("one")
    else {
        panic!("the subscriber's worker asks the publisher's for the group");
    };
    let mut full = Capture {
        refuse: true,
        ..Capture::default()
    };
    f.engines[0].handle_inbound(prime, t0(), &mut full);
    assert_eq!(get(&f.stats, 0, Counter::LateJoinAborted), 1);
    assert!(get(&f.stats, 0, Counter::PliForwarded) > before);
    assert!(f.engines[0].replays.is_empty(), "nothing left under way");
}

/// A subscriber that leaves while its replay is under way ends the replay quietly: no
/// keyframe is asked for it, and it does not count as a replay that could not finish.
#[test]
fn a_subscriber_that_leaves_mid_replay_ends_it_quietly() {
    let mut f = two_second_group(Limits {
        nack_cache: 1024,
        in_flight: 64,
        ..test_limits()
    });
    let plis = get(&f.stats, 0, Counter::PliForwarded);
    join_at(&mut f, 0, 2, at(60));
    assert!(
        !f.engines[0].replays.is_empty(),
        "a 2 s group takes a while"
    );
    let mut out = Capture::default();
    f.engines[0].handle_command(WorkerCommand::Remove { id: SessionId(2) }, at(60), &mut out);
    let due = f.engines[0].poll_timeout().expect("the replay's timer");
    f.engines[0].handle_timeout(due.max(at(61)), &mut out);
    assert!(f.engines[0].replays.is_empty());
    assert_eq!(get(&f.stats, 0, Counter::LateJoinAborted), 0);
    assert_eq!(
        get(&f.stats, 0, Counter::PliForwarded),
        plis,
        "no keyframe asked"
    );
}

/// A crowd joining at once: the first `MAX_REPLAYS` start from the group, the rest from a
/// keyframe (counted), so the worker never sends more than that many replays together.
#[test]
fn a_crowd_beyond_max_replays_starts_from_a_keyframe() {
    use super::super::prime::MAX_REPLAYS;
    let mut f = two_second_group(Limits {
        nack_cache: 1024,
        in_flight: 64,
        max_sessions: 128,
        ..test_limits()
    });
    let plis = get(&f.stats, 0, Counter::PliForwarded);
    for id in 2..(2 + MAX_REPLAYS as u64 + 3) {
        join_at(&mut f, 0, id, at(60));
    }
    assert_eq!(f.engines[0].replays.len(), MAX_REPLAYS);
    assert_eq!(
        get(&f.stats, 0, Counter::LateJoinStarts),
        MAX_REPLAYS as u64
    );
    assert_eq!(get(&f.stats, 0, Counter::LateJoinBusy), 3);
    assert!(
        get(&f.stats, 0, Counter::PliForwarded) > plis,
        "the rest ask a keyframe"
    );
}

/// The frame at 30 frames/s with index `frame`.
fn at(frame: u32) -> Instant {
    t0() + Duration::from_micros(u64::from(frame) * 33_333)
}

/// Two workers with `limits`, the publisher on worker 0 having sent 2 s of 30 frames/s of
/// ten 1,100-byte packets each (one keyframe, at frame 0): a 600-packet group, at frame 60.
fn two_second_group(limits: Limits) -> Fixture {
    let mut f = set_up(fixture_limited(2, limits));
    let mut tx = Context::new(PROFILE, &[1; 28]).expect("ctx");
    let mut out = Capture::default();
    for frame in 0..60u32 {
        for k in 0..10u32 {
            let seq = (1000 + frame * 10 + k) as u16;
            let mut p = vp8_sized(&mut tx, seq, frame * 3000, (k == 0, frame == 0), 1100);
            f.engines[0].handle_datagram(&mut p, addr(PUBLISHER), at(frame), &mut out);
            f.pump_at(&mut out, at(frame));
        }
    }
    f
}
