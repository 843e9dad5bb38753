//! Switchyard packet generator: `fanout`, `ramp` and `reflector` (see docs/bench.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use switchyard_bench::crypto::Profile;
use switchyard_bench::pacing::rate_for_bitrate;
use switchyard_bench::run::WebrtcJoin;
use switchyard_bench::shape::{Packetize, VideoSpec};
use switchyard_bench::simulcast::SimulcastSpec;
use switchyard_bench::{LoadSpec, RampSpec, Target};

mod output;

#[derive(Parser)]
#[command(
    name = "switchyard-bench",
    version,
    about = "Load generator for a Switchyard node"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fan-out through a node: P publishers, S subscribers each, SRTP.
    Fanout {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Relays between nodes: publishers and subscribers on --api, each stream relayed to
    /// every --via node with subscribers there too; latency added per hop and link packets/s.
    Relay {
        /// The publishers' node (hop 0).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        api: String,
        /// Nodes the streams are relayed to, comma separated control API URLs.
        #[arg(long, value_delimiter = ',', required = true)]
        via: Vec<String>,
        /// Relay each --via node from the one before it (a chain) instead of from --api.
        #[arg(long)]
        chain: bool,
        #[arg(long, value_enum, default_value_t = ProfileArg::Gcm)]
        profile: ProfileArg,
        /// Process whose CPU is measured (default: the --api node's dataplanePid).
        #[arg(long)]
        cpu_pid: Option<i32>,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// The same load through an in-process plain UDP fan-out thread (the reference).
    Reflector {
        /// Core the reflector thread is pinned to.
        #[arg(long, default_value_t = 1)]
        core: usize,
        /// Send each subscriber a receive batch's datagrams as UDP_SEGMENT messages.
        #[arg(long)]
        gso: bool,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Growing load until loss or p99 latency crosses a threshold; reports the capacity.
    Ramp {
        #[command(flatten)]
        node: NodeArgs,
        /// Ramp the in-process reflector instead of a node.
        #[arg(long)]
        reflector: bool,
        /// Core of the reflector thread (with --reflector).
        #[arg(long, default_value_t = 1)]
        core: usize,
        /// With --reflector: segmented sends (see `reflector --gso`).
        #[arg(long, requires = "reflector")]
        gso: bool,
        /// Subscribers per publisher (or publishers, with --grow-publishers) at step 1.
        #[arg(long, default_value_t = 10)]
        start: usize,
        /// Growth factor per step.
        #[arg(long, default_value_t = 1.5)]
        step: f64,
        /// Largest count tried.
        #[arg(long, default_value_t = 5000)]
        max: usize,
        /// Measured seconds per step.
        #[arg(long, default_value_t = 5.0)]
        step_duration: f64,
        /// Loss ratio a step may have and pass.
        #[arg(long, default_value_t = 0.001)]
        loss: f64,
        /// p99 latency (µs) a step may have and pass.
        #[arg(long, default_value_t = 5000)]
        p99_us: u64,
        /// Grow publishers (each with --subscribers) instead of subscribers.
        #[arg(long)]
        grow_publishers: bool,
        #[command(flatten)]
        load: LoadArgs,
    },
}

#[derive(Args)]
struct NodeArgs {
    /// The node's control API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    #[arg(long, value_enum, default_value_t = ProfileArg::Gcm)]
    profile: ProfileArg,
    /// Process whose CPU is measured (default: dataplanePid from /health).
    #[arg(long)]
    cpu_pid: Option<i32>,
    /// Place every session on this worker (default: the node decides).
    #[arg(long)]
    worker: Option<u32>,
    /// Join as WebRTC peers: WHIP/WHEP offer, ICE, DTLS-SRTP (reports join times).
    #[arg(long)]
    webrtc: bool,
    /// With --webrtc: subscribers joining at once.
    #[arg(long, default_value_t = 16)]
    join_parallel: usize,
    #[command(flatten)]
    http: HttpArgs,
}

/// How the node's API is spoken to.
#[derive(Args)]
struct HttpArgs {
    /// Bearer token for the node's API (`switchyard token sign --cluster` for /v1/sessions;
    /// WHIP/WHEP with --webrtc need a token that may publish and watch bench/*).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate an https:// node's certificate is verified against.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Accept any certificate from an https:// node (self-signed test nodes).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
}

impl HttpArgs {
    fn options(&self) -> switchyard_bench::http::HttpOptions {
        switchyard_bench::http::HttpOptions {
            token: self.token.clone(),
            ca: self.ca.clone(),
            insecure: self.insecure,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ProfileArg {
    /// AEAD_AES_128_GCM
    Gcm,
    /// AES_CM_128_HMAC_SHA1_80
    Cm,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Profile {
        match p {
            ProfileArg::Gcm => Profile::AeadAes128Gcm,
            ProfileArg::Cm => Profile::AesCm128HmacSha1_80,
        }
    }
}

#[derive(Args)]
struct LoadArgs {
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers per publisher.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Packets per second per publisher.
    #[arg(long, default_value_t = 1000, conflicts_with = "bitrate")]
    rate: u64,
    /// Bits per second per publisher (sets --rate from --size).
    #[arg(long)]
    bitrate: Option<u64>,
    /// Datagram size in bytes, RTP header and SRTP tag included.
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// Seconds between keyframe bursts (0: none).
    #[arg(long, default_value_t = 0.0)]
    keyframe_every: f64,
    /// Extra packets per keyframe burst.
    #[arg(long, default_value_t = 20)]
    keyframe_packets: u64,
    /// Receive threads (subscriber sockets are spread over them).
    #[arg(long, default_value_t = 1)]
    sockets: usize,
    /// Cores for the bench's own threads, comma separated ("" = unpinned).
    #[arg(long, default_value = "0")]
    bench_cores: String,
    /// Write the JSON report here; `-` writes it to stdout (the table then goes to stderr).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Subscribers are relay-outs (`fanout` over /v1/sessions only): relay egress instead of
    /// subscriber egress.
    #[arg(long)]
    relay_out: bool,
    /// Frame-shaped video instead of --rate: this many bits/s per publisher (datagram bytes),
    /// --fps frames a second, each a burst of packets of at most --size bytes; a keyframe
    /// every --keyframe-every seconds, --keyframe-factor times larger.
    #[arg(long, conflicts_with = "bitrate")]
    video: Option<u64>,
    /// With --video: frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u64,
    /// With --video: a keyframe's size over a delta frame's.
    #[arg(long, default_value_t = 5)]
    keyframe_factor: u64,
    /// With --video: how a frame is cut into packets (even: as libwebrtc does, sizes within
    /// one byte; max: full packets and a shorter last one).
    #[arg(long, value_enum, default_value_t = Packetize::Even)]
    packetize: Packetize,
    /// An audio track per publisher: 50 packets/s of 100–160 bytes, in the same stream as
    /// --video (alone without it).
    #[arg(long)]
    audio: bool,
    /// Subscribers read with UDP_GRO (the report counts reads and datagrams).
    #[arg(long)]
    gro: bool,
    /// Simulcast publishers (`fanout` only): each joins over WHIP and sends three VP8 layers
    /// (320x180, 640x360, 1280x720) at --layer-bitrates, --fps frames a second with a
    /// keyframe every --keyframe-every seconds (2 when 0) --keyframe-factor times larger;
    /// subscribers over /v1/sessions.
    #[arg(long, conflicts_with_all = ["video", "audio", "bitrate", "relay_out"])]
    simulcast: bool,
    /// With --simulcast: bits/s of the three layers, lowest first (datagram bytes).
    #[arg(long, value_delimiter = ',', num_args = 3, requires = "simulcast",
          default_values_t = [150_000u64, 500_000, 1_800_000])]
    layer_bitrates: Vec<u64>,
    /// With --simulcast: the fraction of each publisher's subscribers capped at --cap-layer
    /// (`POST /v1/sessions/{id}/layers`); the rest receive the top layer.
    #[arg(long, default_value_t = 0.0, requires = "simulcast")]
    capped: f64,
    /// With --simulcast: the rank capped subscribers get (0: the lowest layer).
    #[arg(long, default_value_t = 0, requires = "simulcast",
          value_parser = clap::value_parser!(u8).range(0..=2))]
    cap_layer: u8,
    #[command(flatten)]
    output: output::OutputArgs,
}

fn secs(v: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("--{what} must be a non-negative number"))
}

