//! `switchyard`: the node binary.
//!
//! - `up`: both planes of one node, each as a child process of this one, restarted when it
//!   dies. Two processes, not two threads, so either can crash or be upgraded alone: media
//!   keeps flowing through a control plane restart.
//! - `dataplane`, `controlplane`: one plane each (what the systemd units in deploy/ run).
//! - `version`.
//!
//! Configuration: embedded defaults, then `--config FILE` (TOML), then `SWITCHYARD_*`
//! environment variables, then flags.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use switchyard_shared::config::{Config, EngineKind};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Distributed WebRTC SFU and RTP relay"
)]
struct Cli {
    #[command(flatten)]
    opts: Opts,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a whole node: data plane and control plane, each restarted if it dies.
    Up,
    /// Start the data plane only.
    Dataplane,
    /// Start the control plane only.
    Controlplane,
    /// Print the version.
    Version,
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    Config,
}

/// Overrides, each also settable as an environment variable.
#[derive(Debug, Clone, Args)]
struct Opts {
    /// TOML config file.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Node id (names the shared-memory files).
    #[arg(long, global = true, env = "SWITCHYARD_NODE_ID")]
    node_id: Option<String>,
    /// Control plane HTTP listen address.
    #[arg(long, global = true, env = "SWITCHYARD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// PEM certificate chain: serve the API over HTTPS (with --http-private-key).
    #[arg(long, global = true, env = "SWITCHYARD_HTTP_CERTIFICATE")]
    http_certificate: Option<PathBuf>,
    /// PEM private key of --http-certificate.
    #[arg(long, global = true, env = "SWITCHYARD_HTTP_PRIVATE_KEY")]
    http_private_key: Option<PathBuf>,
    /// Address the media sockets bind to.
    #[arg(long, global = true, env = "SWITCHYARD_MEDIA_BIND")]
    media_bind: Option<IpAddr>,
    /// Address announced to peers for media.
    #[arg(long, global = true, env = "SWITCHYARD_MEDIA_ANNOUNCE")]
    media_announce: Option<IpAddr>,
    /// First media port; worker i listens on port + i.
    #[arg(long, global = true, env = "SWITCHYARD_MEDIA_PORT")]
    media_port: Option<u16>,
    /// Worker threads (0: cores − 1).
    #[arg(long, global = true, env = "SWITCHYARD_WORKERS")]
    workers: Option<u16>,
    /// I/O engine: auto, uring or mmsg.
    #[arg(long, global = true, env = "SWITCHYARD_ENGINE")]
    engine: Option<EngineKind>,
    /// Pin workers to cores (true/false).
    #[arg(long, global = true, env = "SWITCHYARD_PIN")]
    pin: Option<bool>,
    /// Directory of the shared-memory ring and stats files.
    #[arg(long, global = true, env = "SWITCHYARD_SHM_DIR")]
    shm_dir: Option<PathBuf>,
    /// Redis URL shared by the cluster's control planes (unset: in-memory, one node).
    #[arg(long, global = true, env = "SWITCHYARD_REDIS")]
    redis: Option<String>,
}

