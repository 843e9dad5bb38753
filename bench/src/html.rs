//! The HTML report (`--html FILE`): one self-contained page (inline CSS and SVG, no script,
//! nothing fetched) with the run's figures and plots, for a browser.
//!
//! A run: latency CDF of the measured window (from the HDR histogram), throughput and loss
//! over time, latency over time (from the [`crate::timeline`]). A ramp: the capacity curve
//! (offered against delivered packets/s per step, pass or fail), p99 latency and loss per
//! step against the thresholds, each step's latency CDF, and the steps' throughput one after
//! another.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::report::{RampReport, Report};
use crate::svg::{escape, label, style, Axis, Mark, Marker, Plot, Series};

/// Latency CDF points: (ms, fraction at or below), from the HDR histogram's percentile
/// steps (dense towards the tail).
fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    h.iter_quantiles(10)
        .map(|v| {
            (
                v.value_iterated_to() as f64 / 1000.0,
                v.quantile_iterated_to(),
            )
        })
        .collect()
}

fn ms_range(hists: &[&Histogram<u64>]) -> Option<(f64, f64)> {
    let non_empty: Vec<_> = hists.iter().filter(|h| !h.is_empty()).collect();
    if non_empty.is_empty() {
        return None;
    }
    let lo = non_empty.iter().map(|h| h.min()).min().unwrap_or(1).max(1);
    let hi = non_empty.iter().map(|h| h.max()).max().unwrap_or(1);
    Some((lo as f64 / 1000.0, hi as f64 / 1000.0))
}

/// A CDF plot of one or more named histograms.
fn cdf_plot(id: &str, title: &str, hists: &[(String, &Histogram<u64>)]) -> Option<Plot> {
    let refs: Vec<&Histogram<u64>> = hists.iter().map(|(_, h)| *h).collect();
    let (lo, hi) = ms_range(&refs)?;
    let mut p = Plot::new(
        id,
        title,
        Axis::log("latency (ms, log scale)", lo, hi),
        Axis::linear("packets at or below (%)", 0.0, 100.0),
    );
    for (i, (name, h)) in hists.iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        let pts = cdf_points(h)
            .into_iter()
            .map(|(x, q)| (x, q * 100.0))
            .collect();
        p.series.push(Series::line(name, i, pts));
    }
    if let [(_, h)] = hists {
        for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
            let v = h.value_at_quantile(q) as f64 / 1000.0;
            p.marks.push(Mark::VLine {
                x: v,
                label: format!("{name} {}", label(v)),
            });
        }
    }
    Some(p)
}

fn warmup_band(r: &Report, offset: f64, label: &str) -> Mark {
    Mark::Band {
        x0: offset,
        x1: offset + r.warmup_s,
        label: label.into(),
    }
}

fn time_end(r: &Report) -> f64 {
    r.timeline
        .last()
        .map_or(r.warmup_s + r.duration_s, |s| s.t_s + s.duration_s)
}

