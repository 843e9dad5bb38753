//! Uplink repair with real Chromium: a publisher whose packets to the node cross a lossy
//! path (5 % of RTP dropped, 40 ms delay, `common::lossy`), a Chromium viewer on the same
//! node (through the same proxy, whose client → node RTP loss it does not suffer: it sends
//! none). Two runs in one test, the same path: `media.uplink_nack` on (the default), then
//! off (the baseline). The viewer's video must be clearly better with it on.
//!
//! "Impaired" (of a measuring window of the viewer's getStats): the fraction of the window's
//! wall time Chromium counted as frozen (`totalFreezesDuration`, a freeze being an
//! inter-frame gap above max(3 × mean frame interval, mean + 150 ms)), plus the fraction of
//! frames received but dropped before decoding (`framesDropped` / (`framesDecoded` +
//! `framesDropped`)), at most 100 %. The repaired run must stay under 1 % and under half
//! the baseline or decode half as many frames again in the same window, and its viewer must
//! have lost fewer video packets.
//!
//! Needs Debian's `chromium`, like tests/browser.rs: without it the test fails, unless
//! `SWITCHYARD_SKIP_BROWSER=1` (ignored under `CI=true`, where a missing browser must fail).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::browser::{chromium, num, Chromium, Reports};
use common::lossy::Lossy;
use common::Node;
use serde_json::Value;

const LOSS: f64 = 0.05;
const DELAY: Duration = Duration::from_millis(40);
/// How long the viewer is measured, once it decodes steadily.
const WINDOW: Duration = Duration::from_secs(10);

struct Outcome {
    impaired: f64,
    frozen_s: f64,
    freezes: f64,
    dropped: f64,
    decoded: f64,
    lost: f64,
    received: f64,
    node: [u64; 4],
    proxy_dropped: u64,
}

fn run(bin: &PathBuf, reports: &mut Reports, repair: bool, tag: &str) -> Outcome {
    let dir = std::env::temp_dir().join(format!("swy-uplink-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("switchyard.toml");
    // The default configuration otherwise: the viewer starts from the cached group, paced.
    std::fs::write(&config, format!("[media]\nuplink_nack = {repair}\n")).expect("config");
    let config = config.display().to_string();
    let node = Node::start_with_args(1, &["--media-announce", "127.0.0.2", "--config", &config]);
    let port = node.media_port;
    let listen: SocketAddr = format!("127.0.0.2:{port}").parse().expect("addr");
    let upstream: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let proxy = Lossy::start(listen, upstream, LOSS, DELAY);
    let base = reports.base.clone();
    let (pub_path, sub_path) = (format!("/pub-{tag}"), format!("/sub-{tag}"));
    let url = |q: &str, path: &str| format!("{}/?{q}&report={base}{path}", node.api);
    let stream = format!("loss/{tag}");

    let _publisher = Chromium::start(
        bin,
        "publisher",
        &url(&format!("publish={stream}"), &pub_path),
    );
    reports.wait(&pub_path, Duration::from_secs(20), |r| {
        r["state"] == "connected" && num(r, "framesEncoded") > 0.0
    });
    let _watcher = Chromium::start(bin, "watcher", &url(&format!("watch={stream}"), &sub_path));
    // Both runs are measured from the same point: video flowing to the viewer (the
    // baseline may decode next to nothing).
    let first = reports.wait(&sub_path, Duration::from_secs(20), |r| {
        num(r, "videoPacketsReceived") > 100.0
    });
    let t0 = Instant::now();
    let last = reports.wait(&sub_path, WINDOW + Duration::from_secs(5), |_| {
        t0.elapsed() >= WINDOW
    });
    let d = |k: &str| num(&last, k) - num(&first, k);
    let wall = (num(&last, "t") - num(&first, "t")) / 1000.0;
    let (decoded, dropped) = (d("framesDecoded"), d("framesDropped"));
    let frozen_s = d("totalFreezesDuration");
    let impaired = (frozen_s / wall + dropped / (decoded + dropped).max(1.0)).min(1.0);
    let publisher: Value = reports.seen[&pub_path].last().cloned().unwrap_or_default();
    eprintln!(
        "{tag}: publisher sent {} retransmissions for {} NACKs; viewer {}",
        publisher["videoRetransmittedPackets"], publisher["videoNacksReceived"], last
    );
    let counters = [
        "switchyard_uplink_nacks_sent_total",
        "switchyard_uplink_rtx_received_total",
        "switchyard_uplink_recovered_total",
        "switchyard_uplink_unrecovered_total",
    ]
    .map(|m| node.metric_sum(m));
    Outcome {
        impaired,
        frozen_s,
        freezes: d("freezeCount"),
        dropped,
        decoded,
        lost: d("videoPacketsLost"),
        received: d("videoPacketsReceived"),
        node: counters,
        proxy_dropped: proxy.dropped.load(Ordering::Relaxed),
    }
}

fn show(name: &str, o: &Outcome) {
    eprintln!(
        "{name}: impaired {:.2} % ({} freezes, {:.2} s frozen, {} of {} frames dropped); \
         viewer lost {} of {} video packets; proxy dropped {} RTP packets; node: uplink \
         NACKs sent {}, RTX received {}, recovered {}, unrecovered {}",
        o.impaired * 100.0,
        o.freezes,
        o.frozen_s,
        o.dropped,
        o.decoded + o.dropped,
        o.lost,
        o.received + o.lost,
        o.proxy_dropped,
        o.node[0],
        o.node[1],
        o.node[2],
        o.node[3],
    );
}

#[test]
fn chromium_publisher_on_a_lossy_uplink_is_repaired_for_its_viewer() {
    let Some((bin, _serial)) = chromium() else {
        return;
    };
    let started = Instant::now();
    let mut reports = Reports::start();
    let repaired = run(&bin, &mut reports, true, "repaired");
    show("repaired (media.uplink_nack = true)", &repaired);
    let baseline = run(&bin, &mut reports, false, "baseline");
    show("baseline (media.uplink_nack = false)", &baseline);
    reports.stop.store(true, Ordering::Relaxed);
    eprintln!("took {:?}", started.elapsed());

    assert!(
        repaired.proxy_dropped > 0 && baseline.proxy_dropped > 0,
        "the path lost nothing"
    );
    assert!(
        repaired.node[0] > 0 && repaired.node[2] > 0,
        "nothing NACKed or recovered"
    );
    assert_eq!(
        baseline.node[0], 0,
        "the knob turns NACKs to publishers off"
    );
    assert!(
        repaired.impaired < 0.01,
        "repaired run impaired {:.2} % (≥ 1 %)",
        repaired.impaired * 100.0
    );
    let better =
        repaired.impaired * 2.0 < baseline.impaired || repaired.decoded > 1.5 * baseline.decoded;
    assert!(
        better && baseline.lost > repaired.lost,
        "not clearly better than the baseline: {:.2} % vs {:.2} % impaired, {} vs {} frames \
         decoded, {} vs {} packets lost",
        repaired.impaired * 100.0,
        baseline.impaired * 100.0,
        repaired.decoded,
        baseline.decoded,
        repaired.lost,
        baseline.lost
    );
}
