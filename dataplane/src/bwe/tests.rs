//! The estimator against a simulated bottleneck in virtual time: a FIFO link of a given
//! capacity with a drop-tail queue and 20 ms one-way delay, a viewer sending transport-cc
//! feedback every 100 ms, and a sender that picks one of three simulcast layers to fit the
//! estimate (as the engine does) and probes when the next layer does not fit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use switchyard_shared::packet::{rtcp, twcc};

use super::*;

/// Layer bitrates of a typical three-layer VP8 simulcast (320x180, 640x360, 1280x720).
const LAYERS: [u64; 3] = [150_000, 500_000, 1_700_000];
const AUDIO_BPS: u64 = 50_000;

struct Link {
    capacity_bps: f64,
    /// Longest a packet may wait in the queue before it is dropped (drop-tail).
    queue_limit_us: i64,
    free_at_us: i64,
}

impl Link {
    /// When a packet of `size` sent at `t_us` arrives, or `None` if the queue drops it.
    fn carry(&mut self, size: usize, t_us: i64) -> Option<i64> {
        let start = self.free_at_us.max(t_us);
        if start - t_us > self.queue_limit_us {
            return None;
        }
        let done = start + (size as f64 * 8.0 * 1e6 / self.capacity_bps) as i64;
        self.free_at_us = done;
        Some(done + 20_000)
    }
}

/// The layer the estimate fits, the same rule as the engine (`layers::TrackView::fit`).
fn layer_for(estimate: u64, current: usize) -> usize {
    let budget = estimate.saturating_sub(AUDIO_BPS);
    let mut pick = 0;
    for (i, &rate) in LAYERS.iter().enumerate() {
        // Staying on a layer needs it to fit; moving up needs 15 % headroom.
        let need = if i <= current {
            rate
        } else {
            rate + rate * 15 / 100
        };
        if need <= budget {
            pick = i;
        }
    }
    pick
}

struct Sim {
    bwe: Bwe,
    link: Link,
    t0: Instant,
    /// (seq, arrival µs on the receiver's clock) not yet in a feedback.
    pending: Vec<(u16, Option<i64>)>,
    feedback: VecDeque<(i64, Vec<u8>)>,
    layer: usize,
    count: u8,
    /// (time ms, estimate, layer) every 100 ms.
    trace: Vec<(i64, u64, usize)>,
    lost: u32,
    sent: u32,
}

impl Sim {
    fn new(capacity_bps: f64) -> Self {
        let t0 = Instant::now();
        Sim {
            bwe: Bwe::new(t0),
            link: Link {
                capacity_bps,
                queue_limit_us: 300_000,
                free_at_us: 0,
            },
            t0,
            pending: Vec::new(),
            feedback: VecDeque::new(),
            layer: 0,
            count: 0,
            trace: Vec::new(),
            lost: 0,
            sent: 0,
        }
    }

    fn at(&self, ms: i64) -> Instant {
        self.t0 + Duration::from_millis(ms as u64)
    }

    fn send(&mut self, size: usize, ms: i64, probe: bool) {
        let now = self.at(ms);
        let seq = if probe {
            self.bwe.on_probe_send(size, now)
        } else {
            self.bwe.on_send(size, now)
        };
        self.sent += 1;
        // The receiver's clock is offset from ours: only differences may matter.
        let arrival = self.link.carry(size, ms * 1000).map(|a| a + 7_654_321);
        if arrival.is_none() {
            self.lost += 1;
        }
        self.pending.push((seq, arrival));
    }

