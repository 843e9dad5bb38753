//! The HTTP server: hyper's HTTP/1.1 on every accepted connection, plain or TLS, with the
//! bounds an endpoint anyone can reach needs (slow-loris, issue 9 item 7).
//!
//! - At most `[http] max_connections` connections are held at once, TLS handshakes
//!   included; one over that is closed as soon as it is accepted (and counted). Idle
//!   connections can then neither take every file descriptor (after which `accept` fails
//!   for everyone, `/health` included) nor pile up unanswered. The cap is lowered to fit the
//!   process's open file limit ([`connection_cap`]).
//! - A request head must arrive within `header_read_timeout_ms`. hyper starts that deadline
//!   whenever it waits for a head, so it also closes a keep-alive connection that sends no
//!   next request. A TLS handshake gets [`super::tls::HANDSHAKE_TIMEOUT`]; the rest of a
//!   request (body, handler) the router's `request_timeout_ms` (`super::deadline`).
//! - Each connection's read buffer stays under [`MAX_BUF`], so held connections cost at most
//!   `max_connections` × that.
//! - Every request carries its peer as `ConnectInfo<SocketAddr>` (per-address quotas, relay
//!   key checks).
//!
//! On shutdown it stops accepting, asks every connection to finish the request in flight,
//! and waits up to [`DRAIN`] for them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::core::counters::Counters;

/// Longest a shutdown waits for connections to finish the request in flight.
pub const DRAIN: Duration = Duration::from_secs(5);
/// Read buffer per connection, the largest request head included: a bearer token and the
/// usual headers take a few KiB, and bodies stream through it.
pub const MAX_BUF: usize = 32 * 1024;
/// File descriptors kept for everything but API connections: the ring and stats files, the
/// cluster store, hook deliveries, relay and health calls, logs.
const RESERVED_FDS: u64 = 256;

/// What bounds the server (from `[http]`, the cap already fitted to the fd limit).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// `configured` connections, lowered to leave [`RESERVED_FDS`] of `fd_limit` (the soft
/// limit on open files) free; at least 16.
pub fn connection_cap(configured: u32, fd_limit: Option<u64>) -> usize {
    let configured = configured as usize;
    match fd_limit {
        Some(limit) => {
            let room = limit.saturating_sub(RESERVED_FDS).max(16);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

/// The soft limit on open files of this process (`/proc/self/limits`), when it has one.
pub fn fd_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Counts a connection as open while it lives.
struct Open(Arc<Counters>);

impl Open {
    fn new(counters: Arc<Counters>) -> Self {
        counters.connections_open.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve `app` on `listener` (over TLS when `tls` is set) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopped) = watch::channel(());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF);
    let builder = Arc::new(builder);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: back off rather than spin (as axum::serve does).
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection over http.max_connections closed");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tls, app, builder, stopped) =
            (tls.clone(), app.clone(), builder.clone(), stopped.clone());
        let open = Open::new(counters.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _open = open;
            match tls {
                None => connection(tcp, peer, &builder, app, stopped).await,
                Some(tls) => {
                    match tokio::time::timeout(super::tls::HANDSHAKE_TIMEOUT, tls.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => connection(stream, peer, &builder, app, stopped).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    let _ = stop.send(());
    drop(stop);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}; stopping anyway");
    }
}

/// One connection's requests, until it closes, times out, or the server stops.
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    builder: &http1::Builder,
    app: Router,
    mut stopped: watch::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stopped.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        // Timeouts, resets and malformed requests: the client's business.
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_fd_limit() {
        assert_eq!(connection_cap(4096, None), 4096);
        assert_eq!(connection_cap(4096, Some(1_048_576)), 4096);
        assert_eq!(
            connection_cap(4096, Some(1024)),
            1024 - RESERVED_FDS as usize
        );
        assert_eq!(connection_cap(4096, Some(100)), 16, "at least a few");
        assert_eq!(connection_cap(10, Some(1024)), 10);
        assert!(
            fd_limit().is_some_and(|n| n > 0),
            "Linux has /proc/self/limits"
        );
    }
}
