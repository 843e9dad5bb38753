//! `switchyard`: the node binary.
//!
//! - `up`: both planes of one node, each as a child process of this one, restarted when it
//!   dies. Two processes, not two threads, so either can crash or be upgraded alone: media
//!   keeps flowing through a control plane restart.
//! - `dataplane`, `controlplane`: one plane each (what the systemd units in deploy/ run).
//! - `version`.
//! - `token generate` (a fresh HS256 key for `[auth] key`), `token sign` (a JWT for clients
//!   and nodes; see docs/operations.md), `token verify` (`token`).
//! - `nodes list`, `rooms list`, `streams list`, `sessions list`, `session kick`, `drain`:
//!   admin commands over a node's REST API (`admin`, docs/operations.md, "Admin CLI").
//!
//! Configuration: embedded defaults, then `--config FILE` (TOML), then `SWITCHYARD_*`
//! environment variables, then flags.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod admin;
mod token;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use switchyard_shared::config::{Config, ConfigError, EngineKind};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Distributed WebRTC SFU and RTP relay"
)]
struct Cli {
    /// TOML config file; also accepted after the subcommand, where it wins (the systemd
    /// units of earlier releases put it here).
    #[arg(long, env = "SWITCHYARD_CONFIG", hide_env = true)]
    config: Option<PathBuf>,
    /// Log lines as `text` (for people) or `json` (one object per line, fields as keys, for
    /// log collectors).
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The log subscriber for the whole process, to stderr (journald keeps it under systemd).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Fields at the top level, not under "fields", so a collector indexes `id` and
        // `stream` directly; no ANSI codes inside JSON strings.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_ansi(false)
            .init(),
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a whole node: data plane and control plane, each restarted if it dies.
    Up(Opts),
    /// Start the data plane only.
    Dataplane(Opts),
    /// Start the control plane only.
    Controlplane(Opts),
    /// Print the version.
    Version,
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    Config(Opts),
    /// Make auth keys and tokens (JWT) for `[auth]`, or check one.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Admin commands over a node's REST API: nodes, rooms, streams, sessions, drain.
    #[command(flatten)]
    Admin(admin::AdminCmd),
}

