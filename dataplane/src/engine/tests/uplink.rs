//! Uplink repair on virtual time: a publisher's gaps NACKed to it and retried, a PLI when
//! repair gives up, its RTX unwrapped and forwarded once under the viewer's numbering,
//! padding probes dropped, a simulcast layer's RTX kept on its layer, and nothing for a
//! publisher that did not negotiate `nack`.

use switchyard_shared::command::{UplinkRtx, UplinkTrack};

use super::simulcast::{self, Run, F, F_RTX, RRID_EXT};
use super::*;

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const RTX_SSRC: u32 = 0x2222_2222;
const PUBLISHER: u16 = 5000;
const VIEWER: u16 = 6002;

fn video(nack: bool, fid: Option<u32>) -> UplinkTrack {
    UplinkTrack {
        nack,
        rtx: Some(UplinkRtx {
            payload_type: 97,
            apt: 96,
            ssrc: fid,
        }),
        video: None,
    }
}

pub(super) fn add_uplink_pub(e: &mut Engine, uplink: Vec<UplinkTrack>) {
    let mut out = Capture::default();
    e.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(1),
            stream: STREAM,
            remote: Some(addr(PUBLISHER)),
            ssrcs: vec![PUB_SSRC],
            clock_rates: vec![90000],
            twcc_ext: None,
            srtp: Some(keys(PROFILE, 1, 2)),
            ice: None,
            simulcast: None,
            uplink,
        },
        t0(),
        &mut out,
    );
    assert_eq!(
        e.poll_event(),
        Some(WorkerEvent::Added { id: SessionId(1) })
    );
}

/// RTX (RFC 4588) of `srtp_packet(_, osn, payload_len)`: own SSRC, payload type and
/// sequence number, the OSN first in the payload.
fn rtx_packet(ctx: &mut Context, rtx_seq: u16, osn: u16, payload_len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 14 + payload_len + 32];
    buf[0] = 0x80;
    buf[1] = 97;
    buf[2..4].copy_from_slice(&rtx_seq.to_be_bytes());
    buf[4..8].copy_from_slice(&(u32::from(osn) * 3000).to_be_bytes());
    buf[8..12].copy_from_slice(&RTX_SSRC.to_be_bytes());
    buf[12..14].copy_from_slice(&osn.to_be_bytes());
    for (i, b) in buf[14..14 + payload_len].iter_mut().enumerate() {
        *b = (i as u8) ^ (osn as u8);
    }
    let n = ctx
        .protect_rtp(&mut buf, 14 + payload_len)
        .expect("protect");
    buf.truncate(n);
    buf
}

/// A padding-only RTX packet, as Chromium probes bandwidth with: P set, no OSN, no payload.
fn padding_probe(ctx: &mut Context, rtx_seq: u16) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + 224 + 32];
    buf[0] = 0xa0;
    buf[1] = 97;
    buf[2..4].copy_from_slice(&rtx_seq.to_be_bytes());
    buf[8..12].copy_from_slice(&RTX_SSRC.to_be_bytes());
    buf[12 + 223] = 224;
    let n = ctx.protect_rtp(&mut buf, 12 + 224).expect("protect");
    buf.truncate(n);
    buf
}

/// What the node sent the publisher: (NACKed numbers per media SSRC, PLI media SSRCs).
fn feedback(out: &Capture, rx: &mut Context) -> (Vec<(u32, Vec<u16>)>, Vec<u32>) {
    let (mut nacks, mut plis) = (Vec::new(), Vec::new());
    for (dst, bytes) in &out.sent {
        if *dst != addr(PUBLISHER) {
            continue;
        }
        let mut b = bytes.clone();
        let n = rx.unprotect_rtcp(&mut b).expect("publisher decrypts SRTCP");
        for p in rtcp::compound(&b[..n]) {
            match p {
                Ok(rtcp::Packet::Nack(nack)) => {
                    nacks.push((nack.media_ssrc, nack.lost().collect()))
                }
                Ok(rtcp::Packet::Pli { media_ssrc, .. }) => plis.push(media_ssrc),
                _ => {}
            }
        }
    }
    (nacks, plis)
}

