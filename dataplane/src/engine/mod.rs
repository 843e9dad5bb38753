//! The per-worker media engine, sans-IO.
//!
//! An [`Engine`] owns the sessions placed on one worker. It is fed datagrams (with the
//! `Instant` the socket received them), commands from the slow path and messages from other
//! workers, and writes what it sends through an [`Output`]. It never touches a socket, a
//! clock or a thread, so every path — SRTP, fan-out, NACK, PLI — is tested without I/O.
//!
//! Per publisher RTP packet: one copy into a pooled buffer, one SRTP unprotect, one parse;
//! then per local subscriber one copy, an in-place header rewrite and one protect; per other
//! worker with subscribers one refcounted handle. Nothing is allocated per packet: tables are
//! sized when sessions are added.
//!
//! Relay links: a worker's relay socket ([`Via::Relay`]) reaches only relay sessions. A
//! relay-in is a publisher whose packets come from another node's relay-out over the link,
//! SRTP-protected with the per-link key; it NACKs gaps upstream ([`relay`]) and sends local
//! keyframe requests upstream as PLI. A relay-out is a subscriber that forwards packets
//! unchanged (one copy per link, however many viewers the far node has) and serves the
//! link's NACKs from the publisher's cache. Anything on the relay socket that is not an
//! authenticated packet of a relay session is counted as `relay_unauthenticated` and
//! dropped before it can cost more than one failed SRTP check. A link also carries the
//! stream's data channel events on a reserved SSRC (`relay_data`): the relay-out sends and
//! repairs them, the relay-in hands them to the slow path, never to media subscribers.

pub mod ice;
pub mod latch;
pub mod nack;
pub mod pool;
pub mod relay;
mod relay_data;
pub mod rr;
mod session;
pub mod twcc;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use switchyard_shared::command::{
    CommandError, IceCredentials, SessionId, SrtpKeys, ALL_TRACKS, MAX_TRACKS,
};
use switchyard_shared::journal::{self, Journal};
use switchyard_shared::packet::{self, rtcp, rtp, Kind};
use switchyard_shared::srtp;
use switchyard_shared::stats::{Counter, DropReason, Stats};

pub use self::latch::MAX_TRIALS as MAX_LATCH_TRIALS;
use self::pool::{Handle, Pool, PACKET_CAP};
pub use self::session::SessionKey;
use self::session::{seal_rtcp, seal_rtp, Publisher, Session, Slab, Subscriber};
pub use crate::via::Via;

pub use switchyard_shared::packet::MAX_DATAGRAM;

/// A keyframe request reaches a publisher at most this often per track, however many
/// subscribers ask: a burst of new viewers costs the publisher one keyframe, not N.
pub const PLI_INTERVAL: Duration = Duration::from_millis(500);

/// Dense per-node stream index assigned by the slow path (stream names stay off the hot path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// Slow path → worker.
#[derive(Debug)]
pub enum WorkerCommand {
    AddPublisher {
        id: SessionId,
        stream: StreamId,
        remote: Option<SocketAddr>,
        ssrcs: Vec<u32>,
        /// RTP clock rate of `ssrcs[i]`; missing or 0: unknown (jitter reported as 0).
        clock_rates: Vec<u32>,
        /// Transport-wide-cc extension id: send this publisher transport-cc feedback.
        twcc_ext: Option<u8>,
        /// `None` until DTLS-SRTP delivers them ([`WorkerCommand::SetKeys`]).
        srtp: Option<SrtpKeys>,
        ice: Option<IceCredentials>,
    },
    AddSubscriber {
        id: SessionId,
        stream: StreamId,
        /// `None` only with `ice`: the address comes from the first valid check.
        remote: Option<SocketAddr>,
        ssrcs: [u32; MAX_TRACKS],
        /// Publisher → subscriber payload types (validated < 128 by the slow path).
        payload_types: Vec<(u8, u8)>,
        /// Header extension id table (`rtp::remap_extensions`); `None`: unchanged.
        extensions: Option<[u8; 16]>,
        /// Per track: the subscriber's RTX SSRC and payload type, where it negotiated RTX.
        rtx: [Option<(u32, u8)>; MAX_TRACKS],
        /// Tracks it receives: bit `i` = publisher track `i`.
        tracks: u8,
        /// Plain RTP egress: no SRTP (`srtp` and `ice` must be `None`, `remote` set).
        plain: bool,
        srtp: Option<SrtpKeys>,
        ice: Option<IceCredentials>,
    },
    /// This node's end of a relay link: the publisher of `stream` here, fed by another
    /// node's relay-out over this worker's relay socket (see `Role::RelayIn`).
    AddRelayIn {
        id: SessionId,
        stream: StreamId,
        /// The far node's relay socket; `None` latches the first authenticated source.
        remote: Option<SocketAddr>,
        /// The publisher's SSRCs in track order (at most `MAX_TRACKS`); tracks not given are
        /// learned from packets in arrival order.
        ssrcs: Vec<u32>,
        /// The per-link key: `remote` unprotects the link's media, `local` protects the
        /// NACK/PLI sent back.
        srtp: SrtpKeys,
    },
    /// A subscriber of `stream` that forwards it unchanged to another node's relay socket
    /// from this worker's relay socket (see `Role::RelayOut`).
    AddRelayOut {
        id: SessionId,
        stream: StreamId,
        remote: SocketAddr,
        srtp: SrtpKeys,
    },
    Remove {
        id: SessionId,
    },
    /// SRTP keys negotiated by DTLS: media can flow.
    SetKeys {
        id: SessionId,
        keys: SrtpKeys,
    },
    /// A datagram from the slow path (a DTLS flight) for the session's peer.
    SendRaw {
        id: SessionId,
        data: Vec<u8>,
    },
    /// Sent to the publisher's worker: bit `i` set = worker `i` has subscribers of `stream`.
    SetRemoteWorkers {
        stream: StreamId,
        mask: u64,
    },
    /// Sent to subscribers' workers: where the stream's publisher runs now.
    SetPublisherWorker {
        stream: StreamId,
        worker: Option<u16>,
    },
    /// One data channel frame's fragments (`datachan::relay` payloads) for relay-out `id`
    /// to send over its link, in order.
    RelayData {
        id: SessionId,
        fragments: Vec<Vec<u8>>,
    },
}

/// Worker → slow path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerEvent {
    Added {
        id: SessionId,
    },
    Failed {
        id: SessionId,
        error: CommandError,
    },
    Removed {
        id: SessionId,
    },
    Latched {
        id: SessionId,
        remote: SocketAddr,
    },
    /// An ICE session's consent lapsed (RFC 7675); the slow path removes it.
    ConsentExpired {
        id: SessionId,
    },
    /// A DTLS record from the session's ICE-validated address, for the slow path.
    Dtls {
        id: SessionId,
        data: Vec<u8>,
    },
    /// An authenticated data channel fragment that relay-in `id` received over its link:
    /// its RTP sequence number and payload (`datachan::relay` format), for the slow path.
    RelayData {
        id: SessionId,
        seq: u16,
        payload: Vec<u8>,
    },
}

/// Events queued for the slow path beyond which the ones a peer makes (DTLS records,
/// relayed data channel fragments) are dropped, counted, so a flood cannot grow the worker's
/// memory. The queue empties only as fast as the slow path takes events (`worker::
/// hand_over`), so this limits what waits while the slow path is behind. The other events
/// are never dropped and need no limit of their own: an answer per slow-path command (the
/// commands come through a bounded queue), at most one `ConsentExpired` per session, and at
/// most one `Latched` per session (a further move updates the one queued). So the queue
/// holds at most `MAX_PENDING_EVENTS` + 2 × sessions + commands in flight.
const MAX_PENDING_EVENTS: usize = 1024;

/// How often the engine looks for lapsed ICE consent.
const CONSENT_SWEEP: Duration = Duration::from_secs(1);

/// Worker → worker.
#[derive(Debug)]
pub enum Inbound {
    /// A decrypted packet for this worker's subscribers of `packet.stream`.
    Media(Handle),
    /// A cached packet to retransmit to one subscriber here.
    Retransmit { session: SessionKey, packet: Handle },
    /// A subscriber on worker `from` lost `seq` (publisher numbering) of `stream`/`track`.
    Nack {
        from: u16,
        session: SessionKey,
        stream: StreamId,
        track: u8,
        seq: u16,
    },
    /// A subscriber wants a keyframe of `stream`/`track`.
    Pli { stream: StreamId, track: u8 },
    /// The publisher's sender report for `stream`/`track`, for subscribers here.
    SenderReport(SenderReport),
    /// A handle going home to the worker whose pool owns it.
    Return(Handle),
}

/// A publisher's sender report, as each subscriber gets it under its own SSRC and timestamp
/// offset: the NTP ↔ RTP time pair is what lets a receiver synchronise audio and video.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderReport {
    pub stream: StreamId,
    pub track: u8,
    pub ntp: u64,
    pub rtp_ts: u32,
    pub packets: u32,
    pub octets: u32,
}

/// Why a send did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No free transmit buffer.
    Full,
    /// `fill` declined (protect failed).
    Cancelled,
}

/// Where the engine's output goes: the worker's sockets and the other workers' queues.
pub trait Output {
    /// Send one datagram to `dst` from the worker socket `via` names, written in place by
    /// `fill` into a buffer of at least `MAX_DATAGRAM + srtp::MAX_OVERHEAD` bytes; `fill`
    /// returns the length or `None` to cancel.
    fn send(
        &mut self,
        via: Via,
        dst: SocketAddr,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<(), SendError>;

    /// Queue a message to another worker; gives it back when that queue is full.
    fn to_worker(&mut self, worker: u16, msg: Inbound) -> Result<(), Inbound>;
}

/// Per-stream state on one worker.
#[derive(Default)]
struct LocalStream {
    publisher: Option<u32>,
    subscribers: Vec<u32>,
    /// Other workers with subscribers (publisher's worker only).
    remote_workers: u64,
    /// Worker of the publisher, for feedback from subscribers here.
    publisher_worker: Option<u16>,
}

/// Engine sizing, from the config.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_sessions: usize,
    /// Packets cached per published track for NACK (power of two).
    pub nack_cache: usize,
    /// Extra pooled buffers per publisher for packets in flight to other workers.
    pub in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 4096,
            nack_cache: 512,
            in_flight: 256,
        }
    }
}

