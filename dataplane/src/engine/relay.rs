//! Loss repair on a relay link. Receiving side ([`GapTracker`]): which sequence numbers of
//! a relayed track are missing, and when to NACK them upstream again. Sending side
//! ([`DataOut`]): a relay-out's data channel fragments, numbered and kept for the far
//! node's NACKs (sent by `relay_data`).
//!
//! Sans-IO: fed the sequence number of every authenticated packet with its receive time,
//! asked which numbers are due for a NACK when the engine's `RelayNacks` timer comes (set
//! from [`GapTracker::next_due`]). The hop between two nodes is usually a clean, short path,
//! so a fixed retry schedule (not an RTT estimate) is enough: a lost packet is asked for at
//! once, then every [`NACK_RETRY`] up to [`NACK_TRIES`] times, and forgotten after
//! [`NACK_GIVE_UP`] (by then a viewer's jitter buffer has moved on).
//!
//! Bounded: at most [`MAX_MISSING`] numbers per track are tracked (the oldest make room),
//! and a forward jump larger than [`MAX_GAP`] is taken as the source restarting its
//! numbering, not as thousands of losses. Nothing allocates after [`GapTracker::new`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::datachan::relay::{PAYLOAD_TYPE, SSRC};

/// Time between two NACKs of the same packet.
pub const NACK_RETRY: Duration = Duration::from_millis(30);
/// NACKs sent for one packet at most.
pub const NACK_TRIES: u8 = 4;
/// A packet still missing this long after it was found missing is given up.
pub const NACK_GIVE_UP: Duration = Duration::from_millis(300);
/// Missing packets tracked per track: a 300 ms outage of a 2 Mbit/s video track.
pub const MAX_MISSING: usize = 128;
/// Largest forward jump in sequence numbers still read as loss.
pub const MAX_GAP: u16 = 256;
/// How far behind the newest packet a subscriber's NACK may still be forwarded upstream:
/// the source's packet cache (`media.nack_cache`, 512 by default) holds no more.
pub const MAX_AGE: u16 = 1024;

/// When a tracker NACKs a missing packet again and when it gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Time between two NACKs of the same packet.
    pub retry: Duration,
    /// NACKs sent for one packet at most.
    pub tries: u8,
    /// A packet still missing this long after it was found missing is given up.
    pub give_up: Duration,
    /// Whether [`GapTracker::next_due`] also says when a packet is given up (its owner acts
    /// on it, as the uplink does with a PLI), not only when a NACK is due.
    pub wake_to_give_up: bool,
}

/// A relay link's schedule: [`NACK_RETRY`], [`NACK_TRIES`], [`NACK_GIVE_UP`].
pub const LINK: Schedule = Schedule {
    retry: NACK_RETRY,
    tries: NACK_TRIES,
    give_up: NACK_GIVE_UP,
    wake_to_give_up: false,
};

#[derive(Clone, Copy, Debug)]
struct Missing {
    seq: u16,
    since: Instant,
    next: Instant,
    tries: u8,
}

/// The missing sequence numbers of one relayed track.
#[derive(Debug)]
pub struct GapTracker {
    highest: Option<u16>,
    /// Oldest first: the oldest makes room when it is full.
    missing: VecDeque<Missing>,
    schedule: Schedule,
    /// Numbers given up since [`GapTracker::take_given_up`] was last called.
    given_up: u32,
}

impl Default for GapTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl GapTracker {
    /// A tracker on a relay link's schedule ([`LINK`]).
    pub fn new() -> Self {
        Self::with_schedule(LINK)
    }

    pub fn with_schedule(schedule: Schedule) -> Self {
        Self {
            highest: None,
            missing: VecDeque::with_capacity(MAX_MISSING),
            schedule,
            given_up: 0,
        }
    }

