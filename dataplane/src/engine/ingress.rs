//! Datagrams in: demultiplexing by first byte, then the RTP path (find the session by
//! source, latch a comedia publisher, unprotect once into a pooled buffer, cache, fan out).
//! STUN goes to [`stun`](super::stun), RTCP to [`feedback`](super::feedback).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use switchyard_shared::command::VideoCodec;
use switchyard_shared::packet::{self, rtp, Kind};
use switchyard_shared::srtp;
use switchyard_shared::stats::{Counter, DropReason};

use super::layers::{self, Dest};
use super::pool::PACKET_CAP;
use super::session;
use super::timer::Timer;
use super::uplink;
use super::{Engine, Output, WorkerEvent, MAX_DATAGRAM, MAX_LATCH_TRIALS, MAX_PENDING_EVENTS};
use crate::via::Via;

impl Engine {
    /// A datagram the socket truncated because it exceeded [`MAX_DATAGRAM`].
    pub fn oversize(&mut self) {
        self.count(Counter::RxPackets, 1);
        self.drop_packet(DropReason::Oversize);
    }

    /// One datagram from the worker's media socket. `data` may be modified in place.
    /// [`handle_datagram_to`](Self::handle_datagram_to) without the local address: what
    /// the session sends keeps leaving from whatever address it learned before.
    pub fn handle_datagram(
        &mut self,
        data: &mut [u8],
        src: SocketAddr,
        at: Instant,
        out: &mut dyn Output,
    ) {
        self.on_datagram(Via::Media, data, (src, None), at, out);
    }

    /// One datagram from the worker's media socket that came to the node's address `dst`
    /// (`RxEvent::Datagram::dst`). A STUN answer leaves from `dst`; a session learns `dst`
    /// as its local address (`Session::local`) only from a datagram that authenticates: a
    /// valid ICE check from its address or one that moved it, SRTP or SRTCP.
    pub fn handle_datagram_to(
        &mut self,
        data: &mut [u8],
        src: SocketAddr,
        dst: Option<IpAddr>,
        at: Instant,
        out: &mut dyn Output,
    ) {
        self.on_datagram(Via::Media, data, (src, dst), at, out);
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
        self.on_datagram(Via::Relay, data, (src, None), at, out);
    }

