//! Scalable video (VP9 and AV1 SVC): one SSRC carries every layer of each picture. A viewer
//! that should not get the top layers gets each picture's lower layer frames only.
//!
//! Three parts, like simulcast's (`layers`):
//! - [`vp9`] and [`av1`] (ingress): the packet's spatial and temporal layer ids, frame start
//!   and end and whether the frame is predicted from an earlier picture, carried with the
//!   packet as an [`SvcTag`] so it is parsed once whatever the audience. VP9 says all of it
//!   in its payload descriptor (RFC 9628 §4.2); AV1 in the OBU extension header of each
//!   OBU a packet starts (AV1 §5.3.3), and a packet that only continues an OBU takes the
//!   layer of its frame's first packet (same RTP timestamp: [`Av1Frames`]).
//! - [`SvcView`] (per worker and stream): which layers arrived in the last
//!   [`layers::ACTIVE`] and what a viewer of each needs, that layer and every one below
//!   (a layer is predicted from the ones below it). One axis per stream: the spatial layers
//!   when there are several, else the temporal ones (L1T3).
//! - [`SvcSelect`] (per viewer and track): the layer the viewer gets, and its sequence
//!   numbering with the dropped packets taken out.
//!
//! Switching: down at any picture (lower layers never depend on upper ones), up only at a
//! picture whose base layer is not predicted from an earlier picture (a keyframe: the
//! upper layers' earlier frames were never sent, so nothing else may be decoded). Going
//! down also asks for a keyframe, until one comes: a viewer moves down because its path is
//! losing packets, and Chromium's decoder holds every later picture behind one whose top
//! layer frame is incomplete (measured: a 3 s freeze until its own PLI, without it). For
//! the same reason only packets of the layers a viewer gets now are resent to it. Every
//! packet keeps its SSRC, timestamp and picture id; sequence numbers close up over the
//! dropped packets, and the marker bit (end of picture) goes on the last packet of the top
//! layer the viewer gets. With several spatial layers, temporal layers all pass.
//!
//! On the temporal axis (one spatial layer, L1T2 or L1T3): down at any frame (nothing is
//! predicted from a higher temporal layer), up at the next frame of temporal layer 0
//! (every frame after it is predicted from it or from frames after it), neither needing
//! a keyframe; each frame keeps its own marker. A viewer of layer 0 of L1T3 gets a quarter
//! of the frames, of layer 1 half. AV1 is only ever selected on this axis: its packets
//! mark the end of a picture (the marker bit), not of each spatial layer's frame, so the
//! end of a lower spatial layer is not known (that needs the dependency descriptor, which
//! does not fit one-byte header extensions).
//!
//! A packet lost on the way in whose retransmission turns out to be of a layer the viewer
//! does not get leaves a hole in the viewer's numbering that nothing fills: it was given a
//! number before anyone knew its layer. The viewer's NACK for it is answered with nothing,
//! as for any packet the publisher never repaired.

use std::time::Instant;

use switchyard_shared::command::MAX_LAYERS;
use switchyard_shared::depay::av1::leb128;

use super::layers::{Ranking, ACTIVE};

/// What ingress found out about a packet of a VP9 track, carried with the packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcTag {
    /// Spatial layer id (0 without layer indices; always 0 for AV1, see the module).
    pub sid: u8,
    /// Temporal layer id (0 without layer indices).
    pub tid: u8,
    /// B: the first packet of a layer frame.
    pub begin: bool,
    /// E: the last packet of a layer frame.
    pub end: bool,
    /// P: the layer frame is predicted from an earlier picture (not a switching point).
    pub inter: bool,
}

