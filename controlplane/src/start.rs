//! Building the control plane from its config, in one place (the shape of moq-relay's
//! `main`): the core (the ring link), each service from its config section, the HTTP
//! router handed only what it serves, the background tasks, and the server. Nothing else
//! spawns a task or a thread.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use switchyard_shared::config::Config;
use tokio::net::TcpListener;

use crate::core::counters::Counters;
use crate::core::link::{self, Link};
use crate::core::store::{AnyStore, MemoryStore, RedisStore, Registration, Store as _};
use crate::http::{self, server};
use crate::services::cluster::load::Latest;
use crate::services::cluster::{events, health, hooks, Cluster, ShutdownRequest};
use crate::services::forward::{self, Forwards};
use crate::services::relay::{self, Relays};
use crate::services::sessions::Sessions;
use crate::services::webrtc::Webrtc;

/// Serve the API on `listener` (over TLS with `tls`) until `shutdown` completes. The ring
/// link runs on its own thread and stops with it.
pub(crate) async fn serve(
    config: Config,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let addr = listener.local_addr().context("listener address")?;
    let auth = http::auth::Auth::from_config(&config.auth)
        .context("[auth]")?
        .map(Arc::new);
    if auth.is_none() {
        tracing::warn!("auth is off ([auth] has no key): every endpoint is open");
    }

    // Core.
    let counters = Arc::new(Counters::default());
    let (link, changes) = Link::new(&config);
    let link = Arc::new(link);
    let (notifier, queue) = hooks::Notifier::new();
    let cluster = Arc::new(cluster_of(&config, notifier)?);
    let load = Arc::new(Latest::default());

    // Services.
    let sessions = Arc::new(Sessions::new(
        link.clone(),
        counters.clone(),
        config.media.clone(),
    ));
    let relays = Arc::new(Relays::new(
        &config,
        sessions.clone(),
        cluster.clone(),
        load.clone(),
    ));
    let forwards = Arc::new(Forwards::new(
        &config,
        sessions.clone(),
        relays.clone(),
        cluster.clone(),
    ));
    let webrtc = Arc::new(Webrtc::new(
        sessions.clone(),
        cluster.clone(),
        relays.clone(),
        config.node.id.clone(),
    ));

    // Tasks.
    let stop = Arc::new(AtomicBool::new(false));
    let delivery = tokio::spawn(hooks::deliver(queue));
    let room_events = tokio::spawn(events::run(
        cluster.clone(),
        link.clone(),
        changes,
        config.node.id.clone(),
    ));
    let ring = link::spawn(link.clone(), stop.clone()).context("spawning the ring link")?;
    let me = self_registration(&config, scheme, addr);
    let health = tokio::spawn(health::run(cluster.clone(), me, link.clone(), load.clone()));
    let relay_task = tokio::spawn(relay::upkeep::run(relays.clone()));
    let forward_task = tokio::spawn(forward::driver::run(forwards.clone()));
    let traffic_task = tokio::spawn(crate::core::link::sample_traffic(link.clone()));

    // HTTP.
    let fds = server::fd_limit();
    let limits = server::Limits {
        max_connections: server::connection_cap(config.http.max_connections, fds),
        header_read_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
    };
    if limits.max_connections < config.http.max_connections as usize {
        tracing::warn!(
            configured = config.http.max_connections,
            open_file_limit = ?fds,
            max_connections = limits.max_connections,
            "http.max_connections lowered to fit the open file limit (raise LimitNOFILE)"
        );
    }
    tracing::info!(%scheme, http = %addr, node = %config.node.id, "control plane listening");
    let (announced, source) = config.media.announced();
    let announced: Vec<String> = announced.iter().map(ToString::to_string).collect();
    tracing::info!(
        addresses = %announced.join(", "),
        from = %source,
        port = config.media.port,
        "media announced to peers (ICE host candidates)"
    );
    print!("{}", crate::banner::render(&config, scheme, addr));
    if crate::banner::exposed(&config, addr) {
        tracing::warn!(
            http = %addr,
            "the API is public and auth is off (--insecure): anyone who reaches it can publish, \
             watch and create forwards; configure [auth]"
        );
    }
    if announced.iter().all(|a| a == "127.0.0.1" || a == "::1") {
        tracing::warn!(
            "media is announced on loopback only: peers on other hosts cannot reach this node \
             (set media.announce)"
        );
    }
    let drain_parts = Drain {
        sessions: sessions.clone(),
        cluster: cluster.clone(),
        grace: Duration::from_millis(config.cluster.shutdown_grace_ms),
    };
    let shutdown_requested = cluster.shutdown.clone();
    let (drain_cluster, drain_me) = (cluster.clone(), config.node.id.clone());
    let app = http::router(http::Parts {
        node: Arc::new(http::node::Status {
            node_id: config.node.id.clone(),
            link: link.clone(),
            counters: counters.clone(),
            load,
            forwards: forwards.clone(),
            max_stream_series: config.metrics.max_stream_series as usize,
            https_sha256: match config.http.tls() {
                Some((cert, _)) => Some(http::tls::certificate_sha256(cert)?),
                None => None,
            },
        }),
        sessions,
        webrtc,
        cluster,
        relays,
        forwards,
        counters: counters.clone(),
        auth,
        limits: config.limits.clone(),
        request_timeout: Duration::from_millis(config.http.request_timeout_ms),
    });
    // The server stops once the node has drained: until then it answers DELETEs of the
    // sessions that are ending and refuses new ones with 503.
    let drained = drain_on(shutdown, shutdown_requested, drain_parts);
    server::serve(listener, tls, app, limits, counters, drained).await;

    health.abort();
    traffic_task.abort();
    // Let the other control planes move this node's rooms now rather than three intervals
    // from now: the lease lapses at once, and the next liveness round removes the node.
    if let Err(e) = drain_cluster
        .store
        .renew_lease(&drain_me, 1, crate::core::clock::now_ms())
        .await
    {
        tracing::debug!(error = %e, "could not end this node's lease");
    }
    relay_task.abort();
    forward_task.abort();
    room_events.abort();
    delivery.abort();
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || ring.join()).await;
    tracing::info!("control plane stopped");
    Ok(())
}

