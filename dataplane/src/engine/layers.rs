//! Simulcast: a publisher's track may carry up to [`MAX_LAYERS`] encodings of the same
//! source, each on its own SSRC, and every viewer gets exactly one of them on the one SSRC
//! its answer announced.
//!
//! Three parts, each used once per packet of a layered track and never for the others:
//! - [`SimMap`] (publisher, ingress): SSRC → (track, layer) by rid / repaired-rid / mid
//!   header extensions or the SSRCs the offer declared, and the [`LayerTag`] the packet
//!   carries to every worker (layer, keyframe, picture size, VP8 descriptor offsets), so
//!   the payload is parsed once whatever the audience.
//! - [`TrackView`] (per worker and stream): which layers arrived in the last
//!   [`ACTIVE`] and how they rank, low to high quality.
//! - [`Select`] (per viewer and track): which layer the viewer gets, the switch at a
//!   keyframe of the new layer, and the rewrite that keeps sequence numbers, timestamps and
//!   VP8 picture ids continuous across it.

use std::time::{Duration, Instant};

use switchyard_shared::command::{LayerCodec, Simulcast, MAX_LAYERS, MAX_RID, MAX_TRACKS};
use switchyard_shared::packet::rtp;

/// A layer that sent nothing for this long is gone (the publisher's encoder dropped it for
/// bandwidth, or it was never sent): viewers switch away from it. Browsers send each active
/// layer at 7 frames/s or more, so a second is several frames of silence.
pub const ACTIVE: Duration = Duration::from_secs(1);

/// Every simulcast codec we switch (VP8, H.264) runs a 90 kHz RTP clock (RFC 7741 §4.1,
/// RFC 6184 §8.2.1); used to turn wall-clock time into timestamp ticks across a switch.
const VIDEO_CLOCK: u128 = 90_000;

/// SSRCs one simulcast publisher can have mapped: 3 layers and their RTX on each of two
/// video tracks, plus audio, with room to spare. A stream beyond that is dropped (`NoRoute`).
const MAX_LEARNED: usize = 16;

/// Caches and PLI throttles per publisher are indexed by slot: `track + MAX_TRACKS × layer`,
/// so a non-simulcast track's slot is its track index.
pub const MAX_SLOTS: usize = MAX_TRACKS * MAX_LAYERS;

/// The slot of `layer` of `track`.
pub const fn slot(track: u8, layer: u8) -> u8 {
    track + (MAX_TRACKS as u8) * layer
}

/// What ingress found out about a packet of a layered track, carried with the packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerTag {
    pub layer: u8,
    /// A viewer may start decoding this layer here.
    pub keyframe: bool,
    /// Width × height from a VP8 keyframe header, 0 where not known.
    pub pixels: u32,
    /// Byte offset of the VP8 picture id in the packet, 0: none.
    pub pid_at: u16,
    /// The picture id is 15 bits (M bit set), else 7.
    pub pid_wide: bool,
    /// Byte offset of the VP8 TL0PICIDX, 0: none.
    pub tl0_at: u16,
    /// The VP8 descriptor names a temporal layer (its T bit): `tid` is it.
    pub temporal: bool,
    pub tid: u8,
    /// Y, layer sync: the frame depends only on temporal layer 0 (a viewer may move up to
    /// its layer here).
    pub sync: bool,
    /// The first packet of a frame (S set, partition 0).
    pub start: bool,
}

/// Where a publisher's SSRC belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Track `track`; `layer` is `None` for a track without layers.
    Media { track: u8, layer: Option<u8> },
    /// The RTX stream of a layer (repaired-rid): never a layer, never a track. The
    /// (track, layer) it repairs, when its repaired-rid names one.
    Repair(Option<(u8, u8)>),
}

/// A short name (mid or rid) kept inline: no allocation, compared byte for byte.
#[derive(Clone, Copy, Default)]
struct Name {
    len: u8,
    bytes: [u8; MAX_RID],
}

impl Name {
    fn new(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let mut n = Name::default();
        n.bytes.get_mut(..b.len())?.copy_from_slice(b);
        n.len = b.len() as u8;
        Some(n)
    }

    fn is(&self, v: &[u8]) -> bool {
        self.len > 0 && self.bytes.get(..usize::from(self.len)) == Some(v)
    }
}

#[derive(Clone, Copy)]
struct TrackDesc {
    mid: Option<Name>,
    rids: [Option<Name>; MAX_LAYERS],
    layered: bool,
    codec: LayerCodec,
}

/// A simulcast publisher's SSRC map (see the module doc). Built at control time; the
/// packet path only scans its small fixed table.
pub struct SimMap {
    rid_ext: u8,
    repaired_rid_ext: u8,
    mid_ext: u8,
    tracks: [Option<TrackDesc>; MAX_TRACKS],
    learned: [(u32, Dest); MAX_LEARNED],
    n: usize,
}

impl SimMap {
    pub fn new(spec: &Simulcast) -> Self {
        let ext = |id: u8| if (1..=14).contains(&id) { id } else { 0 };
        let mut m = SimMap {
            rid_ext: ext(spec.rid_ext),
            repaired_rid_ext: ext(spec.repaired_rid_ext),
            mid_ext: ext(spec.mid_ext),
            tracks: [None; MAX_TRACKS],
            learned: [(0, Dest::Repair(None)); MAX_LEARNED],
            n: 0,
        };
        for (i, t) in spec.tracks.iter().take(MAX_TRACKS).enumerate() {
            let mut rids = [None; MAX_LAYERS];
            for (r, s) in rids.iter_mut().zip(&t.rids) {
                *r = Name::new(s);
            }
            let layered = !t.rids.is_empty();
            m.tracks[i] = Some(TrackDesc {
                mid: Name::new(&t.mid),
                rids,
                layered,
                codec: t.codec,
            });
            for (l, &ssrc) in t.ssrcs.iter().take(MAX_LAYERS).enumerate() {
                let layer = layered.then_some(l as u8);
                m.learn(
                    ssrc,
                    Dest::Media {
                        track: i as u8,
                        layer,
                    },
                );
                if !layered {
                    break;
                }
            }
        }
        m
    }