impl LoadArgs {
    fn spec(&self) -> anyhow::Result<LoadSpec> {
        let bench_cores = self
            .bench_cores
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .context("--bench-cores wants a comma-separated list of core numbers")?;
        let keyframe_every = secs(self.keyframe_every, "keyframe-every")?;
        if !(0.0..=1.0).contains(&self.capped) {
            bail!("--capped is a fraction of the subscribers, 0 to 1");
        }
        let simulcast = self.simulcast.then(|| SimulcastSpec {
            bitrates: [
                self.layer_bitrates.first().copied().unwrap_or(150_000),
                self.layer_bitrates.get(1).copied().unwrap_or(500_000),
                self.layer_bitrates.get(2).copied().unwrap_or(1_800_000),
            ],
            capped: SimulcastSpec::capped_of(self.capped, self.subscribers),
            cap_layer: self.cap_layer,
        });
        // A simulcast subscriber moves to a layer at its next keyframe, so they recur.
        let video_keyframes = match (self.simulcast, self.keyframe_every) {
            (true, k) if k <= 0.0 => 2.0,
            (_, k) => k,
        };
        let video = match (&simulcast, self.video) {
            (Some(sim), _) => Some(sim.bitrates[2]),
            (None, v) => v,
        };
        Ok(LoadSpec {
            publishers: self.publishers,
            subscribers: self.subscribers,
            duration: secs(self.duration, "duration")?,
            warmup: secs(self.warmup, "warmup")?,
            rate: match self.bitrate {
                Some(b) => rate_for_bitrate(b, self.size),
                None => self.rate,
            },
            size: self.size,
            keyframe_every,
            keyframe_packets: if keyframe_every.is_zero() {
                0
            } else {
                self.keyframe_packets
            },
            sockets: self.sockets,
            bench_cores,
            relay_out: self.relay_out,
            video: video.map(|bitrate| VideoSpec {
                bitrate,
                fps: self.fps.max(1),
                keyframe_every: video_keyframes,
                keyframe_factor: self.keyframe_factor.max(1),
                packetize: self.packetize,
            }),
            audio: self.audio,
            gro: self.gro,
            progress: !self.output.quiet,
            simulcast,
            ..LoadSpec::default()
        })
    }
}

