//! What a node tells its operators: per-session counters and bitrates in `/v1/sessions`,
//! per-stream totals in `/v1/streams`, and a `/metrics` text that `promtool check metrics`
//! accepts, with the new families in it. Media comes from the bundled generator.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Node;
use switchyard_bench::crypto::Profile;
use switchyard_bench::{run, LoadSpec, Target};

/// `promtool check metrics` on `text`: `Ok(None)` when promtool is missing (a loud skip; under
/// `CI=true` a failure, so a missing package cannot pass unseen), `Ok(Some(output))` when it
/// accepted the text, `Err(output)` when it did not.
fn promtool(text: &str) -> Result<Option<String>, String> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool cannot run under CI=true: {e} (apt-get install prometheus)"
            );
            eprintln!("\n!!!!! SKIPPED promtool check: {e} (apt-get install prometheus) !!!!!\n");
            return Ok(None);
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(Some(said))
    } else {
        Err(said)
    }
}

#[test]
fn counters_reach_the_api_and_metrics_pass_promtool() {
    let node = Node::start_with_args(2, &[]);
    let target = Target::Node {
        api: node.api.clone(),
        profile: Profile::AeadAes128Gcm,
        cpu_pid: None,
        worker: None,
        webrtc: None,
    };
    let spec = LoadSpec {
        publishers: 1,
        subscribers: 3,
        duration: Duration::from_secs(4),
        warmup: Duration::from_millis(300),
        rate: 200,
        size: 1000,
        bench_cores: Vec::new(),
        drain: Duration::from_millis(300),
        ..LoadSpec::default()
    };
    let bench = std::thread::spawn(move || run(&spec, &target));

    // Wait for media, then past one sampling second so bitrates exist.
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.metric_sum("switchyard_forwarded_packets_total{") < 400 {
        assert!(Instant::now() < deadline, "media did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));

    let list: serde_json::Value =
        serde_json::from_str(&node.get("/v1/sessions").body).expect("session list");
    let sessions = list["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 4, "{list}");
    for s in sessions {
        let st = &s["stats"];
        let (into, out) = match s["role"].as_str() {
            Some("publisher") => (st["packetsIn"].as_u64(), st["bitrateIn"].as_u64()),
            _ => (st["packetsOut"].as_u64(), st["bitrateOut"].as_u64()),
        };
        assert!(into.is_some_and(|n| n > 100), "packets: {s}");
        // 200 packets/s of ~1 KB: about 1.6 Mbit/s each way.
        assert!(
            out.is_some_and(|b| (800_000..4_000_000).contains(&b)),
            "bitrate: {s}"
        );
        if s["role"] == "publisher" {
            assert!(
                st["msSinceLastPacket"].as_u64().is_some_and(|ms| ms < 1000),
                "{s}"
            );
        }
        // Static keys, no ICE: neither state applies.
        assert!(s.get("ice").is_none() && s.get("dtls").is_none(), "{s}");
        let id = s["id"].as_u64().expect("id");
        let one: serde_json::Value =
            serde_json::from_str(&node.get(&format!("/v1/sessions/{id}")).body).expect("one");
        assert!(one["stats"]["bytesIn"].is_u64(), "{one}");
    }
    let streams: serde_json::Value =
        serde_json::from_str(&node.get("/v1/streams").body).expect("streams");
    let s = &streams["streams"][0];
    assert!(
        s["packetsIn"].as_u64().is_some_and(|n| n > 100),
        "{streams}"
    );
    assert!(
        s["packetsOut"].as_u64() >= s["packetsIn"].as_u64().map(|n| n * 2),
        "{streams}"
    );

    let started = Instant::now();
    let text = node.get("/metrics").body;
    for family in [
        "switchyard_build_info{version=\"",
        "switchyard_process_cpu_seconds_total{plane=\"control\"}",
        "switchyard_process_resident_memory_bytes{plane=\"data\"}",
        "switchyard_process_open_fds{plane=\"data\"}",
        "switchyard_stream_packets_in_total{stream=\"",
        "switchyard_stream_subscribers{stream=\"",
        "switchyard_stream_series_folded 0",
        "switchyard_http_request_duration_seconds_bucket{route=\"/v1/sessions\",status=\"2xx\",le=\"+Inf\"}",
        "switchyard_join_seconds_count{protocol=\"whip\"}",
        "switchyard_dtls_handshake_seconds_bucket{le=\"0.005\"}",
    ] {
        assert!(text.contains(family), "missing {family}\n{text}");
    }
    match promtool(&text) {
        Ok(Some(said)) => eprintln!("promtool: ok {said}"),
        Ok(None) => {}
        Err(said) => panic!("promtool check metrics failed:\n{said}\n{text}"),
    }
    eprintln!("scrape and check took {:?}", started.elapsed());
    bench.join().expect("bench thread").expect("bench run");
}

/// Over `[metrics] max_stream_series`, streams fold into one `stream="_other"` series.
#[test]
fn stream_series_are_capped() {
    let dir = std::env::temp_dir().join(format!("swy-metrics-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("switchyard.toml");
    std::fs::write(&config, "[metrics]\nmax_stream_series = 1\n").expect("config");
    let node = Node::start_with_args(1, &["--config", config.to_str().expect("utf-8")]);
    for s in ["cap/a", "cap/b", "cap/c"] {
        let r = node.post(
            "/v1/sessions",
            &format!(r#"{{"role":"publisher","stream":"{s}"}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let text = node.get("/metrics").body;
    assert_eq!(
        node.metric_sum("switchyard_stream_series_folded"),
        2,
        "{text}"
    );
    let named = text
        .lines()
        .filter(|l| l.starts_with("switchyard_stream_subscribers{"))
        .count();
    assert_eq!(named, 2, "one stream and _other:\n{text}");
    assert!(text.contains("switchyard_stream_subscribers{stream=\"_other\"} 0"));
    if let Err(said) = promtool(&text) {
        panic!("promtool check metrics failed:\n{said}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
