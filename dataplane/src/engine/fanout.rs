//! Fan-out: one decrypted packet to every subscriber of its stream on this worker (copy,
//! rewrite, protect per subscriber) and one refcounted handle to every other worker with
//! subscribers; retransmissions and relay-outs use the same per-subscriber send.

use std::net::SocketAddr;

use switchyard_shared::packet::rtp;
use switchyard_shared::srtp;
use switchyard_shared::stats::{Counter, DropReason};

use super::pool::Handle;
use super::session::{self, seal_rtp, Session, Subscriber};
use super::{Engine, Inbound, Output, SendError, StreamId};
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
        let Some(st) = self.streams.get(&stream) else {
            return;
        };
        let mut sent = 0u64;
        let mut relayed = 0u64;
        let mut bytes = 0u64;
        let mut full = 0u64;
        for &idx in &st.subscribers {
            let Some(s) = self.sessions.get_mut(idx) else {
                continue;
            };
            // A WebRTC subscriber gets media once ICE has latched its address and DTLS has
            // given its keys; until then skipping it is not a drop (counting it as
            // `queue_full` made every WHEP handshake look like a full send queue).
            if !s.can_send() {
                continue;
            }
            if let session::Role::Subscriber(sub) = &s.role {
                if !sub.wants(h.track) {
                    continue;
                }
            }
            match forward_to(s, h, out) {
                Ok(n) => {
                    sent += 1;
                    bytes += n as u64;
                    if s.via == Via::Relay {
                        relayed += 1;
                    }
                }
                Err(_) => full += 1,
            }
        }
        self.count(Counter::RelayTxPackets, relayed);
        self.count(Counter::Forwarded, sent);
        self.count(Counter::TxPackets, sent);
        self.count(Counter::TxBytes, bytes);
        if full > 0 {
            self.count(DropReason::QueueFull.counter(), full);
        }
    }
}

/// Resend a cached packet to subscriber `s`: as RTX (RFC 4588 §4) on the track's RTX SSRC
/// where the subscriber negotiated it, else as a copy of the original on the media SSRC.
pub(super) fn retransmit(
    s: &mut Session,
    h: &Handle,
    out: &mut dyn Output,
) -> Result<usize, SendError> {
    let session::Role::Subscriber(sub) = &mut s.role else {
        return Err(SendError::Cancelled);
    };
    let track = usize::from(h.track);
    let Some((rtx_ssrc, rtx_pt)) = sub.rtx.get(track).copied().flatten() else {
        return forward_to(s, h, out);
    };
    let via = s.via;
    let (Some(remote), Some(&(seq_off, ts_off)), Some(rtx_seq)) =
        (s.remote, sub.offsets.get(track), sub.rtx_seq.get_mut(track))
    else {
        return Err(SendError::Cancelled);
    };
    let src = h.bytes();
    let exts = sub.extensions.as_deref();
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
        // OSN first in the payload; the original payload (and any padding) follows.
        let at = h.payload_offset;
        buf.copy_within(at..n, at + 2);
        buf.get_mut(at..at + 2)?.copy_from_slice(&osn.to_be_bytes());
        let len = seal_rtp(ctx.as_deref_mut(), buf, n + 2)?;
        sent = len;
        Some(len)
    })?;
    *rtx_seq = seq.wrapping_add(1);
    Ok(sent)
}

/// Copy `h` into a transmit buffer, rewrite it for subscriber `s` and protect it.
fn forward_to(s: &mut Session, h: &Handle, out: &mut dyn Output) -> Result<usize, SendError> {
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
        if let Some(map) = exts {
            if buf[0] & 0x10 != 0 {
                let h = rtp::Header::parse(buf.get(..n)?).ok()?;
                rtp::remap_extensions(buf, &h, map).ok()?;
            }
        }
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
