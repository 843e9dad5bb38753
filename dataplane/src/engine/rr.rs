//! RFC 3550 receive statistics per published track, for the receiver reports the node sends
//! its publishers (sequence accounting: RFC 3550 A.1 and A.3; jitter: A.8).
//!
//! Fixed-size and `Copy`: updating it per packet allocates nothing.

use std::time::{Duration, Instant};

use switchyard_shared::packet::rtcp::ReportBlock;

/// A publisher gets a receiver report about this often.
pub const RR_INTERVAL: Duration = Duration::from_secs(1);

/// RFC 3550 A.1: a jump ahead of more than this many sequence numbers, or back by more than
/// [`MAX_MISORDER`], is a restart (or a bug) unless the next packet confirms it.
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const SEQ_MOD: u32 = 1 << 16;

/// Receive state of one track (one SSRC).
#[derive(Clone, Copy, Debug, Default)]
pub struct RecvStats {
    started: bool,
    /// Highest sequence number seen (low 16 bits) and the wrap count shifted left by 16.
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    /// `bad_seq` of A.1: the sequence number that would confirm a large jump.
    bad_seq: Option<u16>,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// Relative transit time of the previous packet, in RTP timestamp units (A.8).
    transit: Option<u32>,
    /// Interarrival jitter scaled by 16 (A.8's integer form).
    jitter16: u32,
    /// Middle 32 bits of the last SR's NTP timestamp and when it arrived.
    last_sr: Option<(u32, Instant)>,
}

impl RecvStats {
    /// An RTP packet of this track arrived at `at` (`epoch` is any fixed earlier instant).
    /// `clock_rate` 0 means the track's clock rate is unknown: the jitter is not computed
    /// and stays 0 in the reports (a guessed rate would report a wrong value).
    pub fn on_packet(
        &mut self,
        seq: u16,
        rtp_ts: u32,
        at: Instant,
        epoch: Instant,
        clock_rate: u32,
    ) {
        if !self.started {
            *self = RecvStats {
                started: true,
                max_seq: seq,
                base_seq: u32::from(seq),
                last_sr: self.last_sr,
                ..RecvStats::default()
            };
        } else if !self.update_seq(seq) {
            return;
        }
        self.received = self.received.wrapping_add(1);
        if clock_rate == 0 {
            return;
        }
        // Arrival time in the track's RTP clock units (wrapping like an RTP timestamp).
        let since = at.saturating_duration_since(epoch).as_nanos();
        let arrival = (since * u128::from(clock_rate) / 1_000_000_000) as u32;
        let transit = arrival.wrapping_sub(rtp_ts);
        if let Some(prev) = self.transit {
            let d = (transit.wrapping_sub(prev) as i32).unsigned_abs();
            // J += (|D| - J) / 16, kept scaled by 16.
            self.jitter16 = self
                .jitter16
                .wrapping_add(d)
                .wrapping_sub((self.jitter16 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// RFC 3550 A.1 `update_seq`; `false`: the packet is not counted (a jump to confirm).
    fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta < MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(SEQ_MOD);
            }
            self.max_seq = seq;
        } else if udelta <= u16::MAX - MAX_MISORDER {
            // A very large jump: believe it only if the next packet follows it.
            if self.bad_seq == Some(seq) {
                // The source restarted: start the count over from here.
                let last_sr = self.last_sr;
                *self = RecvStats {
                    started: true,
                    max_seq: seq,
                    base_seq: u32::from(seq),
                    last_sr,
                    ..RecvStats::default()
                };
                return true;
            }
            self.bad_seq = Some(seq.wrapping_add(1));
            return false;
        }
        // else: duplicate or reordered, counted but does not move the highest sequence.
        true
    }

    /// A sender report for this track arrived at `at`.
    pub fn on_sender_report(&mut self, ntp: u64, at: Instant) {
        self.last_sr = Some(((ntp >> 16) as u32, at));
    }

    /// The report block for `ssrc` as of `now` (RFC 3550 A.3), and the interval state moved
    /// on; `None` before the first packet.
    pub fn report(&mut self, ssrc: u32, now: Instant) -> Option<ReportBlock> {
        if !self.started {
            return None;
        }
        let extended_max = self.cycles.wrapping_add(u32::from(self.max_seq));
        let expected = extended_max.wrapping_sub(self.base_seq).wrapping_add(1);
        let lost = i64::from(expected) - i64::from(self.received);
        let cumulative_lost = lost.clamp(-0x80_0000, 0x7f_ffff) as i32;
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at);
                // Units of 1/65536 s.
                let dlsr = (d.as_nanos() * 65536 / 1_000_000_000).min(u128::from(u32::MAX));
                (lsr, dlsr as u32)
            }
            None => (0, 0),
        };
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost,
            highest_seq: extended_max,
            jitter: self.jitter16 >> 4,
            lsr,
            dlsr,
        })
    }
}
