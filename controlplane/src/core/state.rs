//! The control plane's view of its node, as a sans-IO state machine.
//!
//! It takes data plane [`Event`]s (from the ring link) and API requests, and answers with the
//! [`Command`]s to push. It never touches the ring itself, so every path — including a data
//! plane restart and a control plane restart — is tested here without processes or sockets.
//!
//! The data plane is the authority on which sessions exist. After (re)attaching, the control
//! plane asks for a snapshot and replaces its table with it; until that snapshot is complete
//! it refuses new sessions, so the ids it hands out continue above every id the data plane
//! has seen (live or ended), and what it keeps in each spec (`crate::core::kept`: WHIP/WHEP
//! resource secrets, WHIP publishers' codecs) comes back with the snapshot. When the data
//! plane restarts (a `Hello` with a new boot id), the control plane provisions every session
//! it knows again, so a crashed data plane comes back with the same sessions and keys.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use switchyard_shared::command::{
    Command, CommandError, Event, Keying, NoGroup, Role, SessionId, SessionSpec, SrtpKeys,
    SrtpProfile, VideoCodec,
};
use switchyard_shared::config::EngineKind;
use tokio::sync::oneshot;

use crate::sdp::Negotiated;
use std::sync::Arc;

/// What the data plane said about itself in its last `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneInfo {
    pub boot: u64,
    pub pid: u32,
    pub workers: u16,
    pub media_port: u16,
    /// First relay port: worker `i`'s relay socket is `relay_port + i`.
    pub relay_port: u16,
    pub engine: EngineKind,
    /// DTLS certificate fingerprint for SDP answers.
    pub fingerprint: String,
}

/// The answer a waiting API request gets.
pub type Reply = Result<(), CommandError>;

/// What applying an event asks the caller to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Commands to push to the data plane, in order.
    pub commands: Vec<Command>,
    /// The data plane restarted: its stats file was re-created.
    pub reopen_stats: bool,
}

/// A session that started or ended, for room events (`peer-joined`, `peer-left`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionChange {
    pub joined: bool,
    pub id: SessionId,
    pub stream: String,
    pub publisher: bool,
}

/// Why a request cannot be served right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("control plane is not attached to the data plane's command ring")]
    Detached,
    #[error("control plane is rebuilding its view from the data plane's snapshot")]
    Syncing,
    #[error("data plane process is not running")]
    DataplaneDown,
}

#[derive(Debug, Default)]
pub struct NodeState {
    /// Sessions the data plane confirmed.
    sessions: BTreeMap<SessionId, SessionSpec>,
    /// `AddSession` sent, answer awaited by an API request.
    adding: HashMap<SessionId, (SessionSpec, oneshot::Sender<Reply>)>,
    /// `RemoveSession` sent, answers awaited.
    removing: HashMap<SessionId, Vec<oneshot::Sender<Reply>>>,
    /// Adds whose API request gave up (timeout): removed again if the data plane confirms
    /// them later, so no session lives that no client knows about.
    abandoned: HashSet<SessionId>,
    dataplane: Option<DataplaneInfo>,
    alive: bool,
    attached: bool,
    /// Snapshot in flight: request id and what has arrived so far.
    snapshot: Option<(u64, Vec<SessionSpec>)>,
    next_request: u64,
    next_id: u64,
    /// What each WHIP publisher (or relay-in) negotiated (codecs, payload types, extension
    /// ids), by stream, so WHEP answers can offer the same codecs. A WHIP publisher's tracks
    /// are also kept in its spec, so a snapshot brings them back; relay-ins come back from
    /// the relay book.
    publishers: HashMap<String, (SessionId, Arc<Negotiated>)>,
    /// The codecs a `/v1/sessions` publisher declared, by stream, for forwards' SDP files.
    /// Apart from `publishers` so WHEP keeps serving WebRTC publishers only.
    declared: HashMap<String, (SessionId, Arc<Negotiated>)>,
    /// Sessions confirmed or ended since the last [`take_changes`](Self::take_changes).
    changes: Vec<SessionChange>,
    /// The SRTP profile each DTLS-keyed session negotiated (`Event::DtlsConnected`): its spec
    /// says only "DTLS", and is what a restarted data plane would be sent again.
    dtls_profiles: HashMap<SessionId, SrtpProfile>,
    /// Group fetches sent (`Command::FetchGroup`), by request: the packets so far and who
    /// waits for them. At most [`MAX_FETCHES`].
    fetching: HashMap<u64, Fetching>,
}

/// Group fetches in flight at once: each is up to `media.nack_cache` packets through the
/// event ring, so a client looping on `/fetch` gets 429s instead of filling it.
pub const MAX_FETCHES: usize = 2;

