//! When each publisher packet is due: a steady stream at `rate` packets/s plus, every
//! `keyframe_every`, a burst of extra packets all due at the same instant (a keyframe).
//!
//! Pure integer math on absolute deadlines (ns of CLOCK_MONOTONIC), so a late wake-up sends
//! the packets it missed instead of drifting, and the measured window's sequence range can
//! be computed before the run: packets are numbered in deadline order, so the packets with
//! a deadline before `t` are exactly sequences `0..count_before(t)`.

const NS: u128 = 1_000_000_000;

/// Frames per second the regular stream is cut into (marker bit on each frame's last packet).
pub const FRAME_RATE: u64 = 30;

/// Deadline schedule of one publisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacer {
    /// Deadline of regular packet 0.
    pub start_ns: u64,
    /// Regular packets per second (0 = only keyframe bursts).
    pub rate: u64,
    /// Interval between bursts in ns (0 = no bursts).
    pub burst_interval_ns: u64,
    /// Offset of the first burst after `start_ns`, so publishers' bursts do not coincide.
    pub burst_offset_ns: u64,
    /// Packets in one burst.
    pub burst_packets: u64,
}

/// Which stream a due packet belongs to, and whether it ends a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    pub deadline_ns: u64,
    pub marker: bool,
}

impl Pacer {
    /// Regular packets with a deadline strictly before `t`.
    ///
    /// Deadline of regular packet i is `start + floor(i·1e9/rate)`; it is before `t` iff
    /// `i·1e9 < d·rate` with `d = t − start`, so the count is `ceil(d·rate/1e9)`.
    pub fn regular_before(&self, t: u64) -> u64 {
        if t <= self.start_ns || self.rate == 0 {
            return 0;
        }
        let d = u128::from(t - self.start_ns);
        ((d * u128::from(self.rate)).div_ceil(NS)) as u64
    }

    /// Deadline of regular packet `i`.
    pub fn regular_deadline(&self, i: u64) -> u64 {
        if self.rate == 0 {
            return u64::MAX;
        }
        self.start_ns + (u128::from(i) * NS / u128::from(self.rate)) as u64
    }

    fn first_burst_ns(&self) -> u64 {
        self.start_ns + self.burst_offset_ns
    }

    /// Bursts with a deadline strictly before `t`.
    pub fn bursts_before(&self, t: u64) -> u64 {
        if self.burst_interval_ns == 0 || self.burst_packets == 0 || t <= self.first_burst_ns() {
            return 0;
        }
        (t - self.first_burst_ns()).div_ceil(self.burst_interval_ns)
    }

    /// Deadline of burst `j`.
    pub fn burst_deadline(&self, j: u64) -> u64 {
        if self.burst_interval_ns == 0 || self.burst_packets == 0 {
            return u64::MAX;
        }
        self.first_burst_ns()
            .saturating_add(j.saturating_mul(self.burst_interval_ns))
    }

    /// All packets (regular and burst) with a deadline strictly before `t`: the publisher
    /// sequence of the first packet due at or after `t`.
    pub fn count_before(&self, t: u64) -> u64 {
        self.regular_before(t) + self.bursts_before(t) * self.burst_packets
    }

    /// Packets per regular frame (at least 1).
    pub fn packets_per_frame(&self) -> u64 {
        (self.rate / FRAME_RATE).max(1)
    }
}

/// Walks a [`Pacer`]'s packets in deadline order; the sender owns one per publisher.
#[derive(Clone, Debug)]
pub struct Schedule {
    pacer: Pacer,
    regular: u64,
    bursts: u64,
    /// Packets of the current burst already handed out.
    in_burst: u64,
}

impl Schedule {
    pub fn new(pacer: Pacer) -> Schedule {
        Schedule {
            pacer,
            regular: 0,
            bursts: 0,
            in_burst: 0,
        }
    }

    /// Packets handed out so far: the next publisher sequence.
    pub fn sent(&self) -> u64 {
        self.regular + self.bursts * self.pacer.burst_packets + self.in_burst
    }

    /// Deadline of the next packet.
    pub fn next_deadline(&self) -> u64 {
        self.pacer
            .regular_deadline(self.regular)
            .min(self.pacer.burst_deadline(self.bursts))
    }

