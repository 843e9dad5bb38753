//! DTLS handshakes on the slow path: what the handshake driver produced each turn (flights
//! to send, keys, data channel events, failures) turned into worker commands and events.

use switchyard_shared::command::Event;
use switchyard_shared::stats::Counter;

use super::{CloseReason, SlowPath};
use crate::engine::WorkerCommand;
use crate::handshakes::Outcome;

impl SlowPath {
    pub(super) fn drive_handshakes(&mut self) {
        let mut outcomes = std::mem::take(&mut self.outcomes);
        self.handshakes
            .poll(std::time::Instant::now(), &mut outcomes);
        for o in outcomes.drain(..) {
            match o {
                Outcome::Transmit { worker, id, data } => {
                    self.command_worker(worker, WorkerCommand::SendRaw { id, data });
                }
                Outcome::Connected { worker, id, keys } => {
                    let profile = keys.profile;
                    tracing::info!(id = id.0, profile = profile.name(), "DTLS connected");
                    self.command_worker(worker, WorkerCommand::SetKeys { id, keys });
                    self.emit(&Event::DtlsConnected { id, profile });
                }
                Outcome::Data { id, event } => self.data_event(id, event),
                Outcome::DataCounts {
                    worker,
                    sent,
                    dropped,
                } => {
                    self.count(worker, Counter::DataChannelOut, sent);
                    self.count(worker, Counter::DataChannelDropped, dropped);
                }
                Outcome::Failed { id, failure } => {
                    tracing::warn!(id = id.0, reason = %failure, "DTLS handshake failed; ending the session");
                    self.emit(&Event::DtlsFailed {
                        id,
                        reason: failure.to_string(),
                    });
                    self.end(id, CloseReason::DtlsFailed);
                }
            }
        }
        self.outcomes = outcomes;
    }
}