pub struct Engine {
    worker: u16,
    limits: Limits,
    sessions: Slab,
    /// Sessions by peer address, on the media socket.
    by_addr: HashMap<SocketAddr, u32>,
    /// Relay sessions by the far node's address, on the relay socket: a separate table, so
    /// no media peer can reach a relay session and no relay peer a media one.
    relay_by_addr: HashMap<SocketAddr, u32>,
    /// Relay sessions whose far address another relay session already holds in
    /// `relay_by_addr`: several links between the same two relay sockets (one per stream).
    /// A packet the holder cannot authenticate is tried against these; few, so a scan.
    relay_shared: Vec<(SocketAddr, u32)>,
    by_id: HashMap<SessionId, u32>,
    /// Comedia publishers not yet latched, tried in order against unknown sources.
    unlatched: Vec<u32>,
    /// Relay-ins not yet latched, tried against unknown sources on the relay socket.
    relay_unlatched: Vec<u32>,
    /// Per socket ([`Via::index`]): which of `unlatched` / `relay_unlatched` an unknown
    /// source's datagram is tried against, and whether its source may have any tried.
    latch_limits: [latch::Limiter; 2],
    /// Relay-in sessions, whose gap trackers `tick` drains into NACKs upstream.
    relay_ins: Vec<u32>,
    /// ICE sessions by their local ufrag, for incoming connectivity checks.
    by_ufrag: HashMap<Box<[u8]>, u32>,
    /// The checks ICE agents sent to verify a new address of their peer, by transaction id:
    /// how an answer (which names no ufrag) finds its session. At most
    /// `ice::MAX_CANDIDATES` per session; entries go when the agent forgets them or the
    /// session goes.
    ice_transactions: HashMap<[u8; 12], u32>,
    /// When an ICE agent with checks in flight has a retransmission or a timeout next.
    next_ice: Option<Instant>,
    next_sweep: Option<Instant>,
    /// Publishers that get transport-cc feedback, and when it is next due.
    twcc_publishers: Vec<u32>,
    next_twcc: Option<Instant>,
    /// When receiver reports to publishers are next due.
    next_rr: Option<Instant>,
    /// Zero point of the arrival times in transport-cc feedback.
    epoch: Instant,
    streams: HashMap<StreamId, LocalStream>,
    pool: Pool,
    /// SRTP index journal for statically keyed sessions (none in most unit tests).
    journal: Option<Arc<Journal>>,
    stats: Arc<Stats>,
    /// Events for the slow path, oldest first; bounded as [`MAX_PENDING_EVENTS`] says.
    events: VecDeque<WorkerEvent>,
    /// Source of per-subscriber sequence/timestamp offsets; not security relevant.
    rng: u64,
    /// SSRC this worker uses as the sender of the RTCP it originates (PLI, FIR).
    rtcp_ssrc: u32,
}

impl Engine {
    pub fn new(worker: u16, limits: Limits, stats: Arc<Stats>, seed: u64) -> Self {
        Self {
            worker,
            limits,
            sessions: Slab::with_capacity(limits.max_sessions),
            by_addr: HashMap::with_capacity(limits.max_sessions),
            relay_by_addr: HashMap::new(),
            by_id: HashMap::with_capacity(limits.max_sessions),
            unlatched: Vec::new(),
            relay_unlatched: Vec::new(),
            latch_limits: [latch::Limiter::new(), latch::Limiter::new()],
            relay_shared: Vec::new(),
            relay_ins: Vec::new(),
            by_ufrag: HashMap::new(),
            ice_transactions: HashMap::new(),
            next_ice: None,
            next_sweep: None,
            twcc_publishers: Vec::new(),
            next_twcc: None,
            next_rr: None,
            epoch: Instant::now(),
            streams: HashMap::with_capacity(limits.max_sessions),
            pool: Pool::new(),
            journal: None,
            stats,
            events: VecDeque::with_capacity(MAX_PENDING_EVENTS),
            rng: seed | 1,
            rtcp_ssrc: (seed as u32) | 1,
        }
    }

    pub fn worker(&self) -> u16 {
        self.worker
    }

    pub fn session_count(&self) -> usize {
        self.by_id.len()
    }

    /// Next event for the slow path, oldest first. Call it only while the slow path has room
    /// for what it returns (`worker::hand_over`): what is not taken waits here, bounded
    /// (see `MAX_PENDING_EVENTS`). A `Latched` carries the session's address as it is now,
    /// however often it moved since it was queued, and is skipped if the session went.
    pub fn poll_event(&mut self) -> Option<WorkerEvent> {
        loop {
            let ev = self.events.pop_front()?;
            let WorkerEvent::Latched { id, .. } = ev else {
                return Some(ev);
            };
            let s = self.by_id.get(&id).and_then(|&i| self.sessions.get_mut(i));
            if let Some(s) = s.filter(|s| s.latch_queued) {
                s.latch_queued = false;
                if let Some(remote) = s.remote {
                    return Some(WorkerEvent::Latched { id, remote });
                }
            }
            // Removed since: its `Removed` follows, and the address no longer matters.
            self.count(Counter::WorkerEventsCoalesced, 1);
        }
    }

    /// Put back an event [`Engine::poll_event`] returned that could not be handed on; it is
    /// the next one out again.
    pub fn requeue_event(&mut self, ev: WorkerEvent) {
        if let WorkerEvent::Latched { id, .. } = &ev {
            if let Some(s) = self.by_id.get(id).and_then(|&i| self.sessions.get_mut(i)) {
                s.latch_queued = true;
            }
        }
        self.events.push_front(ev);
    }

    /// Events waiting for the slow path.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// Session `idx` has a new address: queue one `Latched`, unless one is queued already
    /// (it will carry this address; see [`Engine::poll_event`]).
    fn latched(&mut self, idx: u32) {
        let Some(s) = self.sessions.get_mut(idx) else {
            return;
        };
        let Some(remote) = s.remote else {
            return;
        };
        if s.latch_queued {
            self.count(Counter::WorkerEventsCoalesced, 1);
            return;
        }
        s.latch_queued = true;
        let id = s.id;
        self.events.push_back(WorkerEvent::Latched { id, remote });
    }

    fn count(&self, c: Counter, n: u64) {
        if let Some(w) = self.stats.worker(usize::from(self.worker)) {
            w.add(c, n);
        }
    }

    fn drop_packet(&self, r: DropReason) {
        self.count(r.counter(), 1);
    }

    /// The address table of socket `via`.
    fn addrs(&self, via: Via) -> &HashMap<SocketAddr, u32> {
        match via {
            Via::Media => &self.by_addr,
            Via::Relay => &self.relay_by_addr,
        }
    }

    fn addrs_mut(&mut self, via: Via) -> &mut HashMap<SocketAddr, u32> {
        match via {
            Via::Media => &mut self.by_addr,
            Via::Relay => &mut self.relay_by_addr,
        }
    }

    /// Route `r` on `via` to session `idx`. On the relay socket an address another link holds
    /// already is shared (several streams between the same two relay sockets), never taken.
    fn bind_addr(&mut self, via: Via, r: SocketAddr, idx: u32) {
        if via == Via::Relay && self.relay_by_addr.contains_key(&r) {
            self.relay_shared.push((r, idx));
        } else {
            self.addrs_mut(via).insert(r, idx);
        }
    }

    /// Undo [`Engine::bind_addr`]: a shared relay address passes to the next link on it.
    fn unbind_addr(&mut self, via: Via, r: SocketAddr, idx: u32) {
        if via == Via::Media {
            self.by_addr.remove(&r);
            return;
        }
        if self.relay_by_addr.get(&r) == Some(&idx) {
            self.relay_by_addr.remove(&r);
            if let Some(k) = self.relay_shared.iter().position(|&(a, _)| a == r) {
                let (_, next) = self.relay_shared.swap_remove(k);
                self.relay_by_addr.insert(r, next);
            }
        } else {
            self.relay_shared.retain(|&(a, i)| !(a == r && i == idx));
        }
    }

