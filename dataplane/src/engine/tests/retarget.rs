//! A relay-in pointed at a new source (`WorkerCommand::RetargetRelayIn`): the viewers keep
//! their SSRC and their sequence numbers and timestamps go on across the switch; the new
//! source is asked for a keyframe under the new link key; the old source is shut out.

use super::relay::{add_relay_in, link, K_BACK, K_FWD, LINK, SOURCE};
use super::*;

/// The new source's link keys (media forward, feedback back).
const K2_FWD: u8 = 8;
const K2_BACK: u8 = 9;
const NEW_SSRC: u32 = 0x2222_2222;
/// The viewer's port; its media key is `[VIEWER as u8; 28]` (`add_sub`).
const VIEWER: u64 = 2;

/// Link media of `ssrc`: a 20 ms frame at 90 kHz.
fn packet(ctx: &mut Context, ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
    let mut b = vec![0u8; 12 + 200 + 32];
    b[0] = 0x80;
    b[1] = 96;
    b[2..4].copy_from_slice(&seq.to_be_bytes());
    b[4..8].copy_from_slice(&ts.to_be_bytes());
    b[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let n = ctx.protect_rtp(&mut b, 12 + 200).expect("protect");
    b.truncate(n);
    b
}

/// (SSRC, sequence, timestamp) of every packet the viewer got, in order.
fn viewer_got(out: &Capture) -> Vec<(u32, u16, u32)> {
    let mut ctx = Context::new(LINK, &[VIEWER as u8; 28]).expect("ctx");
    out.sent
        .iter()
        .filter(|(d, _)| *d == addr(6002))
        .map(|(_, bytes)| {
            let mut b = bytes.clone();
            let n = ctx.unprotect_rtp(&mut b).expect("the viewer's key");
            let h = rtp::Header::parse(&b[..n]).expect("rtp");
            (h.ssrc, h.sequence, h.timestamp)
        })
        .collect()
}

/// The media SSRCs of the PLIs sent to `dst`, opened with `ctx`.
fn plis(out: &Capture, dst: SocketAddr, ctx: &mut Context) -> Vec<u32> {
    let mut got = Vec::new();
    for (_, bytes) in out.sent.iter().filter(|(d, _)| *d == dst) {
        let mut b = bytes.clone();
        let Ok(n) = ctx.unprotect_rtcp(&mut b) else {
            continue;
        };
        for p in rtcp::compound(&b[..n]) {
            if let Ok(rtcp::Packet::Pli { media_ssrc, .. }) = p {
                got.push(media_ssrc);
            }
        }
    }
    got
}

#[test]
fn viewers_numbering_goes_on_across_a_change_of_source() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_relay_in(e, 1, None);
    add_sub(e, VIEWER, 6002, LINK);
    let mut out = Capture::default();
    let mut old = link(K_FWD);
    let ms = |n: u64| t0() + Duration::from_millis(n);
    for k in 0..30u16 {
        let mut p = packet(
            &mut old,
            PUB_SSRC,
            65_520u16.wrapping_add(k),
            7_000 + 1800 * u32::from(k),
        );
        e.handle_relay_datagram(&mut p, addr(SOURCE), ms(20 * u64::from(k)), &mut out);
    }
    let before = viewer_got(&out);
    assert_eq!(before.len(), 30);
    let (ssrc, last_seq, last_ts) = *before.last().expect("got some");

    // The source died; 1.5 s after its last packet the new one sends.
    e.handle_command(
        WorkerCommand::RetargetRelayIn {
            id: SessionId(1),
            ssrcs: vec![NEW_SSRC],
            srtp: keys(LINK, K2_FWD, K2_BACK),
            simulcast: None,
        },
        ms(1000),
        &mut out,
    );
    assert_eq!(e.poll_event(), None, "not answered");
    out.sent.clear();
    let new_source = addr(SOURCE + 1);
    // The old source's key no longer opens anything, from its address or any other.
    let mut stale = packet(&mut old, PUB_SSRC, 20, 61_000);
    e.handle_relay_datagram(&mut stale, addr(SOURCE), ms(1500), &mut out);
    assert_eq!(get(&f.stats, 0, Counter::DropRelayUnauthenticated), 1);
    assert!(out.sent.is_empty());

    let mut new = link(K2_FWD);
    // The old source's last packet came at 580 ms; the new source's first at 1580 ms.
    for k in 0..20u16 {
        let mut p = packet(
            &mut new,
            NEW_SSRC,
            300 + k,
            4_000_000_000u32.wrapping_add(1800 * u32::from(k)),
        );
        let at = ms(1580 + 20 * u64::from(k));
        e.handle_relay_datagram(&mut p, new_source, at, &mut out);
    }
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Latched {
            id: SessionId(1),
            remote: new_source
        }),
        "latched again, on the new source"
    );
    let after = viewer_got(&out);
    assert_eq!(after.len(), 20);
    assert!(
        after.iter().all(|&(s, _, _)| s == ssrc),
        "the viewer's SSRC stays"
    );
    assert_eq!(after[0].1, last_seq.wrapping_add(1), "sequence goes on");
    assert_eq!(
        after[0].2.wrapping_sub(last_ts),
        90 * 1000,
        "the timestamp moves on by the 1 s without media (580 ms → 1580 ms)"
    );
    for w in after.windows(2) {
        assert_eq!(w[1].1, w[0].1.wrapping_add(1));
        assert_eq!(w[1].2.wrapping_sub(w[0].2), 1800);
    }
    // A keyframe is asked of the new source under its key, naming its SSRC; the seq jump
    // is no loss (nothing NACKed).
    let mut back = link(K2_BACK);
    assert_eq!(plis(&out, new_source, &mut back), vec![NEW_SSRC]);
    let mut old_back = link(K_BACK);
    assert!(plis(&out, new_source, &mut old_back).is_empty());
}