/// RFC 9628 §4.2: the VP9 payload descriptor at the start of `p`, the RTP payload.
/// `None` for a payload too short to hold what its first byte announces.
pub fn vp9(p: &[u8]) -> Option<SvcTag> {
    let &b0 = p.first()?;
    let (i, l) = (b0 & 0x80 != 0, b0 & 0x20 != 0);
    let mut at = 1;
    if i {
        let &m = p.get(at)?;
        at += if m & 0x80 != 0 { 2 } else { 1 };
    }
    let (tid, sid) = if l {
        let &layer = p.get(at)?;
        (layer >> 5, (layer >> 1) & 0x07)
    } else {
        (0, 0)
    };
    // Something must follow the descriptor's fixed part for the packet to be a frame.
    p.get(at + usize::from(l))?;
    Some(SvcTag {
        sid,
        tid,
        begin: b0 & 0x08 != 0,
        end: b0 & 0x04 != 0,
        inter: b0 & 0x40 != 0,
    })
}

/// The temporal layer of the last few AV1 frames of one track, by RTP timestamp: a packet
/// that only continues an OBU (no header of its own) takes its frame's layer. Four frames
/// cover any reordering a frame's packets see on the way in.
#[derive(Clone, Copy, Debug, Default)]
pub struct Av1Frames {
    frames: [(u32, u8); 4],
    next: usize,
    n: usize,
}

impl Av1Frames {
    fn note(&mut self, ts: u32, tid: u8) {
        if self.tid(ts).is_some() {
            return;
        }
        self.frames[self.next] = (ts, tid);
        self.next = (self.next + 1) % self.frames.len();
        self.n = (self.n + 1).min(self.frames.len());
    }

    fn tid(&self, ts: u32) -> Option<u8> {
        self.frames[..self.n]
            .iter()
            .find(|(t, _)| *t == ts)
            .map(|&(_, tid)| tid)
    }
}

/// OBU types that open a frame (AV1 §6.2.2): a sequence header (a keyframe's temporal unit
/// starts with it), a temporal delimiter (which senders should leave out, RTP spec §5),
/// a frame header, a frame.
const OPENS_A_FRAME: [u8; 4] = [1, 2, 3, 6];

/// The AV1 RTP payload (AV1 RTP spec §4): its aggregation header, then OBU elements, each
/// but the last of `W` (or every one, when `W` is 0) preceded by its LEB128 length. The
/// temporal layer comes from the first OBU with an extension header; `begin` is an OBU that
/// opens a frame at the packet's start, `inter` the N bit clear (N: the packet starts a
/// coded video sequence, a keyframe), `end` the RTP marker (the end of the temporal unit).
/// `None`: malformed, or a continuation whose frame was never seen (nothing says its
/// layer; it passes as untagged).
pub fn av1(p: &[u8], ts: u32, marker: bool, frames: &mut Av1Frames) -> Option<SvcTag> {
    let &agg = p.first()?;
    let (z, w, n) = (agg & 0x80 != 0, (agg >> 4) & 0x03, agg & 0x08 != 0);
    let mut at = 1;
    let mut k = 0u8;
    let mut begin = false;
    let mut tid = None;
    while at < p.len() && (w == 0 || k < w) {
        let len = if w != 0 && k + 1 == w {
            p.len() - at
        } else {
            leb128(p, &mut at)?
        };
        let element = p.get(at..at.checked_add(len)?)?;
        // The first element of a packet that continues an OBU has no header.
        if !(k == 0 && z) {
            let &h = element.first()?;
            let kind = (h >> 3) & 0x0f;
            if k == 0 && OPENS_A_FRAME.contains(&kind) {
                begin = true;
            }
            if h & 0x04 != 0 && tid.is_none() {
                tid = Some(element.get(1)? >> 5);
            }
        }
        at += len;
        k = k.saturating_add(1);
    }
    if let Some(t) = tid {
        frames.note(ts, t);
    }
    let tid = tid.or_else(|| frames.tid(ts))?;
    Some(SvcTag {
        sid: 0,
        tid,
        begin,
        end: marker,
        inter: !n,
    })
}

/// The layers of one track as this worker sees them pass: spatial and temporal, each
/// by id (ids above the last index share it).
#[derive(Clone, Copy, Debug, Default)]
pub struct SvcView {
    spatial: Axis,
    temporal: Axis,
    window: Option<Instant>,
}

/// One axis of an [`SvcView`]: when each layer was last seen and its bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Axis {
    at: [Option<Instant>; MAX_LAYERS],
    bytes: [u32; MAX_LAYERS],
    /// Bytes in the last whole window.
    rate: [u32; MAX_LAYERS],
}

