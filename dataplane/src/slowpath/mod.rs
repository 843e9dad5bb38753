//! The data plane's slow path: reads commands from the ring, keeps the node-wide routing
//! table (which worker publishes a stream, which workers subscribe to it), tells workers what
//! changed, and turns worker answers into ring events.
//!
//! It is the only writer of the routing table, so workers never coordinate with each other
//! about it. It also owns the data channel [`Hub`]: data channel messages of WebRTC sessions
//! arrive here from their DTLS tasks and leave from here to the subscribers' tasks; they
//! never touch a worker. It is also the authority on which sessions exist: a control plane
//! that restarts rebuilds its view from the snapshot this module streams.
//!
//! Events for the control plane wait in a backlog while the event ring is full (the control
//! plane is stopped or slow). The backlog is bounded without losing what the control plane's
//! state depends on: lifecycle events (added, removed, failed) are kept, and commands stop
//! being read while the backlog is long (see [`BACKLOG_PAUSE`]); a session's address is one
//! pending event whatever the number of moves; snapshot events of a superseded request and
//! events of sessions that ended since are dropped. The ring itself is checked every turn;
//! a corrupt one is logged once and replaced by a new file (see [`switchyard_shared::ring`]).
//! Commands for a worker whose queue is full wait in an `Outbox`, in order, and the slow
//! path reads no commands while they do (back-pressure to the control plane, never a sleep).
//!
//! Files: `mod.rs` (the turn, ring commands in, worker events in), `validate` (what a spec
//! must satisfy), `routing` (the routing table and what workers are told), `outbox`
//! (commands to workers), `backlog` (events out, the ring's health), `handshakes` (DTLS
//! outcomes), `data` (data channels: the hub, relay-in reassembly).

mod backlog;
mod data;
mod handshakes;
mod outbox;
mod routing;
mod validate;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_shared::command::{
    self, CloseReason, Command, CommandError, Event, Keying, NoGroup, Role, SessionId, SessionSpec,
};
use switchyard_shared::ring::{DataSide, RingError};
use switchyard_shared::stats::{Counter, Stats};

use crate::datachan::hub::Hub;
use crate::datachan::relay as dcrelay;
use crate::datachan::Delivery;
use crate::engine::{WorkerCommand, WorkerEvent};
use crate::handshakes::{Handshakes, Outcome};
use crate::worker::Mailbox;

use self::backlog::Pending;
use self::data::RelayIn;
use self::outbox::Outbox;
use self::routing::StreamEntry;

/// How long the slow path sleeps on the command ring between looks at worker events.
const TICK: Duration = Duration::from_millis(2);

/// Events waiting for room in the event ring, plus worker answers still to come (each
/// becomes one), beyond which the slow path stops reading commands: a control plane that is
/// gone, or sends without reading, then meets back-pressure on its own command ring (503s)
/// instead of growing this process. Every event that is kept is caused either by a command
/// (at most one command's worth gets past this point: a snapshot, sessions + 2 events) or
/// by a live session a bounded number of times (its end by the data plane, its latest
/// address, its DTLS outcome: at most four), so the backlog stays below
/// `BACKLOG_PAUSE + 5 × sessions + 2` events, sessions ≤ workers × max sessions per worker.
/// A ring holds 1024 events, so this is four rings' worth.
pub const BACKLOG_PAUSE: usize = 4096;

