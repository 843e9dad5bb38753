//! Fan-out: one decrypted packet to every subscriber of its stream on this worker (copy,
//! rewrite, protect per subscriber) and one refcounted handle to every other worker with
//! subscribers; retransmissions and relay-outs use the same per-subscriber send.

use std::net::SocketAddr;
use std::time::Instant;

use switchyard_shared::command::MAX_LAYERS;

use switchyard_shared::packet::rtp;
use switchyard_shared::srtp;
use switchyard_shared::stats::{Counter, DropReason};

use super::layers::{self, Decision, LayerTag, Ranking};
use super::padding;
use super::pool::Handle;
use super::session::{self, seal_rtp, Session, Subscriber};
use super::svc::{SvcLayers, SvcTag};
use super::{Engine, Inbound, Output, SendError, StreamId, PLI_INTERVAL};
use crate::via::Via;

impl Engine {
    /// Send `h` to every subscriber here and one handle to every other worker with some.
    pub(super) fn fan_out(&mut self, stream: StreamId, h: &Handle, out: &mut dyn Output) {
        let Some(st) = self.streams.get(&stream) else {
            return;
        };
        for w in &st.remote_workers {
            match out.to_worker(w, Inbound::Media(h.clone())) {
                Ok(()) => self.count(Counter::CrossWorkerOut, 1),
                Err(Inbound::Media(back)) => {
                    self.pool.put(back);
                    self.drop_packet(DropReason::QueueFull);
                }
                Err(_) => {}
            }
        }
        self.forward_local(stream, h, out);
    }

    pub(super) fn forward_local(&mut self, stream: StreamId, h: &Handle, out: &mut dyn Output) {
        let pad = if h.video { self.limits.pad_video_to } else { 0 };
        let Some(st) = self.streams.get_mut(&stream) else {
            return;
        };
        // A simulcast layer: this worker's view of the track's layers, with this packet,
        // ranked once for every viewer's choice.
        let now = h.at.unwrap_or(self.epoch);
        let view = match (h.layer, st.view.get_mut(usize::from(h.track))) {
            (Some(tag), Some(v)) => {
                v.note(&tag, h.bytes().len(), now);
                Some((tag, v.ranking(now)))
            }
            _ => None,
        };
        let svc = match (h.svc, st.svc.get_mut(usize::from(h.track))) {
            (Some(tag), Some(v)) => {
                v.note(&tag, h.bytes().len(), now);
                Some((tag, v.layers(now)))
            }
            _ => None,
        };
        let mut svc_ask = false;
        let mut asks = 0u8;
        // Tracks whose source changed for some viewer: a keyframe is asked of the new one.
        let mut rekey = false;
        let mut switches = 0u64;
        let mut sent = 0u64;
        let mut relayed = 0u64;
        let mut bytes = 0u64;
        let mut full = 0u64;
        let slots = (&*self.stats, usize::from(self.worker));
        for &idx in &st.subscribers {
            let Some(s) = self.sessions.get_mut(idx) else {
                continue;
            };
            // A WebRTC subscriber gets media once ICE has latched its address and DTLS has
            // given its keys; until then skipping it is not a drop (counting it as
            // `queue_full` made every WHEP handshake look like a full send queue). One being
            // started from the cached group elsewhere (`prime`) gets that first.
            if !s.can_send() {
                continue;
            }
            if s.priming(now) {
                // The publisher's worker sends a packet of a track with a group again with
                // that group, after this one: the subscriber's numbering starts there.
                if h.grouped {
                    continue;
                }
            } else if let session::Role::Subscriber(sub) = &mut s.role {
                if sub.priming.take().is_some() {
                    // The publisher's worker never answered (a full queue lost the
                    // message): a keyframe is asked for, as without a cached group.
                    rekey = true;
                }
            }
            let d = deliver(s, h, (view.as_ref(), svc.as_ref()), (now, pad), out);
            rekey |= d.rekey;
            svc_ask |= d.svc_ask;
            if let Some(l) = d.ask {
                asks |= 1 << l;
            }
            if d.switched {
                switches += 1;
            }
            match d.sent {
                Some(Ok(n)) => {
                    sent += 1;
                    bytes += n as u64;
                    if let Some(slot) = slots.0.session(slots.1, idx as usize) {
                        slot.sent(n);
                    }
                    if d.relayed {
                        relayed += 1;
                    }
                }
                Some(Err(_)) => full += 1,
                None => {}
            }
        }
        self.count(Counter::RelayTxPackets, relayed);
        self.count(Counter::Forwarded, sent);
        self.count(Counter::TxPackets, sent);
        self.count(Counter::TxBytes, bytes);
        if full > 0 {
            self.count(DropReason::QueueFull.counter(), full);
        }
        self.count(Counter::LayerSwitches, switches);
        for l in 0..MAX_LAYERS as u8 {
            if asks & (1 << l) != 0 {
                self.request_keyframe(stream, layers::slot(h.track, l), now, out);
            }
        }
        // A layered track's viewers ask for their layer's keyframe themselves (above).
        if svc_ask && !rekey {
            self.request_keyframe(stream, layers::slot(h.track, 0), now, out);
        }
        if rekey && view.is_none() {
            self.request_keyframe(stream, layers::slot(h.track, 0), now, out);
        }
    }
}

