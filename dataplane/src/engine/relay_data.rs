//! Data channel fragments on a relay link, in the engine: the relay-out numbers, protects,
//! sends and keeps them for NACK repair; the relay-in tracks their gaps (NACKed upstream
//! with the media's) and hands them to the slow path. What a fragment says is the slow
//! path's business ([`crate::datachan::relay`]); here they are opaque payloads.
//!
//! Kept off the media path: the only cost to a media packet is one SSRC compare on a relay
//! socket. A data fragment allocates (a copy for the slow path, the relay-out's cache
//! entries until they are first reused); data channel traffic is a few messages a second,
//! not packets per frame.

use std::time::Instant;

use switchyard_shared::command::SessionId;
use switchyard_shared::srtp;
use switchyard_shared::stats::{Counter, DropReason};

use super::timer::Timer;
use super::{session, Engine, Output, WorkerEvent, MAX_DATAGRAM, MAX_PENDING_EVENTS};
use crate::datachan::relay::{PAYLOAD_TYPE, SSRC};
use crate::via::Via;

/// Bytes of the RTP header a data fragment goes out with (no CSRCs, no extension).
const RTP_HEADER: usize = 12;

/// Largest fragment payload the engine sends: it must fit a datagram once protected.
pub const MAX_FRAGMENT_PAYLOAD: usize = MAX_DATAGRAM - RTP_HEADER - srtp::MAX_OVERHEAD;

/// Send the plain RTP packet `pkt` to a relay-out's far node, protected with the link key.
fn send_protected(
    s: &mut session::Session,
    pkt: &[u8],
    out: &mut dyn Output,
) -> Result<(), DropReason> {
    let (Some(remote), Some(ctx)) = (s.remote, s.outbound.as_mut()) else {
        return Err(DropReason::NoRoute);
    };
    out.send(Via::Relay, remote, &mut |buf| {
        buf.get_mut(..pkt.len())?.copy_from_slice(pkt);
        ctx.protect_rtp(buf, pkt.len()).ok()
    })
    .map_err(|_| DropReason::QueueFull)
}

impl Engine {
    /// `WorkerCommand::RelayData`: send a frame's fragments, in order, over relay-out `id`.
    /// A session that is not a relay-out, or a fragment too large for a datagram, is
    /// counted as a drop (the slow path never builds either).
    pub(super) fn send_relay_data(
        &mut self,
        id: SessionId,
        fragments: &[Vec<u8>],
        out: &mut dyn Output,
    ) {
        let Some(s) = self.by_id.get(&id).and_then(|&i| self.sessions.get_mut(i)) else {
            return self.drop_packet(DropReason::NoRoute);
        };
        let mut data = match &mut s.role {
            session::Role::Subscriber(sub) => sub.data.take(),
            session::Role::Publisher(_) => None,
        };
        let Some(d) = data.as_mut() else {
            return self.drop_packet(DropReason::NoRoute);
        };
        let (mut sent, mut dropped) = (0u64, Vec::new());
        for f in fragments {
            if f.len() > MAX_FRAGMENT_PAYLOAD {
                dropped.push(DropReason::Oversize);
                continue;
            }
            // Numbered and cached even if this send fails: a gap the far node NACKs is
            // then repaired like any loss.
            let pkt = d.push(f);
            match send_protected(s, pkt, out) {
                Ok(()) => sent += 1,
                Err(r) => dropped.push(r),
            }
        }
        if let session::Role::Subscriber(sub) = &mut s.role {
            sub.data = data;
        }
        self.count(Counter::TxPackets, sent);
        self.count(Counter::RelayTxPackets, sent);
        for r in dropped {
            self.drop_packet(r);
        }
    }

    /// The far node of relay-out `idx` NACKed data fragments `seqs`: resend those still
    /// cached.
    pub(super) fn resend_relay_data(&mut self, idx: u32, seqs: &[u16], out: &mut dyn Output) {
        let Some(s) = self.sessions.get_mut(idx) else {
            return;
        };
        let data = match &mut s.role {
            session::Role::Subscriber(sub) => sub.data.take(),
            session::Role::Publisher(_) => None,
        };
        let Some(d) = data else { return };
        let mut sent = 0u64;
        for &seq in seqs {
            if let Some(pkt) = d.get(seq) {
                if send_protected(s, pkt, out).is_ok() {
                    sent += 1;
                }
            }
        }
        if let session::Role::Subscriber(sub) = &mut s.role {
            sub.data = Some(d);
        }
        self.count(Counter::Retransmitted, sent);
        self.count(Counter::TxPackets, sent);
        self.count(Counter::RelayTxPackets, sent);
    }

    /// Whether an authenticated packet of session `idx` is a relay link's data fragment:
    /// only a relay-in's, so a media peer's SSRC never diverts anything.
    pub(super) fn is_relay_data(&self, idx: u32, ssrc: u32, payload_type: u8) -> bool {
        ssrc == SSRC
            && payload_type == PAYLOAD_TYPE
            && self.sessions.get(idx).is_some_and(|s| s.via == Via::Relay)
    }

    /// A relay-in's data fragment `seq` arrived at `at`: note it for the gap NACKs and hand
    /// it to the slow path (never to media subscribers). Bounded by the event queue.
    pub(super) fn on_relay_data(
        &mut self,
        idx: u32,
        seq: u16,
        payload: Option<&[u8]>,
        at: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(idx) else {
            return;
        };
        let id = s.id;
        let session::Role::Publisher(p) = &mut s.role else {
            return self.drop_packet(DropReason::NoRoute);
        };
        let Some(gaps) = p.data_in.as_mut() else {
            return self.drop_packet(DropReason::NoRoute);
        };
        gaps.on_packet(seq, at);
        self.timers.note_gaps(Timer::RelayNacks, gaps);
        let Some(payload) = payload else {
            return self.drop_packet(DropReason::Malformed);
        };
        if self.events.len() >= MAX_PENDING_EVENTS {
            return self.drop_packet(DropReason::QueueFull);
        }
        self.events.push_back(WorkerEvent::RelayData {
            id,
            seq,
            payload: payload.to_vec(),
        });
        self.count(Counter::RelayRxPackets, 1);
    }
}
