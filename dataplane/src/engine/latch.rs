//! What a datagram from an unknown source may cost, sans-IO: which publishers waiting to
//! latch (comedia publishers and relay-ins with no address yet) it is tried against, and
//! whether its source may have any tried at all.
//!
//! Trying a datagram against a waiting publisher is one SRTP open under that publisher's
//! key, failed for everyone but its owner. Unbounded, a stranger's datagram cost one failed
//! open per waiting publisher (5.3 → 21.6 µs per datagram with 60 waiting). Two bounds:
//!
//! - **Per datagram**: at most [`MAX_TRIALS`] publishers, starting at the source's own
//!   cursor, which then moves on by the number tried. So a source's consecutive datagrams go
//!   round every waiting publisher, and a real one latches within `⌈waiting / MAX_TRIALS⌉`
//!   of its packets (15 with 60 waiting).
//! - **Per source address**: a token bucket of [`BURST`] datagrams refilled one per
//!   [`INTERVAL`] (GCRA: one deadline per source, no timer). A source that keeps sending
//!   past it costs a table look-up per datagram and no trial.
//!
//! Sources live in a fixed table of [`SETS`] × [`WAYS`] entries, allocated once: the
//! source's address, hashed with a key chosen at start (so nobody can aim at a set), picks
//! a set, and a new source takes the set's least recently seen entry. Nothing is allocated
//! per datagram. An attacker that spoofs many sources evicts entries and gets fresh buckets,
//! so across sources only the per-datagram bound holds: [`MAX_TRIALS`] opens per datagram,
//! whatever the number of publishers waiting.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most waiting publishers one datagram is tried against. Four opens are ~1.5 µs with
/// AES-GCM, about what the rest of a datagram's path costs.
pub const MAX_TRIALS: usize = 4;

/// Datagrams a new (or rested) source may have tried at once: 16 × [`MAX_TRIALS`] = 64
/// candidates, so a publisher starting among up to 64 waiting ones latches on its first
/// burst.
pub const BURST: u32 = 16;

/// One more datagram's trials per source per interval (50 per second, 200 candidates a
/// second): a publisher among many more waiting ones still gets round them in seconds,
/// and a flooding source costs at most 200 failed opens a second.
pub const INTERVAL: Duration = Duration::from_millis(20);

/// Sets of the source table.
pub const SETS: usize = 64;
/// Entries per set: a new source evicts the least recently seen of these.
pub const WAYS: usize = 4;

#[derive(Clone, Copy, Debug)]
struct Entry {
    addr: SocketAddr,
    /// GCRA's theoretical arrival time: the source may have a datagram tried while this is
    /// at most `(BURST - 1) × INTERVAL` ahead of now.
    tat: Instant,
    /// Last datagram, for eviction.
    seen: Instant,
    /// Where in the waiting list this source's next datagram starts.
    cursor: usize,
}

/// Per-source latch budgets for one socket.
pub struct Limiter {
    table: Box<[Option<Entry>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Start cursor of the next new source, moved on per new source so sources evicted and
    /// seen again do not all start at the first waiting publisher.
    next_start: usize,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Limiter {
    pub fn new() -> Self {
        Self {
            table: vec![None; SETS * WAYS].into_boxed_slice(),
            hasher: std::collections::hash_map::RandomState::new(),
            next_start: 0,
        }
    }

    /// A datagram from `src` received at `now`, with `waiting` publishers waiting (> 0):
    /// `Some(start)` to try it against waiting publishers `start, start + 1, …` (modulo
    /// `waiting`, at most [`MAX_TRIALS`] of them), `None` when the source's budget is spent.
    pub fn admit(&mut self, src: SocketAddr, now: Instant, waiting: usize) -> Option<usize> {
        if waiting == 0 {
            return None;
        }
        let set = (self.hasher.hash_one(src) % SETS as u64) as usize * WAYS;
        let ways = self.table.get_mut(set..set + WAYS)?;
        let k = match ways.iter().position(|e| e.is_some_and(|e| e.addr == src)) {
            Some(k) => k,
            None => {
                // A free way, else the least recently seen one.
                let k = ways
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.map(|e| e.seen))
                    .map_or(0, |(k, _)| k);
                let cursor = self.next_start;
                self.next_start = self.next_start.wrapping_add(MAX_TRIALS);
                *ways.get_mut(k)? = Some(Entry {
                    addr: src,
                    tat: now,
                    seen: now,
                    cursor,
                });
                k
            }
        };
        let e = ways.get_mut(k)?.as_mut()?;
        e.seen = now;
        let limit = now.checked_add(INTERVAL * (BURST - 1)).unwrap_or(now);
        if e.tat > limit {
            return None;
        }
        e.tat = e.tat.max(now).checked_add(INTERVAL).unwrap_or(e.tat);
        let start = e.cursor % waiting;
        e.cursor = start.wrapping_add(MAX_TRIALS.min(waiting));
        Some(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::t0;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn a_source_goes_round_every_waiting_publisher() {
        let mut l = Limiter::new();
        let now = t0();
        let mut seen = [false; 10];
        for _ in 0..3 {
            let start = l.admit(addr(1), now, 10).expect("within the burst");
            for j in 0..MAX_TRIALS {
                seen[(start + j) % 10] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn a_flooding_source_gets_its_burst_then_one_per_interval() {
        let mut l = Limiter::new();
        let now = t0();
        let admitted = (0..1000)
            .filter(|_| l.admit(addr(1), now, 60).is_some())
            .count();
        assert_eq!(admitted, BURST as usize);
        // Another source is not held back by the first one.
        assert!(l.admit(addr(2), now, 60).is_some());
        // One second later: 50 more, not a new burst on top.
        let later = now + Duration::from_secs(1);
        let admitted = (0..1000)
            .filter(|_| l.admit(addr(1), later, 60).is_some())
            .count();
        assert_eq!(admitted, BURST as usize, "a full bucket again after a rest");
        let soon = later + INTERVAL * 5;
        let admitted = (0..1000)
            .filter(|_| l.admit(addr(1), soon, 60).is_some())
            .count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn the_table_stays_fixed_under_many_sources() {
        let mut l = Limiter::new();
        let now = t0();
        for p in 0..20_000u16 {
            assert!(
                l.admit(addr(p), now, 3).is_some(),
                "a new source gets a bucket"
            );
        }
        assert_eq!(l.table.len(), SETS * WAYS);
        assert_eq!(l.admit(addr(1), now, 0), None);
    }
}
