//! Turning signals into a rate: the delay-based AIMD controller (GCC §6: multiplicative
//! increase far from the last known capacity, additive near it, decrease to 85 % of what
//! actually got through on overuse), the loss-based bound (GCC §6 of the classic send-side
//! estimate: above 10 % loss cut by half the loss, below 2 % grow 5 %), and the acked rate
//! both are tied to.

use super::delay::Signal;

/// Multiplicative increase per second far from the last capacity.
const GROWTH_PER_S: f64 = 1.08;
const BETA: f64 = 0.85;
pub const MIN_BPS: f64 = 30_000.0;
pub const MAX_BPS: f64 = 50_000_000.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Hold,
    Increase,
    Decrease,
}

pub struct Aimd {
    pub bps: f64,
    state: State,
    last_us: Option<i64>,
    /// Rate at the last decrease (the link's capacity as last seen), averaged.
    capacity: Option<f64>,
}

impl Aimd {
    pub fn new(start_bps: f64) -> Self {
        Aimd {
            bps: start_bps,
            state: State::Increase,
            last_us: None,
            capacity: None,
        }
    }

    /// Apply `signal` at `now_us` with `acked_bps` getting through (None: not known yet).
    pub fn update(&mut self, signal: Signal, acked_bps: Option<f64>, now_us: i64) {
        let dt_s = self
            .last_us
            .map_or(0.0, |l| ((now_us - l) as f64 / 1e6).clamp(0.0, 1.0));
        self.last_us = Some(now_us);
        self.state = match (signal, self.state) {
            (Signal::Overuse, _) => State::Decrease,
            (Signal::Underuse, _) => State::Hold,
            (Signal::Normal, State::Hold | State::Decrease) => State::Increase,
            (Signal::Normal, s) => s,
        };
        match self.state {
            State::Hold => {}
            State::Increase => {
                let near = self
                    .capacity
                    .is_some_and(|c| (self.bps - c).abs() < 0.15 * c);
                let increased = if near {
                    // About one 1,200-byte packet more per 100 ms response time per second.
                    self.bps + 96_000.0 * dt_s
                } else {
                    self.bps * GROWTH_PER_S.powf(dt_s)
                };
                // Never grow far above what the path has shown it carries: an increase the
                // viewer's traffic cannot confirm is a guess (probes confirm higher). The
                // limit stops growth only; it never lowers a rate a probe confirmed.
                let limit = acked_bps.map_or(f64::MAX, |a| 1.5 * a + 10_000.0);
                if self.bps < limit {
                    self.bps = increased.min(limit);
                }
            }
            State::Decrease => {
                let base = acked_bps.unwrap_or(self.bps);
                let new = (BETA * base).min(self.bps);
                self.capacity = Some(match self.capacity {
                    Some(c) if (c - base).abs() < 0.5 * c => 0.9 * c + 0.1 * base,
                    _ => base,
                });
                self.bps = new;
                self.state = State::Hold;
            }
        }
        self.bps = self.bps.clamp(MIN_BPS, MAX_BPS);
    }

    /// A probe showed the path carries `bps`: start from there (unless the delay says a
    /// queue is building right now).
    pub fn probed(&mut self, bps: f64, signal: Signal) {
        if signal != Signal::Overuse && bps > self.bps {
            self.bps = bps.min(MAX_BPS);
            self.capacity = None;
        }
    }
}

/// The loss-based bound.
pub struct Loss {
    pub bps: f64,
    lost: u32,
    total: u32,
    last_change_us: Option<i64>,
    /// The loss fraction of the last full window, for the API.
    pub fraction: f64,
}

/// Packets in a loss window: fewer say little about a rate (at 1.5 Mbit/s this is about
/// 130 ms, one or two feedbacks).
const LOSS_WINDOW: u32 = 20;

impl Loss {
    pub fn new(start_bps: f64) -> Self {
        Loss {
            bps: start_bps,
            lost: 0,
            total: 0,
            last_change_us: None,
            fraction: 0.0,
        }
    }

    pub fn on_packet(&mut self, received: bool, now_us: i64) {
        self.total += 1;
        if !received {
            self.lost += 1;
        }
        if self.total < LOSS_WINDOW {
            return;
        }
        let f = f64::from(self.lost) / f64::from(self.total);
        self.fraction = f;
        self.lost = 0;
        self.total = 0;
        let since = self.last_change_us.map_or(i64::MAX, |l| now_us - l);
        if f > 0.10 && since > 200_000 {
            self.bps = (self.bps * (1.0 - 0.5 * f)).max(MIN_BPS);
            self.last_change_us = Some(now_us);
        } else if f < 0.02 && since > 1_000_000 {
            self.bps = (self.bps * 1.05 + 1_000.0).min(MAX_BPS);
            self.last_change_us = Some(now_us);
        }
    }