    fn learn(&mut self, ssrc: u32, to: Dest) {
        if let Some(slot) = self.learned.get_mut(self.n) {
            *slot = (ssrc, to);
            self.n += 1;
        }
    }

    /// Where the packet `plain` (header `h`) belongs, learning its SSRC from its header
    /// extensions the first time. `None`: nothing says (dropped, and asked again next time).
    pub fn classify(&mut self, plain: &[u8], h: &rtp::Header) -> Option<Dest> {
        if let Some(&(_, to)) = self.learned.iter().take(self.n).find(|l| l.0 == h.ssrc) {
            return Some(to);
        }
        let ext = |id: u8| {
            if id == 0 {
                return None;
            }
            rtp::find_extension(plain, h, id).and_then(|r| plain.get(r))
        };
        let mid = ext(self.mid_ext).and_then(|v| {
            self.tracks
                .iter()
                .position(|t| t.is_some_and(|t| t.mid.is_some_and(|m| m.is(v))))
        });
        let find = |rid: &[u8]| {
            self.tracks.iter().enumerate().find_map(|(i, t)| {
                if mid.is_some_and(|m| m != i) {
                    return None;
                }
                let l = t
                    .as_ref()?
                    .rids
                    .iter()
                    .position(|r| r.is_some_and(|r| r.is(rid)))?;
                Some((i as u8, l as u8))
            })
        };
        let to = if let Some(rrid) = ext(self.repaired_rid_ext) {
            Dest::Repair(find(rrid))
        } else if let Some(rid) = ext(self.rid_ext) {
            let (track, layer) = find(rid)?;
            Dest::Media {
                track,
                layer: Some(layer),
            }
        } else {
            let t = mid?;
            if self.tracks.get(t).copied().flatten()?.layered {
                // A layered track's packet without a rid cannot say which layer it is.
                return None;
            }
            Dest::Media {
                track: t as u8,
                layer: None,
            }
        };
        self.learn(h.ssrc, to);
        Some(to)
    }

    /// Whether `track` has layers (its `a=simulcast` named rids).
    pub fn layered(&self, track: u8) -> bool {
        self.tracks
            .get(usize::from(track))
            .copied()
            .flatten()
            .is_some_and(|t| t.layered)
    }

    /// The SSRC of `layer` of `track`, once known (for keyframe requests).
    pub fn ssrc_of(&self, track: u8, layer: u8) -> Option<u32> {
        self.learned
            .iter()
            .take(self.n)
            .find_map(|&(ssrc, to)| match to {
                Dest::Media { track: t, layer: l } if t == track && l.unwrap_or(0) == layer => {
                    Some(ssrc)
                }
                _ => None,
            })
    }

    /// The tag of a packet of `layer` of `track`: keyframe, picture size, VP8 offsets.
    pub fn tag(&self, track: u8, layer: u8, plain: &[u8], h: &rtp::Header) -> LayerTag {
        let mut tag = LayerTag {
            layer,
            ..LayerTag::default()
        };
        let codec = self
            .tracks
            .get(usize::from(track))
            .copied()
            .flatten()
            .map_or(LayerCodec::Other, |t| t.codec);
        let end = plain.len().saturating_sub(h.padding_len);
        let Some(payload) = plain.get(h.payload_offset..end) else {
            return tag;
        };
        match codec {
            LayerCodec::Vp8 => vp8(payload, h.payload_offset, &mut tag),
            LayerCodec::H264 => tag.keyframe = h264_keyframe(payload),
            LayerCodec::Other => {}
        }
        tag
    }
}

/// RFC 7741 §4.2 payload descriptor, and the keyframe header of §4.3 / RFC 6386 §9.1.
fn vp8(p: &[u8], base: usize, tag: &mut LayerTag) {
    let Some(&b0) = p.first() else { return };
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = p.get(1) else { return };
        i = 2;
        if x & 0x80 != 0 {
            let Some(&m) = p.get(i) else { return };
            tag.pid_at = (base + i) as u16;
            tag.pid_wide = m & 0x80 != 0;
            i += if tag.pid_wide { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            tag.tl0_at = (base + i) as u16;
            i += 1;
        }
        if x & 0x30 != 0 {
            if x & 0x20 != 0 {
                let Some(&t) = p.get(i) else { return };
                tag.temporal = true;
                tag.tid = t >> 6;
                tag.sync = t & 0x20 != 0;
            }
            i += 1;
        }
    }
    if p.len() <= i {
        // Offsets past the end would be written to: forget them.
        tag.pid_at = 0;
        tag.tl0_at = 0;
        tag.temporal = false;
        return;
    }
    // Start of partition 0 and the VP8 payload header's P bit clear: a keyframe.
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    tag.start = start;
    tag.keyframe = start && p.get(i).is_some_and(|&b| b & 0x01 == 0);
    if tag.keyframe && p.get(i + 3..i + 6) == Some(&[0x9d, 0x01, 0x2a][..]) {
        let le = |k: usize| {
            p.get(k..k + 2)
                .map_or(0, |b| u32::from(u16::from_le_bytes([b[0], b[1]]) & 0x3fff))
        };
        tag.pixels = le(i + 6) * le(i + 8);
    }
}

/// Whether VP8 payload `p` starts a keyframe (its first partition, the P bit clear).
pub fn vp8_keyframe(p: &[u8]) -> bool {
    let mut tag = LayerTag::default();
    vp8(p, 0, &mut tag);
    tag.keyframe
}

