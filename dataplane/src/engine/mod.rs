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

//! Files, by what they do: `message` (commands, events, inter-worker messages, the
//! [`Output`] trait), `control` (session control), `ingress` (datagrams in and the RTP
//! path), `stun` (ICE-lite glue), `fanout` (to subscribers and other workers), `feedback`
//! (RTCP from subscribers and publishers), `inbound` (messages from other workers),
//! `periodic` with [`timer`] (everything that happens because time passed), [`uplink`]
//! (repair of WebRTC publishers' losses), `relay_data`
//! (data channel fragments on a relay link).
//!
//! Time: every input carries `now` (or the receive time of the datagram), and the engine
//! keeps its deadlines in a [`timer::TimerTable`]. [`Engine::poll_timeout`] says when it next
//! has work that no input will cause; the caller calls [`Engine::handle_timeout`] then (or any
//! time: it does only what is due). The engine never reads a clock, so tests drive it on
//! virtual time.

mod continuity;
mod control;
mod fanout;
mod feedback;
pub mod ice;
mod inbound;
mod ingress;
pub mod latch;
pub mod layers;
mod message;
pub mod nack;
mod pace;
mod padding;
mod periodic;
pub mod pool;
mod prime;
pub mod relay;
mod relay_data;
pub mod rr;
pub mod rtt;
mod session;
mod stun;
pub mod svc;
pub mod timer;
pub mod twcc;
pub mod uplink;
pub mod viewer_bwe;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_shared::command::{SessionId, MAX_TRACKS};
use switchyard_shared::journal::Journal;
use switchyard_shared::stats::{Counter, DropReason, SessionSlot, Stats};

pub use self::latch::MAX_TRIALS as MAX_LATCH_TRIALS;
pub use self::message::{
    Inbound, Output, SendError, SenderReport, StreamId, WorkerCommand, WorkerEvent,
};
use self::pool::Pool;
pub use self::session::SessionKey;
use self::session::Slab;
use self::timer::{Timer, TimerTable};
pub use crate::via::Via;
use crate::worker_set::WorkerSet;

pub use switchyard_shared::packet::MAX_DATAGRAM;

/// A keyframe request reaches a publisher at most this often per track, however many
/// subscribers ask: a burst of new viewers costs the publisher one keyframe, not N.
pub const PLI_INTERVAL: Duration = Duration::from_millis(500);

/// Events queued for the slow path beyond which the ones a peer makes (DTLS records,
/// relayed data channel fragments) are dropped, counted, so a flood cannot grow the worker's
/// memory. The queue empties only as fast as the slow path takes events (`worker::
/// hand_over`), so this limits what waits while the slow path is behind. The other events
/// are never dropped and need no limit of their own: an answer per slow-path command (the
/// commands come through a bounded queue), at most one `ConsentExpired` per session, and at
/// most one `Latched` per session (a further move updates the one queued). So the queue
/// holds at most `MAX_PENDING_EVENTS` + 2 × sessions + commands in flight.
const MAX_PENDING_EVENTS: usize = 1024;

/// How often the engine looks for lapsed ICE consent. Consent lasts 30 s
/// ([`ice::CONSENT_TIMEOUT`]), so finding its end up to a second late costs nothing, and one
/// sweep of the ICE sessions a second is cheaper than a deadline per session.
const CONSENT_SWEEP: Duration = Duration::from_secs(1);

/// Per-stream state on one worker.
#[derive(Default)]
struct LocalStream {
    publisher: Option<u32>,
    subscribers: Vec<u32>,
    /// Other workers with subscribers (publisher's worker only).
    remote_workers: WorkerSet,
    /// Worker of the publisher, for feedback from subscribers here.
    publisher_worker: Option<u16>,
    /// Simulcast tracks' layers as seen passing through this worker (untouched for
    /// streams without layers).
    view: [layers::TrackView; MAX_TRACKS],
    /// VP9 tracks' spatial layers as seen passing through this worker (`svc`).
    svc: [svc::SvcView; MAX_TRACKS],
}

