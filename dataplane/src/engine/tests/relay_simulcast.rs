//! A simulcast stream over a relay link: every layer crosses unchanged, the far node's
//! relay-in tells the layers apart with the source publisher's map, its viewers get one
//! layer each with continuous numbering, and the far node's repair and keyframe requests
//! name the layer's SSRC upstream, where the relay-out finds that layer's cache and the
//! publisher's SSRC for it.

use super::relay::{add_relay_out, K_BACK, K_FWD, LINK, SOURCE, TARGET};
use super::simulcast::{sim_spec, Run, F, H, PROFILE, Q};
use super::*;

const RELAY_IN: u64 = 20;
const VIEWER: u64 = 21;
const VIEWER_PORT: u16 = 6021;

struct Far {
    f: Fixture,
    out: Capture,
}

fn far() -> Far {
    let mut f = fixture(1);
    let mut out = Capture::default();
    f.engines[0].handle_command(
        WorkerCommand::AddRelayIn {
            id: SessionId(RELAY_IN),
            stream: STREAM,
            remote: Some(addr(SOURCE)),
            ssrcs: Vec::new(),
            srtp: keys(LINK, K_FWD, K_BACK),
            simulcast: Some(sim_spec()),
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        f.engines[0].poll_event(),
        Some(WorkerEvent::Added {
            id: SessionId(RELAY_IN)
        })
    );
    add_sub(&mut f.engines[0], VIEWER, VIEWER_PORT, PROFILE);
    Far { f, out }
}

/// The origin's link packets so far to the far node (all but those `drop` refuses), and
/// back: the far node's RTCP over the link to the origin.
fn carry(r: &mut Run, far: &mut Far, drop: &mut dyn FnMut(&[u8]) -> bool) {
    let link: Vec<Vec<u8>> = r
        .out
        .sent
        .iter()
        .filter(|(d, _)| *d == addr(TARGET))
        .map(|(_, b)| b.clone())
        .collect();
    r.out = Capture::default();
    for mut b in link {
        if drop(&b) {
            continue;
        }
        far.f.engines[0].handle_relay_datagram(&mut b, addr(SOURCE), r.now, &mut far.out);
    }
    // NACKs upstream go out on the far node's timer.
    if far.f.engines[0].poll_timeout().is_some_and(|t| t <= r.now) {
        far.f.engines[0].handle_timeout(r.now, &mut far.out);
    }
    let back: Vec<Vec<u8>> = far
        .out
        .sent
        .iter()
        .filter(|(d, b)| *d == addr(SOURCE) && b.get(1).is_some_and(|&t| (200..=206).contains(&t)))
        .map(|(_, b)| b.clone())
        .collect();
    for mut b in back {
        r.f.engines[0].handle_relay_datagram(&mut b, addr(TARGET), r.now, &mut r.out);
    }
}

/// (sequence, the layer's SSRC from the payload) of what the far viewer got.
fn far_viewer(out: &Capture) -> Vec<(u16, u32)> {
    let mut rx = Context::new(PROFILE, &[VIEWER as u8; 28]).expect("ctx");
    out.sent
        .iter()
        .filter(|(d, b)| {
            *d == addr(VIEWER_PORT) && !b.get(1).is_some_and(|&t| (200..=206).contains(&t))
        })
        .map(|(_, b)| {
            let mut b = b.clone();
            let n = rx.unprotect_rtp(&mut b).expect("viewer decrypts");
            let h = rtp::Header::parse(&b[..n]).expect("rtp");
            let layer = u32::from_be_bytes(b[n - 4..n].try_into().expect("4 bytes"));
            (h.sequence, layer)
        })
        .collect()
}

/// RTCP the far node sent upstream, decrypted: (PLI media SSRCs, NACKs as (SSRC, seq)).
fn upstream(out: &Capture) -> (Vec<u32>, Vec<(u32, u16)>) {
    let mut ctx = Context::new(LINK, &[K_BACK; 28]).expect("ctx");
    let (mut plis, mut nacks) = (Vec::new(), Vec::new());
    for (_, b) in out.sent.iter().filter(|(d, _)| *d == addr(SOURCE)) {
        let mut b = b.clone();
        let n = ctx.unprotect_rtcp(&mut b).expect("link key");
        for p in rtcp::compound(&b[..n]) {
            match p {
                Ok(rtcp::Packet::Pli { media_ssrc, .. }) => plis.push(media_ssrc),
                Ok(rtcp::Packet::Nack(nack)) => {
                    nacks.extend(nack.lost().map(|s| (nack.media_ssrc, s)));
                }
                _ => {}
            }
        }
    }
    (plis, nacks)
}

#[test]
fn far_viewers_get_one_layer_and_repair_names_the_layer_upstream() {
    let mut r = Run::with_uplink(Vec::new());
    add_relay_out(&mut r.f.engines[0], 9, addr(TARGET));
    let mut far = far();
    r.frames(&[0, 1, 2], true);
    for _ in 0..5 {
        r.frames(&[0, 1, 2], false);
    }
    carry(&mut r, &mut far, &mut |_| false);
    let got = far_viewer(&far.out);
    assert_eq!(got.len(), 6, "one layer of three: {got:?}");
    assert!(got.iter().all(|g| g.1 == F), "the 1280x720 layer: {got:?}");
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0.wrapping_add(1), "continuous: {got:?}");
    }

    // The link loses one packet of h: the far node asks for it on h's SSRC, and the
    // origin resends that very packet.
    far.out = Capture::default();
    r.frames(&[0, 1, 2], false);
    let lost_h = r.layers[1].seq.wrapping_sub(1);
    let mut link_rx = Context::new(LINK, &[K_FWD; 28]).expect("ctx");
    carry(&mut r, &mut far, &mut |b| {
        let mut c = b.to_vec();
        let n = link_rx.unprotect_rtp(&mut c).expect("link");
        rtp::Header::parse(&c[..n]).is_ok_and(|h| h.ssrc == H)
    });
    r.frames(&[0, 1, 2], false);
    carry(&mut r, &mut far, &mut |_| false);
    let (_, nacks) = upstream(&far.out);
    assert!(nacks.contains(&(H, lost_h)), "{nacks:?}");
    // The answer crossed back to the origin in `carry`; the origin sent it over the link.
    let mut link_rx = Context::new(LINK, &[K_FWD; 28]).expect("ctx");
    let mut resent = Vec::new();
    for (d, b) in &r.out.sent {
        if *d != addr(TARGET) {
            continue;
        }
        let mut c = b.clone();
        if let Ok(n) = link_rx.unprotect_rtp(&mut c) {
            let h = rtp::Header::parse(&c[..n]).expect("rtp");
            resent.push((h.ssrc, h.sequence));
        }
    }
    assert!(
        resent.contains(&(H, lost_h)),
        "the origin resends h's packet: {resent:?}"
    );

    // The far viewer is capped to the lowest layer: its keyframe request goes upstream on
    // q's SSRC, and on to the publisher for q.
    far.out = Capture::default();
    far.f.engines[0].handle_command(
        WorkerCommand::SetMaxLayer {
            id: SessionId(VIEWER),
            max_layer: 0,
        },
        r.now,
        &mut far.out,
    );
    r.out = Capture::default();
    r.frames(&[0, 1, 2], false);
    carry(&mut r, &mut far, &mut |_| false);
    let (plis, _) = upstream(&far.out);
    assert_eq!(plis, [Q], "upstream on q's SSRC");
    let mut pub_rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let mut to_publisher = Vec::new();
    for (d, b) in &r.out.sent {
        if *d != addr(5000) {
            continue;
        }
        let mut c = b.clone();
        let n = pub_rx.unprotect_rtcp(&mut c).expect("srtcp");
        for p in rtcp::compound(&c[..n]) {
            if let Ok(rtcp::Packet::Pli { media_ssrc, .. }) = p {
                to_publisher.push(media_ssrc);
            }
        }
    }
    assert_eq!(to_publisher, [Q], "the origin asks the publisher for q");
    // q's keyframe crosses and the far viewer switches to it, numbering unbroken.
    far.out = Capture::default();
    r.frames(&[2], true);
    r.frames(&[0, 1, 2], false);
    carry(&mut r, &mut far, &mut |_| false);
    let after = far_viewer(&far.out);
    assert_eq!(
        after.iter().map(|g| g.1).collect::<Vec<_>>(),
        [Q, Q],
        "{after:?}"
    );
}
