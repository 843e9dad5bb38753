//! Per-viewer bandwidth estimation, sans-IO: the node numbers what it sends a WebRTC viewer
//! with transport-wide sequence numbers ([`Bwe::on_send`]), reads the viewer's transport-cc
//! feedback ([`Bwe::on_feedback`], or REMB where that is all a client sends) and estimates
//! what the path to the viewer carries, in the spirit of GCC (draft-ietf-rmcat-gcc-02): a
//! delay-based rate from the trend of one-way delay ([`delay`]) driving an AIMD controller,
//! bounded by a loss-based rate ([`rate`]). The engine picks each viewer's simulcast layers
//! to fit the estimate, and asks for probes ([`Bwe::probe_due`]) when a better layer does
//! not fit yet: a short burst of padding whose dispersion at the receiver shows whether the
//! path has room (a viewer's traffic alone never shows more than it already carries).
//!
//! Time is an input: every method takes `now`, so the tests run a simulated bottleneck in
//! virtual time. Nothing is allocated after [`Bwe::new`].

pub mod delay;
pub mod history;
pub mod rate;
pub mod viewer;

use std::time::{Duration, Instant};

use switchyard_shared::packet::twcc::Feedback;

use delay::{Delay, Signal};
use history::History;
use rate::{Acked, Aimd, Loss};

/// Where an estimate starts: what libwebrtc starts a call at, enough for a low simulcast layer.
pub const START_BPS: f64 = 300_000.0;
/// Packets in a probe cluster.
pub const PROBE_PACKETS: u16 = 16;
/// Probes for a layer that did not fit are repeated this often at first, then less often
/// (doubling up to [`PROBE_MAX_INTERVAL`]) while they keep failing: a path that opens up
/// again is found within that, at the cost of a 4.5 kB burst that often.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const PROBE_MAX_INTERVAL: Duration = Duration::from_secs(6);
/// A probe whose feedback has not come by then is given up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, Default)]
struct Cluster {
    id: u16,
    target_bps: f64,
    sent: u16,
    started: Option<Instant>,
    acked: u16,
    lost: u16,
    first_arrival: i64,
    last_arrival: i64,
    /// Bytes received, except the first packet to arrive (dispersion counts what came
    /// after it).
    bytes: u64,
}

/// What a finished probe found, for counters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProbeResult {
    /// The path carried this much (capped at what was asked for).
    Carried(f64),
    /// Too much of it was lost, or no feedback came.
    Failed,
}

pub struct Bwe {
    epoch: Instant,
    history: History,
    delay: Delay,
    aimd: Aimd,
    loss: Loss,
    acked: Acked,
    remb: Option<f64>,
    twcc: bool,
    last_arrival: i64,
    next_cluster: u16,
    cluster: Option<Cluster>,
    probe_at: Option<Instant>,
    probe_backoff: Duration,
    /// The last probe's outcome, taken by [`Bwe::take_probe_result`].
    result: Option<ProbeResult>,
}

impl Bwe {
    pub fn new(now: Instant) -> Self {
        Bwe {
            epoch: now,
            history: History::default(),
            delay: Delay::default(),
            aimd: Aimd::new(START_BPS),
            loss: Loss::new(START_BPS),
            acked: Acked::default(),
            remb: None,
            twcc: false,
            last_arrival: 0,
            next_cluster: 1,
            cluster: None,
            probe_at: None,
            probe_backoff: PROBE_INTERVAL,
            result: None,
        }
    }

    fn us(&self, at: Instant) -> i64 {
        at.saturating_duration_since(self.epoch).as_micros() as i64
    }

    /// The estimate in bits per second: the delay-based rate under the loss-based bound,
    /// or the viewer's REMB where it sends no transport-cc.
    pub fn estimate_bps(&self) -> u64 {
        let bps = match (self.twcc, self.remb) {
            (false, Some(remb)) => remb,
            _ => self.aimd.bps.min(self.loss.bps),
        };
        bps as u64
    }

    /// The loss fraction of the last full window, and the delay trend (for the API).
    pub fn loss_fraction(&self) -> f64 {
        self.loss.fraction
    }

    /// A media packet of `size` bytes goes out now: the transport-wide sequence number to
    /// put on it.
    pub fn on_send(&mut self, size: usize, now: Instant) -> u16 {
        let at = self.us(now);
        self.history.push(size, at, 0)
    }

    /// A packet of the probe [`Bwe::probe_due`] started goes out now.
    pub fn on_probe_send(&mut self, size: usize, now: Instant) -> u16 {
        let at = self.us(now);
        let id = match self.cluster.as_mut() {
            Some(c) => {
                c.sent += 1;
                c.id
            }
            None => 0,
        };
        self.history.push(size, at, id)
    }