/// Engine sizing, from the config.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_sessions: usize,
    /// Packets cached per published track for NACK (power of two).
    pub nack_cache: usize,
    /// Extra pooled buffers per publisher for packets in flight to other workers.
    pub in_flight: usize,
    /// Repair WebRTC publishers' uplinks (`media.uplink_nack`, [`uplink`]).
    pub uplink_nack: bool,
    /// Start new subscribers from the cached group (`media.late_join`, [`prime`]).
    pub late_join: bool,
    /// Pad video packets that do not end a frame to a multiple of this many bytes
    /// (`media.pad_video_to`, [`padding`]); 0: never.
    pub pad_video_to: u16,
    /// Estimate viewers' bandwidth and fit their layers to it (`media.viewer_bwe`,
    /// [`viewer_bwe`]).
    pub viewer_bwe: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 4096,
            nack_cache: 512,
            in_flight: 256,
            uplink_nack: true,
            late_join: true,
            pad_video_to: 0,
            viewer_bwe: true,
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
    /// Relay-in sessions, whose gap trackers `handle_timeout` drains into NACKs upstream.
    relay_ins: Vec<u32>,
    /// Publishers whose uplink is repaired, whose gap trackers `handle_timeout` drains into
    /// NACKs to them.
    uplink_publishers: Vec<u32>,
    /// ICE sessions by their local ufrag, for incoming connectivity checks.
    by_ufrag: HashMap<Box<[u8]>, u32>,
    /// The checks ICE agents sent to verify a new address of their peer, by transaction id:
    /// how an answer (which names no ufrag) finds its session. At most
    /// `ice::MAX_CANDIDATES` per session; entries go when the agent forgets them or the
    /// session goes.
    ice_transactions: HashMap<[u8; 12], u32>,
    /// Publishers that get transport-cc feedback.
    twcc_publishers: Vec<u32>,
    /// Viewers with a bandwidth estimate (`viewer_bwe`).
    bwe_viewers: Vec<u32>,
    /// Late joiners' replays from this worker's publishers' caches, under way (`prime`).
    replays: Vec<prime::Replay>,
    /// When each kind of periodic work is next due (see [`Timer`]).
    timers: TimerTable,
    /// Zero point of the arrival times in transport-cc feedback and receive statistics:
    /// the `now` the engine was created with.
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
    /// An engine for worker `worker`, created at `now`: the zero point of its relative times,
    /// and when its first receiver reports are due.
    pub fn new(worker: u16, limits: Limits, stats: Arc<Stats>, seed: u64, now: Instant) -> Self {
        let mut timers = TimerTable::default();
        timers.set(Timer::ReceiverReports, now);
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
            uplink_publishers: Vec::new(),
            by_ufrag: HashMap::new(),
            ice_transactions: HashMap::new(),
            twcc_publishers: Vec::new(),
            bwe_viewers: Vec::new(),
            replays: Vec::new(),
            timers,
            epoch: now,
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

    /// Session `idx`'s counters in the stats file (`None` beyond its slots).
    #[inline]
    fn slot(&self, idx: u32) -> Option<&SessionSlot> {
        self.stats.session(usize::from(self.worker), idx as usize)
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

    /// Keep every static key's SRTP indices in `journal` (see [`switchyard_shared::journal`]).
    pub fn set_journal(&mut self, journal: Arc<Journal>) {
        self.journal = Some(journal);
    }

    /// Pooled buffers one publisher is owed: its NACK caches full on every track, plus
    /// packets in flight to other workers.
    fn pool_share(&self, simulcast: bool) -> usize {
        let caches = if simulcast {
            layers::MAX_SLOTS
        } else {
            MAX_TRACKS
        };
        self.limits.nack_cache * caches + self.limits.in_flight
    }

    pub fn pool_stats(&self) -> (usize, usize) {
        (self.pool.free(), self.pool.total())
    }
}

/// The reserved SSRC of a relay link's data channel fragments.
const fn relay_data_ssrc() -> u32 {
    crate::datachan::relay::SSRC
}

#[cfg(test)]
mod tests;