    fn unlatched_mut(&mut self, via: Via) -> &mut Vec<u32> {
        match via {
            Via::Media => &mut self.unlatched,
            Via::Relay => &mut self.relay_unlatched,
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: offsets only need to differ between subscribers.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    // ---- control -------------------------------------------------------------------------

    /// Apply a slow-path command; the answer comes out of [`Engine::poll_event`].
    pub fn handle_command(&mut self, cmd: WorkerCommand, out: &mut dyn Output) {
        match cmd {
            WorkerCommand::AddPublisher {
                id,
                stream,
                remote,
                ssrcs,
                clock_rates,
                twcc_ext,
                srtp,
                ice,
            } => {
                let r = self.add_publisher(
                    id,
                    stream,
                    (remote, Via::Media),
                    (ssrcs, clock_rates),
                    srtp.as_ref(),
                    ice.as_ref(),
                );
                if r.is_ok() {
                    self.enable_twcc(id, twcc_ext);
                }
                self.answer(id, r);
            }
            WorkerCommand::AddSubscriber {
                id,
                stream,
                remote,
                ssrcs,
                payload_types,
                extensions,
                rtx,
                tracks,
                plain,
                srtp,
                ice,
            } => {
                let mut pt = [0u8; 128];
                for (i, p) in pt.iter_mut().enumerate() {
                    *p = i as u8;
                }
                for &(from, to) in &payload_types {
                    if let Some(slot) = pt.get_mut(usize::from(from)) {
                        *slot = to & 0x7f;
                    }
                }
                let ready = srtp.is_some() || plain;
                let r = self.add_subscriber(
                    id,
                    stream,
                    (remote, Via::Media),
                    ssrcs,
                    pt,
                    (srtp.as_ref(), plain),
                    ice.as_ref(),
                );
                if r.is_ok() {
                    if let Some(session::Role::Subscriber(sub)) = self
                        .by_id
                        .get(&id)
                        .and_then(|&i| self.sessions.get_mut(i))
                        .map(|s| &mut s.role)
                    {
                        sub.extensions = extensions.map(Box::new);
                        sub.tracks = tracks;
                        for (i, r) in rtx.into_iter().enumerate() {
                            sub.rtx[i] = r.map(|(ssrc, pt)| (ssrc, pt & 0x7f));
                        }
                        let ctx = self
                            .by_id
                            .get(&id)
                            .and_then(|&i| self.sessions.get_mut(i))
                            .and_then(|s| match (&mut s.role, s.outbound.as_mut()) {
                                (session::Role::Subscriber(sub), Some(ctx)) => Some((sub, ctx)),
                                _ => None,
                            });
                        if let Some((sub, ctx)) = ctx {
                            // RTX numbering also continues above a resumed key's last index.
                            for (seq, rtx) in sub.rtx_seq.iter_mut().zip(sub.rtx) {
                                if let Some(floor) = rtx.and_then(|(ssrc, _)| ctx.sent_floor(ssrc))
                                {
                                    *seq = (floor as u16).wrapping_add(1);
                                }
                            }
                        }
                    }
                }
                if r.is_ok() && ready {
                    self.keyframe_for_new_subscriber(stream, out);
                }
                self.answer(id, r);
            }
            WorkerCommand::AddRelayIn {
                id,
                stream,
                remote,
                ssrcs,
                srtp,
            } => {
                let r = self.add_relay_in(id, stream, (remote, ssrcs), &srtp);
                self.answer(id, r);
            }
            WorkerCommand::AddRelayOut {
                id,
                stream,
                remote,
                srtp,
            } => {
                let r = self.add_relay_out(id, stream, remote, &srtp);
                if r.is_ok() {
                    self.keyframe_for_new_subscriber(stream, out);
                }
                self.answer(id, r);
            }
            WorkerCommand::SetKeys { id, keys } => {
                let Some(s) = self.by_id.get(&id).and_then(|&i| self.sessions.get_mut(i)) else {
                    return;
                };
                match Self::contexts(Some(&keys)) {
                    Ok((inbound, outbound)) => {
                        s.inbound = inbound;
                        s.outbound = outbound;
                        if let session::Role::Subscriber(sub) = &s.role {
                            let stream = sub.stream;
                            self.keyframe_for_new_subscriber(stream, out);
                        }
                    }
                    Err(_) => tracing::error!(id = id.0, "negotiated SRTP keys rejected"),
                }
            }
            WorkerCommand::SendRaw { id, data } => {
                let Some((via, dst)) = self
                    .by_id
                    .get(&id)
                    .and_then(|&i| self.sessions.get(i))
                    .and_then(|s| Some((s.via, s.remote?)))
                else {
                    return;
                };
                let sent = out.send(via, dst, &mut |buf| {
                    let b = buf.get_mut(..data.len())?;
                    b.copy_from_slice(&data);
                    Some(data.len())
                });
                match sent {
                    Ok(()) => {
                        self.count(Counter::TxPackets, 1);
                        self.count(Counter::TxBytes, data.len() as u64);
                    }
                    Err(_) => self.drop_packet(DropReason::QueueFull),
                }
            }
            WorkerCommand::RelayData { id, fragments } => {
                self.send_relay_data(id, &fragments, out);
            }
            WorkerCommand::Remove { id } => match self.remove(id, out) {
                Ok(()) => self.events.push_back(WorkerEvent::Removed { id }),
                Err(error) => self.events.push_back(WorkerEvent::Failed { id, error }),
            },
            WorkerCommand::SetRemoteWorkers { stream, mask } => {
                let mask = mask & !(1u64 << (self.worker % 64));
                self.streams.entry(stream).or_default().remote_workers = mask;
                self.gc_stream(stream);
            }
            WorkerCommand::SetPublisherWorker { stream, worker } => {
                self.streams.entry(stream).or_default().publisher_worker = worker;
                self.gc_stream(stream);
            }
        }
        self.count_sessions();
    }

    fn answer(&mut self, id: SessionId, r: Result<(), CommandError>) {
        self.events.push_back(match r {
            Ok(()) => WorkerEvent::Added { id },
            Err(error) => WorkerEvent::Failed { id, error },
        });
    }

    fn count_sessions(&self) {
        if let Some(w) = self.stats.worker(usize::from(self.worker)) {
            w.set(Counter::Sessions, self.by_id.len() as u64);
        }
    }

    /// Both directions' contexts for a session keyed at creation (static keys), resumed
    /// from the SRTP journal when one is attached: a session provisioned again after a
    /// data-plane restart continues above every index its keys were used with.
    #[allow(clippy::type_complexity)]
    fn static_contexts(
        &self,
        id: SessionId,
        keys: Option<&SrtpKeys>,
    ) -> Result<(Option<srtp::Context>, Option<srtp::Context>), CommandError> {
        let (mut inbound, mut outbound) = Self::contexts(keys)?;
        let (Some(journal), Some(keys)) = (&self.journal, keys) else {
            return Ok((inbound, outbound));
        };
        for (dir, ctx) in [(0u8, &mut inbound), (1u8, &mut outbound)] {
            let Some(ctx) = ctx else { continue };
            let tag = journal::key_tag(dir, keys.profile.name(), &keys.remote, &keys.local);
            match journal.take(id.0, tag) {
                Ok((slot, resumed)) => {
                    if resumed {
                        tracing::info!(
                            id = id.0,
                            direction = if dir == 0 { "in" } else { "out" },
                            "static SRTP key resumed above its last used index"
                        );
                    }
                    ctx.resume(slot);
                }
                Err(e) => {
                    tracing::error!(id = id.0, error = %e, "no SRTP journal record; session refused");
                    return Err(CommandError::Capacity);
                }
            }
        }
        Ok((inbound, outbound))
    }

    /// Both directions' contexts; `None` (keys still to come from DTLS) gives none.
    #[allow(clippy::type_complexity)]
    fn contexts(
        keys: Option<&SrtpKeys>,
    ) -> Result<(Option<srtp::Context>, Option<srtp::Context>), CommandError> {
        let Some(keys) = keys else {
            return Ok((None, None));
        };
        let inbound =
            srtp::Context::new(keys.profile, &keys.remote).map_err(|_| CommandError::BadKey)?;
        let outbound =
            srtp::Context::new(keys.profile, &keys.local).map_err(|_| CommandError::BadKey)?;
        Ok((Some(inbound), Some(outbound)))
    }

    fn check_new(
        &self,
        id: SessionId,
        (remote, via): (Option<SocketAddr>, Via),
        (keys, plain): (Option<&SrtpKeys>, bool),
        ice: Option<&IceCredentials>,
    ) -> Result<(), CommandError> {
        if self.by_id.contains_key(&id) {
            return Err(CommandError::DuplicateSession);
        }
        if plain {
            if keys.is_some() || ice.is_some() || remote.is_none() {
                return Err(CommandError::PlainIngress);
            }
            if plain_rtcp(remote).is_some_and(|r| self.by_addr.contains_key(&r)) {
                return Err(CommandError::AddressConflict);
            }
        } else if keys.is_none() && ice.is_none() {
            // DTLS is accepted only from an ICE-validated address.
            return Err(CommandError::Invalid);
        }
        if let Some(c) = ice {
            if c.local_ufrag.is_empty()
                || c.local_ufrag.contains(':')
                || self.by_ufrag.contains_key(c.local_ufrag.as_bytes())
            {
                return Err(CommandError::Invalid);
            }
            if remote.is_some() {
                // ICE decides the address; a given one would bypass the check.
                return Err(CommandError::Invalid);
            }
        }
        // Relay links may share an address pair (one link per stream): packets are told apart
        // by which link's key authenticates them.
        if via == Via::Media && remote.is_some_and(|r| self.addrs(via).contains_key(&r)) {
            return Err(CommandError::AddressConflict);
        }
        if self.by_id.len() >= self.limits.max_sessions {
            return Err(CommandError::Capacity);
        }
        Ok(())
    }

    fn add_publisher(
        &mut self,
        id: SessionId,
        stream: StreamId,
        (remote, via): (Option<SocketAddr>, Via),
        (ssrcs, clock_rates): (Vec<u32>, Vec<u32>),
        keys: Option<&SrtpKeys>,
        ice: Option<&IceCredentials>,
    ) -> Result<(), CommandError> {
        self.check_new(id, (remote, via), (keys, false), ice)?;
        if ssrcs.len() > MAX_TRACKS || clock_rates.len() > ssrcs.len() {
            return Err(CommandError::Invalid);
        }
        if self
            .streams
            .get(&stream)
            .is_some_and(|s| s.publisher.is_some())
        {
            return Err(CommandError::StreamBusy);
        }
        let (inbound, outbound) = self.static_contexts(id, keys)?;
        let mut tracks = [None; MAX_TRACKS];
        for (t, s) in tracks.iter_mut().zip(&ssrcs) {
            *t = Some(*s);
        }
        let mut publisher = Publisher::new(stream, tracks, self.limits.nack_cache);
        for (c, &r) in publisher.clock_rates.iter_mut().zip(&clock_rates) {
            *c = r;
        }
        self.pool.reserve(self.pool_share());
        let idx = self.sessions.insert(Session {
            id,
            remote,
            inbound,
            outbound,
            role: session::Role::Publisher(publisher),
            ice: ice.map(|c| ice::IceAgent::new(c, Instant::now(), &SystemRandom::new())),
            dtls: keys.is_none(),
            plain: false,
            rtcp: None,
            via,
            latch_queued: false,
        });
        self.by_id.insert(id, idx);
        match (remote, ice) {
            (_, Some(c)) => {
                self.by_ufrag.insert(c.local_ufrag.as_bytes().into(), idx);
            }
            (Some(r), None) => self.bind_addr(via, r, idx),
            (None, None) => self.unlatched_mut(via).push(idx),
        }
        self.streams.entry(stream).or_default().publisher = Some(idx);
        Ok(())
    }

    // The fields of WorkerCommand::AddSubscriber, unpacked where they are checked.
    #[allow(clippy::too_many_arguments)]
    fn add_subscriber(
        &mut self,
        id: SessionId,
        stream: StreamId,
        (remote, via): (Option<SocketAddr>, Via),
        ssrcs: [u32; MAX_TRACKS],
        payload_types: [u8; 128],
        (keys, plain): (Option<&SrtpKeys>, bool),
        ice: Option<&IceCredentials>,
    ) -> Result<(), CommandError> {
        if remote.is_none() && ice.is_none() {
            return Err(CommandError::Invalid);
        }
        self.check_new(id, (remote, via), (keys, plain), ice)?;
        let rtcp = if plain { plain_rtcp(remote) } else { None };
        let (inbound, mut outbound) = self.static_contexts(id, keys)?;
        let mut offsets = [(0u16, 0u32); MAX_TRACKS];
        for o in &mut offsets {
            let r = self.next_rand();
            *o = (r as u16, (r >> 32) as u32);
        }
        let rtx_seq = [(); MAX_TRACKS].map(|()| self.next_rand());
        // A resumed static key: each track's numbering continues right above the last
        // index used under it, wherever the publisher's numbering is now.
        let resume_seq = ssrcs.map(|ssrc| {
            let floor = outbound.as_mut()?.sent_floor(ssrc)?;
            Some((floor as u16).wrapping_add(1))
        });
        let idx = self.sessions.insert(Session {
            id,
            remote,
            inbound,
            outbound,
            role: session::Role::Subscriber(Subscriber {
                stream,
                ssrcs,
                offsets,
                payload_types: Box::new(payload_types),
                extensions: None,
                rtx: [None; MAX_TRACKS],
                rtx_seq: rtx_seq.map(|r| r as u16),
                resume_seq,
                tracks: ALL_TRACKS,
                relay: false,
                data: None,
            }),
            ice: ice.map(|c| ice::IceAgent::new(c, Instant::now(), &SystemRandom::new())),
            dtls: keys.is_none() && !plain,
            plain,
            rtcp,
            via,
            latch_queued: false,
        });
        self.by_id.insert(id, idx);
        for r in remote.into_iter().chain(rtcp) {
            self.bind_addr(via, r, idx);
        }
        if let Some(c) = ice {
            self.by_ufrag.insert(c.local_ufrag.as_bytes().into(), idx);
        }
        self.streams
            .entry(stream)
            .or_default()
            .subscribers
            .push(idx);
        Ok(())
    }

    /// A relay-in: a publisher on the relay socket with the given SSRCs (the rest learned)
    /// and a gap tracker.
    fn add_relay_in(
        &mut self,
        id: SessionId,
        stream: StreamId,
        (remote, ssrcs): (Option<SocketAddr>, Vec<u32>),
        keys: &SrtpKeys,
    ) -> Result<(), CommandError> {
        self.add_publisher(
            id,
            stream,
            (remote, Via::Relay),
            (ssrcs, Vec::new()),
            Some(keys),
            None,
        )?;
        let idx = self.by_id.get(&id).copied();
        if let Some(session::Role::Publisher(p)) = idx
            .and_then(|i| self.sessions.get_mut(i))
            .map(|s| &mut s.role)
        {
            p.upstream = Some(Box::new(std::array::from_fn(|_| relay::GapTracker::new())));
            p.data_in = Some(Box::new(relay::GapTracker::new()));
        }
        self.relay_ins.extend(idx);
        Ok(())
    }

    /// A relay-out: a subscriber on the relay socket that rewrites nothing.
    fn add_relay_out(
        &mut self,
        id: SessionId,
        stream: StreamId,
        remote: SocketAddr,
        keys: &SrtpKeys,
    ) -> Result<(), CommandError> {
        let identity = std::array::from_fn(|i| i as u8);
        self.add_subscriber(
            id,
            stream,
            (Some(remote), Via::Relay),
            [0; MAX_TRACKS],
            identity,
            (Some(keys), false),
            None,
        )?;
        if let Some(session::Role::Subscriber(sub)) = self
            .by_id
            .get(&id)
            .and_then(|&i| self.sessions.get_mut(i))
            .map(|s| &mut s.role)
        {
            sub.relay = true;
            sub.offsets = [(0, 0); MAX_TRACKS];
            // A random start, like any RTP stream's.
            sub.data = Some(Box::new(relay_data::DataOut::new(self.rng as u16)));
        }
        Ok(())
    }

    fn remove(&mut self, id: SessionId, _out: &mut dyn Output) -> Result<(), CommandError> {
        let idx = self.by_id.remove(&id).ok_or(CommandError::UnknownSession)?;
        let Some(mut s) = self.sessions.remove(idx) else {
            return Err(CommandError::UnknownSession);
        };
        // Ended for good: its keys are never provisioned again, so its indices may go.
        for ctx in [&mut s.inbound, &mut s.outbound].into_iter().flatten() {
            if let Some(slot) = ctx.take_journal() {
                slot.release();
            }
        }
        for r in s.remote.into_iter().chain(s.rtcp) {
            self.unbind_addr(s.via, r, idx);
        }
        if let Some(a) = &s.ice {
            self.by_ufrag.remove(a.local_ufrag().as_bytes());
            for t in a.transactions() {
                self.ice_transactions.remove(&t);
            }
        }
        self.unlatched_mut(s.via).retain(|&i| i != idx);
        self.twcc_publishers.retain(|&i| i != idx);
        self.relay_ins.retain(|&i| i != idx);
        match s.role {
            session::Role::Publisher(mut p) => {
                for c in &mut p.caches {
                    c.clear(&mut self.pool);
                }
                self.pool.release(self.pool_share());
                if let Some(st) = self.streams.get_mut(&p.stream) {
                    st.publisher = None;
                }
                self.gc_stream(p.stream);
            }
            session::Role::Subscriber(sub) => {
                if let Some(st) = self.streams.get_mut(&sub.stream) {
                    st.subscribers.retain(|&i| i != idx);
                }
                self.gc_stream(sub.stream);
            }
        }
        Ok(())
    }

    fn gc_stream(&mut self, stream: StreamId) {
        if self.streams.get(&stream).is_some_and(|s| {
            s.publisher.is_none()
                && s.subscribers.is_empty()
                && s.remote_workers == 0
                && s.publisher_worker.is_none()
        }) {
            self.streams.remove(&stream);
        }
    }

    // ---- datagrams -----------------------------------------------------------------------

    /// A datagram the socket truncated because it exceeded [`MAX_DATAGRAM`].
    pub fn oversize(&mut self) {
        self.count(Counter::RxPackets, 1);
        self.drop_packet(DropReason::Oversize);
    }

    /// One datagram from the worker's media socket. `data` may be modified in place.
    pub fn handle_datagram(
        &mut self,
        data: &mut [u8],
        src: SocketAddr,
        at: Instant,
        out: &mut dyn Output,
    ) {
        self.on_datagram(Via::Media, data, src, at, out);
    }

    /// One datagram from the worker's relay socket. Only relay sessions are reachable here
    /// and only with SRTP/SRTCP that authenticates under their link key; everything else
    /// (STUN, DTLS, strangers, forgeries) is counted as `relay_unauthenticated`.
    pub fn handle_relay_datagram(
        &mut self,
        data: &mut [u8],
        src: SocketAddr,
        at: Instant,
        out: &mut dyn Output,
    ) {
        self.on_datagram(Via::Relay, data, src, at, out);
    }

    fn on_datagram(
        &mut self,
        via: Via,
        data: &mut [u8],
        src: SocketAddr,
        at: Instant,
        out: &mut dyn Output,
    ) {
        self.count(Counter::RxPackets, 1);
        self.count(Counter::RxBytes, data.len() as u64);
        if data.len() > MAX_DATAGRAM {
            return self.drop_packet(DropReason::Oversize);
        }
        match (packet::demux(data), via) {
            (Kind::Rtp, _) => self.on_rtp(data, src, via, at, out),
            (Kind::Rtcp, _) => self.on_rtcp(data, src, via, at, out),
            // A relay link is keyed in advance: no ICE, no DTLS on the relay socket.
            (_, Via::Relay) => self.drop_packet(DropReason::RelayUnauthenticated),
            // ICE-lite comes with WebRTC signaling; until a session has ICE credentials,
            // STUN and DTLS are counted and dropped.
            (Kind::Stun, Via::Media) => self.on_stun(data, src, at, out),
            (Kind::Dtls, Via::Media) => self.on_dtls(data, src),
            (Kind::Unknown, Via::Media) => self.drop_packet(DropReason::UnknownKind),
        }
    }

    /// ICE: a connectivity check from the peer is answered if it authenticates; an answer to
    /// one of the agent's own checks (sent to verify a new address, see [`ice`]) is found by
    /// its transaction id. Either may move the session's address, when the agent says so.
    /// Anything else STUN is counted and dropped unanswered.
    fn on_stun(&mut self, data: &[u8], src: SocketAddr, at: Instant, out: &mut dyn Output) {
        use packet::stun::Class;
        let Ok(msg) = packet::stun::Message::parse(data) else {
            return self.drop_packet(DropReason::Stun);
        };
        let idx = match msg.class {
            Class::Request => ice::addressed_ufrag(&msg).and_then(|u| self.by_ufrag.get(u)),
            Class::Success => self.ice_transactions.get(&msg.transaction_id),
            Class::Indication | Class::Error => None,
        };
        let Some(&idx) = idx else {
            return self.drop_packet(DropReason::Stun);
        };
        if self.by_addr.get(&src).is_some_and(|&other| other != idx) {
            // Another session owns this 5-tuple, so this one can never move there: no
            // answer, so the peer sees the pair fail and uses another, and no check of ours.
            return self.drop_packet(DropReason::Stun);
        }
        let (verdict, sent) = {
            let Some(s) = self.sessions.get_mut(idx) else {
                return self.drop_packet(DropReason::Stun);
            };
            let current = s.remote;
            let Some(agent) = s.ice.as_mut() else {
                return self.drop_packet(DropReason::Stun);
            };
            let verdict = match msg.class {
                Class::Request => {
                    agent.handle_request(&msg, current, src, at, &SystemRandom::new())
                }
                _ => agent.handle_response(&msg, src, at),
            };
            let Ok(verdict) = verdict else {
                return self.drop_packet(DropReason::Stun);
            };
            let agent: &ice::IceAgent = agent;
            let mut len = 0usize;
            let sent = (msg.class == Class::Request).then(|| {
                out.send(Via::Media, src, &mut |buf| {
                    let n = agent.write_success(&msg, src, buf)?;
                    len = n;
                    Some(n)
                })
                .map(|()| len)
            });
            (verdict, sent)
        };
        match sent {
            Some(Ok(len)) => {
                self.count(Counter::TxPackets, 1);
                self.count(Counter::TxBytes, len as u64);
            }
            Some(Err(_)) => self.drop_packet(DropReason::QueueFull),
            None => {}
        }
        // A new address gets its first check right after the answer.
        self.drive_ice(idx, at, out);
        if verdict == ice::Validated::Moved {
            self.move_session(idx, src);
        }
    }

    /// ICE moved session `idx` to `src`, which no other session holds (checked by `on_stun`).
    fn move_session(&mut self, idx: u32, src: SocketAddr) {
        let Some(s) = self.sessions.get_mut(idx) else {
            return;
        };
        if let Some(old) = s.remote.replace(src) {
            self.by_addr.remove(&old);
        }
        self.by_addr.insert(src, idx);
        self.latched(idx);
    }

    /// Send the checks session `idx`'s ICE agent has due, forget the transactions it ended,
    /// and keep `next_ice` at its next deadline.
    fn drive_ice(&mut self, idx: u32, now: Instant, out: &mut dyn Output) {
        let Some(agent) = self.sessions.get_mut(idx).and_then(|s| s.ice.as_mut()) else {
            return;
        };
        let (mut sent, mut bytes, mut full) = (0u64, 0u64, 0u64);
        while let Some(p) = agent.poll(now) {
            match p {
                ice::Poll::Check { to, transaction_id } => {
                    self.ice_transactions.insert(transaction_id, idx);
                    let a: &ice::IceAgent = agent;
                    let mut len = 0usize;
                    let r = out.send(Via::Media, to, &mut |buf| {
                        let n = a.write_check(&transaction_id, buf)?;
                        len = n;
                        Some(n)
                    });
                    match r {
                        Ok(()) => {
                            sent += 1;
                            bytes += len as u64;
                        }
                        // The next transmission of the same check covers it.
                        Err(_) => full += 1,
                    }
                }
                ice::Poll::Forget(t) => {
                    self.ice_transactions.remove(&t);
                }
            }
        }
        if let Some(t) = agent.poll_timeout() {
            self.next_ice = Some(self.next_ice.map_or(t, |n| n.min(t)));
        }
        self.count(Counter::TxPackets, sent);
        self.count(Counter::TxBytes, bytes);
        if full > 0 {
            self.count(DropReason::QueueFull.counter(), full);
        }
    }

    /// Retransmissions and timeouts of the agents' checks in flight: only when one is due,
    /// and then only the sessions that have a check in flight.
    fn drive_ice_checks(&mut self, now: Instant, out: &mut dyn Output) {
        if self.ice_transactions.is_empty() || self.next_ice.is_some_and(|t| now < t) {
            return;
        }
        let mut due: Vec<u32> = self.ice_transactions.values().copied().collect();
        due.sort_unstable();
        due.dedup();
        self.next_ice = None;
        for idx in due {
            self.drive_ice(idx, now, out);
        }
    }

    /// A DTLS record goes to the slow path only from the ICE-validated address of a session
    /// keyed by DTLS; anything else (another 5-tuple, a ClientHello flood from strangers) is
    /// counted and dropped here without allocating (CVE-2023-51443-style attacks).
    fn on_dtls(&mut self, data: &[u8], src: SocketAddr) {
        let Some(&idx) = self.by_addr.get(&src) else {
            return self.drop_packet(DropReason::Dtls);
        };
        let Some(s) = self.sessions.get(idx) else {
            return self.drop_packet(DropReason::Dtls);
        };
        if !s.dtls || self.events.len() >= MAX_PENDING_EVENTS {
            return self.drop_packet(DropReason::Dtls);
        }
        let id = s.id;
        self.events.push_back(WorkerEvent::Dtls {
            id,
            data: data.to_vec(),
        });
    }

    fn enable_twcc(&mut self, id: SessionId, ext: Option<u8>) {
        let (Some(ext), Some(&idx)) = (ext, self.by_id.get(&id)) else {
            return;
        };
        if !(1..=14).contains(&ext) {
            return; // one-byte header extension ids only (RFC 8285 §4.2)
        }
        if let Some(session::Role::Publisher(p)) = self.sessions.get_mut(idx).map(|s| &mut s.role) {
            p.twcc = Some(Box::new(twcc::Recorder::new(ext, self.epoch)));
            self.twcc_publishers.push(idx);
        }
    }

    /// Transport-cc feedback to every publisher that negotiated it, each
    /// [`twcc::FEEDBACK_INTERVAL`].
    fn send_twcc(&mut self, now: Instant, out: &mut dyn Output) {
        if self.next_twcc.is_some_and(|t| now < t) || self.twcc_publishers.is_empty() {
            return;
        }
        self.next_twcc = Some(now + twcc::FEEDBACK_INTERVAL);
        let sender = self.rtcp_ssrc;
        let mut sent = 0u64;
        for &idx in &self.twcc_publishers {
            let Some(s) = self.sessions.get_mut(idx) else {
                continue;
            };
            let (Some(remote), Some(ctx), session::Role::Publisher(p)) =
                (s.remote, s.outbound.as_mut(), &mut s.role)
            else {
                continue;
            };
            let media = p.tracks.iter().flatten().next().copied().unwrap_or(0);
            let Some(rec) = p.twcc.as_mut() else {
                continue;
            };
            let r = out.send(s.via, remote, &mut |buf| {
                let n = rec.write_feedback(buf, sender, media)?;
                ctx.protect_rtcp(buf, n).ok()
            });
            if r.is_ok() {
                sent += 1;
            }
        }
        self.count(Counter::TxPackets, sent);
    }

    /// One receiver report (a block per track heard from) to every publisher here, each
    /// [`rr::RR_INTERVAL`].
    fn send_receiver_reports(&mut self, now: Instant, out: &mut dyn Output) {
        if self.next_rr.is_some_and(|t| now < t) {
            return;
        }
        self.next_rr = Some(now + rr::RR_INTERVAL);
        let sender = self.rtcp_ssrc;
        let mut sent = 0u64;
        let mut full = 0u64;
        for st in self.streams.values() {
            let Some(s) = st.publisher.and_then(|idx| self.sessions.get_mut(idx)) else {
                continue;
            };
            let (Some(remote), Some(ctx), session::Role::Publisher(p)) =
                (s.remote, s.outbound.as_mut(), &mut s.role)
            else {
                continue;
            };
            let mut blocks = [rtcp::ReportBlock::default(); MAX_TRACKS];
            let mut n = 0;
            for (stats, ssrc) in p.recv.iter_mut().zip(&p.tracks) {
                if let Some(b) = ssrc.and_then(|ssrc| stats.report(ssrc, now)) {
                    blocks[n] = b;
                    n += 1;
                }
            }
            if n == 0 {
                continue;
            }
            let blocks = &blocks[..n];
            let r = out.send(s.via, remote, &mut |buf| {
                let len = rtcp::write_receiver_report(buf, sender, blocks).ok()?;
                ctx.protect_rtcp(buf, len).ok()
            });
            match r {
                Ok(()) => sent += 1,
                Err(_) => full += 1,
            }
        }
        self.count(Counter::TxPackets, sent);
        if full > 0 {
            self.count(DropReason::QueueFull.counter(), full);
        }
    }

    /// Periodic work: ICE consent expiry, transport-cc feedback, receiver reports. Cheap to call every loop
    /// turn.
    pub fn tick(&mut self, now: Instant, out: &mut dyn Output) {
        self.send_twcc(now, out);
        self.send_receiver_reports(now, out);
        self.send_relay_nacks(now, out);
        self.drive_ice_checks(now, out);
        if self.next_sweep.is_some_and(|t| now < t) || self.by_ufrag.is_empty() {
            return;
        }
        self.next_sweep = Some(now + CONSENT_SWEEP);
        for &idx in self.by_ufrag.values() {
            if let Some(s) = self.sessions.get_mut(idx) {
                if s.ice.as_mut().is_some_and(|a| a.expire(now)) {
                    self.events
                        .push_back(WorkerEvent::ConsentExpired { id: s.id });
                }
            }
        }
    }

    /// NACKs upstream for the gaps every relay-in found, one RTCP NACK per track with all
    /// its due sequence numbers, to the far node's relay-out.
    fn send_relay_nacks(&mut self, now: Instant, out: &mut dyn Output) {
        let sender = self.rtcp_ssrc;
        let (mut nacked, mut sent, mut full) = (0u64, 0u64, 0u64);
        for k in 0..self.relay_ins.len() {
            let Some(s) = self
                .relay_ins
                .get(k)
                .and_then(|&i| self.sessions.get_mut(i))
            else {
                continue;
            };
            let (Some(remote), Some(ctx), session::Role::Publisher(p)) =
                (s.remote, s.outbound.as_mut(), &mut s.role)
            else {
                continue;
            };
            let Some(up) = p.upstream.as_mut() else {
                continue;
            };
            let data = p
                .data_in
                .as_deref_mut()
                .map(|g| (g, Some(relay_data_ssrc())));
            let media = up.iter_mut().zip(p.tracks);
            for (gaps, media) in media.chain(data) {
                let Some(media) = media else { continue };
                // One NACK packet's worth; the rest is due again next tick.
                let mut due = [0u16; 64];
                let n = gaps.poll_due(now, &mut due);
                if n == 0 {
                    continue;
                }
                let lost = &due[..n];
                let r = out.send(Via::Relay, remote, &mut |buf| {
                    let len = rtcp::write_nack(buf, sender, media, lost).ok()?;
                    ctx.protect_rtcp(buf, len).ok()
                });
                match r {
                    Ok(()) => {
                        sent += 1;
                        nacked += n as u64;
                    }
                    Err(_) => full += 1,
                }
            }
        }
        self.count(Counter::RelayNacksSent, nacked);
        self.count(Counter::TxPackets, sent);
        if full > 0 {
            self.count(DropReason::QueueFull.counter(), full);
        }
    }

    /// A packet of `track` that a subscriber here lost is not in relay-in `pidx`'s cache:
    /// ask the far node for it (it goes out with the relay-in's next NACK). A publisher that
    /// is not a relay-in has nothing upstream to ask.
    fn request_upstream(&mut self, pidx: u32, track: u8, seq: u16, now: Instant) {
        if let Some(session::Role::Publisher(p)) = self.sessions.get_mut(pidx).map(|s| &mut s.role)
        {
            if let Some(gaps) = p
                .upstream
                .as_mut()
                .and_then(|u| u.get_mut(usize::from(track)))
            {
                gaps.request(seq, now);
            }
        }
    }

    fn on_rtp(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        via: Via,
        at: Instant,
        out: &mut dyn Output,
    ) {
        // Decide "nobody we know" before taking a buffer: the pool only holds buffers for
        // the sessions there are, so with none it is empty, and the drop must say why.
        let unlatched = match via {
            Via::Media => &self.unlatched,
            Via::Relay => &self.relay_unlatched,
        };
        if unlatched.is_empty() && !self.addrs(via).contains_key(&src) {
            return self.drop_packet(on_socket(via, DropReason::UnknownSource));
        }
        let Some(mut h) = self.pool.take() else {
            return self.drop_packet(DropReason::QueueFull);
        };
        let Some(pkt) = Arc::get_mut(&mut h) else {
            // `take` only returns unshared buffers; if that ever changed we drop, not panic.
            return self.drop_packet(DropReason::QueueFull);
        };
        let decrypted = match self.addrs(via).get(&src) {
            Some(&idx) => match self.unprotect_into(idx, data, &mut pkt.data) {
                // Another link between the same relay sockets, or one not latched yet.
                Err(e) if via == Via::Relay => self
                    .relay_retry(data, src, at, &mut pkt.data)
                    .map_err(|_| e),
                r => r,
            },
            None => self.latch(data, src, via, at, &mut pkt.data),
        };
        let (idx, len) = match decrypted {
            Ok(found) => found,
            Err(reason) => {
                self.pool.put(h);
                return self.drop_packet(on_socket(via, reason));
            }
        };
        let Ok(hdr) = rtp::Header::parse(&pkt.data[..len]) else {
            self.pool.put(h);
            return self.drop_packet(DropReason::Malformed);
        };
        if self.is_relay_data(idx, hdr.ssrc, hdr.payload_type) {
            let end = len.saturating_sub(hdr.padding_len);
            self.on_relay_data(idx, hdr.sequence, pkt.data.get(hdr.payload_offset..end), at);
            self.pool.put(h);
            return;
        }
        let Some(session::Role::Publisher(p)) = self.sessions.get_mut(idx).map(|s| &mut s.role)
        else {
            // Subscribers send RTCP only.
            self.pool.put(h);
            return self.drop_packet(DropReason::NoRoute);
        };
        let Some(track) = p.track_for(hdr.ssrc) else {
            self.pool.put(h);
            return self.drop_packet(DropReason::NoRoute);
        };
        let t = usize::from(track);
        if let (Some(stats), Some(&rate)) = (p.recv.get_mut(t), p.clock_rates.get(t)) {
            stats.on_packet(hdr.sequence, hdr.timestamp, at, self.epoch, rate);
        }
        if let Some(rec) = p.twcc.as_mut() {
            let plain = &pkt.data[..len];
            let value = rtp::find_extension(plain, &hdr, rec.ext_id).and_then(|r| plain.get(r));
            if let Some(&[a, b, ..]) = value {
                rec.record(u16::from_be_bytes([a, b]), at);
            }
        }
        // A relay-in notes gaps for the NACKs upstream; a late packet that fills one goes
        // on to subscribers like any other.
        let relayed = match p.upstream.as_mut().and_then(|u| u.get_mut(t)) {
            Some(gaps) => {
                gaps.on_packet(hdr.sequence, at);
                true
            }
            None => false,
        };
        pkt.stream = p.stream;
        pkt.track = track;
        pkt.len = len as u16;
        pkt.at = at;
        let stream = p.stream;
        p.caches[usize::from(track)].insert(hdr.sequence, h.clone(), &mut self.pool);
        if relayed {
            self.count(Counter::RelayRxPackets, 1);
        }
        self.fan_out(stream, &h, out);
        self.pool.put(h);
    }

    /// Copy `data` into `buf` and unprotect it with session `idx`'s inbound context.
    fn unprotect_into(
        &mut self,
        idx: u32,
        data: &[u8],
        buf: &mut [u8; PACKET_CAP],
    ) -> Result<(u32, usize), DropReason> {
        let s = self
            .sessions
            .get_mut(idx)
            .ok_or(DropReason::UnknownSource)?;
        let n = data.len();
        let dst = buf.get_mut(..n).ok_or(DropReason::Oversize)?;
        dst.copy_from_slice(data);
        // No keys yet (DTLS still running): nothing to do with it.
        let ctx = s.inbound.as_mut().ok_or(DropReason::NoRoute)?;
        let len = ctx.unprotect_rtp(dst).map_err(srtp_drop)?;
        Ok((idx, len))
    }

    /// A relay packet the holder of `src` did not authenticate: the other links sharing `src`,
    /// then the relay-ins not latched yet. Each trial starts from a fresh copy (see `latch`).
    fn relay_retry(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        at: Instant,
        buf: &mut [u8; PACKET_CAP],
    ) -> Result<(u32, usize), DropReason> {
        for k in 0..self.relay_shared.len() {
            let Some(&(a, idx)) = self.relay_shared.get(k) else {
                break;
            };
            if a == src {
                if let Ok(found) = self.unprotect_into(idx, data, buf) {
                    return Ok(found);
                }
            }
        }
        self.latch(data, src, Via::Relay, at, buf)
    }

    /// SRTCP on a relay address several links share: the first link whose key authenticates
    /// it, starting with the holder. Trials run on a copy (a failed open leaves the buffer
    /// undefined); the winner's plaintext is copied back into `data`.
    fn relay_rtcp_owner(
        &mut self,
        holder: u32,
        data: &mut [u8],
        src: SocketAddr,
    ) -> Option<(u32, usize)> {
        let mut scratch = [0u8; MAX_DATAGRAM];
        let n = data.len();
        let trial = scratch.get_mut(..n)?;
        let mut next = 0usize;
        let mut candidate = Some(holder);
        while let Some(idx) = candidate {
            if let Some(ctx) = self.sessions.get_mut(idx).and_then(|s| s.inbound.as_mut()) {
                trial.copy_from_slice(data);
                if let Ok(len) = ctx.unprotect_rtcp(trial) {
                    data.get_mut(..len)?.copy_from_slice(trial.get(..len)?);
                    return Some((idx, len));
                }
            }
            candidate = None;
            while let Some(&(a, i)) = self.relay_shared.get(next) {
                next += 1;
                if a == src {
                    candidate = Some(i);
                    break;
                }
            }
        }
        None
    }

    /// A packet from an unknown source: the first comedia publisher whose key authenticates
    /// it owns `src` from now on. A failed trial leaves a context untouched (SRTP state only
    /// moves after authentication), so trying several is safe; each trial starts from a
    /// fresh copy because a failed AEAD open leaves the buffer undefined. At most
    /// [`MAX_LATCH_TRIALS`] publishers per datagram, and none once the source has spent its
    /// budget ([`latch`](mod@latch)): a stranger's datagram costs O(1), not O(waiting publishers).
    fn latch(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        via: Via,
        at: Instant,
        buf: &mut [u8; PACKET_CAP],
    ) -> Result<(u32, usize), DropReason> {
        let waiting = self.unlatched_mut(via).len();
        if waiting == 0 {
            return Err(DropReason::UnknownSource);
        }
        let Some(start) = self.latch_limits[via.index()].admit(src, at, waiting) else {
            self.count(Counter::LatchRefused, 1);
            return Err(DropReason::UnknownSource);
        };
        let mut tried = 0u64;
        for j in 0..waiting.min(MAX_LATCH_TRIALS) {
            let k = (start + j) % waiting;
            let Some(&idx) = self.unlatched_mut(via).get(k) else {
                break;
            };
            tried += 1;
            let Ok(found) = self.unprotect_into(idx, data, buf) else {
                continue;
            };
            let Some(s) = self.sessions.get_mut(idx) else {
                continue;
            };
            s.remote = Some(src);
            self.unlatched_mut(via).remove(k);
            self.bind_addr(via, src, idx);
            self.latched(idx);
            self.count(Counter::LatchTrials, tried);
            return Ok(found);
        }
        self.count(Counter::LatchTrials, tried);
        Err(DropReason::UnknownSource)
    }

    /// Send `h` to every subscriber here and one handle to every other worker with some.
    fn fan_out(&mut self, stream: StreamId, h: &Handle, out: &mut dyn Output) {
        let Some(st) = self.streams.get(&stream) else {
            return;
        };
        let mut mask = st.remote_workers;
        while mask != 0 {
            let w = mask.trailing_zeros() as u16;
            mask &= mask - 1;
            match out.to_worker(w, Inbound::Media(h.clone())) {
                Ok(()) => self.count(Counter::CrossWorkerOut, 1),
                Err(Inbound::Media(back)) => {
                    self.pool.put(back);
                    self.drop_packet(DropReason::QueueFull);
                }
                Err(_) => {}
            }
        }
        self.forward_local(stream, h, out);
    }

    fn forward_local(&mut self, stream: StreamId, h: &Handle, out: &mut dyn Output) {
        let Some(st) = self.streams.get(&stream) else {
            return;
        };
        let mut sent = 0u64;
        let mut relayed = 0u64;
        let mut bytes = 0u64;
        let mut full = 0u64;
        for &idx in &st.subscribers {
            let Some(s) = self.sessions.get_mut(idx) else {
                continue;
            };
            // A WebRTC subscriber gets media once ICE has latched its address and DTLS has
            // given its keys; until then skipping it is not a drop (counting it as
            // `queue_full` made every WHEP handshake look like a full send queue).
            if !s.can_send() {
                continue;
            }
            if let session::Role::Subscriber(sub) = &s.role {
                if !sub.wants(h.track) {
                    continue;
                }
            }
            match forward_to(s, h, out) {
                Ok(n) => {
                    sent += 1;
                    bytes += n as u64;
                    if s.via == Via::Relay {
                        relayed += 1;
                    }
                }
                Err(_) => full += 1,
            }
        }
        self.count(Counter::RelayTxPackets, relayed);
        self.count(Counter::Forwarded, sent);
        self.count(Counter::TxPackets, sent);
        self.count(Counter::TxBytes, bytes);
        if full > 0 {
            self.count(DropReason::QueueFull.counter(), full);
        }
    }

    fn on_rtcp(
        &mut self,
        data: &mut [u8],
        src: SocketAddr,
        via: Via,
        at: Instant,
        out: &mut dyn Output,
    ) {
        let Some(&holder) = self.addrs(via).get(&src) else {
            return self.drop_packet(on_socket(via, DropReason::UnknownSource));
        };
        // Several relay links on one address pair: the one whose key opens it (decrypted
        // here already); otherwise the address's only session, decrypted below.
        let (idx, opened) = if via == Via::Relay && self.relay_shared.iter().any(|&(a, _)| a == src)
        {
            match self.relay_rtcp_owner(holder, data, src) {
                Some((idx, len)) => (idx, Some(len)),
                None => return self.drop_packet(DropReason::RelayUnauthenticated),
            }
        } else {
            (holder, None)
        };
        let key = SessionKey {
            idx,
            gen: self.sessions.generation(idx),
        };
        let Some(s) = self.sessions.get_mut(idx) else {
            return self.drop_packet(DropReason::UnknownSource);
        };
        let len = match (opened, s.inbound.as_mut()) {
            (Some(len), _) => len,
            (None, Some(ctx)) => match ctx.unprotect_rtcp(data) {
                Ok(len) => len,
                Err(e) => return self.drop_packet(on_socket(via, srtp_drop(e))),
            },
            // A plain egress session: its RTCP is unauthenticated, accepted only because it
            // comes from the destination's own addresses (the address table holds only those).
            (None, None) if s.plain => data.len(),
            (None, None) => return self.drop_packet(DropReason::NoRoute),
        };
        let plain = &data[..len];
        let sub = match &mut s.role {
            session::Role::Subscriber(sub) => sub,
            session::Role::Publisher(p) => {
                // Sender reports go on to every subscriber; the rest (SDES, RR) ends here.
                let stream = p.stream;
                let mut reports = [None; MAX_TRACKS];
                for r in rtcp::compound(plain) {
                    match r {
                        Ok(rtcp::Packet::SenderReport(sr)) => {
                            let known = p.tracks.iter().position(|t| *t == Some(sr.ssrc));
                            if let Some(stats) = known.and_then(|t| p.recv.get_mut(t)) {
                                stats.on_sender_report(sr.ntp, at);
                            }
                            if let Some(slot) = known.and_then(|t| reports.get_mut(t)) {
                                *slot = Some(SenderReport {
                                    stream,
                                    track: known.unwrap_or_default() as u8,
                                    ntp: sr.ntp,
                                    rtp_ts: sr.rtp_timestamp,
                                    packets: sr.packet_count,
                                    octets: sr.octet_count,
                                });
                            }
                        }
                        Ok(_) => {}
                        Err(_) => {
                            self.drop_packet(DropReason::Malformed);
                            break;
                        }
                    }
                }
                for sr in reports.into_iter().flatten() {
                    self.fan_out_report(sr, out);
                }
                return;
            }
        };
        let stream = sub.stream;
        // Collect feedback first: acting on it needs `self` mutably.
        let mut nacks = [(0u8, 0u16); 64];
        let mut n_nacks = 0;
        let mut plis = [false; MAX_TRACKS];
        let mut data_nacks = [0u16; 64];
        let mut n_data = 0;
        for p in rtcp::compound(plain) {
            match p {
                Ok(rtcp::Packet::Nack(nack))
                    if sub.data.is_some() && nack.media_ssrc == relay_data_ssrc() =>
                {
                    // The far node lost data channel fragments of this relay-out.
                    for seq in nack.lost() {
                        if n_data < data_nacks.len() {
                            data_nacks[n_data] = seq;
                            n_data += 1;
                        }
                    }
                }
                Ok(rtcp::Packet::Nack(nack)) => {
                    // Only for a track it receives (a forward's egress gets one track).
                    let Some(track) = sub.track_of(nack.media_ssrc).filter(|&t| sub.wants(t))
                    else {
                        continue;
                    };
                    for seq in nack.lost() {
                        if n_nacks < nacks.len() {
                            nacks[n_nacks] = (track, sub.original_seq(track, seq));
                            n_nacks += 1;
                        }
                    }
                }
                Ok(rtcp::Packet::Pli { media_ssrc, .. }) => {
                    if let Some(t) = sub.track_of(media_ssrc).filter(|&t| sub.wants(t)) {
                        plis[usize::from(t)] = true;
                    }
                }
                Ok(rtcp::Packet::Fir(fir)) => {
                    for (ssrc, _) in fir.entries() {
                        if let Some(t) = sub.track_of(ssrc).filter(|&t| sub.wants(t)) {
                            plis[usize::from(t)] = true;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    self.drop_packet(DropReason::Malformed);
                    break;
                }
            }
        }
        self.count(Counter::NacksReceived, (n_nacks + n_data) as u64);
        if n_data > 0 {
            self.resend_relay_data(idx, &data_nacks[..n_data], out);
        }
        for &(track, seq) in &nacks[..n_nacks] {
            self.nack(stream, (track, seq), key, at, out);
        }
        for (t, &want) in plis.iter().enumerate() {
            if want {
                self.request_keyframe(stream, t as u8, at, out);
            }
        }
    }

    /// A publisher's SR to every subscriber: one message per other worker with some.
    fn fan_out_report(&mut self, sr: SenderReport, out: &mut dyn Output) {
        let Some(st) = self.streams.get(&sr.stream) else {
            return;
        };
        let mut mask = st.remote_workers;
        while mask != 0 {
            let w = mask.trailing_zeros() as u16;
            mask &= mask - 1;
            if out.to_worker(w, Inbound::SenderReport(sr)).is_err() {
                self.drop_packet(DropReason::QueueFull);
            }
        }
        self.report_local(sr, out);
    }

    /// The SR as each local subscriber of the stream knows the track: its SSRC, its RTP
    /// timestamp offset, protected with its key.
    fn report_local(&mut self, sr: SenderReport, out: &mut dyn Output) {
        let Some(st) = self.streams.get(&sr.stream) else {
            return;
        };
        let t = usize::from(sr.track);
        let mut sent = 0u64;
        for &idx in &st.subscribers {
            let Some(s) = self.sessions.get_mut(idx) else {
                continue;
            };
            if !s.can_send() {
                continue;
            }
            let via = s.via;
            let (Some(remote), session::Role::Subscriber(sub)) = (s.rtcp_remote(), &s.role) else {
                continue;
            };
            if !sub.wants(sr.track) {
                continue;
            }
            // A relay-out passes the report on under the original SSRC and timestamps (its
            // offsets are zero), once it has seen the track's SSRC.
            let (Some(&ssrc), Some(&(_, ts_off))) = (sub.ssrcs.get(t), sub.offsets.get(t)) else {
                continue;
            };
            if sub.relay && ssrc == 0 {
                continue;
            }
            let mut ctx = s.outbound.as_mut();
            let r = out.send(via, remote, &mut |buf| {
                let n = rtcp::write_sender_report(
                    buf,
                    ssrc,
                    sr.ntp,
                    sr.rtp_ts.wrapping_add(ts_off),
                    sr.packets,
                    sr.octets,
                    &[],
                )
                .ok()?;
                seal_rtcp(ctx.as_deref_mut(), buf, n)
            });
            if r.is_ok() {
                sent += 1;
            }
        }
        self.count(Counter::TxPackets, sent);
    }

    /// A subscriber (here or, through `Inbound::Nack`, elsewhere) lost `seq` of `track`.
    /// Served from the publisher's cache; a relay-in that lacks it asks upstream.
    fn nack(
        &mut self,
        stream: StreamId,
        (track, seq): (u8, u16),
        to: SessionKey,
        now: Instant,
        out: &mut dyn Output,
    ) {
        let Some(st) = self.streams.get(&stream) else {
            return self.drop_packet(DropReason::NoRoute);
        };
        if let Some(pidx) = st.publisher {
            match self.cached(pidx, track, seq) {
                Some(h) => self.retransmit_to(to, h, out),
                None => self.request_upstream(pidx, track, seq, now),
            }
        } else if let Some(w) = st.publisher_worker {
            let msg = Inbound::Nack {
                from: self.worker,
                session: to,
                stream,
                track,
                seq,
            };
            if out.to_worker(w, msg).is_err() {
                self.drop_packet(DropReason::QueueFull);
            }
        }
    }

    fn cached(&self, publisher: u32, track: u8, seq: u16) -> Option<Handle> {
        let s = self.sessions.get(publisher)?;
        let session::Role::Publisher(p) = &s.role else {
            return None;
        };
        p.caches.get(usize::from(track))?.get(seq).cloned()
    }

    /// Resend a cached packet to local subscriber `to` (gone subscribers are skipped).
    fn retransmit_to(&mut self, to: SessionKey, h: Handle, out: &mut dyn Output) {
        if let Some(s) = self.sessions.get_key_mut(to) {
            let relay = s.via == Via::Relay;
            if retransmit(s, &h, out).is_ok() {
                self.count_retransmit(relay);
            }
        }
        self.pool.put(h);
    }

    fn count_retransmit(&self, relay: bool) {
        self.count(Counter::Retransmitted, 1);
        self.count(Counter::TxPackets, 1);
        if relay {
            self.count(Counter::RelayTxPackets, 1);
        }
    }

    /// Ask the publisher of `stream` for a keyframe of `track`, at most once per
    /// [`PLI_INTERVAL`].
    /// A subscriber can decode only from a keyframe: ask the publisher for one as soon as
    /// the subscriber can receive (throttled per track like any PLI), so a new viewer sees
    /// video within a round trip instead of at the publisher's next periodic keyframe.
    fn keyframe_for_new_subscriber(&mut self, stream: StreamId, out: &mut dyn Output) {
        let now = Instant::now();
        for t in 0..MAX_TRACKS as u8 {
            self.request_keyframe(stream, t, now, out);
        }
    }

    fn request_keyframe(
        &mut self,
        stream: StreamId,
        track: u8,
        now: Instant,
        out: &mut dyn Output,
    ) {
        let Some(st) = self.streams.get(&stream) else {
            return;
        };
        if let Some(pidx) = st.publisher {
            let sender = self.rtcp_ssrc;
            let Some(s) = self.sessions.get_mut(pidx) else {
                return;
            };
            let (Some(remote), session::Role::Publisher(p)) = (s.remote, &mut s.role) else {
                return;
            };
            let Some(media) = p.tracks.get(usize::from(track)).copied().flatten() else {
                return;
            };
            let t = &mut p.last_pli[usize::from(track)];
            if t.is_some_and(|last| now.saturating_duration_since(last) < PLI_INTERVAL) {
                return self.count(Counter::PliThrottled, 1);
            }
            let Some(ctx) = s.outbound.as_mut() else {
                return;
            };
            *t = Some(now);
            let r = out.send(s.via, remote, &mut |buf| {
                let n = rtcp::write_pli(buf, sender, media).ok()?;
                ctx.protect_rtcp(buf, n).ok()
            });
            match r {
                Ok(()) => {
                    self.count(Counter::PliForwarded, 1);
                    self.count(Counter::TxPackets, 1);
                }
                Err(_) => self.drop_packet(DropReason::QueueFull),
            }
        } else if let Some(w) = st.publisher_worker {
            if out.to_worker(w, Inbound::Pli { stream, track }).is_err() {
                self.drop_packet(DropReason::QueueFull);
            }
        }
    }

    // ---- other workers -------------------------------------------------------------------

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
                    if retransmit(s, &packet, out).is_ok() {
                        self.count_retransmit(relay);
                    }
                }
                self.send_home(packet, out);
            }
            Inbound::Nack {
                from,
                session,
                stream,
                track,
                seq,
            } => {
                let Some(publisher) = self.streams.get(&stream).and_then(|s| s.publisher) else {
                    return;
                };
                let Some(h) = self.cached(publisher, track, seq) else {
                    return self.request_upstream(publisher, track, seq, now);
                };
                if let Err(back) = out.to_worker(from, Inbound::Retransmit { session, packet: h }) {
                    if let Inbound::Retransmit { packet, .. } = back {
                        self.pool.put(packet);
                    }
                    self.drop_packet(DropReason::QueueFull);
                }
            }
            Inbound::Pli { stream, track } => self.request_keyframe(stream, track, now, out),
            Inbound::SenderReport(sr) => self.report_local(sr, out),
            Inbound::Return(h) => self.pool.put(h),
        }
    }

