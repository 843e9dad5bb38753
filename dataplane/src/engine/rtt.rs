//! Round-trip time of a relay link, measured at its source end (the relay-out) from RTCP as
//! RFC 3550 §6.4.1 describes: the far node's receiver reports echo the last sender report
//! it got (LSR, the middle 32 bits of that report's NTP timestamp) and how long it held it
//! (DLSR), so RTT = arrival of the receiver report − departure of that sender report − DLSR.
//!
//! The sender reports a relay-out passes on are the publisher's, NTP timestamps of the
//! publisher's clock included (lip sync needs them unchanged), so the RFC's subtraction in
//! NTP time would mix two clocks. Instead the relay-out remembers when each report left
//! here by its LSR value, and subtracts `Instant`s of this host's clock: no clock is shared
//! with anyone. No sender reports (a publisher that sends none) means no estimate.
//!
//! Sans-IO: fed each report sent and each report block received with its time. Fixed size,
//! allocation-free after construction.

use std::time::{Duration, Instant};

/// Sender reports remembered: a few seconds of reports of a few tracks (about one a second
/// per track), more than a receiver report can lag behind.
const SENT: usize = 16;
/// A sample above this is taken for a report that matched by chance, not a round trip.
pub const MAX_RTT: Duration = Duration::from_secs(10);
/// Weight of a new sample in the smoothed RTT: RFC 6298's α = 1/8.
const ALPHA_SHIFT: u32 = 3;

/// The RTT estimate of one relay link.
#[derive(Clone, Debug)]
pub struct LinkRtt {
    /// (LSR value, when it left), oldest overwritten first.
    sent: [Option<(u32, Instant)>; SENT],
    next: usize,
    /// Smoothed RTT in microseconds; None before the first sample.
    srtt_us: Option<u64>,
}

impl Default for LinkRtt {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkRtt {
    pub fn new() -> Self {
        Self {
            sent: [None; SENT],
            next: 0,
            srtt_us: None,
        }
    }

    /// A sender report with NTP timestamp `ntp` left on the link at `at`.
    pub fn on_sender_report_sent(&mut self, ntp: u64, at: Instant) {
        let lsr = (ntp >> 16) as u32;
        if let Some(slot) = self.sent.get_mut(self.next) {
            *slot = Some((lsr, at));
        }
        self.next = (self.next + 1) % SENT;
    }

    /// A report block from the far end, received at `at`: a sample when its `lsr` names a
    /// report sent here. Returns the sample (before smoothing).
    pub fn on_report_block(&mut self, lsr: u32, dlsr: u32, at: Instant) -> Option<Duration> {
        if lsr == 0 {
            // "No SR received yet" (RFC 3550 §6.4.1).
            return None;
        }
        // The latest report with that value: a value repeats only across tracks of one
        // publisher's SRs sent together, or after 18 hours (the LSR wraps every 65536 s).
        let left = self
            .sent
            .iter()
            .flatten()
            .filter(|(l, _)| *l == lsr)
            .map(|&(_, t)| t)
            .max()?;
        let held = Duration::from_nanos(u64::from(dlsr) * 1_000_000_000 / 65536);
        let sample = at.checked_duration_since(left)?.checked_sub(held)?;
        if sample > MAX_RTT {
            return None;
        }
        let us = sample.as_micros() as u64;
        self.srtt_us = Some(match self.srtt_us {
            None => us,
            // srtt += (sample − srtt) / 8, in integers.
            Some(s) => s - (s >> ALPHA_SHIFT) + (us >> ALPHA_SHIFT),
        });
        Some(sample)
    }

    /// The smoothed RTT; None before the first sample.
    pub fn smoothed(&self) -> Option<Duration> {
        self.srtt_us.map(Duration::from_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An NTP timestamp whose middle 32 bits are `lsr`.
    fn ntp(lsr: u32) -> u64 {
        u64::from(lsr) << 16 | 0xabcd
    }

    /// DLSR of `d` in 1/65536 s.
    fn dlsr(d: Duration) -> u32 {
        (d.as_nanos() * 65536 / 1_000_000_000) as u32
    }

    #[test]
    fn a_round_trip_is_arrival_minus_departure_minus_the_hold() {
        let t0 = Instant::now();
        let mut r = LinkRtt::new();
        assert_eq!(r.smoothed(), None);
        r.on_sender_report_sent(ntp(0x1234_5678), t0);
        // The far node held the report 300 ms; the receiver report is back 340 ms after the
        // sender report left: 40 ms on the wire, there and back.
        let hold = Duration::from_millis(300);
        let s = r
            .on_report_block(0x1234_5678, dlsr(hold), t0 + Duration::from_millis(340))
            .expect("sample");
        assert!(
            s.abs_diff(Duration::from_millis(40)) < Duration::from_micros(50),
            "{s:?}"
        );
        assert_eq!(
            r.smoothed().map(|d| d.as_millis()),
            Some(40),
            "the first sample is the estimate"
        );
    }

    #[test]
    fn samples_are_smoothed_and_strangers_ignored() {
        let t0 = Instant::now();
        let mut r = LinkRtt::new();
        for k in 0..60u32 {
            let at = t0 + Duration::from_secs(u64::from(k));
            r.on_sender_report_sent(ntp(1000 + k), at);
            // 20 ms each, then 60 ms from the 20th on: the estimate moves by 1/8 a sample.
            let rtt = if k < 20 { 20 } else { 60 };
            let back = at + Duration::from_millis(rtt);
            r.on_report_block(1000 + k, 0, back).expect("sample");
            if k == 19 {
                assert_eq!(r.smoothed().map(|d| d.as_millis()), Some(20));
            }
            if k == 20 {
                assert_eq!(r.smoothed().map(|d| d.as_millis()), Some(25));
            }
        }
        let late = r.smoothed().expect("estimate").as_millis();
        assert!((59..=60).contains(&late), "{late}");
        let now = t0 + Duration::from_secs(120);
        // No SR yet, an LSR never sent (or long overwritten), a hold longer than the trip,
        // an absurd trip: no sample, no change.
        assert_eq!(r.on_report_block(0, 0, now), None);
        assert_eq!(r.on_report_block(1000, 0, now), None);
        assert_eq!(r.on_report_block(7, 0, now), None);
        r.on_sender_report_sent(ntp(5), now);
        let soon = now + Duration::from_millis(10);
        assert_eq!(
            r.on_report_block(5, dlsr(Duration::from_millis(20)), soon),
            None
        );
        assert_eq!(r.on_report_block(5, 0, now + Duration::from_secs(11)), None);
        assert_eq!(r.smoothed().map(|d| d.as_millis()), Some(late));
    }
}
