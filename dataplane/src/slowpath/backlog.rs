//! Events for the control plane and the ring they go through: the backlog that waits while
//! the event ring is full, kept bounded by coalescing (see the module doc of
//! [`slowpath`](super)), and a ring found corrupt replaced by a new file.

use std::time::{Duration, Instant};

use switchyard_shared::command::{self, Event, SessionId};
use switchyard_shared::ring::{self, PushError, RingError};
use switchyard_shared::stats::Counter;

use super::SlowPath;

/// Shortest time between two recreations of a ring found corrupt: something that keeps
/// scribbling on the file costs a new file (and a log line) a second, not one per turn.
const RECREATE_INTERVAL: Duration = Duration::from_secs(1);

/// An event waiting for room in the event ring.
pub(super) enum Pending {
    /// Kept as it is, encoded: lifecycle answers, DTLS outcomes, `Hello`.
    Event(Vec<u8>),
    /// A `RemoteLatched` of this session: the address is the latest one in
    /// `SlowPath::latched`, read when it goes into the ring; gone from there when the
    /// session ended since (then nothing is sent).
    Latched(SessionId),
    /// An event of a snapshot (its `Hello`, sessions, done), dropped when a newer snapshot
    /// is asked for; `worker` is whose counters say so.
    Snapshot { worker: u16, msg: Vec<u8> },
}

impl SlowPath {
    /// Emit `hello` now and again before every snapshot.
    pub fn announce(&mut self, hello: Event) {
        self.emit(&hello);
        self.hello = Some(hello);
    }

    /// Queue an event for the control plane.
    pub fn emit(&mut self, ev: &Event) {
        match ev {
            Event::RemoteLatched { id, remote } => {
                let worker = self.sessions.get(id).map_or(0, |s| s.worker);
                if self.latched.insert(*id, (*remote, worker)).is_some() {
                    // The pending one now carries this address.
                    self.count(worker, Counter::RingEventsCoalesced, 1);
                } else {
                    self.backlog.push_back(Pending::Latched(*id));
                }
            }
            _ => {
                let mut buf = Vec::new();
                match command::encode(ev, &mut buf) {
                    Ok(()) => self.backlog.push_back(Pending::Event(buf)),
                    Err(e) => tracing::error!(error = %e, ?ev, "event does not encode; dropped"),
                }
            }
        }
        self.flush();
    }

    /// Queue an event of a snapshot (see [`Pending::Snapshot`]).
    pub(super) fn emit_snapshot(&mut self, worker: u16, ev: &Event) {
        let mut msg = Vec::new();
        match command::encode(ev, &mut msg) {
            Ok(()) => self.backlog.push_back(Pending::Snapshot { worker, msg }),
            Err(e) => tracing::error!(error = %e, ?ev, "event does not encode; dropped"),
        }
        self.flush();
    }

    /// Session `id` ended: an address still waiting for the ring no longer matters.
    pub(super) fn drop_latched(&mut self, id: SessionId) {
        if let Some((_, worker)) = self.latched.remove(&id) {
            self.count(worker, Counter::RingEventsCoalesced, 1);
        }
    }

    pub(super) fn flush(&mut self) {
        if self.ring_retry.is_some() {
            return;
        }
        let mut latched = Vec::new();
        while let Some(p) = self.backlog.front() {
            let msg = match p {
                Pending::Event(msg) | Pending::Snapshot { msg, .. } => msg,
                Pending::Latched(id) => {
                    let Some(&(remote, _)) = self.latched.get(id) else {
                        // Its session ended meanwhile (counted then).
                        self.backlog.pop_front();
                        continue;
                    };
                    let ev = Event::RemoteLatched { id: *id, remote };
                    if command::encode(&ev, &mut latched).is_err() {
                        // A fixed-size event: cannot exceed a slot.
                        self.backlog.pop_front();
                        continue;
                    }
                    &latched
                }
            };
            match self.ring.events.push(msg) {
                Ok(()) => {
                    if let Some(Pending::Latched(id)) = self.backlog.pop_front() {
                        self.latched.remove(&id);
                    }
                }
                Err(PushError::Full) => break,
                Err(PushError::TooLarge) => {
                    // `encode` refused anything larger; never retried either way.
                    self.backlog.pop_front();
                }
                Err(PushError::Corrupt) => {
                    let why = self.ring.events.corruption().unwrap_or("").to_owned();
                    self.ring_corrupt(&RingError::Corrupt(why));
                    break;
                }
            }
        }
    }

    /// Whether the ring can be used this turn: a corrupt one found now is replaced at once
    /// (or, within [`RECREATE_INTERVAL`] of the last replacement, a little later).
    pub(super) fn ring_usable(&mut self) -> bool {
        if let Some(at) = self.ring_retry {
            if Instant::now() < at {
                return false;
            }
            self.recreate_ring();
            return self.ring_retry.is_none();
        }
        if let Err(e) = self.ring.check() {
            self.ring_corrupt(&e);
        }
        self.ring_retry.is_none()
    }

    /// The ring is corrupt: say so once, and put a new file in its place. The control plane
    /// sees the file replaced, attaches to the new one and asks for a snapshot; commands
    /// still in the old file are lost (their API requests time out), events waiting here go
    /// into the new one.
    pub(super) fn ring_corrupt(&mut self, why: &RingError) {
        if self.ring_retry.is_some() {
            return;
        }
        tracing::error!(ring = %self.ring_path.display(), error = %why, "command ring corrupt; replacing it with a new file");
        let soon = self
            .last_recreate
            .and_then(|t| t.checked_add(RECREATE_INTERVAL));
        match soon {
            Some(at) if Instant::now() < at => self.ring_retry = Some(at),
            _ => self.recreate_ring(),
        }
    }

    fn recreate_ring(&mut self) {
        let slots = u32::try_from(self.ring.commands.capacity()).unwrap_or(ring::DEFAULT_SLOTS);
        let now = Instant::now();
        self.last_recreate = Some(now);
        match ring::recreate_data(&self.ring_path, slots) {
            Ok(side) => {
                self.ring = side;
                self.ring_retry = None;
                tracing::warn!(ring = %self.ring_path.display(), "new command ring in place; the control plane attaches to it");
            }
            Err(e) => {
                // Logged once per attempt, a second apart at most.
                tracing::error!(ring = %self.ring_path.display(), error = %e, "cannot recreate the command ring; trying again in a second");
                self.ring_retry = Some(now + RECREATE_INTERVAL);
            }
        }
    }
}