    /// Give a handle back to the worker whose pool it came from. The publisher's worker is
    /// the only one that may drop it (see [`pool`]).
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

    /// Keep every static key's SRTP indices in `journal` (see [`switchyard_shared::journal`]).
    pub fn set_journal(&mut self, journal: Arc<Journal>) {
        self.journal = Some(journal);
    }

    /// Pooled buffers one publisher is owed: its NACK caches full on every track, plus
    /// packets in flight to other workers.
    fn pool_share(&self) -> usize {
        self.limits.nack_cache * MAX_TRACKS + self.limits.in_flight
    }

    pub fn pool_stats(&self) -> (usize, usize) {
        (self.pool.free(), self.pool.total())
    }
}

/// Resend a cached packet to subscriber `s`: as RTX (RFC 4588 §4) on the track's RTX SSRC
/// where the subscriber negotiated it, else as a copy of the original on the media SSRC.
fn retransmit(s: &mut Session, h: &Handle, out: &mut dyn Output) -> Result<usize, SendError> {
    let session::Role::Subscriber(sub) = &mut s.role else {
        return Err(SendError::Cancelled);
    };
    let track = usize::from(h.track);
    let Some((rtx_ssrc, rtx_pt)) = sub.rtx.get(track).copied().flatten() else {
        return forward_to(s, h, out);
    };
    let via = s.via;
    let (Some(remote), Some(&(seq_off, ts_off)), Some(rtx_seq)) =
        (s.remote, sub.offsets.get(track), sub.rtx_seq.get_mut(track))
    else {
        return Err(SendError::Cancelled);
    };
    let src = h.bytes();
    let exts = sub.extensions.as_deref();
    if s.outbound.is_none() && !s.plain {
        return Err(SendError::Cancelled);
    }
    let mut ctx = s.outbound.as_mut();
    let seq = *rtx_seq;
    let mut sent = 0;
    out.send(via, remote, &mut |buf| {
        let n = src.len();
        // Room for the OSN and the SRTP tag.
        if n + 2 + srtp::MAX_OVERHEAD > buf.len() {
            return None;
        }
        buf.get_mut(..n)?.copy_from_slice(src);
        let h = rtp::Header::parse(buf.get(..n)?).ok()?;
        // The original sequence number as this subscriber numbers it.
        let osn = h.sequence.wrapping_add(seq_off);
        rtp::set_ssrc(buf, rtx_ssrc).ok()?;
        rtp::set_sequence(buf, seq).ok()?;
        rtp::set_timestamp(buf, h.timestamp.wrapping_add(ts_off)).ok()?;
        let b1 = buf.get_mut(1)?;
        *b1 = (*b1 & 0x80) | rtx_pt;
        if let Some(map) = exts {
            rtp::remap_extensions(buf, &h, map).ok()?;
        }
        // OSN first in the payload; the original payload (and any padding) follows.
        let at = h.payload_offset;
        buf.copy_within(at..n, at + 2);
        buf.get_mut(at..at + 2)?.copy_from_slice(&osn.to_be_bytes());
        let len = seal_rtp(ctx.as_deref_mut(), buf, n + 2)?;
        sent = len;
        Some(len)
    })?;
    *rtx_seq = seq.wrapping_add(1);
    Ok(sent)
}

