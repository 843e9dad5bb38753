//! What a run did over time: per-slot (one second, longer for runs past an hour) counts of
//! packets sent, copies received and their latency, written by the send and receive threads
//! as packets go and read while they run (the progress line) and at the end (the report's
//! `timeline`, the HTML report's plots).
//!
//! Each writing thread owns a [`Lane`]; a lane has one writer, so its counters are bumped
//! with a relaxed load and store (no locked instruction on the receive path) and readers
//! sum the lanes. Counts are keyed two ways: copies by the *send* time of the packet they
//! carry (so a slot's loss compares like with like: what was sent in it and what of that
//! arrived, whenever), and arrivals and their latency by the *receive* time (throughput out).
//!
//! Latency per slot is kept in [`LATENCY_BUCKETS`] log-linear buckets (8 per power of two,
//! 12.5 % wide), enough for a progress line and a plot; the report's percentiles come from
//! the run's HDR histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Exact buckets below 16 µs, then 8 per power of two up to 2^26 µs (67 s, above the
/// bench's 60 s latency bound).
pub const LATENCY_BUCKETS: usize = 16 + 8 * 22;
/// Slots a timeline holds at most; a longer run gets longer slots. An hour of one-second
/// slots is 5.6 MB per lane.
pub const MAX_SLOTS: usize = 3600;
const NS_PER_S: u64 = 1_000_000_000;

/// The bucket of a latency in µs.
pub fn bucket(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (e - 3)) & 7) as usize;
    (16 + (e - 4) * 8 + sub).min(LATENCY_BUCKETS - 1)
}

/// The largest latency (µs) bucket `i` holds.
pub fn bucket_high(i: usize) -> u64 {
    if i < 16 {
        return i as u64;
    }
    let e = (i - 16) / 8 + 4;
    let sub = ((i - 16) % 8) as u64;
    ((8 + sub + 1) << (e - 3)) - 1
}

/// Counters of one writing thread.
#[derive(Debug)]
pub struct Lane {
    origin_ns: u64,
    slot_ns: u64,
    /// Publisher packets sent, by send slot.
    sent: Box<[AtomicU64]>,
    /// Copies received, by the send slot of the packet.
    received: Box<[AtomicU64]>,
    /// Copies received, by receive slot.
    arrived: Box<[AtomicU64]>,
    /// `slot * LATENCY_BUCKETS + bucket`, by receive slot.
    latency: Box<[AtomicU64]>,
}

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

/// One writer per lane: a plain load and store is enough and keeps `lock` prefixes off the
/// hot path.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

impl Lane {
    fn new(origin_ns: u64, slot_ns: u64, slots: usize) -> Lane {
        Lane {
            origin_ns,
            slot_ns,
            sent: counters(slots),
            received: counters(slots),
            arrived: counters(slots),
            latency: counters(slots * LATENCY_BUCKETS),
        }
    }

    fn slot(&self, ns: u64) -> usize {
        let i = ns.saturating_sub(self.origin_ns) / self.slot_ns;
        (i as usize).min(self.sent.len() - 1)
    }

    /// A publisher packet stamped `send_ns` left.
    pub fn sent(&self, send_ns: u64) {
        bump(&self.sent[self.slot(send_ns)], 1);
    }

    /// A publisher packet stamped `send_ns` left that `copies` subscribers expect: a
    /// simulcast layer's, with [`Timeline::set_fanout`] at 1 (each layer has its own
    /// audience).
    pub fn sent_copies(&self, send_ns: u64, copies: u64) {
        bump(&self.sent[self.slot(send_ns)], copies);
    }

    /// A subscriber received (and verified) a copy of the packet stamped `send_ns`.
    pub fn received(&self, send_ns: u64, recv_ns: u64) {
        bump(&self.received[self.slot(send_ns)], 1);
        let r = self.slot(recv_ns);
        bump(&self.arrived[r], 1);
        let us = recv_ns.saturating_sub(send_ns) / 1000;
        bump(&self.latency[r * LATENCY_BUCKETS + bucket(us)], 1);
    }
}

/// The run's lanes and clock.
#[derive(Debug)]
pub struct Timeline {
    origin_ns: u64,
    slot_ns: u64,
    slots: usize,
    /// Copies each publisher packet should reach (subscribers of all groups per publisher),
    /// as f64 bits; set once the subscribers are known.
    fanout: AtomicU64,
    lanes: Mutex<Vec<Arc<Lane>>>,
}

/// Every lane's counts for one slot.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotCounts {
    pub sent: u64,
    pub received: u64,
    pub arrived: u64,
    pub latency: Vec<u64>,
}