/// RFC 6184: an IDR slice or SPS alone, in a STAP-A, or starting an FU-A.
pub fn h264_keyframe(p: &[u8]) -> bool {
    let key = |nal: u8| matches!(nal & 0x1f, 5 | 7);
    match p.first().map(|b| b & 0x1f) {
        Some(5 | 7) => true,
        Some(24) => {
            let mut j = 1;
            while let Some(b) = p.get(j..j + 2) {
                let size = usize::from(u16::from_be_bytes([b[0], b[1]]));
                if p.get(j + 2).is_some_and(|&n| key(n)) {
                    return true;
                }
                j += 2 + size;
            }
            false
        }
        Some(28) => p.get(1).is_some_and(|&fu| fu & 0x80 != 0 && key(fu)),
        _ => false,
    }
}

/// VP8 temporal layer ids are two bits.
pub const MAX_TEMPORAL: usize = 4;

#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    at: Option<Instant>,
    pixels: u32,
    bytes: u32,
    /// Bytes in the last whole window: ranks layers whose picture size is not known.
    rate: u32,
    /// The same per VP8 temporal layer (all in 0 for packets without one).
    tbytes: [u32; MAX_TEMPORAL],
    trate: [u32; MAX_TEMPORAL],
}

/// The layers of one track as this worker sees them pass (every worker with viewers sees
/// every packet of the stream, so no worker asks another).
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackView {
    layers: [Seen; MAX_LAYERS],
    window: Option<Instant>,
}

impl TrackView {
    /// A packet of `len` bytes tagged `tag` arrived at `at`.
    pub fn note(&mut self, tag: &LayerTag, len: usize, at: Instant) {
        match self.window {
            Some(w) if at.saturating_duration_since(w) < ACTIVE => {}
            _ => {
                for s in &mut self.layers {
                    s.rate = s.bytes;
                    s.bytes = 0;
                    s.trate = s.tbytes;
                    s.tbytes = [0; MAX_TEMPORAL];
                }
                self.window = Some(at);
            }
        }
        if let Some(s) = self.layers.get_mut(usize::from(tag.layer)) {
            s.at = Some(at);
            s.bytes = s.bytes.saturating_add(len as u32);
            if let Some(t) = s.tbytes.get_mut(usize::from(tag.tid)) {
                *t = t.saturating_add(len as u32);
            }
            if tag.pixels > 0 {
                s.pixels = tag.pixels;
            }
        }
    }

    fn active(&self, layer: usize, now: Instant) -> bool {
        self.layers
            .get(layer)
            .and_then(|s| s.at)
            .is_some_and(|a| now.saturating_duration_since(a) < ACTIVE)
    }

    /// The active layers ranked low to high quality, at `now`: worked out once per packet
    /// and shared by every viewer's choice. Quality is the picture size seen in keyframes
    /// (VP8), then the bytes per second: the offer's `a=simulcast` order is a preference
    /// order, and browsers list layers either way round (Chrome keeps the page's
    /// `sendEncodings`).
    pub fn ranking(&self, now: Instant) -> Ranking {
        let mut order = [(0u8, (0u32, 0u32)); MAX_LAYERS];
        let mut n = 0;
        for (l, s) in self.layers.iter().enumerate() {
            if self.active(l, now) {
                order[n] = (l as u8, (s.pixels, s.rate));
                n += 1;
            }
        }
        if let Some(r) = order.get_mut(..n) {
            r.sort_by_key(|&(l, key)| (key, l));
        }
        let per_s = |bytes: u32| u64::from(bytes) * 8 * 1_000_000 / ACTIVE.as_micros() as u64;
        let mut bps = [0u64; MAX_LAYERS];
        let mut tbps = [[0u64; MAX_TEMPORAL]; MAX_LAYERS];
        for ((b, t), s) in bps.iter_mut().zip(tbps.iter_mut()).zip(&self.layers) {
            *b = per_s(s.rate);
            *t = s.trate.map(per_s);
        }
        Ranking {
            order: order.map(|(l, _)| l),
            n,
            bps,
            tbps,
        }
    }

    /// [`Ranking::pick`] of the ranking at `now`.
    pub fn pick(&self, now: Instant, cap: u8) -> Option<u8> {
        self.ranking(now).pick(cap)
    }
}

/// A track's active layers ranked low to high quality, and each layer's bit rate.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ranking {
    order: [u8; MAX_LAYERS],
    n: usize,
    bps: [u64; MAX_LAYERS],
    /// Each layer's rate per VP8 temporal layer.
    tbps: [[u64; MAX_TEMPORAL]; MAX_LAYERS],
}

impl Ranking {
    /// Layers that rank by their index (spatial layers of one SVC stream, `svc`): the
    /// active ones low to high, each viewer of layer `l` needing `bps[l]`.
    pub fn ascending(active: [bool; MAX_LAYERS], bps: [u64; MAX_LAYERS]) -> Ranking {
        let mut order = [0u8; MAX_LAYERS];
        let mut n = 0;
        for (l, _) in active.iter().enumerate().filter(|(_, &a)| a) {
            order[n] = l as u8;
            n += 1;
        }
        Ranking {
            order,
            n,
            bps,
            tbps: [[0; MAX_TEMPORAL]; MAX_LAYERS],
        }
    }

    fn ranked(&self) -> &[u8] {
        self.order.get(..self.n).unwrap_or(&[])
    }

    fn rank(&self, layer: u8) -> Option<usize> {
        self.ranked().iter().position(|&l| l == layer)
    }

    /// The active layer of rank `cap` (0: lowest quality), or the highest active one when
    /// fewer are active.
    pub fn pick(&self, cap: u8) -> Option<u8> {
        let i = usize::from(cap).min(self.n.checked_sub(1)?);
        self.ranked().get(i).copied()
    }

    /// Whether layer `a` ranks below layer `b` (both active).
    fn below(&self, a: u8, b: u8) -> bool {
        matches!((self.rank(a), self.rank(b)), (Some(x), Some(y)) if x < y)
    }

    /// Bits per second layer `l` sent in the last whole window (0: not known yet).
    pub fn bps(&self, l: u8) -> u64 {
        self.bps.get(usize::from(l)).copied().unwrap_or(0)
    }