/// Packets kept of one fetch at most (the largest `media.nack_cache`).
const MAX_FETCH_PACKETS: usize = 1 << 16;

/// What a fetch's caller gets: the track's codec and the group's packets, in order.
pub type Fetched = Result<(VideoCodec, Vec<Vec<u8>>), NoGroup>;

#[derive(Debug)]
struct Fetching {
    packets: Vec<Vec<u8>>,
    tx: oneshot::Sender<Fetched>,
}

impl NodeState {
    pub fn new() -> Self {
        Self {
            next_request: 1,
            next_id: 1,
            ..Self::default()
        }
    }

    /// The ring link attached (again): the view must be rebuilt. Returns the command to send.
    pub fn attached(&mut self) -> Command {
        self.attached = true;
        let request = self.next_request;
        self.next_request += 1;
        self.snapshot = Some((request, Vec::new()));
        Command::Snapshot { request }
    }

    /// The ring link was lost (the data plane replaced the ring file).
    pub fn detached(&mut self) {
        self.attached = false;
        self.snapshot = None;
        // Their answers went with the ring: the callers get an error now.
        self.fetching.clear();
    }

    /// Whether the data plane process is alive, as the link last checked.
    pub fn set_alive(&mut self, alive: bool) {
        self.alive = alive;
    }

    pub fn ready(&self) -> Result<(), NotReady> {
        if !self.attached {
            Err(NotReady::Detached)
        } else if self.dataplane.is_some() && !self.alive {
            Err(NotReady::DataplaneDown)
        } else if self.snapshot.is_some() || self.dataplane.is_none() {
            Err(NotReady::Syncing)
        } else {
            Ok(())
        }
    }

    /// The SRTP profile DTLS-keyed session `id` negotiated, once its handshake completed.
    pub fn dtls_profile(&self, id: SessionId) -> Option<SrtpProfile> {
        self.dtls_profiles.get(&id).copied()
    }

    /// Whether `id` is a DTLS-keyed session still waiting for its handshake (live or being
    /// added: ICE can latch before the data plane's `SessionAdded` is read).
    pub fn dtls_pending(&self, id: SessionId) -> bool {
        let spec = self
            .sessions
            .get(&id)
            .or_else(|| self.adding.get(&id).map(|(s, _)| s));
        spec.is_some_and(|s| matches!(s.keying, Keying::Dtls { .. }))
            && !self.dtls_profiles.contains_key(&id)
    }

    /// ICE and DTLS state of session `id` as far as the events tell: ICE `checking` until a
    /// check latched the peer, then `connected`; DTLS `connecting` until
    /// `DtlsConnected`, then `connected` (a failed handshake ends the session). `None` where
    /// the session has no ICE, or no DTLS.
    pub fn transport(&self, id: SessionId) -> (Option<&'static str>, Option<&'static str>) {
        let Some(s) = self.sessions.get(&id) else {
            return (None, None);
        };
        let ice = s.ice.as_ref().map(|_| {
            if s.remote.is_some() {
                "connected"
            } else {
                "checking"
            }
        });
        let dtls = matches!(s.keying, Keying::Dtls { .. }).then(|| {
            if self.dtls_profiles.contains_key(&id) {
                "connected"
            } else {
                "connecting"
            }
        });
        (ice, dtls)
    }

    pub fn dataplane(&self) -> Option<&DataplaneInfo> {
        self.dataplane.as_ref()
    }

    pub fn sessions(&self) -> impl Iterator<Item = &SessionSpec> {
        self.sessions.values()
    }

    pub fn session(&self, id: SessionId) -> Option<&SessionSpec> {
        self.sessions.get(&id)
    }

