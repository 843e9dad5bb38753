//! Simulcast: three VP8 layers on one track, viewers on one SSRC each, switches at
//! keyframes with continuous numbering, RTX of a layer kept away from viewers, NACK after a
//! switch. Layers are declared high first (`f;h;q`, as Chrome writes a page's `h;m;l`), so
//! the ranking by picture size is exercised too.

use switchyard_shared::command::{LayerCodec, Simulcast, SimulcastTrack, UplinkTrack};

use super::*;

pub(super) const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const MID_EXT: u8 = 4;
const RID_EXT: u8 = 10;
pub(super) const RRID_EXT: u8 = 11;
/// SSRCs of layers f (1280x720), h (640x360), q (320x180), and f's RTX.
pub(super) const F: u32 = 0xa0;
pub(super) const H: u32 = 0xa1;
pub(super) const Q: u32 = 0xa2;
pub(super) const F_RTX: u32 = 0xb0;
/// The viewer's SSRC of the video track (track 1): `sub_ssrcs(2 * 16)[1]`.
const VIEWER: u32 = 33;

/// The publisher's map: audio on mid 0, video on mid 1 with rids f, h, q.
pub(super) fn sim_spec() -> Simulcast {
    Simulcast {
        rid_ext: RID_EXT,
        repaired_rid_ext: RRID_EXT,
        mid_ext: MID_EXT,
        tracks: vec![
            SimulcastTrack {
                mid: "0".into(),
                rids: Vec::new(),
                ssrcs: vec![0xaa],
                codec: LayerCodec::Other,
            },
            SimulcastTrack {
                mid: "1".into(),
                rids: vec!["f".into(), "h".into(), "q".into()],
                ssrcs: Vec::new(),
                codec: LayerCodec::Vp8,
            },
        ],
    }
}

fn add_sim_pub(e: &mut Engine, uplink: Vec<UplinkTrack>) {
    let mut out = Capture::default();
    let simulcast = sim_spec();
    e.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(1),
            stream: STREAM,
            remote: Some(addr(5000)),
            ssrcs: Vec::new(),
            clock_rates: vec![48000, 90000],
            twcc_ext: None,
            srtp: Some(keys(PROFILE, 1, 2)),
            ice: None,
            simulcast: Some(simulcast),
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

/// One layer's sender: its own sequence numbers, timestamps (random-ish bases, as every
/// RTP stream has) and VP8 picture ids.
pub(super) struct Layer {
    ssrc: u32,
    rid: &'static str,
    size: (u16, u16),
    pub(super) seq: u16,
    ts: u32,
    pid: u16,
    tl0: u8,
    /// VP8 temporal layers, frame by frame in a cycle (`None`: no T bit).
    temporal: Option<[u8; 4]>,
    frames: usize,
}

impl Layer {
    fn new(ssrc: u32, rid: &'static str, size: (u16, u16), base: u16) -> Self {
        Layer {
            ssrc,
            rid,
            size,
            seq: base,
            ts: u32::from(base) * 1000,
            pid: base & 0x7fff,
            tl0: base as u8,
            temporal: None,
            frames: 0,
        }
    }

    /// The next frame as one packet (a keyframe when `key`); the payload ends with the
    /// layer's SSRC so a viewer's copy says where it came from.
    pub(super) fn frame(&mut self, ctx: &mut Context, key: bool) -> Vec<u8> {
        let tid = self.temporal.map(|c| c[self.frames % 4]);
        self.frames += 1;
        if tid.is_some_and(|t| t > 0) {
            // TL0PICIDX counts frames of temporal layer 0 only.
            self.tl0 = self.tl0.wrapping_sub(1);
        }
        let mut p = vec![0x90, if tid.is_some() { 0xe0 } else { 0xc0 }];
        p.extend_from_slice(&(0x8000 | self.pid).to_be_bytes());
        p.push(self.tl0);
        if let Some(t) = tid {
            p.push(t << 6);
        }
        if key {
            p.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a]);
            p.extend_from_slice(&self.size.0.to_le_bytes());
            p.extend_from_slice(&self.size.1.to_le_bytes());
        } else {
            p.extend_from_slice(&[0x01, 0x00, 0x00]);
        }
        p.extend_from_slice(&[0x55; 100]);
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        let pkt = rtp_with_rid(ctx, self.ssrc, self.seq, self.ts, (RID_EXT, self.rid), &p);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(3000);
        self.pid = (self.pid + 1) & 0x7fff;
        self.tl0 = self.tl0.wrapping_add(1);
        pkt
    }
}