    /// Low loss lets the bound follow the delay-based rate up (it only guards from above).
    pub fn follow(&mut self, bps: f64) {
        if self.fraction < 0.02 && self.bps < bps {
            self.bps = bps;
        }
    }
}

/// Bytes that got through per second, over the arrival times of the last [`SPAN_US`].
pub struct Acked {
    buckets: [(i64, u64); 8],
}

/// Short buckets over a short span: after a drop in capacity the acked rate (which a
/// decrease goes to 85 % of) must stop counting what got through before it quickly.
const BUCKET_US: i64 = 50_000;
const SPAN_US: i64 = BUCKET_US * 8;

impl Default for Acked {
    fn default() -> Self {
        Acked {
            buckets: [(i64::MIN, 0); 8],
        }
    }
}

impl Acked {
    pub fn on_packet(&mut self, size: u16, arrival_us: i64) {
        let k = arrival_us.div_euclid(BUCKET_US);
        let b = &mut self.buckets[k.rem_euclid(8) as usize];
        if b.0 != k {
            *b = (k, 0);
        }
        b.1 += u64::from(size);
    }

    /// The rate over the last span ending at `arrival_us`; `None` before half a span of data.
    pub fn bps(&self, arrival_us: i64) -> Option<f64> {
        let now = arrival_us.div_euclid(BUCKET_US);
        let mut bytes = 0u64;
        let mut oldest = now;
        for &(k, n) in &self.buckets {
            if k > now - 8 && k <= now {
                bytes += n;
                oldest = oldest.min(k);
            }
        }
        let span = (now - oldest + 1) * BUCKET_US;
        (span >= SPAN_US / 2 && bytes > 0).then(|| bytes as f64 * 8.0 * 1e6 / span as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increases_multiplicatively_then_backs_off_to_85_percent_of_acked() {
        let mut a = Aimd::new(300_000.0);
        for i in 0..=10 {
            a.update(Signal::Normal, Some(1_000_000.0), i * 100_000);
        }
        assert!(
            a.bps > 300_000.0 * 1.079 && a.bps < 300_000.0 * 1.081,
            "{}",
            a.bps
        );
        a.update(Signal::Overuse, Some(300_000.0), 1_100_000);
        assert!((a.bps - 255_000.0).abs() < 1.0, "{}", a.bps);
        // Held while the queue drains.
        a.update(Signal::Underuse, Some(300_000.0), 1_200_000);
        assert!((a.bps - 255_000.0).abs() < 1.0);
    }

    #[test]
    fn never_far_above_what_got_through() {
        let mut a = Aimd::new(100_000.0);
        for i in 0..100 {
            a.update(Signal::Normal, Some(100_000.0), i * 100_000);
        }
        assert!((a.bps - 160_000.0).abs() < 1.0, "{}", a.bps);
        // A rate above the limit (a probe's) is kept, not lowered to it.
        a.probed(300_000.0, Signal::Normal);
        a.update(Signal::Normal, Some(100_000.0), 10_100_000);
        assert_eq!(a.bps, 300_000.0);
        a.probed(2_000_000.0, Signal::Normal);
        assert_eq!(a.bps, 2_000_000.0);
    }

    #[test]
    fn loss_above_ten_percent_cuts_below_two_grows() {
        let mut l = Loss::new(1_000_000.0);
        for i in 0..20 {
            l.on_packet(i % 5 != 0, 0);
        }
        assert!((l.bps - 900_000.0).abs() < 1.0, "20 % loss: {}", l.bps);
        for i in 0..20 {
            l.on_packet(true, 2_000_000 + i);
        }
        assert!(l.bps > 900_000.0);
    }

    #[test]
    fn acked_rate_over_the_span() {
        let mut a = Acked::default();
        assert_eq!(a.bps(0), None);
        // 125 bytes every ms = 1 Mbit/s.
        for ms in 0..1_000 {
            a.on_packet(125, ms * 1_000);
        }
        let r = a.bps(999_000).expect("rate");
        assert!((r - 1_000_000.0).abs() < 20_000.0, "{r}");
    }
}
