//! Work that time makes due rather than input: transport-cc feedback and receiver reports
//! to publishers, relay-ins' NACKs upstream, ICE check retransmissions, the consent sweep.
//! Each kind has one deadline in the engine's [`TimerTable`]; each is re-armed here when it
//! runs, and armed by the input that creates work for it (a publisher with transport-cc,
//! a gap on a relay link, an ICE session, a check sent).

use std::time::Instant;

use switchyard_shared::command::MAX_TRACKS;
use switchyard_shared::packet::rtcp;
use switchyard_shared::stats::{Counter, DropReason};

use super::timer::{Timer, TimerTable};
use super::{
    relay, relay_data_ssrc, rr, session, twcc, Engine, Output, WorkerEvent, CONSENT_SWEEP,
};
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

/// A gap tracker was fed (a packet, or a viewer's NACK to ask upstream for): bring its
/// NACK timer (`RelayNacks` for a relay link, `UplinkNacks` for a publisher's uplink)
/// forward to its earliest due number. Costs nothing while nothing is lost
/// (`pending() == 0`); otherwise a scan of at most `relay::MAX_MISSING`.
pub(super) fn note_gaps(timers: &mut TimerTable, timer: Timer, gaps: &relay::GapTracker) {
    if gaps.pending() > 0 {
        if let Some(t) = gaps.next_due() {
            timers.set_earliest(timer, t);
        }
    }
}

pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
