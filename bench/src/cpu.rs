//! CPU time of the process (or thread) under test: the kernel's CPU-time clock (ns), or
//! utime + stime from `/proc/.../stat` (10 ms ticks) where that clock cannot be read.

use std::path::PathBuf;

use crate::sys;

/// Reads utime + stime of one process or thread.
#[derive(Debug, Clone)]
pub struct CpuProbe {
    id: i32,
    thread: bool,
    path: PathBuf,
    ns_per_tick: u64,
}

impl CpuProbe {
    /// The whole process `pid` (all its threads).
    pub fn process(pid: i32) -> CpuProbe {
        Self::at(pid, false, PathBuf::from(format!("/proc/{pid}/stat")))
    }

    /// One thread of this process.
    pub fn own_thread(tid: i32) -> CpuProbe {
        Self::at(
            tid,
            true,
            PathBuf::from(format!("/proc/self/task/{tid}/stat")),
        )
    }

    fn at(id: i32, thread: bool, path: PathBuf) -> CpuProbe {
        CpuProbe {
            id,
            thread,
            path,
            ns_per_tick: 1_000_000_000 / sys::clock_ticks_per_sec().max(1),
        }
    }

    /// CPU time used so far in ns, or None if the process is gone or the file is unreadable.
    pub fn cpu_ns(&self) -> Option<u64> {
        if let Some(ns) = sys::cpu_clock_ns(self.id, self.thread) {
            return Some(ns);
        }
        let stat = std::fs::read_to_string(&self.path).ok()?;
        parse_stat_ticks(&stat).map(|t| t * self.ns_per_tick)
    }
}

/// utime + stime (fields 14 and 15) from a stat line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last ')'.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3.. ; utime is field 14, i.e. index 11 here.
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "1234 (we (ird) name) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15";
        assert_eq!(parse_stat_ticks(line), Some(333));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn own_process_reads() {
        let p = CpuProbe::process(std::process::id() as i32);
        assert!(p.cpu_ns().is_some());
        assert!(CpuProbe::own_thread(sys::gettid()).cpu_ns().is_some());
    }
}
