//! The Switchyard control plane: the node's REST API (sessions, health, metrics) in front of
//! the data plane, which it drives over the shared-memory command ring.
//!
//! Three layers, imports only going down (docs/architecture.md, "Control plane layers"):
//!
//! - `http`: routes, extractors, the one error type with status codes, OpenAPI, Prometheus
//!   rendering, auth, per-client limits, the server.
//! - `services`: sessions, WHIP/WHEP, relays, forwards, the cluster, tokens: typed calls,
//!   typed errors, no axum.
//! - `core`: the sans-IO session table, the ring link, the cluster store, counters.
//!
//! [`sdp`] (offer → answer, pure) sits below all three; `start` builds everything from the
//! config, in one place.
//!
//! The control plane holds no media state: it can be killed and restarted at any time while
//! media flows, and rebuilds its view from the data plane's snapshot.

mod banner;
mod core;
mod http;
pub mod sdp;
mod services;
mod start;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use switchyard_shared::config::Config;
use tokio::net::TcpListener;

pub use http::{tls, MAX_BODY};

/// Bearer tokens: claims and signing (`switchyard token`), and the verifier `[auth]` builds.
pub mod auth {
    pub use crate::http::auth::{Auth, AuthError};
    pub use crate::services::token::{
        decode_key, generate_key, now_s, sign_es256, sign_hs256, Action, Claims,
    };
}

/// The cluster store and its records, for tools and tests that open a store themselves.
pub mod cluster {
    pub use crate::core::store::placement;
    pub use crate::core::store::redis;
    pub use crate::core::store::sim;
    pub use crate::core::store::{
        consumers_for, AnyStore, Death, Incarnation, MemoryStore, Node, Placement, PoolFilter,
        Registration, Removal, Replacement, Room, RoomSpec, Store, StoreError, Strategy,
    };
}

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
    start::serve(config, listener, None, shutdown).await
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
    start::serve(config, listener, Some(acceptor), shutdown).await
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
