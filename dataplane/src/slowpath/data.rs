//! Data channels on the slow path: WebRTC sessions' events through the
//! [`Hub`](crate::datachan::hub::Hub), the hub's deliveries to sessions' tasks or over relay
//! links, and relay-ins' fragments put back in link order (`datachan::relay::Receiver`)
//! before the hub sees them.

use switchyard_shared::command::SessionId;
use switchyard_shared::stats::Counter;

use super::{add_count, SlowPath};
use crate::datachan::relay::{self as dcrelay, Frame};
use crate::datachan::{DataCommand, DataEvent, Delivery};
use crate::engine::WorkerCommand;

/// A relay-in's data channel side: the stream it publishes here, its link's reassembly, and
/// the channels the far node opened (closed here when the link goes).
pub(super) struct RelayIn {
    pub stream: String,
    pub worker: u16,
    pub receiver: dcrelay::Receiver,
    pub keys: std::collections::BTreeSet<u16>,
}

impl SlowPath {
    /// A session's data channel event goes through the hub; what it decides goes out.
    pub(super) fn data_event(&mut self, id: SessionId, event: DataEvent) {
        let worker = self.sessions.get(&id).map_or(0, |s| s.worker);
        if let DataEvent::Message { .. } = event {
            self.count(worker, Counter::DataChannelIn, 1);
        }
        let mut deliveries = std::mem::take(&mut self.deliveries);
        if let Err(why) = self.hub.handle_event(id, event, &mut deliveries) {
            tracing::trace!(id = id.0, ?why, "data channel message dropped");
            self.count(worker, Counter::DataChannelDropped, 1);
        }
        self.deliver(&mut deliveries);
        self.deliveries = deliveries;
    }

    /// A data channel fragment relay-in `id` received: reassembled in link order, the
    /// frames it completes go to the hub as a local publisher's events would.
    pub(super) fn relay_data(&mut self, id: SessionId, seq: u16, payload: Vec<u8>) {
        let Some(link) = self.relay_ins.get_mut(&id) else {
            return;
        };
        let worker = link.worker;
        let mut frames = Vec::new();
        link.receiver.handle(
            seq,
            bytes::Bytes::from(payload),
            std::time::Instant::now(),
            &mut frames,
        );
        self.relay_frames(id, worker, frames);
    }

    /// Give up gaps the link did not repair in time.
    pub(super) fn poll_relay_ins(&mut self) {
        let now = std::time::Instant::now();
        let waiting: Vec<SessionId> = self
            .relay_ins
            .iter()
            .filter(|(_, l)| l.receiver.waiting())
            .map(|(&id, _)| id)
            .collect();
        for id in waiting {
            let Some(link) = self.relay_ins.get_mut(&id) else {
                continue;
            };
            let worker = link.worker;
            let mut frames = Vec::new();
            link.receiver.poll(now, &mut frames);
            self.relay_frames(id, worker, frames);
        }
    }

    fn relay_frames(
        &mut self,
        id: SessionId,
        worker: u16,
        frames: Vec<Result<Frame, dcrelay::Dropped>>,
    ) {
        let mut deliveries = std::mem::take(&mut self.deliveries);
        for f in frames {
            let Some(link) = self.relay_ins.get_mut(&id) else {
                break;
            };
            let stream = link.stream.as_str();
            match f {
                Ok(frame) => {
                    add_count(&self.stats, worker, Counter::RelayDataIn, 1);
                    match frame {
                        Frame::Open { key, params } => {
                            if self.hub.open_channel(stream, key, params, &mut deliveries) {
                                link.keys.insert(key);
                            }
                        }
                        Frame::Message { key, ppid, payload } => {
                            let r = self
                                .hub
                                .publish(stream, key, ppid, payload, &mut deliveries);
                            if let Err(why) = r {
                                tracing::trace!(
                                    id = id.0,
                                    ?why,
                                    "relayed data channel message dropped"
                                );
                                add_count(&self.stats, worker, Counter::DataChannelDropped, 1);
                            }
                        }
                        Frame::Close { key } => {
                            link.keys.remove(&key);
                            self.hub.close_channel(stream, key, &mut deliveries);
                        }
                    }
                }
                Err(why) => {
                    tracing::debug!(id = id.0, ?why, "relayed data channel fragment dropped");
                    add_count(&self.stats, worker, Counter::DataChannelDropped, 1);
                }
            }
        }
        self.deliver(&mut deliveries);
        self.deliveries = deliveries;
    }

    /// A hub delivery to a relay-out goes over its link: framed, fragmented, and queued to
    /// its worker without waiting (a full queue, or commands already waiting for that worker
    /// in the outbox, drop it, counted, like a subscriber's).
    fn deliver_to_relay(&mut self, worker: u16, d: Delivery) {
        let frame = Frame::from(d.command);
        let mut fragments = Vec::new();
        if dcrelay::encode(&frame, &mut fragments).is_err() {
            return self.count(worker, Counter::DataChannelDropped, 1);
        }
        let cmd = WorkerCommand::RelayData {
            id: d.session,
            fragments,
        };
        if self.outbox.try_send(&self.mailboxes, worker, cmd) {
            self.count(worker, Counter::RelayDataOut, 1);
        } else {
            self.count(worker, Counter::DataChannelDropped, 1);
        }
    }

    /// Hand the hub's deliveries to the sessions' tasks; a full queue drops the message.
    pub(super) fn deliver(&mut self, deliveries: &mut Vec<Delivery>) {
        for d in deliveries.drain(..) {
            if let Some(&worker) = self.relay_outs.get(&d.session) {
                self.deliver_to_relay(worker, d);
                continue;
            }
            let message = matches!(d.command, DataCommand::Send { .. });
            if !self.handshakes.send_data(d.session, d.command) && message {
                let worker = self.sessions.get(&d.session).map_or(0, |s| s.worker);
                self.count(worker, Counter::DataChannelDropped, 1);
            }
        }
    }
}
