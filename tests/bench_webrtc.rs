//! `switchyard-bench --webrtc` against a real node: peers join over WHIP/WHEP, ICE-lite and
//! DTLS-SRTP as a browser would, then the ordinary paced fan-out runs on top.

mod common;

use std::time::{Duration, Instant};

use common::Node;
use switchyard_bench::crypto::Profile;
use switchyard_bench::report::Errors;
use switchyard_bench::run::WebrtcJoin;
use switchyard_bench::{run, LoadSpec, Target};

#[test]
fn webrtc_fanout_one_publisher_twenty_subscribers() {
    let node = Node::start(2);
    let spec = LoadSpec {
        publishers: 1,
        subscribers: 20,
        duration: Duration::from_secs(3),
        // Covers the 20 joins (DTLS on a debug build) before the measured window.
        warmup: Duration::from_secs(3),
        rate: 200,
        size: 1000,
        bench_cores: Vec::new(),
        drain: Duration::from_millis(800),
        ..LoadSpec::default()
    };
    let target = Target::Node {
        api: node.api.clone(),
        profile: Profile::AeadAes128Gcm,
        cpu_pid: None,
        worker: None,
        webrtc: Some(WebrtcJoin { parallel: 4 }),
    };
    let r = run(&spec, &target).expect("webrtc run");
    print!("{}", r.table());

    assert_eq!(
        r.profile, "AEAD_AES_128_GCM",
        "DTLS negotiates the preferred profile"
    );
    assert_eq!(r.subscribers_total, 20);
    assert!(r.expected_packets >= 20 * 590, "{}", r.expected_packets);
    assert_eq!(r.lost_packets, 0, "{:?}", r.errors);
    let e = &r.errors;
    assert_eq!(
        Errors {
            ignored: e.ignored,
            ..Errors::default()
        },
        *e,
        "no decrypt, SSRC, payload or sequence errors"
    );
    let j = r.join_ms.as_ref().expect("join times reported");
    assert_eq!(j.count, 20);
    assert!(j.p50 > 0.0 && j.p50 <= j.p99 && j.p99 <= j.max, "{j:?}");
    assert!(j.max < 10_000.0, "{j:?}");

    // Every WHIP/WHEP session was DELETEd on the way out.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let live = node.metric_sum("switchyard_sessions{");
        let listed = node.get("/v1/sessions").json()["sessions"]
            .as_array()
            .map_or(0, Vec::len);
        if live == 0 && listed == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{live} sessions in /metrics, {listed} listed after the run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
