//! A token bucket in bytes: how fast a burst the node makes itself (a late joiner's replay,
//! `prime`) goes out, so a viewer's path is not handed half a megabyte at once and made to
//! drop what the burst was meant to repair.
//!
//! Sans-IO: it is told the time and answers whether a packet may go and, if not, when.

use std::time::{Duration, Instant};

/// The bucket holds at most this long's worth of the rate: packets go in runs of a few
/// milliseconds, not one timer wake-up each.
pub const BURST: Duration = Duration::from_millis(5);

/// It always holds at least this many bytes (two full packets), so a low rate still lets a
/// whole packet through.
const MIN_BURST: u64 = 3000;

/// The shortest wait it asks for: below a millisecond the timer costs more than it buys.
const MIN_WAIT: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    /// Bytes per second.
    rate: u64,
    /// Bytes it may send now, at most `burst`.
    tokens: u64,
    burst: u64,
    last: Instant,
}

impl Pacer {
    /// A full bucket at `now` for `rate` bytes per second (at least 1).
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1);
        let burst = (rate * BURST.as_micros() as u64 / 1_000_000).max(MIN_BURST);
        Self {
            rate,
            tokens: burst,
            burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last);
        let add = (u128::from(self.rate) * dt.as_nanos() / 1_000_000_000) as u64;
        if add > 0 {
            self.tokens = (self.tokens + add).min(self.burst);
            // Only the time that bought whole bytes is spent, so slow rates still add up.
            let used = Duration::from_nanos(
                (u128::from(add) * 1_000_000_000 / u128::from(self.rate)) as u64,
            );
            self.last = if self.tokens == self.burst {
                now
            } else {
                self.last + used
            };
        }
    }

    /// Take `n` bytes at `now` if the bucket has them.
    pub fn take(&mut self, n: usize, now: Instant) -> bool {
        self.refill(now);
        let n = (n as u64).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// When `n` bytes will be there, at least [`MIN_WAIT`] after `now`.
    pub fn ready_at(&mut self, n: usize, now: Instant) -> Instant {
        self.refill(now);
        let missing = (n as u64).min(self.burst).saturating_sub(self.tokens);
        let wait = Duration::from_nanos(
            (u128::from(missing) * 1_000_000_000 / u128::from(self.rate)) as u64,
        );
        now + wait.max(MIN_WAIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_lets_one_burst_through_then_the_rate() {
        let t0 = crate::testing::t0();
        // 1 MB/s (8 Mbit/s): a 5 ms burst is 5,000 bytes.
        let mut p = Pacer::new(1_000_000, t0);
        let mut sent = 0;
        while p.take(1200, t0) {
            sent += 1;
        }
        assert_eq!(sent, 4, "5,000 bytes of 1,200-byte packets");
        let at = p.ready_at(1200, t0);
        assert!(
            at > t0 && at <= t0 + Duration::from_millis(2),
            "{:?}",
            at - t0
        );
        // Over one second at that rate: about 1,000,000 bytes, never a second burst on top.
        let mut bytes = 4 * 1200;
        let mut now = t0;
        while now < t0 + Duration::from_secs(1) {
            now = p.ready_at(1200, now);
            while p.take(1200, now) {
                bytes += 1200;
            }
        }
        assert!(
            (995_000..=1_012_000).contains(&bytes),
            "{bytes} bytes in a second at 1 MB/s"
        );
    }

    #[test]
    fn a_low_rate_still_passes_whole_packets_and_an_idle_bucket_stays_bounded() {
        let t0 = crate::testing::t0();
        let mut p = Pacer::new(10_000, t0);
        assert!(p.take(1500, t0) && p.take(1500, t0));
        assert!(!p.take(1500, t0));
        let at = p.ready_at(1500, t0);
        assert_eq!(at - t0, Duration::from_millis(150));
        assert!(p.take(1500, at));
        // An hour idle fills the bucket, not more.
        let later = t0 + Duration::from_secs(3600);
        let mut n = 0;
        while p.take(1500, later) {
            n += 1;
        }
        assert_eq!(n, 2);
        // A packet larger than the bucket still goes once it is full.
        let mut q = Pacer::new(1, t0);
        assert!(q.take(9000, t0));
    }
}
