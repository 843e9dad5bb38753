//! Late joiners (moq-relay's caching, SRS's GOP cache): a new subscriber starts from the
//! publisher's latest group, the packets of each video track since its last keyframe, at
//! once, instead of from the keyframe it would otherwise ask for: a round trip to the
//! publisher and its encoder's next keyframe, or, with a publisher that ignores keyframe
//! requests (OBS), its next periodic one, seconds away.
//!
//! The group lives in what the publisher's worker keeps anyway: its retransmission cache
//! (`nack::Cache`, `media.nack_cache` packets per track, 512 by default), which holds the
//! group whole while the group is shorter than the cache (a 2 s group of 2 Mbit/s video is
//! about 430 packets). [`Group`] only remembers where the latest keyframe began. Nothing
//! is allocated or copied: the replay hands out the cached packets' refcounted handles.
//!
//! When a subscriber can first receive (ICE and DTLS done, or keys given), the subscriber
//! gets, for each video track with a whole group, every cached packet from the keyframe on
//! up to the live edge, paced ([`Replay`]), through the same per-subscriber path as live
//! packets (`fanout::deliver`: its numbering starts at the keyframe, its SVC layers are
//! chosen from it), and tracks without one get a keyframe request as before. A subscriber on another worker asks the
//! publisher's worker (`Inbound::Prime`), which sends the packets back (`Inbound::Replay`)
//! and then `Inbound::PrimeDone`; meanwhile the subscriber's worker holds back from it the
//! live packets of tracks that had a group when they came (`Packet::grouped`: they are in
//! the replay, which the publisher's worker sends after them on the same queue), for
//! [`PRIME_WAIT`] after the last replayed packet at most; packets of other tracks go to
//! it live, as nothing replays them.
//!
//! Simulcast: each layer keeps its own group (per slot, `layers::slot`). A viewer is
//! replayed the group of the layer it would start on (its cap and estimate, `Choice`, told
//! the publisher's worker in `Inbound::Prime`), and its [`Select`](super::layers::Select)
//! takes the replayed keyframe as its first switch; a relay-out gets every layer's group,
//! so the far node's relay-in keeps one per layer for its own late joiners.

use std::time::{Duration, Instant};

use switchyard_shared::command::{NoGroup, VideoCodec, MAX_LAYERS, MAX_TRACKS};
use switchyard_shared::stats::{Counter, DropReason};

use super::fanout::deliver;
use super::layers::{self, MAX_SLOTS};
use super::pace::Pacer;
use super::pool::Handle;
use super::session::{self, SessionKey};
use super::svc::SvcTag;
use super::timer::Timer;
use super::{Engine, Inbound, Output, StreamId};

/// The longest a subscriber's live packets wait for the replay from the publisher's worker:
/// a queue that dropped a message must not hold it back for good.
pub const PRIME_WAIT: Duration = Duration::from_millis(250);

/// A group whose newest packet is older than this is not replayed: its source went quiet
/// (a relay whose source died, a paused publisher), and a new viewer would be shown the
/// past, or, after a failover, viewers would see the seconds before it again.
pub const STALE: Duration = Duration::from_millis(500);

/// Replays under way on one worker at most. Each sends up to [`CATCH_UP`] times its
/// stream's rate for a while: 64 of a 2.5 Mbit/s stream are 640 Mbit/s for a third of a
/// group. A crowd joining at once (a webinar's start) beyond that starts as without the
/// cache, from one keyframe asked for all of them, which costs the link 1 × the rate.
pub const MAX_REPLAYS: usize = 64;

/// A replay goes this many times as fast as its group came: a viewer reaches the live edge
/// after a third of the group's length (0.7 s for a 2 s group), and its path gets four times
/// the stream's rate for that long instead of the whole group in one burst.
pub const CATCH_UP: u64 = 4;

/// The group's rate is taken over this long at least: a group of one keyframe (which came
/// in one burst) is not replayed as one.
pub const MIN_SPAN: Duration = Duration::from_millis(500);

/// Bounds on a replay's rate, in bytes per second: 1 and 50 Mbit/s.
pub const MIN_RATE: u64 = 125_000;
pub const MAX_RATE: u64 = 6_250_000;

