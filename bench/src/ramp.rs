//! Capacity search: fan-out runs with growing load until one loses more than `loss` or has
//! a p99 latency above `p99_us`; the last passing step's out_pps is the capacity.

use std::time::Duration;

use crate::report::{RampReport, RampStep, Report};
use crate::run::{self, LoadSpec, Target};
use crate::Error;

/// Pause between steps so the node finishes deleting the previous step's sessions.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct RampSpec {
    /// Count at the first step (subscribers per publisher, or publishers).
    pub start: usize,
    /// Growth factor per step (> 1); each step grows by at least one.
    pub step: f64,
    /// Largest count tried.
    pub max: usize,
    /// Loss ratio a step may have and still pass (0.001 = 0.1 %).
    pub loss: f64,
    /// p99 latency a step may have and still pass, µs.
    pub p99_us: u64,
    /// Grow the publisher count (subscribers per publisher fixed) instead of subscribers.
    pub grow_publishers: bool,
}

/// The counts a ramp walks through.
pub fn step_counts(start: usize, step: f64, max: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut n = start.max(1);
    while n <= max {
        v.push(n);
        let next = (n as f64 * step).ceil() as usize;
        n = next.max(n + 1);
    }
    v
}

/// Whether a step meets the thresholds.
pub fn passes(r: &Report, loss: f64, p99_us: u64) -> bool {
    r.received_packets > 0 && r.loss_ratio <= loss && r.latency_us.p99 <= p99_us
}

/// Runs steps until one fails (or `max` is reached), printing each step's table to stdout
/// when `verbose`.
pub fn ramp(
    base: &LoadSpec,
    target: &Target,
    ramp: &RampSpec,
    verbose: bool,
) -> Result<RampReport, Error> {
    if ramp.step.is_nan() || ramp.step <= 1.0 {
        return Err(Error::Config("--step must be > 1".into()));
    }
    let mut steps = Vec::new();
    let mut best: Option<Report> = None;
    for n in step_counts(ramp.start, ramp.step, ramp.max) {
        let mut spec = base.clone();
        if ramp.grow_publishers {
            spec.publishers = n;
        } else {
            spec.subscribers = n;
        }
        let report = run::run(&spec, target)?;
        let pass = passes(&report, ramp.loss, ramp.p99_us);
        if verbose {
            // Progress on stderr: stdout may be the JSON report (`--json -`).
            eprint!("{}", report.table());
            eprintln!("  step {}", if pass { "passed" } else { "FAILED" });
        }
        if pass {
            best = Some(report.clone());
        }
        steps.push(RampStep { pass, report });
        if !pass {
            break;
        }
        std::thread::sleep(SETTLE);
    }
    Ok(RampReport {
        scenario: "ramp".into(),
        target: match target {
            Target::Node { .. } => "fanout".into(),
            Target::Reflector { .. } => "reflector".into(),
            Target::Relay { .. } => "relay".into(),
        },
        loss_threshold: ramp.loss,
        p99_threshold_us: ramp.p99_us,
        capacity_pps: best.as_ref().map_or(0.0, |r| r.out_pps),
        capacity_subscribers_total: best.as_ref().map_or(0, |r| r.subscribers_total),
        capacity: best,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_grow_geometrically_by_at_least_one() {
        assert_eq!(step_counts(1, 1.5, 10), vec![1, 2, 3, 5, 8]);
        assert_eq!(step_counts(10, 2.0, 80), vec![10, 20, 40, 80]);
        assert_eq!(step_counts(5, 1.01, 8), vec![5, 6, 7, 8]);
        assert!(step_counts(9, 1.5, 8).is_empty());
    }
}
