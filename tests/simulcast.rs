//! Headless Chromium publishes three VP8 simulcast layers (rids q/h/f, a 1280x720 fake
//! camera scaled by 4, 2 and 1) with WHIP from the demo page (`?simulcast=1`); a second page
//! watches with WHEP. The watcher must decode the best layer the publisher sends, and after
//! `POST /v1/sessions/{id}/layers {"maxLayer":0}` the lowest one, with no gap in decoding.
//!
//! Needs Debian's `chromium`, like tests/browser.rs: without it the test fails, unless
//! `SWITCHYARD_SKIP_BROWSER=1` (ignored under `CI=true`, where a missing browser must fail).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::browser::{find_chromium, num, one_chromium_test_at_a_time, Chromium, Reports};
use common::Node;

#[test]
fn chromium_simulcast_viewer_gets_the_best_layer_then_the_capped_one_without_a_gap() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if !ci && std::env::var("SWITCHYARD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SWITCHYARD_SKIP_BROWSER=1: simulcast browser test skipped");
        return;
    }
    let _serial = one_chromium_test_at_a_time();
    let bin = find_chromium().expect(
        "chromium not found: install it (apt-get install -y chromium; scripts/test.sh does), \
         point SWITCHYARD_CHROMIUM at it, or set SWITCHYARD_SKIP_BROWSER=1 to skip this test",
    );
    let started = Instant::now();
    let node = Node::start(1);
    let mut reports = Reports::start();
    let base = reports.base.clone();
    let url = |q: &str, path: &str| format!("{}/?{q}&report={base}{path}", node.api);

    let publisher = Chromium::start(
        &bin,
        "publisher",
        &url("publish=sim/cam&simulcast=1", "/pub"),
    );
    let first = reports.wait("/pub", Duration::from_secs(30), |r| {
        r["state"] == "connected" && num(r, "framesEncoded") > 0.0
    });
    eprintln!("publisher connected: {}", first["layers"]);

    let watcher = Chromium::start(&bin, "watcher", &url("watch=sim/cam", "/sub"));
    let top = reports.wait("/sub", Duration::from_secs(40), |r| {
        num(r, "framesDecoded") > 100.0 && num(r, "frameWidth") > 320.0
    });
    let layers = reports.seen["/pub"]
        .last()
        .map(|r| r["layers"].clone())
        .unwrap_or_default();
    eprintln!(
        "watcher at the top: {} frames decoded, {}; publisher's layers: {layers}",
        top["framesDecoded"], top["frameSize"]
    );
    let widths: Vec<f64> = ["q", "h", "f"]
        .iter()
        .map(|rid| num(&layers[rid], "frameWidth"))
        .collect();
    assert!(
        widths.iter().filter(|&&w| w > 0.0).count() >= 2,
        "Chromium sends fewer than two layers: {layers}"
    );
    // The watcher's best is the widest layer being sent (all of them, at this bandwidth).
    let widest = widths.iter().copied().fold(0.0, f64::max);
    assert_eq!(num(&top, "frameWidth"), widest, "{top} vs {layers}");

    // The watcher's session, and the cap to the lowest layer.
    let sessions = node.get("/v1/sessions").json();
    let id = sessions["sessions"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["role"] == "subscriber"))
        .and_then(|s| s["id"].as_u64())
        .expect("the watcher's session");
    let capped_at = Instant::now();
    let r = node.post(&format!("/v1/sessions/{id}/layers"), r#"{"maxLayer":0}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    let before = reports.seen["/sub"].len();
    let low = reports.wait("/sub", Duration::from_secs(15), |r| {
        num(r, "frameWidth") > 0.0 && num(r, "frameWidth") <= 320.0
    });
    let switch_s = capped_at.elapsed().as_secs_f64();
    // Three more seconds on the low layer: decoding never stalled across the switch.
    let end = reports.wait("/sub", Duration::from_secs(10), |r| {
        num(r, "t") - num(&low, "t") >= 3000.0
    });
    let seen = &reports.seen["/sub"][before.saturating_sub(1)..];
    let decoded: Vec<f64> = seen.iter().map(|r| num(r, "framesDecoded")).collect();
    eprintln!(
        "capped: {} after {switch_s:.1} s; framesDecoded each second from the cap: {decoded:?}; \
         {}",
        low["frameSize"], end["frameSize"]
    );
    for w in decoded.windows(2) {
        assert!(w[1] > w[0], "decoding stalled: {decoded:?}");
    }
    assert_eq!(num(&end, "frameWidth"), num(&low, "frameWidth"));
    let switches = node.metric_sum("switchyard_layer_switches_total");
    assert!(switches >= 2, "layer switches: {switches}");

    reports.stop.store(true, Ordering::SeqCst);
    for path in ["/sub", "/pub"] {
        let closed = reports.wait(path, Duration::from_secs(15), |r| r["phase"] == "closed");
        assert_eq!(closed["deleteStatus"], 200, "{path}: {closed}");
    }
    drop(watcher);
    drop(publisher);
    eprintln!(
        "simulcast browser test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