impl Opts {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.node_id {
            c.node.id.clone_from(v);
        }
        if let Some(v) = self.http_listen {
            c.http.listen = v;
        }
        if let Some(v) = &self.http_certificate {
            c.http.certificate = Some(v.clone());
        }
        if let Some(v) = &self.http_private_key {
            c.http.private_key = Some(v.clone());
        }
        if let Some(v) = self.media_bind {
            c.media.bind = v;
        }
        if let Some(v) = self.media_announce {
            c.media.announce = Some(v);
        }
        if let Some(v) = self.media_port {
            c.media.port = v;
        }
        if let Some(v) = self.workers {
            c.media.workers = v;
        }
        if let Some(v) = self.engine {
            c.media.engine = v;
        }
        if let Some(v) = self.pin {
            c.media.pin = v;
        }
        if let Some(v) = &self.shm_dir {
            c.ring.dir = Some(v.clone());
        }
        if let Some(v) = &self.redis {
            c.cluster.redis = Some(v.clone());
        }
        c.validate()?;
        Ok(c)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Cmd::Version = cli.cmd {
        println!("switchyard {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let config = match cli.opts.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.cmd {
        Cmd::Up => up(&cli.opts),
        Cmd::Dataplane => switchyard_dataplane::run(config),
        Cmd::Controlplane => switchyard_controlplane::run(config),
        Cmd::Config => toml::to_string_pretty(&config)
            .map(|t| print!("{t}"))
            .context("rendering config"),
        Cmd::Version => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Both planes as supervised child processes. The children get the same options (the
/// environment is inherited, so `SWITCHYARD_*` variables reach them as they are).
fn up(opts: &Opts) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(supervise(opts.clone()))
}

struct Child {
    role: &'static str,
    proc: Option<tokio::process::Child>,
}

fn spawn(role: &'static str, opts: &Opts) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("locating the switchyard binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg(role);
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            cmd.arg(format!("--{name}")).arg(v);
        }
    };
    flag(
        "config",
        opts.config.as_ref().map(|p| p.display().to_string()),
    );
    flag("node-id", opts.node_id.clone());
    flag("http-listen", opts.http_listen.map(|v| v.to_string()));
    flag(
        "http-certificate",
        opts.http_certificate
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    flag(
        "http-private-key",
        opts.http_private_key
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    flag("media-bind", opts.media_bind.map(|v| v.to_string()));
    flag("media-announce", opts.media_announce.map(|v| v.to_string()));
    flag("media-port", opts.media_port.map(|v| v.to_string()));
    flag("workers", opts.workers.map(|v| v.to_string()));
    flag(
        "engine",
        opts.engine.map(|v| format!("{v:?}").to_lowercase()),
    );
    flag("pin", opts.pin.map(|v| v.to_string()));
    flag(
        "shm-dir",
        opts.shm_dir.as_ref().map(|p| p.display().to_string()),
    );
    flag("redis", opts.redis.clone());
    cmd.kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting the {role}"))?;
    tracing::info!(role, pid = child.id(), "started");
    Ok(child)
}

async fn supervise(opts: Opts) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    // The data plane first: it creates the ring the control plane attaches to.
    let mut children = [
        Child {
            role: "dataplane",
            proc: Some(spawn("dataplane", &opts)?),
        },
        Child {
            role: "controlplane",
            proc: Some(spawn("controlplane", &opts)?),
        },
    ];
    loop {
        let [dp, cp] = &mut children;
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            status = wait(dp) => restart(dp, status, &opts).await,
            status = wait(cp) => restart(cp, status, &opts).await,
        }
    }
    tracing::info!("stopping");
    for c in &mut children {
        if let Some(p) = &mut c.proc {
            if let Some(pid) = p.id() {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
    }
    for c in &mut children {
        if let Some(p) = &mut c.proc {
            if tokio::time::timeout(Duration::from_secs(5), p.wait())
                .await
                .is_err()
            {
                tracing::warn!(role = c.role, "did not stop in 5 s; killing");
                let _ = p.kill().await;
            }
        }
    }
    Ok(())
}

async fn wait(c: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    match &mut c.proc {
        Some(p) => p.wait().await,
        None => std::future::pending().await,
    }
}

async fn restart(c: &mut Child, status: std::io::Result<std::process::ExitStatus>, opts: &Opts) {
    match status {
        Ok(s) => tracing::error!(role = c.role, status = %s, "exited; restarting in 1 s"),
        Err(e) => tracing::error!(role = c.role, error = %e, "lost; restarting in 1 s"),
    }
    c.proc = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match spawn(c.role, opts) {
            Ok(p) => {
                c.proc = Some(p);
                return;
            }
            Err(e) => tracing::error!(role = c.role, error = %e, "restart failed; trying again"),
        }
    }
}