/// Copy `h` into a transmit buffer, rewrite it for subscriber `s` and protect it.
fn forward_to(s: &mut Session, h: &Handle, out: &mut dyn Output) -> Result<usize, SendError> {
    let via = s.via;
    let (Some(remote), session::Role::Subscriber(sub)) = (s.remote, &mut s.role) else {
        return Err(SendError::Cancelled);
    };
    let track = usize::from(h.track);
    if sub.relay {
        return relay_to(sub, &mut s.outbound, (via, remote), h, out);
    }
    let (Some(&ssrc), Some(&(mut seq_off, ts_off))) =
        (sub.ssrcs.get(track), sub.offsets.get(track))
    else {
        return Err(SendError::Cancelled);
    };
    let src = h.bytes();
    if let Some(next) = sub.resume_seq.get_mut(track).and_then(Option::take) {
        // First packet on a resumed key: pick the offset that numbers it `next`.
        let theirs = src
            .get(2..4)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        seq_off = next.wrapping_sub(theirs);
        if let Some(o) = sub.offsets.get_mut(track) {
            o.0 = seq_off;
        }
    }
    let pts = &sub.payload_types;
    let exts = sub.extensions.as_deref();
    // A subscriber still in its DTLS handshake gets nothing yet; a plain one needs no keys.
    if s.outbound.is_none() && !s.plain {
        return Err(SendError::Cancelled);
    }
    let mut ctx = s.outbound.as_mut();
    let mut sent = 0;
    out.send(via, remote, &mut |buf| {
        let n = src.len();
        buf.get_mut(..n)?.copy_from_slice(src);
        let seq = u16::from_be_bytes([buf[2], buf[3]]).wrapping_add(seq_off);
        let ts = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]).wrapping_add(ts_off);
        rtp::set_ssrc(buf, ssrc).ok()?;
        rtp::set_sequence(buf, seq).ok()?;
        rtp::set_timestamp(buf, ts).ok()?;
        // Payload type in the subscriber's numbering (marker bit kept).
        let b1 = buf.get_mut(1)?;
        *b1 = (*b1 & 0x80) | pts[usize::from(*b1 & 0x7f)];
        if let Some(map) = exts {
            if buf[0] & 0x10 != 0 {
                let h = rtp::Header::parse(buf.get(..n)?).ok()?;
                rtp::remap_extensions(buf, &h, map).ok()?;
            }
        }
        let len = seal_rtp(ctx.as_deref_mut(), buf, n)?;
        sent = len;
        Some(len)
    })?;
    Ok(sent)
}

