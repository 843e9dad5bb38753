//! RTCP feedback: subscribers' NACK (answered from the publisher's cache, across workers
//! or upstream over a relay link), PLI/FIR (to the publisher, throttled per track), and
//! publishers' sender reports passed on to every subscriber in its own numbering.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use switchyard_shared::command::MAX_TRACKS;
use switchyard_shared::packet::{rtcp, twcc};
use switchyard_shared::stats::{Counter, DropReason};

use super::fanout::retransmit;
use super::ingress::{on_socket, srtp_drop};
use super::pool::Handle;
use super::session::{self, seal_rtcp, SessionKey, Subscriber};
use super::timer::Timer;
use super::{
    relay_data_ssrc, Engine, Inbound, Output, SenderReport, StreamId, MAX_DATAGRAM, PLI_INTERVAL,
};
use crate::via::Via;

impl Engine {
    pub(super) fn on_rtcp(
        &mut self,
        data: &mut [u8],
        (src, dst): (SocketAddr, Option<IpAddr>),
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
                Ok(len) => {
                    // Authenticated: the peer talks to `dst` now. (A plain session's RTCP
                    // below is not, so it never moves `local`.)
                    s.heard_at(dst);
                    len
                }
                Err(e) => return self.drop_packet(on_socket(via, srtp_drop(e))),
            },
            // A plain egress session: its RTCP is unauthenticated, accepted only because it
            // comes from the destination's own addresses (the address table holds only those).
            (None, None) if s.plain => data.len(),
            (None, None) => return self.drop_packet(DropReason::NoRoute),
        };
        if let Some(slot) = self.stats.session(usize::from(self.worker), idx as usize) {
            slot.received(data.len(), self.stats.stamp(at));
        }
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
                    self.fan_out_report(sr, at, out);
                }
                return;
            }
        };
        let stream = sub.stream;
        // Collect feedback first: acting on it needs `self` mutably.
        let mut nacks = [(0u8, 0u16); 64];
        let mut n_nacks = 0;
        // Per track, the slot its keyframe is asked for (the layer the viewer receives).
        let mut plis = [None; MAX_TRACKS];
        let mut data_nacks = [0u16; 64];
        let mut n_data = 0;
        let mut asked = 0u32;
        let mut rtt = None;
        let mut feedback_malformed = 0u64;
        for p in rtcp::compound(plain) {
            match p {
                Ok(rtcp::Packet::ReceiverReport(rr)) => {
                    // The far node of a relay-out on the sender reports it got from here.
                    if let Some(link) = sub.rtt.as_mut() {
                        for b in rr.reports() {
                            if link.on_report_block(b.lsr, b.dlsr, at).is_some() {
                                rtt = link.smoothed();
                            }
                        }
                    }
                }
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
                    // Only for a track it receives (a forward's egress gets one track), for
                    // the layer it receives now (its offsets are that layer's), or over a
                    // relay link for the layer whose SSRC it names.
                    let Some((track, slot)) = sub.feedback_slot(nack.media_ssrc) else {
                        continue;
                    };
                    for seq in nack.lost() {
                        let Some(theirs) = sub.original_seq(track, seq) else {
                            continue;
                        };
                        if n_nacks < nacks.len() {
                            nacks[n_nacks] = (slot, theirs);
                            n_nacks += 1;
                        }
                    }
                }
                Ok(rtcp::Packet::Pli { media_ssrc, .. }) => {
                    asked += 1;
                    if let Some((t, slot)) = sub.feedback_slot(media_ssrc) {
                        plis[usize::from(t)] = Some(slot);
                    }
                }
                Ok(rtcp::Packet::TransportCc { fci, .. }) => {
                    if let Some(b) = sub.bwe.as_deref_mut() {
                        match twcc::Feedback::parse(fci) {
                            Ok(fb) => b.bwe.on_feedback(&fb, at),
                            Err(_) => feedback_malformed += 1,
                        }
                    }
                }
                Ok(rtcp::Packet::Remb(remb)) => {
                    if let Some(b) = sub.bwe.as_deref_mut() {
                        b.bwe.on_remb(remb.bitrate_bps);
                    }
                }
                Ok(rtcp::Packet::Fir(fir)) => {
                    asked += 1;
                    for (ssrc, _) in fir.entries() {
                        if let Some((t, slot)) = sub.feedback_slot(ssrc) {
                            plis[usize::from(t)] = Some(slot);
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
        if feedback_malformed > 0 {
            self.count(DropReason::Malformed.counter(), feedback_malformed);
        }
        self.count(Counter::NacksReceived, (n_nacks + n_data) as u64);
        if let Some(slot) = self.slot(idx) {
            slot.nacked((n_nacks + n_data) as u64);
            slot.pli_received(asked);
            if let Some(rtt) = rtt {
                slot.set_rtt(rtt);
            }
        }
        if n_data > 0 {
            self.resend_relay_data(idx, &data_nacks[..n_data], out);
        }
        for &(slot, seq) in &nacks[..n_nacks] {
            self.nack(stream, (slot, seq), key, at, out);
        }
        for slot in plis.into_iter().flatten() {
            self.request_keyframe(stream, slot, at, out);
        }
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

    /// A publisher's SR to every subscriber: one message per other worker with some.
    fn fan_out_report(&mut self, sr: SenderReport, now: Instant, out: &mut dyn Output) {
        let Some(st) = self.streams.get(&sr.stream) else {
            return;
        };
        for w in &st.remote_workers {
            if out.to_worker(w, Inbound::SenderReport(sr)).is_err() {
                self.drop_packet(DropReason::QueueFull);
            }
        }
        self.report_local(sr, now, out);
    }

    /// The SR as each local subscriber of the stream knows the track: its SSRC, its RTP
    /// timestamp offset, protected with its key. A relay-out notes when it sent it, for the
    /// link's round-trip time (`super::rtt`).
    pub(super) fn report_local(&mut self, sr: SenderReport, now: Instant, out: &mut dyn Output) {
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
            let mut len = 0;
            let r = out.send_from(via, remote, s.local, &mut |buf| {
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
                len = seal_rtcp(ctx.as_deref_mut(), buf, n)?;
                Some(len)
            });
            if r.is_ok() {
                sent += 1;
                if let Some(slot) = self.stats.session(usize::from(self.worker), idx as usize) {
                    slot.sent(len);
                }
                if let session::Role::Subscriber(Subscriber { rtt: Some(rtt), .. }) = &mut s.role {
                    rtt.on_sender_report_sent(sr.ntp, now);
                }
            }
        }
        self.count(Counter::TxPackets, sent);
    }

    /// A subscriber (here or, through `Inbound::Nack`, elsewhere) lost `seq` of `slot`
    /// (a track, or a layer of one: [`slot`](super::layers::slot)). Served from the publisher's cache; a
    /// relay-in that lacks it asks upstream.
    pub(super) fn nack(
        &mut self,
        stream: StreamId,
        (slot, seq): (u8, u16),
        to: SessionKey,
        now: Instant,
        out: &mut dyn Output,
    ) {
        let Some(st) = self.streams.get(&stream) else {
            return self.drop_packet(DropReason::NoRoute);
        };
        if let Some(pidx) = st.publisher {
            match self.cached(pidx, slot, seq) {
                Some(h) => self.retransmit_to(to, h, now, out),
                None => self.request_upstream(pidx, slot, seq, now),
            }
        } else if let Some(w) = st.publisher_worker {
            let msg = Inbound::Nack {
                from: self.worker,
                session: to,
                stream,
                slot,
                seq,
            };
            if out.to_worker(w, msg).is_err() {
                self.drop_packet(DropReason::QueueFull);
            }
        }
    }

    pub(super) fn cached(&self, publisher: u32, slot: u8, seq: u16) -> Option<Handle> {
        let s = self.sessions.get(publisher)?;
        let session::Role::Publisher(p) = &s.role else {
            return None;
        };
        p.caches.get(usize::from(slot))?.get(seq).cloned()
    }

    /// Resend a cached packet to local subscriber `to` (gone subscribers are skipped).
    fn retransmit_to(&mut self, to: SessionKey, h: Handle, now: Instant, out: &mut dyn Output) {
        if let Some(s) = self.sessions.get_key_mut(to) {
            let relay = s.via == Via::Relay;
            if let Ok(n) = retransmit(s, &h, now, out) {
                if let Some(slot) = self.slot(to.idx) {
                    slot.sent(n);
                }
                self.count_retransmit(relay);
            }
        }
        self.pool.put(h);
    }

    pub(super) fn count_retransmit(&self, relay: bool) {
        self.count(Counter::Retransmitted, 1);
        self.count(Counter::TxPackets, 1);
        if relay {
            self.count(Counter::RelayTxPackets, 1);
        }
    }

    /// Ask the publisher of `stream` for a keyframe of `slot` (a track, or a simulcast
    /// layer of one: [`slot`](super::layers::slot); across workers if it runs elsewhere), at most once
    /// per [`PLI_INTERVAL`] per slot.
    pub(super) fn request_keyframe(
        &mut self,
        stream: StreamId,
        slot: u8,
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
            let (track, layer) = (slot % MAX_TRACKS as u8, slot / MAX_TRACKS as u8);
            let declared = p.tracks.get(usize::from(track)).copied().flatten();
            let media = match (declared, p.sim.as_deref()) {
                (Some(ssrc), _) if layer == 0 => ssrc,
                (_, Some(sim)) => match sim.ssrc_of(track, layer) {
                    Some(ssrc) => ssrc,
                    None => return,
                },
                _ => return,
            };
            let Some(t) = p.last_pli.get_mut(usize::from(slot)) else {
                return;
            };
            if t.is_some_and(|last| now.saturating_duration_since(last) < PLI_INTERVAL) {
                return self.count(Counter::PliThrottled, 1);
            }
            let Some(ctx) = s.outbound.as_mut() else {
                return;
            };
            *t = Some(now);
            let mut len = 0;
            let r = out.send_from(s.via, remote, s.local, &mut |buf| {
                let n = rtcp::write_pli(buf, sender, media).ok()?;
                len = ctx.protect_rtcp(buf, n).ok()?;
                Some(len)
            });
            match r {
                Ok(()) => {
                    if let Some(slot) = self.slot(pidx) {
                        slot.sent(len);
                        slot.pli_sent();
                    }
                    self.count(Counter::PliForwarded, 1);
                    self.count(Counter::TxPackets, 1);
                }
                Err(_) => self.drop_packet(DropReason::QueueFull),
            }
        } else if let Some(w) = st.publisher_worker {
            if out.to_worker(w, Inbound::Pli { stream, slot }).is_err() {
                self.drop_packet(DropReason::QueueFull);
            }
        }
    }

    /// A packet of `slot` that a subscriber here lost is not in publisher `pidx`'s cache:
    /// a relay-in asks the far node for it (on the slot's SSRC), a publisher
    /// whose uplink is repaired asks the publisher; it goes out with the next NACK. Other
    /// publishers have nothing upstream to ask.
    pub(super) fn request_upstream(&mut self, pidx: u32, slot: u8, seq: u16, now: Instant) {
        let Some(session::Role::Publisher(p)) = self.sessions.get_mut(pidx).map(|s| &mut s.role)
        else {
            return;
        };
        if let Some(gaps) = p
            .upstream
            .as_mut()
            .and_then(|u| u.get_mut(usize::from(slot)))
        {
            gaps.request(seq, now);
            self.timers.note_gaps(Timer::RelayNacks, gaps);
        } else if let Some(gaps) = p.uplink.as_deref_mut().and_then(|u| u.tracker(slot)) {
            gaps.request(seq, now);
            self.timers.note_gaps(Timer::UplinkNacks, gaps);
        }
    }
}
