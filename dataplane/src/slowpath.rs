//! The data plane's slow path: reads commands from the ring, keeps the node-wide routing
//! table (which worker publishes a stream, which workers subscribe to it), tells workers what
//! changed, and turns worker answers into ring events.
//!
//! It is the only writer of the routing table, so workers never coordinate with each other
//! about it. It also owns the data channel [`Hub`]: data channel messages of WebRTC sessions
//! arrive here from their DTLS tasks and leave from here to the subscribers' tasks; they
//! never touch a worker. It is also the authority on which sessions exist: a control plane that restarts
//! rebuilds its view from the snapshot this module streams.
//!
//! Events for the control plane wait in a backlog while the event ring is full (the control
//! plane is stopped or slow). The backlog is bounded without losing what the control plane's
//! state depends on: lifecycle events (added, removed, failed) are kept, and commands stop
//! being read while the backlog is long (see [`BACKLOG_PAUSE`]); a session's address is one
//! pending event whatever the number of moves; snapshot events of a superseded request and
//! events of sessions that ended since are dropped. The ring itself is checked every turn;
//! a corrupt one is logged once and replaced by a new file (see [`switchyard_shared::ring`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_shared::command::{
    self, CloseReason, Command, CommandError, Event, Keying, Role, SessionId, SessionSpec,
    ALL_TRACKS, MAX_PT_MAP, MAX_TRACKS,
};
use switchyard_shared::ring::{self, DataSide, PushError, RingError};
use switchyard_shared::stats::{Counter, Stats};

use crate::datachan::hub::Hub;
use crate::datachan::relay::{self as dcrelay, Frame};
use crate::datachan::{DataCommand, DataEvent, Delivery};
use crate::engine::{StreamId, WorkerCommand, WorkerEvent};
use crate::handshakes::{Handshakes, Outcome};
use crate::worker::Mailbox;

/// How long the slow path sleeps on the command ring between looks at worker events.
const TICK: Duration = Duration::from_millis(2);
/// Longest stream name accepted (the control plane enforces a shorter one).
const MAX_STREAM_NAME: usize = 256;

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

/// Shortest time between two recreations of a ring found corrupt: something that keeps
/// scribbling on the file costs a new file (and a log line) a second, not one per turn.
const RECREATE_INTERVAL: Duration = Duration::from_secs(1);

/// An event waiting for room in the event ring.
enum Pending {
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

/// A relay-in's data channel side: the stream it publishes here, its link's reassembly, and
/// the channels the far node opened (closed here when the link goes).
struct RelayIn {
    stream: String,
    worker: u16,
    receiver: dcrelay::Receiver,
    keys: std::collections::BTreeSet<u16>,
}

struct StreamEntry {
    id: StreamId,
    publisher: Option<(SessionId, u16)>,
    subscribers: Vec<u32>,
    /// Sessions (publisher and subscribers, live or pending) naming this stream.
    refs: usize,
}

impl StreamEntry {
    /// Workers other than `except` with at least one subscriber, as a bit mask.
    fn subscriber_mask(&self) -> u64 {
        self.subscribers
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .fold(0, |m, (w, _)| m | 1u64 << (w % 64))
    }
}

pub struct SlowPath {
    ring: DataSide,
    mailboxes: Arc<[Arc<Mailbox>]>,
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
    fn emit_snapshot(&mut self, worker: u16, ev: &Event) {
        let mut msg = Vec::new();
        match command::encode(ev, &mut msg) {
            Ok(()) => self.backlog.push_back(Pending::Snapshot { worker, msg }),
            Err(e) => tracing::error!(error = %e, ?ev, "event does not encode; dropped"),
        }
        self.flush();
    }

    /// Session `id` ended: an address still waiting for the ring no longer matters.
    fn drop_latched(&mut self, id: SessionId) {
        if let Some((_, worker)) = self.latched.remove(&id) {
            self.count(worker, Counter::RingEventsCoalesced, 1);
        }
    }

    fn flush(&mut self) {
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

    /// Serve until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.turn(TICK);
        }
    }