/// Overrides, each also settable as an environment variable.
#[derive(Debug, Clone, Args)]
struct Opts {
    /// TOML config file.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Node id, unique in a cluster; names the shared-memory files [default: node-1].
    #[arg(long, env = "SWITCHYARD_NODE_ID")]
    node_id: Option<String>,
    /// Control plane HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "SWITCHYARD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// PEM certificate chain: serve the API over HTTPS (with --http-private-key).
    #[arg(long, env = "SWITCHYARD_HTTP_CERTIFICATE")]
    http_certificate: Option<PathBuf>,
    /// PEM private key of --http-certificate.
    #[arg(long, env = "SWITCHYARD_HTTP_PRIVATE_KEY")]
    http_private_key: Option<PathBuf>,
    /// Address the media sockets bind to [default: 0.0.0.0].
    #[arg(long, env = "SWITCHYARD_MEDIA_BIND")]
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
    #[arg(long, env = "SWITCHYARD_MEDIA_ANNOUNCE6")]
    media_announce6: Option<std::net::Ipv6Addr>,
    /// First media port; worker i listens on UDP and TCP port + i [default: 10000].
    #[arg(long, env = "SWITCHYARD_MEDIA_PORT")]
    media_port: Option<u16>,
    /// First relay port; worker i binds its relay socket on relay_port + i [default: 9443].
    #[arg(long, env = "SWITCHYARD_RELAY_PORT")]
    relay_port: Option<u16>,
    /// Worker threads; 0 is one per core but one [default: 0].
    #[arg(long, env = "SWITCHYARD_WORKERS")]
    workers: Option<u16>,
    /// I/O engine: auto, uring or mmsg [default: auto].
    #[arg(long, env = "SWITCHYARD_ENGINE")]
    engine: Option<EngineKind>,
    /// Pin workers to cores (true/false) [default: true].
    #[arg(long, env = "SWITCHYARD_PIN")]
    pin: Option<bool>,
    /// Directory of the shared-memory ring and stats files [default: /dev/shm].
    #[arg(long, env = "SWITCHYARD_SHM_DIR")]
    shm_dir: Option<PathBuf>,
    /// Redis URL shared by the cluster's control planes [default: none, in-memory, one node].
    #[arg(long, env = "SWITCHYARD_REDIS")]
    redis: Option<String>,
    /// This node's region (placement prefers the client's region; the cascade pulls from
    /// its own first) [default: none].
    #[arg(long, env = "SWITCHYARD_REGION")]
    region: Option<String>,
    /// Count the host's CPU, bandwidth and memory in the load verdict (true/false)
    /// [default: true].
    #[arg(long, env = "SWITCHYARD_HOST_LOAD")]
    host_load: Option<bool>,
    /// Serve the API on a non-loopback --http-listen with auth off (open to anyone there).
    #[arg(long, env = "SWITCHYARD_INSECURE")]
    insecure: bool,
    /// The global `--log-format`, kept here so `up` hands it to the planes it starts.
    #[arg(skip)]
    log_format: Option<LogFormat>,
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
        if let Some(v) = &self.region {
            c.cluster.region = Some(v.clone());
        }
        if let Some(v) = self.host_load {
            c.cluster.host_load = v;
        }
        if self.insecure {
            c.http.insecure = true;
        }
        // The HS256 key from the environment (a Kubernetes Secret, `docker run -e`), the
        // variable `token sign` reads too. No flag: `ps` would show it.
        if let Some(v) = std::env::var("SWITCHYARD_AUTH_KEY")
            .ok()
            .filter(|v| !v.is_empty())
        {
            c.auth.key = Some(v);
        }
        c.validate()?;
        Ok(c)
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e, &args),
    };
    init_logs(cli.log_format);
    if let Cmd::Version = &cli.cmd {
        println!("switchyard {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Cmd::Token(cmd) = &cli.cmd {
        return token::run(cmd, cli.config.as_ref());
    }
    if let Cmd::Admin(cmd) = &cli.cmd {
        return admin::run(cmd);
    }
    let (role, opts) = match cli.cmd {
        Cmd::Up(o) => (Role::Up, o),
        Cmd::Dataplane(o) => (Role::Dataplane, o),
        Cmd::Controlplane(o) => (Role::Controlplane, o),
        Cmd::Config(o) => (Role::Config, o),
        Cmd::Version | Cmd::Token(_) | Cmd::Admin(_) => return ExitCode::SUCCESS,
    };
    let opts = Opts {
        config: opts.config.or(cli.config),
        log_format: Some(cli.log_format),
        ..opts
    };
    let config = match opts.config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if matches!(role, Role::Up | Role::Controlplane) {
        // Before `up` starts anything: its control plane child would only exit.
        if let Err(e) = config.check_exposure() {
            eprintln!("switchyard: {e}");
            return ExitCode::from(2);
        }
    }
    if matches!(role, Role::Up | Role::Dataplane | Role::Controlplane) {
        raise_fd_limit();
    }
    let result = match role {
        Role::Up => up(&opts),
        Role::Dataplane => switchyard_dataplane::run(config),
        Role::Controlplane => switchyard_controlplane::run(config),
        Role::Config => toml::to_string_pretty(&config)
            .map(|t| print!("{t}"))
            .context("rendering config"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// clap's refusal of the command line (an unknown flag, a bad value, a missing argument)
/// as one line, exit status 2, like every other error; help and the version as clap prints
/// them.
fn usage_error(e: &clap::Error, args: &[std::ffi::OsString]) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    eprintln!(
        "switchyard: {} (see {} --help)",
        one_line_usage(&e.render().to_string()),
        command_path(args)
    );
    ExitCode::from(2)
}

/// `error: what\n  detail\n\nUsage: ...\n\nFor more information...` as `what detail`.
fn one_line_usage(text: &str) -> String {
    let mut lines = text.lines();
    let mut what: Vec<&str> = lines
        .next()
        .map(|l| l.trim_start_matches("error:").trim())
        .into_iter()
        .collect();
    // Indented lines right after the first name the arguments it is about.
    what.extend(lines.take_while(|l| l.starts_with(' ')).map(str::trim));
    what.join(" ")
}

/// The subcommands named on the command line, e.g. `switchyard session kick`.
fn command_path(args: &[std::ffi::OsString]) -> String {
    use clap::CommandFactory as _;
    let mut cmd = Cli::command();
    let mut path = vec![cmd.get_name().to_owned()];
    for a in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if let Some(sub) = cmd.find_subcommand(a).cloned() {
            path.push(sub.get_name().to_owned());
            cmd = sub;
        }
    }
    path.join(" ")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Up,
    Dataplane,
    Controlplane,
    Config,
}

/// An error that stops the node, printed once on one line (the chain joined with ": ").
/// Exit status 2 when running again cannot help — bad configuration, an address that is
/// taken, missing or not ours — so supervisors (`up`, systemd's `RestartPreventExitStatus`)
/// stop retrying; 1 otherwise.
fn fail(e: &anyhow::Error) -> ExitCode {
    let (permanent, hint) = classify(e);
    let line = format!("{e:#}").replace('\n', " ");
    match hint {
        Some(h) => eprintln!("switchyard: {line} ({h})"),
        None => eprintln!("switchyard: {line}"),
    }
    if permanent {
        // Also reaches `up`, which reads the exit status rather than the message.
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// Whether `e` is permanent (a configuration or bind error), and what to do about it.
fn classify(e: &anyhow::Error) -> (bool, Option<&'static str>) {
    for cause in e.chain() {
        if let Some(g) = cause.downcast_ref::<GaveUp>() {
            return (matches!(g, GaveUp::Permanent { .. }), None);
        }
        if let Some(c) = cause.downcast_ref::<ConfigError>() {
            let hint = match c {
                ConfigError::Read { .. } => Some("check the --config path"),
                ConfigError::Parse { .. } | ConfigError::Invalid(_) => {
                    Some("see deploy/switchyard.toml for every key and its default")
                }
                _ => None,
            };
            return (true, hint);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            let hint = match io.kind() {
                AddrInUse => Some("another process has this port: stop it, or pick other ports"),
                AddrNotAvailable => {
                    Some("that address is not on this host: check the bind address")
                }
                PermissionDenied => Some("not allowed: run as a user that may use it"),
                _ => continue,
            };
            return (true, hint);
        }
    }
    (false, None)
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
    /// When the running process was started.
    since: std::time::Instant,
    /// Exits in a row that came within [`EARLY`] of a start.
    early_exits: u32,
}

/// A child that exits sooner than this after its start failed to start, not crashed later.
const EARLY: Duration = Duration::from_secs(10);
/// Failed starts in a row after which `up` gives up (waiting 1, 2, 4, 8 s between them).
const MAX_EARLY_EXITS: u32 = 5;

/// What `up` does after a child exited.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Start it again after this long.
    Restart(Duration),
    /// Stop the node and exit with this status: the child's error is permanent (status 2),
    /// or it failed to start [`MAX_EARLY_EXITS`] times in a row.
    GiveUp(u8),
}

/// The restart policy, apart from the clock so it is testable: status 2 is permanent (a
/// configuration or bind error the child printed); exits soon after a start back off
/// exponentially and end in giving up; a child that ran a while is restarted after 1 s.
fn next_after_exit(code: Option<i32>, ran: Duration, early_exits: u32) -> (Next, u32) {
    if code == Some(2) {
        return (Next::GiveUp(2), early_exits);
    }
    if ran >= EARLY {
        return (Next::Restart(Duration::from_secs(1)), 0);
    }
    let n = early_exits + 1;
    if n >= MAX_EARLY_EXITS {
        return (Next::GiveUp(1), n);
    }
    (Next::Restart(Duration::from_secs(1 << (n - 1))), n)
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
    flag("region", opts.region.clone());
    flag("host-load", opts.host_load.map(|v| v.to_string()));
    flag("log-format", opts.log_format.map(|f| f.name().to_owned()));
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
            since: std::time::Instant::now(),
            early_exits: 0,
        },
        Child {
            role: "controlplane",
            proc: Some(spawn("controlplane", &opts)?),
            since: std::time::Instant::now(),
            early_exits: 0,
        },
    ];
    let mut outcome = Ok(());
    loop {
        let [dp, cp] = &mut children;
        let stop = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            status = wait(dp) => restart(dp, status, &opts).await,
            status = wait(cp) => {
                if status.as_ref().is_ok_and(std::process::ExitStatus::success) {
                    // Only a shutdown asked through the API ends it with 0: the node stops.
                    tracing::info!("the control plane shut down; stopping the node");
                    cp.proc = None;
                    break;
                }
                restart(cp, status, &opts).await
            }
        };
        if let Some(e) = stop {
            outcome = Err(e);
            break;
        }
    }
    // The control plane first: it drains (no new sessions, waits for the ones there are, up
    // to cluster.shutdown_grace_ms) while the data plane still carries their media.
    let grace = opts
        .config()
        .map(|c| Duration::from_millis(c.cluster.shutdown_grace_ms))
        .unwrap_or(Duration::from_secs(30));
    tracing::info!("stopping");
    let [dp, cp] = &mut children;
    stop_child(cp, grace + Duration::from_secs(5)).await;
    stop_child(dp, Duration::from_secs(5)).await;
    outcome
}

