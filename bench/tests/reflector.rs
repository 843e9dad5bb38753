//! The full fan-out path (pacing, sendmmsg, epoll/recvmmsg receivers, accounting, report)
//! against the in-process reflector, on loopback.

use std::time::Duration;

use switchyard_bench::{run, LoadSpec, Target};

fn spec() -> LoadSpec {
    LoadSpec {
        publishers: 2,
        subscribers: 3,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(300),
        rate: 200,
        size: 400,
        keyframe_every: Duration::from_millis(500),
        keyframe_packets: 5,
        sockets: 2,
        // Unpinned: the test machine's cores are shared with other builds.
        bench_cores: Vec::new(),
        drain: Duration::from_millis(500),
        relay_out: false,
        ..LoadSpec::default()
    }
}

#[test]
fn reflector_fanout_has_no_loss_and_reports_every_field() {
    let r = run(
        &spec(),
        &Target::Reflector {
            core: None,
            gso: false,
        },
    )
    .expect("run");
    print!("{}", r.table());
    // 2 s at 200 pps + 4 bursts of 5 packets, per publisher; shown to each of 3 subscribers.
    let per_pub = 2 * 200 + 4 * 5;
    assert_eq!(r.sent_packets, 2 * per_pub);
    assert_eq!(r.expected_packets, 2 * 3 * per_pub);
    assert_eq!(r.received_packets, r.expected_packets, "loss on loopback");
    assert_eq!(r.loss_ratio, 0.0);
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.latency_us.count, r.received_packets);
    assert!(r.latency_us.max >= r.latency_us.p50);
    assert!(r.out_pps > 0.0 && r.in_pps > 0.0);
    assert!(r.dataplane_cpu.is_some());
    assert_eq!(r.errors, Default::default());

    let v = serde_json::to_value(&r).expect("json");
    for field in [
        "scenario",
        "profile",
        "publishers",
        "subscribers",
        "duration_s",
        "sent_packets",
        "received_packets",
        "expected_packets",
        "loss_ratio",
        "reorder",
        "out_pps",
        "in_pps",
        "latency_us",
        "jitter_us",
        "dataplane_cpu",
        "cpu_ns_per_packet",
    ] {
        assert!(v.get(field).is_some(), "missing {field}");
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_us"].get(p).is_some(), "missing latency_us.{p}");
    }
    assert_eq!(v["scenario"], "reflector");
    assert_eq!(v["profile"], "plain");
}

#[test]
fn reflector_ramp_reports_steps_and_capacity() {
    let base = LoadSpec {
        publishers: 1,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        keyframe_every: Duration::ZERO,
        keyframe_packets: 0,
        sockets: 1,
        ..spec()
    };
    let ramp = switchyard_bench::RampSpec {
        start: 1,
        step: 2.0,
        max: 4,
        loss: 0.001,
        p99_us: 1_000_000,
        grow_publishers: false,
    };
    let r = switchyard_bench::ramp(
        &base,
        &Target::Reflector {
            core: None,
            gso: false,
        },
        &ramp,
        false,
    )
    .expect("ramp");
    print!("{}", r.table());
    assert_eq!(r.steps.len(), 3, "1, 2, 4 subscribers all pass at 200 pps");
    assert!(r.steps.iter().all(|s| s.pass));
    assert_eq!(r.capacity_subscribers_total, 4);
    assert!(r.capacity_pps > 0.0);
    let v = serde_json::to_value(&r).expect("json");
    assert!(v["steps"][0].get("out_pps").is_some());
    assert!(v.get("capacity_pps").is_some());
}

/// Frame-shaped video with audio, through the reflector sending segmented messages, to
/// subscribers that coalesce their reads: every packet arrives once, in order, and the
/// numbering of both tracks checks out.
#[test]
fn frame_shaped_load_through_the_segmented_reflector_to_gro_subscribers() {
    use switchyard_bench::shape::{Packetize, VideoSpec};
    for packetize in [Packetize::Even, Packetize::Max] {
        let spec = LoadSpec {
            rate: 0,
            size: 1200,
            keyframe_every: Duration::ZERO,
            keyframe_packets: 0,
            video: Some(VideoSpec {
                bitrate: 2_000_000,
                fps: 30,
                keyframe_every: 1.0,
                keyframe_factor: 4,
                packetize,
            }),
            audio: true,
            gro: true,
            ..spec()
        };
        let r = run(
            &spec,
            &Target::Reflector {
                core: None,
                gso: true,
            },
        )
        .expect("run");
        print!("{}", r.table());
        assert!(r.received_packets > 0);
        assert_eq!(r.received_packets, r.expected_packets, "loss on loopback");
        assert_eq!(r.reorder, 0);
        assert_eq!(r.errors, Default::default());
        let gro = r.gro.as_ref().expect("gro report");
        assert!(gro.datagrams >= r.received_packets);
        assert!(gro.reads < gro.datagrams, "some reads coalesced: {gro:?}");
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["load"]["shape"], "frames");
        assert_eq!(v["load"]["audio"], true);
        // 2 s of 2 Mbit/s at 30 fps (8,333-byte frames: 7 packets, keyframes 28) and 50 pps
        // of audio, per publisher.
        assert_eq!(r.sent_packets, 2 * (58 * 7 + 2 * 28 + 100));
    }
}

/// Issue 14 item 6: `--version`, and `--json -` puts the JSON report alone on stdout (the
/// table goes to stderr), so it pipes into `jq`.
#[test]
fn the_cli_writes_json_to_stdout_and_says_its_version() {
    let bin = env!("CARGO_BIN_EXE_switchyard-bench");
    let v = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .expect("run");
    assert!(v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stdout).starts_with("switchyard-bench "),
        "{v:?}"
    );
    let out = std::process::Command::new(bin)
        .args([
            "reflector",
            "--publishers",
            "1",
            "--subscribers",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--rate",
            "100",
            "--bench-cores",
            "",
            "--json",
            "-",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is the JSON report alone");
    assert!(
        report["received_packets"].as_u64().is_some_and(|n| n > 0),
        "{report}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("packets"),
        "the table went to stderr"
    );
    assert!(!std::path::Path::new("-").exists(), "no file named -");
}
