//! The latency histogram as a `.hgrm` file: HdrHistogram's percentile distribution text,
//! the format Java's `Histogram.outputPercentileDistribution`, wrk2 and HdrHistogram's
//! plotter (`plotFiles.html`) read and write.
//!
//! Values are recorded in µs and written in ms (scaling ratio 1000, as wrk2 does), with as
//! many decimals as the histogram has significant digits; percentiles step by
//! [`TICKS_PER_HALF_DISTANCE`] per halving of the remaining distance to 100 %, like the
//! reference implementation's default.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Percentile steps per halving of the distance to 100 % (the reference's default, 5).
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Recorded unit (µs) per written unit (ms).
pub const US_PER_MS: f64 = 1000.0;

/// The percentile distribution of `hist` (values in µs) as `.hgrm` text, values in ms.
pub fn percentile_distribution(hist: &Histogram<u64>) -> String {
    let digits = usize::from(hist.sigfig());
    let mut s = String::new();
    let _ = write!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in hist.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / US_PER_MS;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(
                s,
                "{value:>12.digits$} {q:>2.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(s, "{value:>12.digits$} {q:>2.12} {total:>10}");
        }
    }
    let mean = if hist.is_empty() { 0.0 } else { hist.mean() } / US_PER_MS;
    let stdev = if hist.is_empty() { 0.0 } else { hist.stdev() } / US_PER_MS;
    let max = hist.max() as f64 / US_PER_MS;
    let _ = writeln!(
        s,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]"
    );
    let _ = writeln!(
        s,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        hist.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        hist.buckets(),
        sub_buckets(hist.sigfig())
    );
    s
}

/// Sub-buckets per bucket: the reference's `2^ceil(log2(2 × 10^digits))`, which the crate
/// computes the same way but does not expose.
fn sub_buckets(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

/// One `.hgrm` line: value (ms), percentile as a fraction, count up to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub value_ms: f64,
    pub quantile: f64,
    pub total: u64,
}

/// The distribution's lines back from `.hgrm` text (a check for tests and tools; comment
/// and header lines are skipped).
pub fn parse(text: &str) -> Vec<Point> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let value_ms = f.next()?.parse().ok()?;
            let quantile = f.next()?.parse().ok()?;
            let total = f.next()?.parse().ok()?;
            Some(Point {
                value_ms,
                quantile,
                total,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for v in values {
            h.record(v).expect("in range");
        }
        h
    }

    /// Written by the reference implementation, Java HdrHistogram 2.1.11 (Debian's
    /// libhdrhistogram-java), for 1..=1000 µs and 5000 µs in a `Histogram(1, 60000000, 3)`
    /// with `outputPercentileDistribution(System.out, 1000.0)`.
    const REFERENCE: &str = include_str!("../tests/fixtures/reference.hgrm");

    #[test]
    fn matches_the_reference_implementation() {
        let ours = percentile_distribution(&hist((1..=1000).chain([5000])));
        assert_eq!(ours, REFERENCE);
    }

    #[test]
    fn lines_parse_back_and_end_at_the_total() {
        let h = hist((1..=10_000).map(|v| v * 3));
        let text = percentile_distribution(&h);
        let points = parse(&text);
        assert!(points.len() > 20, "{text}");
        let last = points.last().expect("points");
        assert_eq!((last.quantile, last.total), (1.0, 10_000));
        assert!((last.value_ms - 30.0).abs() < 0.05, "{last:?}");
        assert!(points
            .windows(2)
            .all(|w| w[0].value_ms <= w[1].value_ms && w[0].quantile <= w[1].quantile));
        let p50 = points.iter().find(|p| p.quantile >= 0.5).expect("p50");
        assert!((p50.value_ms - 15.0).abs() < 0.05, "{p50:?}");
        assert!(text.contains("#[Buckets =           16, SubBuckets     =         2048]"));
    }

    #[test]
    fn an_empty_histogram_has_only_the_header_and_the_summary() {
        let text = percentile_distribution(&hist([]));
        assert!(parse(&text).is_empty(), "{text}");
        assert!(text.contains("Total count    =            0]"), "{text}");
    }
}
