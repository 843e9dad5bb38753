//! This node's own load, measured from its data plane every health interval and reported to
//! the cluster store as a heartbeat (no HTTP to itself), and answered by `GET /health`.
//!
//! Resources, each a share from 0 (idle) up (1 = at the size the node is rated for):
//!
//! - `sessions`: live sessions / (workers × `consumers_per_worker`);
//! - `pps`: the busiest worker's outgoing packets per second / `max_pps_per_worker`;
//! - `cpu`: CPU time of the data plane process (`/proc/{pid}/stat`, utime + stime) per second
//!   of wall time, divided by the workers (one core each at most), Linux only;
//!
//! and what the host runs out of, whoever uses it (the resources SRS's load-balancing guide
//! names):
//!
//! - `system_cpu`: busy share of all CPUs, every process included (`/proc/stat`);
//! - `bandwidth`: the busiest direction of the busiest interface, bits per second over its
//!   capacity (`cluster.nic_mbps`, else `/sys/class/net/<if>/speed`; interfaces that say no
//!   speed, loopback among them, are not counted unless `nic_mbps` is set);
//! - `rx_drops`: datagrams the kernel dropped on the workers' full receive queues
//!   (`SO_RXQ_OVFL`) per second, over `cluster.max_rx_drops_per_s`;
//! - `memory`: memory in use over the limit: the cgroup's (`memory.max`) when there is one,
//!   else the host's (`MemTotal − MemAvailable` of `MemTotal`).
//!
//! A node at `overload_ratio` or more of any of them is overloaded: it takes no new rooms and
//! its `/health` answers 503, naming every resource over the ratio.

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
    /// Why it is overloaded, e.g. `sessions at 1.00 of capacity (overload ratio 0.80)`;
    /// every resource over the ratio, worst first, separated by `; `.
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
    /// All CPUs' (busy, total) ticks so far (`/proc/stat`).
    pub system_cpu: Option<(u64, u64)>,
    /// Per interface: name, bytes received and sent so far, capacity in bits per second.
    pub net: Vec<(String, u64, u64, Option<u64>)>,
    /// Kernel receive-queue drops on the workers' sockets so far (all workers).
    pub rx_drops: Option<u64>,
    /// Memory (in use, limit), bytes.
    pub memory: Option<(u64, u64)>,
}

/// Turns successive readings into shares (rates need the previous reading).
#[derive(Debug)]
pub struct Meter {
    consumers_per_worker: u64,
    max_pps_per_worker: u64,
    overload_ratio: f64,
    /// Kernel receive drops per second that count as a full share.
    max_rx_drops_per_s: u64,
    prev: Option<(Instant, Reading)>,
}

impl Meter {
    pub fn new(consumers_per_worker: u32, max_pps_per_worker: u64, overload_ratio: f64) -> Self {
        Self {
            consumers_per_worker: u64::from(consumers_per_worker).max(1),
            max_pps_per_worker: max_pps_per_worker.max(1),
            overload_ratio,
            max_rx_drops_per_s: 100,
            prev: None,
        }
    }

    /// Kernel receive drops per second that count as a full share (`cluster.max_rx_drops_per_s`).
    pub fn with_max_rx_drops(mut self, per_s: u64) -> Self {
        self.max_rx_drops_per_s = per_s.max(1);
        self
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
                if let (Some((busy, total)), Some((pb, pt))) = (r.system_cpu, prev.system_cpu) {
                    let t = total.saturating_sub(pt);
                    if t > 0 {
                        load.insert(
                            "system_cpu".to_owned(),
                            busy.saturating_sub(pb) as f64 / t as f64,
                        );
                    }
                }
                let busiest = r
                    .net
                    .iter()
                    .filter_map(|(name, rx, tx, speed)| {
                        let speed = (*speed)? as f64;
                        let (_, prx, ptx, _) = prev.net.iter().find(|p| &p.0 == name)?;
                        let bytes = rx.saturating_sub(*prx).max(tx.saturating_sub(*ptx));
                        (speed > 0.0).then(|| bytes as f64 * 8.0 / secs / speed)
                    })
                    .max_by(f64::total_cmp);
                if let Some(b) = busiest {
                    load.insert("bandwidth".to_owned(), b);
                }
                if let (Some(n), Some(p)) = (r.rx_drops, prev.rx_drops) {
                    let per_s = n.saturating_sub(p) as f64 / secs;
                    load.insert(
                        "rx_drops".to_owned(),
                        per_s / self.max_rx_drops_per_s as f64,
                    );
                }
            }
        }
        if let Some((used, limit)) = r.memory {
            if limit > 0 {
                load.insert("memory".to_owned(), used as f64 / limit as f64);
            }
        }
        self.prev = Some((now, r));
        verdict(load, self.overload_ratio)
    }
}

/// Whether any share is at or over `ratio`, and which (worst first) with their values.
pub fn verdict(load: BTreeMap<String, f64>, ratio: f64) -> LoadReport {
    let mut over: Vec<(&String, &f64)> = load.iter().filter(|(_, v)| **v >= ratio).collect();
    over.sort_by(|a, b| b.1.total_cmp(a.1));
    let reason = (!over.is_empty()).then(|| {
        over.iter()
            .map(|(k, v)| format!("{k} at {v:.2} of capacity"))
            .collect::<Vec<_>>()
            .join("; ")
            + &format!(" (overload ratio {ratio})")
    });
    LoadReport {
        overloaded: reason.is_some(),
        reason,
        load,
    }
}