/// What [`deliver`] did with one packet for one subscriber.
#[derive(Default)]
pub(super) struct Delivered {
    /// `None`: not for this subscriber (another layer, a track it does not take).
    pub sent: Option<Result<usize, SendError>>,
    /// It went over a relay link.
    pub relayed: bool,
    /// A simulcast viewer waits for a keyframe of this layer.
    pub ask: Option<u8>,
    /// A simulcast viewer switched layers.
    pub switched: bool,
    /// An SVC viewer waits for a keyframe.
    pub svc_ask: bool,
    /// The viewer's source changed: the new one is asked for a keyframe.
    pub rekey: bool,
}

/// A packet's simulcast layer and this worker's ranking of the track's layers, or its SVC
/// layer and the track's SVC layers: what a viewer's choice of layer goes by.
type Views<'a> = (
    Option<&'a (LayerTag, Ranking)>,
    Option<&'a (SvcTag, SvcLayers)>,
);

/// `h` to subscriber `s`, as fan-out does for each one: its source followed, its simulcast
/// layer (`view`: this worker's ranking of the track's layers with this packet) or SVC
/// layers (`svc`) chosen, rewritten and protected, and how it was numbered remembered.
pub(super) fn deliver(
    s: &mut Session,
    h: &Handle,
    (view, svc): Views<'_>,
    (now, pad): (Instant, u16),
    out: &mut dyn Output,
) -> Delivered {
    let mut d = Delivered::default();
    let relay = match &s.role {
        session::Role::Subscriber(sub) if !sub.wants(h.track) => return d,
        session::Role::Subscriber(sub) => sub.relay,
        session::Role::Publisher(_) => false,
    };
    if !relay {
        d.rekey = follow_source(s, h, now);
    }
    let r = match (view, svc) {
        // Relay-outs pass every layer on unchanged (see `relay_to`).
        (Some((tag, v)), _) if !relay => {
            let (r, decision) = forward_layer(s, h, (tag, v), (now, pad), out);
            d.ask = decision.ask;
            d.switched = decision.switched;
            match r {
                Some(r) => r,
                None => return d,
            }
        }
        (_, Some((tag, v))) if !relay => {
            let (r, ask) = forward_svc(s, h, (tag, v), (now, pad), out);
            d.svc_ask = ask;
            match r {
                Some(r) => r,
                None => return d,
            }
        }
        _ => forward_to(s, h, &mut (None, None), (now, pad, false), out),
    };
    if r.is_ok() && !relay {
        note_sent(s, h, now);
    }
    d.relayed = r.is_ok() && s.via == Via::Relay;
    d.sent = Some(r);
    d
}