    /// [`Ranking::pick`] for a viewer whose estimate leaves `budget` bits per second for
    /// this track: the best layer up to rank `cap` whose rate fits, staying on `current`
    /// while it fits and moving above it only with [`UP_HEADROOM_PERCENT`] to spare, so
    /// the choice does not flap at the edge. The lowest layer when none fits (a viewer is
    /// never cut off: the lowest layer is what the publisher sends for the weakest).
    pub fn fit(&self, cap: u8, budget: u64, current: Option<u8>) -> Option<u8> {
        let top = usize::from(cap).min(self.n.checked_sub(1)?);
        let current_rank = current.and_then(|c| self.rank(c));
        let mut pick = 0;
        for (i, &l) in self.ranked().iter().enumerate().take(top + 1) {
            let bps = self.bps(l);
            let need = if current_rank.is_some_and(|c| i <= c) {
                bps
            } else {
                bps + bps * UP_HEADROOM_PERCENT / 100
            };
            if bps > 0 && need <= budget {
                pick = i;
            }
        }
        self.ranked().get(pick).copied()
    }

    /// Whether `layer` was seen sending VP8 temporal layers above 0 in the last window.
    pub fn has_temporal(&self, layer: u8) -> bool {
        self.tbps
            .get(usize::from(layer))
            .is_some_and(|r| r.iter().skip(1).any(|&b| b > 0))
    }

    /// The highest VP8 temporal layer of `layer` whose frames, with every temporal layer
    /// below, fit `budget`, moving above `current` only with [`UP_HEADROOM_PERCENT`] to
    /// spare; at least 0. `u8::MAX` when every one fits, or the layer has none measured.
    pub fn temporal_fit(&self, layer: u8, budget: u64, current: u8) -> u8 {
        let Some(rates) = self.tbps.get(usize::from(layer)) else {
            return u8::MAX;
        };
        let Some(top) = rates.iter().rposition(|&r| r > 0).filter(|&t| t > 0) else {
            return u8::MAX;
        };
        let (mut sum, mut pick) = (0u64, 0usize);
        for (k, &r) in rates.iter().enumerate().take(top + 1) {
            sum += r;
            let need = if k <= usize::from(current) {
                sum
            } else {
                sum + sum * UP_HEADROOM_PERCENT / 100
            };
            if need <= budget {
                pick = k;
            }
        }
        if pick == top {
            u8::MAX
        } else {
            pick as u8
        }
    }

    /// The rate of the best layer above `current` a viewer capped at rank `cap` may get:
    /// what its probes ask the path for (a probe that shows room for it moves the viewer
    /// up in one step, or as far as the room goes). `None` at the top or before rates are
    /// known.
    pub fn best_above(&self, current: Option<u8>, cap: u8) -> Option<u64> {
        let at = self.rank(current?)?;
        let top = usize::from(cap).min(self.n.checked_sub(1)?);
        if top <= at {
            return None;
        }
        let &l = self.ranked().get(top)?;
        Some(self.bps(l)).filter(|&b| b > 0)
    }
}

/// How far a layer's rate may exceed a viewer's budget before it stops being sent while
/// the viewer waits for the lower layer's keyframe.
const OVERSHOOT: u64 = 2;

/// Headroom a viewer's budget must have over a better layer's rate before it moves up.
pub const UP_HEADROOM_PERCENT: u64 = 15;

/// What one packet means for one viewer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Send it (it is of the viewer's layer, or the keyframe it switches at).
    pub forward: bool,
    /// This packet switched the viewer to its layer.
    pub switched: bool,
    /// Ask the publisher for a keyframe of this layer (throttled per viewer).
    pub ask: Option<u8>,
    /// A late packet (a repaired loss) from before the viewer's numbering last closed up
    /// over dropped temporal layer frames: its (sequence offset, picture id offset).
    pub numbering: Option<(u16, u16)>,
}

/// Runs of the viewer's numbering kept for late packets and retransmissions: a run
/// starts at each packet forwarded after some were dropped (a frame of a temporal layer
/// the viewer does not take). With temporal layer 0 of three, 7.5 runs a second, so 32
/// reach back four seconds; further back a packet is not resent.
const RUNS: usize = 32;

/// From source sequence number `src` on (until the next run), the viewer's sequence
/// number is `src + seq_off`, its picture ids `+ pid_off`, and temporal layers up to
/// `tmax` were forwarded.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    src: u16,
    seq_off: u16,
    pid_off: u16,
    tmax: u8,
}

#[derive(Clone, Copy, Debug, Default)]
struct Runs {
    runs: [Run; RUNS],
    next: usize,
    n: usize,
}

impl Runs {
    fn clear(&mut self) {
        self.n = 0;
    }

    fn push(&mut self, r: Run) {
        self.runs[self.next] = r;
        self.next = (self.next + 1) % RUNS;
        self.n = (self.n + 1).min(RUNS);
    }

    /// The run `src` falls in.
    fn find(&self, src: u16) -> Option<Run> {
        (0..self.n).find_map(|k| {
            let r = self.runs[(self.next + RUNS - 1 - k) % RUNS];
            (src.wrapping_sub(r.src) as i16 >= 0).then_some(r)
        })
    }
}

