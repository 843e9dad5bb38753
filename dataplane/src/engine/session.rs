//! Sessions on one worker and the slab that holds them.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use switchyard_shared::command::{SessionId, VideoCodec, MAX_TRACKS};
use switchyard_shared::srtp;

use super::layers::{Select, SimMap, MAX_SLOTS};
use super::nack::Cache;
use super::relay::GapTracker;
use super::rr::RecvStats;
use super::StreamId;
use crate::via::Via;

/// A session's slot and generation: stays valid across workers and queues, and stops
/// matching once the slot is reused, so a late retransmission never reaches a new session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKey {
    pub idx: u32,
    pub gen: u32,
}

pub struct Session {
    pub id: SessionId,
    /// `None` until a comedia publisher latches.
    pub remote: Option<SocketAddr>,
    /// The node's address `remote` talks to: everything sent to the session leaves from it
    /// (a socket bound to the wildcard on a host with several addresses would otherwise
    /// answer from the kernel's choice, which the peer discards). Set only by traffic that
    /// proved itself (a valid ICE check from `remote` or one that moved the session, SRTP or
    /// SRTCP that authenticated), so a spoofed datagram to another address cannot move it.
    /// `None` (not learned yet, relay links, plain egress): the kernel chooses.
    pub local: Option<IpAddr>,
    /// Unprotects what the peer sends; `None` until DTLS-SRTP delivers keys.
    pub inbound: Option<srtp::Context>,
    /// Protects what the node sends to the peer; `None` until DTLS-SRTP delivers keys.
    pub outbound: Option<srtp::Context>,
    pub role: Role,
    /// ICE-lite state of a WebRTC session; `None` for plain RTP/SRTP sessions.
    pub ice: Option<super::ice::IceAgent>,
    /// Keys come from DTLS-SRTP: DTLS records from the peer go to the slow path.
    pub dtls: bool,
    /// The worker socket the session lives on: `Relay` for relay links, else `Media`.
    pub via: Via,
    /// Plain RTP egress (`Keying::Plain`): nothing is protected or unprotected; the
    /// contexts stay `None` for good.
    pub plain: bool,
    /// A plain session's RTCP address (`remote` with the port + 1, no rtcp-mux): sender
    /// reports go there, and RTCP is accepted from it as from `remote`.
    pub rtcp: Option<SocketAddr>,
    /// A `WorkerEvent::Latched` for this session waits in the engine's queue; a further
    /// move only changes `remote`, which that event carries when it is taken.
    pub latch_queued: bool,
}

impl Session {
    /// An authenticated datagram from `remote` came to the node's address `dst`.
    pub fn heard_at(&mut self, dst: Option<IpAddr>) {
        if let Some(d) = dst {
            self.local = Some(d);
        }
    }

    /// Where RTCP for the peer goes.
    pub fn rtcp_remote(&self) -> Option<SocketAddr> {
        self.rtcp.or(self.remote)
    }

    /// Whether media can be sent now: the address is known and the keys are there (or
    /// none are needed).
    pub fn can_send(&self) -> bool {
        self.remote.is_some() && (self.outbound.is_some() || self.plain)
    }

    /// A subscriber waiting at `now` for its start from the cached groups (`prime`).
    pub fn priming(&self, now: Instant) -> bool {
        matches!(&self.role, Role::Subscriber(sub) if sub.priming.is_some_and(|until| now < until))
    }
}

/// Protect an outgoing RTP packet of `len` bytes in `buf` with `ctx`; without a context
/// (a plain session, see [`Session::plain`]) it goes as it is.
pub fn seal_rtp(ctx: Option<&mut srtp::Context>, buf: &mut [u8], len: usize) -> Option<usize> {
    match ctx {
        Some(c) => c.protect_rtp(buf, len).ok(),
        None => Some(len),
    }
}

/// [`seal_rtp`] for RTCP.
pub fn seal_rtcp(ctx: Option<&mut srtp::Context>, buf: &mut [u8], len: usize) -> Option<usize> {
    match ctx {
        Some(c) => c.protect_rtcp(buf, len).ok(),
        None => Some(len),
    }
}

pub enum Role {
    Publisher(Publisher),
    Subscriber(Subscriber),
}

