//! VP9 SVC through the engine: a publisher's spatial layers tagged at ingress, a viewer
//! capped to the base layer gets only its packets (numbering closed up, marker bit at the
//! end of its layer) while another gets every layer unchanged, a NACK from the capped one
//! finds the packet it lost, and moving up waits for a keyframe.

use switchyard_shared::command::{UplinkTrack, VideoCodec};

use super::uplink::add_uplink_pub;
use super::*;

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const VP9: u8 = 98;
const PUBLISHER: u16 = 5000;
const ALL: u16 = 6002;
const BASE: u16 = 6003;

struct Run {
    f: Fixture,
    tx: Context,
    seq: u16,
    pictures: u32,
    now: Instant,
}

/// A VP9 packet: descriptor (I, L; non-flexible), layer `sid`, B/E/P bits as given.
fn vp9_packet(
    ctx: &mut Context,
    seq: u16,
    ts: u32,
    (sid, begin, end, inter): (u8, bool, bool, bool),
) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + 100 + 32];
    buf[0] = 0x80;
    buf[1] = VP9 | if end && sid == 2 { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&PUB_SSRC.to_be_bytes());
    let b0 = 0xa0
        | if inter { 0x40 } else { 0 }
        | if begin { 0x08 } else { 0 }
        | if end { 0x04 } else { 0 };
    buf[12..17].copy_from_slice(&[b0, 0x80 | (ts >> 8) as u8, ts as u8, sid << 1, 0]);
    for (i, b) in buf[17..112].iter_mut().enumerate() {
        *b = (i as u8) ^ (seq as u8);
    }
    let n = ctx.protect_rtp(&mut buf, 112).expect("protect");
    buf.truncate(n);
    buf
}

impl Run {
    fn new() -> Run {
        let mut f = fixture(1);
        let e = &mut f.engines[0];
        // Publisher 1 at PUBLISHER with PUB_SSRC, its one track VP9.
        add_uplink_pub(
            e,
            vec![UplinkTrack {
                nack: true,
                rtx: None,
                video: Some(VideoCodec::Vp9(VP9)),
            }],
        );
        let mut out = Capture::default();
        add_sub(e, 2, ALL, PROFILE);
        add_sub(e, 3, BASE, PROFILE);
        e.handle_command(
            WorkerCommand::SetMaxLayer {
                id: SessionId(3),
                max_layer: 0,
            },
            t0(),
            &mut out,
        );
        Run {
            f,
            tx: Context::new(PROFILE, &[1; 28]).expect("ctx"),
            seq: 65_000,
            pictures: 0,
            now: t0(),
        }
    }

    /// Two keyframes, then what four more pictures sent. Layers are learned as they pass:
    /// the first keyframe starts every viewer on the base layer (the only one seen yet); the
    /// uncapped one moves up at the second.
    fn settled() -> (Run, Capture) {
        let mut r = Run::new();
        let mut out = Capture::default();
        r.picture(true, &mut out);
        r.picture(true, &mut out);
        let mut out = Capture::default();
        for _ in 0..4 {
            r.picture(false, &mut out);
        }
        (r, out)
    }

    /// One picture of three spatial layers, two packets each.
    fn picture(&mut self, key: bool, out: &mut Capture) {
        let ts = self.pictures * 3000;
        for sid in 0..3u8 {
            for k in 0..2 {
                let mut p = vp9_packet(&mut self.tx, self.seq, ts, (sid, k == 0, k == 1, !key));
                self.f.engines[0].handle_datagram(&mut p, addr(PUBLISHER), self.now, out);
                self.seq = self.seq.wrapping_add(1);
            }
        }
        self.pictures += 1;
        self.now += Duration::from_millis(33);
    }
}