/// Where a replay goes: a subscriber on this worker, or one on another worker (through
/// `Inbound::Replay`).
#[derive(Clone, Copy, Debug)]
pub(super) enum Target {
    Here(SessionKey),
    Worker(u16, SessionKey),
}

/// One subscriber's start from the cached groups, on the publisher's worker: per replayed
/// track the next sequence number to send, up to the track's newest packet (the replay
/// follows the live edge until it reaches it; the subscriber holds back the live packets
/// of those tracks meanwhile), paced at [`CATCH_UP`] times the group's rate.
pub(super) struct Replay {
    to: Target,
    publisher: SessionKey,
    stream: StreamId,
    /// Per slot (`layers::slot`).
    next: [Option<u16>; MAX_SLOTS],
    /// The track to look at first next time (round robin).
    turn: u8,
    pacer: Pacer,
}

/// What a joining subscriber takes of simulcast tracks, told the publisher's worker so it
/// replays the group of the layer the subscriber will start on (`Inbound::Prime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// A relay-out: every layer.
    pub relay: bool,
    /// The subscriber's layer cap (`Select::cap`).
    pub cap: u8,
    /// Its bandwidth estimate's budget for video, when it has one.
    pub budget: Option<u64>,
}

impl Default for Choice {
    fn default() -> Self {
        Choice {
            relay: false,
            cap: u8::MAX,
            budget: None,
        }
    }
}

/// What one turn of a replay came to.
enum Step {
    /// Its pacer has room again at this instant.
    Wait(Instant),
    /// Every track reached its live edge (or the subscriber or the publisher left).
    Done,
    /// It cannot go on.
    Abort,
}

/// Where one track's latest group starts, by publisher sequence number and RTP timestamp,
/// and the newest sequence number seen since.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Group {
    start: Option<(u16, u32)>,
    newest: Option<u16>,
    /// When the last packet of the track came.
    last: Option<Instant>,
}

/// `a` comes after `b` (RFC 1982 on 16 bits).
fn after(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

impl Group {
    /// Packet `seq` (timestamp `ts`) of the track arrived at `at`; `key`: it starts a
    /// keyframe. A second keyframe start with the same timestamp (another slice of one IDR
    /// picture) is the same group.
    pub fn on_packet(&mut self, (seq, ts): (u16, u32), key: bool, at: Instant) {
        self.last = Some(at);
        if key && self.start.is_none_or(|(_, t)| t != ts) {
            self.start = Some((seq, ts));
        }
        if self.newest.is_none_or(|n| after(seq, n)) {
            self.newest = Some(seq);
        }
    }

    /// The newest sequence number of the track.
    pub fn newest(&self) -> Option<u16> {
        self.newest
    }

    /// The group as (first sequence number, packets), while a cache of `len` packets still
    /// holds all of it and its track has sent something within [`STALE`] of `now`.
    pub fn span(&self, len: usize, now: Instant) -> Option<(u16, u16)> {
        if self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) > STALE)
        {
            return None;
        }
        let ((start, _), newest) = (self.start?, self.newest?);
        let n = newest.wrapping_sub(start);
        if n as i16 <= -1 || usize::from(n) >= len {
            return None;
        }
        Some((start, n + 1))
    }
}

/// Whether the packet whose payload is `payload` starts a keyframe of `codec`; `svc`: its
/// SVC tag (VP9, AV1), read at ingress already.
pub fn starts_keyframe(codec: VideoCodec, payload: &[u8], svc: Option<&SvcTag>) -> bool {
    match codec {
        VideoCodec::Vp8(_) => layers::vp8_keyframe(payload),
        VideoCodec::H264(_) => layers::h264_keyframe(payload),
        VideoCodec::Vp9(_) | VideoCodec::Av1(_) => {
            svc.is_some_and(|t| t.begin && !t.inter && t.sid == 0)
        }
    }
}

