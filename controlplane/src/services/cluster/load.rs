//! This node's own load, measured from its data plane every health interval and reported to
//! the cluster store as a heartbeat (no HTTP to itself), and answered by `GET /health`.
//!
//! Resources, each a share from 0 (idle) up (1 = at the size the node is rated for):
//!
//! - `sessions`: live sessions / (workers × `consumers_per_worker`);
//! - `pps`: the busiest worker's outgoing packets per second / `max_pps_per_worker`;
//! - `cpu`: CPU time of the data plane process (`/proc/{pid}/stat`, utime + stime) per second
//!   of wall time, divided by the workers (one core each at most), Linux only.
//!
//! A node at `overload_ratio` or more of any of them is overloaded: it takes no new rooms and
//! its `/health` answers 503.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// `USER_HZ`, the unit of `/proc/{pid}/stat` times: 100 on every Linux architecture.
const CLOCK_TICKS: f64 = 100.0;

/// What the node measured about itself last.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    /// Share in use of each resource.
    pub load: BTreeMap<String, f64>,
    pub overloaded: bool,
    /// Why it is overloaded, e.g. `sessions at 1.00 of capacity (overload ratio 0.80)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The last report, shared between the health task (which measures) and its readers
/// (`/health`, `/metrics`, the cascade's fitness check).
#[derive(Debug, Default)]
pub struct Latest(Mutex<Option<LoadReport>>);

impl Latest {
    /// The last report; None before the first measurement.
    pub fn get(&self) -> Option<LoadReport> {
        self.lock().clone()
    }

    pub fn set(&self, report: LoadReport) {
        *self.lock() = Some(report);
    }

    /// Every update replaces the whole value: a poisoned lock still holds a report.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<LoadReport>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The raw numbers one measurement reads.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    pub sessions: u64,
    pub workers: u16,
    /// Packets sent so far, per worker (the stats file's `TxPackets`); empty without stats.
    pub tx_packets: Vec<u64>,
    /// CPU ticks the data plane process used so far; None when unreadable.
    pub cpu_ticks: Option<u64>,
}

/// Turns successive readings into shares (rates need the previous reading).
#[derive(Debug)]
pub struct Meter {
    consumers_per_worker: u64,
    max_pps_per_worker: u64,
    overload_ratio: f64,
    prev: Option<(Instant, Reading)>,
}

impl Meter {
    pub fn new(consumers_per_worker: u32, max_pps_per_worker: u64, overload_ratio: f64) -> Self {
        Self {
            consumers_per_worker: u64::from(consumers_per_worker).max(1),
            max_pps_per_worker: max_pps_per_worker.max(1),
            overload_ratio,
            prev: None,
        }
    }

    /// Shares for `now`'s reading. Rates (`pps`, `cpu`) appear from the second reading on.
    pub fn measure(&mut self, now: Instant, r: Reading) -> LoadReport {
        let workers = u64::from(r.workers.max(1));
        let mut load = BTreeMap::new();
        load.insert(
            "sessions".to_owned(),
            r.sessions as f64 / (workers * self.consumers_per_worker) as f64,
        );
        if let Some((then, prev)) = &self.prev {
            let secs = now.duration_since(*then).as_secs_f64();
            if secs > 0.0 {
                if !r.tx_packets.is_empty() && r.tx_packets.len() == prev.tx_packets.len() {
                    let busiest = r
                        .tx_packets
                        .iter()
                        .zip(&prev.tx_packets)
                        .map(|(n, p)| n.saturating_sub(*p))
                        .max()
                        .unwrap_or(0);
                    load.insert(
                        "pps".to_owned(),
                        busiest as f64 / secs / self.max_pps_per_worker as f64,
                    );
                }
                if let (Some(n), Some(p)) = (r.cpu_ticks, prev.cpu_ticks) {
                    let used = n.saturating_sub(p) as f64 / CLOCK_TICKS;
                    load.insert("cpu".to_owned(), used / secs / workers as f64);
                }
            }
        }
        self.prev = Some((now, r));
        verdict(load, self.overload_ratio)
    }
}

/// Whether any share is at or over `ratio`, and which (the largest) with its value.
pub fn verdict(load: BTreeMap<String, f64>, ratio: f64) -> LoadReport {
    let worst = load
        .iter()
        .filter(|(_, v)| **v >= ratio)
        .max_by(|a, b| a.1.total_cmp(b.1));
    let reason = worst.map(|(k, v)| format!("{k} at {v:.2} of capacity (overload ratio {ratio})"));
    LoadReport {
        overloaded: reason.is_some(),
        reason,
        load,
    }
}

/// utime + stime of process `pid`, in clock ticks, from `/proc/{pid}/stat`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    // After the name: state (3), ..., utime (14), stime (15).
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn shares_rates_and_verdict() {
        let mut m = Meter::new(10, 1000, 0.8);
        let t0 = Instant::now();
        let r = m.measure(
            t0,
            Reading {
                sessions: 5,
                workers: 2,
                tx_packets: vec![0, 0],
                cpu_ticks: Some(0),
            },
        );
        assert_eq!(r.load.len(), 1);
        assert_eq!(r.load["sessions"], 0.25);
        assert!(!r.overloaded && r.reason.is_none());
        // One second later: worker 1 sent 900 packets (0.9 of 1000/s), the process used
        // 0.5 s of CPU over 2 workers (0.25).
        let r = m.measure(
            t0 + Duration::from_secs(1),
            Reading {
                sessions: 16,
                workers: 2,
                tx_packets: vec![100, 900],
                cpu_ticks: Some(50),
            },
        );
        assert!((r.load["pps"] - 0.9).abs() < 1e-9, "{r:?}");
        assert!((r.load["cpu"] - 0.25).abs() < 1e-9, "{r:?}");
        assert_eq!(r.load["sessions"], 0.8);
        assert!(r.overloaded);
        assert!(
            r.reason.as_deref().unwrap().starts_with("pps at 0.90"),
            "{r:?}"
        );
        // Stats file replaced (fewer workers): no pps, no panic.
        let r = m.measure(
            t0 + Duration::from_secs(2),
            Reading {
                sessions: 0,
                workers: 2,
                tx_packets: vec![0],
                cpu_ticks: None,
            },
        );
        assert_eq!(r.load.keys().collect::<Vec<_>>(), ["sessions"]);
        assert!(!r.overloaded);
    }

    #[test]
    fn proc_stat_times() {
        let line = "42 (swy (data) plane) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat(line), Some(325));
        assert_eq!(parse_stat("garbage"), None);
        assert!(cpu_ticks(std::process::id()).is_some());
    }
}
