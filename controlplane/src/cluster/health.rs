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

use super::store::Store as _;
use super::{Cluster, Registration};

/// Longest a health check waits for its answer; shorter when the interval is.
const MAX_PROBE: Duration = Duration::from_secs(2);

/// Run until the task is aborted.
pub(crate) async fn run(cluster: Arc<Cluster>, me: Registration) {
    let interval = Duration::from_millis(cluster.config.health_interval_ms);
    let probe_timeout = (interval / 2).min(MAX_PROBE);
    let mut registered = false;
    loop {
        if !registered {
            match cluster.store.register_node(me.clone()).await {
                Ok(n) => {
                    registered = true;
                    tracing::info!(node = %n.node_id, url = %n.url, capacity = n.capacity, "registered with the cluster");
                }
                Err(e) => tracing::warn!(error = %e, "cannot register this node; retrying"),
            }
        }
        tokio::time::sleep(interval).await;
        let nodes = match cluster.store.list_nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "health check: cannot list nodes");
                continue;
            }
        };
        registered = nodes.iter().any(|n| n.node_id == me.node_id);
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

/// Whether `GET {base}/health` answers 200 within `timeout`. `http://` or `https://`; the
/// latter accepts any server certificate (a liveness check, see `tls::probe_client_config`).
pub(crate) async fn probe(base: &str, timeout: Duration) -> bool {
    let Some((tls, authority)) = authority(base) else {
        return false;
    };
    let check = async {
        let tcp = TcpStream::connect(authority.as_str()).await?;
        if !tls {
            return status_of(tcp, &authority).await;
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
        status_of(stream, &authority).await
    };
    matches!(
        tokio::time::timeout(timeout, check).await,
        Ok(Ok(Some(200)))
    )
}

/// Send `GET /health` on `s` and read the status line's code.
async fn status_of<S>(mut s: S, authority: &str) -> std::io::Result<Option<u16>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!(
        "GET /health HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: switchyard-health\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
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
fn authority(url: &str) -> Option<(bool, String)> {
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