    /// Relay-in `id` was pointed at a new source (`Command::RetargetRelayIn`): its spec
    /// takes the new key, SSRCs and layers, and no address (the data plane latches the new
    /// source's). Nothing for another session.
    pub fn retarget_relay_in(
        &mut self,
        id: SessionId,
        keys: SrtpKeys,
        ssrcs: Vec<u32>,
        simulcast: Option<switchyard_shared::command::Simulcast>,
        video: Vec<Option<switchyard_shared::command::VideoCodec>>,
    ) {
        if let Some(spec) = self
            .sessions
            .get_mut(&id)
            .filter(|s| matches!(s.role, Role::RelayIn { .. }))
        {
            spec.keying = Keying::Static(keys);
            spec.remote = None;
            spec.role = Role::RelayIn {
                ssrcs,
                simulcast,
                video,
            };
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions per worker, confirmed and pending, for placement.
    pub fn load(&self, workers: u16) -> Vec<u32> {
        let mut load = vec![0u32; usize::from(workers)];
        let specs = self
            .sessions
            .values()
            .chain(self.adding.values().map(|(s, _)| s));
        for s in specs {
            if let Some(n) = load.get_mut(usize::from(s.worker)) {
                *n += 1;
            }
        }
        load
    }

    /// Sessions that started or ended since the last call (not those a snapshot or a data
    /// plane restart replaced wholesale).
    pub fn take_changes(&mut self) -> Vec<SessionChange> {
        std::mem::take(&mut self.changes)
    }

    fn changed(&mut self, joined: bool, spec: &SessionSpec) {
        // A relay is a link between nodes, not a peer of the room: no room event for it.
        if spec.role.is_relay() {
            return;
        }
        // Bounded: a caller that never takes them loses the oldest.
        if self.changes.len() >= 4096 {
            self.changes.remove(0);
        }
        self.changes.push(SessionChange {
            joined,
            id: spec.id,
            stream: spec.stream.clone(),
            publisher: matches!(
                spec.role,
                switchyard_shared::command::Role::Publisher { .. }
            ),
        });
    }

    /// A fresh session id.
    pub fn allocate_id(&mut self) -> SessionId {
        let id = SessionId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Remember what a WHIP publisher negotiated, for WHEP answers.
    pub fn set_publisher_media(&mut self, stream: &str, id: SessionId, n: Arc<Negotiated>) {
        self.publishers.insert(stream.to_owned(), (id, n));
    }

    /// Remember the codecs a `/v1/sessions` publisher declared.
    pub fn set_declared_codecs(&mut self, stream: &str, id: SessionId, n: Arc<Negotiated>) {
        self.declared.insert(stream.to_owned(), (id, n));
    }

    /// The codecs of the live publisher of `stream`: negotiated (WHIP) or declared.
    pub fn publisher_codecs(&self, stream: &str) -> Option<Arc<Negotiated>> {
        self.publisher_media(stream).or_else(|| {
            let (id, n) = self.declared.get(stream)?;
            self.sessions.contains_key(id).then(|| n.clone())
        })
    }

    /// What the live publisher of `stream` negotiated, if it came through WHIP.
    pub fn publisher_media(&self, stream: &str) -> Option<Arc<Negotiated>> {
        let (id, n) = self.publishers.get(stream)?;
        self.sessions.contains_key(id).then(|| n.clone())
    }

    /// The session that publishes `stream` here: a publisher or a relay-in.
    pub fn publisher_of(&self, stream: &str) -> Option<&SessionSpec> {
        self.sessions.values().find(|s| {
            s.stream == stream && matches!(s.role, Role::Publisher { .. } | Role::RelayIn { .. })
        })
    }

    /// Start fetching the group of track `track` of publisher `id`; `None` while
    /// [`MAX_FETCHES`] are in flight already.
    pub fn begin_fetch(
        &mut self,
        id: SessionId,
        track: u8,
    ) -> Option<(u64, Command, oneshot::Receiver<Fetched>)> {
        if self.fetching.len() >= MAX_FETCHES {
            return None;
        }
        let request = self.next_request;
        self.next_request += 1;
        let (tx, rx) = oneshot::channel();
        self.fetching.insert(
            request,
            Fetching {
                packets: Vec::new(),
                tx,
            },
        );
        Some((request, Command::FetchGroup { request, id, track }, rx))
    }

    /// The fetch could not be sent, or its caller stopped waiting.
    pub fn end_fetch(&mut self, request: u64) {
        self.fetching.remove(&request);
    }

    /// Start adding `spec`; the reply arrives on the returned receiver.
    pub fn begin_add(&mut self, spec: SessionSpec) -> (Command, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::AddSession(spec.clone());
        self.adding.insert(spec.id, (spec, tx));
        (cmd, rx)
    }

    /// The add could not even be sent (ring full): forget it.
    pub fn cancel_add(&mut self, id: SessionId) {
        self.adding.remove(&id);
    }

    /// The API request stopped waiting for the answer to its add.
    pub fn abandon_add(&mut self, id: SessionId) {
        if self.adding.remove(&id).is_some() {
            self.abandoned.insert(id);
        }
    }

    /// Start removing `id`. `None` if no such session. `Some((Some(cmd), rx))` for the first
    /// remove; a second concurrent remove of the same session only waits for the first.
    pub fn begin_remove(
        &mut self,
        id: SessionId,
    ) -> Option<(Option<Command>, oneshot::Receiver<Reply>)> {
        if !self.sessions.contains_key(&id) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let waiters = self.removing.entry(id).or_default();
        waiters.push(tx);
        let cmd = (waiters.len() == 1).then_some(Command::RemoveSession { id });
        Some((cmd, rx))
    }

    /// The remove could not be sent: fail whoever waits on it.
    pub fn cancel_remove(&mut self, id: SessionId) {
        self.removing.remove(&id);
    }

    /// Apply one event from the data plane.
    pub fn apply(&mut self, ev: Event) -> Effects {
        let mut fx = Effects::default();
        match ev {
            Event::Hello {
                boot,
                pid,
                workers,
                media_port,
                relay_port,
                engine,
                fingerprint,
            } => {
                let previous = self.dataplane.replace(DataplaneInfo {
                    boot,
                    pid,
                    workers,
                    media_port,
                    relay_port,
                    engine,
                    fingerprint,
                });
                self.alive = true;
                if previous.as_ref().is_some_and(|p| p.boot != boot) {
                    // WebRTC sessions cannot come back: their DTLS association died with
                    // the old process (and its certificate). Their peers must signal again.
                    let lost: Vec<SessionId> = self
                        .sessions
                        .values()
                        .filter(|s| s.ice.is_some())
                        .map(|s| s.id)
                        .collect();
                    for id in &lost {
                        self.sessions.remove(id);
                    }
                    tracing::warn!(
                        boot,
                        pid,
                        sessions = self.sessions.len(),
                        webrtc_sessions_ended = lost.len(),
                        "data plane restarted; provisioning its sessions again"
                    );
                    fx.reopen_stats = true;
                    fx.commands = self
                        .sessions
                        .values()
                        .map(|s| Command::AddSession(s.clone()))
                        .collect();
                    // A snapshot asked of this new process (after a clean stop removed the
                    // old ring, we attach to its new one and ask) would describe it before
                    // the sessions above reach it: empty. This table is the truth now.
                    self.snapshot = None;
                } else if previous.is_none() {
                    fx.reopen_stats = true;
                }
            }
            Event::SessionAdded { id } => {
                if let Some((spec, tx)) = self.adding.remove(&id) {
                    self.changed(true, &spec);
                    self.sessions.insert(id, spec);
                    let _ = tx.send(Ok(()));
                } else if self.abandoned.remove(&id) {
                    tracing::info!(id = id.0, "removing a session whose creator gave up");
                    fx.commands.push(Command::RemoveSession { id });
                }
            }
            Event::CommandFailed { id, error } => {
                if let Some((_, tx)) = self.adding.remove(&id) {
                    let _ = tx.send(Err(error));
                } else if let Some(waiters) = self.removing.remove(&id) {
                    // UnknownSession: it is gone either way.
                    if let Some(s) = self.sessions.remove(&id) {
                        self.changed(false, &s);
                    }
                    let reply = match error {
                        CommandError::UnknownSession => Ok(()),
                        e => Err(e),
                    };
                    for tx in waiters {
                        let _ = tx.send(reply);
                    }
                } else if self.abandoned.remove(&id) {
                } else if let Some(spec) = self.sessions.remove(&id) {
                    // A re-provisioned session the restarted data plane refused.
                    tracing::error!(
                        id = id.0,
                        stream = %spec.stream,
                        %error,
                        "data plane refused a session on re-provisioning; session lost"
                    );
                }
            }
            Event::SessionRemoved { id, reason } => {
                self.dtls_profiles.remove(&id);
                if let Some(s) = self.sessions.remove(&id) {
                    self.changed(false, &s);
                    if reason != switchyard_shared::command::CloseReason::Removed {
                        tracing::info!(id = id.0, stream = %s.stream, ?reason, "the data plane ended a session");
                    }
                }
                self.publishers.retain(|_, (p, _)| *p != id);
                self.declared.retain(|_, (p, _)| *p != id);
                for tx in self.removing.remove(&id).unwrap_or_default() {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::RemoteLatched { id, remote } => self.latched(id, remote),
            Event::DtlsConnected { id, profile } => {
                if self.sessions.contains_key(&id) {
                    self.dtls_profiles.insert(id, profile);
                }
                tracing::info!(
                    id = id.0,
                    profile = profile.name(),
                    "session connected (DTLS)"
                );
            }
            Event::DtlsFailed { id, reason } => {
                tracing::warn!(id = id.0, %reason, "DTLS handshake failed; the data plane ends the session");
            }
            Event::GroupPacket { request, packet } => {
                if let Some(f) = self.fetching.get_mut(&request) {
                    if f.packets.len() < MAX_FETCH_PACKETS {
                        f.packets.push(packet);
                    }
                }
            }
            Event::GroupDone { request, result } => {
                if let Some(f) = self.fetching.remove(&request) {
                    let _ = f.tx.send(result.map(|(codec, _)| (codec, f.packets)));
                }
            }
            Event::SnapshotSession { request, spec } => {
                if let Some((r, specs)) = &mut self.snapshot {
                    if *r == request {
                        specs.push(spec);
                    }
                }
            }
            Event::SnapshotDone {
                request,
                sessions,
                highest_id,
            } => {
                if self.snapshot.as_ref().is_some_and(|(r, _)| *r == request) {
                    if let Some((_, specs)) = self.snapshot.take() {
                        if specs.len() != sessions as usize {
                            tracing::warn!(
                                got = specs.len(),
                                announced = sessions,
                                "snapshot incomplete"
                            );
                        }
                        self.sessions = specs.into_iter().map(|s| (s.id, s)).collect();
                        let max = self.sessions.keys().next_back().map_or(0, |id| id.0);
                        self.next_id = self
                            .next_id
                            .max(max.saturating_add(1))
                            .max(highest_id.0.saturating_add(1));
                        for spec in self.sessions.values() {
                            let kept = match crate::core::kept::Kept::decode(&spec.control) {
                                Ok(k) => k,
                                Err(e) => {
                                    // Its Location no longer ends it (consent expiry or
                                    // `DELETE /v1/sessions/{id}` still do).
                                    tracing::warn!(id = spec.id.0, error = %e, "unreadable control-plane state in a session from the snapshot");
                                    continue;
                                }
                            };
                            if let Some(n) = kept.negotiated() {
                                self.publishers
                                    .insert(spec.stream.clone(), (spec.id, Arc::new(n)));
                            }
                        }
                        tracing::info!(
                            sessions = self.sessions.len(),
                            "view rebuilt from snapshot"
                        );
                    }
                }
            }
        }
        fx
    }

    fn latched(&mut self, id: SessionId, remote: SocketAddr) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.remote = Some(remote);
        } else if let Some((s, _)) = self.adding.get_mut(&id) {
            s.remote = Some(remote);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use switchyard_shared::command::{Keying, Role, SrtpKeys, SrtpProfile};

    fn hello(boot: u64) -> Event {
        Event::Hello {
            boot,
            pid: 10,
            workers: 2,
            media_port: 10000,
            relay_port: 9443,
            engine: EngineKind::Uring,
            fingerprint: "sha-256 00".into(),
        }
    }

    pub(crate) fn spec(id: u64) -> SessionSpec {
        SessionSpec {
            id: SessionId(id),
            worker: (id % 2) as u16,
            stream: "room/cam".into(),
            role: Role::Subscriber {
                ssrcs: vec![1, 2, 3, 4],
                payload_types: Vec::new(),
                extensions: None,
                rtx: Vec::new(),
                tracks: switchyard_shared::command::ALL_TRACKS,
            },
            remote: Some("127.0.0.1:5000".parse().expect("literal")),
            keying: Keying::Static(SrtpKeys {
                profile: SrtpProfile::AeadAes128Gcm,
                remote: vec![1; 28],
                local: vec![2; 28],
            }),
            ice: None,
            twcc_ext: None,
            created_ms: 1,
            control: Default::default(),
        }
    }

    /// A state that attached and synced with an empty data plane.
    fn synced() -> NodeState {
        let mut s = NodeState::new();
        let Command::Snapshot { request } = s.attached() else {
            panic!("attach must ask for a snapshot")
        };
        assert_eq!(s.ready(), Err(NotReady::Syncing));
        s.apply(hello(1));
        s.apply(Event::SnapshotDone {
            request,
            sessions: 0,
            highest_id: SessionId(0),
        });
        assert_eq!(s.ready(), Ok(()));
        s
    }

    #[test]
    fn a_restarted_data_plane_gets_its_relays_back_with_the_same_keys() {
        let mut s = synced();
        let mut relay_in = spec(5);
        relay_in.role = Role::RelayIn {
            ssrcs: vec![0x1111, 0x2222],
            simulcast: None,
            video: Vec::new(),
        };
        relay_in.remote = None;
        let mut relay_out = spec(6);
        relay_out.role = Role::RelayOut;
        relay_out.stream = "room/other".into();
        for r in [&relay_in, &relay_out] {
            let _rx = s.begin_add(r.clone());
            s.apply(Event::SessionAdded { id: r.id });
        }
        assert!(s.take_changes().is_empty(), "relays are not room peers");
        // The relay-in latched its source before the data plane died.
        let source: SocketAddr = "10.0.0.1:9443".parse().expect("literal");
        s.apply(Event::RemoteLatched {
            id: relay_in.id,
            remote: source,
        });
        let fx = s.apply(hello(2));
        assert!(fx.reopen_stats);
        relay_in.remote = Some(source);
        assert_eq!(
            fx.commands,
            vec![
                Command::AddSession(relay_in.clone()),
                Command::AddSession(relay_out.clone())
            ],
            "same ids, workers and keys: the other node keeps sending untouched"
        );
    }

    #[test]
    fn a_retargeted_relay_in_comes_back_with_its_new_source_key() {
        let mut s = synced();
        let mut relay_in = spec(5);
        relay_in.role = Role::RelayIn {
            ssrcs: vec![0x1111],
            simulcast: None,
            video: Vec::new(),
        };
        relay_in.remote = None;
        let _rx = s.begin_add(relay_in.clone());
        s.apply(Event::SessionAdded { id: relay_in.id });
        let old_source: SocketAddr = "10.0.0.1:9443".parse().expect("literal");
        s.apply(Event::RemoteLatched {
            id: relay_in.id,
            remote: old_source,
        });
        let keys = SrtpKeys {
            profile: SrtpProfile::AeadAes128Gcm,
            remote: vec![7; 28],
            local: vec![8; 28],
        };
        s.retarget_relay_in(relay_in.id, keys.clone(), vec![0x3333], None, Vec::new());
        // Another session is left alone.
        s.retarget_relay_in(SessionId(99), keys.clone(), Vec::new(), None, Vec::new());
        let fx = s.apply(hello(2));
        relay_in.keying = Keying::Static(keys);
        relay_in.role = Role::RelayIn {
            ssrcs: vec![0x3333],
            simulcast: None,
            video: Vec::new(),
        };
        assert_eq!(
            fx.commands,
            vec![Command::AddSession(relay_in)],
            "the new key, the new source's SSRCs, no address: the old source is shut out"
        );
    }

    /// A group fetch collects its packets until `GroupDone`; no more than `MAX_FETCHES` at
    /// once; a lost ring fails the ones in flight.
    #[test]
    fn a_fetch_collects_its_packets_until_done() {
        let mut s = synced();
        let (request, cmd, mut rx) = s.begin_fetch(SessionId(5), 1).expect("room");
        assert_eq!(
            cmd,
            Command::FetchGroup {
                request,
                id: SessionId(5),
                track: 1
            }
        );
        for p in [vec![1u8], vec![2]] {
            s.apply(Event::GroupPacket { request, packet: p });
        }
        // Another request's packet is not this one's.
        s.apply(Event::GroupPacket {
            request: request + 100,
            packet: vec![9],
        });
        assert!(rx.try_recv().is_err(), "not done yet");
        s.apply(Event::GroupDone {
            request,
            result: Ok((VideoCodec::Vp8(96), 2)),
        });
        assert_eq!(
            rx.try_recv().expect("answered"),
            Ok((VideoCodec::Vp8(96), vec![vec![1], vec![2]]))
        );

        let (r1, _, mut rx1) = s.begin_fetch(SessionId(5), 1).expect("room");
        let (_, _, mut rx2) = s.begin_fetch(SessionId(5), 1).expect("room");
        assert!(s.begin_fetch(SessionId(5), 1).is_none(), "busy");
        s.apply(Event::GroupDone {
            request: r1,
            result: Err(NoGroup::NotCached),
        });
        assert_eq!(rx1.try_recv().expect("answered"), Err(NoGroup::NotCached));
        s.detached();
        assert!(matches!(
            rx2.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(s.begin_fetch(SessionId(5), 1).is_some(), "room again");
    }

    /// A clean data-plane stop removes the ring: the control plane detaches, attaches to the
    /// next process's new ring and asks it for a snapshot, but that process's Hello comes
    /// first and the sessions are provisioned again; its (empty) snapshot must not erase them.
    #[test]
    fn a_snapshot_of_a_restarted_data_plane_does_not_erase_the_sessions_sent_to_it() {
        let mut s = synced();
        let _rx = s.begin_add(spec(1));
        s.apply(Event::SessionAdded { id: SessionId(1) });
        s.detached();
        let Command::Snapshot { request } = s.attached() else {
            panic!("attach must ask for a snapshot")
        };
        let fx = s.apply(hello(2));
        assert_eq!(fx.commands, vec![Command::AddSession(spec(1))]);
        s.apply(Event::SnapshotDone {
            request,
            sessions: 0,
            highest_id: SessionId(0),
        });
        assert!(s.session(SessionId(1)).is_some(), "the session survives");
        assert_eq!(s.ready(), Ok(()));
    }

    /// `GET /v1/sessions/{id}` used to say `"profile": null` for a WebRTC session whose DTLS
    /// handshake had completed: the profile it negotiated is kept until the session ends.
    #[test]
    fn a_dtls_session_keeps_the_profile_it_negotiated() {
        let mut s = synced();
        let _rx = s.begin_add(spec(3));
        s.apply(Event::SessionAdded { id: SessionId(3) });
        assert_eq!(s.dtls_profile(SessionId(3)), None);
        s.apply(Event::DtlsConnected {
            id: SessionId(3),
            profile: SrtpProfile::AeadAes128Gcm,
        });
        assert_eq!(
            s.dtls_profile(SessionId(3)),
            Some(SrtpProfile::AeadAes128Gcm)
        );
        s.apply(Event::SessionRemoved {
            id: SessionId(3),
            reason: switchyard_shared::command::CloseReason::Removed,
        });
        assert_eq!(s.dtls_profile(SessionId(3)), None);
        // Not for a session this table does not hold.
        s.apply(Event::DtlsConnected {
            id: SessionId(99),
            profile: SrtpProfile::AeadAes128Gcm,
        });
        assert_eq!(s.dtls_profile(SessionId(99)), None);
    }

    #[test]
    fn declared_codecs_serve_forwards_not_whep() {
        let mut s = synced();
        let _ = s.begin_add(spec(1));
        s.apply(Event::SessionAdded { id: SessionId(1) });
        let n = Arc::new(Negotiated {
            ice_ufrag_remote: String::new(),
            ice_pwd_remote: String::new(),
            remote_fingerprint: String::new(),
            tracks: Vec::new(),
            answer: String::new(),
            data_channel: None,
        });
        s.set_declared_codecs("room/cam", SessionId(1), n.clone());
        assert_eq!(s.publisher_codecs("room/cam"), Some(n));
        assert_eq!(
            s.publisher_media("room/cam"),
            None,
            "WHEP wants a WebRTC publisher"
        );
        s.apply(Event::SessionRemoved {
            id: SessionId(1),
            reason: switchyard_shared::command::CloseReason::Removed,
        });
        assert_eq!(s.publisher_codecs("room/cam"), None);
    }

    #[test]
    fn add_confirmed_and_refused() {
        let mut s = synced();
        let (cmd, mut rx) = s.begin_add(spec(1));
        assert!(matches!(cmd, Command::AddSession(_)));
        assert_eq!(s.load(2), vec![0, 1], "pending adds count for placement");
        s.apply(Event::SessionAdded { id: SessionId(1) });
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert_eq!(s.session_count(), 1);

        let (_, mut rx) = s.begin_add(spec(2));
        s.apply(Event::CommandFailed {
            id: SessionId(2),
            error: CommandError::StreamBusy,
        });
        assert_eq!(rx.try_recv(), Ok(Err(CommandError::StreamBusy)));
        assert_eq!(s.session_count(), 1);
    }

    #[test]
    fn abandoned_add_is_removed_when_confirmed_late() {
        let mut s = synced();
        let (_, _rx) = s.begin_add(spec(3));
        s.abandon_add(SessionId(3));
        let fx = s.apply(Event::SessionAdded { id: SessionId(3) });
        assert_eq!(
            fx.commands,
            vec![Command::RemoveSession { id: SessionId(3) }]
        );
        assert_eq!(s.session_count(), 0);
    }

    #[test]
    fn remove_and_concurrent_remove() {
        let mut s = synced();
        let (_, _rx) = s.begin_add(spec(1));
        s.apply(Event::SessionAdded { id: SessionId(1) });
        let (cmd1, mut rx1) = s.begin_remove(SessionId(1)).expect("exists");
        let (cmd2, mut rx2) = s.begin_remove(SessionId(1)).expect("exists");
        assert!(
            cmd1.is_some() && cmd2.is_none(),
            "one command for two removes"
        );
        s.apply(Event::SessionRemoved {
            id: SessionId(1),
            reason: switchyard_shared::command::CloseReason::Removed,
        });
        assert_eq!(rx1.try_recv(), Ok(Ok(())));
        assert_eq!(rx2.try_recv(), Ok(Ok(())));
        assert!(s.begin_remove(SessionId(1)).is_none());
    }

    #[test]
    fn restarted_control_plane_rebuilds_from_snapshot() {
        let mut s = NodeState::new();
        let Command::Snapshot { request } = s.attached() else {
            panic!()
        };
        // Events from an older snapshot request are ignored.
        s.apply(Event::SnapshotSession {
            request: request + 100,
            spec: spec(99),
        });
        s.apply(hello(5));
        s.apply(Event::SnapshotSession {
            request,
            spec: spec(7),
        });
        s.apply(Event::SnapshotSession {
            request,
            spec: spec(4),
        });
        assert_eq!(s.ready(), Err(NotReady::Syncing));
        s.apply(Event::SnapshotDone {
            request,
            sessions: 2,
            highest_id: SessionId(7),
        });
        assert_eq!(s.ready(), Ok(()));
        let ids: Vec<u64> = s.sessions().map(|s| s.id.0).collect();
        assert_eq!(ids, vec![4, 7]);
        assert_eq!(
            s.allocate_id(),
            SessionId(8),
            "ids continue after the snapshot"
        );
    }

    /// What a WHIP publisher negotiated with Chrome.
    fn chrome_publisher_tracks() -> Vec<crate::sdp::Track> {
        let cands: [SocketAddr; 1] = ["192.0.2.10:10001".parse().expect("literal")];
        let params = crate::sdp::AnswerParams {
            ice_ufrag: "swyU",
            ice_pwd: "0123456789abcdefABCDEF",
            fingerprint: "sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9",
            candidates: &cands,
            ice_tcp: true,
            publisher: None,
        };
        crate::sdp::answer(
            include_str!("../sdp/fixtures/chrome_publish.sdp"),
            crate::sdp::Direction::Publish,
            &params,
        )
        .expect("publish answer")
        .tracks
    }

    /// Issue 9 item 5: after a control plane restart, ids continue above every id the data
    /// plane has seen (a deleted session's too, not only the live ones), and a WHIP
    /// publisher's negotiated media and resource secret come back from its spec.
    #[test]
    fn a_restarted_control_plane_reuses_no_id_and_gets_whip_state_back() {
        use crate::core::kept::{Kept, Secret};
        let tracks = chrome_publisher_tracks();
        let secret = Secret::from_bytes([7; crate::core::kept::SECRET_LEN]);
        let mut publisher = spec(4);
        publisher.role = Role::Publisher {
            ssrcs: vec![1],
            clock_rates: vec![48000],
            simulcast: None,
            uplink: Vec::new(),
        };
        publisher.control = Kept {
            secret: Some(secret),
            media: Some(tracks.clone()),
        }
        .encode()
        .expect("encode");
        assert!(crate::core::kept::fits(&publisher));

        let mut s = NodeState::new();
        let Command::Snapshot { request } = s.attached() else {
            panic!("attach must ask for a snapshot")
        };
        s.apply(hello(5));
        s.apply(Event::SnapshotSession {
            request,
            spec: publisher.clone(),
        });
        // Session 9 was created and deleted before the restart: only the data plane knows.
        s.apply(Event::SnapshotDone {
            request,
            sessions: 1,
            highest_id: SessionId(9),
        });
        assert_eq!(s.ready(), Ok(()));
        assert_eq!(s.allocate_id(), SessionId(10), "9 must not come back");

        let media = s
            .publisher_media("room/cam")
            .expect("WHEP can follow the publisher");
        assert_eq!(media.tracks, tracks);
        assert!(media.answer.is_empty() && media.ice_pwd_remote.is_empty());
        let kept = Kept::of(s.session(SessionId(4)).expect("restored"));
        assert_eq!(kept.secret, Some(secret));
        // The media goes with the publisher.
        s.apply(Event::SessionRemoved {
            id: SessionId(4),
            reason: switchyard_shared::command::CloseReason::Removed,
        });
        assert_eq!(s.publisher_media("room/cam"), None);
    }

    #[test]
    fn restarted_data_plane_gets_its_sessions_again() {
        let mut s = synced();
        for id in [1, 2] {
            s.begin_add(spec(id));
            s.apply(Event::SessionAdded { id: SessionId(id) });
        }
        s.apply(Event::RemoteLatched {
            id: SessionId(2),
            remote: "10.0.0.1:9".parse().expect("literal"),
        });
        // Same boot again (a snapshot's Hello): nothing to do.
        assert!(s.apply(hello(1)).commands.is_empty());
        let fx = s.apply(hello(2));
        assert!(fx.reopen_stats);
        assert_eq!(fx.commands.len(), 2);
        let Command::AddSession(again) = &fx.commands[1] else {
            panic!()
        };
        assert_eq!(again.remote, Some("10.0.0.1:9".parse().expect("literal")));
        // The re-provisioned confirmations change nothing; a refusal drops the session.
        s.apply(Event::SessionAdded { id: SessionId(1) });
        s.apply(Event::CommandFailed {
            id: SessionId(2),
            error: CommandError::AddressConflict,
        });
        assert_eq!(s.session_count(), 1);
    }

    #[test]
    fn not_ready_states() {
        let mut s = NodeState::new();
        assert_eq!(s.ready(), Err(NotReady::Detached));
        let mut s2 = synced();
        s2.set_alive(false);
        assert_eq!(s2.ready(), Err(NotReady::DataplaneDown));
        s.attached();
        s.detached();
        assert_eq!(s.ready(), Err(NotReady::Detached));
    }
}
