//! A viewer's numbering across a change of source: when the publisher of a stream changes
//! (a relay-in fed by another node after its source died, or a new publisher of a stream
//! whose viewers stayed), the new source's SSRCs, sequence numbers and timestamps have
//! nothing to do with the old one's. The viewer keeps its own SSRC (a WebRTC subscriber has
//! its own already); its offsets are re-based so its sequence number goes on from the last
//! one it was sent and its timestamp moves on by the time that passed, as a simulcast layer
//! switch does (`layers::Select::switch_to`).
//!
//! Sans-IO: fed each packet's publisher epoch (`pool::Packet::epoch`, changed whenever the
//! source changes) and each packet sent; the fan-out applies what it answers.

use std::time::Instant;

/// RTP clock rates a track may run at: the measured rate is snapped to the nearest, so a
/// few milliseconds of jitter in the measurement do not show in the timestamps.
const CLOCKS: [u32; 7] = [8_000, 16_000, 24_000, 32_000, 44_100, 48_000, 90_000];
/// The clock assumed before a track ran long enough to measure its own (video's).
const DEFAULT_CLOCK: u32 = 90_000;
/// How long a track must have run before its clock rate is measured from it.
const MEASURE_AFTER_MS: u128 = 200;

/// One viewer's track: the publisher epoch it is numbered for and the last packet sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Continuity {
    /// The epoch of the packets the offsets fit; 0: nothing seen yet.
    epoch: u32,
    /// The last packet sent, in the viewer's numbering, and when.
    last: Option<(u16, u32, Instant)>,
    /// The first packet sent under the current epoch (viewer's timestamp, time): the clock
    /// rate is measured between it and `last`.
    first: Option<(u32, Instant)>,
    /// The clock rate measured before the last switch, kept for the next one.
    clock: Option<u32>,
}

/// What a packet of a new epoch did to a viewer's track.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The source changed since this viewer's last packet of the track.
    pub changed: bool,
    /// The offsets were re-based (something had been sent before).
    pub rebased: bool,
}

impl Continuity {
    /// A packet of epoch `epoch` numbered (`seq`, `ts`) by its publisher, forwarded at
    /// `now`, is about to go to this viewer with `offsets`. On a new epoch (after the first)
    /// the offsets are re-based so it follows the last packet sent. `layered`: a simulcast
    /// track, whose numbering its `Select` re-bases at the next keyframe instead.
    pub fn on_packet(
        &mut self,
        epoch: u32,
        (seq, ts): (u16, u32),
        offsets: &mut (u16, u32),
        now: Instant,
        layered: bool,
    ) -> Change {
        if epoch == self.epoch || epoch == 0 {
            return Change::default();
        }
        let first = self.epoch == 0;
        self.epoch = epoch;
        if first {
            return Change::default();
        }
        self.clock = self.measured().or(self.clock);
        self.first = None;
        let Some((last_seq, last_ts, at)) = self.last.filter(|_| !layered) else {
            return Change {
                changed: true,
                rebased: false,
            };
        };
        let gap = now.saturating_duration_since(at).as_micros();
        let clock = u128::from(self.clock.unwrap_or(DEFAULT_CLOCK));
        let ticks = (gap * clock / 1_000_000).max(1) as u32;
        offsets.0 = last_seq.wrapping_add(1).wrapping_sub(seq);
        offsets.1 = last_ts.wrapping_add(ticks).wrapping_sub(ts);
        Change {
            changed: true,
            rebased: true,
        }
    }

    /// A packet went out numbered (`seq`, `ts`) in the viewer's numbering at `now`.
    pub fn sent(&mut self, (seq, ts): (u16, u32), now: Instant) {
        let newer = self
            .last
            .is_none_or(|(l, _, _)| (seq.wrapping_sub(l) as i16) > 0);
        if !newer {
            return;
        }
        self.last = Some((seq, ts, now));
        if self.first.is_none() {
            self.first = Some((ts, now));
        }
    }

