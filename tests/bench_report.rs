//! Issue 14 item 6: `switchyard-bench` against a node with auth on and the API over HTTPS (a
//! cluster token as `--token`, the node's self-signed certificate as `--ca`), over the REST
//! API and as WebRTC peers over WHIP/WHEP; then its `.hgrm` file and HTML reports (a run
//! and a ramp), the HTML loaded in headless Chromium: every plot drawn with its lines and
//! markers, nothing reported as an error, and a screenshot taken
//! (`target/tmp/bench-report*.png`).
//!
//! Needs Debian's `chromium` (`scripts/test.sh` installs it) for the browser half, as
//! tests/browser.rs: missing, it fails unless `SWITCHYARD_SKIP_BROWSER=1`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::browser::{find_chromium, one_chromium_test_at_a_time};
use common::cdp::Page;
use common::{cli, Node};
use switchyard_bench::crypto::Profile;
use switchyard_bench::http::{Client, HttpOptions};
use switchyard_bench::run::WebrtcJoin;
use switchyard_bench::{hgrm, html, ramp, run, LoadSpec, RampSpec, Report, Target};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node with `[auth] key` and HTTPS (a self-signed certificate for 127.0.0.1); its
/// `https://` API, the certificate's path and a cluster token.
fn secure_node(dir: &Path) -> (Node, String, PathBuf, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("rcgen");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("key");
    let auth = cli(&["token", "generate"]);
    let cfg = dir.join("switchyard.toml");
    std::fs::write(&cfg, format!("[auth]\nkey = \"{auth}\"\n")).expect("config");
    let node = Node::spawn_with(
        1,
        vec![
            "--config".into(),
            cfg.into(),
            "--http-certificate".into(),
            cert.clone().into(),
            "--http-private-key".into(),
            key.into(),
        ],
    );
    let api = format!("https://{}", node.http_addr);
    let token = cli(&[
        "token",
        "sign",
        "--key",
        &auth,
        "--cluster",
        "--expires",
        "1h",
    ]);
    // Up when /health answers over TLS to a client that trusts only this certificate.
    let client = Client::new(&HttpOptions {
        ca: Some(cert.clone()),
        ..HttpOptions::default()
    })
    .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .request("GET", &format!("{api}/health"), None)
        .is_err()
    {
        assert!(Instant::now() < deadline, "no healthy node at {api}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (node, api, cert, token)
}

fn spec(token: &str, ca: &Path) -> LoadSpec {
    LoadSpec {
        publishers: 1,
        subscribers: 4,
        duration: Duration::from_secs(2),
        warmup: Duration::from_secs(1),
        rate: 200,
        size: 800,
        bench_cores: Vec::new(),
        drain: Duration::from_millis(500),
        http: HttpOptions {
            token: Some(token.to_owned()),
            ca: Some(ca.to_owned()),
            insecure: false,
        },
        ..LoadSpec::default()
    }
}

fn node_target(api: &str, webrtc: Option<WebrtcJoin>) -> Target {
    Target::Node {
        api: api.to_owned(),
        profile: Profile::AeadAes128Gcm,
        cpu_pid: None,
        worker: None,
        webrtc,
    }
}

fn assert_clean(r: &Report) {
    print!("{}", r.table());
    assert!(r.expected_packets > 0);
    assert_eq!(r.lost_packets, 0, "{:?}", r.errors);
    // The timeline covers warm-up and window, second by second, and adds up.
    let sent: u64 = r.timeline.iter().map(|s| s.sent).sum();
    assert!(
        r.timeline.len() >= 3 && sent >= r.sent_packets,
        "{:?}",
        r.timeline
    );
}

/// `.hgrm` lines from the run's histogram: they end at the run's count and p50.
fn check_hgrm(r: &Report) {
    let h = r.latency_histogram.as_ref().expect("histogram");
    let points = hgrm::parse(&hgrm::percentile_distribution(h));
    let last = points.last().expect("lines");
    assert_eq!((last.quantile, last.total), (1.0, r.latency_us.count));
    let p50 = points.iter().find(|p| p.quantile >= 0.5).expect("p50");
    assert!(
        (p50.value_ms * 1000.0 - r.latency_us.p50 as f64).abs()
            <= 1.0 + r.latency_us.p50 as f64 * 0.001,
        "{p50:?} against {} µs",
        r.latency_us.p50
    );
}

#[test]
fn bench_with_token_and_https_and_its_html_report() {
    let dir = std::env::temp_dir().join(format!("swy-bench-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let _cleanup = TempDir(dir.clone());
    let (node, api, ca, token) = secure_node(&dir);

    // Without the token the node refuses the bench's first request; without the CA the
    // bench says what to pass.
    let mut anonymous = spec(&token, &ca);
    anonymous.http.token = None;
    let err = run(&anonymous, &node_target(&api, None)).expect_err("no token");
    assert!(err.to_string().contains("401"), "{err}");
    let mut untrusting = spec(&token, &ca);
    untrusting.http.ca = None;
    let err = run(&untrusting, &node_target(&api, None)).expect_err("no CA");
    assert!(err.to_string().contains("--ca"), "{err}");

    // REST sessions, then WebRTC peers (WHIP/WHEP with the bearer token, ICE, DTLS).
    let rest = run(&spec(&token, &ca), &node_target(&api, None)).expect("REST run");
    assert_clean(&rest);
    check_hgrm(&rest);
    let mut w = spec(&token, &ca);
    w.warmup = Duration::from_secs(3);
    let webrtc = run(&w, &node_target(&api, Some(WebrtcJoin { parallel: 2 }))).expect("WebRTC run");
    assert_clean(&webrtc);
    assert_eq!(webrtc.join_ms.as_ref().map(|j| j.count), Some(4));
    check_hgrm(&webrtc);

    // A ramp of three steps over REST.
    let mut base = spec(&token, &ca);
    base.duration = Duration::from_secs(1);
    base.warmup = Duration::from_millis(500);
    let ramped = ramp(
        &base,
        &node_target(&api, None),
        &RampSpec {
            start: 2,
            step: 2.0,
            max: 8,
            // Generous: the suite shares two cores; this checks the report, not capacity.
            loss: 0.05,
            p99_us: 2_000_000,
            grow_publishers: false,
        },
        false,
    )
    .expect("ramp");
    assert_eq!(ramped.steps.len(), 3, "{}", ramped.table());
    drop(node);

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let run_html = out.join("bench-report.html");
    let ramp_html = out.join("bench-report-ramp.html");
    std::fs::write(
        &run_html,
        html::run_report(&webrtc, "switchyard-bench fanout --webrtc"),
    )
    .expect("write");
    std::fs::write(
        &ramp_html,
        html::ramp_report(&ramped, "switchyard-bench ramp"),
    )
    .expect("write");

    if std::env::var("SWITCHYARD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SWITCHYARD_SKIP_BROWSER=1: the reports were not checked in a browser");
        return;
    }
    let _serial = one_chromium_test_at_a_time();
    let bin = find_chromium().expect(
        "chromium not found: install it (apt-get install -y chromium; scripts/test.sh does), \
         point SWITCHYARD_CHROMIUM at it, or set SWITCHYARD_SKIP_BROWSER=1 to skip this test",
    );
    let mut page = Page::launch(&bin, 1100, 900);

    let plots = drawn(&mut page, &run_html, &out.join("bench-report.png"));
    let ids: Vec<&str> = plots.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["cdf", "throughput", "loss", "latency-time"]);
    for p in &plots {
        assert!(p.lines >= 1 && p.longest_points >= 2, "{p:?}");
    }
    // The CDF follows the histogram's percentile steps: dozens of points.
    assert!(plots[0].longest_points >= 20, "{:?}", plots[0]);

    let plots = drawn(&mut page, &ramp_html, &out.join("bench-report-ramp.png"));
    let ids: Vec<&str> = plots.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "capacity",
            "thresholds",
            "loss-steps",
            "cdf",
            "throughput",
            "loss",
            "latency-time"
        ]
    );
    // One marker per step on the capacity curve, one CDF per step.
    assert_eq!(plots[0].markers, 3, "{:?}", plots[0]);
    assert_eq!(plots[3].lines, 3, "{:?}", plots[3]);
    let errors = page.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:?}");
}

