//! Segmented egress through a real node on loopback: frame-shaped SRTP video with an audio
//! track in the same stream (`switchyard-bench`'s `--video --audio`), to subscribers that
//! read plainly and to subscribers that coalesce (UDP_GRO). Every packet must arrive once,
//! intact (SRTP authenticates every byte) and in order, on both tracks, with segmentation on
//! (`media.gso = "auto"`, the default) as with it off; and the node's counters must show
//! which it did.

mod common;

use std::time::Duration;

use common::Node;
use switchyard_bench::crypto::Profile;
use switchyard_bench::shape::{Packetize, VideoSpec};
use switchyard_bench::{run, LoadSpec, Report, Target};

fn load(gro: bool) -> LoadSpec {
    LoadSpec {
        publishers: 2,
        subscribers: 8,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        size: 1200,
        video: Some(VideoSpec {
            bitrate: 2_500_000,
            fps: 30,
            keyframe_every: 1.0,
            keyframe_factor: 5,
            packetize: Packetize::Max,
        }),
        audio: true,
        gro,
        bench_cores: Vec::new(),
        drain: Duration::from_millis(800),
        ..LoadSpec::default()
    }
}

fn through(node: &Node, gro: bool) -> Report {
    let target = Target::Node {
        api: node.api.clone(),
        profile: Profile::AeadAes128Gcm,
        cpu_pid: None,
        worker: None,
        webrtc: None,
    };
    let r = run(&load(gro), &target).expect("bench run");
    print!("{}", r.table());
    assert!(r.received_packets > 0);
    assert_eq!(
        r.received_packets, r.expected_packets,
        "every packet of the window arrived"
    );
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.reorder, 0, "in order");
    // No decrypt failure (intact), SSRC mix-up or renumbering break on either track.
    assert_eq!(r.errors.decrypt, 0);
    assert_eq!(r.errors.ssrc_mismatch, 0);
    assert_eq!(r.errors.sequence_breaks, 0);
    assert_eq!(r.errors.bad_payload, 0);
    assert_eq!(r.errors.misrouted, 0);
    r
}

#[test]
fn frames_and_audio_arrive_intact_and_in_order_with_segmentation_on_and_off() {
    let on = Node::start(1);
    for gro in [false, true] {
        let before = on.metric_sum("switchyard_gso_segments_total");
        let r = through(&on, gro);
        let segs = on.metric_sum("switchyard_gso_segments_total") - before;
        assert!(
            segs > r.received_packets / 2,
            "most datagrams went segmented: {segs} of {}",
            r.received_packets
        );
        if gro {
            let g = r.gro.expect("gro report");
            assert!(g.reads < g.datagrams, "coalesced reads: {g:?}");
        }
    }
    assert_eq!(on.metric_sum("switchyard_gso_refused_total"), 0);
    drop(on);

    let dir = std::env::temp_dir().join(format!("swy-gso-off-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("config.toml");
    std::fs::write(&config, "[media]\ngso = \"off\"\n").expect("config");
    let off = Node::start_with_args(1, &["--config", config.to_str().expect("utf-8")]);
    through(&off, true);
    assert_eq!(off.metric_sum("switchyard_gso_segments_total"), 0);
    let body = off.get("/metrics").body;
    assert!(
        body.contains("switchyard_tx_segments_per_message_bucket{worker=\"0\",le=\"1\"}"),
        "the histogram is exposed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Datagrams per message the node's single worker sent so far (its histogram's sum over
/// its count).
fn per_message(node: &Node) -> f64 {
    let sum = node.metric_sum("switchyard_tx_segments_per_message_sum{");
    let count = node.metric_sum("switchyard_tx_segments_per_message_count{");
    sum as f64 / count.max(1) as f64
}

/// libwebrtc-shaped frames (9 packets of 1,157 and 1,158 bytes, the larger last) leave as
/// two messages per viewer; with `media.pad_video_to = 16` the first eight are padded to
/// 1,168 bytes and the frame is one message. The viewers read the same media either way.
#[test]
fn padding_video_to_one_size_joins_a_frame_into_one_message() {
    let mut spec = load(false);
    spec.audio = false;
    spec.video = spec.video.map(|v| VideoSpec {
        packetize: Packetize::Even,
        keyframe_every: 0.0,
        ..v
    });
    let target = |node: &Node| Target::Node {
        api: node.api.clone(),
        profile: Profile::AeadAes128Gcm,
        cpu_pid: None,
        worker: None,
        webrtc: None,
    };
    let dir = std::env::temp_dir().join(format!("swy-gso-pad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("config.toml");
    std::fs::write(&config, "[media]\npad_video_to = 16\n").expect("config");
    let mut ratio = Vec::new();
    for padded in [false, true] {
        let node = match padded {
            false => Node::start(1),
            true => Node::start_with_args(1, &["--config", config.to_str().expect("utf-8")]),
        };
        let r = run(&spec, &target(&node)).expect("bench run");
        print!("{}", r.table());
        assert_eq!(r.received_packets, r.expected_packets);
        assert_eq!(r.errors, Default::default(), "padding is transparent");
        ratio.push(per_message(&node));
    }
    eprintln!(
        "datagrams per message: {:.2} unpadded, {:.2} padded",
        ratio[0], ratio[1]
    );
    assert!(ratio[1] > ratio[0] * 1.3, "padding joins runs: {ratio:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
