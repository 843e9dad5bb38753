//! One line on stderr per second while a run goes: the phase, packets sent and copies
//! received so far (and their rate over the last second), loss and latency so far.
//!
//! "So far" means within the current phase: during the warm-up the warm-up's packets, then
//! the measured window's (what the final report covers). Loss counts only packets sent at
//! least one whole slot before the last complete one, so copies still in flight are not
//! taken for lost; latency counts the copies that arrived in complete slots. Both are
//! computed from the [`Timeline`], whose latency buckets are 12.5 % wide.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sys;
use crate::timeline::{loss, LatencyBuckets, SlotCounts, Timeline, LATENCY_BUCKETS};

/// When the phases of a run end, in slots of its timeline.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// First slot of the measured window.
    pub warm_slot: usize,
    /// Slots the warm-up and the window take, in seconds (for the "t / total" column).
    pub total_s: f64,
}

/// The progress line after `complete` whole slots (`counts` may hold more, still filling).
pub fn line(counts: &[SlotCounts], complete: usize, slot_s: f64, fanout: f64, p: Phases) -> String {
    let complete = complete.min(counts.len());
    let measuring = complete > p.warm_slot;
    let phase = if measuring {
        p.warm_slot..complete
    } else {
        0..complete
    };
    let mut s = format!(
        "[{:>5.0}/{:.0} s] {:<9}",
        complete as f64 * slot_s,
        p.total_s,
        if measuring { "measuring" } else { "warm-up" }
    );
    let sent: u64 = counts[phase.clone()].iter().map(|c| c.sent).sum();
    let arrived: u64 = counts[phase.clone()].iter().map(|c| c.arrived).sum();
    let last = complete.checked_sub(1).and_then(|i| counts.get(i));
    let rate = |v: Option<u64>| v.map_or(0.0, |v| v as f64 / slot_s);
    let _ = write!(
        s,
        "  sent {sent} ({:.0}/s)  received {arrived} ({:.0}/s)",
        rate(last.map(|c| c.sent)),
        rate(last.map(|c| c.arrived))
    );
    // Loss over the send slots whose copies have had a whole slot to arrive.
    let settled = phase.start..complete.saturating_sub(1).max(phase.start);
    let expected: u64 = counts[settled.clone()]
        .iter()
        .map(|c| (c.sent as f64 * fanout).round() as u64)
        .sum();
    let received: u64 = counts[settled].iter().map(|c| c.received).sum();
    match loss(expected, received) {
        Some(l) => {
            let _ = write!(s, "  loss {:.3}%", l * 100.0);
        }
        None => s.push_str("  loss -"),
    }
    let mut buckets = vec![0u64; LATENCY_BUCKETS];
    for c in &counts[phase] {
        for (b, v) in buckets.iter_mut().zip(&c.latency) {
            *b += v;
        }
    }
    match LatencyBuckets(&buckets).summary() {
        Some(l) => {
            let ms = |us: u64| us as f64 / 1000.0;
            let _ = write!(
                s,
                "  latency p50 {:.2} ms  p99 {:.2}  max {:.2}",
                ms(l.p50),
                ms(l.p99),
                ms(l.max)
            );
        }
        None => s.push_str("  latency -"),
    }
    s
}

/// The thread printing [`line`] to stderr after every slot until `stop` (or the slot
/// holding `end_ns`, the end of the measured window).
pub fn spawn(
    timeline: Arc<Timeline>,
    phases: Phases,
    end_ns: u64,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("bench-progress".into())
        .spawn(move || {
            let slot_ns = (timeline.slot_s() * 1e9) as u64;
            let last = timeline.slot_of(end_ns.saturating_sub(1)) + 1;
            for complete in 1..=last {
                let due = timeline.origin_ns() + complete as u64 * slot_ns;
                // Short sleeps, so a run that ends early (an error) is not held up.
                while sys::monotonic_ns() < due {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let counts = timeline.counts();
                eprintln!(
                    "{}",
                    line(
                        &counts,
                        complete,
                        timeline.slot_s(),
                        timeline.fanout(),
                        phases
                    )
                );
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::bucket;

    fn slot(sent: u64, received: u64, arrived: u64, lat_us: u64) -> SlotCounts {
        let mut latency = vec![0; LATENCY_BUCKETS];
        latency[bucket(lat_us)] = arrived;
        SlotCounts {
            sent,
            received,
            arrived,
            latency,
        }
    }

    const PHASES: Phases = Phases {
        warm_slot: 1,
        total_s: 4.0,
    };

    #[test]
    fn the_line_covers_the_current_phase() {
        // Warm-up slot 0, then slots 1 and 2 of the window; slot 3 still filling.
        let counts = [
            slot(100, 900, 900, 300),
            slot(100, 1000, 1000, 200),
            slot(100, 990, 990, 200),
            slot(40, 100, 100, 5000),
        ];
        let warm = line(&counts, 1, 1.0, 10.0, PHASES);
        assert_eq!(
            warm,
            "[    1/4 s] warm-up    sent 100 (100/s)  received 900 (900/s)  loss -  \
             latency p50 0.32 ms  p99 0.32  max 0.32"
        );
        let l = line(&counts, 3, 1.0, 10.0, PHASES);
        // Slot 1 is settled (0 % loss); slot 2 is the last complete one, its copies may
        // still be on the way; slot 3 is not counted at all.
        assert_eq!(
            l,
            "[    3/4 s] measuring  sent 200 (100/s)  received 1990 (990/s)  loss 0.000%  \
             latency p50 0.21 ms  p99 0.21  max 0.21"
        );
    }

    #[test]
    fn loss_counts_settled_slots_only() {
        let counts = [
            slot(100, 1000, 1000, 100),
            slot(100, 500, 500, 100),
            slot(100, 0, 0, 100),
        ];
        let p = Phases {
            warm_slot: 0,
            total_s: 3.0,
        };
        assert!(line(&counts, 3, 1.0, 10.0, p).contains("loss 25.000%"));
        assert!(line(&counts, 1, 1.0, 10.0, p).contains("loss -"));
    }
}