/// Viewer `s` is about to get `h`: if its source changed since the viewer's last packet of
/// the track, re-base the viewer's numbering so it goes on (`continuity`); a simulcast
/// track's layer choice starts again and re-bases at the next keyframe, as a layer switch
/// does. Returns whether the source changed (a keyframe is needed).
fn follow_source(s: &mut Session, h: &Handle, now: Instant) -> bool {
    let session::Role::Subscriber(sub) = &mut s.role else {
        return false;
    };
    let t = usize::from(h.track);
    let src = h.bytes();
    let layered = h.layer.is_some();
    let (Some(c), Some(off)) = (sub.continuity.get_mut(t), sub.offsets.get_mut(t)) else {
        return false;
    };
    let change = c.on_packet(h.epoch, (be16(src, 2), be32(src, 4)), off, now, layered);
    if !change.changed {
        return false;
    }
    if change.rebased {
        // The re-based offset is the one to keep, not a resumed key's first number.
        if let Some(r) = sub.resume_seq.get_mut(t) {
            *r = None;
        }
    }
    if layered {
        if let Some(sel) = sub.layers.get_mut(t) {
            sel.source_changed();
        }
    }
    if let Some(sel) = sub.svc.get_mut(t) {
        sel.source_changed();
    }
    true
}

/// `h` went out to viewer `s`: remember how it was numbered, for the next change of source.
fn note_sent(s: &mut Session, h: &Handle, now: Instant) {
    let session::Role::Subscriber(sub) = &mut s.role else {
        return;
    };
    let t = usize::from(h.track);
    let src = h.bytes();
    if let (Some(c), Some(&(so, to))) = (sub.continuity.get_mut(t), sub.offsets.get(t)) {
        c.sent(
            (be16(src, 2).wrapping_add(so), be32(src, 4).wrapping_add(to)),
            now,
        );
    }
}

/// A packet of a scalable (VP9, AV1) track to one viewer: sent or not by its
/// [`SvcSelect`](super::svc::SvcSelect), numbered with the packets it did not get taken
/// out, the marker bit on the end of its top layer. `None` in the result: not for this
/// viewer. The `bool`: ask the publisher for a keyframe (the viewer waits to move up).
fn forward_svc(
    s: &mut Session,
    h: &Handle,
    (tag, view): (&SvcTag, &SvcLayers),
    (now, pad): (Instant, u16),
    out: &mut dyn Output,
) -> (Option<Result<usize, SendError>>, bool) {
    let session::Role::Subscriber(sub) = &mut s.role else {
        return (None, false);
    };
    let t = usize::from(h.track);
    let budget = sub.budget();
    let cap = sub.layers.get(t).map_or(u8::MAX, |l| l.cap);
    let (Some(sel), Some(offsets)) = (sub.svc.get_mut(t), sub.offsets.get_mut(t)) else {
        return (None, false);
    };
    let seq = be16(h.bytes(), 2);
    let d = sel.on_packet(
        view,
        (tag, seq),
        &mut offsets.0,
        (now, PLI_INTERVAL, cap, budget),
    );
    let Some(off) = d.forward else {
        return (None, d.ask);
    };
    let r = with_seq_offset(s, t, off, |s| {
        forward_to(s, h, &mut (None, None), (now, pad, d.marker), out)
    });
    (Some(r), d.ask)
}

/// Run `f` with track `t`'s sequence offset set to `off` (a late VP9 packet goes out under
/// the offset it was due under, `svc`), then put the offset back.
fn with_seq_offset<R>(s: &mut Session, t: usize, off: u16, f: impl FnOnce(&mut Session) -> R) -> R {
    let swap = |s: &mut Session, v: u16| -> Option<u16> {
        let session::Role::Subscriber(sub) = &mut s.role else {
            return None;
        };
        let o = sub.offsets.get_mut(t)?;
        Some(std::mem::replace(&mut o.0, v))
    };
    let before = swap(s, off);
    let r = f(s);
    if let Some(b) = before {
        swap(s, b);
    }
    r
}

/// Run `f` with track `t`'s sequence offset and VP8 picture id offset set to `numbering`
/// (a late packet of a simulcast layer goes out as its run numbered it, `layers`), then
/// put them back.
fn with_numbering<R>(
    s: &mut Session,
    t: usize,
    (seq_off, pid_off): (u16, u16),
    f: impl FnOnce(&mut Session) -> R,
) -> R {
    let swap = |s: &mut Session, pid: u16| -> Option<u16> {
        let session::Role::Subscriber(sub) = &mut s.role else {
            return None;
        };
        Some(sub.layers.get_mut(t)?.swap_pid_off(pid))
    };
    let before = swap(s, pid_off);
    let r = with_seq_offset(s, t, seq_off, f);
    if let Some(b) = before {
        swap(s, b);
    }
    r
}