/// What viewer `port` (keys `[key; 28]`) got: (sequence, marker, spatial layer).
fn got(out: &Capture, port: u16, key: u8) -> Vec<(u16, bool, u8)> {
    let mut rx = Context::new(PROFILE, &[key; 28]).expect("ctx");
    let mut v = Vec::new();
    for (dst, bytes) in &out.sent {
        if *dst != addr(port) || bytes.get(1).is_some_and(|&b| (200..=206).contains(&b)) {
            continue;
        }
        let mut b = bytes.clone();
        let n = rx.unprotect_rtp(&mut b).expect("viewer decrypts");
        let h = rtp::Header::parse(&b[..n]).expect("rtp");
        v.push((h.sequence, h.marker, (b[h.payload_offset + 3] >> 1) & 7));
    }
    v
}

fn continuous(v: &[(u16, bool, u8)]) -> bool {
    v.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(1))
}

#[test]
fn a_capped_viewer_gets_the_base_layer_with_unbroken_numbering() {
    let (_, out) = Run::settled();
    let all = got(&out, ALL, 2);
    assert_eq!(all.len(), 24, "every layer: {all:?}");
    assert!(continuous(&all));
    assert_eq!(
        all.iter().filter(|g| g.1).count(),
        4,
        "the publisher's markers"
    );
    let base = got(&out, BASE, 3);
    assert_eq!(base.len(), 8, "two packets a picture: {base:?}");
    assert!(base.iter().all(|g| g.2 == 0), "layer 0 only");
    assert!(continuous(&base), "numbering closed up: {base:?}");
    let markers: Vec<bool> = base.iter().map(|g| g.1).collect();
    assert_eq!(
        markers,
        [false, true].repeat(4),
        "marker at the end of layer 0"
    );
}

#[test]
fn a_nack_from_the_capped_viewer_finds_its_packet() {
    let (mut r, out) = Run::settled();
    let base = got(&out, BASE, 3);
    // The first packet of the third picture the viewer got.
    let lost = base[4].0;
    let mut sub_tx = Context::new(PROFILE, &[3; 28]).expect("ctx");
    let mut fb = vec![0u8; 200];
    let n = rtcp::write_nack(&mut fb, 0xabc, 3 * 16, &[lost]).expect("nack");
    let n = sub_tx.protect_rtcp(&mut fb, n).expect("protect");
    fb.truncate(n);
    let mut again = Capture::default();
    r.f.engines[0].handle_datagram(&mut fb, addr(BASE), r.now, &mut again);
    let mut b = again.sent.first().expect("a retransmission").1.clone();
    let mut fresh = Context::new(PROFILE, &[3; 28]).expect("ctx");
    let n = fresh.unprotect_rtp(&mut b).expect("decrypt");
    let h = rtp::Header::parse(&b[..n]).expect("rtp");
    assert_eq!(h.sequence, lost, "under the number it had");
    let mut original = out
        .sent
        .iter()
        .filter(|(d, _)| *d == addr(BASE))
        .nth(4)
        .expect("sent")
        .1
        .clone();
    let mut rx = Context::new(PROFILE, &[3; 28]).expect("ctx");
    let m = rx.unprotect_rtp(&mut original).expect("decrypt");
    assert_eq!(
        b[h.payload_offset..n],
        original[h.payload_offset..m],
        "the same packet"
    );
}

#[test]
fn lifting_the_cap_waits_for_a_keyframe_and_asks_for_one() {
    let mut r = Run::new();
    let mut out = Capture::default();
    r.picture(true, &mut out);
    r.picture(false, &mut out);
    let mut out = Capture::default();
    r.f.engines[0].handle_command(
        WorkerCommand::SetMaxLayer {
            id: SessionId(3),
            max_layer: u8::MAX,
        },
        r.now,
        &mut out,
    );
    r.now += Duration::from_millis(600);
    r.picture(false, &mut out);
    let plis = out
        .sent
        .iter()
        .filter(|(d, b)| *d == addr(PUBLISHER) && b.len() > 1)
        .count();
    assert!(plis >= 1, "a keyframe asked of the publisher");
    assert_eq!(
        got(&out, BASE, 3).len(),
        2,
        "still layer 0 until the keyframe"
    );
    let mut out = Capture::default();
    r.picture(true, &mut out);
    r.picture(false, &mut out);
    let base = got(&out, BASE, 3);
    assert_eq!(base.len(), 12, "every layer from the keyframe on: {base:?}");
    assert!(continuous(&base));
}