/// `a` comes after `b` (RFC 1982 on 16 bits).
fn after(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

/// One viewer's layer of one track and what keeps its numbering continuous.
#[derive(Clone, Copy, Debug)]
pub struct Select {
    /// The layer being forwarded; `None` until the first keyframe.
    pub current: Option<u8>,
    /// The layer the viewer should get.
    target: Option<u8>,
    /// Highest rank the viewer takes (`u8::MAX`: no cap).
    pub cap: u8,
    /// Something was sent: a switch continues from `last_*`.
    sent: bool,
    last_seq: u16,
    last_ts: u32,
    last_at: Option<Instant>,
    last_pid: u16,
    last_tl0: u8,
    /// Added to the VP8 picture id and TL0PICIDX of the current layer.
    pid_off: u16,
    tl0_off: u8,
    /// The viewer's sequence number of the first packet of the current layer: a NACK below
    /// it names a packet of an earlier layer, which the current offsets cannot find.
    first_seq: u16,
    asked: Option<Instant>,
    /// Highest VP8 temporal layer the viewer takes (`u8::MAX`: every one), set by the API.
    pub tcap: u8,
    /// The highest temporal layer forwarded now: lowered at any frame, raised at a frame
    /// of temporal layer 0 or a layer sync frame.
    tmax: u8,
    /// The newest source sequence number of the current layer seen (sent or dropped).
    last_src: Option<u16>,
    /// Packets were dropped since the last one forwarded: the next one starts a run.
    closed_up: bool,
    runs: Runs,
    /// A late joiner's replayed layer (`prime`): its keyframe is the first switch,
    /// whatever the target.
    start: Option<u8>,
}

impl Default for Select {
    fn default() -> Self {
        Select {
            current: None,
            target: None,
            cap: u8::MAX,
            sent: false,
            last_seq: 0,
            last_ts: 0,
            last_at: None,
            last_pid: 0,
            last_tl0: 0,
            pid_off: 0,
            tl0_off: 0,
            first_seq: 0,
            asked: None,
            tcap: u8::MAX,
            tmax: u8::MAX,
            last_src: None,
            closed_up: false,
            runs: Runs::default(),
            start: None,
        }
    }
}

/// What a viewer's VP8 picture ids and TL0PICIDX get added, copied out of its [`Select`]
/// for the send (the whole `Select` is too big to copy per packet).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ids {
    pid_off: u16,
    tl0_off: u8,
}

fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |x| u16::from_be_bytes([x[0], x[1]]))
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}

fn read_pid(b: &[u8], tag: &LayerTag) -> Option<u16> {
    let at = usize::from(tag.pid_at);
    if at == 0 {
        return None;
    }
    if tag.pid_wide {
        Some(be16(b, at) & 0x7fff)
    } else {
        b.get(at).map(|&v| u16::from(v & 0x7f))
    }
}

impl Select {
    /// Packet `src` (tagged `tag`, received at `now`) of a layered track reached this viewer,
    /// whose (sequence, timestamp) offsets for the track are `offsets`. A switch to the
    /// target layer happens only at its keyframe, and re-bases the offsets so the viewer's
    /// numbering goes on from the last packet sent.
    pub fn on_packet(
        &mut self,
        view: &Ranking,
        tag: &LayerTag,
        src: &[u8],
        offsets: &mut (u16, u32),
        (now, pli_interval, budget): (Instant, Duration, Option<u64>),
    ) -> Decision {
        let want = match budget {
            Some(b) => view.fit(self.cap, b, self.current),
            None => view.pick(self.cap),
        };
        if let Some(want) = want {
            self.target = Some(want);
        }
        let mut d = Decision::default();
        let replayed =
            self.current.is_none() && tag.keyframe && self.start.take() == Some(tag.layer);
        if replayed
            || (self.target == Some(tag.layer) && self.current != self.target && tag.keyframe)
        {
            self.switch_to(tag, src, offsets, now);
            d.switched = true;
        }
        d.forward = self.current == Some(tag.layer);
        // Moving down because the path carries far less than the current layer: its
        // packets would only fill the queue in front of the new layer's keyframe (and be
        // lost there), so they stop now rather than at the switch.
        if let (Some(b), Some(cur), Some(t)) = (budget, self.current, self.target) {
            if d.forward && view.below(t, cur) && view.bps(cur) > OVERSHOOT * b {
                d.forward = false;
            }
        }
        if let Some(t) = self.target.filter(|&t| self.current != Some(t)) {
            if self
                .asked
                .is_none_or(|a| now.saturating_duration_since(a) >= pli_interval)
            {
                self.asked = Some(now);
                d.ask = Some(t);
            }
        }
        if d.forward && !d.switched {
            self.temporal(view, tag, src, offsets, budget, &mut d);
        }
        d
    }

    /// The temporal layer the viewer should get: its cap, and on the lowest layer, when
    /// even that does not fit its budget, the temporal layers that do (fewer frames
    /// rather than a path that loses them).
    fn temporal_target(&self, view: &Ranking, budget: Option<u64>) -> u8 {
        let mut want = self.tcap;
        if let (Some(b), Some(cur)) = (budget, self.current) {
            if view.rank(cur) == Some(0) {
                want = want.min(view.temporal_fit(cur, b, self.tmax));
            }
        }
        want
    }

    /// Packet `src` of the current layer, which the layer choice forwards: dropped if its
    /// VP8 temporal layer is above what the viewer gets (its numbering closes up over it),
    /// or numbered as its run says when it comes late.
    fn temporal(
        &mut self,
        view: &Ranking,
        tag: &LayerTag,
        src: &[u8],
        offsets: &mut (u16, u32),
        budget: Option<u64>,
        d: &mut Decision,
    ) {
        let seq = be16(src, 2);
        if self.last_src.is_some_and(|l| !after(seq, l)) {
            // Late: numbered as when its neighbours went, and only if its layer went.
            match self.runs.find(seq) {
                Some(r) if !tag.temporal || tag.tid <= r.tmax => {
                    if (r.seq_off, r.pid_off) != (offsets.0, self.pid_off) {
                        d.numbering = Some((r.seq_off, r.pid_off));
                    }
                }
                _ => d.forward = false,
            }
            return;
        }
        self.last_src = Some(seq);
        if !tag.temporal {
            return;
        }
        if tag.start {
            let want = self.temporal_target(view, budget);
            if want < self.tmax {
                self.tmax = want;
            } else if want > self.tmax {
                if tag.tid == 0 {
                    self.tmax = want;
                } else if tag.sync && tag.tid <= want {
                    self.tmax = self.tmax.max(tag.tid);
                }
            }
        }
        if tag.tid > self.tmax {
            offsets.0 = offsets.0.wrapping_sub(1);
            if tag.start && tag.pid_at != 0 {
                self.pid_off = self.pid_off.wrapping_sub(1) & 0x7fff;
            }
            self.closed_up = true;
            d.forward = false;
        } else if self.closed_up {
            self.closed_up = false;
            self.runs.push(Run {
                src: seq,
                seq_off: offsets.0,
                pid_off: self.pid_off,
                tmax: self.tmax,
            });
        }
    }