/// Throughput (in and out packets/s), loss and latency over the time of `runs`, laid one
/// after another (`(label, report)`; a single run has one).
fn time_plots(prefix: &str, runs: &[(String, &Report)]) -> Vec<Plot> {
    let total: f64 = runs.iter().map(|(_, r)| time_end(r)).sum();
    let mut thr = Plot::new(
        &format!("{prefix}throughput"),
        "Throughput over time",
        Axis::linear("time (s)", 0.0, total),
        Axis::linear("packets/s", 0.0, 1.0),
    );
    let mut loss = Plot::new(
        &format!("{prefix}loss"),
        "Loss over time (by send time)",
        Axis::linear("time (s)", 0.0, total),
        Axis::linear("loss (%)", 0.0, 1.0),
    );
    let mut lat = Plot::new(
        &format!("{prefix}latency-time"),
        "Latency over time (by arrival time)",
        Axis::linear("time (s)", 0.0, total),
        Axis::log("latency (ms, log scale)", 0.01, 1.0),
    );
    let (mut expected, mut out, mut lossy) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    let (mut max_pps, mut max_loss, mut lat_lo, mut lat_hi) = (0.0f64, 0.0f64, f64::MAX, 0.0f64);
    let mut offset = 0.0;
    for (name, r) in runs {
        // One run: a labelled warm-up; several: each labelled by name, warm-ups shaded.
        let band = warmup_band(r, offset, if runs.len() > 1 { "" } else { "warm-up" });
        for p in [&mut thr, &mut loss, &mut lat] {
            p.marks.push(band.clone());
            if runs.len() > 1 {
                p.marks.push(Mark::VLine {
                    x: offset,
                    label: name.clone(),
                });
            }
        }
        for s in &r.timeline {
            let t = offset + s.t_s + s.duration_s / 2.0;
            let exp = s.expected as f64 / s.duration_s;
            expected.push((t, exp));
            out.push((t, s.out_pps));
            max_pps = max_pps.max(exp).max(s.out_pps);
            if let Some(l) = s.loss_ratio {
                lossy.push((t, l * 100.0));
                max_loss = max_loss.max(l * 100.0);
            }
            if let Some(l) = s.latency_us {
                let (a, b) = (l.p50 as f64 / 1000.0, l.p99 as f64 / 1000.0);
                p50.push((t, a));
                p99.push((t, b));
                lat_lo = lat_lo.min(a);
                lat_hi = lat_hi.max(b);
            }
        }
        offset += time_end(r);
        // Steps apart: a gap, not a line across from one to the next.
        for v in [&mut expected, &mut out, &mut lossy, &mut p50, &mut p99] {
            v.push((offset, f64::NAN));
        }
    }
    thr.y = Axis::linear("packets/s", 0.0, max_pps * 1.1);
    loss.y = Axis::linear("loss (%)", 0.0, (max_loss * 1.2).max(1.0));
    if lat_hi > 0.0 {
        lat.y = Axis::log("latency (ms, log scale)", lat_lo, lat_hi);
    }
    let gaps = |v: Vec<(f64, f64)>| split_at_gaps(&v);
    for (i, seg) in gaps(expected).into_iter().enumerate() {
        let mut s = Series::line(
            if i == 0 {
                "offered (sent × subscribers)"
            } else {
                ""
            },
            0,
            seg,
        );
        s.dashed = true;
        thr.series.push(s);
    }
    for (i, seg) in gaps(out).into_iter().enumerate() {
        thr.series
            .push(Series::line(if i == 0 { "received" } else { "" }, 1, seg));
    }
    for (i, seg) in gaps(lossy).into_iter().enumerate() {
        let mut s = Series::line(if i == 0 { "loss" } else { "" }, 1, seg);
        s.markers = true;
        loss.series.push(s);
    }
    for (i, seg) in gaps(p50).into_iter().enumerate() {
        lat.series
            .push(Series::line(if i == 0 { "p50" } else { "" }, 0, seg));
    }
    for (i, seg) in gaps(p99).into_iter().enumerate() {
        lat.series
            .push(Series::line(if i == 0 { "p99" } else { "" }, 1, seg));
    }
    vec![thr, loss, lat]
}

/// Runs of finite points between NaN gaps (a polyline cannot jump).
fn split_at_gaps(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    points
        .split(|(_, y)| !y.is_finite())
        .filter(|s| !s.is_empty())
        .map(<[_]>::to_vec)
        .collect()
}