/// A packet of a simulcast layer to one viewer: chosen or not by its [`Select`], sent with
/// the viewer's offsets and VP8 picture ids. `None` in the result: not this viewer's layer.
fn forward_layer(
    s: &mut Session,
    h: &Handle,
    (tag, view): (&LayerTag, &Ranking),
    (now, pad): (Instant, u16),
    out: &mut dyn Output,
) -> (Option<Result<usize, SendError>>, Decision) {
    let session::Role::Subscriber(sub) = &mut s.role else {
        return (None, Decision::default());
    };
    let t = usize::from(h.track);
    let budget = sub.budget();
    let (Some(sel), Some(offsets)) = (sub.layers.get_mut(t), sub.offsets.get_mut(t)) else {
        return (None, Decision::default());
    };
    let src = h.bytes();
    let d = sel.on_packet(view, tag, src, offsets, (now, PLI_INTERVAL, budget));
    // A late packet (a repaired loss) from before the viewer's switch to this layer: the
    // current offsets would number it among the previous layer's packets.
    let seq_off = d.numbering.map_or(offsets.0, |n| n.0);
    if !d.forward || !sel.owns(be16(src, 2).wrapping_add(seq_off)) {
        return (None, d);
    }
    let mut ids = (None, None);
    let r = match d.numbering {
        Some(n) => with_numbering(s, t, n, |s| {
            forward_to(s, h, &mut ids, (now, pad, false), out)
        }),
        None => forward_to(s, h, &mut ids, (now, pad, false), out),
    };
    if r.is_ok() {
        if let session::Role::Subscriber(sub) = &mut s.role {
            if let (Some(sel), Some(&(so, to))) = (sub.layers.get_mut(t), sub.offsets.get(t)) {
                let seq = be16(src, 2).wrapping_add(so);
                let ts = be32(src, 4).wrapping_add(to);
                sel.sent((seq, ts), ids, now);
            }
        }
    }
    (Some(r), d)
}

fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |x| u16::from_be_bytes([x[0], x[1]]))
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}

/// Resend a cached packet to subscriber `s`: as RTX (RFC 4588 §4) on the track's RTX SSRC
/// where the subscriber negotiated it, else as a copy of the original on the media SSRC.
/// A VP9 packet with spatial layers goes under the numbering it was sent with (`svc`),
/// and only of a layer the viewer gets now.
pub(super) fn retransmit(
    s: &mut Session,
    h: &Handle,
    now: Instant,
    out: &mut dyn Output,
) -> Result<usize, SendError> {
    let session::Role::Subscriber(sub) = &s.role else {
        return Err(SendError::Cancelled);
    };
    let t = usize::from(h.track);
    match (h.svc, sub.svc.get(t), sub.offsets.get(t)) {
        (Some(tag), Some(sel), Some(&(off, _))) if !sub.relay && sel.in_use() => {
            // Only of a layer the viewer gets now: after moving down it waits for a
            // keyframe (`SvcSelect`), and resending the upper layers of the pictures before
            // it would only fill the path that made it move down.
            if sel.current.is_none_or(|c| tag.sid > c) {
                return Err(SendError::Cancelled);
            }
            let Some(off) = sel.offset_at(be16(h.bytes(), 2), off) else {
                return Err(SendError::Cancelled);
            };
            with_seq_offset(s, t, off, |s| resend(s, h, now, out))
        }
        _ => resend(s, h, now, out),
    }
}