/// An SRTP packet with the mid ("1") and a rid-type extension in a one-byte header.
fn rtp_with_rid(
    ctx: &mut Context,
    ssrc: u32,
    seq: u16,
    ts: u32,
    (ext, rid): (u8, &str),
    payload: &[u8],
) -> Vec<u8> {
    let mut elems = vec![MID_EXT << 4, b'1', (ext << 4) | (rid.len() as u8 - 1)];
    elems.extend_from_slice(rid.as_bytes());
    while elems.len() % 4 != 0 {
        elems.push(0);
    }
    let mut buf = vec![0x90, 96];
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&ts.to_be_bytes());
    buf.extend_from_slice(&ssrc.to_be_bytes());
    buf.extend_from_slice(&[0xbe, 0xde]);
    buf.extend_from_slice(&((elems.len() / 4) as u16).to_be_bytes());
    buf.extend_from_slice(&elems);
    buf.extend_from_slice(payload);
    let n = buf.len();
    buf.resize(n + 32, 0);
    let n = ctx.protect_rtp(&mut buf, n).expect("protect");
    buf.truncate(n);
    buf
}

/// What the viewer on port 6002 got: (sequence, timestamp, picture id, TL0PICIDX, the
/// layer's SSRC from the payload, keyframe).
#[derive(Debug, Clone, Copy)]
pub(super) struct Got {
    pub(super) seq: u16,
    ts: u32,
    pid: u16,
    tl0: u8,
    pub(super) layer: u32,
    key: bool,
}

pub(super) fn viewer_packets(out: &Capture, rx: &mut Context) -> Vec<Got> {
    packets_to(out, rx, (6002, VIEWER))
}

/// What the viewer on `port` got, on its video SSRC `ssrc` (see [`viewer_packets`]).
fn packets_to(out: &Capture, rx: &mut Context, (port, ssrc): (u16, u32)) -> Vec<Got> {
    let mut got = Vec::new();
    for (dst, bytes) in &out.sent {
        if *dst != addr(port) || bytes.get(1).is_some_and(|&b| (200..=206).contains(&b)) {
            continue;
        }
        let mut b = bytes.clone();
        let n = rx.unprotect_rtp(&mut b).expect("viewer decrypts");
        let h = rtp::Header::parse(&b[..n]).expect("rtp");
        assert_eq!(h.ssrc, ssrc, "one SSRC whatever the layer");
        let p = &b[h.payload_offset..n];
        // After a TID byte when the descriptor has the T bit.
        let header = if p[1] & 0x20 != 0 { 6 } else { 5 };
        got.push(Got {
            seq: h.sequence,
            ts: h.timestamp,
            pid: u16::from_be_bytes([p[2], p[3]]) & 0x7fff,
            tl0: p[4],
            layer: u32::from_be_bytes(p[p.len() - 4..].try_into().expect("4 bytes")),
            key: p[header] & 1 == 0,
        });
    }
    got
}

/// The viewer on port 6002 NACKs `seq` (its numbering), protected with `tx`: what it got
/// back.
fn nack(r: &mut Run, tx: &mut Context, seq: u16) -> Vec<Got> {
    let mut fb = vec![0u8; 200];
    let n = rtcp::write_nack(&mut fb, 0xabc, VIEWER, &[seq]).expect("nack");
    let n = tx.protect_rtcp(&mut fb, n).expect("protect");
    fb.truncate(n);
    r.out = Capture::default();
    r.f.engines[0].handle_datagram(&mut fb, addr(6002), r.now, &mut r.out);
    let mut fresh = Context::new(PROFILE, &[2; 28]).expect("ctx");
    viewer_packets(&r.out, &mut fresh)
}

