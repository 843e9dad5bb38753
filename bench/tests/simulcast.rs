//! `switchyard-bench fanout --simulcast` against a real node: a WHIP publisher with three
//! VP8 layers, plain subscribers of which half are capped at the lowest layer, every packet
//! checked. The node binary is the workspace's (`target/<profile>/switchyard`, next to the
//! bench's; `SWITCHYARD_BIN` overrides it): a `cargo test --workspace` builds it first. Run
//! alone (`cargo test -p switchyard-bench`) before the node was ever built, the test says
//! so and passes without running, except under `CI=true`, where that is a failure.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_bench::crypto::Profile;
use switchyard_bench::report::Errors;
use switchyard_bench::shape::{Packetize, VideoSpec};
use switchyard_bench::simulcast::SimulcastSpec;
use switchyard_bench::{run, LoadSpec, Target};

fn node_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SWITCHYARD_BIN") {
        return Some(p.into());
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_switchyard-bench"));
    let p = bench.parent()?.join("switchyard");
    p.exists().then_some(p)
}

/// A one-worker node: data plane and control plane, killed on drop.
struct Node {
    api: String,
    procs: Vec<Child>,
    shm: PathBuf,
}

impl Node {
    fn start(bin: &PathBuf) -> Node {
        let shm = std::env::temp_dir().join(format!("swy-bench-sim-{}", std::process::id()));
        std::fs::create_dir_all(&shm).expect("shm dir");
        let http = {
            let l = TcpListener::bind("127.0.0.1:0").expect("free tcp port");
            l.local_addr().expect("addr")
        };
        let udp = || {
            UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("free udp port")
                .port()
        };
        let (media, relay) = (udp(), udp());
        let spawn = |role: &str| {
            Command::new(bin)
                .arg(role)
                .args(["--node-id", "bench-sim"])
                .arg("--shm-dir")
                .arg(&shm)
                .args(["--http-listen", &http.to_string()])
                .args(["--media-bind", "127.0.0.1"])
                .args(["--media-port", &media.to_string()])
                .args(["--relay-port", &relay.to_string()])
                .args(["--workers", "1", "--pin", "false"])
                .env("SWITCHYARD_HOST_LOAD", "false")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn the node")
        };
        let procs = vec![spawn("dataplane"), spawn("controlplane")];
        let node = Node {
            api: format!("http://{http}"),
            procs,
            shm,
        };
        let http_opts = switchyard_bench::http::HttpOptions::default();
        let client = switchyard_bench::api::Node::new(&node.api, &http_opts).expect("client");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client.health().is_ok_and(|h| h.dataplane_pid.is_some()) {
            assert!(Instant::now() < deadline, "node not healthy in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Control plane first, so it does not restart or wait on the data plane.
        for p in self.procs.iter_mut().rev() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = std::fs::remove_dir_all(&self.shm);
    }
}

#[test]
fn simulcast_fanout_half_capped() {
    let Some(bin) = node_binary() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no node binary next to switchyard-bench: CI runs `cargo test --workspace`, \
             which builds it"
        );
        eprintln!("SKIPPED: no node binary next to switchyard-bench (build the workspace)");
        return;
    };
    let node = Node::start(&bin);
    let spec = LoadSpec {
        publishers: 1,
        subscribers: 4,
        duration: Duration::from_secs(2),
        // Keyframes every second: the top layer's subscribers have moved up by then.
        warmup: Duration::from_secs(2),
        size: 1200,
        bench_cores: Vec::new(),
        drain: Duration::from_millis(800),
        video: Some(VideoSpec {
            bitrate: 1_800_000,
            fps: 30,
            keyframe_every: 1.0,
            keyframe_factor: 5,
            packetize: Packetize::Even,
        }),
        simulcast: Some(SimulcastSpec {
            capped: 2,
            cap_layer: 0,
            ..SimulcastSpec::default()
        }),
        ..LoadSpec::default()
    };
    let target = Target::Node {
        api: node.api.clone(),
        profile: Profile::AeadAes128Gcm,
        cpu_pid: None,
        worker: None,
        webrtc: None,
    };
    let r = run(&spec, &target).expect("simulcast run");
    print!("{}", r.table());

    assert_eq!(r.subscribers_total, 4);
    assert_eq!(r.lost_packets, 0, "{:?}", r.errors);
    let e = &r.errors;
    assert_eq!(
        Errors {
            ignored: e.ignored,
            ..Errors::default()
        },
        *e,
        "no decrypt, SSRC, payload, routing or sequence errors"
    );
    assert_eq!(r.layers.len(), 3);
    let subs: Vec<usize> = r.layers.iter().map(|l| l.subscribers).collect();
    assert_eq!(subs, [2, 0, 2], "capped on layer 0, the others on the top");
    for l in [&r.layers[0], &r.layers[2]] {
        // 2 s of 30 frames, each a packet or more, per subscriber.
        assert!(l.expected_packets >= 2 * 60, "{l:?}");
        assert_eq!(l.received_packets, l.expected_packets, "{l:?}");
    }
    // The top layer carries several times the packets of the lowest.
    assert!(r.layers[2].pps > 3.0 * r.layers[0].pps, "{:?}", r.layers);
    assert!(r.cpu_ns_per_packet.is_some());
}