fn resend(
    s: &mut Session,
    h: &Handle,
    now: Instant,
    out: &mut dyn Output,
) -> Result<usize, SendError> {
    let session::Role::Subscriber(sub) = &mut s.role else {
        return Err(SendError::Cancelled);
    };
    let track = usize::from(h.track);
    let layered = match h.layer {
        Some(tag) if !sub.relay => {
            let Some(sel) = sub.layers.get(track) else {
                return Err(SendError::Cancelled);
            };
            let seq_off = sub.offsets.get(track).map_or(0, |o| o.0);
            // The viewer's offsets are its current layer's: a packet of another layer, or
            // of this one from before the switch, or of a temporal layer it was not sent,
            // is not what the viewer lost under any number.
            let tid = tag.temporal.then_some(tag.tid);
            let numbering = match sel.current == Some(tag.layer) {
                true => sel.numbering_of(be16(h.bytes(), 2), tid),
                false => None,
            };
            let Some((seq_off_then, pid_off_then)) = numbering else {
                return Err(SendError::Cancelled);
            };
            if (seq_off_then, pid_off_then) != (seq_off, sel.ids().pid_off()) {
                // Numbered as when it first went: the offsets of its run, for this send.
                return with_numbering(s, track, (seq_off_then, pid_off_then), |s| {
                    resend(s, h, now, out)
                });
            }
            Some((tag, sel.ids()))
        }
        _ => None,
    };
    let Some((rtx_ssrc, rtx_pt)) = sub.rtx.get(track).copied().flatten() else {
        // A retransmission goes alone: nothing to equalize it with.
        return forward_to(s, h, &mut (None, None), (now, 0, false), out);
    };
    let via = s.via;
    let (Some(remote), Some(&(seq_off, ts_off)), Some(rtx_seq)) =
        (s.remote, sub.offsets.get(track), sub.rtx_seq.get_mut(track))
    else {
        return Err(SendError::Cancelled);
    };
    let src = h.bytes();
    let exts = sub.extensions.as_deref();
    let mut bwe = sub.bwe.as_deref_mut();
    if s.outbound.is_none() && !s.plain {
        return Err(SendError::Cancelled);
    }
    let mut ctx = s.outbound.as_mut();
    let seq = *rtx_seq;
    let mut sent = 0;
    out.send_from(via, remote, s.local, &mut |buf| {
        let n = src.len();
        // Room for the OSN and the SRTP tag.
        if n + 2 + srtp::MAX_OVERHEAD > buf.len() {
            return None;
        }
        buf.get_mut(..n)?.copy_from_slice(src);
        let h = rtp::Header::parse(buf.get(..n)?).ok()?;
        // The original sequence number as this subscriber numbers it.
        let osn = h.sequence.wrapping_add(seq_off);
        rtp::set_ssrc(buf, rtx_ssrc).ok()?;
        rtp::set_sequence(buf, seq).ok()?;
        rtp::set_timestamp(buf, h.timestamp.wrapping_add(ts_off)).ok()?;
        let b1 = buf.get_mut(1)?;
        *b1 = (*b1 & 0x80) | rtx_pt;
        if let Some(map) = exts {
            rtp::remap_extensions(buf, &h, map).ok()?;
        }
        if let Some((tag, ids)) = &layered {
            ids.rewrite(buf, tag);
        }
        // OSN first in the payload; the original payload (and any padding) follows.
        let at = h.payload_offset;
        buf.copy_within(at..n, at + 2);
        buf.get_mut(at..at + 2)?.copy_from_slice(&osn.to_be_bytes());
        let mut n = n + 2;
        if let Some(b) = bwe.as_deref_mut() {
            n = b.stamp(buf, n, now);
        }
        let len = seal_rtp(ctx.as_deref_mut(), buf, n)?;
        sent = len;
        Some(len)
    })?;
    *rtx_seq = seq.wrapping_add(1);
    Ok(sent)
}

