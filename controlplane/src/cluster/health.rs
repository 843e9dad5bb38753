//! The health task: registers this node with the cluster store (again whenever its entry
//! is missing) and checks `GET {url}/health` of every registered node every
//! `health_interval`, marking each healthy or unhealthy. Started by `serve`, stopped with it.
//!
//! Every control plane of a cluster runs it, so a node is checked by all of them; a store
//! write happens only when the answer differs from what the store holds.

use std::sync::Arc;
use std::time::Duration;

use switchyard_httpclient::{Client, Config, Request, Tls};

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
/// latter accepts any server certificate (a liveness check, see `switchyard_httpclient::accept_any_server`).
pub(crate) async fn probe(base: &str, timeout: Duration) -> bool {
    http_status(base, "GET", "/health", None, timeout).await == Some(200)
}

/// Send one request (`body` as JSON) to the server of `base` and read the status code of the
/// answer; None on any failure or after `timeout`. Over TLS any certificate is accepted.
/// Redirects are not followed, and the answer body is read only up to a few KiB.
pub(crate) async fn http_status(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Option<u16> {
    let client = Client::new(Config {
        timeout,
        max_body: 16 * 1024,
        tls: Some(Tls::accept_any()),
        ..Config::default()
    });
    let mut req = Request::new(
        method.parse().ok()?,
        format!("{}{path}", base.trim_end_matches('/')),
    );
    if let Some(b) = body {
        req = req.json(b.to_vec());
    }
    match client.send(req).await {
        Ok(answer) => Some(answer.status),
        // An answer too long to read still said its status; anything else did not answer.
        Err(_) => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
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
    }
}