impl Engine {
    /// Subscriber `key` of `stream` can receive now: start it from the cached groups (here,
    /// or through the publisher's worker), and ask for keyframes of the tracks without one.
    pub(super) fn subscriber_ready(
        &mut self,
        stream: StreamId,
        key: SessionKey,
        now: Instant,
        out: &mut dyn Output,
    ) {
        let Some(st) = self.streams.get(&stream) else {
            return;
        };
        if !self.limits.late_join {
            return self.keyframes_but(stream, 0, now, out);
        }
        let choice = self.choice(key);
        match (st.publisher, st.publisher_worker) {
            (Some(publisher), _) => {
                let primed = self.start_replay(publisher, Target::Here(key), choice, now, out);
                self.keyframes_but(stream, primed, now, out);
            }
            (None, Some(w)) if w != self.worker => {
                let msg = Inbound::Prime {
                    from: self.worker,
                    session: key,
                    stream,
                    choice,
                };
                if out.to_worker(w, msg).is_ok() {
                    if let Some(session::Role::Subscriber(sub)) =
                        self.sessions.get_key_mut(key).map(|s| &mut s.role)
                    {
                        sub.priming = Some(now + PRIME_WAIT);
                    }
                } else {
                    self.keyframes_but(stream, 0, now, out);
                }
            }
            _ => self.keyframes_but(stream, 0, now, out),
        }
    }

    /// [`Engine::subscriber_ready`] for session `id`.
    pub(super) fn subscriber_ready_id(
        &mut self,
        stream: StreamId,
        id: switchyard_shared::command::SessionId,
        now: Instant,
        out: &mut dyn Output,
    ) {
        if let Some(&idx) = self.by_id.get(&id) {
            let key = SessionKey {
                idx,
                gen: self.sessions.generation(idx),
            };
            self.subscriber_ready(stream, key, now, out);
        }
    }

    /// A keyframe request for every track of `stream` but those in mask `primed`.
    fn keyframes_but(&mut self, stream: StreamId, primed: u8, now: Instant, out: &mut dyn Output) {
        for t in (0..MAX_TRACKS as u8).filter(|t| primed & (1 << t) == 0) {
            self.request_keyframe(stream, t, now, out);
        }
    }

    /// What subscriber `key` (here) takes of layered tracks: a relay-out every layer, a
    /// viewer the layer its cap and estimate pick.
    fn choice(&self, key: SessionKey) -> Choice {
        match self.sessions.get_key(key).map(|s| &s.role) {
            Some(session::Role::Subscriber(sub)) => Choice {
                relay: sub.relay,
                cap: sub.layers.first().map_or(u8::MAX, |l| l.cap),
                budget: sub.budget(),
            },
            _ => Choice::default(),
        }
    }

    /// The cached groups of publisher `publisher` (here) a subscriber that takes `choice`
    /// starts from, their packets in order: per slot (a track, or a simulcast layer:
    /// `layers::slot`) its first sequence number and packet count. A simulcast track gives
    /// a viewer the group of the layer it would pick now (by this worker's view of the
    /// layers), a relay-out every layer's.
    fn groups(
        &self,
        publisher: u32,
        choice: Choice,
        now: Instant,
    ) -> [Option<(u16, u16)>; MAX_SLOTS] {
        let mut g = [None; MAX_SLOTS];
        let Some(session::Role::Publisher(p)) = self.sessions.get(publisher).map(|s| &s.role)
        else {
            return g;
        };
        let span = |slot: usize| {
            let len = p.caches.get(slot).map_or(0, |c| c.capacity());
            p.groups.get(slot).and_then(|g| g.span(len, now))
        };
        for t in 0..MAX_TRACKS {
            let layered = p.sim.as_deref().is_some_and(|m| m.layered(t as u8));
            if !layered {
                if p.video.get(t).copied().flatten().is_some() {
                    g[t] = span(t);
                }
                continue;
            }
            if choice.relay {
                for l in 0..MAX_LAYERS as u8 {
                    let slot = usize::from(layers::slot(t as u8, l));
                    g[slot] = span(slot);
                }
                continue;
            }
            let Some(view) = self.streams.get(&p.stream).and_then(|st| st.view.get(t)) else {
                continue;
            };
            let ranking = view.ranking(now);
            let layer = match choice.budget {
                Some(b) => ranking.fit(choice.cap, b, None),
                None => ranking.pick(choice.cap),
            };
            if let Some(l) = layer {
                let slot = usize::from(layers::slot(t as u8, l));
                g[slot] = span(slot);
            }
        }
        g
    }

