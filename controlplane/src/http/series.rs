//! The `/metrics` series that are not plain counters: build info, both planes' process
//! numbers, per-stream series under a cardinality cap, and the latency histograms.
//! Appended to `super::metrics`'s text, in the same hand-written exposition (docs/operations.md
//! says why no metrics crate).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::core::histogram::{latency, Histogram};
use crate::core::link::Inner;
use crate::core::procstat;
use crate::core::traffic::{is_publisher, StreamTotals};

/// The label value of the series that sums the streams over the cap.
pub const OTHER: &str = "_other";

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP switchyard_{name} {help}");
    let _ = writeln!(out, "# TYPE switchyard_{name} {kind}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything here, for a scrape. `max_streams`: `[metrics] max_stream_series`.
pub fn render(out: &mut String, inner: &Inner, max_streams: usize) {
    build_info(out);
    process(out, inner);
    streams(out, inner, max_streams);
    histograms(out);
}

fn build_info(out: &mut String) {
    header(
        out,
        "build_info",
        "gauge",
        "Always 1; the labels say which build runs.",
    );
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let _ = writeln!(
        out,
        "switchyard_build_info{{version=\"{}\",profile=\"{profile}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
}

fn process(out: &mut String, inner: &Inner) {
    let mut planes = vec![("control", procstat::read(std::process::id()))];
    if let Some(d) = inner.node.dataplane() {
        planes.push(("data", procstat::read(d.pid)));
    }
    let planes: Vec<_> = planes
        .into_iter()
        .filter_map(|(p, s)| Some((p, s?)))
        .collect();
    // One series per process figure: (name, type, help, value; None leaves the plane out).
    type Value = fn(&procstat::ProcStat) -> Option<String>;
    let series: [(&str, &str, &str, Value); 3] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of each plane's process.",
            |s| Some(s.cpu_seconds.to_string()),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of each plane's process.",
            |s| Some(s.rss_bytes.to_string()),
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors of each plane's process.",
            |s| s.open_fds.map(|n| n.to_string()),
        ),
    ];
    for (name, kind, help, value) in series {
        header(out, name, kind, help);
        for (p, s) in &planes {
            if let Some(v) = value(s) {
                let _ = writeln!(out, "switchyard_{name}{{plane=\"{p}\"}} {v}");
            }
        }
    }
}

/// One stream's series values.
#[derive(Clone, Copy, Default)]
struct Row {
    totals: StreamTotals,
    subscribers: u64,
}

/// The busiest `max` streams (by bytes in + out) by name, the rest summed under
/// [`OTHER`]; and how many were summed.
fn capped(rows: HashMap<String, Row>, max: usize) -> (Vec<(String, Row)>, usize) {
    let mut rows: Vec<(String, Row)> = rows.into_iter().collect();
    rows.sort_by(|a, b| {
        let w = |r: &Row| r.totals.bytes_in.saturating_add(r.totals.bytes_out);
        w(&b.1).cmp(&w(&a.1)).then_with(|| a.0.cmp(&b.0))
    });
    if rows.len() <= max {
        return (rows, 0);
    }
    let rest = rows.split_off(max);
    let folded = rest.len();
    let mut other = Row::default();
    for (_, r) in rest {
        other.totals.packets_in += r.totals.packets_in;
        other.totals.bytes_in += r.totals.bytes_in;
        other.totals.packets_out += r.totals.packets_out;
        other.totals.bytes_out += r.totals.bytes_out;
        other.subscribers += r.subscribers;
    }
    rows.push((OTHER.to_owned(), other));
    (rows, folded)
}