pub struct Publisher {
    pub stream: StreamId,
    /// SSRC of each track, declared or learned in arrival order.
    pub tracks: [Option<u32>; MAX_TRACKS],
    /// NACK cache per slot ([`layers::slot`]): one per track, or per layer of a simulcast
    /// publisher's tracks.
    pub caches: Vec<Cache>,
    /// When a keyframe was last asked for, per slot.
    pub last_pli: [Option<Instant>; MAX_SLOTS],
    /// A simulcast publisher's SSRC → (track, layer) map; `None`: [`Publisher::track_for`].
    pub sim: Option<Box<SimMap>>,
    /// Transport-cc arrival recorder, when the publisher negotiated transport-wide-cc.
    pub twcc: Option<Box<super::twcc::Recorder>>,
    /// RTP clock rate of each track (Hz), 0 where unknown (learned SSRCs, REST sessions
    /// without `clockRates`): such a track is reported with jitter 0.
    pub clock_rates: [u32; MAX_TRACKS],
    /// RFC 3550 receive statistics per track, for the receiver reports. Boxed: the session
    /// slab stays compact.
    pub recv: Box<[RecvStats; MAX_TRACKS]>,
    /// A relay-in: the missing sequence numbers of each slot (a track, or a simulcast layer
    /// of one), NACKed upstream over the link. `None` for a publisher that is a peer (its subscribers' NACKs end here).
    pub upstream: Option<Box<[GapTracker; super::layers::MAX_SLOTS]>>,
    /// A relay-in: the missing sequence numbers of the link's data channel fragments.
    pub data_in: Option<Box<GapTracker>>,
    /// A WebRTC publisher whose uplink is repaired: its gaps NACKed, its RTX unwrapped.
    pub uplink: Option<Box<super::uplink::Uplink>>,
    /// Per track: the video codec, whose keyframes start the late joiners' group (`prime`)
    /// and, for VP9 and AV1, whose layers viewers get selectively (`svc`); `None` for every
    /// other track.
    pub video: [Option<VideoCodec>; MAX_TRACKS],
    /// Per slot ([`layers::slot`]: a track, or a simulcast layer): where its latest
    /// keyframe's group starts in `caches` (`prime`).
    /// Boxed: the session slab stays compact.
    pub groups: Box<[super::prime::Group; MAX_SLOTS]>,
    /// Per slot: replays of it under way (`prime::Replay`). While there are, every packet
    /// of the slot is marked `grouped`, so a subscriber being started holds it back for
    /// its replay even once the group has grown past what a new start could use.
    pub replaying: [u16; MAX_SLOTS],
    /// Per track: the temporal layers of its last AV1 frames (`svc::av1`).
    pub av1: [super::svc::Av1Frames; MAX_TRACKS],
    /// Stamped on every packet: changes when the source does (a new publisher of the
    /// stream, a relay-in retargeted to another node), so viewers re-base their numbering.
    pub epoch: u32,
}

impl Publisher {
    pub fn new(
        stream: StreamId,
        tracks: [Option<u32>; MAX_TRACKS],
        nack_cache: usize,
        sim: Option<Box<SimMap>>,
    ) -> Self {
        let slots = if sim.is_some() { MAX_SLOTS } else { MAX_TRACKS };
        Self {
            stream,
            tracks,
            caches: (0..slots).map(|_| Cache::new(nack_cache)).collect(),
            last_pli: [None; MAX_SLOTS],
            sim,
            twcc: None,
            clock_rates: [0; MAX_TRACKS],
            recv: Box::new([RecvStats::default(); MAX_TRACKS]),
            upstream: None,
            data_in: None,
            uplink: None,
            epoch: 0,
            video: [None; MAX_TRACKS],
            groups: Default::default(),
            replaying: [0; MAX_SLOTS],
            av1: Default::default(),
        }
    }

    /// Track index of `ssrc`, learning it if a slot is free. Only authenticated packets get
    /// here, so a stranger cannot fill the slots.
    pub fn track_for(&mut self, ssrc: u32) -> Option<u8> {
        let mut free = None;
        for (i, t) in self.tracks.iter().enumerate() {
            match t {
                Some(s) if *s == ssrc => return Some(i as u8),
                None if free.is_none() => free = Some(i),
                _ => {}
            }
        }
        let i = free?;
        self.tracks[i] = Some(ssrc);
        Some(i as u8)
    }
}