/// PLIs the node sent the publisher, by media SSRC.
fn plis(out: &Capture) -> Vec<u32> {
    let mut pub_rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let mut v = Vec::new();
    for (dst, bytes) in &out.sent {
        if *dst != addr(5000) {
            continue;
        }
        let mut b = bytes.clone();
        let n = pub_rx.unprotect_rtcp(&mut b).expect("srtcp");
        for p in rtcp::compound(&b[..n]) {
            if let Ok(rtcp::Packet::Pli { media_ssrc, .. }) = p {
                v.push(media_ssrc);
            }
        }
    }
    v
}

pub(super) struct Run {
    pub(super) f: Fixture,
    pub(super) publisher: Context,
    pub(super) layers: [Layer; 3],
    pub(super) now: Instant,
    pub(super) out: Capture,
}

impl Run {
    fn new() -> Self {
        Self::with_uplink(Vec::new())
    }

    /// A run whose publisher's uplink is repaired as `uplink` says.
    pub(super) fn with_uplink(uplink: Vec<UplinkTrack>) -> Self {
        let mut f = fixture(1);
        add_sim_pub(&mut f.engines[0], uplink);
        add_sub(&mut f.engines[0], 2, 6002, PROFILE);
        Run {
            f,
            publisher: Context::new(PROFILE, &[1; 28]).expect("ctx"),
            layers: [
                Layer::new(F, "f", (1280, 720), 1000),
                Layer::new(H, "h", (640, 360), 20000),
                Layer::new(Q, "q", (320, 180), 40000),
            ],
            now: t0(),
            out: Capture::default(),
        }
    }

    /// One frame of each layer in `which` (indexes into f, h, q), 33 ms apart.
    pub(super) fn frames(&mut self, which: &[usize], key: bool) {
        for &l in which {
            let mut p = self.layers[l].frame(&mut self.publisher, key);
            self.f.engines[0].handle_datagram(&mut p, addr(5000), self.now, &mut self.out);
        }
        self.now += Duration::from_millis(33);
    }

    fn command(&mut self, cmd: WorkerCommand) {
        self.f.engines[0].handle_command(cmd, self.now, &mut self.out);
    }
}

#[test]
fn viewer_gets_the_top_layer_on_its_ssrc() {
    let mut r = Run::new();
    r.frames(&[0, 1, 2], true);
    for _ in 0..10 {
        r.frames(&[0, 1, 2], false);
    }
    let mut rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let got = viewer_packets(&r.out, &mut rx);
    assert_eq!(got.len(), 11, "one layer of three");
    assert!(got.iter().all(|g| g.layer == F), "the 1280x720 layer");
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
    }
}

#[test]
fn cap_to_the_lowest_layer_switches_at_its_keyframe_with_continuous_numbering() {
    let mut r = Run::new();
    r.frames(&[0, 1, 2], true);
    for _ in 0..5 {
        r.frames(&[0, 1, 2], false);
    }
    r.out = Capture::default();
    r.command(WorkerCommand::SetMaxLayer {
        id: SessionId(2),
        max_layer: 0,
    });
    // No keyframe of q yet: the viewer stays on f and the publisher is asked for one, on
    // q's SSRC.
    for _ in 0..3 {
        r.frames(&[0, 1, 2], false);
    }
    assert_eq!(
        plis(&r.out),
        vec![Q],
        "one PLI, throttled, on the target layer"
    );
    r.frames(&[0, 1], false);
    r.now += Duration::from_millis(40);
    r.frames(&[2], true);
    for _ in 0..3 {
        r.frames(&[0, 1, 2], false);
    }
    let mut rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let got = viewer_packets(&r.out, &mut rx);
    let layers: Vec<u32> = got.iter().map(|g| g.layer).collect();
    assert_eq!(layers, [F, F, F, F, Q, Q, Q, Q], "{got:?}");
    let (last_f, first_q) = (got[3], got[4]);
    assert!(first_q.key, "the switch is at q's keyframe");
    assert_eq!(
        first_q.seq,
        last_f.seq.wrapping_add(1),
        "sequence continues"
    );
    assert_eq!(
        first_q.pid,
        (last_f.pid + 1) & 0x7fff,
        "picture id continues"
    );
    assert_eq!(
        first_q.tl0,
        last_f.tl0.wrapping_add(1),
        "TL0PICIDX continues"
    );
    // q's keyframe came 33 + 40 ms after f's last frame.
    let ticks = first_q.ts.wrapping_sub(last_f.ts);
    assert_eq!(ticks, 73 * 90, "timestamp advanced by the wall-clock gap");
    for w in got[4..].windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
        assert_eq!(w[1].pid, (w[0].pid + 1) & 0x7fff);
        assert_eq!(w[1].ts.wrapping_sub(w[0].ts), 3000);
    }
    assert_eq!(
        get(&r.f.stats, 0, Counter::LayerSwitches),
        2,
        "first layer, then q"
    );
}