    /// Start replaying the cached groups of `publisher` (here) to `to`, paced (see
    /// [`Replay`]). The tracks it replays, as a mask (0: nothing to replay, nothing started).
    fn start_replay(
        &mut self,
        publisher: u32,
        to: Target,
        choice: Choice,
        now: Instant,
        out: &mut dyn Output,
    ) -> u8 {
        let stream = match self.sessions.get(publisher).map(|s| &s.role) {
            Some(session::Role::Publisher(p)) => p.stream,
            _ => return 0,
        };
        if self.replays.len() >= MAX_REPLAYS {
            // A crowd joining at once: the ones beyond start from a keyframe, one for all.
            self.count(Counter::LateJoinBusy, 1);
            return 0;
        }
        let mut next = [None; MAX_SLOTS];
        let (mut bytes, mut span) = (0u64, Duration::ZERO);
        let mut primed = 0u8;
        for (slot, group) in self.groups(publisher, choice, now).into_iter().enumerate() {
            let Some((start, n)) = group else {
                continue;
            };
            let (b, d) = self.group_size(publisher, slot as u8, (start, n));
            bytes += b;
            span = span.max(d);
            next[slot] = Some(start);
            primed |= 1 << (slot % MAX_TRACKS);
        }
        if primed == 0 {
            return 0;
        }
        let rate = (CATCH_UP * bytes * 1_000_000 / span.max(MIN_SPAN).as_micros() as u64)
            .clamp(MIN_RATE, MAX_RATE);
        if let Target::Here(key) = to {
            self.hold(key, now);
        }
        let publisher = SessionKey {
            idx: publisher,
            gen: self.sessions.generation(publisher),
        };
        let started = next.iter().filter(|n| n.is_some()).count();
        self.count(Counter::LateJoinStarts, started as u64);
        self.note_replaying(publisher, &next, true);
        self.replays.push(Replay {
            to,
            publisher,
            stream,
            next,
            turn: 0,
            pacer: Pacer::new(rate, now),
        });
        self.drive_replays(now, out);
        primed
    }

    /// A replay of the slots in `next` of `publisher` started (`on`) or ended.
    fn note_replaying(&mut self, publisher: SessionKey, next: &[Option<u16>; MAX_SLOTS], on: bool) {
        if let Some(session::Role::Publisher(p)) =
            self.sessions.get_key_mut(publisher).map(|s| &mut s.role)
        {
            for (n, slot) in p.replaying.iter_mut().zip(next) {
                if slot.is_some() {
                    *n = if on {
                        n.saturating_add(1)
                    } else {
                        n.saturating_sub(1)
                    };
                }
            }
        }
    }

    /// A cached group's bytes, and how long it took to come (by its RTP timestamps).
    fn group_size(&self, publisher: u32, t: u8, (start, n): (u16, u16)) -> (u64, Duration) {
        let Some(session::Role::Publisher(p)) = self.sessions.get(publisher).map(|s| &s.role)
        else {
            return (0, Duration::ZERO);
        };
        let Some(cache) = p.caches.get(usize::from(t)) else {
            return (0, Duration::ZERO);
        };
        let mut bytes = 0u64;
        let mut ts: Option<(u32, u32)> = None;
        for h in (0..n).filter_map(|k| cache.get(start.wrapping_add(k))) {
            bytes += h.bytes().len() as u64;
            if let Some(&[a, b, c, d]) = h.bytes().get(4..8) {
                let stamp = u32::from_be_bytes([a, b, c, d]);
                ts = Some(ts.map_or((stamp, stamp), |(first, _)| (first, stamp)));
            }
        }
        let ticks = ts.map_or(0, |(a, b)| b.wrapping_sub(a));
        // Video is on the 90 kHz clock; a group that would be longer than a minute is a
        // timestamp jump, not a group.
        let d = Duration::from_micros(u64::from(ticks.min(90_000 * 60)) * 1_000 / 90);
        (bytes, d)
    }

