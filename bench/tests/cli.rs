//! The `switchyard-bench` binary as a user runs it, against the in-process reflector (no
//! node needed): a progress line on stderr every second, `--json -` alone on stdout, and
//! the `--hgrm` and `--html` files (tests/bench_report.rs loads such HTML in Chromium).

use std::process::Command;

use switchyard_bench::hgrm;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard-bench");

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("swy-bench-cli-{}-{name}", std::process::id()))
}

fn bench(args: &[&str]) -> (String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run switchyard-bench");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

const LOAD: [&str; 12] = [
    "--publishers",
    "1",
    "--subscribers",
    "3",
    "--rate",
    "200",
    "--size",
    "300",
    "--core",
    "0",
    // Unpinned: the machine's cores are shared with the rest of the suite.
    "--bench-cores",
    "",
];

#[test]
fn progress_every_second_json_on_stdout_and_report_files() {
    let (html, hgrm_path) = (tmp("run.html"), tmp("run.hgrm"));
    let mut args = vec![
        "reflector",
        "--duration",
        "3",
        "--warmup",
        "1",
        "--json",
        "-",
    ];
    args.extend(LOAD);
    let (h, g) = (
        html.to_str().expect("utf-8"),
        hgrm_path.to_str().expect("utf-8"),
    );
    args.extend(["--html", h, "--hgrm", g]);
    let (stdout, stderr) = bench(&args);

    // Four seconds, four lines: one of warm-up, three of the measured window.
    let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(progress.len(), 4, "{stderr}");
    for (i, l) in progress.iter().enumerate() {
        assert!(l.starts_with(&format!("[    {}/4 s]", i + 1)), "{l}");
        assert!(
            l.contains(if i == 0 { "warm-up" } else { "measuring" }),
            "{l}"
        );
        for field in ["sent ", "received ", "loss ", "latency p50 "] {
            assert!(l.contains(field), "{field} missing: {l}");
        }
    }
    // Settled seconds show a loss figure; on loopback it is zero.
    assert!(progress[3].contains("loss 0.000%"), "{}", progress[3]);

    // stdout is the JSON report alone; the table went to stderr.
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert!(
        stderr.contains("reflector (plain) 1 pub x 3 sub"),
        "{stderr}"
    );
    let timeline = report["timeline"].as_array().expect("timeline");
    assert_eq!(timeline.len(), 4, "{timeline:?}");
    let sent: u64 = timeline.iter().filter_map(|s| s["sent"].as_u64()).sum();
    assert_eq!(sent, 800, "4 s at 200 packets/s: {timeline:?}");
    // Every copy counted in its send second (arrivals may slip into the next one).
    let received: u64 = timeline.iter().filter_map(|s| s["received"].as_u64()).sum();
    assert_eq!(received, 3 * 800, "{timeline:?}");
    assert!(
        timeline.iter().all(|s| s["loss_ratio"] == 0.0),
        "{timeline:?}"
    );

    let text = std::fs::read_to_string(&hgrm_path).expect(".hgrm written");
    let points = hgrm::parse(&text);
    let last = points.last().expect("lines");
    assert_eq!(Some(last.total), report["latency_us"]["count"].as_u64());
    assert_eq!(last.quantile, 1.0);

    let page = std::fs::read_to_string(&html).expect("HTML written");
    assert_eq!(page.matches("<svg class=\"plot\"").count(), 4);
    assert!(!page.contains("<script"), "the report runs no script");
    assert!(
        !page.contains("src=") && !page.contains("<link"),
        "nothing to fetch"
    );
    let _ = std::fs::remove_file(&html);
    let _ = std::fs::remove_file(&hgrm_path);
}

#[test]
fn quiet_runs_print_no_progress_and_ramps_write_a_file_per_step() {
    let hgrm_path = tmp("ramp.hgrm");
    let mut args = vec![
        "ramp",
        "--reflector",
        "--start",
        "1",
        "--step",
        "2",
        "--max",
        "4",
        "--step-duration",
        "1",
        "--warmup",
        "0.2",
        // Passing is not what this checks.
        "--p99-us",
        "10000000",
        "--loss",
        "1",
        "--quiet",
        "--hgrm",
    ];
    let g = hgrm_path.to_str().expect("utf-8");
    args.push(g);
    args.extend(LOAD);
    let (_, stderr) = bench(&args);
    assert!(
        !stderr.lines().any(|l| l.starts_with('[')),
        "--quiet printed progress: {stderr}"
    );
    // Steps of 1, 2 and 4 subscribers.
    for step in 1..=3 {
        let path = tmp(&format!("ramp.step{step}.hgrm"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; {stderr}", path.display()));
        assert!(!hgrm::parse(&text).is_empty());
        let _ = std::fs::remove_file(&path);
    }
}