#[test]
fn top_layer_stopping_switches_down() {
    let mut r = Run::new();
    r.frames(&[0, 1, 2], true);
    for _ in 0..5 {
        r.frames(&[0, 1, 2], false);
    }
    // The publisher drops f (its bandwidth estimate fell): a second later the viewer's
    // target is h, asked for, and taken at its keyframe.
    for _ in 0..33 {
        r.frames(&[1, 2], false);
    }
    assert!(plis(&r.out).contains(&H), "{:?}", plis(&r.out));
    r.frames(&[1, 2], true);
    r.frames(&[1, 2], false);
    let mut rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let got = viewer_packets(&r.out, &mut rx);
    let layers: Vec<u32> = got.iter().map(|g| g.layer).collect();
    assert_eq!(layers, [[F; 6].as_slice(), &[H, H]].concat(), "{got:?}");
    assert_eq!(got[6].seq, got[5].seq.wrapping_add(1));
}

#[test]
fn rtx_of_a_layer_never_reaches_the_viewer() {
    let mut r = Run::new();
    r.frames(&[0, 1, 2], true);
    // The RTX stream of f says so with repaired-rid; later packets carry no extension.
    let mut p = rtp_with_rid(&mut r.publisher, F_RTX, 7, 0, (RRID_EXT, "f"), &[0x01; 50]);
    r.f.engines[0].handle_datagram(&mut p, addr(5000), r.now, &mut r.out);
    let mut buf = vec![0x80, 97, 0, 8, 0, 0, 0, 0];
    buf.extend_from_slice(&F_RTX.to_be_bytes());
    buf.extend_from_slice(&[0u8; 60]);
    buf.resize(72 + 32, 0);
    let n = r.publisher.protect_rtp(&mut buf, 72).expect("protect");
    buf.truncate(n);
    r.f.engines[0].handle_datagram(&mut buf, addr(5000), r.now, &mut r.out);
    let mut rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let got = viewer_packets(&r.out, &mut rx);
    assert_eq!(got.len(), 1, "f's keyframe only: {got:?}");
    assert_eq!(get(&r.f.stats, 0, Counter::SimulcastRtxDropped), 2);
    assert_eq!(get(&r.f.stats, 0, Counter::DropNoRoute), 0);
}

#[test]
fn nack_after_a_switch_resends_the_packet_of_the_current_layer() {
    let mut r = Run::new();
    r.frames(&[0, 1, 2], true);
    r.frames(&[0, 1, 2], false);
    r.command(WorkerCommand::SetMaxLayer {
        id: SessionId(2),
        max_layer: 0,
    });
    r.frames(&[0, 1], false);
    r.frames(&[2], true);
    r.frames(&[0, 1, 2], false);
    let mut rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let got = viewer_packets(&r.out, &mut rx);
    assert_eq!(
        got.iter().map(|g| g.layer).collect::<Vec<_>>(),
        [F, F, F, Q, Q]
    );
    let mut tx = Context::new(PROFILE, &[3; 28]).expect("ctx");
    // The viewer lost q's keyframe: it comes back as it was sent.
    let again = nack(&mut r, &mut tx, got[3].seq);
    assert_eq!(again.len(), 1);
    let g = again[0];
    assert_eq!(
        (g.seq, g.ts, g.pid, g.layer, g.key),
        (got[3].seq, got[3].ts, got[3].pid, Q, true)
    );
    // A number from before the switch was f's: q's packets cannot stand in for it.
    assert!(nack(&mut r, &mut tx, got[1].seq).is_empty());
}