/// A plain session's RTCP address: the port above its RTP port (RFC 3550 §11).
fn plain_rtcp(remote: Option<SocketAddr>) -> Option<SocketAddr> {
    let r = remote?;
    Some(SocketAddr::new(r.ip(), r.port().checked_add(1)?))
}

/// Copy `h` unchanged to a relay-out's far node, protected with the link key, and note the
/// track's SSRC so NACK/PLI from the far node (which names it) find the track.
fn relay_to(
    sub: &mut Subscriber,
    outbound: &mut Option<srtp::Context>,
    (via, remote): (Via, SocketAddr),
    h: &Handle,
    out: &mut dyn Output,
) -> Result<usize, SendError> {
    let src = h.bytes();
    let ssrc = src
        .get(8..12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes);
    if let (Some(slot), Some(ssrc)) = (sub.ssrcs.get_mut(usize::from(h.track)), ssrc) {
        *slot = ssrc;
    }
    let Some(ctx) = outbound.as_mut() else {
        return Err(SendError::Cancelled);
    };
    let mut sent = 0;
    out.send(via, remote, &mut |buf| {
        let n = src.len();
        buf.get_mut(..n)?.copy_from_slice(src);
        let len = ctx.protect_rtp(buf, n).ok()?;
        sent = len;
        Some(len)
    })?;
    Ok(sent)
}

/// The reserved SSRC of a relay link's data channel fragments.
const fn relay_data_ssrc() -> u32 {
    crate::datachan::relay::SSRC
}

/// What a drop is called on socket `via`: on the relay socket, a stranger and a failed
/// authentication are the same thing — not a relay link.
fn on_socket(via: Via, r: DropReason) -> DropReason {
    match (via, r) {
        (Via::Relay, DropReason::UnknownSource | DropReason::SrtpAuth) => {
            DropReason::RelayUnauthenticated
        }
        _ => r,
    }
}

fn srtp_drop(e: srtp::Error) -> DropReason {
    match e {
        srtp::Error::AuthFailed => DropReason::SrtpAuth,
        srtp::Error::Replayed => DropReason::Replay,
        _ => DropReason::Malformed,
    }
}

#[cfg(test)]
mod tests;