    fn on_datagram(
        &mut self,
        via: Via,
        data: &mut [u8],
        (src, dst): (SocketAddr, Option<IpAddr>),
        at: Instant,
        out: &mut dyn Output,
    ) {
        self.count(Counter::RxPackets, 1);
        self.count(Counter::RxBytes, data.len() as u64);
        if data.len() > MAX_DATAGRAM {
            return self.drop_packet(DropReason::Oversize);
        }
        match (packet::demux(data), via) {
            (Kind::Rtp, _) => self.on_rtp(data, (src, dst), via, at, out),
            (Kind::Rtcp, _) => self.on_rtcp(data, (src, dst), via, at, out),
            // A relay link is keyed in advance: no ICE, no DTLS on the relay socket.
            (_, Via::Relay) => self.drop_packet(DropReason::RelayUnauthenticated),
            // ICE-lite comes with WebRTC signaling; until a session has ICE credentials,
            // STUN and DTLS are counted and dropped.
            (Kind::Stun, Via::Media) => self.on_stun(data, (src, dst), at, out),
            (Kind::Dtls, Via::Media) => self.on_dtls(data, src),
            (Kind::Unknown, Via::Media) => self.drop_packet(DropReason::UnknownKind),
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

    fn on_rtp(
        &mut self,
        data: &[u8],
        (src, dst): (SocketAddr, Option<IpAddr>),
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
        let (idx, mut len) = match decrypted {
            Ok(found) => found,
            Err(reason) => {
                self.pool.put(h);
                return self.drop_packet(on_socket(via, reason));
            }
        };
        let Ok(mut hdr) = rtp::Header::parse(&pkt.data[..len]) else {
            self.pool.put(h);
            return self.drop_packet(DropReason::Malformed);
        };
        if self.is_relay_data(idx, hdr.ssrc, hdr.payload_type) {
            let end = len.saturating_sub(hdr.padding_len);
            self.on_relay_data(idx, hdr.sequence, pkt.data.get(hdr.payload_offset..end), at);
            self.pool.put(h);
            return;
        }
        // Authenticated: it counts for the session, forwarded or not.
        if let Some(slot) = self.stats.session(usize::from(self.worker), idx as usize) {
            slot.received(data.len(), self.stats.stamp(at));
        }
        // Authenticated: the peer talks to `dst` now.
        let Some(session::Role::Publisher(p)) = self.sessions.get_mut(idx).map(|s| {
            s.heard_at(dst);
            &mut s.role
        }) else {
            // Subscribers send RTCP only.
            self.pool.put(h);
            return self.drop_packet(DropReason::NoRoute);
        };
        // Every authenticated packet counts for the publisher's bandwidth estimate, forwarded
        // or not: a browser probes with padding on RTX streams, and probes it hears nothing
        // about read as lost (a simulcast publisher then never sends its upper layers).
        if let Some(rec) = p.twcc.as_mut() {
            let plain = &pkt.data[..len];
            let value = rtp::find_extension(plain, &hdr, rec.ext_id).and_then(|r| plain.get(r));
            if let Some(&[a, b, ..]) = value {
                rec.record(u16::from_be_bytes([a, b]), at);
            }
        }
        // A repaired uplink's RTX, unwrapped in place into the packet it carries; `None`:
        // nothing to forward (a padding probe, a layer or SSRC not known yet).
        let mut rtx = None;
        // The one branch a publisher without simulcast pays (two with uplink repair).
        let found = match p.sim.as_deref_mut() {
            None => match p
                .uplink
                .as_deref()
                .map(|u| (u, u.rtx_track(hdr.ssrc, hdr.payload_type)))
            {
                Some((u, Some(t))) => {
                    let media = p.tracks.get(usize::from(t)).copied().flatten();
                    let apt = u.apt(t, hdr.payload_type);
                    let plain = media.zip(apt).and_then(|(m, apt)| {
                        uplink::unwrap(&mut pkt.data[..len], len, &mut hdr, m, apt)
                    });
                    rtx = Some(plain.is_some());
                    len = plain.unwrap_or(len);
                    plain.map(|_| (t, None))
                }
                _ => p.track_for(hdr.ssrc).map(|t| (t, None)),
            },
            Some(sim) => match sim.classify(&pkt.data[..len], &hdr) {
                Some(Dest::Media { track, layer: None }) => {
                    // Receiver reports, sender reports and PLI find it like any track.
                    if let Some(slot @ None) = p.tracks.get_mut(usize::from(track)) {
                        *slot = Some(hdr.ssrc);
                    }
                    Some((track, None))
                }
                Some(Dest::Media {
                    track,
                    layer: Some(l),
                }) => Some((track, Some(sim.tag(track, l, &pkt.data[..len], &hdr)))),
                Some(Dest::Repair(Some((track, l)))) if p.uplink.is_some() => {
                    let media = sim.ssrc_of(track, l);
                    let apt = p
                        .uplink
                        .as_deref()
                        .and_then(|u| u.apt(track, hdr.payload_type));
                    let plain = media.zip(apt).and_then(|(m, apt)| {
                        uplink::unwrap(&mut pkt.data[..len], len, &mut hdr, m, apt)
                    });
                    rtx = Some(plain.is_some());
                    len = plain.unwrap_or(len);
                    plain.map(|n| (track, Some(sim.tag(track, l, &pkt.data[..n], &hdr))))
                }
                Some(Dest::Repair(_)) => {
                    self.pool.put(h);
                    return self.count(Counter::SimulcastRtxDropped, 1);
                }
                None => None,
            },
        };
        let Some((track, tag)) = found else {
            self.pool.put(h);
            if rtx.is_some() {
                // Padding only (Chromium's bandwidth probes): counted for transport-cc above.
                return self.count(Counter::UplinkRtxReceived, 1);
            }
            return self.drop_packet(DropReason::NoRoute);
        };
        let t = usize::from(track);
        let slot = layers::slot(track, tag.map_or(0, |g| g.layer));
        // A repaired uplink notes gaps for its NACKs; a packet that fills one (RTX, or the
        // original arriving late) goes on like any other. A retransmission that fills none
        // was had already, or was given up: forwarding it would send it twice.
        let filled = match p.uplink.as_deref_mut().and_then(|u| u.tracker(slot)) {
            Some(gaps) => {
                let filled = gaps.on_packet(hdr.sequence, at);
                self.timers.note_gaps(Timer::UplinkNacks, gaps);
                filled
            }
            None => false,
        };
        if rtx.is_some() && !filled {
            self.pool.put(h);
            return self.count(Counter::UplinkRtxReceived, 1);
        }
        // Layers share a track but not a sequence space: their receive statistics would be
        // nonsense, so a layered track has none (and no receiver report). A retransmission
        // says nothing about the path's jitter.
        if let (Some(stats), Some(&rate), None, None) =
            (p.recv.get_mut(t), p.clock_rates.get(t), tag, rtx)
        {
            stats.on_packet(hdr.sequence, hdr.timestamp, at, self.epoch, rate);
        }
        // A relay-in notes gaps for the NACKs upstream; a late packet that fills one goes
        // on to subscribers like any other.
        let relayed = match p
            .upstream
            .as_mut()
            .and_then(|u| u.get_mut(usize::from(slot)))
        {
            Some(gaps) => {
                gaps.on_packet(hdr.sequence, at);
                self.timers.note_gaps(Timer::RelayNacks, gaps);
                true
            }
            None => false,
        };
        pkt.stream = p.stream;
        pkt.track = track;
        pkt.len = len as u16;
        pkt.at = Some(at);
        pkt.layer = tag;
        // A video track's SVC layers (VP9, AV1), and where its latest group starts.
        let codec = p.video.get(t).copied().flatten();
        pkt.svc = None;
        let mut grouped = false;
        if let Some(c) = codec.filter(|c| tag.is_none() && hdr.payload_type == c.payload_type()) {
            let end = len.saturating_sub(hdr.padding_len);
            let payload = pkt.data.get(hdr.payload_offset..end).unwrap_or_default();
            pkt.svc = match (c, p.av1.get_mut(t)) {
                (VideoCodec::Vp9(_), _) => super::svc::vp9(payload),
                (VideoCodec::Av1(_), Some(frames)) => {
                    super::svc::av1(payload, hdr.timestamp, hdr.marker, frames)
                }
                _ => None,
            };
            let key = super::prime::starts_keyframe(c, payload, pkt.svc.as_ref());
            let cached = p.caches.get(t).map_or(0, |c| c.capacity());
            if let Some(g) = p.groups.get_mut(t) {
                g.on_packet((hdr.sequence, hdr.timestamp), key, at);
                grouped = g.span(cached, at).is_some() || p.replaying[t] > 0;
            }
        } else if let Some(tag) = tag {
            // A simulcast layer keeps its own group, found by the keyframes its tag says.
            let s = usize::from(slot);
            let cached = p.caches.get(s).map_or(0, |c| c.capacity());
            if let Some(g) = p.groups.get_mut(s) {
                g.on_packet((hdr.sequence, hdr.timestamp), tag.keyframe, at);
                grouped = g.span(cached, at).is_some() || p.replaying[s] > 0;
            }
        }
        pkt.grouped = grouped;
        pkt.video = p.clock_rates.get(t) == Some(&90_000);
        pkt.epoch = p.epoch;
        let stream = p.stream;
        if let Some(cache) = p.caches.get_mut(usize::from(slot)) {
            cache.insert(hdr.sequence, h.clone(), &mut self.pool);
        }
        if relayed {
            self.count(Counter::RelayRxPackets, 1);
        }
        if rtx.is_some() {
            self.count(Counter::UplinkRtxReceived, 1);
        }
        if filled {
            self.count(Counter::UplinkRecovered, 1);
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

    /// A packet from an unknown source: the first comedia publisher whose key authenticates
    /// it owns `src` from now on. A failed trial leaves a context untouched (SRTP state only
    /// moves after authentication), so trying several is safe; each trial starts from a
    /// fresh copy because a failed AEAD open leaves the buffer undefined. At most
    /// [`MAX_LATCH_TRIALS`] publishers per datagram, and none once the source has spent its
    /// budget ([`latch`](mod@super::latch)): a stranger's datagram costs O(1), not O(waiting
    /// publishers).
    pub(super) fn latch(
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
}

/// What a drop is called on socket `via`: on the relay socket, a stranger and a failed
/// authentication are the same thing — not a relay link.
pub(super) fn on_socket(via: Via, r: DropReason) -> DropReason {
    match (via, r) {
        (Via::Relay, DropReason::UnknownSource | DropReason::SrtpAuth) => {
            DropReason::RelayUnauthenticated
        }
        _ => r,
    }
}

pub(super) fn srtp_drop(e: srtp::Error) -> DropReason {
    match e {
        srtp::Error::AuthFailed => DropReason::SrtpAuth,
        srtp::Error::Replayed => DropReason::Replay,
        _ => DropReason::Malformed,
    }
}