/// The top layer sends VP8 temporal layers (0, 2, 1, 2, ...); a viewer capped to temporal
/// layer 0 gets every fourth frame with its sequence numbers, picture ids and TL0PICIDX
/// continuous, and a NACK for one of them brings back that packet as it was sent, after
/// frames were dropped since.
#[test]
fn a_viewer_capped_to_temporal_layer_0_gets_every_fourth_frame_and_its_repairs() {
    let mut r = Run::new();
    r.layers[0].temporal = Some([0, 2, 1, 2]);
    r.command(WorkerCommand::SetMaxTemporal {
        id: SessionId(2),
        max_temporal: 0,
    });
    r.frames(&[0, 1, 2], true);
    for _ in 1..10 {
        r.frames(&[0, 1, 2], false);
    }
    let mut rx = Context::new(PROFILE, &[2; 28]).expect("ctx");
    let got = viewer_packets(&r.out, &mut rx);
    assert_eq!(got.len(), 3, "frames 0, 4 and 8 of ten: {got:?}");
    assert!(got.iter().all(|g| g.layer == F));
    assert!(got[0].key);
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "{got:?}");
        assert_eq!(w[1].pid, (w[0].pid + 1) & 0x7fff, "{got:?}");
        assert_eq!(w[1].tl0, w[0].tl0.wrapping_add(1), "{got:?}");
        assert_eq!(w[1].ts.wrapping_sub(w[0].ts), 4 * 3000, "{got:?}");
    }
    let mut tx = Context::new(PROFILE, &[3; 28]).expect("ctx");
    let again = nack(&mut r, &mut tx, got[1].seq);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (again[0].seq, again[0].ts, again[0].pid, again[0].tl0),
        (got[1].seq, got[1].ts, got[1].pid, got[1].tl0)
    );
    // The number after the last one was never used: nothing stands in for it.
    assert!(nack(&mut r, &mut tx, got[2].seq.wrapping_add(1)).is_empty());
}

/// A viewer joining a simulcast stream starts from the cached group of the layer it
/// picks (the top one, uncapped), at once: that layer's keyframe first, its numbering
/// continuous into the live packets, no keyframe asked of the publisher.
#[test]
fn a_late_joiner_starts_from_the_group_of_its_layer() {
    let mut r = Run::new();
    r.frames(&[0, 1, 2], true);
    for _ in 0..5 {
        r.frames(&[0, 1, 2], false);
    }
    let mut out = Capture::default();
    r.f.engines[0].handle_command(sub_command(3, 6003, PROFILE), r.now, &mut out);
    let mut rx = Context::new(PROFILE, &[3; 28]).expect("ctx");
    let got = packets_to(&out, &mut rx, (6003, 49));
    assert_eq!(got.len(), 6, "f's keyframe and five frames since: {got:?}");
    assert!(got[0].key && got.iter().all(|g| g.layer == F), "{got:?}");
    r.out = Capture::default();
    r.frames(&[0, 1, 2], false);
    let live = packets_to(&r.out, &mut rx, (6003, 49));
    assert_eq!(live.len(), 1);
    let all: Vec<Got> = got.into_iter().chain(live).collect();
    for w in all.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "{all:?}");
        assert_eq!(w[1].pid, (w[0].pid + 1) & 0x7fff, "{all:?}");
    }
    assert!(
        plis(&out).is_empty() && plis(&r.out).is_empty(),
        "no keyframe asked"
    );
    assert_eq!(get(&r.f.stats, 0, Counter::LateJoinStarts), 1);
}
