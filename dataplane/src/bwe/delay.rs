//! The delay signal of the estimate (in the spirit of GCC, draft-ietf-rmcat-gcc-02 §5 and
//! libwebrtc's trendline filter): packets are grouped by send time, the change in one-way
//! delay from one group to the next is accumulated, and the slope of that accumulated delay
//! over the last [`WINDOW`] groups says whether a queue is building (overuse), draining
//! (underuse) or neither. The threshold adapts, so a delay that stays high without growing
//! (a long but stable queue, another flow's traffic) is not taken for congestion forever.

/// Packets sent within this of a group's first one arrive as one burst (a frame).
const GROUP_US: i64 = 5_000;
/// Groups in the trend's linear fit.
const WINDOW: usize = 20;
/// Smoothing of the accumulated delay before the fit.
const SMOOTHING: f64 = 0.9;
/// The slope is scaled by this (and by the number of deltas, up to 60) before it is
/// compared with the threshold.
const THRESHOLD_GAIN: f64 = 4.0;
/// Overuse must last this long (ms of send time) before it is reported.
const OVERUSE_TIME_MS: f64 = 10.0;
const K_UP: f64 = 0.0087;
const K_DOWN: f64 = 0.039;

/// What the delay says about the path right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Normal,
    /// A queue is building: send less.
    Overuse,
    /// A queue is draining: hold the rate until it is gone.
    Underuse,
}

#[derive(Clone, Copy, Debug)]
struct Group {
    first_send: i64,
    last_send: i64,
    last_arrival: i64,
}

pub struct Delay {
    current: Option<Group>,
    previous: Option<Group>,
    first_arrival: Option<i64>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    /// (arrival ms since the first, smoothed accumulated delay ms), oldest first.
    window: [(f64, f64); WINDOW],
    filled: usize,
    deltas: u32,
    threshold: f64,
    last_threshold_update_ms: Option<f64>,
    overuse_ms: f64,
    overuse_count: u32,
    prev_trend: f64,
    signal: Signal,
    /// The last modified trend, for the API and tests.
    pub trend: f64,
}

impl Default for Delay {
    fn default() -> Self {
        Delay {
            current: None,
            previous: None,
            first_arrival: None,
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            window: [(0.0, 0.0); WINDOW],
            filled: 0,
            deltas: 0,
            threshold: 12.5,
            last_threshold_update_ms: None,
            overuse_ms: 0.0,
            overuse_count: 0,
            prev_trend: 0.0,
            signal: Signal::Normal,
            trend: 0.0,
        }
    }
}

impl Delay {
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// A packet sent at `send_us` arrived at `arrival_us` (receiver clock), in arrival order.
    pub fn on_packet(&mut self, send_us: i64, arrival_us: i64) {
        let Some(cur) = self.current.as_mut() else {
            self.current = Some(Group {
                first_send: send_us,
                last_send: send_us,
                last_arrival: arrival_us,
            });
            return;
        };
        if send_us < cur.first_send {
            return; // reordered from an earlier group: its delta is already taken
        }
        // Same group: sent together, or a burst that arrived together (queued behind each
        // other, which says nothing about the queue growing).
        let burst = arrival_us - cur.last_arrival < GROUP_US
            && (arrival_us - cur.last_arrival) - (send_us - cur.last_send) < 0;
        if send_us - cur.first_send <= GROUP_US || burst {
            cur.last_send = cur.last_send.max(send_us);
            cur.last_arrival = cur.last_arrival.max(arrival_us);
            return;
        }
        let done = *cur;
        self.current = Some(Group {
            first_send: send_us,
            last_send: send_us,
            last_arrival: arrival_us,
        });
        if let Some(prev) = self.previous.replace(done) {
            let send_delta = (done.last_send - prev.last_send) as f64 / 1000.0;
            let arrival_delta = (done.last_arrival - prev.last_arrival) as f64 / 1000.0;
            self.on_delta(send_delta, arrival_delta, done.last_arrival);
        }
    }

