//! The data plane's slow path: reads commands from the ring, keeps the node-wide routing
//! table (which worker publishes a stream, which workers subscribe to it), tells workers what
//! changed, and turns worker answers into ring events.
//!
//! It is the only writer of the routing table, so workers never coordinate with each other
//! about it. It is also the authority on which sessions exist: a control plane that restarts
//! rebuilds its view from the snapshot this module streams.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard_shared::command::{
    self, CloseReason, Command, CommandError, Event, Keying, Role, SessionId, SessionSpec,
    MAX_PT_MAP, MAX_TRACKS,
};
use switchyard_shared::ring::DataSide;

use crate::engine::{StreamId, WorkerCommand, WorkerEvent};
use crate::handshakes::{Handshakes, Outcome};
use crate::worker::Mailbox;

/// How long the slow path sleeps on the command ring between looks at worker events.
const TICK: Duration = Duration::from_millis(2);
/// Longest stream name accepted (the control plane enforces a shorter one).
const MAX_STREAM_NAME: usize = 256;

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
    /// Encoded events waiting for room in the event ring: a full ring delays events, it
    /// never loses one.
    backlog: VecDeque<Vec<u8>>,
    buf: Vec<u8>,
    handshakes: Handshakes,
    outcomes: Vec<Outcome>,
    /// The `Hello` this process announced, repeated at the head of every snapshot so a
    /// control plane that attaches later still learns the boot id, pid and engine.
    hello: Option<Event>,
}

impl SlowPath {
    pub fn new(ring: DataSide, mailboxes: Arc<[Arc<Mailbox>]>, handshakes: Handshakes) -> Self {
        Self {
            ring,
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
            handshakes,
            outcomes: Vec::new(),
        }
    }

    /// Emit `hello` now and again before every snapshot.
    pub fn announce(&mut self, hello: Event) {
        self.emit(&hello);
        self.hello = Some(hello);
    }

    /// Queue an event for the control plane.
    pub fn emit(&mut self, ev: &Event) {
        let mut buf = Vec::new();
        match command::encode(ev, &mut buf) {
            Ok(()) => self.backlog.push_back(buf),
            Err(e) => tracing::error!(error = %e, ?ev, "event does not encode; dropped"),
        }
        self.flush();
    }

    fn flush(&mut self) {
        while let Some(msg) = self.backlog.front() {
            if self.ring.events.push(msg).is_err() {
                break;
            }
            self.backlog.pop_front();
        }
    }

    /// Serve until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.turn(TICK);
        }
    }

    /// One pass: wait up to `wait` for a command, apply all that are there, collect worker
    /// answers, push events.
    pub fn turn(&mut self, wait: Duration) {
        self.ring.commands.wait(wait);
        loop {
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
                Err(e) => {
                    tracing::error!(error = %e, "command ring is corrupt");
                    false
                }
            };
            self.buf = buf;
            if !more {
                break;
            }
        }
        for w in 0..self.mailboxes.len() {
            while let Some(ev) = self.mailboxes.get(w).and_then(|m| m.events.pop()) {
                self.worker_event(ev);
            }
        }
        if !self.handshakes.is_empty() {
            self.drive_handshakes();
        }
        self.flush();
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::AddSession(spec) => {
                let id = spec.id;
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
                if matches!(spec.role, Role::RelayIn | Role::RelayOut) {
                    // Booked only (see `add`): no worker holds it.
                    return self.emit(&Event::SessionRemoved {
                        id,
                        reason: CloseReason::Removed,
                    });
                }
                let w = spec.worker;
                self.pending_remove.insert(id, spec);
                self.command_worker(w, WorkerCommand::Remove { id });
            }
            Command::Snapshot { request } => {
                if let Some(hello) = self.hello.clone() {
                    self.emit(&hello);
                }
                let specs: Vec<SessionSpec> = self.sessions.values().cloned().collect();
                let n = specs.len() as u32;
                for spec in specs {
                    self.emit(&Event::SnapshotSession { request, spec });
                }
                self.emit(&Event::SnapshotDone {
                    request,
                    sessions: n,
                });
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
        match &spec.role {
            Role::RelayIn | Role::RelayOut => {
                if !matches!(spec.keying, Keying::Static(_)) || spec.ice.is_some() {
                    return Err(CommandError::Invalid);
                }
                if matches!(spec.role, Role::RelayOut) && spec.remote.is_none() {
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
            } => {
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
        if matches!(spec.role, Role::RelayIn | Role::RelayOut) {
            // Relay sessions are booked here (ids, snapshot, removal) so the control plane's
            // relay set-up runs end to end; the relay sockets and the workers' RelayIn and
            // RelayOut roles are the data-plane relay branch's (issue #5) and replace this.
            let id = spec.id;
            self.sessions.insert(id, spec);
            self.emit(&Event::SessionAdded { id });
            return Ok(());
        }
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
            // Booked before the routing table is touched.
            Role::RelayIn | Role::RelayOut => {}
            Role::Publisher { ssrcs, clock_rates } => {
                entry.publisher = Some((spec.id, w));
                sends.push((
                    w,
                    WorkerCommand::AddPublisher {
                        id: spec.id,
                        stream,
                        remote: spec.remote,
                        ssrcs: ssrcs.clone(),
                        clock_rates: clock_rates.clone(),
                        twcc_ext: spec.twcc_ext,
                        srtp: spec.keying.keys().cloned(),
                        ice: spec.ice.clone(),
                    },
                ));
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
            Role::Subscriber {
                ssrcs,
                payload_types,
                extensions,
                rtx,
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
        let Some(entry) = self.streams.get_mut(&spec.stream) else {
            return;
        };
        let stream = entry.id;
        let mut sends = Vec::new();
        match spec.role {
            // Never in the routing table (see `add`).
            Role::RelayIn | Role::RelayOut => {}
            Role::Publisher { .. } => {
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
            Role::Subscriber { .. } => {
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
                        if let Err(e) = started {
                            // validate() parsed the fingerprint, so only the driver can fail.
                            tracing::error!(id = id.0, error = %e, "cannot start DTLS");
                        }
                    }
                    self.sessions.insert(id, spec);
                    self.emit(&Event::SessionAdded { id });
                }
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
                }
                self.emit(&Event::CommandFailed { id, error });
            }
            WorkerEvent::Removed { id } => {
                if let Some(spec) = self.pending_remove.remove(&id) {
                    self.forget(&spec);
                }
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

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

/// Whether the data plane can learn where to send a subscriber's media: a given address
/// (plain SRTP), or ICE credentials, whose first valid check latches the address (WebRTC:
/// WHEP subscribers have no address until then, so `remote` is `None` for them).
fn subscriber_addressable(spec: &SessionSpec) -> bool {
    spec.remote.is_some() || spec.ice.is_some()
}

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
            },
            remote,
            keying: Keying::Dtls {
                remote_fingerprint: String::new(),
            },
            ice: ice.then(|| IceCredentials {
                local_ufrag: "srv1".into(),
                local_pwd: "server-password-0123456789".into(),
                remote_ufrag: "peer".into(),
            }),
            twcc_ext: None,
            created_ms: 0,
        }
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