    /// An authenticated packet `seq` arrived at `at`. Numbers skipped since the newest one
    /// become missing (due at once); a packet that was missing no longer is. Returns true
    /// when it repaired a gap.
    pub fn on_packet(&mut self, seq: u16, at: Instant) -> bool {
        let Some(h) = self.highest else {
            self.highest = Some(seq);
            return false;
        };
        let ahead = seq.wrapping_sub(h);
        if ahead == 0 {
            return false;
        }
        if ahead >= 0x8000 {
            // Older than the newest: late, reordered or a retransmission.
            return self.forget(seq);
        }
        if ahead > MAX_GAP {
            // The source restarted its numbering: nothing before is worth asking for.
            self.missing.clear();
        } else {
            for k in 1..ahead {
                self.add(h.wrapping_add(k), at);
            }
        }
        self.highest = Some(seq);
        false
    }

    /// Someone downstream lost `seq`: ask upstream for it too, unless it is already being
    /// asked for, is newer than anything received or older than [`MAX_AGE`].
    pub fn request(&mut self, seq: u16, now: Instant) -> bool {
        let Some(h) = self.highest else {
            return false;
        };
        let behind = h.wrapping_sub(seq);
        if behind >= MAX_AGE || self.missing.iter().any(|m| m.seq == seq) {
            return false;
        }
        self.add(seq, now);
        true
    }

    fn add(&mut self, seq: u16, at: Instant) {
        if self.missing.len() >= MAX_MISSING {
            // The oldest loss is the least likely still to help anyone.
            self.missing.pop_front();
        }
        self.missing.push_back(Missing {
            seq,
            since: at,
            next: at,
            tries: 0,
        });
    }

    fn forget(&mut self, seq: u16) -> bool {
        let before = self.missing.len();
        self.missing.retain(|m| m.seq != seq);
        self.missing.len() != before
    }

    /// Write the numbers due for a NACK at `now` into `due` (oldest first) and return how
    /// many; each counts as one try. Numbers given up (tries used and the last retry
    /// interval passed, or older than the schedule's `give_up`) are dropped first and
    /// counted for [`GapTracker::take_given_up`].
    pub fn poll_due(&mut self, now: Instant, due: &mut [u16]) -> usize {
        let sch = self.schedule;
        let before = self.missing.len();
        self.missing.retain(|m| {
            let old = now.saturating_duration_since(m.since) >= sch.give_up;
            let spent = m.tries >= sch.tries && now >= m.next;
            !(old || spent)
        });
        self.given_up += (before - self.missing.len()) as u32;
        let mut n = 0;
        for m in &mut self.missing {
            if n == due.len() {
                break;
            }
            if m.tries < sch.tries && now >= m.next {
                due[n] = m.seq;
                n += 1;
                m.tries += 1;
                m.next = now + sch.retry;
            }
        }
        n
    }

    /// How many numbers were given up since the last call (and forget that count).
    pub fn take_given_up(&mut self) -> u32 {
        std::mem::take(&mut self.given_up)
    }

    /// Numbers still missing.
    pub fn pending(&self) -> usize {
        self.missing.len()
    }

    /// When the tracker next has work: a NACK due, or (with `wake_to_give_up`, once every
    /// try is spent) a number to give up, so that a give-up is acted on when it happens.
    pub fn next_due(&self) -> Option<Instant> {
        let sch = self.schedule;
        self.missing
            .iter()
            .filter_map(|m| {
                if m.tries < sch.tries {
                    Some(m.next)
                } else {
                    sch.wake_to_give_up
                        .then(|| m.next.min(m.since + sch.give_up))
                }
            })
            .min()
    }
}

/// Fragments a relay-out keeps for NACK repair: the relay-in gives a gap up after
/// `relay::NACK_GIVE_UP` (300 ms), and 256 fragments are four maximum-size messages.
pub const DATA_CACHE: usize = 256;

/// A relay-out's outgoing data fragments: their own sequence numbers on the reserved SSRC
/// and the last [`DATA_CACHE`] of them as sent (plain RTP), for the far node's NACKs.
pub struct DataOut {
    next_seq: u16,
    cache: Vec<Option<(u16, Vec<u8>)>>,
}