    /// The track's clock rate, measured from what was sent under this epoch.
    fn measured(&self) -> Option<u32> {
        let ((t0, a0), (_, t1, a1)) = (self.first?, self.last?);
        let ms = a1.saturating_duration_since(a0).as_millis();
        if ms < MEASURE_AFTER_MS {
            return None;
        }
        let rate = u128::from(t1.wrapping_sub(t0)) * 1000 / ms;
        CLOCKS
            .iter()
            .copied()
            .min_by_key(|&c| u128::from(c).abs_diff(rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::t0;
    use std::time::Duration;

    fn ms(n: u64) -> Instant {
        t0() + Duration::from_millis(n)
    }

    /// Sends 20 ms packets of a 48 kHz track from (`seq`, `ts`) for `n` packets from `at`
    /// under `epoch`, returning the viewer's numbering of each.
    fn run(
        c: &mut Continuity,
        off: &mut (u16, u32),
        epoch: u32,
        (seq, ts): (u16, u32),
        (at, n): (u64, u16),
    ) -> Vec<(u16, u32)> {
        (0..n)
            .map(|k| {
                let (s, t) = (seq.wrapping_add(k), ts.wrapping_add(960 * u32::from(k)));
                let now = ms(at + 20 * u64::from(k));
                c.on_packet(epoch, (s, t), off, now, false);
                let out = (s.wrapping_add(off.0), t.wrapping_add(off.1));
                c.sent(out, now);
                out
            })
            .collect()
    }

    #[test]
    fn a_new_source_continues_the_viewers_numbering() {
        let mut c = Continuity::default();
        let mut off = (1000, 5_000_000);
        let before = run(&mut c, &mut off, 7, (60_000, 123), (0, 50));
        // 1.5 s later a source numbering from elsewhere entirely.
        let after = run(&mut c, &mut off, 9, (17, 4_000_000_000), (2_480, 10));
        let (ls, lt) = *before.last().expect("sent");
        assert_eq!(after[0].0, ls.wrapping_add(1), "sequence goes on by one");
        let ticks = after[0].1.wrapping_sub(lt);
        assert_eq!(ticks, 48 * 1500, "timestamp moves on by the gap at 48 kHz");
        for w in after.windows(2) {
            assert_eq!(w[1].0, w[0].0.wrapping_add(1));
            assert_eq!(w[1].1.wrapping_sub(w[0].1), 960);
        }
    }

    #[test]
    fn first_epoch_and_same_epoch_change_nothing() {
        let mut c = Continuity::default();
        let mut off = (5, 6);
        assert_eq!(
            c.on_packet(3, (1, 1), &mut off, ms(0), false),
            Change::default()
        );
        assert_eq!(off, (5, 6));
        c.sent((6, 7), ms(0));
        assert_eq!(
            c.on_packet(3, (2, 2), &mut off, ms(20), false),
            Change::default()
        );
        assert_eq!(off, (5, 6));
    }

    #[test]
    fn a_layered_track_is_told_but_not_rebased_here() {
        let mut c = Continuity::default();
        let mut off = (5, 6);
        c.on_packet(3, (1, 1), &mut off, ms(0), true);
        c.sent((6, 7), ms(0));
        let ch = c.on_packet(4, (900, 900), &mut off, ms(20), true);
        assert_eq!(
            ch,
            Change {
                changed: true,
                rebased: false
            }
        );
        assert_eq!(off, (5, 6));
    }

    #[test]
    fn a_short_track_falls_back_to_the_video_clock() {
        let mut c = Continuity::default();
        let mut off = (0, 0);
        c.on_packet(1, (10, 10), &mut off, ms(0), false);
        c.sent((10, 10), ms(0));
        c.on_packet(2, (500, 500), &mut off, ms(100), false);
        assert_eq!(500u16.wrapping_add(off.0), 11);
        assert_eq!(500u32.wrapping_add(off.1), 10 + 9000);
    }
}