    /// Subscriber `key` here waits for its replay: live packets of its replayed tracks are
    /// held back for [`PRIME_WAIT`] more (each replayed packet renews it).
    fn hold(&mut self, key: SessionKey, now: Instant) {
        if let Some(session::Role::Subscriber(sub)) =
            self.sessions.get_key_mut(key).map(|s| &mut s.role)
        {
            sub.priming = Some(now + PRIME_WAIT);
        }
    }

    /// Send what the replays' pacers allow at `now`; finished ones end, and the replay
    /// timer is set for the next that will have room.
    pub(super) fn drive_replays(&mut self, now: Instant, out: &mut dyn Output) {
        let mut next_due: Option<Instant> = None;
        let mut i = 0;
        while i < self.replays.len() {
            match self.step_replay(i, now, out) {
                Step::Wait(at) => {
                    next_due = Some(next_due.map_or(at, |t| t.min(at)));
                    i += 1;
                }
                Step::Done => {
                    let r = self.replays.swap_remove(i);
                    self.end_replay(&r, false, now, out);
                }
                Step::Abort => {
                    let r = self.replays.swap_remove(i);
                    self.end_replay(&r, true, now, out);
                }
            }
        }
        match next_due {
            Some(t) => self.timers.set(Timer::Replay, t),
            None => self.timers.stop(Timer::Replay),
        }
    }

    /// Replay `i` as far as its pacer lets it at `now`.
    fn step_replay(&mut self, i: usize, now: Instant, out: &mut dyn Output) -> Step {
        loop {
            let Some(r) = self.replays.get(i) else {
                return Step::Done;
            };
            let (to, publisher, turn) = (r.to, r.publisher, r.turn);
            let Some(session::Role::Publisher(p)) =
                self.sessions.get_key(publisher).map(|s| &s.role)
            else {
                // The publisher left: nothing to ask a keyframe of.
                return Step::Done;
            };
            // The next track behind its newest packet, round robin: every replayed track
            // follows its live edge until all have caught up, as the subscriber holds
            // back the live packets of all of them meanwhile.
            let mut pick = None;
            for k in 0..MAX_SLOTS {
                let t = (usize::from(turn) + k) % MAX_SLOTS;
                let (Some(seq), Some(newest)) = (r.next[t], p.groups[t].newest()) else {
                    continue;
                };
                if after(seq, newest) {
                    continue;
                }
                let len = p.caches.get(t).map_or(0, |c| c.capacity());
                if usize::from(newest.wrapping_sub(seq)) >= len {
                    // The live edge ran further ahead than the cache holds: what the
                    // replay has not sent yet is gone.
                    return Step::Abort;
                }
                pick = Some((t, seq));
                break;
            }
            let Some((t, seq)) = pick else {
                return Step::Done;
            };
            let advance = |e: &mut Engine| {
                if let Some(r) = e.replays.get_mut(i) {
                    r.next[t] = Some(seq.wrapping_add(1));
                    r.turn = (t as u8 + 1) % MAX_SLOTS as u8;
                }
            };
            let Some(h) = self.cached(publisher.idx, t as u8, seq) else {
                // Never came (lost upstream and not repaired yet): the live path lost it
                // too, and the subscriber's NACK can still ask for it.
                advance(self);
                continue;
            };
            let n = h.bytes().len();
            let Some(r) = self.replays.get_mut(i) else {
                self.pool.put(h);
                return Step::Done;
            };
            if !r.pacer.take(n, now) {
                let at = r.pacer.ready_at(n, now);
                self.pool.put(h);
                return Step::Wait(at);
            }
            advance(self);
            match to {
                Target::Here(key) => {
                    if self.sessions.get_key_mut(key).is_none() {
                        // The subscriber left: nobody waits for the rest.
                        self.pool.put(h);
                        return Step::Done;
                    }
                    self.hold(key, now);
                    self.replay_to(key, &h, now, out);
                    self.pool.put(h);
                }
                Target::Worker(w, session) => {
                    if let Err(back) = out.to_worker(w, Inbound::Replay { session, packet: h }) {
                        if let Inbound::Replay { packet, .. } = back {
                            self.pool.put(packet);
                        }
                        self.drop_packet(DropReason::QueueFull);
                        return Step::Abort;
                    }
                }
            }
        }
    }

