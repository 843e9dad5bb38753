//! Messages from other workers: media for local subscribers, retransmissions, NACK and PLI
//! for a publisher here, sender reports, and packet handles coming home to their pool.

use std::time::Instant;

use switchyard_shared::stats::{Counter, DropReason};

use super::fanout::retransmit;
use super::pool::Handle;
use super::{Engine, Inbound, Output};
use crate::via::Via;

impl Engine {
    /// A message from another worker.
    pub fn handle_inbound(&mut self, msg: Inbound, now: Instant, out: &mut dyn Output) {
        match msg {
            Inbound::Media(h) => {
                self.count(Counter::CrossWorkerIn, 1);
                let stream = h.stream;
                self.forward_local(stream, &h, out);
                self.send_home(h, out);
            }
            Inbound::Retransmit { session, packet } => {
                if let Some(s) = self.sessions.get_key_mut(session) {
                    let relay = s.via == Via::Relay;
                    if retransmit(s, &packet, now, out).is_ok() {
                        self.count_retransmit(relay);
                    }
                }
                self.send_home(packet, out);
            }
            Inbound::Nack {
                from,
                session,
                stream,
                slot,
                seq,
            } => {
                let Some(publisher) = self.streams.get(&stream).and_then(|s| s.publisher) else {
                    return;
                };
                let Some(h) = self.cached(publisher, slot, seq) else {
                    return self.request_upstream(publisher, slot, seq, now);
                };
                if let Err(back) = out.to_worker(from, Inbound::Retransmit { session, packet: h }) {
                    if let Inbound::Retransmit { packet, .. } = back {
                        self.pool.put(packet);
                    }
                    self.drop_packet(DropReason::QueueFull);
                }
            }
            Inbound::Pli { stream, slot } => self.request_keyframe(stream, slot, now, out),
            Inbound::SenderReport(sr) => self.report_local(sr, now, out),
            Inbound::Return(h) => self.pool.put(h),
            Inbound::Prime {
                from,
                session,
                stream,
                choice,
            } => self.prime_remote((from, session), (stream, choice), now, out),
            Inbound::Replay { session, packet } => {
                self.replayed(session, &packet, now, out);
                self.send_home(packet, out);
            }
            Inbound::PrimeDone { session } => self.prime_done(session),
        }
    }

    /// Give a handle back to the worker whose pool it came from. The publisher's worker is
    /// the only one that may drop it (see [`pool`](super::pool)).
    fn send_home(&mut self, h: Handle, out: &mut dyn Output) {
        let home = self.streams.get(&h.stream).and_then(|s| s.publisher_worker);
        match home {
            Some(w) if w != self.worker => {
                if let Err(Inbound::Return(h)) = out.to_worker(w, Inbound::Return(h)) {
                    // The owner's queue is full: dropping our clone is safe (the owner's
                    // strong-count check still sees it gone), the buffer is just not recycled
                    // until the owner's last clone goes.
                    drop(h);
                }
            }
            _ => drop(h),
        }
    }
}