/// SIGTERM `c` and wait for it at most `within`, then SIGKILL.
async fn stop_child(c: &mut Child, within: Duration) {
    let Some(p) = &mut c.proc else { return };
    if let Some(pid) = p.id() {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(within, p.wait()).await.is_err() {
        tracing::warn!(
            role = c.role,
            "did not stop in {} s; killing",
            within.as_secs()
        );
        let _ = p.kill().await;
    }
}

async fn wait(c: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    match &mut c.proc {
        Some(p) => p.wait().await,
        None => std::future::pending().await,
    }
}

/// The child `c` exited: start it again as [`next_after_exit`] says, or return why `up` gives
/// up (the error `main` prints and turns into the exit status).
async fn restart(
    c: &mut Child,
    status: std::io::Result<std::process::ExitStatus>,
    opts: &Opts,
) -> Option<anyhow::Error> {
    c.proc = None;
    let code = status
        .as_ref()
        .ok()
        .and_then(std::process::ExitStatus::code);
    let (next, early) = next_after_exit(code, c.since.elapsed(), c.early_exits);
    c.early_exits = early;
    let shown = match &status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    let wait = match next {
        Next::GiveUp(2) => {
            return Some(anyhow::Error::new(GaveUp::Permanent {
                role: c.role,
                status: shown,
            }))
        }
        Next::GiveUp(_) => {
            return Some(anyhow::Error::new(GaveUp::Repeated {
                role: c.role,
                times: early,
                status: shown,
            }))
        }
        Next::Restart(d) => d,
    };
    tracing::error!(role = c.role, status = %shown, "exited; restarting in {} s", wait.as_secs());
    loop {
        tokio::time::sleep(wait).await;
        match spawn(c.role, opts) {
            Ok(p) => {
                c.proc = Some(p);
                c.since = std::time::Instant::now();
                return None;
            }
            Err(e) => tracing::error!(role = c.role, error = %e, "restart failed; trying again"),
        }
    }
}

/// Why `up` stopped the node.
#[derive(Debug, thiserror::Error)]
enum GaveUp {
    /// The child's own error (printed above by the child) is one a restart cannot fix.
    #[error("the {role} exited with {status}: a configuration or bind error, not restarted")]
    Permanent { role: &'static str, status: String },
    #[error("the {role} failed {times} times within 10 s of starting (last: {status}); giving up")]
    Repeated {
        role: &'static str,
        times: u32,
        status: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let one = |args: &[&str]| {
            let e = Cli::try_parse_from(args).expect_err("refused");
            let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            format!(
                "{} (see {} --help)",
                one_line_usage(&e.render().to_string()),
                command_path(&args)
            )
        };
        let line = one(&["switchyard", "session", "kick", "seven"]);
        assert!(
            line.starts_with("invalid value 'seven' for '<ID>'")
                && line.ends_with("(see switchyard session kick --help)"),
            "{line}"
        );
        let line = one(&["switchyard", "drain"]);
        assert!(
            line.starts_with("the following required arguments were not provided: <NODE>"),
            "{line}"
        );
        let line = one(&["switchyard", "up", "--nonsense"]);
        assert!(
            line.contains("unexpected argument '--nonsense'") && !line.contains('\n'),
            "{line}"
        );
    }

    #[test]
    fn up_gives_up_on_permanent_errors_and_repeated_early_exits() {
        let s = Duration::from_secs;
        assert_eq!(next_after_exit(Some(2), s(0), 0).0, Next::GiveUp(2));
        assert_eq!(next_after_exit(Some(2), s(3600), 0).0, Next::GiveUp(2));
        // A crash after a while: restart at once, forget earlier failed starts.
        assert_eq!(next_after_exit(Some(1), s(60), 3), (Next::Restart(s(1)), 0));
        assert_eq!(next_after_exit(None, s(60), 0), (Next::Restart(s(1)), 0));
        // Failed starts back off 1, 2, 4, 8 s, then give up.
        let mut early = 0;
        let mut waits = Vec::new();
        loop {
            let (next, n) = next_after_exit(Some(1), s(1), early);
            early = n;
            match next {
                Next::Restart(d) => waits.push(d.as_secs()),
                Next::GiveUp(code) => {
                    assert_eq!(code, 1);
                    break;
                }
            }
        }
        assert_eq!(waits, [1, 2, 4, 8]);
        assert_eq!(early, MAX_EARLY_EXITS);
    }
}