impl Axis {
    fn note(&mut self, id: u8, len: usize, at: Instant) {
        let l = index(id);
        self.at[l] = Some(at);
        self.bytes[l] = self.bytes[l].saturating_add(len as u32);
    }

    fn roll(&mut self) {
        self.rate = self.bytes;
        self.bytes = [0; MAX_LAYERS];
    }

    fn active(&self, now: Instant) -> [bool; MAX_LAYERS] {
        self.at
            .map(|a| a.is_some_and(|a| now.saturating_duration_since(a) < ACTIVE))
    }

    fn ranking(&self, now: Instant) -> Ranking {
        let mut bps = [0u64; MAX_LAYERS];
        let mut sum = 0u64;
        for (b, &rate) in bps.iter_mut().zip(&self.rate) {
            sum += u64::from(rate) * 8 * 1_000_000 / ACTIVE.as_micros() as u64;
            *b = sum;
        }
        Ranking::ascending(self.active(now), bps)
    }
}

/// The layers a viewer of one track chooses among, and on which axis.
#[derive(Clone, Copy, Debug, Default)]
pub struct SvcLayers {
    pub ranking: Ranking,
    /// The temporal axis: one spatial layer, several temporal ones.
    pub temporal: bool,
}

/// A layer id as a layer index: ids above the last index share it (a viewer of the top
/// index gets them all; `MAX_LAYERS` is three, as browsers send at most L3T3).
fn index(id: u8) -> usize {
    usize::from(id).min(MAX_LAYERS - 1)
}

impl SvcView {
    /// A packet of `len` bytes tagged `tag` arrived at `at`.
    pub fn note(&mut self, tag: &SvcTag, len: usize, at: Instant) {
        match self.window {
            Some(w) if at.saturating_duration_since(w) < ACTIVE => {}
            _ => {
                self.spatial.roll();
                self.temporal.roll();
                self.window = Some(at);
            }
        }
        self.spatial.note(tag.sid, len, at);
        self.temporal.note(tag.tid, len, at);
    }

    /// The active layers, low to high, each with the rate a viewer of it receives (its own
    /// and every layer's below): the spatial ones when more than one is active, else the
    /// temporal ones.
    pub fn layers(&self, now: Instant) -> SvcLayers {
        let several = |a: [bool; MAX_LAYERS]| a.iter().filter(|&&x| x).count() > 1;
        let temporal = !several(self.spatial.active(now)) && several(self.temporal.active(now));
        let axis = if temporal {
            &self.temporal
        } else {
            &self.spatial
        };
        SvcLayers {
            ranking: axis.ranking(now),
            temporal,
        }
    }

    /// [`SvcView::layers`]' ranking.
    pub fn ranking(&self, now: Instant) -> Ranking {
        self.layers(now).ranking
    }
}

/// Numbering changes a late packet may still need: one per run of dropped packets, so one
/// per picture; 128 cover four seconds of 30 frame/s video, longer than a viewer goes on
/// asking for a lost packet (a NACK for something older finds nothing).
const MARKS: usize = 128;

/// What one packet means for one viewer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcDecision {
    /// Send it, with this sequence number offset (the track's, or the one in force when a
    /// late packet was first due).
    pub forward: Option<u16>,
    /// Set the marker bit: the end of the picture as far as this viewer goes.
    pub marker: bool,
    /// Ask the publisher for a keyframe (the viewer waits to move up; throttled).
    pub ask: bool,
}

/// One viewer's layer of one scalable (VP9, AV1) track and its numbering.
#[derive(Clone, Copy, Debug)]
pub struct SvcSelect {
    /// The top layer being forwarded (on the view's axis); `None` until the first
    /// keyframe.
    pub current: Option<u8>,
    target: Option<u8>,
    /// The newest publisher sequence number seen (forwarded or dropped).
    highest: Option<u16>,
    /// Packets dropped so far, in order of arrival.
    dropped: u16,
    /// From publisher sequence number `.0` on, `.1` packets had been dropped (oldest
    /// first, a ring of `n` starting at `head`).
    marks: [(u16, u16); MARKS],
    head: usize,
    n: usize,
    /// Before the oldest mark (from `.0`, valid when `Some`): `.1` dropped. A packet older
    /// than `.0` is too late to number.
    base: (Option<u16>, u16),
    asked: Option<Instant>,
    /// Moved down since the last keyframe: one is asked for until it comes.
    need_key: bool,
}