/// The cluster store `[cluster] redis` asks for (in memory without it).
fn cluster_of(config: &Config, events: hooks::Notifier) -> anyhow::Result<Cluster> {
    let store = match &config.cluster.redis {
        Some(url) => {
            tracing::info!(redis = %redact(url), "cluster state in redis");
            let ca = match &config.cluster.redis_ca {
                Some(p) => Some(
                    std::fs::read(p)
                        .with_context(|| format!("cluster.redis_ca: reading {}", p.display()))?,
                ),
                None => None,
            };
            AnyStore::Redis(Box::new(
                RedisStore::connect_to(url, ca).context("cluster.redis")?,
            ))
        }
        None => AnyStore::Memory(MemoryStore::new()),
    };
    Ok(Cluster {
        store,
        config: config.cluster.clone(),
        events,
        shutdown: ShutdownRequest::new(&config.node.id),
        removed: Default::default(),
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
fn self_registration(config: &Config, scheme: &str, http: SocketAddr) -> Registration {
    let ip = if http.ip().is_unspecified() {
        config.media.announce_ip()
    } else {
        http.ip()
    };
    let workers = config.media.worker_count();
    Registration {
        node_id: config.node.id.clone(),
        url: format!("{scheme}://{}", SocketAddr::new(ip, http.port())),
        media_address: config.media.announce_ip().to_string(),
        workers,
        capacity: u64::from(workers) * u64::from(config.cluster.consumers_per_worker),
        labels: Default::default(),
        region: config.cluster.region.clone(),
    }
}

/// What a graceful shutdown needs.
struct Drain {
    sessions: Arc<Sessions>,
    cluster: Arc<Cluster>,
    grace: Duration,
}

/// Completes when the node may stop serving: after `signal` (SIGTERM) or a shutdown request
/// through the API, no new sessions are taken and the store marks the node draining (no new
/// rooms); then it waits for this node's WHIP/WHEP sessions to end, at most `grace`. The HTTP server
/// keeps answering meanwhile, so clients can still end their sessions (and new ones get a
/// 503 with `Retry-After`).
async fn drain_on(
    signal: impl Future<Output = ()> + Send + 'static,
    request: ShutdownRequest,
    d: Drain,
) {
    tokio::select! {
        () = signal => {}
        () = request.requested() => {}
    }
    d.sessions.shut_down();
    let me = &d.cluster.shutdown.node_id;
    if let Err(e) = d.cluster.drain(me, true).await {
        tracing::warn!(error = %e, "could not mark this node draining in the cluster store");
    }
    let open = d.sessions.peers();
    tracing::info!(
        sessions = open,
        grace_s = d.grace.as_secs_f64(),
        "shutting down: no new sessions; waiting for these to end"
    );
    let deadline = tokio::time::Instant::now() + d.grace;
    loop {
        let open = d.sessions.peers();
        if open == 0 {
            tracing::info!("every session ended");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                sessions = open,
                "shutdown grace over; stopping with sessions open"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