pub struct SlowPath {
    ring: DataSide,
    mailboxes: Arc<[Arc<Mailbox>]>,
    /// Commands for workers whose queues are full (see [`Outbox`]).
    outbox: Outbox,
    sessions: BTreeMap<SessionId, SessionSpec>,
    /// Sent to a worker, not yet answered.
    pending_add: HashMap<SessionId, SessionSpec>,
    pending_remove: HashMap<SessionId, SessionSpec>,
    /// Why a pending removal happens, when it is not a RemoveSession command.
    close_reasons: HashMap<SessionId, CloseReason>,
    streams: HashMap<String, StreamEntry>,
    next_stream: u32,
    /// Events waiting for room in the event ring, oldest first (see the module doc and
    /// [`BACKLOG_PAUSE`]).
    backlog: VecDeque<Pending>,
    /// The latest address of each session with a `Pending::Latched` in the backlog, and
    /// its worker (for the counters).
    latched: HashMap<SessionId, (SocketAddr, u16)>,
    /// Where the ring file lives, to recreate it when it turns out corrupt.
    ring_path: PathBuf,
    /// While the ring is unusable (corrupt, and no new file yet): when to try again.
    ring_retry: Option<Instant>,
    last_recreate: Option<Instant>,
    buf: Vec<u8>,
    handshakes: Handshakes,
    outcomes: Vec<Outcome>,
    hub: Hub,
    deliveries: Vec<Delivery>,
    /// Relay-ins: the data channel events their links bring, put back in order.
    relay_ins: HashMap<SessionId, RelayIn>,
    /// Relay-outs (hub relay members) and their workers: their deliveries go over the link.
    relay_outs: HashMap<SessionId, u16>,
    /// The data channel counters are the slow path's to write (see `Counter::DataChannelIn`).
    stats: Arc<Stats>,
    /// The `Hello` this process announced, repeated at the head of every snapshot so a
    /// control plane that attaches later still learns the boot id, pid and engine.
    hello: Option<Event>,
    /// The highest id any `AddSession` carried, reported in every `SnapshotDone` so that a
    /// restarted control plane never hands out an id this process has seen.
    highest_id: SessionId,
}