    /// The viewer's REMB (goog-remb): used as the estimate when it sends no transport-cc.
    pub fn on_remb(&mut self, bps: u64) {
        self.remb = Some(bps as f64);
    }

    /// A transport-cc feedback from the viewer arrived at `now`.
    pub fn on_feedback(&mut self, fb: &Feedback, now: Instant) {
        self.twcc = true;
        let now_us = self.us(now);
        let mut last_arrival = None;
        for status in fb.statuses() {
            let Ok(status) = status else { break };
            let Some(sent) = self.history.ack(status.seq) else {
                continue;
            };
            self.loss.on_packet(status.arrival_us.is_some(), now_us);
            let cluster = self
                .cluster
                .as_mut()
                .filter(|c| sent.cluster != 0 && c.id == sent.cluster);
            let Some(arrival) = status.arrival_us else {
                if let Some(c) = cluster {
                    c.lost += 1;
                }
                continue;
            };
            if let Some(c) = cluster {
                if c.acked == 0 {
                    c.first_arrival = arrival;
                    c.last_arrival = arrival;
                } else {
                    c.first_arrival = c.first_arrival.min(arrival);
                    c.last_arrival = c.last_arrival.max(arrival);
                    c.bytes += u64::from(sent.size);
                }
                c.acked += 1;
            }
            self.acked.on_packet(sent.size, arrival);
            self.delay.on_packet(sent.at_us, arrival);
            last_arrival = Some(arrival);
        }
        if let Some(a) = last_arrival {
            self.last_arrival = a;
            let acked = self.acked.bps(a);
            self.aimd.update(self.delay.signal(), acked, now_us);
            self.loss.follow(self.aimd.bps);
        }
        self.finish_probe(now);
    }

    /// Whether to probe now for a rate of `want_bps` (the next better layer with headroom):
    /// only while the estimate is below it, no probe is out, and not sooner than the
    /// back-off since the last. Starts one; send [`PROBE_PACKETS`] padding packets through
    /// [`Bwe::on_probe_send`].
    pub fn probe_due(&mut self, want_bps: u64, now: Instant) -> bool {
        self.finish_probe(now);
        if self.cluster.is_some() || self.estimate_bps() >= want_bps || !self.twcc {
            return false;
        }
        if self.probe_at.is_some_and(|at| now < at) {
            return false;
        }
        if self.delay.signal() == Signal::Overuse {
            return false;
        }
        let id = self.next_cluster;
        self.next_cluster = self.next_cluster.wrapping_add(1).max(1);
        self.cluster = Some(Cluster {
            id,
            target_bps: want_bps as f64,
            started: Some(now),
            ..Cluster::default()
        });
        self.probe_at = Some(now + self.probe_backoff);
        true
    }

    fn finish_probe(&mut self, now: Instant) {
        let Some(c) = self.cluster else { return };
        let answered = c.acked + c.lost;
        let timed_out = c
            .started
            .is_some_and(|s| now.saturating_duration_since(s) > PROBE_TIMEOUT);
        // Done when (nearly) all of it is reported, or it is late.
        if c.sent == 0 || (answered < c.sent.saturating_sub(1) && !timed_out) {
            if timed_out {
                self.cluster = None;
            }
            return;
        }
        self.cluster = None;
        let span = c.last_arrival - c.first_arrival;
        let failed = c.acked < 3 || u32::from(c.lost) * 5 > u32::from(c.sent);
        let result = if failed {
            ProbeResult::Failed
        } else {
            // Dispersion: what arrived after the first, over the time it took. Feedback
            // times are in 250 µs steps; a span under one step means no measurable queue.
            let carried = if span < 250 {
                c.target_bps
            } else {
                (c.bytes as f64 * 8.0 * 1e6 / span as f64).min(c.target_bps)
            };
            ProbeResult::Carried(carried)
        };
        match result {
            ProbeResult::Carried(bps) if bps >= 0.9 * c.target_bps => {
                self.probe_backoff = PROBE_INTERVAL;
                self.aimd.probed(bps, self.delay.signal());
                self.loss.bps = self.loss.bps.max(bps);
            }
            ProbeResult::Carried(bps) => {
                // The path has room for `bps` only: take what it showed, probe again later.
                self.aimd.probed(bps, self.delay.signal());
                self.probe_backoff = (self.probe_backoff * 2).min(PROBE_MAX_INTERVAL);
            }
            ProbeResult::Failed => {
                self.probe_backoff = (self.probe_backoff * 2).min(PROBE_MAX_INTERVAL);
            }
        }
        self.probe_at = Some(now + self.probe_backoff);
        self.result = Some(result);
    }

    /// The outcome of the last probe that finished, once.
    pub fn take_probe_result(&mut self) -> Option<ProbeResult> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests;