/// The viewer's packets: (sequence number, payload type, payload).
fn viewer_packets(out: &Capture, rx: &mut Context) -> Vec<(u16, u8, Vec<u8>)> {
    let mut v = Vec::new();
    for (dst, bytes) in &out.sent {
        if *dst != addr(VIEWER) || bytes.get(1).is_some_and(|&b| (200..=206).contains(&b)) {
            continue;
        }
        let mut b = bytes.clone();
        let n = rx.unprotect_rtp(&mut b).expect("viewer decrypts");
        let h = rtp::Header::parse(&b[..n]).expect("rtp");
        assert_eq!(h.ssrc, 2 * 16, "the viewer's SSRC of track 0");
        v.push((h.sequence, h.payload_type, b[h.payload_offset..n].to_vec()));
    }
    v
}

/// A gap is NACKed to the publisher's media SSRC at once, then every 50 ms, 5 times in
/// all; at 250 ms it is given up and the publisher gets one PLI. Every deadline is the engine's.
#[test]
fn a_gap_is_nacked_to_the_publisher_retried_then_given_up_with_a_pli() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_uplink_pub(e, vec![video(true, Some(RTX_SSRC))]);
    let mut tx = Context::new(PROFILE, &[1; 28]).expect("ctx");
    let mut rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let start = t0();
    let mut out = Capture::default();
    for seq in [100u16, 101, 104] {
        let mut p = srtp_packet(&mut tx, seq, 200);
        e.handle_datagram(&mut p, addr(PUBLISHER), start, &mut out);
    }
    assert_eq!(e.poll_timeout(), Some(start), "102 and 103 are due at once");
    let mut seen = Vec::new();
    while let Some(t) = e
        .poll_timeout()
        .filter(|&t| t < start + Duration::from_millis(500))
    {
        let mut out = Capture::default();
        e.handle_timeout(t, &mut out);
        assert!(e.poll_timeout().is_none_or(|n| n > t), "nothing left due");
        let (nacks, plis) = feedback(&out, &mut rx);
        if !nacks.is_empty() || !plis.is_empty() {
            seen.push((t.duration_since(start).as_millis(), nacks, plis));
        }
    }
    let nack = vec![(PUB_SSRC, vec![102, 103])];
    assert_eq!(
        seen,
        [
            (0, nack.clone(), vec![]),
            (50, nack.clone(), vec![]),
            (100, nack.clone(), vec![]),
            (150, nack.clone(), vec![]),
            (200, nack, vec![]),
            (250, vec![], vec![PUB_SSRC]),
        ]
    );
    assert_eq!(get(&f.stats, 0, Counter::UplinkNacksSent), 10);
    assert_eq!(get(&f.stats, 0, Counter::UplinkUnrecovered), 2);
    assert_eq!(get(&f.stats, 0, Counter::PliForwarded), 1);
}

