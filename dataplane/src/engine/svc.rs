//! Scalable video (VP9 SVC): one SSRC carries every spatial layer of each picture, each
//! layer frame a run of packets marked in the VP9 payload descriptor (RFC 9628 §4.2). A
//! viewer that should not get the top layers gets each picture's lower layer frames only.
//!
//! Three parts, like simulcast's (`layers`):
//! - [`vp9`] (ingress): the descriptor's spatial layer id, frame start and end bits and
//!   whether the layer frame is predicted from an earlier picture, carried with the packet
//!   as an [`SvcTag`] so it is parsed once whatever the audience.
//! - [`SvcView`] (per worker and stream): which spatial layers arrived in the last
//!   [`layers::ACTIVE`] and what a viewer of each needs, that layer and every one below
//!   (a spatial layer is predicted from the ones below it).
//! - [`SvcSelect`] (per viewer and track): the spatial layer the viewer gets, and its
//!   sequence numbering with the dropped packets taken out.
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
//! layer the viewer gets. Temporal layers all pass.
//!
//! A packet lost on the way in whose retransmission turns out to be of a layer the viewer
//! does not get leaves a hole in the viewer's numbering that nothing fills: it was given a
//! number before anyone knew its layer. The viewer's NACK for it is answered with nothing,
//! as for any packet the publisher never repaired.

use std::time::Instant;

use switchyard_shared::command::MAX_LAYERS;

use super::layers::{Ranking, ACTIVE};

/// What ingress found out about a packet of a VP9 track, carried with the packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcTag {
    /// Spatial layer id (0 without layer indices).
    pub sid: u8,
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
    let sid = if l {
        let &layer = p.get(at)?;
        (layer >> 1) & 0x07
    } else {
        0
    };
    // Something must follow the descriptor's fixed part for the packet to be a frame.
    p.get(at + usize::from(l))?;
    Some(SvcTag {
        sid,
        begin: b0 & 0x08 != 0,
        end: b0 & 0x04 != 0,
        inter: b0 & 0x40 != 0,
    })
}

/// The spatial layers of one track as this worker sees them pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct SvcView {
    at: [Option<Instant>; MAX_LAYERS],
    bytes: [u32; MAX_LAYERS],
    /// Bytes in the last whole window.
    rate: [u32; MAX_LAYERS],
    window: Option<Instant>,
}

/// A spatial layer id as a layer index: ids above the last index share it (a viewer of the
/// top index gets them all; `MAX_LAYERS` is three, as browsers send at most L3).
fn index(sid: u8) -> usize {
    usize::from(sid).min(MAX_LAYERS - 1)
}

impl SvcView {
    /// A packet of `len` bytes tagged `tag` arrived at `at`.
    pub fn note(&mut self, tag: &SvcTag, len: usize, at: Instant) {
        match self.window {
            Some(w) if at.saturating_duration_since(w) < ACTIVE => {}
            _ => {
                self.rate = self.bytes;
                self.bytes = [0; MAX_LAYERS];
                self.window = Some(at);
            }
        }
        let l = index(tag.sid);
        self.at[l] = Some(at);
        self.bytes[l] = self.bytes[l].saturating_add(len as u32);
    }

    /// The active spatial layers, low to high, each with the rate a viewer of it receives
    /// (its own and every layer's below).
    pub fn ranking(&self, now: Instant) -> Ranking {
        let mut active = [false; MAX_LAYERS];
        let mut bps = [0u64; MAX_LAYERS];
        let mut sum = 0u64;
        for l in 0..MAX_LAYERS {
            sum += u64::from(self.rate[l]) * 8 * 1_000_000 / ACTIVE.as_micros() as u64;
            bps[l] = sum;
            active[l] = self.at[l].is_some_and(|a| now.saturating_duration_since(a) < ACTIVE);
        }
        Ranking::ascending(active, bps)
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

/// One viewer's spatial layer of one VP9 track and its numbering.
#[derive(Clone, Copy, Debug)]
pub struct SvcSelect {
    /// The top spatial layer being forwarded; `None` until the first keyframe.
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
        view: &Ranking,
        (tag, seq): (&SvcTag, u16),
        offset: &mut u16,
        (now, pli_interval, cap, budget): (Instant, std::time::Duration, u8, Option<u64>),
    ) -> SvcDecision {
        let want = match budget {
            Some(b) => view.fit(cap, b, self.current),
            None => view.pick(cap),
        };
        if want.is_some() {
            self.target = want;
        }
        let newest = self.highest.is_none_or(|h| !at_or_after(h, seq));
        let mut down = false;
        if newest && tag.sid == 0 && tag.begin {
            if !tag.inter {
                self.need_key = false;
            }
            // A new picture: where the viewer's layer may change.
            match (self.current, self.target) {
                (Some(c), Some(t)) if t < c => {
                    self.current = Some(t);
                    self.need_key = true;
                    down = true;
                }
                (c, Some(t)) if !tag.inter && c != Some(t) => {
                    self.current = Some(t);
                    self.asked = None;
                }
                _ => {}
            }
        }
        let wanted = self.current.is_some_and(|c| tag.sid <= c);
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
        d.marker = d.forward.is_some() && tag.end && self.current == Some(tag.sid);
        let below = match (self.current, self.target) {
            (None, Some(_)) => true,
            (Some(c), Some(t)) => c < t,
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

    fn view(now: Instant) -> Ranking {
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
        v.ranking(now)
    }

    #[test]
    fn a_viewer_needs_its_layer_and_every_one_below() {
        let now = Instant::now();
        let r = view(now);
        assert_eq!((r.bps(0), r.bps(1), r.bps(2)), (100_000, 300_000, 700_000));
        assert_eq!(r.pick(u8::MAX), Some(2));
        assert_eq!(r.fit(u8::MAX, 400_000, None), Some(1));
        assert_eq!(r.fit(u8::MAX, 50_000, None), Some(0));
    }

    /// A picture of three layers, two packets each; returns what a viewer was sent as
    /// (publisher seq, viewer seq, marker).
    fn picture(
        sel: &mut SvcSelect,
        r: &Ranking,
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
}
