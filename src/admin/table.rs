//! Aligned text tables for people, and the units in their cells.

use std::fmt::Write as _;

/// Rows of cells under a header, printed with each column as wide as its widest cell.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// One row; a missing cell prints empty, an extra one is a bug of the caller.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert!(cells.len() <= self.header.len(), "more cells than columns");
        self.rows.push(cells);
    }

    /// Columns two spaces apart, no trailing spaces; widths in characters, not bytes.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map_or("", String::as_str);
                if i > 0 {
                    line.push_str("  ");
                }
                let _ = write!(line, "{c:<w$}");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes with binary units: `512 B`, `1.5 KiB`, `5.1 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Bits per second with decimal units: `800 bit/s`, `64.0 kbit/s`, `1.65 Mbit/s`.
pub fn bitrate(bps: u64) -> String {
    match bps {
        0..=999 => format!("{bps} bit/s"),
        1_000..=999_999 => format!("{:.1} kbit/s", bps as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2} Mbit/s", bps as f64 / 1e6),
        _ => format!("{:.2} Gbit/s", bps as f64 / 1e9),
    }
}

/// A duration in seconds as people read it: `42s`, `5m`, `3h`, `2d`.
pub fn duration_s(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How long before `now_ms` the time `then_ms` was (`-` for a time not set).
pub fn age(then_ms: u64, now_ms: u64) -> String {
    if then_ms == 0 {
        return "-".into();
    }
    duration_s(now_ms.saturating_sub(then_ms) / 1000)
}

/// A share 0..1 as a percentage.
pub fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// Seconds since the Unix epoch as `2026-12-07 10:00:00 UTC` (proleptic Gregorian).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell_without_trailing_spaces() {
        let mut t = Table::new(&["ID", "STREAM", "ROLE"]);
        t.row(vec!["7".into(), "room1/cam".into(), "publisher".into()]);
        t.row(vec!["12".into(), "r/é".into(), "".into()]);
        assert_eq!(
            t.render(),
            "ID  STREAM     ROLE\n\
             7   room1/cam  publisher\n\
             12  r/é\n"
        );
        assert_eq!(Table::new(&["NODE", "URL"]).render(), "NODE  URL\n");
    }

    #[test]
    fn units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5_371_000), "5.1 MiB");
        assert_eq!(bitrate(800), "800 bit/s");
        assert_eq!(bitrate(64_000), "64.0 kbit/s");
        assert_eq!(bitrate(1_650_000), "1.65 Mbit/s");
        assert_eq!(duration_s(42), "42s");
        assert_eq!(duration_s(300), "5m");
        assert_eq!(duration_s(3 * 3600), "3h");
        assert_eq!(duration_s(3 * 86_400), "3d");
        assert_eq!(age(0, 5000), "-");
        assert_eq!(age(1000, 61_000), "60s");
        assert_eq!(percent(0.93), "93%");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_172_652), "2026-12-02 00:50:52 UTC");
    }
}
