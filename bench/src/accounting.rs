//! Per-subscriber loss, reorder and jitter bookkeeping, keyed by the publisher sequence in
//! the payload (the node rewrites RTP sequence numbers, not the payload).
//!
//! Only packets inside the measured window count: publisher sequences `range.start ..
//! range.end`, the packets whose send deadline fell between the end of the warm-up and the
//! end of the run (see [`crate::pacing`]). Loss is then `expected − distinct received` for
//! that range, so warm-up traffic and late drain arrivals cannot skew it.

use std::ops::Range;

/// Sequences behind the highest one still checked for duplicates. Reordering deeper than
/// this on loopback would be a bug in the node; such late packets count as received.
const WINDOW: u64 = 128;

/// What [`SeqTracker::record`] made of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// In order (possibly after a gap).
    InOrder,
    /// Behind the highest sequence seen, filling a gap.
    Reordered,
    /// Seen before.
    Duplicate,
    /// Outside the measured range: ignored for loss, latency and jitter.
    OutOfRange,
}

/// Sequence continuity of one subscriber's stream.
#[derive(Clone, Debug)]
pub struct SeqTracker {
    range: Range<u64>,
    highest: Option<u64>,
    /// Bit i set = sequence `highest − i` was received.
    seen: u128,
    pub received: u64,
    pub reordered: u64,
    pub duplicates: u64,
}

impl SeqTracker {
    pub fn new(range: Range<u64>) -> SeqTracker {
        SeqTracker {
            range,
            highest: None,
            seen: 0,
            received: 0,
            reordered: 0,
            duplicates: 0,
        }
    }

    /// Packets the subscriber should have received in the measured range.
    pub fn expected(&self) -> u64 {
        self.range.end.saturating_sub(self.range.start)
    }

    /// Packets missing from the measured range.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// Records publisher sequence `seq`.
    pub fn record(&mut self, seq: u64) -> Arrival {
        if !self.range.contains(&seq) {
            return Arrival::OutOfRange;
        }
        let arrival = match self.highest {
            None => {
                self.highest = Some(seq);
                self.seen = 1;
                Arrival::InOrder
            }
            Some(h) if seq > h => {
                let shift = seq - h;
                self.seen = if shift >= 128 { 0 } else { self.seen << shift };
                self.seen |= 1;
                self.highest = Some(seq);
                Arrival::InOrder
            }
            Some(h) => {
                let back = h - seq;
                if back < WINDOW {
                    let bit = 1u128 << back;
                    if self.seen & bit != 0 {
                        self.duplicates += 1;
                        return Arrival::Duplicate;
                    }
                    self.seen |= bit;
                }
                self.reordered += 1;
                Arrival::Reordered
            }
        };
        self.received += 1;
        arrival
    }
}

/// RFC 3550 §6.4.1 interarrival jitter, in ns, on the send timestamps the payload carries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Jitter {
    last_transit: Option<i128>,
    jitter_ns: f64,
}

impl Jitter {
    pub fn record(&mut self, send_ns: u64, recv_ns: u64) {
        let transit = i128::from(recv_ns) - i128::from(send_ns);
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter_ns += (d - self.jitter_ns) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    pub fn ns(&self) -> f64 {
        self.jitter_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_no_loss() {
        let mut t = SeqTracker::new(10..20);
        for s in 0..30 {
            let a = t.record(s);
            assert_eq!(a == Arrival::OutOfRange, !(10..20).contains(&s));
        }
        assert_eq!(
            (t.expected(), t.received, t.lost(), t.reordered),
            (10, 10, 0, 0)
        );
    }

    #[test]
    fn gaps_are_loss_and_late_fill_is_reorder() {
        let mut t = SeqTracker::new(0..10);
        for s in [0, 1, 4, 5, 2, 9] {
            t.record(s);
        }
        assert_eq!(t.received, 6);
        assert_eq!(t.lost(), 4); // 3, 6, 7, 8
        assert_eq!(t.reordered, 1);
        assert_eq!(t.record(2), Arrival::Duplicate);
        assert_eq!(t.record(9), Arrival::Duplicate);
        assert_eq!(t.record(3), Arrival::Reordered);
        assert_eq!((t.received, t.duplicates, t.lost()), (7, 2, 3));
    }

    #[test]
    fn losing_the_first_packets_counts() {
        let mut t = SeqTracker::new(100..200);
        for s in 150..200 {
            t.record(s);
        }
        assert_eq!(t.lost(), 50);
    }

    #[test]
    fn big_jumps_clear_the_window() {
        let mut t = SeqTracker::new(0..10_000);
        t.record(0);
        t.record(5_000);
        assert_eq!(t.record(4_999), Arrival::Reordered);
        assert_eq!(t.record(4_999), Arrival::Duplicate);
        assert_eq!(t.record(1), Arrival::Reordered); // beyond the window: counted once
        assert_eq!(t.received, 4);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut j = Jitter::default();
        j.record(0, 100);
        assert_eq!(j.ns(), 0.0);
        j.record(1000, 1260); // transit 260 vs 100: D = 160
        assert!((j.ns() - 10.0).abs() < 1e-9);
        // Constant transit decays jitter.
        for i in 2..200u64 {
            j.record(i * 1000, i * 1000 + 260);
        }
        assert!(j.ns() < 0.01);
    }
}