impl NodeArgs {
    fn target(&self) -> Target {
        Target::Node {
            api: self.api.clone(),
            profile: self.profile.into(),
            cpu_pid: self.cpu_pid,
            worker: self.worker,
            webrtc: self.webrtc.then_some(WebrtcJoin {
                parallel: self.join_parallel,
            }),
        }
    }
}

/// Print the report: the table on stdout and the JSON into `path`, or with `--json -` the
/// JSON alone on stdout (so it can be piped) and the table on stderr.
fn report_out<T: Serialize>(table: &str, path: &Option<PathBuf>, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    match path {
        Some(p) if p.as_os_str() == "-" => {
            eprint!("{table}");
            println!("{text}");
        }
        Some(p) => {
            print!("{table}");
            std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
        }
        None => print!("{table}"),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Fanout { node, load } => {
            let mut spec = load.spec()?;
            spec.http = node.http.options();
            let report = switchyard_bench::run(&spec, &node.target())?;
            report_out(&report.table(), &load.json, &report)?;
            load.output.run(&report)?;
        }
        Cmd::Relay {
            api,
            via,
            chain,
            profile,
            cpu_pid,
            http,
            load,
        } => {
            let target = Target::Relay {
                api,
                via,
                chain,
                profile: profile.into(),
                cpu_pid,
            };
            let mut spec = load.spec()?;
            spec.http = http.options();
            let report = switchyard_bench::run(&spec, &target)?;
            report_out(&report.table(), &load.json, &report)?;
            load.output.run(&report)?;
        }
        Cmd::Reflector { core, gso, load } => {
            let target = Target::Reflector {
                core: Some(core),
                gso,
            };
            let report = switchyard_bench::run(&load.spec()?, &target)?;
            report_out(&report.table(), &load.json, &report)?;
            load.output.run(&report)?;
        }
        Cmd::Ramp {
            node,
            reflector,
            core,
            gso,
            start,
            step,
            max,
            step_duration,
            loss,
            p99_us,
            grow_publishers,
            load,
        } => {
            if step.is_nan() || step <= 1.0 {
                bail!("--step must be > 1");
            }
            if load.simulcast {
                bail!("--simulcast is for fanout (its capped count is fixed per run)");
            }
            let mut spec = load.spec()?;
            spec.duration = secs(step_duration, "step-duration")?;
            spec.http = node.http.options();
            let target = if reflector {
                Target::Reflector {
                    core: Some(core),
                    gso,
                }
            } else {
                node.target()
            };
            let ramp = RampSpec {
                start,
                step,
                max,
                loss,
                p99_us,
                grow_publishers,
            };
            let report = switchyard_bench::ramp(&spec, &target, &ramp, true)?;
            report_out(&report.table(), &load.json, &report)?;
            load.output.ramp(&report)?;
        }
    }
    Ok(())
}