    /// The next packet if its deadline is at or before `now`. Ties go to the regular
    /// stream; any order among equal deadlines keeps `count_before` exact.
    pub fn next_due(&mut self, now: u64) -> Option<Due> {
        let r = self.pacer.regular_deadline(self.regular);
        let b = self.pacer.burst_deadline(self.bursts);
        if r <= b && r <= now && self.in_burst == 0 {
            self.regular += 1;
            let marker = self.regular % self.pacer.packets_per_frame() == 0;
            return Some(Due {
                deadline_ns: r,
                marker,
            });
        }
        if b <= now {
            self.in_burst += 1;
            let marker = self.in_burst == self.pacer.burst_packets;
            if marker {
                self.in_burst = 0;
                self.bursts += 1;
            }
            return Some(Due {
                deadline_ns: b,
                marker,
            });
        }
        None
    }
}

/// Packets per second for a bitrate and datagram size (at least 1).
pub fn rate_for_bitrate(bits_per_sec: u64, size: usize) -> u64 {
    (bits_per_sec / (size as u64 * 8).max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(rate: u64) -> Pacer {
        Pacer {
            start_ns: 1_000,
            rate,
            burst_interval_ns: 0,
            burst_offset_ns: 0,
            burst_packets: 0,
        }
    }

    #[test]
    fn regular_counts_are_exact() {
        let p = pacer(1000); // one per ms
        assert_eq!(p.count_before(1_000), 0);
        assert_eq!(p.count_before(1_001), 1);
        assert_eq!(p.count_before(1_000 + 1_000_000), 1);
        assert_eq!(p.count_before(1_000 + 1_000_001), 2);
        assert_eq!(p.count_before(1_000 + 1_000_000_000), 1000);
        assert_eq!(p.regular_deadline(3), 1_000 + 3_000_000);
    }

    #[test]
    fn odd_rates_do_not_drift() {
        let p = pacer(3); // 333_333_333.3 ns apart
        assert_eq!(p.count_before(1_000 + 1_000_000_000), 3);
        assert_eq!(p.count_before(1_000 + 10 * 1_000_000_000), 30);
        for i in 0..100 {
            let d = p.regular_deadline(i);
            assert_eq!(p.count_before(d), i, "packet {i}");
            assert_eq!(p.count_before(d + 1), i + 1, "packet {i}");
        }
    }

    #[test]
    fn bursts_add_packets_at_one_instant() {
        let p = Pacer {
            burst_interval_ns: 1_000_000_000,
            burst_offset_ns: 500,
            burst_packets: 10,
            ..pacer(100)
        };
        assert_eq!(p.bursts_before(1_500), 0);
        assert_eq!(p.bursts_before(1_501), 1);
        assert_eq!(p.count_before(1_501), 1 + 10);
        assert_eq!(p.bursts_before(1_000 + 500 + 1_000_000_001), 2);
    }

    #[test]
    fn schedule_matches_count_before() {
        let p = Pacer {
            burst_interval_ns: 250_000_000,
            burst_offset_ns: 1_234,
            burst_packets: 7,
            ..pacer(90)
        };
        let mut s = Schedule::new(p);
        let mut last = 0;
        let mut markers = 0;
        let end = 1_000 + 2_000_000_000;
        while s.next_deadline() < end {
            let now = s.next_deadline();
            let due = s.next_due(now).expect("due at its deadline");
            assert!(due.deadline_ns >= last, "deadline order");
            last = due.deadline_ns;
            markers += u64::from(due.marker);
            // Every packet sent so far has a deadline <= now.
            assert_eq!(s.sent(), p.count_before(now + 1).min(s.sent()));
            assert!(p.count_before(due.deadline_ns) < s.sent());
        }
        assert_eq!(s.sent(), p.count_before(end));
        // 180 regular packets in 60 frames of 3, plus 8 bursts.
        assert_eq!(markers, 60 + 8);
        assert!(s.next_due(s.next_deadline() - 1).is_none());
    }

    #[test]
    fn bitrate_to_rate() {
        assert_eq!(rate_for_bitrate(2_400_000, 1200), 250);
        assert_eq!(rate_for_bitrate(1, 1200), 1);
    }
}