/// All CPUs' (busy, total) ticks from `/proc/stat`'s `cpu` line. Busy is everything but
/// idle and iowait (a CPU waiting on disk could run something).
pub fn parse_system_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (v.len() >= 4).then(|| (total.saturating_sub(idle), total))
}

/// Per interface, bytes received and sent so far, from `/proc/net/dev`.
pub fn parse_net_dev(text: &str) -> Vec<(String, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_ascii_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
            Some((name.trim().to_owned(), *f.first()?, *f.get(8)?))
        })
        .collect()
}

/// `MemTotal − MemAvailable` and `MemTotal`, bytes, from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let kb = |key: &str| -> Option<u64> {
        let l = text.lines().find(|l| l.starts_with(key))?;
        l[key.len()..].split_ascii_whitespace().next()?.parse().ok()
    };
    let total = kb("MemTotal:")? * 1024;
    let avail = kb("MemAvailable:")? * 1024;
    Some((total.saturating_sub(avail), total))
}

/// The host's side of a [`Reading`]: system CPU, interfaces (with `nic_mbps` as every
/// interface's capacity when set), memory against the cgroup's limit or the host's.
pub fn host_reading(nic_mbps: Option<u64>) -> Reading {
    let system_cpu = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_system_cpu(&s));
    let net = std::fs::read_to_string("/proc/net/dev")
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default()
        .into_iter()
        .map(|(name, rx, tx)| {
            let speed = match nic_mbps {
                Some(m) if name != "lo" => Some(m),
                Some(_) => None,
                None => std::fs::read_to_string(format!("/sys/class/net/{name}/speed"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .filter(|&m| m > 0)
                    .map(|m| m as u64),
            };
            (name, rx, tx, speed.map(|m| m.saturating_mul(1_000_000)))
        })
        .collect();
    Reading {
        system_cpu,
        net,
        memory: cgroup_memory().or_else(|| {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| parse_meminfo(&t))
        }),
        ..Reading::default()
    }
}

/// (`memory.current`, `memory.max`) of this process's cgroup (v2), when it has a limit.
fn cgroup_memory() -> Option<(u64, u64)> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = format!("/sys/fs/cgroup{path}");
    let max: u64 = std::fs::read_to_string(format!("{dir}/memory.max"))
        .ok()?
        .trim()
        .parse()
        .ok()?; // "max": no limit
    let current: u64 = std::fs::read_to_string(format!("{dir}/memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((current, max))
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
                ..Reading::default()
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
                ..Reading::default()
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
                ..Reading::default()
            },
        );
        assert_eq!(r.load.keys().collect::<Vec<_>>(), ["sessions"]);
        assert!(!r.overloaded);
    }

    #[test]
    fn host_shares_and_every_reason() {
        let mut m = Meter::new(10, 1000, 0.8).with_max_rx_drops(100);
        let t0 = Instant::now();
        let base = Reading {
            workers: 1,
            system_cpu: Some((1000, 10_000)),
            net: vec![
                ("eth0".into(), 0, 0, Some(1_000_000_000)),
                ("lo".into(), 0, 0, None),
            ],
            rx_drops: Some(0),
            memory: Some((6, 10)),
            ..Reading::default()
        };
        let r = m.measure(t0, base);
        assert_eq!(r.load["memory"], 0.6);
        assert!(!r.overloaded);
        // One second: 90 % of all CPUs busy, 950 Mbit/s out of a 1 Gbit/s NIC (loopback's
        // traffic not counted), 20 kernel drops/s, memory at 0.9.
        let r = m.measure(
            t0 + Duration::from_secs(1),
            Reading {
                workers: 1,
                system_cpu: Some((1000 + 900, 10_000 + 1000)),
                net: vec![
                    ("eth0".into(), 1_000, 118_750_000, Some(1_000_000_000)),
                    ("lo".into(), u64::MAX / 2, 0, None),
                ],
                rx_drops: Some(20),
                memory: Some((9, 10)),
                ..Reading::default()
            },
        );
        assert!((r.load["system_cpu"] - 0.9).abs() < 1e-9, "{r:?}");
        assert!((r.load["bandwidth"] - 0.95).abs() < 1e-9, "{r:?}");
        assert!((r.load["rx_drops"] - 0.2).abs() < 1e-9, "{r:?}");
        assert!(r.overloaded);
        let reason = r.reason.expect("reason");
        assert!(
            reason.starts_with("bandwidth at 0.95")
                && reason.contains("system_cpu at 0.90")
                && reason.contains("memory at 0.90"),
            "{reason}"
        );
    }

    #[test]
    fn proc_parsers() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        assert_eq!(parse_system_cpu(stat), Some((160, 980)));
        assert_eq!(parse_system_cpu("nonsense"), None);
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes\n  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n";
        assert_eq!(
            parse_net_dev(dev),
            vec![("eth0".to_owned(), 1000, 2000), ("lo".to_owned(), 5, 5)]
        );
        let mem = "MemTotal:       16000 kB\nMemFree:  100 kB\nMemAvailable:   4000 kB\n";
        assert_eq!(parse_meminfo(mem), Some((12000 * 1024, 16000 * 1024)));
        // This host's own files parse.
        let h = host_reading(None);
        assert!(
            h.system_cpu.is_some() && !h.net.is_empty() && h.memory.is_some(),
            "{h:?}"
        );
    }

    #[test]
    fn proc_stat_times() {
        let line = "42 (swy (data) plane) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat(line), Some(325));
        assert_eq!(parse_stat("garbage"), None);
        assert!(cpu_ticks(std::process::id()).is_some());
    }
}