impl Timeline {
    /// A timeline from `origin_ns` (CLOCK_MONOTONIC, the first packet's deadline) covering
    /// `span_ns`; later stamps count in the last slot.
    pub fn new(origin_ns: u64, span_ns: u64) -> Arc<Timeline> {
        let seconds = span_ns.div_ceil(NS_PER_S).max(1);
        let slot_ns = NS_PER_S * seconds.div_ceil(MAX_SLOTS as u64);
        let slots = span_ns.div_ceil(slot_ns).max(1) as usize + 1;
        Arc::new(Timeline {
            origin_ns,
            slot_ns,
            slots,
            fanout: AtomicU64::new(0f64.to_bits()),
            lanes: Mutex::new(Vec::new()),
        })
    }

    /// A new lane for one writing thread.
    pub fn lane(&self) -> Arc<Lane> {
        let lane = Arc::new(Lane::new(self.origin_ns, self.slot_ns, self.slots));
        self.lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lane.clone());
        lane
    }

    pub fn set_fanout(&self, copies_per_packet: f64) {
        self.fanout
            .store(copies_per_packet.to_bits(), Ordering::Relaxed);
    }

    pub fn fanout(&self) -> f64 {
        f64::from_bits(self.fanout.load(Ordering::Relaxed))
    }

    pub fn origin_ns(&self) -> u64 {
        self.origin_ns
    }

    pub fn slot_s(&self) -> f64 {
        self.slot_ns as f64 / 1e9
    }

    /// The slot `ns` falls in (the last one for anything later).
    pub fn slot_of(&self, ns: u64) -> usize {
        ((ns.saturating_sub(self.origin_ns) / self.slot_ns) as usize).min(self.slots - 1)
    }

    /// Every slot's counts summed over the lanes, as they are now.
    pub fn counts(&self) -> Vec<SlotCounts> {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        (0..self.slots)
            .map(|i| {
                let mut c = SlotCounts {
                    sent: 0,
                    received: 0,
                    arrived: 0,
                    latency: vec![0; LATENCY_BUCKETS],
                };
                for l in lanes.iter() {
                    c.sent += l.sent[i].load(Ordering::Relaxed);
                    c.received += l.received[i].load(Ordering::Relaxed);
                    c.arrived += l.arrived[i].load(Ordering::Relaxed);
                    for (b, v) in c.latency.iter_mut().enumerate() {
                        *v += l.latency[i * LATENCY_BUCKETS + b].load(Ordering::Relaxed);
                    }
                }
                c
            })
            .collect()
    }

    /// The report's view: one entry per slot that starts before `end_ns` (the end of the
    /// sending), the last one as long as it lasted. Copies that arrive later (the drain)
    /// still count as received in their send slot.
    pub fn report(&self, end_ns: u64) -> Vec<Slot> {
        let fanout = self.fanout();
        let counts = self.counts();
        let span = end_ns.saturating_sub(self.origin_ns);
        let used = (span.div_ceil(self.slot_ns) as usize).min(counts.len());
        counts[..used]
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let from = i as u64 * self.slot_ns;
                let duration_s = (span - from).min(self.slot_ns) as f64 / 1e9;
                let expected = (c.sent as f64 * fanout).round() as u64;
                Slot {
                    t_s: from as f64 / 1e9,
                    duration_s,
                    sent: c.sent,
                    expected,
                    received: c.received,
                    loss_ratio: loss(expected, c.received),
                    in_pps: c.sent as f64 / duration_s,
                    out_pps: c.arrived as f64 / duration_s,
                    latency_us: LatencyBuckets(&c.latency).summary(),
                }
            })
            .collect()
    }
}

/// `1 − received / expected`, or `None` when nothing was expected; never below zero (a
/// copy counted in a neighbouring slot).
pub fn loss(expected: u64, received: u64) -> Option<f64> {
    (expected > 0).then(|| expected.saturating_sub(received) as f64 / expected as f64)
}

/// Percentiles of one slot's (or several slots') latency buckets, each the upper bound of
/// its bucket (12.5 % resolution).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlotLatency {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// Bucket counts, summed over slots by the caller.
#[derive(Debug)]
pub struct LatencyBuckets<'a>(pub &'a [u64]);

impl LatencyBuckets<'_> {
    pub fn summary(&self) -> Option<SlotLatency> {
        let total: u64 = self.0.iter().sum();
        if total == 0 {
            return None;
        }
        let at = |q: f64| {
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, &n) in self.0.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return bucket_high(i);
                }
            }
            bucket_high(self.0.len() - 1)
        };
        let max = self.0.iter().rposition(|&n| n > 0).map_or(0, bucket_high);
        Some(SlotLatency {
            p50: at(0.5),
            p99: at(0.99),
            max,
        })
    }
}

