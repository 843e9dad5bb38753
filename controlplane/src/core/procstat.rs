//! CPU time, resident memory and open descriptors of a process, from `/proc/<pid>`: for
//! `/metrics`, of this control plane and of the data plane (its pid from the `Hello`).

use std::path::Path;

/// One process's numbers as `/proc` had them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcStat {
    /// User + system CPU time.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// `None` where `/proc/<pid>/fd` is not readable (another user's process).
    pub open_fds: Option<u64>,
}

/// `pid`'s numbers, or `None` when it is gone or `/proc` reads as something unexpected.
pub fn read(pid: u32) -> Option<ProcStat> {
    let dir = Path::new("/proc").join(pid.to_string());
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let mut p = parse_stat(&stat)?;
    p.rss_bytes = parse_rss(&status)?;
    p.open_fds = std::fs::read_dir(dir.join("fd"))
        .ok()
        .map(|d| d.count() as u64);
    Some(p)
}

/// `/proc` reports CPU times in USER_HZ ticks, which the kernel fixes at 100 for user
/// space on every architecture Switchyard runs on (whatever its internal HZ); reading it
/// with sysconf would need `unsafe` in a crate that has none.
const USER_HZ: f64 = 100.0;

/// `/proc/<pid>/stat`: the fields after the command name (which may hold spaces and
/// parentheses, hence the last `)`); utime and stime are fields 14 and 15.
fn parse_stat(stat: &str) -> Option<ProcStat> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    let (utime, stime) = (field(14)?, field(15)?);
    Some(ProcStat {
        cpu_seconds: utime.saturating_add(stime) as f64 / USER_HZ,
        rss_bytes: 0,
        open_fds: None,
    })
}

/// `VmRSS:` of `/proc/<pid>/status`, in bytes (the file says kB; no page size needed).
fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let p = read(std::process::id()).expect("own /proc");
        assert!(p.rss_bytes > 0);
        assert!(p.open_fds.is_some_and(|n| n > 0));
    }

    #[test]
    fn command_names_with_spaces_and_parens() {
        let line = "42 (a b) c) S 1 1 1 0 -1 0 0 0 0 0 250 50 0 0 20 0 1 0 100 1000 7 18446744073709551615";
        let p = parse_stat(line).expect("parsed");
        assert!((p.cpu_seconds - 3.0).abs() < 1e-9);
        assert_eq!(
            parse_rss("Name:\tx\nVmRSS:\t  1234 kB\n"),
            Some(1234 * 1024)
        );
    }
}