/// The publisher's RTX of a lost packet reaches the viewer once, as the original under the
/// viewer's numbering; it goes into the cache (a viewer's NACK for it is answered) and ends
/// the NACKs. A second copy, an RTX of a packet that did arrive, and padding probes reach
/// nobody.
#[test]
fn rtx_is_unwrapped_forwarded_once_cached_and_ends_the_nacks() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_uplink_pub(e, vec![video(true, Some(RTX_SSRC))]);
    add_sub(e, 2, VIEWER, PROFILE);
    let mut tx = Context::new(PROFILE, &[1; 28]).expect("ctx");
    let mut pub_rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let mut view_rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let start = t0();
    let ms = |m: u64| start + Duration::from_millis(m);
    let mut out = Capture::default();
    for seq in [100u16, 101, 103] {
        let mut p = srtp_packet(&mut tx, seq, 200);
        e.handle_datagram(&mut p, addr(PUBLISHER), start, &mut out);
    }
    let before = viewer_packets(&out, &mut view_rx);
    assert_eq!(before.len(), 3);
    let off = before[0].0.wrapping_sub(100);
    let mut out = Capture::default();
    e.handle_timeout(start, &mut out);
    assert_eq!(feedback(&out, &mut pub_rx).0, [(PUB_SSRC, vec![102])]);

    let mut out = Capture::default();
    let mut rtx = rtx_packet(&mut tx, 7, 102, 200);
    e.handle_datagram(&mut rtx.clone(), addr(PUBLISHER), ms(20), &mut out);
    let got = viewer_packets(&out, &mut view_rx);
    let want: Vec<u8> = (0..200).map(|i| (i as u8) ^ 102).collect();
    assert_eq!(got.len(), 1, "forwarded once");
    assert_eq!(
        got[0].0,
        102u16.wrapping_add(off),
        "the viewer's number of 102"
    );
    assert_eq!(got[0].1, 96, "the media payload type");
    assert_eq!(got[0].2, want, "the original payload, OSN taken out");

    // The same RTX again (the publisher answered two NACKs), an RTX of 101 (which came),
    // and a padding probe: none of them reaches the viewer.
    let mut out = Capture::default();
    let mut again = rtx_packet(&mut tx, 8, 102, 200);
    e.handle_datagram(&mut again, addr(PUBLISHER), ms(30), &mut out);
    let mut spurious = rtx_packet(&mut tx, 9, 101, 200);
    e.handle_datagram(&mut spurious, addr(PUBLISHER), ms(31), &mut out);
    let mut probe = padding_probe(&mut tx, 10);
    e.handle_datagram(&mut probe, addr(PUBLISHER), ms(32), &mut out);
    assert!(viewer_packets(&out, &mut view_rx).is_empty());
    // Replayed SRTP of the first copy is refused before anything looks at it.
    e.handle_datagram(&mut rtx, addr(PUBLISHER), ms(33), &mut out);
    assert!(out.sent.is_empty(), "{} sent", out.sent.len());

    // Repaired: no more NACKs, no PLI.
    let mut out = Capture::default();
    for t in [50, 100, 150, 200, 250, 300, 400] {
        e.handle_timeout(ms(t), &mut out);
    }
    assert_eq!(feedback(&out, &mut pub_rx), (vec![], vec![]));

    // A viewer that lost it anyway gets it from the cache.
    let mut sub_tx = Context::new(PROFILE, &[3; 28]).expect("ctx");
    let mut fb = vec![0u8; 200];
    let n = rtcp::write_nack(&mut fb, 0xabc, 2 * 16, &[102u16.wrapping_add(off)]).expect("nack");
    let n = sub_tx.protect_rtcp(&mut fb, n).expect("protect");
    fb.truncate(n);
    let mut out = Capture::default();
    e.handle_datagram(&mut fb, addr(VIEWER), ms(450), &mut out);
    let mut fresh = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let resent = viewer_packets(&out, &mut fresh);
    assert_eq!(resent.len(), 1, "answered from the cache");
    assert_eq!(resent[0].0, 102u16.wrapping_add(off));

    assert_eq!(get(&f.stats, 0, Counter::UplinkRtxReceived), 4);
    assert_eq!(get(&f.stats, 0, Counter::UplinkRecovered), 1);
    assert_eq!(get(&f.stats, 0, Counter::UplinkUnrecovered), 0);
    assert_eq!(get(&f.stats, 0, Counter::DropNoRoute), 0);
}

/// Without the FID SSRC, RTX is known by its payload type (`apt`); and it never becomes a
/// track of its own.
#[test]
fn rtx_without_a_declared_ssrc_is_found_by_its_payload_type() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_uplink_pub(e, vec![video(true, None)]);
    add_sub(e, 2, VIEWER, PROFILE);
    let mut tx = Context::new(PROFILE, &[1; 28]).expect("ctx");
    let mut view_rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let mut out = Capture::default();
    for seq in [10u16, 12] {
        let mut p = srtp_packet(&mut tx, seq, 100);
        e.handle_datagram(&mut p, addr(PUBLISHER), t0(), &mut out);
    }
    let mut probe = padding_probe(&mut tx, 1);
    e.handle_datagram(&mut probe, addr(PUBLISHER), t0(), &mut out);
    let mut rtx = rtx_packet(&mut tx, 2, 11, 100);
    e.handle_datagram(&mut rtx, addr(PUBLISHER), t0(), &mut out);
    let got = viewer_packets(&out, &mut view_rx);
    let seqs: Vec<u16> = got.iter().map(|g| g.0.wrapping_sub(got[0].0)).collect();
    assert_eq!(seqs, [0, 2, 1], "11 arrives last, between its neighbours");
    assert!(got.iter().all(|g| g.1 == 96));
}