#[test]
fn retarget_of_an_unknown_or_other_session_changes_nothing() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_relay_in(e, 1, None);
    add_sub(e, VIEWER, 6002, LINK);
    let mut out = Capture::default();
    for id in [7, VIEWER] {
        e.handle_command(
            WorkerCommand::RetargetRelayIn {
                id: SessionId(id),
                ssrcs: Vec::new(),
                srtp: keys(LINK, K2_FWD, K2_BACK),
                simulcast: None,
            },
            t0(),
            &mut out,
        );
    }
    // A bad key leaves the old source in place.
    e.handle_command(
        WorkerCommand::RetargetRelayIn {
            id: SessionId(1),
            ssrcs: Vec::new(),
            srtp: SrtpKeys {
                profile: LINK,
                remote: vec![1; 3],
                local: vec![2; 3],
            },
            simulcast: None,
        },
        t0(),
        &mut out,
    );
    assert_eq!(e.poll_event(), None);
    let mut p = packet(&mut link(K_FWD), PUB_SSRC, 1, 1);
    e.handle_relay_datagram(&mut p, addr(SOURCE), t0(), &mut out);
    assert_eq!(viewer_got(&out).len(), 1, "still fed by the old key");
}

#[test]
fn a_new_publisher_of_a_watched_stream_continues_the_viewers_numbering() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_pub(e, 1, Some(addr(5000)), LINK);
    add_sub(e, VIEWER, 6002, LINK);
    let mut out = Capture::default();
    let mut first = Context::new(LINK, &[1; 28]).expect("ctx");
    let ms = |n: u64| t0() + Duration::from_millis(n);
    for k in 0..20u16 {
        let mut p = packet(&mut first, PUB_SSRC, 100 + k, 1800 * u32::from(k));
        e.handle_datagram(&mut p, addr(5000), ms(20 * u64::from(k)), &mut out);
    }
    let before = viewer_got(&out);
    let (ssrc, last_seq, last_ts) = *before.last().expect("got some");
    // The publisher leaves (its node moved it, or it reconnected) and comes back as a new
    // session with new SSRCs and numbering; the viewer stayed.
    e.handle_command(
        WorkerCommand::Remove { id: SessionId(1) },
        ms(400),
        &mut out,
    );
    e.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(3),
            stream: STREAM,
            remote: Some(addr(5001)),
            ssrcs: vec![NEW_SSRC],
            clock_rates: vec![90000],
            twcc_ext: None,
            srtp: Some(keys(LINK, 1, 2)),
            ice: None,
            simulcast: None,
            uplink: Vec::new(),
        },
        ms(900),
        &mut out,
    );
    while e.poll_event().is_some() {}
    out.sent.clear();
    let mut second = Context::new(LINK, &[1; 28]).expect("ctx");
    for k in 0..5u16 {
        let mut p = packet(&mut second, NEW_SSRC, 9000 + k, 777 + 1800 * u32::from(k));
        e.handle_datagram(&mut p, addr(5001), ms(880 + 20 * u64::from(k)), &mut out);
    }
    let after = viewer_got(&out);
    assert_eq!(after.len(), 5);
    assert!(after.iter().all(|&(s, _, _)| s == ssrc));
    assert_eq!(after[0].1, last_seq.wrapping_add(1));
    assert_eq!(
        after[0].2.wrapping_sub(last_ts),
        90 * 500,
        "500 ms at 90 kHz"
    );
    // The new publisher is asked for a keyframe.
    let mut node_side = Context::new(LINK, &[2; 28]).expect("ctx");
    assert!(plis(&out, addr(5001), &mut node_side).contains(&NEW_SSRC));
}