impl SlowPath {
    /// `ring` is attached to the file at `ring_path`, which the slow path replaces if it
    /// turns out corrupt.
    pub fn new(
        ring: DataSide,
        ring_path: PathBuf,
        mailboxes: Arc<[Arc<Mailbox>]>,
        handshakes: Handshakes,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            ring,
            ring_path,
            ring_retry: None,
            last_recreate: None,
            latched: HashMap::new(),
            outbox: Outbox::new(mailboxes.len()),
            mailboxes,
            sessions: BTreeMap::new(),
            pending_add: HashMap::new(),
            pending_remove: HashMap::new(),
            close_reasons: HashMap::new(),
            streams: HashMap::new(),
            next_stream: 1,
            backlog: VecDeque::new(),
            buf: Vec::with_capacity(command::MAX_MESSAGE),
            hello: None,
            highest_id: SessionId(0),
            handshakes,
            outcomes: Vec::new(),
            hub: Hub::new(),
            deliveries: Vec::new(),
            relay_ins: HashMap::new(),
            relay_outs: HashMap::new(),
            stats,
        }
    }

    /// Serve until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.turn(TICK);
        }
    }

    /// Whether commands wait: [`BACKLOG_PAUSE`] events are waiting or owed by workers, or a
    /// worker has no room for the commands already sent to it.
    fn paused(&self) -> bool {
        self.backlog.len() + self.pending_add.len() + self.pending_remove.len() >= BACKLOG_PAUSE
            || !self.outbox.is_empty()
    }

    /// One pass: hand waiting commands to workers that made room, wait up to `wait` for a
    /// command, apply all that are there (unless `paused`, or the ring is
    /// unusable), collect worker answers, push events.
    pub fn turn(&mut self, wait: Duration) {
        self.outbox.flush(&self.mailboxes);
        if self.ring_usable() && !self.paused() {
            self.ring.commands.wait(wait);
            self.read_commands();
        } else if !wait.is_zero() {
            // Nothing to wait on: pace the turn instead of spinning.
            std::thread::sleep(wait);
        }
        for w in 0..self.mailboxes.len() {
            while let Some(ev) = self.mailboxes.get(w).and_then(|m| m.events.pop()) {
                self.worker_event(ev);
            }
        }
        if !self.handshakes.is_empty() {
            self.drive_handshakes();
        }
        self.poll_relay_ins();
        self.flush();
    }

    /// Apply the commands in the ring, stopping when [`SlowPath::paused`].
    fn read_commands(&mut self) {
        while self.ring_retry.is_none() && !self.paused() {
            let mut buf = std::mem::take(&mut self.buf);
            let got = self.ring.commands.pop(&mut buf);
            let more = match got {
                Ok(true) => {
                    match command::decode::<Command>(&buf) {
                        Ok(cmd) => self.command(cmd),
                        Err(e) => tracing::warn!(error = %e, "undecodable command dropped"),
                    }
                    true
                }
                Ok(false) => false,
                // One unreadable slot, skipped: the next message is fine.
                Err(RingError::BadMessage(e)) => {
                    tracing::warn!(error = %e, "command dropped");
                    true
                }
                Err(e) => {
                    self.ring_corrupt(&e);
                    false
                }
            };
            self.buf = buf;
            if !more {
                break;
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::AddSession(spec) => {
                let id = spec.id;
                self.highest_id = self.highest_id.max(id);
                if let Err(error) = self.add(spec) {
                    self.emit(&Event::CommandFailed { id, error });
                }
            }
            Command::RemoveSession { id } => {
                let Some(spec) = self.sessions.remove(&id) else {
                    return self.emit(&Event::CommandFailed {
                        id,
                        error: CommandError::UnknownSession,
                    });
                };
                let w = spec.worker;
                self.pending_remove.insert(id, spec);
                self.command_worker(w, WorkerCommand::Remove { id });
            }
            Command::SetMaxLayer { id, max_layer } => {
                // Not answered (see `Command::SetMaxLayer`): the control plane checked the
                // session, and one that ended since has nothing to cap.
                if let Some(w) = self
                    .sessions
                    .get(&id)
                    .filter(|s| matches!(s.role, Role::Subscriber { .. }))
                    .map(|s| s.worker)
                {
                    self.command_worker(w, WorkerCommand::SetMaxLayer { id, max_layer });
                }
            }
            Command::SetMaxTemporal { id, max_temporal } => {
                if let Some(w) = self
                    .sessions
                    .get(&id)
                    .filter(|s| matches!(s.role, Role::Subscriber { .. }))
                    .map(|s| s.worker)
                {
                    self.command_worker(w, WorkerCommand::SetMaxTemporal { id, max_temporal });
                }
            }
            Command::RetargetRelayIn {
                id,
                keys,
                ssrcs,
                simulcast,
                video,
            } => {
                // Not answered (see `Command::RetargetRelayIn`). The stored spec follows, so
                // a snapshot (and a restart) carries the new key and an unlatched address.
                let Some(spec) = self
                    .sessions
                    .get_mut(&id)
                    .filter(|s| matches!(s.role, Role::RelayIn { .. }))
                else {
                    return;
                };
                spec.keying = Keying::Static(keys.clone());
                spec.remote = None;
                spec.role = Role::RelayIn {
                    ssrcs: ssrcs.clone(),
                    simulcast: simulcast.clone(),
                    video: video.clone(),
                };
                let w = spec.worker;
                self.command_worker(
                    w,
                    WorkerCommand::RetargetRelayIn {
                        id,
                        ssrcs,
                        srtp: keys,
                        simulcast,
                    },
                );
                // Always: a new source without codecs clears the old one's.
                self.command_worker(
                    w,
                    WorkerCommand::SetVideo {
                        id,
                        codecs: routing::video_table(&video),
                    },
                );
            }
            Command::FetchGroup { request, id, track } => {
                match self
                    .sessions
                    .get(&id)
                    .filter(|s| matches!(s.role, Role::Publisher { .. } | Role::RelayIn { .. }))
                {
                    Some(spec) => {
                        let w = spec.worker;
                        self.command_worker(w, WorkerCommand::FetchGroup { request, id, track });
                    }
                    None => self.emit(&Event::GroupDone {
                        request,
                        result: Err(NoGroup::UnknownSession),
                    }),
                }
            }
            Command::Snapshot { request } => {
                // Whoever asked before asked again (the control plane attached anew): what
                // is still waiting of the earlier snapshots would be ignored.
                let mut superseded = Vec::new();
                self.backlog.retain(|p| match p {
                    Pending::Snapshot { worker, .. } => {
                        superseded.push(*worker);
                        false
                    }
                    _ => true,
                });
                for w in superseded {
                    self.count(w, Counter::RingEventsCoalesced, 1);
                }
                if let Some(hello) = self.hello.clone() {
                    self.emit_snapshot(0, &hello);
                }
                let specs: Vec<SessionSpec> = self.sessions.values().cloned().collect();
                let n = specs.len() as u32;
                for spec in specs {
                    let worker = spec.worker;
                    self.emit_snapshot(worker, &Event::SnapshotSession { request, spec });
                }
                self.emit_snapshot(
                    0,
                    &Event::SnapshotDone {
                        request,
                        sessions: n,
                        highest_id: self.highest_id,
                    },
                );
            }
        }
    }

    fn worker_event(&mut self, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Added { id } => {
                if let Some(spec) = self.pending_add.remove(&id) {
                    if let Keying::Dtls { remote_fingerprint } = &spec.keying {
                        let started = self.handshakes.start(
                            id,
                            spec.worker,
                            remote_fingerprint,
                            std::time::Instant::now(),
                        );
                        match started {
                            Ok(()) => match spec.role {
                                Role::Publisher { .. } => self.hub.add_publisher(id, &spec.stream),
                                Role::Subscriber { .. } => {
                                    self.hub.add_subscriber(id, &spec.stream);
                                }
                                // Relay links are keyed statically (validate() refuses DTLS
                                // for them); their data channels are handled below.
                                Role::RelayIn { .. } | Role::RelayOut => {}
                            },
                            // validate() parsed the fingerprint, so only the driver can fail.
                            Err(e) => tracing::error!(id = id.0, error = %e, "cannot start DTLS"),
                        }
                    }
                    match spec.role {
                        Role::RelayIn { .. } => {
                            self.relay_ins.insert(
                                id,
                                RelayIn {
                                    stream: spec.stream.clone(),
                                    worker: spec.worker,
                                    receiver: dcrelay::Receiver::new(),
                                    keys: Default::default(),
                                },
                            );
                        }
                        Role::RelayOut => {
                            // A relay subscriber of the hub: it gets an open for every
                            // channel already open, then everything the stream's
                            // publisher (local or relayed in) does.
                            self.relay_outs.insert(id, spec.worker);
                            let mut deliveries = std::mem::take(&mut self.deliveries);
                            self.hub.add_relay(id, &spec.stream, &mut deliveries);
                            self.sessions.insert(id, spec);
                            self.deliver(&mut deliveries);
                            self.deliveries = deliveries;
                            self.emit(&Event::SessionAdded { id });
                            return;
                        }
                        _ => {}
                    }
                    self.sessions.insert(id, spec);
                    self.emit(&Event::SessionAdded { id });
                }
            }
            WorkerEvent::RelayData { id, seq, payload } => {
                self.relay_data(id, seq, payload);
            }
            WorkerEvent::Dtls { id, data } => {
                self.handshakes
                    .datagram(id, &data, std::time::Instant::now());
            }
            WorkerEvent::Failed { id, error } => {
                if let Some(spec) = self.pending_add.remove(&id) {
                    self.forget(&spec);
                } else if let Some(spec) = self.pending_remove.remove(&id) {
                    self.forget(&spec);
                    self.drop_latched(id);
                }
                self.emit(&Event::CommandFailed { id, error });
            }
            WorkerEvent::Removed { id } => {
                if let Some(spec) = self.pending_remove.remove(&id) {
                    self.forget(&spec);
                }
                self.drop_latched(id);
                let reason = self
                    .close_reasons
                    .remove(&id)
                    .unwrap_or(CloseReason::Removed);
                self.emit(&Event::SessionRemoved { id, reason });
            }
            WorkerEvent::ConsentExpired { id } => {
                tracing::info!(id = id.0, "ICE consent expired; removing the session");
                self.end(id, CloseReason::ConsentExpired);
            }
            WorkerEvent::Latched { id, remote } => {
                if let Some(spec) = self.sessions.get_mut(&id) {
                    spec.remote = Some(remote);
                }
                self.emit(&Event::RemoteLatched { id, remote });
            }
            WorkerEvent::Group { request, result } => {
                let result = result.map(|(codec, packets)| {
                    let n = packets.len() as u32;
                    for packet in packets {
                        self.emit(&Event::GroupPacket { request, packet });
                    }
                    (codec, n)
                });
                self.emit(&Event::GroupDone { request, result });
            }
        }
    }

    /// Send `cmd` to worker `w`, or keep it in the [`Outbox`] until the worker has room.
    fn command_worker(&mut self, w: u16, cmd: WorkerCommand) {
        self.outbox.send(&self.mailboxes, w, cmd);
    }

    fn count(&self, worker: u16, c: Counter, n: u64) {
        add_count(&self.stats, worker, c, n);
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

/// Add `n` to counter `c` in `worker`'s block (a free function, so it can be called while
/// another field of the slow path is borrowed).
fn add_count(stats: &Stats, worker: u16, c: Counter, n: u64) {
    if n > 0 {
        if let Some(block) = stats.worker(usize::from(worker)) {
            block.add(c, n);
        }
    }
}

#[cfg(test)]
mod ring_tests;