/// A publisher whose codec did not negotiate `nack` is never NACKed; its gaps go on to the
/// viewers as before, and its RTX (only probes, then) is dropped.
#[test]
fn a_publisher_without_nack_gets_no_nacks() {
    let mut f = fixture(1);
    let e = &mut f.engines[0];
    add_uplink_pub(e, vec![video(false, Some(RTX_SSRC))]);
    let mut tx = Context::new(PROFILE, &[1; 28]).expect("ctx");
    let mut rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let mut out = Capture::default();
    for seq in [1u16, 5, 9] {
        let mut p = srtp_packet(&mut tx, seq, 100);
        e.handle_datagram(&mut p, addr(PUBLISHER), t0(), &mut out);
    }
    let mut rtx = rtx_packet(&mut tx, 1, 3, 100);
    e.handle_datagram(&mut rtx, addr(PUBLISHER), t0(), &mut out);
    for m in [0, 100, 200, 300, 400] {
        e.handle_timeout(t0() + Duration::from_millis(m), &mut out);
    }
    assert_eq!(feedback(&out, &mut rx), (vec![], vec![]));
    assert_eq!(get(&f.stats, 0, Counter::UplinkNacksSent), 0);
    assert_eq!(get(&f.stats, 0, Counter::UplinkRecovered), 0);
}

/// A simulcast layer's RTX (repaired-rid) repairs that layer: NACKed on the layer's SSRC,
/// and the unwrapped packet reaches the viewer of that layer once, in its place.
#[test]
fn a_simulcast_layers_rtx_repairs_that_layer() {
    let audio = UplinkTrack::default();
    let mut r = Run::with_uplink(vec![audio, video(true, None)]);
    r.frames(&[0, 1, 2], true);
    r.frames(&[0, 1, 2], false);
    // f's next frame is lost on the way; h and q come.
    let lost_seq = r.layers[0].seq;
    let mut lost = r.layers[0].frame(&mut r.publisher, false);
    r.frames(&[1, 2], false);
    r.frames(&[0, 1, 2], false);
    let mut pub_rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let now = r.now;
    let mut out = Capture::default();
    r.f.engines[0].handle_timeout(now, &mut out);
    let (nacks, _) = feedback(&out, &mut pub_rx);
    assert_eq!(nacks, [(F, vec![lost_seq])], "on f's SSRC, f's number");

    // The RTX carries the lost packet's payload after the OSN, on f's RTX SSRC.
    let mut dec = Context::new(PROFILE, &[1; 28]).expect("ctx");
    let n = dec.unprotect_rtp(&mut lost).expect("decrypt");
    let h = rtp::Header::parse(&lost[..n]).expect("rtp");
    let mut payload = lost_seq.to_be_bytes().to_vec();
    payload.extend_from_slice(&lost[h.payload_offset..n]);
    let mut rtx = rtx_with_pt(&mut r.publisher, F_RTX, 4, h.timestamp, &payload);
    r.out = Capture::default();
    r.f.engines[0].handle_datagram(&mut rtx, addr(PUBLISHER), r.now, &mut r.out);
    let mut view_rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let got = simulcast::viewer_packets(&r.out, &mut view_rx);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].layer, F, "f's packet, to f's viewer");
    assert_eq!(get(&r.f.stats, 0, Counter::UplinkRecovered), 1);
    assert_eq!(get(&r.f.stats, 0, Counter::SimulcastRtxDropped), 0);
    let mut out = Capture::default();
    r.f.engines[0].handle_timeout(now + Duration::from_millis(50), &mut out);
    assert_eq!(feedback(&out, &mut pub_rx).0, [], "repaired: no more NACKs");
}

/// An SRTP packet like `simulcast::rtp_with_rid`'s, with RTX's payload type 97 and the
/// repaired-rid "f".
fn rtx_with_pt(ctx: &mut Context, ssrc: u32, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let elems = [4 << 4, b'1', (RRID_EXT << 4), b'f'];
    let mut buf = vec![0x90, 97];
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&ts.to_be_bytes());
    buf.extend_from_slice(&ssrc.to_be_bytes());
    buf.extend_from_slice(&[0xbe, 0xde, 0, 1]);
    buf.extend_from_slice(&elems);
    buf.extend_from_slice(payload);
    let n = buf.len();
    buf.resize(n + 32, 0);
    let n = ctx.protect_rtp(&mut buf, n).expect("protect");
    buf.truncate(n);
    buf
}