    /// How the viewer numbers packet `src` (source sequence number) of the current layer,
    /// of temporal layer `tid` if it has one, for a retransmission: (sequence offset,
    /// picture id offset), or `None` when it was not sent to the viewer (another layer's
    /// numbering, a dropped temporal layer, too long ago).
    pub fn numbering_of(&self, src: u16, tid: Option<u8>) -> Option<(u16, u16)> {
        let r = self.runs.find(src)?;
        if tid.is_some_and(|t| t > r.tmax) {
            return None;
        }
        let n = (r.seq_off, r.pid_off);
        self.owns(src.wrapping_add(n.0)).then_some(n)
    }

    /// The source sequence number of the packet the viewer numbers `seq` (a NACK's): found
    /// in the run whose numbers it falls in. Without runs (no switch yet), the current
    /// offset `seq_off` says.
    pub fn original(&self, seq: u16, seq_off: u16) -> Option<u16> {
        if self.runs.n == 0 {
            return Some(seq.wrapping_sub(seq_off));
        }
        let mut later: Option<u16> = None;
        for k in 0..self.runs.n {
            let i = (self.runs.next + RUNS - 1 - k) % RUNS;
            let r = self.runs.runs[i];
            let src = seq.wrapping_sub(r.seq_off);
            let inside =
                src.wrapping_sub(r.src) as i16 >= 0 && later.is_none_or(|next| after(next, src));
            if inside {
                return Some(src);
            }
            later = Some(r.src);
        }
        None
    }

    /// The highest VP8 temporal layer the viewer gets now, when that is not every one.
    pub fn temporal_now(&self) -> Option<u8> {
        (self.tmax != u8::MAX).then_some(self.tmax)
    }

    /// What the send adds to picture ids and TL0PICIDX now.
    pub fn ids(&self) -> Ids {
        Ids {
            pid_off: self.pid_off,
            tl0_off: self.tl0_off,
        }
    }

    fn switch_to(&mut self, tag: &LayerTag, src: &[u8], offsets: &mut (u16, u32), now: Instant) {
        if self.sent {
            offsets.0 = self.last_seq.wrapping_add(1).wrapping_sub(be16(src, 2));
            let gap = self
                .last_at
                .map_or(0, |a| now.saturating_duration_since(a).as_micros());
            let ticks = (gap * VIDEO_CLOCK / 1_000_000).max(1) as u32;
            offsets.1 = self.last_ts.wrapping_add(ticks).wrapping_sub(be32(src, 4));
            if let Some(pid) = read_pid(src, tag) {
                self.pid_off = self.last_pid.wrapping_add(1).wrapping_sub(pid) & 0x7fff;
            }
            if let Some(&tl0) = src.get(usize::from(tag.tl0_at)).filter(|_| tag.tl0_at != 0) {
                self.tl0_off = self.last_tl0.wrapping_add(1).wrapping_sub(tl0);
            }
        }
        self.first_seq = be16(src, 2).wrapping_add(offsets.0);
        self.current = Some(tag.layer);
        self.asked = None;
        // A keyframe: every temporal layer may start here.
        self.tmax = self.tcap;
        self.last_src = Some(be16(src, 2));
        self.closed_up = false;
        self.runs.clear();
        self.runs.push(Run {
            src: be16(src, 2),
            seq_off: offsets.0,
            pid_off: self.pid_off,
            tmax: self.tmax,
        });
    }

    /// A late joiner starts on `layer` (its replayed group, `prime`): the keyframe of
    /// that layer about to come is its first switch. Only before its first layer.
    pub fn start_at(&mut self, layer: u8) {
        if self.current.is_none() {
            self.start = Some(layer);
        }
    }

    /// The stream's source changed (`continuity`): the layers are the new source's, so
    /// the viewer waits for its target's keyframe and switches there, re-basing its
    /// numbering on the last packet it was sent.
    pub fn source_changed(&mut self) {
        self.current = None;
        self.asked = None;
    }

    /// The timestamp of the last packet sent, in the viewer's numbering.
    pub fn last_ts(&self) -> u32 {
        self.last_ts
    }

    /// Whether a packet of the current layer that the viewer numbers `seq` was sent since
    /// the switch to it (so a retransmission of it is the packet the viewer lost).
    pub fn owns(&self, seq: u16) -> bool {
        self.current.is_some() && (seq.wrapping_sub(self.first_seq) as i16) >= 0
    }

    /// The picture id offset to use for a while (a late packet's, `Decision::numbering`);
    /// returns the one it replaces.
    pub fn swap_pid_off(&mut self, v: u16) -> u16 {
        std::mem::replace(&mut self.pid_off, v)
    }
}

impl Ids {
    pub fn pid_off(&self) -> u16 {
        self.pid_off
    }

    /// Rewrite the VP8 picture id and TL0PICIDX of `buf` (a copy of the packet, same
    /// offsets) for this viewer; returns what they became.
    pub fn rewrite(&self, buf: &mut [u8], tag: &LayerTag) -> (Option<u16>, Option<u8>) {
        let mut pid = None;
        if let Some(p) = read_pid(buf, tag) {
            let at = usize::from(tag.pid_at);
            let v = p.wrapping_add(self.pid_off);
            if tag.pid_wide {
                let v = v & 0x7fff;
                if let Some(b) = buf.get_mut(at..at + 2) {
                    b.copy_from_slice(&(0x8000 | v).to_be_bytes());
                    pid = Some(v);
                }
            } else if let Some(b) = buf.get_mut(at) {
                *b = (v & 0x7f) as u8;
                pid = Some(v & 0x7f);
            }
        }
        let mut tl0 = None;
        if tag.tl0_at != 0 {
            if let Some(b) = buf.get_mut(usize::from(tag.tl0_at)) {
                *b = b.wrapping_add(self.tl0_off);
                tl0 = Some(*b);
            }
        }
        (pid, tl0)
    }
}