/// One plot as the browser laid it out.
#[derive(Debug)]
struct Drawn {
    id: String,
    /// Polylines with a drawn length.
    lines: u64,
    /// Points of the longest polyline.
    longest_points: u64,
    markers: u64,
}

/// Loads `file`, takes a screenshot into `png`, and returns what each `svg.plot` drew:
/// only elements with a non-empty rendered box count.
fn drawn(page: &mut Page, file: &Path, png: &Path) -> Vec<Drawn> {
    page.navigate(&format!("file://{}", file.display()));
    let v = page.eval(
        r#"[...document.querySelectorAll("svg.plot")].map(svg => {
            const box = svg.getBoundingClientRect();
            const lines = [...svg.querySelectorAll("polyline.series")]
                .filter(l => l.getTotalLength() > 0);
            return {
                id: svg.id,
                width: box.width,
                height: box.height,
                lines: lines.length,
                longest: Math.max(0, ...lines.map(l => l.points.numberOfItems)),
                markers: [...svg.querySelectorAll("circle.marker")]
                    .filter(c => c.getBoundingClientRect().width > 0).length,
            };
        })"#,
    );
    let size = page.screenshot(png);
    eprintln!(
        "{} drawn; screenshot {} ({size} B)",
        file.display(),
        png.display()
    );
    assert!(size > 20_000, "a {size} B screenshot of {}", file.display());
    v.as_array()
        .expect("plots")
        .iter()
        .map(|p| {
            assert!(
                p["width"].as_f64() > Some(300.0) && p["height"].as_f64() > Some(100.0),
                "{p}"
            );
            Drawn {
                id: p["id"].as_str().unwrap_or_default().to_owned(),
                lines: p["lines"].as_u64().unwrap_or(0),
                longest_points: p["longest"].as_u64().unwrap_or(0),
                markers: p["markers"].as_u64().unwrap_or(0),
            }
        })
        .collect()
}