impl Default for SvcSelect {
    fn default() -> Self {
        SvcSelect {
            current: None,
            target: None,
            highest: None,
            dropped: 0,
            marks: [(0, 0); MARKS],
            head: 0,
            n: 0,
            base: (None, 0),
            asked: None,
            need_key: false,
        }
    }
}

/// `a` is `b` or comes after it (RFC 1982 serial number arithmetic on 16 bits).
fn at_or_after(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) >= 0
}

impl SvcSelect {
    /// Whether this track carried SVC packets to the viewer (its numbering is this one's).
    pub fn in_use(&self) -> bool {
        self.highest.is_some()
    }

    /// Packet `seq` tagged `tag` reached this viewer, whose sequence offset for the track is
    /// `offset` (lowered here by one for each packet dropped in order). `cap`: the highest
    /// layer rank the viewer takes; `budget`: its bandwidth estimate for the track.
    pub fn on_packet(
        &mut self,
        view: &SvcLayers,
        (tag, seq): (&SvcTag, u16),
        offset: &mut u16,
        (now, pli_interval, cap, budget): (Instant, std::time::Duration, u8, Option<u64>),
    ) -> SvcDecision {
        let temporal = view.temporal;
        let want = match budget {
            Some(b) => view.ranking.fit(cap, b, self.current),
            None => view.ranking.pick(cap),
        };
        if want.is_some() {
            self.target = want;
        }
        let layer = index(if temporal { tag.tid } else { tag.sid }) as u8;
        let newest = self.highest.is_none_or(|h| !at_or_after(h, seq));
        let mut down = false;
        if newest && tag.sid == 0 && tag.begin {
            if !tag.inter {
                self.need_key = false;
            }
            // A new picture: where the viewer's layer may change. Up on the temporal axis
            // at a frame of temporal layer 0, once the viewer has started.
            let up_here = !tag.inter || temporal && self.current.is_some() && tag.tid == 0;
            match (self.current, self.target) {
                (Some(c), Some(t)) if t < c => {
                    self.current = Some(t);
                    // Spatial only: a temporal layer less leaves nothing incomplete.
                    if !temporal {
                        self.need_key = true;
                        down = true;
                    }
                }
                (c, Some(t)) if up_here && c != Some(t) => {
                    self.current = Some(t);
                    self.asked = None;
                }
                _ => {}
            }
        }
        let wanted = self.current.is_some_and(|c| layer <= c);
        let mut d = SvcDecision::default();
        if newest {
            self.highest = Some(seq);
            if wanted {
                d.forward = Some(*offset);
            } else {
                *offset = offset.wrapping_sub(1);
                self.dropped = self.dropped.wrapping_add(1);
                self.mark(seq.wrapping_add(1));
            }
        } else if wanted {
            d.forward = self.offset_at(seq, *offset);
        }
        // Temporal: every frame the viewer gets ends a picture of its own.
        d.marker = d.forward.is_some() && tag.end && (temporal || self.current == Some(tag.sid));
        // Waiting for a keyframe: to start, or to move up a spatial layer (a temporal one
        // comes with the next frame of layer 0).
        let below = match (self.current, self.target) {
            (None, Some(_)) => true,
            (Some(c), Some(t)) => c < t && !temporal,
            _ => false,
        };
        if down
            || (below || self.need_key)
                && self
                    .asked
                    .is_none_or(|a| now.saturating_duration_since(a) >= pli_interval)
        {
            self.asked = Some(now);
            d.ask = true;
        }
        d
    }

