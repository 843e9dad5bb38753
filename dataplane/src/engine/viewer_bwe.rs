//! The engine's side of per-viewer bandwidth estimation ([`crate::bwe`]): which viewers have
//! it, the transport-wide sequence number stamped on everything sent to them, their
//! transport-cc and REMB feedback, the estimate turned into a layer budget, and the probes
//! sent (padding on the viewer's RTX stream) when a better layer does not fit yet.

use std::time::{Duration, Instant};

use switchyard_shared::command::{SessionId, MAX_TRACKS};
use switchyard_shared::packet::rtp;
use switchyard_shared::srtp;
use switchyard_shared::stats::Counter;

use super::layers::UP_HEADROOM_PERCENT;
use super::session::{self, seal_rtp, Subscriber};
use super::timer::Timer;
use super::{Engine, Output};
use crate::bwe::viewer::{ViewerBwe, AUDIO_ALLOWANCE_BPS};
use crate::bwe::{Bwe, ProbeResult, PROBE_PACKETS};

/// How often probes are considered and the estimate published to the stats slot.
pub const TICK: Duration = Duration::from_millis(100);
/// Padding bytes in a probe packet: the most one RTP padding count byte describes.
const PROBE_PADDING: usize = 255;

impl Subscriber {
    /// The video budget from this viewer's estimate, where it has one.
    pub fn budget(&self) -> Option<u64> {
        self.bwe.as_ref().map(|b| b.video_budget())
    }
}

impl Engine {
    /// Subscriber `id` negotiated transport-cc on header extension `ext`: estimate its path.
    pub(super) fn enable_bwe(&mut self, id: SessionId, ext: u8, now: Instant) {
        if !(1..=14).contains(&ext) || !self.limits.viewer_bwe {
            return; // one-byte header extension ids only (RFC 8285 §4.2)
        }
        let Some(&idx) = self.by_id.get(&id) else {
            return;
        };
        if let Some(session::Role::Subscriber(sub)) =
            self.sessions.get_mut(idx).map(|s| &mut s.role)
        {
            if sub.relay {
                return;
            }
            sub.bwe = Some(Box::new(ViewerBwe {
                ext,
                bwe: Bwe::new(now),
            }));
            self.bwe_viewers.push(idx);
            if self.timers.get(Timer::Bwe).is_none() {
                self.timers.set(Timer::Bwe, now + TICK);
            }
        }
    }