/// Copy `h` into a transmit buffer, rewrite it for subscriber `s` and protect it. A
/// simulcast layer's VP8 picture id and TL0PICIDX are rewritten too; `ids` gets what they
/// became. With `pad` (> 0), a packet that does not end its frame is padded to a multiple
/// of `pad` bytes ([`padding`]).
fn forward_to(
    s: &mut Session,
    h: &Handle,
    ids: &mut (Option<u16>, Option<u8>),
    (now, pad, marker): (Instant, u16, bool),
    out: &mut dyn Output,
) -> Result<usize, SendError> {
    let via = s.via;
    let (Some(remote), session::Role::Subscriber(sub)) = (s.remote, &mut s.role) else {
        return Err(SendError::Cancelled);
    };
    let track = usize::from(h.track);
    if sub.relay {
        return relay_to(sub, &mut s.outbound, (via, remote), h, out);
    }
    let (Some(&ssrc), Some(&(mut seq_off, ts_off))) =
        (sub.ssrcs.get(track), sub.offsets.get(track))
    else {
        return Err(SendError::Cancelled);
    };
    let src = h.bytes();
    if let Some(next) = sub.resume_seq.get_mut(track).and_then(Option::take) {
        // First packet on a resumed key: pick the offset that numbers it `next`.
        let theirs = src
            .get(2..4)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        seq_off = next.wrapping_sub(theirs);
        if let Some(o) = sub.offsets.get_mut(track) {
            o.0 = seq_off;
        }
    }
    let pts = &sub.payload_types;
    let exts = sub.extensions.as_deref();
    let mut bwe = sub.bwe.as_deref_mut();
    let layered = h
        .layer
        .and_then(|tag| Some((tag, sub.layers.get(track)?.ids())));
    // A subscriber still in its DTLS handshake gets nothing yet; a plain one needs no keys.
    if s.outbound.is_none() && !s.plain {
        return Err(SendError::Cancelled);
    }
    let mut ctx = s.outbound.as_mut();
    let mut sent = 0;
    out.send_from(via, remote, s.local, &mut |buf| {
        let n = src.len();
        buf.get_mut(..n)?.copy_from_slice(src);
        let seq = u16::from_be_bytes([buf[2], buf[3]]).wrapping_add(seq_off);
        let ts = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]).wrapping_add(ts_off);
        rtp::set_ssrc(buf, ssrc).ok()?;
        rtp::set_sequence(buf, seq).ok()?;
        rtp::set_timestamp(buf, ts).ok()?;
        // Payload type in the subscriber's numbering (marker bit kept).
        let b1 = buf.get_mut(1)?;
        *b1 = (*b1 & 0x80) | pts[usize::from(*b1 & 0x7f)];
        if marker {
            *b1 |= 0x80;
        }
        if let Some(map) = exts {
            if buf[0] & 0x10 != 0 {
                let h = rtp::Header::parse(buf.get(..n)?).ok()?;
                rtp::remap_extensions(buf, &h, map).ok()?;
            }
        }
        if let Some((tag, ids_off)) = &layered {
            *ids = ids_off.rewrite(buf, tag);
        }
        // The transport-wide number may grow the header and move the payload; the padding
        // goes after it so the datagram is the multiple of `pad` that segmentation wants.
        let n = match bwe.as_deref_mut() {
            Some(b) => b.stamp(buf, n, now),
            None => n,
        };
        let tag = ctx.as_deref().map_or(0, srtp::Context::tag_len);
        let n = padding::equalize(buf, n, tag, usize::from(pad));
        let len = seal_rtp(ctx.as_deref_mut(), buf, n)?;
        sent = len;
        Some(len)
    })?;
    Ok(sent)
}

/// Copy `h` unchanged to a relay-out's far node, protected with the link key, and note the
/// track's SSRC so NACK/PLI from the far node (which names it) find the track.
fn relay_to(
    sub: &mut Subscriber,
    outbound: &mut Option<srtp::Context>,
    (via, remote): (Via, SocketAddr),
    h: &Handle,
    out: &mut dyn Output,
) -> Result<usize, SendError> {
    let src = h.bytes();
    let ssrc = src
        .get(8..12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes);
    if let (Some(slot), Some(ssrc)) = (sub.ssrcs.get_mut(usize::from(h.track)), ssrc) {
        *slot = ssrc;
    }
    if let (Some(tag), Some(seen), Some(ssrc)) = (h.layer, sub.relay_layers.as_deref_mut(), ssrc) {
        seen.note(ssrc, layers::slot(h.track, tag.layer));
    }
    let Some(ctx) = outbound.as_mut() else {
        return Err(SendError::Cancelled);
    };
    let mut sent = 0;
    out.send(via, remote, &mut |buf| {
        let n = src.len();
        buf.get_mut(..n)?.copy_from_slice(src);
        let len = ctx.protect_rtp(buf, n).ok()?;
        sent = len;
        Some(len)
    })?;
    Ok(sent)
}