fn page(title: &str, command: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}}\
         h1{{font-size:20px}}h2{{font-size:16px;margin-top:28px}}\
         table{{border-collapse:collapse;margin:8px 0}}\
         td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}\
         th{{background:#f5f5f5}}td.l,th.l,table.summary td{{text-align:left}}\
         code{{background:#f5f5f5;padding:2px 4px;word-break:break-all}}\
         .fail{{color:#b00}}.pass{{color:#070}}{css}\
         </style></head><body><h1>{t}</h1><p>Command: <code>{c}</code></p>{body}\
         <p>Plots: latency from the measured window's HDR histogram; over-time series per \
         second from per-second counters (latency there in 12.5 % buckets). Field meanings: \
         docs/bench.md.</p></body></html>\n",
        t = escape(title),
        c = escape(command),
        css = style(),
    )
}

fn row(s: &mut String, name: &str, value: String) {
    let _ = write!(
        s,
        "<tr><th class=\"l\">{}</th><td>{}</td></tr>",
        escape(name),
        escape(&value)
    );
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn summary(r: &Report) -> String {
    let mut s = String::from("<table class=\"summary\">");
    row(
        &mut s,
        "scenario",
        format!("{} ({})", r.scenario, r.profile),
    );
    row(
        &mut s,
        "load",
        format!(
            "{} publishers × {} subscribers ({} in all), {} packets/s each, {} B",
            r.publishers, r.subscribers, r.subscribers_total, r.rate_pps, r.size
        ),
    );
    row(
        &mut s,
        "window",
        format!("{:.1} s after a {:.1} s warm-up", r.duration_s, r.warmup_s),
    );
    row(
        &mut s,
        "packets",
        format!(
            "sent {}, expected {}, received {}, lost {} ({:.4} %), reordered {}, duplicated {}",
            r.sent_packets,
            r.expected_packets,
            r.received_packets,
            r.lost_packets,
            r.loss_ratio * 100.0,
            r.reorder,
            r.duplicates
        ),
    );
    row(
        &mut s,
        "rate",
        format!(
            "in {:.0} packets/s, out {:.0} packets/s",
            r.in_pps, r.out_pps
        ),
    );
    let l = &r.latency_us;
    row(
        &mut s,
        "latency (µs)",
        format!(
            "p50 {}, p90 {}, p99 {}, p99.9 {}, max {}, mean {:.1}; jitter {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean, r.jitter_us
        ),
    );
    row(
        &mut s,
        "data plane CPU",
        format!(
            "{} cores, {} ns per packet",
            opt(r.dataplane_cpu, 3),
            opt(r.cpu_ns_per_packet, 0)
        ),
    );
    if let Some(j) = &r.join_ms {
        row(
            &mut s,
            "join (ms)",
            format!(
                "p50 {:.1}, p99 {:.1}, max {:.1} ({} WebRTC subscribers)",
                j.p50, j.p99, j.max, j.count
            ),
        );
    }
    for g in &r.groups {
        row(
            &mut s,
            &format!("hop {}: {}", g.hops, g.node),
            format!(
                "{} subscribers, loss {:.4} %, p50 {} µs, p99 {} µs",
                g.subscribers,
                g.loss_ratio * 100.0,
                g.latency_us.p50,
                g.latency_us.p99
            ),
        );
    }
    // `ignored` (STUN, RTCP, DTLS at a subscriber) is not an error.
    let errors = crate::report::Errors {
        ignored: 0,
        ..r.errors.clone()
    };
    if errors != crate::report::Errors::default() {
        row(&mut s, "errors", format!("{:?}", r.errors));
    }
    s.push_str("</table>");
    s
}

/// The report of one run.
pub fn run_report(r: &Report, command: &str) -> String {
    let mut body = summary(r);
    body.push_str("<h2>Latency</h2>");
    match r
        .latency_histogram
        .as_ref()
        .and_then(|h| cdf_plot("cdf", "Latency CDF (measured window)", &[("all".into(), h)]))
    {
        Some(p) => body.push_str(&p.svg()),
        None => body.push_str("<p>No packet arrived in the measured window.</p>"),
    }
    body.push_str("<h2>Over time</h2>");
    for p in time_plots("", &[(r.scenario.clone(), r)]) {
        body.push_str(&p.svg());
    }
    page(
        &format!(
            "switchyard-bench {}: {} × {}",
            r.scenario, r.publishers, r.subscribers
        ),
        command,
        &body,
    )
}

/// The report of a ramp.
pub fn ramp_report(r: &RampReport, command: &str) -> String {
    let mut body = String::from("<table class=\"summary\">");
    row(&mut body, "target", r.target.clone());
    row(
        &mut body,
        "thresholds",
        format!(
            "loss ≤ {:.3} %, p99 ≤ {} µs",
            r.loss_threshold * 100.0,
            r.p99_threshold_us
        ),
    );
    row(
        &mut body,
        "capacity",
        format!(
            "{:.0} packets/s out ({} subscribers)",
            r.capacity_pps, r.capacity_subscribers_total
        ),
    );
    body.push_str("</table><table class=\"steps\"><tr><th>step</th><th>publishers</th><th>subscribers</th><th>offered out/s</th><th>received out/s</th><th>loss %</th><th>p50 µs</th><th>p99 µs</th><th>CPU</th><th>verdict</th></tr>");
    for (i, st) in r.steps.iter().enumerate() {
        let x = &st.report;
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            i + 1,
            x.publishers,
            x.subscribers_total,
            offered(x),
            x.out_pps,
            x.loss_ratio * 100.0,
            x.latency_us.p50,
            x.latency_us.p99,
            opt(x.dataplane_cpu, 3),
            if st.pass { "pass" } else { "fail" },
            if st.pass { "pass" } else { "FAIL" }
        );
    }
    body.push_str("</table><h2>Capacity</h2>");
    for p in capacity_plots(r) {
        body.push_str(&p.svg());
    }
    let hists: Vec<(String, &Histogram<u64>)> = r
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, st)| {
            let h = st.report.latency_histogram.as_ref()?;
            Some((
                format!(
                    "step {} ({} subscribers)",
                    i + 1,
                    st.report.subscribers_total
                ),
                h,
            ))
        })
        .collect();
    body.push_str("<h2>Latency per step</h2>");
    if let Some(p) = cdf_plot("cdf", "Latency CDF per step (measured windows)", &hists) {
        body.push_str(&p.svg());
    }
    body.push_str("<h2>Over time, step after step</h2>");
    let runs: Vec<(String, &Report)> = r
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| (format!("step {}", i + 1), &st.report))
        .collect();
    for p in time_plots("", &runs) {
        body.push_str(&p.svg());
    }
    page(
        &format!("switchyard-bench ramp ({})", r.target),
        command,
        &body,
    )
}

/// Copies per second the subscribers should have received: what the step offered.
fn offered(r: &Report) -> f64 {
    if r.duration_s > 0.0 {
        r.expected_packets as f64 / r.duration_s
    } else {
        0.0
    }
}

/// The capacity curve (offered against received out packets/s, pass and fail markers) and
/// the thresholds' view (p99 and loss per step).
fn capacity_plots(r: &RampReport) -> Vec<Plot> {
    let steps: Vec<&Report> = r.steps.iter().map(|s| &s.report).collect();
    let max_subs = steps.iter().map(|s| s.subscribers_total).max().unwrap_or(1) as f64;
    let max_pps = steps
        .iter()
        .map(|s| offered(s).max(s.out_pps))
        .fold(1.0, f64::max);
    let mut cap = Plot::new(
        "capacity",
        "Capacity curve: packets/s delivered against offered",
        Axis::linear("subscribers (all publishers)", 0.0, max_subs * 1.05),
        Axis::linear("out packets/s", 0.0, max_pps * 1.1),
    );
    let mut ideal = Series::line(
        "offered",
        0,
        steps
            .iter()
            .map(|s| (s.subscribers_total as f64, offered(s)))
            .collect(),
    );
    ideal.dashed = true;
    cap.series.push(ideal);
    cap.series.push(Series::line(
        "received",
        2,
        steps
            .iter()
            .map(|s| (s.subscribers_total as f64, s.out_pps))
            .collect(),
    ));
    for st in &r.steps {
        let s = &st.report;
        cap.markers.push(Marker {
            x: s.subscribers_total as f64,
            y: s.out_pps,
            colour: if st.pass { 2 } else { 1 },
            title: format!(
                "{} subscribers: {:.0} of {:.0} packets/s, loss {:.4} %, p99 {} µs: {}",
                s.subscribers_total,
                s.out_pps,
                offered(s),
                s.loss_ratio * 100.0,
                s.latency_us.p99,
                if st.pass { "pass" } else { "FAIL" }
            ),
        });
    }
    if r.capacity_pps > 0.0 {
        cap.marks.push(Mark::HLine {
            y: r.capacity_pps,
            label: format!("capacity {:.0}/s", r.capacity_pps),
        });
    }
    let p99_max = steps
        .iter()
        .map(|s| s.latency_us.p99)
        .max()
        .unwrap_or(1)
        .max(r.p99_threshold_us) as f64
        / 1000.0;
    let mut p99 = Plot::new(
        "thresholds",
        "p99 latency per step, against the threshold",
        Axis::linear("subscribers (all publishers)", 0.0, max_subs * 1.05),
        Axis::linear("p99 (ms)", 0.0, p99_max * 1.15),
    );
    let mut line = Series::line(
        "p99",
        1,
        steps
            .iter()
            .map(|s| (s.subscribers_total as f64, s.latency_us.p99 as f64 / 1000.0))
            .collect(),
    );
    line.markers = true;
    p99.series.push(line);
    p99.marks.push(Mark::HLine {
        y: r.p99_threshold_us as f64 / 1000.0,
        label: format!("threshold {} ms", label(r.p99_threshold_us as f64 / 1000.0)),
    });
    let loss_max = steps
        .iter()
        .map(|s| s.loss_ratio * 100.0)
        .fold(r.loss_threshold * 100.0, f64::max);
    let mut loss = Plot::new(
        "loss-steps",
        "Loss per step, against the threshold",
        Axis::linear("subscribers (all publishers)", 0.0, max_subs * 1.05),
        Axis::linear("loss (%)", 0.0, (loss_max * 1.2).max(0.01)),
    );
    let mut line = Series::line(
        "loss",
        1,
        steps
            .iter()
            .map(|s| (s.subscribers_total as f64, s.loss_ratio * 100.0))
            .collect(),
    );
    line.markers = true;
    loss.series.push(line);
    loss.marks.push(Mark::HLine {
        y: r.loss_threshold * 100.0,
        label: format!("threshold {} %", label(r.loss_threshold * 100.0)),
    });
    vec![cap, p99, loss]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_split_lines() {
        let v = [(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 1.0)];
        assert_eq!(
            split_at_gaps(&v),
            vec![vec![(0.0, 1.0), (1.0, 2.0)], vec![(3.0, 1.0)]]
        );
        assert!(split_at_gaps(&[(0.0, f64::NAN)]).is_empty());
    }

    #[test]
    fn cdf_ends_at_one_at_the_max() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("h");
        for v in 100..=2000 {
            h.record(v).expect("v");
        }
        let pts = cdf_points(&h);
        let (x, q) = *pts.last().expect("points");
        assert_eq!(q, 1.0);
        assert!((x - 2.0).abs() < 0.002, "{x}");
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }
}