    fn run(&mut self, from_ms: i64, to_ms: i64) {
        for ms in from_ms..to_ms {
            let now = self.at(ms);
            while self.feedback.front().is_some_and(|f| f.0 <= ms) {
                let Some((_, wire)) = self.feedback.pop_front() else {
                    break;
                };
                for p in rtcp::compound(&wire) {
                    if let Ok(rtcp::Packet::TransportCc { fci, .. }) = p {
                        let fb = twcc::Feedback::parse(fci).expect("our own feedback parses");
                        self.bwe.on_feedback(&fb, now);
                    }
                }
            }
            if ms % 33 == 0 {
                // A frame of the current layer (keyframes aside), as ~1,200-byte packets.
                let bytes = (LAYERS[self.layer] / 8 / 30) as usize;
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(1_200);
                    self.send(n + 40, ms, false);
                    left -= n;
                }
            }
            if ms % 20 == 0 {
                self.send((AUDIO_BPS / 8 / 50) as usize, ms, false);
            }
            if ms % 100 == 0 {
                self.write_feedback(ms);
                let est = self.bwe.estimate_bps();
                self.layer = layer_for(est, self.layer);
                // Probes ask for the top layer (as the engine's do).
                if self.layer + 1 < LAYERS.len() {
                    let top = LAYERS[LAYERS.len() - 1];
                    let want = top + top * 15 / 100 + AUDIO_BPS;
                    if self.bwe.probe_due(want, now) {
                        for _ in 0..PROBE_PACKETS {
                            self.send(275, ms, true);
                        }
                    }
                }
                self.trace.push((ms, est, self.layer));
            }
        }
    }

    fn write_feedback(&mut self, ms: i64) {
        // Statuses from the first packet that arrived, in sequence order.
        self.pending.sort_by_key(|p| p.0);
        let Some(start) = self.pending.iter().position(|p| p.1.is_some()) else {
            return;
        };
        let arrivals: Vec<Option<i64>> = self.pending[start..].iter().map(|p| p.1).collect();
        let base = self.pending[start].0;
        // Packets still on the wire are reported in the next feedback.
        let now_rx = ms * 1000 + 7_654_321;
        let cut = arrivals
            .iter()
            .rposition(|a| a.is_some_and(|a| a <= now_rx))
            .map_or(0, |i| i + 1);
        if cut == 0 {
            return;
        }
        let mut wire = vec![0u8; twcc::MAX_LEN];
        let n = twcc::write(
            &mut wire,
            1,
            2,
            base,
            self.count,
            &arrivals[..cut.min(twcc::MAX_STATUSES)],
        )
        .expect("feedback");
        wire.truncate(n);
        self.count = self.count.wrapping_add(1);
        let described = cut.min(twcc::MAX_STATUSES);
        self.pending.drain(..start + described);
        self.feedback.push_back((ms + 20, wire));
    }

    fn estimate_at(&self, ms: i64) -> u64 {
        self.trace
            .iter()
            .rev()
            .find(|t| t.0 <= ms)
            .map_or(0, |t| t.1)
    }

    fn layer_at(&self, ms: i64) -> usize {
        self.trace
            .iter()
            .rev()
            .find(|t| t.0 <= ms)
            .map_or(0, |t| t.2)
    }
}

#[test]
fn an_open_path_climbs_to_the_top_layer_by_probing() {
    let mut s = Sim::new(20_000_000.0);
    s.run(0, 15_000);
    assert_eq!(s.layer_at(15_000), 2, "trace: {:?}", s.trace);
    assert!(s.estimate_at(15_000) >= 1_900_000);
    assert_eq!(s.lost, 0);
}

#[test]
fn a_400_kbit_path_settles_on_the_low_layer_and_climbs_back_when_it_opens() {
    let mut s = Sim::new(20_000_000.0);
    s.run(0, 10_000);
    assert_eq!(s.layer_at(10_000), 2, "trace: {:?}", s.trace);
    s.link.capacity_bps = 400_000.0;
    s.run(10_000, 20_000);
    // Within 10 s of the cap the viewer is on the layer that fits and stays there.
    let settled = (12_000..20_000)
        .step_by(100)
        .find(|&ms| (ms..20_000).step_by(100).all(|m| s.layer_at(m) == 0));
    assert!(settled.is_some(), "trace: {:?}", &s.trace[100..]);
    let est = s.estimate_at(20_000);
    assert!((150_000..=600_000).contains(&est), "estimate {est}");
    s.link.capacity_bps = 20_000_000.0;
    s.run(20_000, 35_000);
    assert_eq!(s.layer_at(35_000), 2, "climbs back: {:?}", &s.trace[200..]);
}

#[test]
fn a_2_mbit_path_gets_the_middle_layer_without_standing_loss() {
    let mut s = Sim::new(1_200_000.0);
    s.run(0, 30_000);
    let layers: Vec<usize> = (20_000..30_000)
        .step_by(100)
        .map(|m| s.layer_at(m))
        .collect();
    assert!(
        layers.iter().filter(|&&l| l == 1).count() * 10 >= layers.len() * 8,
        "{layers:?}"
    );
    assert!(layers.iter().all(|&l| l < 2));
}

#[test]
fn remb_is_the_estimate_without_transport_cc() {
    let mut b = Bwe::new(Instant::now());
    b.on_remb(777_000);
    assert_eq!(b.estimate_bps(), 777_000);
}