    /// Whether the ring can be used this turn: a corrupt one found now is replaced at once
    /// (or, within [`RECREATE_INTERVAL`] of the last replacement, a little later).
    fn ring_usable(&mut self) -> bool {
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
    fn ring_corrupt(&mut self, why: &RingError) {
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

    /// Whether commands wait: [`BACKLOG_PAUSE`] events are waiting or owed by workers.
    fn paused(&self) -> bool {
        self.backlog.len() + self.pending_add.len() + self.pending_remove.len() >= BACKLOG_PAUSE
    }

    /// One pass: wait up to `wait` for a command, apply all that are there (unless
    /// [`BACKLOG_PAUSE`] events wait or are owed, or the ring is unusable), collect worker
    /// answers, push events.
    pub fn turn(&mut self, wait: Duration) {
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

    fn validate(&self, spec: &SessionSpec) -> Result<(), CommandError> {
        if usize::from(spec.worker) >= self.mailboxes.len() {
            return Err(CommandError::NoSuchWorker);
        }
        let bad_key = match &spec.keying {
            Keying::Static(k) => {
                let len = k.profile.master_len();
                k.remote.len() != len || k.local.len() != len
            }
            Keying::Dtls { remote_fingerprint } => {
                crate::dtls::fingerprint::Fingerprint::parse(remote_fingerprint).is_err()
                    || spec.ice.is_none()
            }
            Keying::Plain => {
                // Unauthenticated media only leaves the node, and only to a fixed address.
                if !plain_ok(spec) {
                    return Err(CommandError::PlainIngress);
                }
                false
            }
        };
        if bad_key {
            return Err(CommandError::BadKey);
        }
        if spec.stream.is_empty() || spec.stream.len() > MAX_STREAM_NAME {
            return Err(CommandError::Invalid);
        }
        if self.sessions.contains_key(&spec.id)
            || self.pending_add.contains_key(&spec.id)
            || self.pending_remove.contains_key(&spec.id)
        {
            return Err(CommandError::DuplicateSession);
        }
        if spec.role.is_relay() {
            // A relay link is keyed by the control planes (the per-link key) and addressed
            // by IP:port on the relay socket: no DTLS, no ICE, no transport-cc.
            if spec.keying.keys().is_none() {
                return Err(CommandError::BadKey);
            }
            if spec.ice.is_some() || spec.twcc_ext.is_some() {
                return Err(CommandError::Invalid);
            }
        }
        match &spec.role {
            Role::RelayIn { ssrcs } => {
                if ssrcs.len() > MAX_TRACKS {
                    return Err(CommandError::Invalid);
                }
                if self
                    .streams
                    .get(&spec.stream)
                    .is_some_and(|s| s.publisher.is_some())
                {
                    return Err(CommandError::StreamBusy);
                }
            }
            Role::RelayOut => {
                if spec.remote.is_none() {
                    return Err(CommandError::Invalid);
                }
            }
            Role::Publisher { ssrcs, clock_rates } => {
                if ssrcs.len() > MAX_TRACKS || clock_rates.len() > ssrcs.len() {
                    return Err(CommandError::Invalid);
                }
                if self
                    .streams
                    .get(&spec.stream)
                    .is_some_and(|s| s.publisher.is_some())
                {
                    return Err(CommandError::StreamBusy);
                }
            }
            Role::Subscriber {
                ssrcs,
                payload_types,
                extensions,
                rtx,
                tracks,
            } => {
                if *tracks == 0 || *tracks & !ALL_TRACKS != 0 {
                    return Err(CommandError::Invalid);
                }
                // 72–76 would read as RTCP on a muxed port (RFC 5761 §4).
                let bad_pt = |p: u8| p >= 128 || (72..=76).contains(&p);
                if rtx.len() > MAX_TRACKS
                    || rtx
                        .iter()
                        .flatten()
                        .any(|&(ssrc, pt)| ssrc == 0 || bad_pt(pt))
                {
                    return Err(CommandError::Invalid);
                }
                if extensions.as_ref().is_some_and(|m| {
                    m.len() > 14
                        || m.iter()
                            .any(|&(a, b)| !(1..=14).contains(&a) || !(1..=14).contains(&b))
                }) {
                    return Err(CommandError::Invalid);
                }
                if ssrcs.len() != MAX_TRACKS || !subscriber_addressable(spec) {
                    return Err(CommandError::Invalid);
                }
                if payload_types.len() > MAX_PT_MAP
                    || payload_types.iter().any(|&(a, b)| bad_pt(a) || bad_pt(b))
                {
                    return Err(CommandError::Invalid);
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, spec: SessionSpec) -> Result<(), CommandError> {
        self.validate(&spec)?;
        let workers = self.mailboxes.len();
        let next = &mut self.next_stream;
        let entry = self.streams.entry(spec.stream.clone()).or_insert_with(|| {
            let id = StreamId(*next);
            *next = next.wrapping_add(1).max(1);
            StreamEntry {
                id,
                publisher: None,
                subscribers: vec![0; workers],
                refs: 0,
            }
        });
        entry.refs += 1;
        let stream = entry.id;
        let w = spec.worker;
        let mut sends = Vec::new();
        match &spec.role {
            Role::Publisher { .. } | Role::RelayIn { .. } => {
                entry.publisher = Some((spec.id, w));
                let add = match (&spec.role, spec.keying.keys()) {
                    (Role::Publisher { ssrcs, clock_rates }, _) => WorkerCommand::AddPublisher {
                        id: spec.id,
                        stream,
                        remote: spec.remote,
                        ssrcs: ssrcs.clone(),
                        clock_rates: clock_rates.clone(),
                        twcc_ext: spec.twcc_ext,
                        srtp: spec.keying.keys().cloned(),
                        ice: spec.ice.clone(),
                    },
                    (Role::RelayIn { ssrcs }, Some(keys)) => WorkerCommand::AddRelayIn {
                        id: spec.id,
                        stream,
                        remote: spec.remote,
                        ssrcs: ssrcs.clone(),
                        srtp: keys.clone(),
                    },
                    // `validate` refused relay sessions without static keys.
                    (Role::RelayIn { .. }, None) => return Err(CommandError::BadKey),
                    // Not in this arm's roles.
                    (Role::Subscriber { .. } | Role::RelayOut, _) => {
                        return Err(CommandError::Invalid)
                    }
                };
                sends.push((w, add));
                sends.push((
                    w,
                    WorkerCommand::SetRemoteWorkers {
                        stream,
                        mask: entry.subscriber_mask(),
                    },
                ));
                for (sw, &n) in entry.subscribers.iter().enumerate() {
                    if n > 0 {
                        sends.push((
                            sw as u16,
                            WorkerCommand::SetPublisherWorker {
                                stream,
                                worker: Some(w),
                            },
                        ));
                    }
                }
            }
            Role::RelayOut => {
                let (Some(remote), Some(keys)) = (spec.remote, spec.keying.keys()) else {
                    // `validate` refused these; never index past it.
                    return Err(CommandError::Invalid);
                };
                if let Some(n) = entry.subscribers.get_mut(usize::from(w)) {
                    *n += 1;
                }
                sends.push((
                    w,
                    WorkerCommand::SetPublisherWorker {
                        stream,
                        worker: entry.publisher.map(|p| p.1),
                    },
                ));
                sends.push((
                    w,
                    WorkerCommand::AddRelayOut {
                        id: spec.id,
                        stream,
                        remote,
                        srtp: keys.clone(),
                    },
                ));
                if let Some((_, pw)) = entry.publisher {
                    sends.push((
                        pw,
                        WorkerCommand::SetRemoteWorkers {
                            stream,
                            mask: entry.subscriber_mask(),
                        },
                    ));
                }
            }
            Role::Subscriber {
                ssrcs,
                payload_types,
                extensions,
                rtx,
                tracks,
            } => {
                let mut out = [0u32; MAX_TRACKS];
                out.copy_from_slice(&ssrcs[..MAX_TRACKS]);
                let mut rtx_out = [None; MAX_TRACKS];
                for (o, r) in rtx_out.iter_mut().zip(rtx) {
                    *o = *r;
                }
                let remote = spec.remote;
                if !subscriber_addressable(&spec) {
                    return Err(CommandError::Invalid);
                }
                if let Some(n) = entry.subscribers.get_mut(usize::from(w)) {
                    *n += 1;
                }
                sends.push((
                    w,
                    WorkerCommand::SetPublisherWorker {
                        stream,
                        worker: entry.publisher.map(|p| p.1),
                    },
                ));
                sends.push((
                    w,
                    WorkerCommand::AddSubscriber {
                        id: spec.id,
                        stream,
                        remote,
                        ssrcs: out,
                        payload_types: payload_types.clone(),
                        extensions: extensions.as_ref().map(|m| {
                            let mut table = [0u8; 16];
                            for &(from, to) in m {
                                table[usize::from(from & 0x0f)] = to;
                            }
                            table
                        }),
                        rtx: rtx_out,
                        tracks: *tracks,
                        plain: spec.keying == Keying::Plain,
                        srtp: spec.keying.keys().cloned(),
                        ice: spec.ice.clone(),
                    },
                ));
                if let Some((_, pw)) = entry.publisher {
                    sends.push((
                        pw,
                        WorkerCommand::SetRemoteWorkers {
                            stream,
                            mask: entry.subscriber_mask(),
                        },
                    ));
                }
            }
        }
        self.pending_add.insert(spec.id, spec);
        for (w, cmd) in sends {
            self.command_worker(w, cmd);
        }
        Ok(())
    }

    fn command_worker(&mut self, w: u16, cmd: WorkerCommand) {
        let Some(mb) = self.mailboxes.get(usize::from(w)) else {
            return;
        };
        // The queue holds 4096 commands; the control plane waits for each answer, so it
        // only fills if a worker is stuck, and then waiting here is the right back-pressure.
        let mut cmd = cmd;
        loop {
            match mb.commands.push(cmd) {
                Ok(()) => break,
                Err(back) => {
                    cmd = back;
                    mb.wake_now();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        mb.wake_now();
    }

    /// Undo the routing-table entries of a session that failed or ended.
    fn forget(&mut self, spec: &SessionSpec) {
        self.handshakes.remove(spec.id);
        let mut deliveries = std::mem::take(&mut self.deliveries);
        self.hub.remove(spec.id, &mut deliveries);
        self.relay_outs.remove(&spec.id);
        if let Some(link) = self.relay_ins.remove(&spec.id) {
            // The far publisher's channels end with the link, as a local publisher's do.
            for key in link.keys {
                self.hub.close_channel(&link.stream, key, &mut deliveries);
            }
        }
        self.deliver(&mut deliveries);
        self.deliveries = deliveries;
        let Some(entry) = self.streams.get_mut(&spec.stream) else {
            return;
        };
        let stream = entry.id;
        let mut sends = Vec::new();
        match spec.role {
            Role::Publisher { .. } | Role::RelayIn { .. } => {
                if entry.publisher.is_some_and(|(id, _)| id == spec.id) {
                    entry.publisher = None;
                    for (sw, &n) in entry.subscribers.iter().enumerate() {
                        if n > 0 {
                            sends.push((
                                sw as u16,
                                WorkerCommand::SetPublisherWorker {
                                    stream,
                                    worker: None,
                                },
                            ));
                        }
                    }
                    sends.push((
                        spec.worker,
                        WorkerCommand::SetRemoteWorkers { stream, mask: 0 },
                    ));
                }
            }
            Role::Subscriber { .. } | Role::RelayOut => {
                if let Some(n) = entry.subscribers.get_mut(usize::from(spec.worker)) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        sends.push((
                            spec.worker,
                            WorkerCommand::SetPublisherWorker {
                                stream,
                                worker: None,
                            },
                        ));
                        if let Some((_, pw)) = entry.publisher {
                            sends.push((
                                pw,
                                WorkerCommand::SetRemoteWorkers {
                                    stream,
                                    mask: entry.subscriber_mask(),
                                },
                            ));
                        }
                    }
                }
            }
        }
        entry.refs = entry.refs.saturating_sub(1);
        if entry.refs == 0 {
            self.streams.remove(&spec.stream);
        }
        for (w, cmd) in sends {
            self.command_worker(w, cmd);
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
        }
    }

    /// End a session for a reason of the data plane's own (the same path as RemoveSession).
    fn end(&mut self, id: SessionId, reason: CloseReason) {
        if let Some(spec) = self.sessions.remove(&id) {
            let w = spec.worker;
            self.pending_remove.insert(id, spec);
            self.close_reasons.insert(id, reason);
            self.command_worker(w, WorkerCommand::Remove { id });
        }
    }

    fn drive_handshakes(&mut self) {
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

    /// A session's data channel event goes through the hub; what it decides goes out.
    fn data_event(&mut self, id: SessionId, event: DataEvent) {
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
    fn relay_data(&mut self, id: SessionId, seq: u16, payload: Vec<u8>) {
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
    fn poll_relay_ins(&mut self) {
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
    /// its worker without waiting (a full queue drops it, counted, like a subscriber's).
    fn deliver_to_relay(&mut self, worker: u16, d: Delivery) {
        let frame = Frame::from(d.command);
        let mut fragments = Vec::new();
        if dcrelay::encode(&frame, &mut fragments).is_err() {
            return self.count(worker, Counter::DataChannelDropped, 1);
        }
        let Some(mb) = self.mailboxes.get(usize::from(worker)) else {
            return;
        };
        let cmd = WorkerCommand::RelayData {
            id: d.session,
            fragments,
        };
        if mb.commands.push(cmd).is_ok() {
            mb.wake_now();
            self.count(worker, Counter::RelayDataOut, 1);
        } else {
            self.count(worker, Counter::DataChannelDropped, 1);
        }
    }

    /// Hand the hub's deliveries to the sessions' tasks; a full queue drops the message.
    fn deliver(&mut self, deliveries: &mut Vec<Delivery>) {
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

/// Whether a plain-keyed spec is one the data plane accepts: a subscriber with a fixed
/// address and no ICE (egress to a recorder). Anything else would take unauthenticated
/// media in or send it to an address nobody vouched for.
fn plain_ok(spec: &SessionSpec) -> bool {
    matches!(spec.role, Role::Subscriber { .. }) && spec.remote.is_some() && spec.ice.is_none()
}

/// Whether the data plane can learn where to send a subscriber's media: a given address
/// (plain SRTP), or ICE credentials, whose first valid check latches the address (WebRTC:
/// WHEP subscribers have no address until then, so `remote` is `None` for them).
fn subscriber_addressable(spec: &SessionSpec) -> bool {
    spec.remote.is_some() || spec.ice.is_some()
}

#[cfg(test)]
mod ring_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_shared::command::IceCredentials;

    fn subscriber(remote: Option<std::net::SocketAddr>, ice: bool) -> SessionSpec {
        SessionSpec {
            id: SessionId(1),
            worker: 0,
            stream: "room/cam".into(),
            role: Role::Subscriber {
                ssrcs: vec![1; MAX_TRACKS],
                payload_types: Vec::new(),
                extensions: None,
                rtx: Vec::new(),
                tracks: ALL_TRACKS,
            },
            remote,
            keying: Keying::Dtls {
                remote_fingerprint: String::new(),
            },
            ice: ice.then(|| IceCredentials {
                local_ufrag: "srv1".into(),
                local_pwd: "server-password-0123456789".into(),
                remote_ufrag: "peer".into(),
                remote_pwd: "peer-password-0123456789".into(),
            }),
            twcc_ext: None,
            created_ms: 0,
            control: Default::default(),
        }
    }

    #[test]
    fn plain_keying_is_for_addressed_subscribers_only() {
        let mut plain = subscriber(Some(([127, 0, 0, 1], 5004).into()), false);
        plain.keying = Keying::Plain;
        assert!(plain_ok(&plain));
        let mut no_addr = plain.clone();
        no_addr.remote = None;
        assert!(!plain_ok(&no_addr));
        let mut with_ice = subscriber(None, true);
        with_ice.keying = Keying::Plain;
        assert!(!plain_ok(&with_ice));
        let mut publisher = plain.clone();
        publisher.role = Role::Publisher {
            ssrcs: vec![1],
            clock_rates: vec![],
        };
        assert!(!plain_ok(&publisher));
    }

    #[test]
    fn whep_subscribers_have_ice_instead_of_an_address() {
        assert!(subscriber_addressable(&subscriber(None, true)));
        assert!(subscriber_addressable(&subscriber(
            Some(([127, 0, 0, 1], 5000).into()),
            false
        )));
        assert!(!subscriber_addressable(&subscriber(None, false)));
    }
}