/// One slot of the report's `timeline`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slot {
    /// Start of the slot, seconds after the first packet was due (the warm-up included).
    pub t_s: f64,
    /// Its length: the slot's, or less for the last one (up to the end of the sending).
    pub duration_s: f64,
    /// Publisher packets sent in the slot.
    pub sent: u64,
    /// Copies of them the subscribers should get: `sent` × subscribers per publisher.
    pub expected: u64,
    /// Copies of them the subscribers got (whenever they arrived).
    pub received: u64,
    /// `1 − received / expected`; `None` when nothing was sent.
    pub loss_ratio: Option<f64>,
    /// Publisher packets per second sent.
    pub in_pps: f64,
    /// Copies per second that arrived in the slot (by arrival time).
    pub out_pps: f64,
    /// Latency of the copies that arrived in the slot, µs (bucket upper bounds).
    pub latency_us: Option<SlotLatency>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_hold_their_values() {
        let mut prev_high = None;
        for i in 0..LATENCY_BUCKETS {
            let high = bucket_high(i);
            if let Some(p) = prev_high {
                assert_eq!(bucket(p + 1), i, "value {} opens bucket {i}", p + 1);
            }
            assert_eq!(bucket(high), i, "bucket {i} holds its upper bound {high}");
            prev_high = Some(high);
        }
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(17), 16);
        assert_eq!(bucket(u64::MAX), LATENCY_BUCKETS - 1);
        assert!(bucket_high(LATENCY_BUCKETS - 1) >= 60_000_000);
        // 12.5 % wide at most above the exact range.
        for i in 17..LATENCY_BUCKETS {
            let (lo, hi) = (bucket_high(i - 1) + 1, bucket_high(i));
            assert!(
                (hi - lo) as f64 / lo as f64 <= 0.125,
                "bucket {i}: {lo}..={hi}"
            );
        }
    }

    #[test]
    fn slots_count_by_send_and_arrival_time_and_sum_the_lanes() {
        let t = Timeline::new(1_000 * NS_PER_S, 3 * NS_PER_S);
        t.set_fanout(2.0);
        let sender = t.lane();
        let (a, b) = (t.lane(), t.lane());
        let at = |s: f64| 1_000 * NS_PER_S + (s * 1e9) as u64;
        for i in 0..10 {
            sender.sent(at(0.1 * f64::from(i)));
        }
        sender.sent(at(1.5));
        // Each of the first ten reaches both subscribers 200 µs later, but one copy of the
        // last packet of slot 0 arrives in slot 1.
        for i in 0..10 {
            let s = at(0.1 * f64::from(i));
            a.received(s, s + 200_000);
            if i < 9 {
                b.received(s, s + 200_000);
            }
        }
        b.received(at(0.95), at(1.05));
        let r = t.report(at(1.5));
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!((r[0].duration_s, r[1].duration_s), (1.0, 0.5));
        assert_eq!((r[0].sent, r[0].expected, r[0].received), (10, 20, 20));
        assert_eq!(r[0].loss_ratio, Some(0.0));
        assert_eq!((r[0].out_pps, r[1].out_pps), (19.0, 2.0));
        assert_eq!((r[0].in_pps, r[1].in_pps), (10.0, 2.0));
        assert_eq!((r[1].sent, r[1].expected, r[1].received), (1, 2, 0));
        assert_eq!(r[1].loss_ratio, Some(1.0));
        let l = r[0].latency_us.expect("latency");
        assert!(l.p50 >= 200 && l.p50 <= 225, "{l:?}");
        assert_eq!(
            r[1].latency_us.map(|l| l.max),
            Some(bucket_high(bucket(100_000)))
        );
        // Stamps past the span count in the last slot.
        assert_eq!(t.slot_of(at(100.0)), 3);
    }

    #[test]
    fn a_long_run_gets_longer_slots() {
        let t = Timeline::new(0, 7200 * NS_PER_S);
        assert_eq!(t.slot_s(), 2.0);
        assert!(t.slots <= MAX_SLOTS + 1);
        let t = Timeline::new(0, 12 * NS_PER_S);
        assert_eq!((t.slot_s(), t.slots), (1.0, 13));
    }

    #[test]
    fn percentiles_of_buckets() {
        let mut b = vec![0u64; LATENCY_BUCKETS];
        b[bucket(100)] = 98;
        b[bucket(5000)] = 2;
        let s = LatencyBuckets(&b).summary().expect("some");
        assert_eq!(s.p50, bucket_high(bucket(100)));
        assert_eq!(s.p99, bucket_high(bucket(5000)));
        assert_eq!(s.max, bucket_high(bucket(5000)));
        assert_eq!(LatencyBuckets(&[0; 4]).summary(), None);
    }
}
