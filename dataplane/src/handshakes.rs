//! DTLS-SRTP handshakes of the node's WebRTC sessions, run by the slow path.
//!
//! Workers hand over the DTLS records they receive from a session's ICE-validated address;
//! this table feeds them to the session's [`DtlsSession`] and turns what comes out into
//! worker commands (flights to send, negotiated keys) and outcomes for the slow path. The
//! per-packet media path never waits for any of it.
//!
//! A connected session stays here for its whole life: its DTLS connection carries the SCTP
//! association of its data channels, whose events this table passes on as
//! [`Outcome::Data`] and whose commands it takes with [`Handshakes::send_data`].

use std::collections::HashMap;
use std::time::Instant;

use switchyard_shared::command::{SessionId, SrtpKeys};

use crate::datachan::{DataCommand, DataEvent};
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
    /// Something the peer did on its data channels.
    Data { id: SessionId, event: DataEvent },
    /// Data channel messages the session's task sent or dropped since the last poll
    /// (reported only when not both zero).
    DataCounts {
        worker: u16,
        sent: u64,
        dropped: u64,
    },
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

    /// Queue a data channel command for session `id`. `false`: dropped (unknown session, or
    /// its queue is full); the caller counts it.
    pub fn send_data(&mut self, id: SessionId, cmd: DataCommand) -> bool {
        self.sessions
            .get_mut(&id)
            .is_some_and(|(_, s)| s.send_data(cmd))
    }

    pub fn remove(&mut self, id: SessionId) {
        self.sessions.remove(&id);
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Drive every session: handshake timeouts, flights to send, results, data channel
    /// events and counts. Failed sessions are forgotten here; connected ones stay until
    /// [`Self::remove`].
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
            while let Some(event) = s.poll_data() {
                out.push(Outcome::Data { id, event });
            }
            let (sent, dropped) = s.take_data_counts();
            if sent > 0 || dropped > 0 {
                out.push(Outcome::DataCounts {
                    worker: *worker,
                    sent,
                    dropped,
                });
            }
        }
        for id in done {
            self.sessions.remove(&id);
        }
    }
}