impl Select {
    /// A packet went out as (`seq`, `ts`) with picture id `pid` and TL0PICIDX `tl0`.
    pub fn sent(
        &mut self,
        (seq, ts): (u16, u32),
        (pid, tl0): (Option<u16>, Option<u8>),
        now: Instant,
    ) {
        let newer = !self.sent || (seq.wrapping_sub(self.last_seq) as i16) > 0;
        if !newer {
            return;
        }
        self.sent = true;
        self.last_seq = seq;
        self.last_ts = ts;
        self.last_at = Some(now);
        if let Some(p) = pid {
            self.last_pid = p;
        }
        if let Some(t) = tl0 {
            self.last_tl0 = t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 payload: descriptor with 15-bit picture id and TL0PICIDX, then a keyframe
    /// header of `w`×`h` when `key`.
    pub(crate) fn vp8_payload(pid: u16, tl0: u8, key: bool, w: u16, h: u16) -> Vec<u8> {
        let mut p = vec![0x90, 0xc0];
        p.extend_from_slice(&(0x8000 | pid).to_be_bytes());
        p.push(tl0);
        if key {
            p.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a]);
            p.extend_from_slice(&w.to_le_bytes());
            p.extend_from_slice(&h.to_le_bytes());
        } else {
            p.extend_from_slice(&[0x01, 0x00, 0x00]);
        }
        p
    }

    #[test]
    fn vp8_descriptor_keyframe_and_size() {
        let mut tag = LayerTag::default();
        vp8(&vp8_payload(300, 7, true, 1280, 720), 12, &mut tag);
        assert!(tag.keyframe);
        assert_eq!(tag.pixels, 1280 * 720);
        assert_eq!((tag.pid_at, tag.pid_wide, tag.tl0_at), (14, true, 16));
        let mut tag = LayerTag::default();
        vp8(&vp8_payload(300, 7, false, 0, 0), 12, &mut tag);
        assert!(!tag.keyframe);
        // Not the start of partition 0.
        let mut p = vp8_payload(300, 7, true, 1280, 720);
        p[0] = 0x80;
        let mut tag = LayerTag::default();
        vp8(&p, 12, &mut tag);
        assert!(!tag.keyframe);
        // Truncated descriptors never panic and leave no offsets to write to.
        for n in 0..5 {
            let mut tag = LayerTag::default();
            vp8(&vp8_payload(300, 7, true, 1, 1)[..n], 12, &mut tag);
            assert_eq!((tag.pid_at, tag.tl0_at, tag.keyframe), (0, 0, false), "{n}");
        }
    }

    #[test]
    fn h264_keyframes() {
        assert!(h264_keyframe(&[0x65, 0]));
        assert!(h264_keyframe(&[0x67, 0]));
        assert!(!h264_keyframe(&[0x41, 0]));
        // STAP-A with SPS after a 1-byte NAL.
        assert!(h264_keyframe(&[0x78, 0, 1, 0x06, 0, 2, 0x67, 0]));
        assert!(!h264_keyframe(&[0x78, 0, 1, 0x06, 0, 2, 0x41, 0]));
        // FU-A start of an IDR; not the start.
        assert!(h264_keyframe(&[0x7c, 0x85, 0]));
        assert!(!h264_keyframe(&[0x7c, 0x05, 0]));
        assert!(!h264_keyframe(&[]));
    }

    #[test]
    fn ranks_by_picture_size_then_rate_and_forgets_silent_layers() {
        let t = Instant::now();
        let mut v = TrackView::default();
        // Layer 0 is the big one, declared first (as Chrome writes `h;m;l`).
        for (layer, pixels) in [(0u8, 1280 * 720), (1, 640 * 360), (2, 320 * 180)] {
            let tag = LayerTag {
                layer,
                pixels,
                ..LayerTag::default()
            };
            v.note(&tag, 100, t);
        }
        assert_eq!(v.pick(t, u8::MAX), Some(0));
        assert_eq!(v.pick(t, 0), Some(2));
        assert_eq!(v.pick(t, 1), Some(1));
        let later = t + Duration::from_millis(1500);
        let tag = LayerTag {
            layer: 2,
            ..LayerTag::default()
        };
        v.note(&tag, 100, later);
        assert_eq!(v.pick(later, u8::MAX), Some(2), "only layer 2 is active");
    }