fn streams(out: &mut String, inner: &Inner, max: usize) {
    let totals = inner
        .stats
        .as_ref()
        .map(|st| inner.traffic.streams(&inner.node, st))
        .unwrap_or_default();
    let mut rows: HashMap<String, Row> = HashMap::new();
    for s in inner.node.sessions() {
        let r = rows.entry(s.stream.clone()).or_default();
        if !is_publisher(&s.role) {
            r.subscribers += 1;
        }
    }
    for (stream, t) in totals {
        rows.entry(stream).or_default().totals = t;
    }
    let (rows, folded) = capped(rows, max);
    header(
        out,
        "stream_series_folded",
        "gauge",
        "Streams over [metrics] max_stream_series, summed into the stream=\"_other\" series.",
    );
    let _ = writeln!(out, "switchyard_stream_series_folded {folded}");
    type Value = fn(&Row) -> u64;
    let series: [(&str, &str, &str, Value); 5] = [
        (
            "stream_packets_in_total",
            "counter",
            "Packets from the stream's publisher or relay-in.",
            |r| r.totals.packets_in,
        ),
        (
            "stream_bytes_in_total",
            "counter",
            "Bytes from the stream's publisher or relay-in.",
            |r| r.totals.bytes_in,
        ),
        (
            "stream_packets_out_total",
            "counter",
            "Packets sent to the stream's subscribers (ended ones included).",
            |r| r.totals.packets_out,
        ),
        (
            "stream_bytes_out_total",
            "counter",
            "Bytes sent to the stream's subscribers (ended ones included).",
            |r| r.totals.bytes_out,
        ),
        (
            "stream_subscribers",
            "gauge",
            "Subscribers (WHEP, plain, relay-out) of the stream on this node.",
            |r| r.subscribers,
        ),
    ];
    for (name, kind, help, f) in series {
        header(out, name, kind, help);
        for (stream, r) in &rows {
            let _ = writeln!(
                out,
                "switchyard_{name}{{stream=\"{}\"}} {}",
                escape(stream),
                f(r)
            );
        }
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let (buckets, sum, count) = h.cumulative();
    let sep = if labels.is_empty() { "" } else { "," };
    for (le, n) in buckets {
        let le = if le.is_infinite() {
            "+Inf".to_owned()
        } else {
            le.to_string()
        };
        let _ = writeln!(
            out,
            "switchyard_{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}"
        );
    }
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "switchyard_{name}_sum{braces} {sum}");
    let _ = writeln!(out, "switchyard_{name}_count{braces} {count}");
}

fn histograms(out: &mut String) {
    let l = latency();
    header(
        out,
        "http_request_duration_seconds",
        "histogram",
        "HTTP request handling time, by route template and status class.",
    );
    l.each_http(|route, class, h| {
        let labels = format!("route=\"{}\",status=\"{class}\"", escape(route));
        histogram(out, "http_request_duration_seconds", &labels, h);
    });
    header(
        out,
        "join_seconds",
        "histogram",
        "WHIP/WHEP join time: from the POST that made the session to DTLS connected.",
    );
    histogram(out, "join_seconds", "protocol=\"whip\"", &l.whip_join);
    histogram(out, "join_seconds", "protocol=\"whep\"", &l.whep_join);
    header(
        out,
        "dtls_handshake_seconds",
        "histogram",
        "DTLS handshake time: from ICE latching the peer to DTLS connected, as the control plane sees the events.",
    );
    histogram(out, "dtls_handshake_seconds", "", &l.dtls_handshake);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(bytes: u64) -> Row {
        Row {
            totals: StreamTotals {
                packets_in: 1,
                bytes_in: bytes,
                packets_out: 2,
                bytes_out: 0,
            },
            subscribers: 1,
        }
    }

    #[test]
    fn streams_over_the_cap_fold_into_other() {
        let rows: HashMap<String, Row> = [("a", 10), ("b", 30), ("c", 20), ("d", 5)]
            .into_iter()
            .map(|(n, b)| (n.to_owned(), row(b)))
            .collect();
        let (out, folded) = capped(rows.clone(), 2);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "c", OTHER]);
        assert_eq!(folded, 2);
        let other = out[2].1;
        assert_eq!(
            (
                other.totals.bytes_in,
                other.totals.packets_out,
                other.subscribers
            ),
            (15, 4, 2)
        );
        assert_eq!(capped(rows.clone(), 4).1, 0);
        let (all_other, n) = capped(rows, 0);
        assert_eq!((all_other.len(), n), (1, 4));
    }
}