    fn on_delta(&mut self, send_ms: f64, arrival_ms: f64, arrival_us: i64) {
        let first = *self.first_arrival.get_or_insert(arrival_us);
        let now_ms = (arrival_us - first) as f64 / 1000.0;
        self.deltas = self.deltas.saturating_add(1);
        self.accumulated_ms += arrival_ms - send_ms;
        self.smoothed_ms = SMOOTHING * self.smoothed_ms + (1.0 - SMOOTHING) * self.accumulated_ms;
        if self.filled == WINDOW {
            self.window.copy_within(1.., 0);
            self.filled -= 1;
        }
        self.window[self.filled] = (now_ms, self.smoothed_ms);
        self.filled += 1;
        let trend = if self.filled == WINDOW {
            slope(&self.window).unwrap_or(self.prev_trend)
        } else {
            self.prev_trend
        };
        self.detect(trend, send_ms, now_ms);
    }

    fn detect(&mut self, trend: f64, send_ms: f64, now_ms: f64) {
        let modified = f64::from(self.deltas.min(60)) * trend * THRESHOLD_GAIN;
        self.trend = modified;
        if modified > self.threshold {
            self.overuse_ms += send_ms.max(0.0);
            self.overuse_count += 1;
            if self.overuse_ms > OVERUSE_TIME_MS
                && self.overuse_count > 1
                && trend >= self.prev_trend
            {
                self.overuse_ms = 0.0;
                self.overuse_count = 0;
                self.signal = Signal::Overuse;
            }
        } else if modified < -self.threshold {
            self.overuse_ms = 0.0;
            self.overuse_count = 0;
            self.signal = Signal::Underuse;
        } else {
            self.overuse_ms = 0.0;
            self.overuse_count = 0;
            self.signal = Signal::Normal;
        }
        self.prev_trend = trend;
        self.adapt_threshold(modified, now_ms);
    }

    fn adapt_threshold(&mut self, modified: f64, now_ms: f64) {
        let last = *self.last_threshold_update_ms.get_or_insert(now_ms);
        // A spike far above the threshold (a route change) must not drag it up.
        if modified.abs() > self.threshold + 15.0 {
            self.last_threshold_update_ms = Some(now_ms);
            return;
        }
        let k = if modified.abs() < self.threshold {
            K_DOWN
        } else {
            K_UP
        };
        let dt = (now_ms - last).clamp(0.0, 100.0);
        self.threshold += k * (modified.abs() - self.threshold) * dt;
        self.threshold = self.threshold.clamp(6.0, 600.0);
        self.last_threshold_update_ms = Some(now_ms);
    }
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), p| (a + p.0, b + p.1));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), &(x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    (den > 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames every 33 ms through a path whose one-way delay grows by `growth_us` per frame.
    fn run(frames: i64, growth_us: i64) -> Delay {
        let mut d = Delay::default();
        for f in 0..frames {
            for p in 0..5 {
                let send = f * 33_000 + p * 200;
                let arrival = send + 20_000 + f * growth_us + p * 300;
                d.on_packet(send, arrival);
            }
        }
        d
    }

    #[test]
    fn steady_delay_is_normal() {
        assert_eq!(run(100, 0).signal(), Signal::Normal);
    }

    #[test]
    fn a_growing_queue_is_overuse() {
        assert_eq!(run(60, 2_000).signal(), Signal::Overuse);
    }

    #[test]
    fn a_draining_queue_is_underuse() {
        let mut d = run(40, 2_000);
        for f in 40..80 {
            let send = f * 33_000;
            // Delay falls back by 3 ms a frame.
            let arrival = send + 20_000 + 80_000 - (f - 40) * 3_000;
            d.on_packet(send, arrival);
        }
        assert_eq!(d.signal(), Signal::Underuse);
    }
}