    /// An RTP packet of a VP8 frame: sequence number `seq`, picture id `pid`, temporal
    /// layer `tid` (layer sync `y`), the frame's first packet when `start`.
    fn temporal_packet(
        seq: u16,
        pid: u16,
        (tid, y): (u8, bool),
        start: bool,
        key: bool,
    ) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(pid) * 3000).to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
        // X; I, L, T; 15-bit picture id; TL0PICIDX; TID and Y.
        p.push(if start { 0x90 } else { 0x80 });
        p.push(0xe0);
        p.extend_from_slice(&(0x8000 | pid).to_be_bytes());
        p.push(0);
        p.push((tid << 6) | if y { 0x20 } else { 0 });
        p.push(if key { 0x00 } else { 0x01 });
        p.extend_from_slice(&[0, 0, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        p
    }

    fn tag_of(p: &[u8]) -> LayerTag {
        let mut tag = LayerTag::default();
        vp8(&p[12..], 12, &mut tag);
        tag
    }

    #[test]
    fn vp8_temporal_layer_and_sync_bit_are_read() {
        let t = tag_of(&temporal_packet(1, 5, (2, true), true, false));
        assert!(t.temporal && t.sync && t.start);
        assert_eq!(t.tid, 2);
        let t = tag_of(&temporal_packet(1, 5, (1, false), false, false));
        assert!(t.temporal && !t.sync && !t.start);
        assert_eq!(t.tid, 1);
        let t = tag_of(
            &vp8_payload(300, 7, false, 0, 0)
                .iter()
                .fold(vec![0u8; 12], |mut v, b| {
                    v.push(*b);
                    v
                }),
        );
        assert!(!t.temporal, "no T bit");
    }

    /// One layer of frames in the pattern Chromium's L1T3 sends (0, 2, 1, 2, ...), two
    /// packets each; a viewer capped to temporal layer 0 gets every fourth frame, numbered
    /// with no gap in sequence numbers or picture ids; a late retransmission goes under the
    /// numbering of its own run, one of a dropped frame not at all; lifting the cap takes
    /// effect at the next layer-0 frame.
    #[test]
    fn a_viewer_capped_to_temporal_layer_0_gets_every_fourth_frame_continuously() {
        let t0 = Instant::now();
        let mut view = TrackView::default();
        let mut sel = Select {
            tcap: 0,
            ..Select::default()
        };
        let mut offsets = (0u16, 0u32);
        let pattern = [0u8, 2, 1, 2];
        let mut sent: Vec<(u16, u16, u8)> = Vec::new();
        let mut seq = 1000u16;
        let mut packets = Vec::new();
        for frame in 0..16u16 {
            let tid = pattern[usize::from(frame % 4)];
            for k in 0..2 {
                let p = temporal_packet(seq, 100 + frame, (tid, tid == 1), k == 0, frame == 0);
                let tag = tag_of(&p);
                view.note(&tag, p.len(), t0);
                let d = sel.on_packet(
                    &view.ranking(t0),
                    &tag,
                    &p,
                    &mut offsets,
                    (t0, Duration::from_millis(500), None),
                );
                if d.forward {
                    assert_eq!(d.numbering, None, "in order");
                    let mut out = p.clone();
                    let (pid, _) = sel.ids().rewrite(&mut out, &tag);
                    let s = be16(&p, 2).wrapping_add(offsets.0);
                    sel.sent((s, 0), (pid, None), t0);
                    sent.push((s, pid.unwrap_or(0), tid));
                }
                packets.push((p, tag));
                seq += 1;
            }
        }
        assert_eq!(sent.len(), 8, "4 of 16 frames, 2 packets each: {sent:?}");
        assert!(sent.iter().all(|&(_, _, tid)| tid == 0));
        assert!(
            sent.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(1)),
            "{sent:?}"
        );
        let pids: Vec<u16> = sent.iter().map(|s| s.1).step_by(2).collect();
        assert!(pids.windows(2).all(|w| w[1] == w[0] + 1), "{pids:?}");
        // A retransmission of frame 4's first packet (tid 0, an older run): its own numbers.
        let (p4, tag4) = &packets[8];
        let n = sel.numbering_of(be16(p4, 2), Some(tag4.tid));
        assert_eq!(
            n.map(|(so, _)| be16(p4, 2).wrapping_add(so)),
            Some(sent[2].0)
        );
        // Frame 5 (tid 2) was never sent: nothing to resend.
        let (p5, tag5) = &packets[10];
        assert_eq!(sel.numbering_of(be16(p5, 2), Some(tag5.tid)), None);
        // The same packet arriving late on the live path is not sent either.
        let d = sel.on_packet(
            &view.ranking(t0),
            tag5,
            p5,
            &mut offsets,
            (t0, Duration::from_millis(500), None),
        );
        assert!(!d.forward);
        let d = sel.on_packet(
            &view.ranking(t0),
            tag4,
            p4,
            &mut offsets,
            (t0, Duration::from_millis(500), None),
        );
        assert!(
            d.forward && d.numbering.is_some(),
            "a late layer-0 packet goes, numbered as then"
        );

        // The cap lifted after frame 16: not at the next frame of layer 2, at the next one
        // of layer 0.
        let mut got = Vec::new();
        for frame in 16..24u16 {
            if frame == 17 {
                sel.tcap = u8::MAX;
            }
            let tid = pattern[usize::from(frame % 4)];
            let p = temporal_packet(seq, 100 + frame, (tid, false), true, false);
            seq += 1;
            let tag = tag_of(&p);
            let d = sel.on_packet(
                &view.ranking(t0),
                &tag,
                &p,
                &mut offsets,
                (t0, Duration::from_millis(500), None),
            );
            if d.forward {
                let s = be16(&p, 2).wrapping_add(offsets.0);
                sel.sent((s, 0), (None, None), t0);
                got.push((s, tid));
            }
        }
        assert_eq!(
            got.iter().map(|g| g.1).collect::<Vec<_>>(),
            vec![0, 0, 2, 1, 2]
        );
        assert!(
            got.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(1)),
            "{got:?}"
        );
    }

    #[test]
    fn temporal_layers_that_fit_a_budget() {
        let t0 = Instant::now();
        let mut view = TrackView::default();
        // One second of one layer: 100 kbit/s of layer 0, 50 of 1, 50 of 2.
        for (tid, bytes) in [(0u8, 12_500usize), (1, 6_250), (2, 6_250)] {
            let tag = LayerTag {
                temporal: true,
                tid,
                ..LayerTag::default()
            };
            view.note(&tag, bytes, t0);
        }
        let later = t0 + ACTIVE;
        view.note(&LayerTag::default(), 1, later);
        let r = view.ranking(later);
        assert_eq!(r.temporal_fit(0, 300_000, u8::MAX), u8::MAX, "all fit");
        assert_eq!(r.temporal_fit(0, 190_000, u8::MAX), 1, "200 kbit/s do not");
        assert_eq!(r.temporal_fit(0, 120_000, u8::MAX), 0);
        assert_eq!(r.temporal_fit(0, 50_000, u8::MAX), 0, "never below layer 0");
        // Up only with headroom: 150 kbit/s for layers 0 and 1 needs 172.5.
        assert_eq!(r.temporal_fit(0, 160_000, 0), 0);
        assert_eq!(r.temporal_fit(0, 175_000, 0), 1);
    }
}
