//! Work that time makes due rather than input: transport-cc feedback and receiver reports
//! to publishers, relay-ins' NACKs upstream, publishers' uplink NACKs (`uplink` keeps their
//! gaps), ICE check retransmissions, the consent sweep.
//! Each kind has one deadline in the engine's [`TimerTable`]; each is re-armed here when it
//! runs, and armed by the input that creates work for it (a publisher with transport-cc,
//! a gap on a relay link, an ICE session, a check sent).

use std::time::Instant;

use switchyard_shared::command::MAX_TRACKS;
use switchyard_shared::packet::rtcp;
use switchyard_shared::stats::{Counter, DropReason};

use super::layers::MAX_SLOTS;
use super::timer::{earliest, Timer};
use super::uplink::NUMBERS_PER_DATAGRAM;
use super::{relay_data_ssrc, rr, session, twcc, Engine, Output, WorkerEvent, CONSENT_SWEEP};
use crate::via::Via;

impl Engine {
    /// When the engine next has work that no input will bring: the earliest deadline in its
    /// timer table, `None` when nothing is pending. Call [`Engine::handle_timeout`] then. Any
    /// input may bring it forward, so ask again after handing the engine anything.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// Do what is due at `now`: transport-cc feedback, receiver reports, relay NACKs
    /// upstream, publishers' uplink NACKs (and the PLI when repair gives up), ICE check retransmissions, the consent sweep (a lapsed session comes out of
    /// [`Engine::poll_event`] as `ConsentExpired`). Meant for when `now` reaches
    /// [`Engine::poll_timeout`]; called earlier or more often it does only what is due.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut dyn Output) {
        if self.timers.is_due(Timer::Twcc, now) {
            self.send_twcc(now, out);
        }
        if self.timers.is_due(Timer::ReceiverReports, now) {
            self.send_receiver_reports(now, out);
        }
        if self.timers.is_due(Timer::RelayNacks, now) {
            self.send_relay_nacks(now, out);
        }
        if self.timers.is_due(Timer::IceChecks, now) {
            self.drive_ice_checks(now, out);
        }
        if self.timers.is_due(Timer::ConsentSweep, now) {
            self.sweep_consent(now);
        }
        if self.timers.is_due(Timer::UplinkNacks, now) {
            self.send_uplink_nacks(now, out);
        }
        if self.timers.is_due(Timer::Bwe, now) {
            self.drive_bwe(now, out);
        }
        if self.timers.is_due(Timer::Replay, now) {
            self.drive_replays(now, out);
        }
    }

    /// Lapsed ICE consent (RFC 7675): one `ConsentExpired` per session, the first sweep after
    /// [`ice::CONSENT_TIMEOUT`](super::ice::CONSENT_TIMEOUT) without a valid check from its
    /// address.
    fn sweep_consent(&mut self, now: Instant) {
        if self.by_ufrag.is_empty() {
            return self.timers.stop(Timer::ConsentSweep);
        }
        self.timers.set(Timer::ConsentSweep, now + CONSENT_SWEEP);
        for &idx in self.by_ufrag.values() {
            if let Some(s) = self.sessions.get_mut(idx) {
                if s.ice.as_mut().is_some_and(|a| a.expire(now)) {
                    self.events
                        .push_back(WorkerEvent::ConsentExpired { id: s.id });
                }
            }
        }
    }

    /// Transport-cc feedback to every publisher that negotiated it, each
    /// [`twcc::FEEDBACK_INTERVAL`].
    fn send_twcc(&mut self, now: Instant, out: &mut dyn Output) {
        if self.twcc_publishers.is_empty() {
            return self.timers.stop(Timer::Twcc);
        }
        self.timers.set(Timer::Twcc, now + twcc::FEEDBACK_INTERVAL);
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
            let r = out.send_from(s.via, remote, s.local, &mut |buf| {
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
        self.timers
            .set(Timer::ReceiverReports, now + rr::RR_INTERVAL);
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
            let r = out.send_from(s.via, remote, s.local, &mut |buf| {
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

    /// NACKs upstream for the gaps every relay-in found, one RTCP NACK per track with all
    /// its due sequence numbers, to the far node's relay-out; then the timer at the earliest
    /// retry any tracker has left.
    fn send_relay_nacks(&mut self, now: Instant, out: &mut dyn Output) {
        let sender = self.rtcp_ssrc;
        let (mut nacked, mut sent, mut full) = (0u64, 0u64, 0u64);
        let mut next: Option<Instant> = None;
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
            // Per slot: a track, or a simulcast layer of one on its own SSRC.
            let (tracks, sim) = (p.tracks, p.sim.as_deref());
            let media = up.iter_mut().enumerate().map(|(slot, gaps)| {
                let (track, layer) = (slot % MAX_TRACKS, slot / MAX_TRACKS);
                let ssrc = match (tracks.get(track).copied().flatten(), sim) {
                    (Some(ssrc), _) if layer == 0 => Some(ssrc),
                    (_, Some(sim)) => sim.ssrc_of(track as u8, layer as u8),
                    _ => None,
                };
                (gaps, ssrc)
            });
            for (gaps, media) in media.chain(data) {
                let Some(media) = media else { continue };
                // One NACK packet's worth; the rest stays due, so the timer fires again.
                let mut due = [0u16; 64];
                let n = gaps.poll_due(now, &mut due);
                next = earliest(next, gaps.next_due());
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
        match next {
            Some(t) => self.timers.set(Timer::RelayNacks, t),
            None => self.timers.stop(Timer::RelayNacks),
        }
        self.count(Counter::RelayNacksSent, nacked);
        self.count(Counter::TxPackets, sent);
        if full > 0 {
            self.count(DropReason::QueueFull.counter(), full);
        }
    }
}

impl Engine {
    /// NACKs to every publisher whose uplink trackers have numbers due: one SRTCP compound
    /// per publisher with a generic NACK per slot (its media SSRC, PID+BLP entries), from the
    /// session's local address; then one PLI per slot that gave a number up, and the timer
    /// at the earliest work any tracker has left.
    pub(super) fn send_uplink_nacks(&mut self, now: Instant, out: &mut dyn Output) {
        let sender = self.rtcp_ssrc;
        let (mut nacked, mut sent, mut full, mut lost) = (0u64, 0u64, 0u64, 0u64);
        let mut next: Option<Instant> = None;
        for k in 0..self.uplink_publishers.len() {
            let Some(s) = self
                .uplink_publishers
                .get(k)
                .and_then(|&i| self.sessions.get_mut(i))
            else {
                continue;
            };
            let (via, local) = (s.via, s.local);
            let (Some(remote), Some(ctx), session::Role::Publisher(p)) =
                (s.remote, s.outbound.as_mut(), &mut s.role)
            else {
                continue;
            };
            let stream = p.stream;
            let Some(up) = p.uplink.as_deref_mut() else {
                continue;
            };
            // (media SSRC, first due number, count) per slot, numbers in `due`.
            let mut due = [0u16; NUMBERS_PER_DATAGRAM];
            let mut lists = [(0u32, 0usize, 0usize); MAX_SLOTS];
            let (mut used, mut n_lists) = (0usize, 0usize);
            let mut plis = [0u8; MAX_SLOTS];
            let mut n_plis = 0;
            for (slot, gaps) in up.gaps.iter_mut().enumerate() {
                let Some(gaps) = gaps.as_mut() else { continue };
                let (track, layer) = (slot % MAX_TRACKS, (slot / MAX_TRACKS) as u8);
                let media = match p.sim.as_deref() {
                    None => p.tracks.get(track).copied().flatten(),
                    Some(sim) => sim.ssrc_of(track as u8, layer),
                };
                if let (Some(media), Some(room)) = (media, due.get_mut(used..)) {
                    let n = gaps.poll_due(now, room);
                    if let (true, Some(l)) = (n > 0, lists.get_mut(n_lists)) {
                        *l = (media, used, n);
                        n_lists += 1;
                        used += n;
                    }
                }
                let gave_up = gaps.take_given_up();
                if let (true, Some(p)) = (gave_up > 0, plis.get_mut(n_plis)) {
                    lost += u64::from(gave_up);
                    *p = slot as u8;
                    n_plis += 1;
                }
                next = earliest(next, gaps.next_due());
            }
            if n_lists > 0 {
                let lists = &lists[..n_lists];
                let due = &due[..used];
                let r = out.send_from(via, remote, local, &mut |buf| {
                    let mut len = 0;
                    for &(media, from, n) in lists {
                        let lost = due.get(from..from + n)?;
                        len += rtcp::write_nack(buf.get_mut(len..)?, sender, media, lost).ok()?;
                    }
                    ctx.protect_rtcp(buf, len).ok()
                });
                match r {
                    Ok(()) => {
                        sent += 1;
                        nacked += used as u64;
                    }
                    Err(_) => full += 1,
                }
            }
            // Given up: the decoder needs a keyframe to go on (throttled per slot).
            for &slot in &plis[..n_plis] {
                self.request_keyframe(stream, slot, now, out);
            }
        }
        match next {
            Some(t) => self.timers.set(Timer::UplinkNacks, t),
            None => self.timers.stop(Timer::UplinkNacks),
        }
        self.count(Counter::UplinkNacksSent, nacked);
        self.count(Counter::UplinkUnrecovered, lost);
        self.count(Counter::TxPackets, sent);
        if full > 0 {
            self.count(DropReason::QueueFull.counter(), full);
        }
    }
}
