//! `switchyard`: the node binary.
//!
//! - `up`: both planes of one node, each as a child process of this one, restarted when it
//!   dies. Two processes, not two threads, so either can crash or be upgraded alone: media
//!   keeps flowing through a control plane restart.
//! - `dataplane`, `controlplane`: one plane each (what the systemd units in deploy/ run).
//! - `version`.
//! - `token generate` (a fresh HS256 key for `[auth] key`), `token sign` (a JWT for clients
//!   and nodes; see docs/operations.md).
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
    /// Make auth keys and tokens (JWT) for `[auth]`.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Print a fresh random HS256 key (base64) for `[auth] key`.
    Generate,
    /// Print a signed token (JWT).
    Sign(SignArgs),
}

#[derive(Debug, Args)]
struct SignArgs {
    /// HS256 key, base64 (as in `[auth] key`).
    #[arg(
        long,
        env = "SWITCHYARD_AUTH_KEY",
        required_unless_present = "private_key"
    )]
    key: Option<String>,
    /// ES256 private key (PKCS#8 PEM file) instead of --key.
    #[arg(long, conflicts_with = "key")]
    private_key: Option<PathBuf>,
    /// Path prefix every --publish/--subscribe suffix is relative to ("" = everything).
    #[arg(long, default_value = "")]
    root: String,
    /// Suffix under --root the bearer may publish to ("" = anything under root); repeatable.
    #[arg(long)]
    publish: Vec<String>,
    /// Suffix under --root the bearer may watch ("" = anything under root); repeatable.
    #[arg(long)]
    subscribe: Vec<String>,
    /// Lifetime: 90s, 30m, 1h, 7d; `never` only with --cluster.
    #[arg(long, default_value = "1h")]
    expires: String,
    /// Node-to-node token: every endpoint and path (registration, sessions, drain, ...).
    #[arg(long)]
    cluster: bool,
}

/// Seconds in `90s`, `30m`, `1h`, `7d` (a bare number is seconds); None for `never`.
fn lifetime(text: &str) -> anyhow::Result<Option<u64>> {
    if text == "never" {
        return Ok(None);
    }
    let (n, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = n
        .parse()
        .with_context(|| format!("bad lifetime {text:?}"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("bad lifetime {text:?} (use s, m, h or d, e.g. 1h)"),
    };
    n.checked_mul(unit)
        .filter(|s| *s > 0)
        .map(Some)
        .with_context(|| format!("bad lifetime {text:?}"))
}

fn token(cmd: &TokenCmd) -> anyhow::Result<()> {
    use switchyard_controlplane::auth;
    match cmd {
        TokenCmd::Generate => println!("{}", auth::generate_key()?),
        TokenCmd::Sign(a) => {
            let ttl = lifetime(&a.expires)?;
            anyhow::ensure!(
                ttl.is_some() || a.cluster,
                "--expires never is for --cluster tokens only: user tokens must expire"
            );
            let now = auth::now_s();
            let claims = auth::Claims {
                root: a.root.trim_matches('/').to_owned(),
                publish: a.publish.clone(),
                subscribe: a.subscribe.clone(),
                cluster: a.cluster,
                exp: ttl.map(|t| now + t),
                iat: Some(now),
            };
            let jwt = match (&a.key, &a.private_key) {
                (Some(key), _) => auth::sign_hs256(key, &claims)?,
                (None, Some(pem)) => auth::sign_es256(&pem.to_string_lossy(), &claims)?,
                (None, None) => anyhow::bail!("--key or --private-key is required"),
            };
            println!("{jwt}");
        }
    }
    Ok(())
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
    /// Addresses announced to peers for media, comma-separated (default: the bind address,
    /// or every interface address when bound to 0.0.0.0 / ::).
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_MEDIA_ANNOUNCE",
        value_delimiter = ','
    )]
    media_announce: Option<Vec<IpAddr>>,
    /// IPv6 address also announced to peers (needs --media-bind ::).
    #[arg(long, global = true, env = "SWITCHYARD_MEDIA_ANNOUNCE6")]
    media_announce6: Option<std::net::Ipv6Addr>,
    /// First media port; worker i listens on port + i.
    #[arg(long, global = true, env = "SWITCHYARD_MEDIA_PORT")]
    media_port: Option<u16>,
    /// First relay port; worker i binds its relay socket on relay_port + i.
    #[arg(long, global = true, env = "SWITCHYARD_RELAY_PORT")]
    relay_port: Option<u16>,
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
    /// Serve the API on a non-loopback --http-listen with auth off (open to anyone there).
    #[arg(long, global = true, env = "SWITCHYARD_INSECURE")]
    insecure: bool,
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
        if let Some(v) = &self.media_announce {
            c.media.announce.clone_from(v);
        }
        if let Some(v) = self.media_announce6 {
            c.media.announce6 = Some(v);
        }
        if let Some(v) = self.media_port {
            c.media.port = v;
        }
        if let Some(v) = self.relay_port {
            c.media.relay_port = v;
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
        if self.insecure {
            c.http.insecure = true;
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
    if let Cmd::Token(cmd) = &cli.cmd {
        return match token(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let config = match cli.opts.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.cmd, Cmd::Up | Cmd::Controlplane) {
        // Before `up` starts anything: its control plane child would only exit and be
        // restarted forever.
        if let Err(e) = config.check_exposure() {
            eprintln!("switchyard: {e}");
            return ExitCode::from(2);
        }
    }
    if matches!(cli.cmd, Cmd::Up | Cmd::Dataplane | Cmd::Controlplane) {
        raise_fd_limit();
    }
    let result = match cli.cmd {
        Cmd::Up => up(&cli.opts),
        Cmd::Dataplane => switchyard_dataplane::run(config),
        Cmd::Controlplane => switchyard_controlplane::run(config),
        Cmd::Config => toml::to_string_pretty(&config)
            .map(|t| print!("{t}"))
            .context("rendering config"),
        Cmd::Version | Cmd::Token(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raise the soft limit on open files to the hard one (children inherit it): the default
/// soft 1024 is what a flood of idle HTTP connections exhausted (issue 9 item 7); the
/// control plane also caps its connections below whatever limit it ends up with.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one rlimit we own; setrlimit(2) reads it.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            lim.rlim_cur >= lim.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0
        }
    };
    if !raised {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot raise the open file limit"
        );
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
    flag(
        "media-announce",
        opts.media_announce.as_ref().map(|v| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }),
    );
    flag(
        "media-announce6",
        opts.media_announce6.map(|v| v.to_string()),
    );
    flag("media-port", opts.media_port.map(|v| v.to_string()));
    flag("relay-port", opts.relay_port.map(|v| v.to_string()));
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
    if opts.insecure {
        cmd.arg("--insecure");
    }
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
