//! Per-viewer bandwidth estimation in the engine: what a viewer with transport-cc is sent
//! carries consecutive transport-wide numbers, its feedback reaches its estimator, and the
//! estimate (here a REMB, the simplest to steer) picks its simulcast layer.

use switchyard_shared::packet::twcc;

use super::simulcast::{viewer_packets, Run, F, Q};
use super::*;

const TWCC_EXT: u8 = 5;
const VIEWER_SSRC: u32 = 0xabc;

fn enable(r: &mut Run) {
    r.f.engines[0].handle_command(
        WorkerCommand::EnableBwe {
            id: SessionId(2),
            twcc_ext: TWCC_EXT,
        },
        r.now,
        &mut r.out,
    );
}

/// The transport-wide numbers on what the viewer (port 6002) got, in order.
fn numbers(out: &Capture) -> Vec<u16> {
    let mut rx = Context::new(super::simulcast::PROFILE, &[2; 28]).expect("ctx");
    let mut v = Vec::new();
    for (dst, bytes) in &out.sent {
        if *dst != addr(6002) || bytes.get(1).is_some_and(|&b| (200..=206).contains(&b)) {
            continue;
        }
        let mut b = bytes.clone();
        let n = rx.unprotect_rtp(&mut b).expect("viewer decrypts");
        let h = rtp::Header::parse(&b[..n]).expect("rtp");
        let at = rtp::find_extension(&b[..n], &h, TWCC_EXT).expect("transport-wide number");
        v.push(u16::from_be_bytes([b[at.start], b[at.start + 1]]));
    }
    v
}

fn send_rtcp(r: &mut Run, tx: &mut Context, mut fb: Vec<u8>, n: usize) {
    let n = tx.protect_rtcp(&mut fb, n).expect("protect");
    fb.truncate(n);
    r.f.engines[0].handle_datagram(&mut fb, addr(6002), r.now, &mut r.out);
}

fn remb(bps: u64) -> (Vec<u8>, usize) {
    let mut exp = 0u32;
    let mut mantissa = bps;
    while mantissa >= 1 << 18 {
        mantissa >>= 1;
        exp += 1;
    }
    let mut b = vec![0x8f, 206, 0, 5];
    b.extend_from_slice(&VIEWER_SSRC.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(b"REMB");
    let br = (exp << 18) | mantissa as u32;
    b.push(1);
    b.extend_from_slice(&br.to_be_bytes()[1..]);
    b.extend_from_slice(&0x33u32.to_be_bytes());
    let n = b.len();
    b.resize(n + 64, 0);
    (b, n)
}

/// A second of frames of every layer, a keyframe of each every 10 frames.
fn second(r: &mut Run) {
    for i in 0..30 {
        r.frames(&[0, 1, 2], i % 10 == 0);
    }
}

#[test]
fn what_a_viewer_is_sent_is_numbered_and_its_feedback_makes_an_estimate() {
    let mut r = Run::with_uplink(Vec::new());
    enable(&mut r);
    second(&mut r);
    let seqs = numbers(&r.out);
    assert!(seqs.len() >= 25, "{}", seqs.len());
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1), "consecutive: {seqs:?}");
    }
    // The viewer reports every packet received, 1 ms apart.
    let arrivals: Vec<Option<i64>> = (0..seqs.len() as i64)
        .map(|i| Some(10_000 + i * 1_000))
        .collect();
    let mut fb = vec![0u8; twcc::MAX_LEN];
    let n = twcc::write(&mut fb, VIEWER_SSRC, 0x33, seqs[0], 0, &arrivals).expect("feedback");
    fb.resize(n + 64, 0);
    let mut tx = Context::new(super::simulcast::PROFILE, &[3; 28]).expect("ctx");
    send_rtcp(&mut r, &mut tx, fb, n);
    r.now += Duration::from_millis(200);
    r.f.engines[0].handle_timeout(r.now, &mut r.out);
    let c = r.f.stats.find(0, 2).expect("slot");
    assert!(c.estimate_bps.is_some_and(|e| e >= 30_000), "{c:?}");
    assert!(
        c.layers[1].is_some(),
        "the video track's layer is published: {c:?}"
    );
    // A malformed feedback is counted and changes nothing.
    let mut bad = vec![0x8f, 205, 0, 3];
    bad.extend_from_slice(&VIEWER_SSRC.to_be_bytes());
    bad.extend_from_slice(&0x33u32.to_be_bytes());
    bad.extend_from_slice(&[0, 1, 0, 9]);
    let n = bad.len();
    bad.resize(n + 64, 0);
    let before = get(&r.f.stats, 0, Counter::DropMalformed);
    send_rtcp(&mut r, &mut tx, bad, n);
    assert_eq!(get(&r.f.stats, 0, Counter::DropMalformed), before + 1);
}

#[test]
fn the_estimate_picks_the_layer_that_fits() {
    let mut r = Run::with_uplink(Vec::new());
    enable(&mut r);
    second(&mut r);
    second(&mut r);
    let mut rx = Context::new(super::simulcast::PROFILE, &[2; 28]).expect("ctx");
    let got = viewer_packets(&r.out, &mut rx);
    assert_eq!(
        got.last().map(|g| g.layer),
        Some(F),
        "every layer fits 300 kbit/s"
    );
    // The viewer says 40 kbit/s: less than any layer once audio's share is kept, so the
    // lowest, taken at its next keyframe.
    let mut tx = Context::new(super::simulcast::PROFILE, &[3; 28]).expect("ctx");
    let (b, n) = remb(40_000);
    send_rtcp(&mut r, &mut tx, b, n);
    // Far over the budget: the current layer stops at once instead of queueing in front
    // of q's keyframe.
    r.out = Capture::default();
    r.frames(&[0, 1, 2], false);
    assert!(viewer_packets(&r.out, &mut rx).is_empty());
    r.out = Capture::default();
    second(&mut r);
    let got = viewer_packets(&r.out, &mut rx);
    assert_eq!(got.last().map(|g| g.layer), Some(Q), "{got:?}");
    let (b, n) = remb(2_000_000);
    send_rtcp(&mut r, &mut tx, b, n);
    r.out = Capture::default();
    second(&mut r);
    let got = viewer_packets(&r.out, &mut rx);
    assert_eq!(got.last().map(|g| g.layer), Some(F), "{got:?}");
    for w in got.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "continuous across switches"
        );
    }
}