pub struct Subscriber {
    pub stream: StreamId,
    /// SSRC the subscriber sees for each publisher track.
    pub ssrcs: [u32; MAX_TRACKS],
    /// (sequence, timestamp) offsets added per track, so each subscriber's numbering is its
    /// own and stays continuous across retransmissions.
    pub offsets: [(u16, u32); MAX_TRACKS],
    /// Publisher payload type → this subscriber's, for all 128 (identity where unmapped),
    /// so the rewrite is one table lookup. Boxed: the session slab stays compact.
    pub payload_types: Box<[u8; 128]>,
    /// Header extension id table, publisher's → this subscriber's (0: drop); `None` leaves
    /// extensions as they are.
    pub extensions: Option<Box<[u8; 16]>>,
    /// Per track: RTX (RFC 4588) SSRC and payload type, where the subscriber negotiated it.
    pub rtx: [Option<(u32, u8)>; MAX_TRACKS],
    /// Next RTX sequence number per track (random start, like any RTP stream).
    pub rtx_seq: [u16; MAX_TRACKS],
    /// Per track, on a resumed static key: the sequence number the next packet must carry
    /// (one above the last index used); the track's offset is fixed from it when the first
    /// packet passes.
    pub resume_seq: [Option<u16>; MAX_TRACKS],
    /// A relay-out: packets go out exactly as the publisher sent them (no SSRC, sequence,
    /// timestamp, payload type or extension rewrite; offsets are zero) and `ssrcs` holds
    /// the publisher's SSRC of each track, learned as packets pass, so NACK and PLI from
    /// the far node (which name the original SSRCs) map back to tracks.
    pub relay: bool,
    /// A relay-out: its data channel fragments' numbering and repair cache.
    pub data: Option<Box<super::relay::DataOut>>,
    /// A relay-out: the link's round-trip time, from the sender reports it passes on and
    /// the far node's receiver reports.
    pub rtt: Option<Box<super::rtt::LinkRtt>>,
    /// Tracks this subscriber receives: bit `i` = publisher track `i`.
    pub tracks: u8,
    /// Per track: the simulcast layer it gets and the state that keeps its numbering
    /// continuous across switches (unused for tracks without layers). Boxed: the session
    /// slab stays compact.
    pub layers: Box<[Select; MAX_TRACKS]>,
    /// A WebRTC viewer that negotiated transport-cc: its bandwidth estimate, which caps
    /// its simulcast layers (`viewer_bwe`).
    pub bwe: Option<Box<crate::bwe::viewer::ViewerBwe>>,
    /// A relay-out of a simulcast stream: the SSRC of each layer that crossed the link and
    /// its slot, so the far node's NACK and PLI (which name a layer's SSRC) find the layer's
    /// cache and publisher SSRC. Learned as packets pass; `None` for other subscribers.
    pub relay_layers: Option<Box<RelayLayers>>,
    /// Per track: what keeps its numbering continuous when the stream's source changes.
    pub continuity: [super::continuity::Continuity; MAX_TRACKS],
    /// Per track: the VP9 spatial layer it gets and the numbering with the rest taken out
    /// (unused for other tracks). Boxed: the session slab stays compact.
    pub svc: Box<[super::svc::SvcSelect; MAX_TRACKS]>,
    /// Being started from the cached groups on the publisher's worker (`prime`) until this
    /// instant at the latest: live packets wait for the replay, which holds them too.
    pub priming: Option<Instant>,
}

/// Layer SSRCs a relay-out has seen, with their slots (`layers::slot`).
#[derive(Default)]
pub struct RelayLayers {
    seen: [(u32, u8); 2 * super::layers::MAX_SLOTS],
    n: usize,
}

impl RelayLayers {
    /// A packet of slot `slot` went out with `ssrc`.
    pub fn note(&mut self, ssrc: u32, slot: u8) {
        let known = self
            .seen
            .get(..self.n)
            .is_some_and(|s| s.iter().any(|&(x, _)| x == ssrc));
        if known {
            return;
        }
        if let Some(e) = self.seen.get_mut(self.n) {
            *e = (ssrc, slot);
            self.n += 1;
        }
    }

