//! DTLS-SRTP handshakes of the node's WebRTC sessions, run by the slow path.
//!
//! Workers hand over the DTLS records they receive from a session's ICE-validated address;
//! this table feeds them to the session's [`DtlsSession`] and turns what comes out into
//! worker commands (flights to send, negotiated keys) and outcomes for the slow path. The
//! per-packet media path never waits for any of it.

use std::collections::HashMap;
use std::time::Instant;

use switchyard_shared::command::{SessionId, SrtpKeys};

use crate::dtls::{DtlsConfig, DtlsError, DtlsEvent, DtlsSession, Failure};

/// What a poll produced, for the slow path to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send this flight from `worker`'s socket to the session's peer.
    Transmit {
        worker: u16,
        id: SessionId,
        data: Vec<u8>,
    },
    /// The handshake completed: the worker gets these keys.
    Connected {
        worker: u16,
        id: SessionId,
        keys: SrtpKeys,
    },
    /// The handshake failed: the session ends.
    Failed { id: SessionId, failure: Failure },
}

pub struct Handshakes {
    config: DtlsConfig,
    sessions: HashMap<SessionId, (u16, DtlsSession)>,
}

impl Handshakes {
    pub fn new(config: DtlsConfig) -> Self {
        Self {
            config,
            sessions: HashMap::new(),
        }
    }

    /// Our certificate's fingerprint, for SDP answers.
    pub fn fingerprint(&self) -> String {
        self.config.fingerprint()
    }

    /// Start the server side for a session placed on `worker`.
    pub fn start(
        &mut self,
        id: SessionId,
        worker: u16,
        remote_fingerprint: &str,
        now: Instant,
    ) -> Result<(), DtlsError> {
        let s = DtlsSession::new(&self.config, remote_fingerprint, now)?;
        self.sessions.insert(id, (worker, s));
        Ok(())
    }

    pub fn datagram(&mut self, id: SessionId, data: &[u8], now: Instant) {
        if let Some((_, s)) = self.sessions.get_mut(&id) {
            s.handle_datagram(data, now);
        }
    }

    pub fn remove(&mut self, id: SessionId) {
        self.sessions.remove(&id);
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Drive every handshake: timeouts, flights to send, results. Sessions that ended (in
    /// either way) are forgotten here; the DTLS association after the handshake carries
    /// nothing we use yet (data channels come later).
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Outcome>) {
        let mut done = Vec::new();
        for (&id, (worker, s)) in &mut self.sessions {
            s.handle_timeout(now);
            while let Some(data) = s.poll_transmit() {
                out.push(Outcome::Transmit {
                    worker: *worker,
                    id,
                    data,
                });
            }
            while let Some(ev) = s.poll_event() {
                match ev {
                    DtlsEvent::Connected(keys) => out.push(Outcome::Connected {
                        worker: *worker,
                        id,
                        keys,
                    }),
                    DtlsEvent::Failed(failure) => {
                        out.push(Outcome::Failed { id, failure });
                        done.push(id);
                    }
                }
            }
        }
        for id in done {
            self.sessions.remove(&id);
        }
    }
}
