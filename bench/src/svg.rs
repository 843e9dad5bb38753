//! Line plots as inline SVG for the HTML report: two axes (linear or log), polylines with
//! optional markers, shaded bands (the warm-up) and reference lines (thresholds,
//! percentiles). No script, no external style: the report is one self-contained file.

use std::fmt::Write as _;

/// Plot size in SVG user units (the page scales it to its width).
pub const WIDTH: f64 = 760.0;
pub const HEIGHT: f64 = 330.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 48.0;
/// Series colours, cycled (the classes `s0`.. in the report's style sheet).
pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// Text for HTML and SVG: `&`, `<`, `>` and quotes escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct Axis {
    pub label: String,
    pub min: f64,
    pub max: f64,
    /// Log10 scale (min must be > 0).
    pub log: bool,
}

impl Axis {
    pub fn linear(label: &str, min: f64, max: f64) -> Axis {
        let max = if max > min { max } else { min + 1.0 };
        Axis {
            label: label.into(),
            min,
            max,
            log: false,
        }
    }

    /// A log axis over whole decades around `min..max` (both > 0).
    pub fn log(label: &str, min: f64, max: f64) -> Axis {
        let lo = 10f64.powf(min.max(1e-9).log10().floor());
        let hi = 10f64.powf(max.max(lo).log10().ceil()).max(lo * 10.0);
        Axis {
            label: label.into(),
            min: lo,
            max: hi,
            log: true,
        }
    }