    fn slot(&self, ssrc: u32) -> Option<u8> {
        self.seen
            .get(..self.n)?
            .iter()
            .find(|&&(x, _)| x == ssrc)
            .map(|&(_, s)| s)
    }
}

impl Subscriber {
    /// Whether this subscriber receives publisher track `track`.
    pub fn wants(&self, track: u8) -> bool {
        track < 8 && self.tracks & (1 << track) != 0
    }

    /// Track whose rewritten SSRC is `ssrc` (a relay-out: whose original SSRC).
    pub fn track_of(&self, ssrc: u32) -> Option<u8> {
        if self.relay && ssrc == 0 {
            return None; // 0 marks a track not seen yet
        }
        self.ssrcs.iter().position(|&s| s == ssrc).map(|i| i as u8)
    }

    /// The publisher's slot of what this subscriber gets of `track`: the layer it currently
    /// receives (layer 0 for a track without layers), for its NACKs and keyframe requests.
    pub fn slot_of(&self, track: u8) -> u8 {
        let layer = self
            .layers
            .get(usize::from(track))
            .and_then(|l| l.current)
            .unwrap_or(0);
        super::layers::slot(track, layer)
    }

    /// The track and the publisher's slot a NACK or PLI naming `ssrc` is about: a layer of a
    /// simulcast stream over a relay link, or a track by its SSRC and the layer this
    /// subscriber receives.
    pub fn feedback_slot(&self, ssrc: u32) -> Option<(u8, u8)> {
        if let Some(slot) = self.relay_layers.as_deref().and_then(|l| l.slot(ssrc)) {
            return Some((slot % MAX_TRACKS as u8, slot));
        }
        let track = self.track_of(ssrc).filter(|&t| self.wants(t))?;
        Some((track, self.slot_of(track)))
    }

    /// Undo the sequence rewrite: the publisher's number for this subscriber's `seq`.
    /// `None`: a number the viewer was never sent, or too old to find (a VP9 track whose
    /// dropped layers moved its numbering, `svc`).
    pub fn original_seq(&self, track: u8, seq: u16) -> Option<u16> {
        let off = self.offsets.get(usize::from(track)).map_or(0, |o| o.0);
        match self.svc.get(usize::from(track)) {
            Some(s) if s.in_use() => s.original(seq, off),
            // A simulcast layer whose numbering closed up over dropped temporal layers.
            _ => match self.layers.get(usize::from(track)) {
                Some(l) if l.current.is_some() => l.original(seq, off),
                _ => Some(seq.wrapping_sub(off)),
            },
        }
    }
}

/// Dense storage: a session index is a plain array index on the hot path.
pub struct Slab {
    slots: Vec<(u32, Option<Session>)>,
    free: Vec<u32>,
}

impl Slab {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            slots: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
        }
    }

    pub fn insert(&mut self, s: Session) -> u32 {
        if let Some(i) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(i as usize) {
                slot.0 = slot.0.wrapping_add(1);
                slot.1 = Some(s);
                return i;
            }
        }
        self.slots.push((0, Some(s)));
        (self.slots.len() - 1) as u32
    }

    pub fn remove(&mut self, i: u32) -> Option<Session> {
        let s = self.slots.get_mut(i as usize)?.1.take()?;
        self.free.push(i);
        Some(s)
    }

    pub fn get(&self, i: u32) -> Option<&Session> {
        self.slots.get(i as usize)?.1.as_ref()
    }

    pub fn get_mut(&mut self, i: u32) -> Option<&mut Session> {
        self.slots.get_mut(i as usize)?.1.as_mut()
    }

    pub fn generation(&self, i: u32) -> u32 {
        self.slots.get(i as usize).map_or(0, |s| s.0)
    }

    /// The session `key` names, if its slot was not reused since.
    pub fn get_key(&self, key: SessionKey) -> Option<&Session> {
        self.get(key.idx)
            .filter(|_| self.generation(key.idx) == key.gen)
    }

    /// [`Slab::get_key`], to change.
    pub fn get_key_mut(&mut self, key: SessionKey) -> Option<&mut Session> {
        let slot = self.slots.get_mut(key.idx as usize)?;
        if slot.0 != key.gen {
            return None;
        }
        slot.1.as_mut()
    }
}