impl DataOut {
    pub fn new(first_seq: u16) -> Self {
        Self {
            next_seq: first_seq,
            cache: vec![None; DATA_CACHE],
        }
    }

    /// Build the RTP packet of the next fragment in the cache and return it.
    pub fn push(&mut self, payload: &[u8]) -> &[u8] {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        let slot = &mut self.cache[usize::from(seq) % DATA_CACHE];
        // Reuse the evicted entry's buffer.
        let mut pkt = slot.take().map(|(_, v)| v).unwrap_or_default();
        pkt.clear();
        pkt.extend_from_slice(&[0x80, PAYLOAD_TYPE]);
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&0u32.to_be_bytes());
        pkt.extend_from_slice(&SSRC.to_be_bytes());
        pkt.extend_from_slice(payload);
        &slot.insert((seq, pkt)).1
    }

    pub fn get(&self, seq: u16) -> Option<&[u8]> {
        match &self.cache[usize::from(seq) % DATA_CACHE] {
            Some((s, pkt)) if *s == seq => Some(pkt),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::t0;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn gap_is_due_at_once_then_retried_then_given_up() {
        let t0 = t0();
        let mut g = GapTracker::new();
        g.on_packet(10, t0);
        g.on_packet(13, t0);
        let mut due = [0u16; 16];
        let n = g.poll_due(t0, &mut due);
        assert_eq!(&due[..n], &[11, 12]);
        assert_eq!(
            g.poll_due(ms(t0, 10), &mut due),
            0,
            "not before the retry interval"
        );
        let mut tries = 1;
        let mut t = 0;
        while g.pending() > 0 {
            t += 5;
            let n = g.poll_due(ms(t0, t), &mut due);
            if n > 0 {
                assert_eq!(&due[..n], &[11, 12]);
                tries += 1;
            }
            assert!(t <= 300, "given up by NACK_GIVE_UP");
        }
        assert_eq!(tries, usize::from(NACK_TRIES));
        assert_eq!(g.next_due(), None);
    }

    #[test]
    fn late_packet_repairs_and_stops_nacks() {
        let t0 = t0();
        let mut g = GapTracker::new();
        g.on_packet(65534, t0);
        g.on_packet(1, t0); // wraps: 65535 and 0 missing
        assert_eq!(g.pending(), 2);
        assert!(g.on_packet(65535, ms(t0, 5)));
        assert!(
            !g.on_packet(65535, ms(t0, 6)),
            "a duplicate repairs nothing"
        );
        let mut due = [0u16; 4];
        let n = g.poll_due(ms(t0, 5), &mut due);
        assert_eq!(&due[..n], &[0]);
    }

    #[test]
    fn restart_jump_and_bounds() {
        let t0 = t0();
        let mut g = GapTracker::new();
        g.on_packet(0, t0);
        g.on_packet(200, t0);
        assert_eq!(g.pending(), MAX_MISSING, "bounded, oldest dropped");
        let mut due = [0u16; 1];
        assert_eq!(g.poll_due(t0, &mut due), 1);
        assert_eq!(
            due[0],
            200 - MAX_MISSING as u16,
            "oldest kept is the first due"
        );
        g.on_packet(5000, t0);
        assert_eq!(
            g.pending(),
            0,
            "a jump beyond MAX_GAP is a restart, not loss"
        );
    }

    #[test]
    fn downstream_requests_are_bounded() {
        let t0 = t0();
        let mut g = GapTracker::new();
        assert!(!g.request(5, t0), "nothing received yet");
        g.on_packet(2000, t0);
        assert!(g.request(1990, t0));
        assert!(!g.request(1990, t0), "already asked for");
        assert!(!g.request(2001, t0), "not sent yet");
        assert!(!g.request(2000 - MAX_AGE, t0), "older than any cache");
        let mut due = [0u16; 4];
        let n = g.poll_due(t0, &mut due);
        assert_eq!(&due[..n], &[1990]);
    }
}
