//! The health task: registers this node with the cluster store (again whenever its entry
//! is missing) and checks `GET {url}/health` of every registered node every
//! `health_interval`, marking each healthy or unhealthy. Started by `serve`, stopped with it.
//!
//! Every control plane of a cluster runs it, so a node is checked by all of them; a store
//! write happens only when the answer differs from what the store holds.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

use super::load::{self, Meter, Reading};
use super::store::Store as _;
use super::{Cluster, Registration};
use crate::link::Shared;
use switchyard_shared::stats::Counter;

/// Longest a health check waits for its answer; shorter when the interval is.
const MAX_PROBE: Duration = Duration::from_secs(2);
/// The load heartbeat is written when the verdict changes, and at least this often.
const HEARTBEAT_REFRESH: Duration = Duration::from_secs(30);

/// Run until the task is aborted.
pub(crate) async fn run(cluster: Arc<Cluster>, me: Registration, shared: Arc<Shared>) {
    let interval = Duration::from_millis(cluster.config.health_interval_ms);
    let probe_timeout = (interval / 2).min(MAX_PROBE);
    let mut registered = false;
    let mut meter = Meter::new(
        cluster.config.consumers_per_worker,
        cluster.config.max_pps_per_worker,
        cluster.config.overload_ratio,
    );
    // What the store last heard from this node's own heartbeat, and when.
    let mut reported: Option<(bool, std::time::Instant)> = None;
    loop {
        if !registered {
            match cluster.store.register_node(me.clone()).await {
                Ok(n) => {
                    registered = true;
                    // Registration clears `overloaded`: report again.
                    reported = None;
                    tracing::info!(node = %n.node_id, url = %n.url, capacity = n.capacity, "registered with the cluster");
                }
                Err(e) => tracing::warn!(error = %e, "cannot register this node; retrying"),
            }
        }
        tokio::time::sleep(interval).await;
        if let Some(report) = measure(&shared, &mut meter) {
            let now = std::time::Instant::now();
            let due = reported.is_none_or(|(o, at)| {
                o != report.overloaded || now.duration_since(at) >= HEARTBEAT_REFRESH
            });
            if registered && due {
                if report.overloaded != reported.is_some_and(|(o, _)| o) {
                    tracing::warn!(overloaded = report.overloaded, reason = ?report.reason, load = ?report.load, "node load changed");
                }
                match cluster
                    .store
                    .heartbeat(&me.node_id, report.overloaded)
                    .await
                {
                    Ok(()) => reported = Some((report.overloaded, now)),
                    Err(e) => tracing::warn!(error = %e, "cannot record this node's load"),
                }
            }
            *shared.load.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
        }
        let nodes = match cluster.store.list_nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "health check: cannot list nodes");
                continue;
            }
        };
        registered = nodes.iter().any(|n| n.node_id == me.node_id);
        crate::metrics::cluster().set_nodes(&nodes);
        let mut checks = tokio::task::JoinSet::new();
        for n in nodes {
            checks.spawn(async move {
                let ok = probe(&n.url, probe_timeout).await;
                (n, ok)
            });
        }
        while let Some(done) = checks.join_next().await {
            let Ok((n, ok)) = done else { continue };
            if n.healthy != ok {
                tracing::warn!(node = %n.node_id, url = %n.url, healthy = ok, "node health changed");
                if let Err(e) = cluster.store.set_health(&n.node_id, ok).await {
                    tracing::warn!(node = %n.node_id, error = %e, "cannot record health");
                }
            }
        }
    }
}

/// This node's load now, from the data plane's stats file and `/proc`; None while no data
/// plane has said hello.
fn measure(shared: &Shared, meter: &mut Meter) -> Option<load::LoadReport> {
    let (reading, pid) = {
        let g = shared.lock();
        let d = g.node.dataplane()?;
        let tx_packets = g.stats.as_ref().map_or_else(Vec::new, |s| {
            (0..s.workers())
                .filter_map(|w| s.worker(w))
                .map(|b| b.get(Counter::TxPackets))
                .collect()
        });
        let reading = Reading {
            sessions: g.node.session_count() as u64,
            workers: d.workers,
            tx_packets,
            cpu_ticks: None,
        };
        (reading, d.pid)
    };
    let reading = Reading {
        cpu_ticks: load::cpu_ticks(pid),
        ..reading
    };
    Some(meter.measure(std::time::Instant::now(), reading))
}

/// Whether `GET {base}/health` answers 200 within `timeout`. `http://` or `https://`; the
/// latter accepts any server certificate (a liveness check, see `tls::probe_client_config`).
pub(crate) async fn probe(base: &str, timeout: Duration) -> bool {
    http_status(base, "GET", "/health", None, timeout).await == Some(200)
}

/// Send one request (`body` as JSON) to the server of `base` and read the status code of the
/// answer; None on any failure or after `timeout`. Over TLS any certificate is accepted.
pub(crate) async fn http_status(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Option<u16> {
    let (tls, authority) = authority(base)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: switchyard\r\n"
    )
    .into_bytes();
    match body {
        Some(b) => {
            req.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )
                .as_bytes(),
            );
            req.extend_from_slice(b);
        }
        None => req.extend_from_slice(b"\r\n"),
    }
    let check = async {
        let tcp = TcpStream::connect(authority.as_str()).await?;
        if !tls {
            return status_of(tcp, &req).await;
        }
        static CLIENT: std::sync::OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> =
            std::sync::OnceLock::new();
        let config = CLIENT.get_or_init(crate::tls::probe_client_config).clone();
        let host = match authority.rfind(':') {
            Some(colon) => &authority[..colon],
            None => authority.as_str(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        status_of(stream, &req).await
    };
    tokio::time::timeout(timeout, check).await.ok()?.ok()?
}

/// Send `req` on `s` and read the status line's code.
async fn status_of<S>(mut s: S, req: &[u8]) -> std::io::Result<Option<u16>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req).await?;
    // The status line is all we need; 64 bytes hold it.
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < head.len() {
        let got = s.read(&mut head[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
        if head[..n].contains(&b'\n') {
            break;
        }
    }
    Ok(status(&head[..n]))
}

/// Whether a URL is `https://`, and its `host:port` (port 80 or 443 when absent).
pub(crate) fn authority(url: &str) -> Option<(bool, String)> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://")?),
    };
    let hostport = rest.split('/').next().filter(|h| !h.is_empty())?;
    let has_port = match hostport.rfind(']') {
        Some(end) => hostport[end..].contains(':'),
        None => hostport.contains(':'),
    };
    let port = if tls { 443 } else { 80 };
    Some((
        tls,
        if has_port {
            hostport.to_owned()
        } else {
            format!("{hostport}:{port}")
        },
    ))
}

/// The status code of an HTTP/1.x status line.
fn status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_ascii_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_status_lines() {
        let a = authority;
        assert_eq!(
            a("http://10.0.0.2:8080"),
            Some((false, "10.0.0.2:8080".into()))
        );
        assert_eq!(a("http://node/x"), Some((false, "node:80".into())));
        assert_eq!(a("http://[::1]:9"), Some((false, "[::1]:9".into())));
        assert_eq!(a("http://[::1]"), Some((false, "[::1]:80".into())));
        assert_eq!(a("https://node"), Some((true, "node:443".into())));
        assert_eq!(a("https://[::1]:8443"), Some((true, "[::1]:8443".into())));
        assert_eq!(a("ftp://node"), None);
        assert_eq!(a("http://"), None);
        assert_eq!(status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status(b"HTTP/1.1 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status(b""), None);
    }
}
