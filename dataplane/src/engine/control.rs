//! Session control: the slow path's commands applied to the engine's tables (sessions
//! added, keyed, removed; which workers share a stream). Control time, never per packet:
//! everything a session needs is allocated here so the packet path allocates nothing.

use std::net::SocketAddr;
use std::time::Instant;

use ring::rand::SystemRandom;
use switchyard_shared::command::{
    CommandError, IceCredentials, SessionId, SrtpKeys, VideoCodec, ALL_TRACKS, MAX_TRACKS,
};
use switchyard_shared::journal;
use switchyard_shared::srtp;
use switchyard_shared::stats::{Counter, DropReason};

use super::layers::SimMap;
use super::session::{self, Publisher, Session, Subscriber};
use super::timer::Timer;
use super::uplink::Uplink;
use super::{ice, relay, twcc, Engine, Output, StreamId, WorkerCommand, WorkerEvent};
use crate::via::Via;

impl Engine {
    /// Apply a slow-path command at `now`; the answer comes out of [`Engine::poll_event`].
    pub fn handle_command(&mut self, cmd: WorkerCommand, now: Instant, out: &mut dyn Output) {
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
                simulcast,
                uplink,
            } => {
                let repair = self
                    .limits
                    .uplink_nack
                    .then(|| Uplink::new(&uplink, simulcast.is_some()))
                    .flatten();
                let sim = simulcast.map(|s| Box::new(SimMap::new(&s)));
                let r = self.add_publisher(
                    id,
                    stream,
                    (remote, Via::Media),
                    (ssrcs, clock_rates, sim),
                    srtp.as_ref(),
                    (ice.as_ref(), now),
                );
                if r.is_ok() {
                    self.enable_twcc(id, twcc_ext, now);
                    self.enable_uplink(id, repair);
                    let mut video = [None; MAX_TRACKS];
                    for (slot, t) in video.iter_mut().zip(&uplink) {
                        *slot = t.video;
                    }
                    self.set_video(id, video);
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
                    (ice.as_ref(), now),
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
                    self.subscriber_ready_id(stream, id, now, out);
                }
                self.answer(id, r);
            }
            WorkerCommand::AddRelayIn {
                id,
                stream,
                remote,
                ssrcs,
                srtp,
                simulcast,
            } => {
                let sim = simulcast.map(|s| Box::new(SimMap::new(&s)));
                let r = self.add_relay_in(id, stream, (remote, ssrcs, sim), &srtp, now);
                self.answer(id, r);
            }
            WorkerCommand::SetVideo { id, codecs } => self.set_video(id, codecs),
            WorkerCommand::RetargetRelayIn {
                id,
                ssrcs,
                srtp,
                simulcast,
            } => {
                let sim = simulcast.map(|s| Box::new(SimMap::new(&s)));
                if let Err(e) = self.retarget_relay_in(id, (ssrcs, sim), &srtp) {
                    tracing::warn!(id = id.0, error = %e, "relay-in not retargeted");
                }
            }
            WorkerCommand::AddRelayOut {
                id,
                stream,
                remote,
                srtp,
            } => {
                let r = self.add_relay_out(id, stream, remote, &srtp, now);
                if r.is_ok() {
                    self.subscriber_ready_id(stream, id, now, out);
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
                            self.subscriber_ready_id(stream, id, now, out);
                        }
                    }
                    Err(_) => tracing::error!(id = id.0, "negotiated SRTP keys rejected"),
                }
            }
            WorkerCommand::SendRaw { id, data } => {
                let Some((via, dst, from)) = self
                    .by_id
                    .get(&id)
                    .and_then(|&i| self.sessions.get(i))
                    .and_then(|s| Some((s.via, s.remote?, s.local)))
                else {
                    return;
                };
                let sent = out.send_from(via, dst, from, &mut |buf| {
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
            WorkerCommand::EnableBwe { id, twcc_ext } => self.enable_bwe(id, twcc_ext, now),
            WorkerCommand::FetchGroup { request, id, track } => {
                let result = self.copy_group(id, track, now);
                self.events
                    .push_back(WorkerEvent::Group { request, result });
            }
            WorkerCommand::SetMaxLayer { id, max_layer } => {
                self.each_select(id, |l| l.cap = max_layer);
            }
            WorkerCommand::SetMaxTemporal { id, max_temporal } => {
                self.each_select(id, |l| l.tcap = max_temporal);
            }
            WorkerCommand::Remove { id } => match self.remove(id, out) {
                Ok(()) => self.events.push_back(WorkerEvent::Removed { id }),
                Err(error) => self.events.push_back(WorkerEvent::Failed { id, error }),
            },
            WorkerCommand::SetRemoteWorkers { stream, workers } => {
                let mut others = workers;
                others.remove(self.worker);
                self.streams.entry(stream).or_default().remote_workers = others;
                self.gc_stream(stream);
            }
            WorkerCommand::SetPublisherWorker { stream, worker } => {
                self.streams.entry(stream).or_default().publisher_worker = worker;
                self.gc_stream(stream);
            }
        }
        self.count_sessions();
    }

    /// Apply `f` to every track's layer choice of subscriber `id` (none if it is gone or
    /// not a subscriber: such commands are not answered).
    fn each_select(&mut self, id: SessionId, f: impl Fn(&mut super::layers::Select)) {
        if let Some(session::Role::Subscriber(sub)) = self
            .by_id
            .get(&id)
            .and_then(|&i| self.sessions.get_mut(i))
            .map(|s| &mut s.role)
        {
            sub.layers.iter_mut().for_each(f);
        }
    }

    pub(super) fn answer(&mut self, id: SessionId, r: Result<(), CommandError>) {
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
    pub(super) fn contexts(
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

    pub(super) fn add_publisher(
        &mut self,
        id: SessionId,
        stream: StreamId,
        (remote, via): (Option<SocketAddr>, Via),
        (ssrcs, clock_rates, sim): (Vec<u32>, Vec<u32>, Option<Box<SimMap>>),
        keys: Option<&SrtpKeys>,
        (ice, now): (Option<&IceCredentials>, Instant),
    ) -> Result<(), CommandError> {
        self.check_new(id, (remote, via), (keys, false), ice)?;
        // A simulcast publisher's tracks are its map's, with or without SSRCs.
        let rated = if sim.is_some() { MAX_TRACKS } else { 0 };
        if ssrcs.len() > MAX_TRACKS || clock_rates.len() > ssrcs.len().max(rated) {
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
        let simulcast = sim.is_some();
        let mut publisher = Publisher::new(stream, tracks, self.limits.nack_cache, sim);
        // A new publisher of a stream whose viewers stayed (one that left and came back, a
        // relay-in replaced by a publisher here): they re-base at its first packet.
        publisher.epoch = self.next_epoch();
        for (c, &r) in publisher.clock_rates.iter_mut().zip(&clock_rates) {
            *c = r;
        }
        self.pool.reserve(self.pool_share(simulcast));
        let idx = self.sessions.insert(Session {
            id,
            remote,
            inbound,
            outbound,
            role: session::Role::Publisher(publisher),
            ice: ice.map(|c| ice::IceAgent::new(c, now, &SystemRandom::new())),
            dtls: keys.is_none(),
            plain: false,
            rtcp: None,
            via,
            local: None,
            latch_queued: false,
        });
        self.by_id.insert(id, idx);
        self.open_slot(id, idx);
        match (remote, ice) {
            (_, Some(c)) => self.add_ice(c, idx, now),
            (Some(r), None) => self.bind_addr(via, r, idx),
            (None, None) => self.unlatched_mut(via).push(idx),
        }
        self.streams.entry(stream).or_default().publisher = Some(idx);
        Ok(())
    }

    // The fields of WorkerCommand::AddSubscriber, unpacked where they are checked.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_subscriber(
        &mut self,
        id: SessionId,
        stream: StreamId,
        (remote, via): (Option<SocketAddr>, Via),
        ssrcs: [u32; MAX_TRACKS],
        payload_types: [u8; 128],
        (keys, plain): (Option<&SrtpKeys>, bool),
        (ice, now): (Option<&IceCredentials>, Instant),
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
                rtt: None,
                layers: Box::default(),
                bwe: None,
                relay_layers: None,
                continuity: Default::default(),
                svc: Box::default(),
                priming: None,
            }),
            ice: ice.map(|c| ice::IceAgent::new(c, now, &SystemRandom::new())),
            dtls: keys.is_none() && !plain,
            plain,
            rtcp,
            via,
            local: None,
            latch_queued: false,
        });
        self.by_id.insert(id, idx);
        self.open_slot(id, idx);
        for r in remote.into_iter().chain(rtcp) {
            self.bind_addr(via, r, idx);
        }
        if let Some(c) = ice {
            self.add_ice(c, idx, now);
        }
        self.streams
            .entry(stream)
            .or_default()
            .subscribers
            .push(idx);
        Ok(())
    }

    /// Session `idx` has ICE credentials `c`: checks find it by its ufrag, and its consent
    /// is swept from now on (at once if no sweep is scheduled, as for the first ICE session).
    fn add_ice(&mut self, c: &IceCredentials, idx: u32, now: Instant) {
        self.by_ufrag.insert(c.local_ufrag.as_bytes().into(), idx);
        if self.timers.get(Timer::ConsentSweep).is_none() {
            self.timers.set(Timer::ConsentSweep, now);
        }
    }

    /// A relay-in: a publisher on the relay socket with the given SSRCs (the rest learned)
    /// and a gap tracker.
    pub(super) fn add_relay_in(
        &mut self,
        id: SessionId,
        stream: StreamId,
        (remote, ssrcs, sim): (Option<SocketAddr>, Vec<u32>, Option<Box<SimMap>>),
        keys: &SrtpKeys,
        now: Instant,
    ) -> Result<(), CommandError> {
        self.add_publisher(
            id,
            stream,
            (remote, Via::Relay),
            (ssrcs, Vec::new(), sim),
            Some(keys),
            (None, now),
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

    /// Relay-in `id` is fed by another source from now on: the new link key, the new
    /// source publisher's SSRCs and layers, no address until a packet authenticates with
    /// the new key. Everything learned from the old source goes (its gaps, its cached
    /// packets, its receive statistics, its last keyframe requests), and the publisher's
    /// epoch changes, so every viewer of the stream, on any worker, re-bases its numbering
    /// at the first packet from the new source and asks for a keyframe (see
    /// `continuity`).
    pub(super) fn retarget_relay_in(
        &mut self,
        id: SessionId,
        (ssrcs, sim): (Vec<u32>, Option<Box<SimMap>>),
        keys: &SrtpKeys,
    ) -> Result<(), CommandError> {
        let idx = *self.by_id.get(&id).ok_or(CommandError::UnknownSession)?;
        if ssrcs.len() > MAX_TRACKS || !self.relay_ins.contains(&idx) {
            return Err(CommandError::Invalid);
        }
        // Refused before anything changes: a bad key leaves the old source in place.
        Self::contexts(Some(keys))?;
        // The old key is never used again: its journal slots go, and the new key's
        // contexts are journaled like any static key's (a restarted data plane resumes
        // above their last index).
        if let Some(s) = self.sessions.get_mut(idx) {
            for ctx in [&mut s.inbound, &mut s.outbound].into_iter().flatten() {
                if let Some(slot) = ctx.take_journal() {
                    slot.release();
                }
            }
        }
        let (inbound, outbound) = self.static_contexts(id, Some(keys))?;
        let epoch = self.next_epoch();
        let nack_cache = self.limits.nack_cache;
        let Some(s) = self.sessions.get_mut(idx) else {
            return Err(CommandError::UnknownSession);
        };
        let session::Role::Publisher(p) = &mut s.role else {
            return Err(CommandError::Invalid);
        };
        let was_layered = p.sim.is_some();
        for c in &mut p.caches {
            c.clear(&mut self.pool);
        }
        let mut tracks = [None; MAX_TRACKS];
        for (t, s) in tracks.iter_mut().zip(&ssrcs) {
            *t = Some(*s);
        }
        let stream = p.stream;
        let mut fresh = Publisher::new(stream, tracks, nack_cache, sim);
        fresh.upstream = Some(Box::new(std::array::from_fn(|_| relay::GapTracker::new())));
        fresh.data_in = Some(Box::new(relay::GapTracker::new()));
        fresh.epoch = epoch;
        let layered = fresh.sim.is_some();
        *p = fresh;
        s.inbound = inbound;
        s.outbound = outbound;
        s.local = None;
        let old = s.remote.take();
        if was_layered != layered {
            self.pool.release(self.pool_share(was_layered));
            self.pool.reserve(self.pool_share(layered));
        }
        if let Some(r) = old {
            self.unbind_addr(Via::Relay, r, idx);
        }
        let unlatched = self.unlatched_mut(Via::Relay);
        if !unlatched.contains(&idx) {
            unlatched.push(idx);
        }
        // This worker's view of the old source's layers means nothing for the new one's.
        if let Some(st) = self.streams.get_mut(&stream) {
            st.view = Default::default();
        }
        tracing::info!(id = id.0, "relay-in retargeted to a new source");
        Ok(())
    }

    /// A publisher epoch: never 0 (what a viewer that saw nothing yet holds), and
    /// different from any other publisher's or source's with overwhelming odds, also across
    /// workers (viewers only compare it for equality).
    pub(super) fn next_epoch(&mut self) -> u32 {
        (self.next_rand() >> 32) as u32 | 1
    }

    /// A relay-out: a subscriber on the relay socket that rewrites nothing.
    pub(super) fn add_relay_out(
        &mut self,
        id: SessionId,
        stream: StreamId,
        remote: SocketAddr,
        keys: &SrtpKeys,
        now: Instant,
    ) -> Result<(), CommandError> {
        let identity = std::array::from_fn(|i| i as u8);
        self.add_subscriber(
            id,
            stream,
            (Some(remote), Via::Relay),
            [0; MAX_TRACKS],
            identity,
            (Some(keys), false),
            (None, now),
        )?;
        if let Some(session::Role::Subscriber(sub)) = self
            .by_id
            .get(&id)
            .and_then(|&i| self.sessions.get_mut(i))
            .map(|s| &mut s.role)
        {
            sub.relay = true;
            sub.offsets = [(0, 0); MAX_TRACKS];
            sub.relay_layers = Some(Box::default());
            // A random start, like any RTP stream's.
            sub.data = Some(Box::new(relay::DataOut::new(self.rng as u16)));
            sub.rtt = Some(Box::default());
        }
        Ok(())
    }

    /// Publisher `id` negotiated transport-cc on header extension `ext`: record its
    /// arrivals, and send its first feedback at the next `handle_timeout` if no other
    /// publisher has feedback scheduled.
    fn enable_twcc(&mut self, id: SessionId, ext: Option<u8>, now: Instant) {
        let (Some(ext), Some(&idx)) = (ext, self.by_id.get(&id)) else {
            return;
        };
        if !(1..=14).contains(&ext) {
            return; // one-byte header extension ids only (RFC 8285 §4.2)
        }
        if let Some(session::Role::Publisher(p)) = self.sessions.get_mut(idx).map(|s| &mut s.role) {
            p.twcc = Some(Box::new(twcc::Recorder::new(ext, self.epoch)));
            self.twcc_publishers.push(idx);
            if self.timers.get(Timer::Twcc).is_none() {
                self.timers.set(Timer::Twcc, now);
            }
        }
    }

    /// Publisher (or relay-in) `id`'s video codecs per track: keyframes and SVC layers.
    fn set_video(&mut self, id: SessionId, codecs: [Option<VideoCodec>; MAX_TRACKS]) {
        let Some(&idx) = self.by_id.get(&id) else {
            return;
        };
        if let Some(session::Role::Publisher(p)) = self.sessions.get_mut(idx).map(|s| &mut s.role) {
            p.video = codecs;
        }
    }

    /// Publisher `id`'s uplink is repaired with `repair` (`None`: not at all).
    fn enable_uplink(&mut self, id: SessionId, repair: Option<Box<Uplink>>) {
        let (Some(repair), Some(&idx)) = (repair, self.by_id.get(&id)) else {
            return;
        };
        if let Some(session::Role::Publisher(p)) = self.sessions.get_mut(idx).map(|s| &mut s.role) {
            p.uplink = Some(repair);
            self.uplink_publishers.push(idx);
        }
    }

    pub(super) fn remove(
        &mut self,
        id: SessionId,
        _out: &mut dyn Output,
    ) -> Result<(), CommandError> {
        let idx = self.by_id.remove(&id).ok_or(CommandError::UnknownSession)?;
        let Some(mut s) = self.sessions.remove(idx) else {
            return Err(CommandError::UnknownSession);
        };
        if let Some(slot) = self.slot(idx) {
            slot.close();
        }
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
        self.bwe_viewers.retain(|&i| i != idx);
        self.relay_ins.retain(|&i| i != idx);
        self.uplink_publishers.retain(|&i| i != idx);
        match s.role {
            session::Role::Publisher(mut p) => {
                for c in &mut p.caches {
                    c.clear(&mut self.pool);
                }
                self.pool.release(self.pool_share(p.sim.is_some()));
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

    /// Session `id` now lives at `idx`: its stats slot starts from zero under its id.
    fn open_slot(&self, id: SessionId, idx: u32) {
        if let Some(slot) = self.slot(idx) {
            slot.open(id.0);
        }
    }

    fn gc_stream(&mut self, stream: StreamId) {
        if self.streams.get(&stream).is_some_and(|s| {
            s.publisher.is_none()
                && s.subscribers.is_empty()
                && s.remote_workers.is_empty()
                && s.publisher_worker.is_none()
        }) {
            self.streams.remove(&stream);
        }
    }
}

/// A plain session's RTCP address: the port above its RTP port (RFC 3550 §11).
fn plain_rtcp(remote: Option<SocketAddr>) -> Option<SocketAddr> {
    let r = remote?;
    Some(SocketAddr::new(r.ip(), r.port().checked_add(1)?))
}
