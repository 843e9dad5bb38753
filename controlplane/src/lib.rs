//! The Switchyard control plane: the node's REST API (sessions, health, metrics) in front of
//! the data plane, which it drives over the shared-memory command ring.
//!
//! - [`state`]: the sans-IO view of the node (sessions, pending commands, data plane boot).
//! - `link`: the thread that attaches to the ring and feeds events into the state.
//! - `api`: the axum routes; [`auth`]: JWT bearer tokens; `metrics`: Prometheus text from the shared stats file.
//! - [`cluster`]: node registry, room placement and the cluster store (memory or Redis).
//! - [`relay`]: relays between nodes and the WHEP cascade.
//! - [`forward`]: forwards of published streams to plain-RTP destinations (recorders).
//!
//! The control plane holds no media state: it can be killed and restarted at any time while
//! media flows, and rebuilds its view from the data plane's snapshot.

mod api;
pub mod auth;
pub mod cluster;
pub mod forward;
mod kept;
mod link;
mod metrics;
mod openapi;
mod quota;
pub mod relay;
pub mod sdp;
mod server;
pub mod state;
pub mod tls;
mod whip;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use switchyard_shared::config::Config;
use tokio::net::TcpListener;

pub use api::MAX_BODY;

/// Run the control plane until SIGINT or SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("swy-control")
        .build()
        .context("starting the tokio runtime")?;
    // Bad certificate or key files stop the start, before anything binds.
    let tls = match config.http.tls() {
        Some((cert, key)) => Some(tls::server_config(cert, key)?),
        None => None,
    };
    rt.block_on(async move {
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("binding the HTTP listener {}", config.http.listen))?;
        match tls {
            Some(tls) => serve_tls(config, listener, tls, shutdown_signal()).await,
            None => serve(config, listener, shutdown_signal()).await,
        }
    })
}

/// Serve the API over plain HTTP on `listener` until `shutdown` completes. The ring link
/// runs on its own thread and stops with it.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_on(config, listener, None, shutdown).await
}

/// [`serve`] over HTTPS only: every connection on `listener` must complete a TLS handshake
/// with `tls` (see [`tls::server_config`]).
pub async fn serve_tls(
    config: Config,
    listener: TcpListener,
    tls: Arc<tls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_on(config, listener, Some(acceptor), shutdown).await
}

async fn serve_on(
    config: Config,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let addr = listener.local_addr().context("listener address")?;
    let auth = auth::Auth::from_config(&config.auth)
        .context("[auth]")?
        .map(Arc::new);
    if auth.is_none() {
        tracing::warn!("auth is off ([auth] has no key): every endpoint is open");
    }
    let shared = Arc::new(link::Shared::new(config));
    {
        // WHEP answers on this node need the tracks of the publishers relayed to it.
        let mut g = shared.lock();
        for r in shared.relays.lock().ins() {
            if let Some(n) = &r.publisher_media {
                g.node
                    .set_publisher_media(&r.stream, r.session, Arc::new(n.clone()));
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (notifier, queue) = cluster::events::Notifier::new();
    let cluster = Arc::new(cluster_of(&shared.config, notifier)?);
    let delivery = tokio::spawn(cluster::events::deliver(queue));
    let room_events = tokio::spawn(cluster::events::run(cluster.clone(), shared.clone()));
    let link = link::spawn(shared.clone(), stop.clone()).context("spawning the ring link")?;
    let me = self_registration(&shared.config, scheme, addr);
    let health = tokio::spawn(cluster::health::run(cluster.clone(), me, shared.clone()));
    let relays = tokio::spawn(relay::run(shared.clone(), cluster.clone()));
    let forwards = tokio::spawn(forward::run(shared.clone(), cluster.clone()));
    let http = &shared.config.http;
    let fds = server::fd_limit();
    let limits = server::Limits {
        max_connections: server::connection_cap(http.max_connections, fds),
        header_read_timeout: std::time::Duration::from_millis(http.header_read_timeout_ms),
    };
    if limits.max_connections < http.max_connections as usize {
        tracing::warn!(
            configured = http.max_connections,
            open_file_limit = ?fds,
            max_connections = limits.max_connections,
            "http.max_connections lowered to fit the open file limit (raise LimitNOFILE)"
        );
    }
    tracing::info!(%scheme, http = %addr, node = %shared.config.node.id, "control plane listening");
    let app = api::router(shared.clone(), cluster, auth);
    server::serve(listener, tls, app, limits, shared.clone(), shutdown).await;
    health.abort();
    relays.abort();
    forwards.abort();
    room_events.abort();
    delivery.abort();
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || link.join()).await;
    tracing::info!("control plane stopped");
    Ok(())
}

/// The cluster store `[cluster] redis` asks for (in memory without it).
fn cluster_of(
    config: &Config,
    events: cluster::events::Notifier,
) -> anyhow::Result<cluster::Cluster> {
    let store = match &config.cluster.redis {
        Some(url) => {
            tracing::info!(redis = %redact(url), "cluster state in redis");
            cluster::AnyStore::Redis(Box::new(
                cluster::redis::RedisStore::new(url).context("cluster.redis")?,
            ))
        }
        None => cluster::AnyStore::Memory(cluster::MemoryStore::new()),
    };
    Ok(cluster::Cluster {
        store,
        config: config.cluster.clone(),
        events,
    })
}

/// A Redis URL with its password hidden, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

/// How this node registers itself: its HTTP address (the announced media address when it
/// listens on every interface), its media address and its workers.
fn self_registration(
    config: &Config,
    scheme: &str,
    http: std::net::SocketAddr,
) -> cluster::Registration {
    let ip = if http.ip().is_unspecified() {
        config.media.announce_ip()
    } else {
        http.ip()
    };
    let workers = config.media.worker_count();
    cluster::Registration {
        node_id: config.node.id.clone(),
        url: format!("{scheme}://{}", std::net::SocketAddr::new(ip, http.port())),
        media_address: config.media.announce_ip().to_string(),
        workers,
        capacity: u64::from(workers) * u64::from(config.cluster.consumers_per_worker),
        labels: Default::default(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = tokio::signal::ctrl_c();
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = int.await;
        }
    }
}