    /// Where `v` falls, 0.0 at `min` to 1.0 at `max` (clamped).
    pub fn fraction(&self, v: f64) -> f64 {
        let f = if self.log {
            let v = v.max(self.min);
            (v.log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            (v - self.min) / (self.max - self.min)
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Tick positions: decades (with 2 and 5 when there are few) on a log axis, 1-2-5
    /// steps giving about five ticks on a linear one.
    pub fn ticks(&self) -> Vec<f64> {
        if self.log {
            let (a, b) = (
                self.min.log10().round() as i32,
                self.max.log10().round() as i32,
            );
            let mut t = Vec::new();
            for e in a..=b {
                let d = 10f64.powi(e);
                t.push(d);
                if b - a <= 2 && e < b {
                    t.push(2.0 * d);
                    t.push(5.0 * d);
                }
            }
            return t;
        }
        let step = nice_step((self.max - self.min) / 5.0);
        let mut v = (self.min / step).ceil() * step;
        let mut t = Vec::new();
        while v <= self.max + step * 1e-9 && t.len() < 50 {
            t.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
            v += step;
        }
        t
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    p * if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    }
}

/// A tick label: short, without trailing zeros.
pub fn label(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw a marker per point (with its values as a tooltip).
    pub markers: bool,
    /// Colour index into [`PALETTE`].
    pub colour: usize,
    pub dashed: bool,
}

impl Series {
    pub fn line(name: &str, colour: usize, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
            markers: false,
            colour,
            dashed: false,
        }
    }
}

/// A marker with its own colour and tooltip (a ramp step that passed or failed).
#[derive(Debug, Clone)]
pub struct Marker {
    pub x: f64,
    pub y: f64,
    pub colour: usize,
    pub title: String,
}

/// A vertical band (`x0..x1`) or a reference line, labelled.
#[derive(Debug, Clone)]
pub enum Mark {
    Band { x0: f64, x1: f64, label: String },
    VLine { x: f64, label: String },
    HLine { y: f64, label: String },
}

#[derive(Debug, Clone)]
pub struct Plot {
    /// Element id, for links and tests.
    pub id: String,
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
    pub marks: Vec<Mark>,
}

impl Plot {
    pub fn new(id: &str, title: &str, x: Axis, y: Axis) -> Plot {
        Plot {
            id: id.into(),
            title: title.into(),
            x,
            y,
            series: Vec::new(),
            markers: Vec::new(),
            marks: Vec::new(),
        }
    }

    fn px(&self, v: f64) -> f64 {
        LEFT + self.x.fraction(v) * (WIDTH - LEFT - RIGHT)
    }

    fn py(&self, v: f64) -> f64 {
        HEIGHT - BOTTOM - self.y.fraction(v) * (HEIGHT - TOP - BOTTOM)
    }

    /// The plot as an `<svg>` element.
    pub fn svg(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg class="plot" id="{}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
            escape(&self.id),
            escape(&self.title)
        );
        let _ = write!(
            s,
            r#"<text class="title" x="{LEFT}" y="20">{}</text>"#,
            escape(&self.title)
        );
        let (x0, x1) = (LEFT, WIDTH - RIGHT);
        let (y0, y1) = (HEIGHT - BOTTOM, TOP);
        for m in &self.marks {
            match m {
                Mark::Band {
                    x0: a,
                    x1: b,
                    label,
                } => {
                    let (a, b) = (self.px(*a), self.px(*b));
                    let _ = write!(
                        s,
                        r#"<rect class="band" x="{a:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}"/>"#,
                        (b - a).max(0.0),
                        y0 - y1,
                    );
                    if !label.is_empty() {
                        let _ = write!(
                            s,
                            r#"<text class="band-label" x="{:.1}" y="{:.1}">{}</text>"#,
                            a + 4.0,
                            y1 + 12.0,
                            escape(label)
                        );
                    }
                }
                Mark::VLine { x, label } => {
                    let x = self.px(*x);
                    // Near the right edge the label goes on the line's left.
                    let (lx, anchor) = if x > WIDTH - RIGHT - 80.0 {
                        (x - 3.0, "end")
                    } else {
                        (x + 3.0, "start")
                    };
                    let _ = write!(
                        s,
                        r#"<line class="ref" x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{y1:.1}"/><text class="ref-label" x="{lx:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
                        y1 + 12.0,
                        escape(label)
                    );
                }
                Mark::HLine { y, label } => {
                    let y = self.py(*y);
                    let _ = write!(
                        s,
                        r#"<line class="ref" x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}"/><text class="ref-label" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                        x1 - 3.0,
                        y - 4.0,
                        escape(label)
                    );
                }
            }
        }
        // Axes, grid and ticks.
        s.push_str(r#"<g class="axis x">"#);
        for t in self.x.ticks() {
            let x = self.px(t);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{y1:.1}"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                y0 + 16.0,
                label(t)
            );
        }
        let _ = write!(
            s,
            r#"<line class="frame" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}"/><text class="axis-label" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text></g>"#,
            (x0 + x1) / 2.0,
            HEIGHT - 8.0,
            escape(&self.x.label)
        );
        s.push_str(r#"<g class="axis y">"#);
        for t in self.y.ticks() {
            let y = self.py(t);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                x0 - 6.0,
                y + 4.0,
                label(t)
            );
        }
        let _ = write!(
            s,
            r#"<line class="frame" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}"/><text class="axis-label" transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text></g>"#,
            (y0 + y1) / 2.0,
            escape(&self.y.label)
        );
        for (i, se) in self.series.iter().enumerate() {
            let colour = se.colour % PALETTE.len();
            let points: Vec<String> = se
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline class="series s{colour}{}" data-series="{i}" points="{}"><title>{}</title></polyline>"#,
                if se.dashed { " dashed" } else { "" },
                points.join(" "),
                escape(&se.name)
            );
            if se.markers {
                for &(x, y) in se
                    .points
                    .iter()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                {
                    let _ = write!(
                        s,
                        r#"<circle class="marker s{colour}" cx="{:.1}" cy="{:.1}" r="3"><title>{}: {} , {}</title></circle>"#,
                        self.px(x),
                        self.py(y),
                        escape(&se.name),
                        label(x),
                        label(y)
                    );
                }
            }
        }
        for m in &self.markers {
            let _ = write!(
                s,
                r#"<circle class="marker s{}" cx="{:.1}" cy="{:.1}" r="5"><title>{}</title></circle>"#,
                m.colour % PALETTE.len(),
                self.px(m.x),
                self.py(m.y),
                escape(&m.title)
            );
        }
        // Legend: up to three entries in the top margin, right-aligned; more (a CDF per ramp
        // step) in a column at the bottom right of the plot, where a CDF leaves room.
        let named: Vec<&Series> = self.series.iter().filter(|s| !s.name.is_empty()).collect();
        if named.len() > 1 {
            s.push_str(r#"<g class="legend">"#);
            let widest = named
                .iter()
                .map(|s| s.name.chars().count())
                .max()
                .unwrap_or(0);
            // Widths at about 6 units per character of 11px text, 8 of the 14px title.
            let row: f64 = named
                .iter()
                .map(|s| 30.0 + 6.0 * s.name.chars().count() as f64)
                .sum();
            let title = 8.0 * self.title.chars().count() as f64;
            let column = named.len() > 3 || LEFT + title + 20.0 + row > WIDTH - RIGHT;
            let mut x = WIDTH - RIGHT;
            for (row, se) in named.iter().rev().enumerate() {
                // About 6 units per character at the 11px legend font.
                let y = if column {
                    x = WIDTH - RIGHT - 30.0 - 6.0 * widest as f64;
                    HEIGHT - BOTTOM - 10.0 - row as f64 * 15.0
                } else {
                    x -= 30.0 + 6.0 * se.name.chars().count() as f64;
                    20.0
                };
                let _ = write!(
                    s,
                    r#"<line class="series s{}{}" x1="{x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
                    se.colour % PALETTE.len(),
                    if se.dashed { " dashed" } else { "" },
                    y - 4.0,
                    x + 18.0,
                    y - 4.0,
                    x + 22.0,
                    escape(&se.name)
                );
            }
            s.push_str("</g>");
        }
        s.push_str("</svg>");
        s
    }
}

/// The style sheet the plots rely on (series colours from [`PALETTE`]).
pub fn style() -> String {
    let mut s = String::from(
        "svg.plot{width:100%;max-width:960px;height:auto;background:#fff;border:1px solid #ddd;margin:8px 0}\
         svg.plot text{font:11px system-ui,sans-serif;fill:#333}\
         svg.plot text.title{font-size:14px;font-weight:600}\
         svg.plot .axis-label{font-size:12px}\
         svg.plot line.grid{stroke:#eee}\
         svg.plot line.frame{stroke:#555}\
         svg.plot line.ref{stroke:#888;stroke-dasharray:4 3}\
         svg.plot text.ref-label,svg.plot text.band-label{fill:#666;font-size:10px}\
         svg.plot rect.band{fill:#f3f0e6}\
         svg.plot polyline.series,svg.plot .legend line{fill:none;stroke-width:2}\
         svg.plot .dashed{stroke-dasharray:6 4}",
    );
    for (i, c) in PALETTE.iter().enumerate() {
        let _ = write!(
            s,
            "svg.plot .s{i}{{stroke:{c}}}svg.plot circle.s{i}{{fill:{c};stroke:#fff}}"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_and_linear_ticks() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(1.2), 2.0);
        assert_eq!(nice_step(230.0), 500.0);
        assert_eq!(nice_step(0.0), 1.0);
        let a = Axis::linear("x", 0.0, 1000.0);
        assert_eq!(a.ticks(), vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
        let a = Axis::linear("x", 3.0, 3.0);
        assert_eq!((a.min, a.max), (3.0, 4.0));
    }

    #[test]
    fn log_axes_cover_whole_decades() {
        let a = Axis::log("ms", 0.08, 3.2);
        assert_eq!((a.min, a.max), (0.01, 10.0));
        assert_eq!(a.ticks().len(), 4);
        assert!((a.fraction(0.1) - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(a.fraction(100.0), 1.0);
        assert_eq!(a.fraction(0.0), 0.0);
        let narrow = Axis::log("ms", 0.2, 0.9);
        assert_eq!(narrow.ticks(), vec![0.1, 0.2, 0.5, 1.0]);
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(label(0.25), "0.25");
        assert_eq!(label(2000.0), "2000");
        assert_eq!(label(20000.0), "20k");
        assert_eq!(label(1_500_000.0), "1.5M");
        assert_eq!(label(-0.0), "0");
    }

    #[test]
    fn a_plot_draws_its_series_marks_and_escapes_text() {
        let mut p = Plot::new(
            "lat",
            "a <b> & c",
            Axis::linear("t (s)", 0.0, 10.0),
            Axis::linear("pps", 0.0, 100.0),
        );
        p.series.push(Series::line(
            "in",
            0,
            vec![(0.0, 0.0), (5.0, 50.0), (10.0, 100.0)],
        ));
        let mut out = Series::line("out", 1, vec![(0.0, 10.0), (10.0, f64::NAN)]);
        out.markers = true;
        p.series.push(out);
        p.marks.push(Mark::Band {
            x0: 0.0,
            x1: 1.0,
            label: "warm-up".into(),
        });
        let svg = p.svg();
        assert!(svg.starts_with("<svg class=\"plot\" id=\"lat\""), "{svg}");
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(&format!(
            "points=\"{LEFT:.1},{:.1} {:.1},{:.1} {:.1},{TOP:.1}\"",
            HEIGHT - BOTTOM,
            (LEFT + WIDTH - RIGHT) / 2.0,
            (HEIGHT - BOTTOM + TOP) / 2.0,
            WIDTH - RIGHT
        )));
        // The NaN point is left out of the line but the legend names both series.
        assert_eq!(svg.matches("class=\"legend\"").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert_eq!(svg.matches("class=\"band\"").count(), 1);
        assert!(svg.ends_with("</svg>"));
    }
}
