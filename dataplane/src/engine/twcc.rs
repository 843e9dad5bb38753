//! Arrival times of one publisher's packets by transport-wide sequence number, turned into a
//! transport-cc feedback every [`FEEDBACK_INTERVAL`]. Without this feedback a browser's
//! bandwidth estimate never rises (Chromium stays near 300 kbit/s).
//!
//! Fixed memory per publisher, nothing allocated per packet: a ring of arrival times indexed
//! by sequence number and a scratch list reused by every feedback.

use std::time::{Duration, Instant};

use switchyard_shared::packet::twcc;

/// How often a publisher gets feedback (libwebrtc sends about every 50–100 ms).
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(100);

const RING: usize = 1024;
const NONE: i64 = i64::MIN;

pub struct Recorder {
    /// RTP header extension id of transport-wide-cc in the publisher's SDP.
    pub ext_id: u8,
    arrivals: Box<[i64; RING]>,
    /// Unwrapped sequence numbers: first and last recorded since the last feedback.
    range: Option<(u64, u64)>,
    /// Last unwrapped sequence number seen, for unwrapping the next one.
    last: Option<u64>,
    epoch: Instant,
    feedback_count: u8,
    scratch: Vec<Option<i64>>,
}

impl Recorder {
    pub fn new(ext_id: u8, epoch: Instant) -> Self {
        Self {
            ext_id,
            arrivals: Box::new([NONE; RING]),
            range: None,
            last: None,
            epoch,
            feedback_count: 0,
            scratch: Vec::with_capacity(twcc::MAX_STATUSES),
        }
    }

    fn unwrap(&mut self, seq: u16) -> u64 {
        let v = match self.last {
            None => u64::from(seq) + (1 << 16),
            Some(last) => {
                let delta = i64::from(seq.wrapping_sub(last as u16) as i16);
                last.saturating_add_signed(delta)
            }
        };
        if self.last.is_none_or(|l| v > l) {
            self.last = Some(v);
        }
        v
    }

    /// A packet with transport-wide sequence `seq` arrived at `at`.
    pub fn record(&mut self, seq: u16, at: Instant) {
        let s = self.unwrap(seq);
        let us = at.saturating_duration_since(self.epoch).as_micros() as i64;
        let (first, last) = match self.range {
            None => (s, s),
            Some((first, _)) if s < first => return, // older than this feedback: too late
            Some((first, last)) => (first, last.max(s)),
        };
        // Keep the window to what one feedback can describe: drop the oldest (and clear
        // their slots, so the ring never reports a stale time for a later sequence).
        let kept = first.max(last.saturating_sub(twcc::MAX_STATUSES as u64 - 1));
        for old in first..kept.min(first + RING as u64) {
            self.arrivals[(old % RING as u64) as usize] = NONE;
        }
        self.range = Some((kept, last));
        self.arrivals[(s % RING as u64) as usize] = us;
    }

    /// Write the feedback for everything recorded since the last one, if anything was.
    pub fn write_feedback(
        &mut self,
        out: &mut [u8],
        sender_ssrc: u32,
        media_ssrc: u32,
    ) -> Option<usize> {
        let (mut first, last) = self.range.take()?;
        // A feedback starts at a received packet (the window may have cut the first one).
        while first <= last && self.arrivals[(first % RING as u64) as usize] == NONE {
            first += 1;
        }
        if first > last {
            return None;
        }
        self.scratch.clear();
        for s in first..=last {
            let slot = &mut self.arrivals[(s % RING as u64) as usize];
            self.scratch.push((*slot != NONE).then_some(*slot));
            *slot = NONE;
        }
        let n = twcc::write(
            out,
            sender_ssrc,
            media_ssrc,
            first as u16,
            self.feedback_count,
            &self.scratch,
        )
        .ok()?;
        self.feedback_count = self.feedback_count.wrapping_add(1);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::t0;

    #[test]
    fn records_across_wrap_and_reports_losses() {
        let t0 = t0();
        let mut r = Recorder::new(3, t0);
        for (i, seq) in [65_534u16, 65_535, 1, 2].into_iter().enumerate() {
            r.record(seq, t0 + Duration::from_millis(i as u64 * 5));
        }
        let mut out = [0u8; twcc::MAX_LEN];
        let n = r.write_feedback(&mut out, 9, 10).expect("feedback");
        // Base 65534, five statuses (65534, 65535, 0 lost, 1, 2).
        assert_eq!(u16::from_be_bytes([out[12], out[13]]), 65_534);
        assert_eq!(u16::from_be_bytes([out[14], out[15]]), 5);
        assert!(n >= 24);
        assert!(r.write_feedback(&mut out, 9, 10).is_none(), "nothing new");
        // The next feedback starts after the last one.
        r.record(3, t0 + Duration::from_millis(30));
        r.write_feedback(&mut out, 9, 10).expect("feedback");
        assert_eq!(u16::from_be_bytes([out[12], out[13]]), 3);
        assert_eq!(out[19], 1, "feedback count goes up");
    }

    #[test]
    fn late_packets_and_huge_gaps_are_bounded() {
        let t0 = t0();
        let mut r = Recorder::new(3, t0);
        r.record(100, t0);
        r.record(5000, t0);
        let mut out = [0u8; twcc::MAX_LEN];
        let n = r.write_feedback(&mut out, 1, 2).expect("feedback");
        assert!(n <= twcc::MAX_LEN);
        assert_eq!(
            usize::from(u16::from_be_bytes([out[14], out[15]])),
            1,
            "only the newest packet fits after a 4900-packet gap"
        );
        r.record(4990, t0); // older than what was reported: ignored once a new range starts
        r.record(5001, t0);
        r.write_feedback(&mut out, 1, 2).expect("feedback");
        assert_eq!(u16::from_be_bytes([out[12], out[13]]), 4990);
    }
}