    /// Replay `r` is over: its subscriber's live packets flow again. `aborted`: it could
    /// not finish (the cache ran out, a queue was full), so the subscriber's tracks get a
    /// keyframe request, as without a group.
    fn end_replay(&mut self, r: &Replay, aborted: bool, now: Instant, out: &mut dyn Output) {
        self.note_replaying(r.publisher, &r.next, false);
        match r.to {
            Target::Here(key) => self.prime_done(key),
            Target::Worker(w, session) => {
                // Lost, the subscriber's worker lets the live packets through after
                // PRIME_WAIT.
                let _ = out.to_worker(w, Inbound::PrimeDone { session });
            }
        }
        if aborted {
            self.count(Counter::LateJoinAborted, 1);
            for slot in (0..MAX_SLOTS).filter(|&t| r.next[t].is_some()) {
                self.request_keyframe(r.stream, slot as u8, now, out);
            }
        }
    }

    /// At the publisher's worker: subscriber `session` on worker `from` asks for the
    /// cached groups of `stream`. Sent back one packet a message, paced, then `PrimeDone`;
    /// tracks without a group get a keyframe request.
    pub(super) fn prime_remote(
        &mut self,
        (from, session): (u16, SessionKey),
        (stream, choice): (StreamId, Choice),
        now: Instant,
        out: &mut dyn Output,
    ) {
        let primed = match self.streams.get(&stream).and_then(|s| s.publisher) {
            Some(publisher) => {
                self.start_replay(publisher, Target::Worker(from, session), choice, now, out)
            }
            None => 0,
        };
        if primed == 0 {
            // Nothing to replay (the publisher left, has not come, or has no group): the
            // subscriber's live packets flow at once.
            let _ = out.to_worker(from, Inbound::PrimeDone { session });
        }
        self.keyframes_but(stream, primed, now, out);
    }

    /// A copy of the cached group of track `track` of publisher (or relay-in) `id`, for
    /// `Command::FetchGroup`: control-time work (one allocation per packet), never on the
    /// media path.
    pub(super) fn copy_group(
        &self,
        id: switchyard_shared::command::SessionId,
        track: u8,
        now: Instant,
    ) -> Result<(VideoCodec, Vec<Vec<u8>>), NoGroup> {
        let idx = *self.by_id.get(&id).ok_or(NoGroup::UnknownSession)?;
        let Some(session::Role::Publisher(p)) = self.sessions.get(idx).map(|s| &s.role) else {
            return Err(NoGroup::UnknownSession);
        };
        let t = usize::from(track);
        let codec = p.video.get(t).copied().flatten().ok_or(NoGroup::NotVideo)?;
        // A simulcast track: its best layer now.
        let slot = if p.sim.as_deref().is_some_and(|m| m.layered(track)) {
            let top = self
                .streams
                .get(&p.stream)
                .and_then(|st| st.view.get(t))
                .and_then(|v| v.pick(now, u8::MAX))
                .ok_or(NoGroup::NotCached)?;
            usize::from(layers::slot(track, top))
        } else {
            t
        };
        let cache = p.caches.get(slot).ok_or(NoGroup::NotVideo)?;
        let (start, n) = p
            .groups
            .get(slot)
            .and_then(|g| g.span(cache.capacity(), now))
            .ok_or(NoGroup::NotCached)?;
        let packets = (0..n)
            .filter_map(|k| cache.get(start.wrapping_add(k)))
            .map(|h| h.bytes().to_vec())
            .collect();
        Ok((codec, packets))
    }

    /// At the subscriber's worker: a packet of the replay for subscriber `to`.
    pub(super) fn replayed(
        &mut self,
        to: SessionKey,
        h: &Handle,
        now: Instant,
        out: &mut dyn Output,
    ) {
        // One that comes after the subscriber stopped waiting (PRIME_WAIT ran out) would
        // go back in time: the live packets went on meanwhile.
        if self
            .sessions
            .get_key_mut(to)
            .is_some_and(|s| s.priming(now))
        {
            self.hold(to, now);
            self.replay_to(to, h, now, out);
        }
    }