    /// Every [`TICK`]: publish each viewer's estimate and layers, and probe for the next
    /// better layer where it does not fit yet.
    pub(super) fn drive_bwe(&mut self, now: Instant, out: &mut dyn Output) {
        if self.bwe_viewers.is_empty() {
            return self.timers.stop(Timer::Bwe);
        }
        self.timers.set(Timer::Bwe, now + TICK);
        let mut probes = 0u64;
        let mut carried = 0u64;
        let mut failed = 0u64;
        for i in 0..self.bwe_viewers.len() {
            let Some(&idx) = self.bwe_viewers.get(i) else {
                break;
            };
            let Some(s) = self.sessions.get_mut(idx) else {
                continue;
            };
            let session::Role::Subscriber(sub) = &mut s.role else {
                continue;
            };
            let Some(st) = self.streams.get(&sub.stream) else {
                continue;
            };
            // The rate the best layer of any layered track needs, with headroom.
            let mut want = None;
            let mut layers = [None; MAX_TRACKS];
            let mut temporal = [None; MAX_TRACKS];
            for (t, slot) in layers.iter_mut().enumerate() {
                let (Some(sel), Some(svc)) = (sub.layers.get(t), sub.svc.get(t)) else {
                    continue;
                };
                // A VP9 track's spatial layers (`svc`) or a simulcast track's layers.
                let (current, ranking) = match st.svc.get(t) {
                    Some(v) if svc.in_use() => (svc.current, v.ranking(now)),
                    _ => match st.view.get(t) {
                        Some(v) => (sel.current, v.ranking(now)),
                        None => continue,
                    },
                };
                *slot = current;
                if current.is_some_and(|l| ranking.has_temporal(l)) && !svc.in_use() {
                    temporal[t] = sel.temporal_now();
                }
                if let Some(next) = ranking.best_above(current, sel.cap) {
                    let need = next + next * UP_HEADROOM_PERCENT / 100 + AUDIO_ALLOWANCE_BPS;
                    want = Some(want.map_or(need, |w: u64| w.min(need)));
                }
            }
            // Probes go on the RTX stream of a video track the viewer receives.
            let rtx = (0..MAX_TRACKS).find_map(|t| {
                layers.get(t).copied().flatten()?;
                Some((t, sub.rtx.get(t).copied().flatten()?))
            });
            let Some(vb) = sub.bwe.as_deref_mut() else {
                continue;
            };
            match vb.bwe.take_probe_result() {
                Some(ProbeResult::Carried(_)) => carried += 1,
                Some(ProbeResult::Failed) => failed += 1,
                None => {}
            }
            let estimate = vb.bwe.estimate_bps();
            if let Some(slot) = self.stats.session(usize::from(self.worker), idx as usize) {
                slot.set_estimate(estimate, &layers);
                slot.set_temporal(&temporal);
            }
            let (Some(want), Some((track, rtx))) = (want, rtx) else {
                continue;
            };
            if !vb.bwe.probe_due(want, now) {
                continue;
            }
            probes += 1;
            send_probe(s, track, rtx, now, out);
        }
        self.count(Counter::BweProbes, probes);
        self.count(Counter::BweProbesCarried, carried);
        self.count(Counter::BweProbesFailed, failed);
    }
}

/// [`PROBE_PACKETS`] padding-only packets on the viewer's RTX stream of `track`: the
/// viewer's receiver drops them (RFC 4588 RTX without an original sequence number), but its
/// transport-cc feedback reports when each arrived.
fn send_probe(
    s: &mut session::Session,
    track: usize,
    (rtx_ssrc, rtx_pt): (u32, u8),
    now: Instant,
    out: &mut dyn Output,
) {
    let (via, local) = (s.via, s.local);
    let (Some(remote), session::Role::Subscriber(sub)) = (s.remote, &mut s.role) else {
        return;
    };
    let ts = sub.layers.get(track).map_or(0, |l| l.last_ts());
    let (Some(rtx_seq), Some(vb)) = (sub.rtx_seq.get_mut(track), sub.bwe.as_deref_mut()) else {
        return;
    };
    let Some(ctx) = s.outbound.as_mut() else {
        return;
    };
    for _ in 0..PROBE_PACKETS {
        let seq = *rtx_seq;
        let r = out.send_from(via, remote, local, &mut |buf| {
            let len = rtp::HEADER_LEN + 8 + PROBE_PADDING;
            if len + srtp::MAX_OVERHEAD > buf.len() {
                return None;
            }
            let b = buf.get_mut(..len)?;
            b.fill(0);
            // V=2, P=1, X=1; the one-byte extension block holds the transport-wide number.
            b[0] = 0xb0;
            b[1] = rtx_pt & 0x7f;
            b[2..4].copy_from_slice(&seq.to_be_bytes());
            b[4..8].copy_from_slice(&ts.to_be_bytes());
            b[8..12].copy_from_slice(&rtx_ssrc.to_be_bytes());
            b[12..14].copy_from_slice(&rtp::PROFILE_ONE_BYTE.to_be_bytes());
            b[14..16].copy_from_slice(&1u16.to_be_bytes());
            let tw = vb.bwe.on_probe_send(len + 10, now);
            b[16] = (vb.ext << 4) | 1;
            b[17..19].copy_from_slice(&tw.to_be_bytes());
            b[len - 1] = PROBE_PADDING as u8;
            seal_rtp(Some(&mut *ctx), buf, len)
        });
        if r.is_err() {
            break;
        }
        *rtx_seq = seq.wrapping_add(1);
    }
}