    /// From `from` on, `self.dropped` packets have been dropped.
    fn mark(&mut self, from: u16) {
        if self.n > 0 {
            let last = (self.head + self.n - 1) % MARKS;
            if self.marks[last].0 == from.wrapping_sub(1) {
                // The run of drops goes on.
                self.marks[last] = (from, self.dropped);
                return;
            }
        }
        if self.n == MARKS {
            let (f, d) = self.marks[self.head];
            self.base = (Some(f), d);
            self.head = (self.head + 1) % MARKS;
            self.n -= 1;
        }
        self.marks[(self.head + self.n) % MARKS] = (from, self.dropped);
        self.n += 1;
    }

    /// The marks newest first, then the base.
    fn regions(&self) -> impl Iterator<Item = (Option<u16>, u16)> + '_ {
        (0..self.n)
            .rev()
            .map(|k| {
                let (f, d) = self.marks[(self.head + k) % MARKS];
                (Some(f), d)
            })
            .chain(std::iter::once(self.base))
    }

    /// The offset that numbered (or would have numbered) publisher packet `seq`, given the
    /// track's offset now: `None` when it is older than what is remembered.
    pub fn offset_at(&self, seq: u16, offset: u16) -> Option<u16> {
        let newer = self.highest.is_some_and(|h| !at_or_after(h, seq));
        if newer {
            return Some(offset);
        }
        for (from, dropped) in self.regions() {
            match from {
                Some(f) if at_or_after(seq, f) => {
                    return Some(offset.wrapping_add(self.dropped.wrapping_sub(dropped)));
                }
                Some(_) => continue,
                // Before any mark: valid unless marks were forgotten.
                None if self.base.0.is_none() => {
                    return Some(offset.wrapping_add(self.dropped.wrapping_sub(dropped)));
                }
                None => return None,
            }
        }
        None
    }

    /// The publisher's sequence number of the packet the viewer numbers `out`, the track's
    /// offset being `offset` now: the inverse of [`SvcSelect::offset_at`].
    pub fn original(&self, out: u16, offset: u16) -> Option<u16> {
        let mut upper: Option<u16> = None;
        for (from, dropped) in self.regions() {
            let seq = out
                .wrapping_sub(offset)
                .wrapping_sub(self.dropped.wrapping_sub(dropped));
            let above_floor = match from {
                Some(f) => at_or_after(seq, f),
                None => self.base.0.is_none(),
            };
            let below_ceiling = upper.is_none_or(|u| !at_or_after(seq, u));
            if above_floor && below_ceiling {
                return Some(seq);
            }
            if from.is_none() {
                break;
            }
            upper = from;
        }
        None
    }

    /// The stream's source changed (`continuity` re-based the offsets): the numbering
    /// starts over and the viewer waits for the new source's keyframe.
    pub fn source_changed(&mut self) {
        *self = SvcSelect {
            target: self.target,
            ..SvcSelect::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A VP9 descriptor (I, L, non-flexible: TL0PICIDX) for spatial layer `sid`.
    pub(crate) fn descriptor(sid: u8, begin: bool, end: bool, inter: bool) -> Vec<u8> {
        let b0 = 0x80
            | 0x20
            | if inter { 0x40 } else { 0 }
            | if begin { 0x08 } else { 0 }
            | if end { 0x04 } else { 0 };
        vec![b0, 0x81, 0x23, sid << 1, 7, 0xaa, 0xbb]
    }

    #[test]
    fn descriptor_fields() {
        let t = vp9(&descriptor(2, true, false, true)).expect("tag");
        assert_eq!(
            t,
            SvcTag {
                sid: 2,
                tid: 0,
                begin: true,
                end: false,
                inter: true
            }
        );
        // Without layer indices: layer 0. Truncated: refused.
        assert_eq!(vp9(&[0x0c, 0xaa]).map(|t| t.sid), Some(0));
        assert_eq!(vp9(&[0xa0, 0x81]), None);
        assert_eq!(vp9(&[]), None);
    }

    fn view(now: Instant) -> SvcLayers {
        let mut v = SvcView::default();
        let t0 = now - Duration::from_millis(1500);
        // 100, 200 and 400 kbit/s a layer over the last whole window.
        for (sid, bytes) in [(0u8, 12_500usize), (1, 25_000), (2, 50_000)] {
            let tag = SvcTag {
                sid,
                ..SvcTag::default()
            };
            v.note(&tag, bytes, t0);
        }
        for sid in 0..3 {
            let tag = SvcTag {
                sid,
                ..SvcTag::default()
            };
            v.note(&tag, 1, now - Duration::from_millis(100));
        }
        let layers = v.layers(now);
        assert!(!layers.temporal);
        layers
    }

    #[test]
    fn a_viewer_needs_its_layer_and_every_one_below() {
        let now = Instant::now();
        let r = view(now).ranking;
        assert_eq!((r.bps(0), r.bps(1), r.bps(2)), (100_000, 300_000, 700_000));
        assert_eq!(r.pick(u8::MAX), Some(2));
        assert_eq!(r.fit(u8::MAX, 400_000, None), Some(1));
        assert_eq!(r.fit(u8::MAX, 50_000, None), Some(0));
    }

    /// A picture of three layers, two packets each; returns what a viewer was sent as
    /// (publisher seq, viewer seq, marker).
    fn picture(
        sel: &mut SvcSelect,
        r: &SvcLayers,
        seq: &mut u16,
        offset: &mut u16,
        (key, budget): (bool, Option<u64>),
        now: Instant,
    ) -> Vec<(u16, u16, bool)> {
        let mut sent = Vec::new();
        for sid in 0..3u8 {
            for k in 0..2 {
                let tag = SvcTag {
                    sid,
                    begin: k == 0,
                    end: k == 1,
                    inter: !key,
                    ..SvcTag::default()
                };
                let d = sel.on_packet(
                    r,
                    (&tag, *seq),
                    offset,
                    (now, Duration::from_millis(300), u8::MAX, budget),
                );
                if let Some(o) = d.forward {
                    sent.push((*seq, seq.wrapping_add(o), d.marker));
                }
                *seq = seq.wrapping_add(1);
            }
        }
        sent
    }

    #[test]
    fn layers_are_dropped_and_numbering_closes_up() {
        let now = Instant::now();
        let r = view(now);
        let mut sel = SvcSelect::default();
        let (mut seq, mut offset) = (65_530u16, 1000u16);
        // Before a keyframe nothing goes; a keyframe asks for one.
        let sent = picture(&mut sel, &r, &mut seq, &mut offset, (false, None), now);
        assert!(sent.is_empty());
        // Everything at the keyframe, marker on the last packet of layer 2.
        let sent = picture(&mut sel, &r, &mut seq, &mut offset, (true, None), now);
        assert_eq!(sent.len(), 6);
        assert_eq!(sent.iter().filter(|s| s.2).count(), 1);
        assert!(sent[5].2);
        let mut last = sent[5].1;
        // The estimate falls to 400 kbit/s: layers 0 and 1 from the next picture on.
        for _ in 0..3 {
            let sent = picture(
                &mut sel,
                &r,
                &mut seq,
                &mut offset,
                (false, Some(400_000)),
                now,
            );
            assert_eq!(sent.len(), 4, "{sent:?}");
            for s in &sent {
                assert_eq!(s.1, last.wrapping_add(1), "continuous: {sent:?}");
                last = s.1;
            }
            assert!(sent[3].2 && !sent[1].2, "marker at the end of layer 1");
        }
        assert_eq!(sel.current, Some(1));
        // Moving up waits for a keyframe.
        let sent = picture(&mut sel, &r, &mut seq, &mut offset, (false, None), now);
        assert_eq!(sent.len(), 4);
        last = sent[3].1;
        let sent = picture(&mut sel, &r, &mut seq, &mut offset, (true, None), now);
        assert_eq!(sent.len(), 6);
        assert_eq!(sent[0].1, last.wrapping_add(1));
    }

    #[test]
    fn late_packets_and_nacks_use_the_numbering_they_had() {
        let now = Instant::now();
        let r = view(now);
        let mut sel = SvcSelect::default();
        let (mut seq, mut offset) = (100u16, 0u16);
        let mut all = picture(
            &mut sel,
            &r,
            &mut seq,
            &mut offset,
            (true, Some(150_000)),
            now,
        );
        for _ in 0..5 {
            all.extend(picture(
                &mut sel,
                &r,
                &mut seq,
                &mut offset,
                (false, Some(150_000)),
                now,
            ));
        }
        // Layer 0 only: two of every six packets.
        assert_eq!(all.len(), 12);
        for &(theirs, ours, _) in &all {
            assert_eq!(
                sel.offset_at(theirs, offset),
                Some(ours.wrapping_sub(theirs))
            );
            assert_eq!(sel.original(ours, offset), Some(theirs), "{all:?}");
        }
        // A late packet of layer 0 goes out under its own number.
        let (theirs, ours, _) = all[4];
        let tag = SvcTag::default();
        let d = sel.on_packet(
            &r,
            (&tag, theirs),
            &mut offset,
            (now, Duration::from_millis(300), u8::MAX, Some(150_000)),
        );
        assert_eq!(d.forward.map(|o| theirs.wrapping_add(o)), Some(ours));
    }

    #[test]
    fn forgotten_marks_refuse_what_they_covered() {
        let now = Instant::now();
        let r = view(now);
        let mut sel = SvcSelect::default();
        let (mut seq, mut offset) = (0u16, 0u16);
        let first = picture(
            &mut sel,
            &r,
            &mut seq,
            &mut offset,
            (true, Some(150_000)),
            now,
        );
        for _ in 0..(MARKS + 4) {
            picture(
                &mut sel,
                &r,
                &mut seq,
                &mut offset,
                (false, Some(150_000)),
                now,
            );
        }
        assert_eq!(sel.offset_at(first[0].0, offset), None);
        assert_eq!(sel.original(first[0].1, offset), None);
    }

    /// An AV1 packet: the aggregation header (Z, W, N), then `obus` as (header, extension,
    /// payload length) elements, each with a LEB128 length unless W counts it.
    fn av1_packet(z: bool, n: bool, w: u8, obus: &[(u8, Option<u8>, usize)]) -> Vec<u8> {
        let mut p = vec![(u8::from(z) << 7) | (w << 4) | (u8::from(n) << 3)];
        for (i, &(kind, ext, len)) in obus.iter().enumerate() {
            let mut el = Vec::new();
            if !(i == 0 && z) {
                el.push((kind << 3) | if ext.is_some() { 0x04 } else { 0 });
                if let Some(e) = ext {
                    el.push(e);
                }
            }
            el.extend(std::iter::repeat_n(0x55, len));
            if w == 0 || i + 1 < usize::from(w) {
                assert!(el.len() < 128);
                p.push(el.len() as u8);
            }
            p.extend(el);
        }
        p
    }

    #[test]
    fn av1_layers_come_from_the_obu_extension_headers() {
        let mut frames = Av1Frames::default();
        // A keyframe: a sequence header (no extension), then the frame of T0.
        let key = av1_packet(false, true, 2, &[(1, None, 10), (6, Some(0 << 5), 40)]);
        let t = av1(&key, 1000, false, &mut frames).expect("tag");
        assert_eq!((t.tid, t.begin, t.inter, t.end), (0, true, false, false));
        // A frame of T2 over two packets: its header, then a continuation (Z) that takes
        // the frame's layer from its timestamp.
        let first = av1_packet(false, false, 1, &[(6, Some(2 << 5), 900)]);
        let rest = av1_packet(true, false, 1, &[(6, None, 300)]);
        let t = av1(&first, 4000, false, &mut frames).expect("tag");
        assert_eq!((t.tid, t.begin, t.inter), (2, true, true));
        let t = av1(&rest, 4000, true, &mut frames).expect("tag");
        assert_eq!((t.tid, t.begin, t.end), (2, false, true));
        // W = 0: every element has a length; a tile group (4) opens nothing.
        let tiles = av1_packet(
            false,
            false,
            0,
            &[(4, Some(1 << 5), 5), (4, Some(1 << 5), 5)],
        );
        let t = av1(&tiles, 7000, false, &mut frames).expect("tag");
        assert_eq!((t.tid, t.begin), (1, false));
        // A continuation of a frame never seen: nothing says its layer.
        assert_eq!(av1(&rest, 99, false, &mut frames), None);
        // Malformed: an element longer than the packet, a truncated LEB128, nothing.
        assert_eq!(av1(&[0x00, 0x7f, 0x30], 1, false, &mut frames), None);
        assert_eq!(av1(&[0x00, 0x80], 1, false, &mut frames), None);
        assert_eq!(av1(&[], 1, false, &mut frames), None);
    }

    /// L1T3 on the temporal axis: frames T0 T2 T1 T2, each one packet and its own marker.
    #[test]
    fn the_temporal_axis_drops_frames_without_a_keyframe() {
        let now = Instant::now();
        let mut v = SvcView::default();
        let t0 = now - Duration::from_millis(1500);
        // 200, 100 and 100 kbit/s over the last whole window; all three seen lately.
        let tag = |tid| SvcTag {
            tid,
            ..SvcTag::default()
        };
        for (tid, bytes) in [(0u8, 25_000usize), (1, 12_500), (2, 12_500)] {
            v.note(&tag(tid), bytes, t0);
        }
        for tid in 0..3 {
            v.note(&tag(tid), 1, now - Duration::from_millis(100));
        }
        let r = v.layers(now);
        assert!(r.temporal);
        assert_eq!(
            (r.ranking.bps(0), r.ranking.bps(1), r.ranking.bps(2)),
            (200_000, 300_000, 400_000)
        );
        let mut sel = SvcSelect::default();
        let (mut seq, mut offset) = (10u16, 0u16);
        let mut frame = |sel: &mut SvcSelect, tid: u8, key: bool, budget: u64| {
            let tag = SvcTag {
                tid,
                begin: true,
                end: true,
                inter: !key,
                ..SvcTag::default()
            };
            let d = sel.on_packet(
                &r,
                (&tag, seq),
                &mut offset,
                (now, Duration::from_millis(300), u8::MAX, Some(budget)),
            );
            let out = d.forward.map(|o| (seq.wrapping_add(o), d.marker, d.ask));
            seq = seq.wrapping_add(1);
            out
        };
        // The keyframe starts it at the top; every frame goes, each with its marker.
        assert_eq!(frame(&mut sel, 0, true, 1_000_000), Some((10, true, false)));
        for tid in [2, 1, 2] {
            assert!(frame(&mut sel, tid, false, 1_000_000).is_some());
        }
        // 250 kbit/s: T0 only, from the next frame on, asking for nothing.
        let mut sent = Vec::new();
        for tid in [0, 2, 1, 2, 0, 2, 1, 2] {
            sent.push(frame(&mut sel, tid, false, 250_000));
        }
        assert_eq!(
            sent,
            [
                Some((14, true, false)),
                None,
                None,
                None,
                Some((15, true, false)),
                None,
                None,
                None
            ]
        );
        assert_eq!(sel.current, Some(0));
        // Back up at the next T0 frame, no keyframe needed; numbering stays continuous.
        assert_eq!(frame(&mut sel, 2, false, 1_000_000), None);
        assert_eq!(
            frame(&mut sel, 0, false, 1_000_000),
            Some((16, true, false))
        );
        assert_eq!(
            frame(&mut sel, 2, false, 1_000_000),
            Some((17, true, false))
        );
        assert_eq!(sel.current, Some(2));
    }

    /// Garbage never panics a parser: 20,000 random payloads of 0 to 40 bytes, and every
    /// prefix of a real one.
    #[test]
    fn garbage_payloads_are_refused_or_tagged_never_a_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut frames = Av1Frames::default();
        for _ in 0..20_000 {
            let len = (next() % 41) as usize;
            let p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = vp9(&p);
            let _ = av1(&p, next() as u32 % 8, false, &mut frames);
        }
        let real = av1_packet(false, true, 0, &[(1, None, 10), (6, Some(1 << 5), 30)]);
        for end in 0..=real.len() {
            let _ = av1(&real[..end], 5, true, &mut frames);
        }
    }
}