    /// At the subscriber's worker: the replay for `to` is over.
    pub(super) fn prime_done(&mut self, to: SessionKey) {
        if let Some(session::Role::Subscriber(sub)) =
            self.sessions.get_key_mut(to).map(|s| &mut s.role)
        {
            sub.priming = None;
        }
    }

    /// One cached packet to subscriber `to` here, as fan-out would send it (without
    /// counting it in this worker's view of the track's layer rates). Whether it went.
    fn replay_to(
        &mut self,
        to: SessionKey,
        h: &Handle,
        now: Instant,
        out: &mut dyn Output,
    ) -> bool {
        let t = usize::from(h.track);
        let st = self.streams.get(&h.stream);
        let svc = match (h.svc, st.and_then(|st| st.svc.get(t))) {
            (Some(tag), Some(v)) => Some((tag, v.layers(now))),
            _ => None,
        };
        let view = match (h.layer, st.and_then(|st| st.view.get(t))) {
            (Some(tag), Some(v)) => Some((tag, v.ranking(now))),
            _ => None,
        };
        let pad = if h.video { self.limits.pad_video_to } else { 0 };
        let Some(s) = self.sessions.get_key_mut(to) else {
            return false;
        };
        if !s.can_send() {
            return false;
        }
        if let (Some(tag), session::Role::Subscriber(sub)) = (h.layer, &mut s.role) {
            // The replayed layer is where a viewer starts, whatever its own view of the
            // layers would pick this instant (the publisher's worker chose it).
            if let Some(sel) = sub.layers.get_mut(t).filter(|_| tag.keyframe) {
                sel.start_at(tag.layer);
            }
        }
        let d = deliver(s, h, (view.as_ref(), svc.as_ref()), (now, pad), out);
        if d.svc_ask {
            // An SVC viewer on a worker that has not seen the track's layers yet chose
            // none: it waits for a keyframe, as without a group.
            self.request_keyframe(h.stream, h.track, now, out);
        }
        match d.sent {
            Some(Ok(n)) => {
                if let Some(slot) = self.slot(to.idx) {
                    slot.sent(n);
                }
                self.count(Counter::LateJoinPackets, 1);
                self.count(Counter::Forwarded, 1);
                self.count(Counter::TxPackets, 1);
                self.count(Counter::TxBytes, n as u64);
                if d.relayed {
                    self.count(Counter::RelayTxPackets, 1);
                }
                true
            }
            Some(Err(_)) => {
                self.count(DropReason::QueueFull.counter(), 1);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_runs_from_the_latest_keyframe_to_the_newest_packet() {
        let t0 = Instant::now();
        let mut g = Group::default();
        let on = |g: &mut Group, seq: u16, ts: u32, key: bool| g.on_packet((seq, ts), key, t0);
        assert_eq!(g.span(512, t0), None, "no keyframe yet");
        on(&mut g, 65_530, 100, false);
        assert_eq!(g.span(512, t0), None);
        on(&mut g, 65_531, 200, true);
        for seq in 65_532..=65_535 {
            on(&mut g, seq, 200, false);
        }
        // Another slice of the same picture is the same group.
        on(&mut g, 0, 200, true);
        on(&mut g, 1, 300, false);
        assert_eq!(g.span(512, t0), Some((65_531, 7)));
        // A late packet from before changes nothing.
        on(&mut g, 65_529, 100, false);
        assert_eq!(g.span(512, t0), Some((65_531, 7)));
        // The next keyframe starts a new group.
        on(&mut g, 2, 400, true);
        assert_eq!(g.span(512, t0), Some((2, 1)));
        // Longer than the cache: gone until the next keyframe.
        for seq in 3..600u16 {
            on(&mut g, seq, 500, false);
        }
        assert_eq!(g.span(512, t0), None);
        assert_eq!(g.span(1024, t0), Some((2, 598)));
        on(&mut g, 600, 600, true);
        assert_eq!(g.span(512, t0), Some((600, 1)));
        // A track that went quiet (its source died) has nothing worth replaying.
        assert_eq!(g.span(512, t0 + STALE), Some((600, 1)));
        assert_eq!(g.span(512, t0 + STALE + Duration::from_millis(1)), None);
    }
}
