//! The health task: registers this node with the cluster store (again whenever its entry
//! is missing) and checks `GET {url}/health` of every registered node every
//! `health_interval`, marking each healthy or unhealthy. Started with the control plane,
//! stopped with it.
//!
//! Every control plane of a cluster runs it, so a node is checked by all of them; a store
//! write happens only when the answer differs from what the store holds.
//!
//! Liveness ([`super::liveness`]): each round renews this node's lease first, so a node
//! whose loop runs is never taken for dead by lapse; a node that answers no check
//! [`SILENT_CHECKS`] rounds in a row, or whose lease lapsed, is removed. A node that finds
//! itself removed (its renewal answers "no such node") registers again at once.

use std::sync::Arc;
use std::time::Duration;

use switchyard_shared::stats::Counter;

use super::liveness::{Misses, LEASE_INTERVALS, SILENT_CHECKS};
use super::load::{self, Latest, Meter, Reading};
use super::probe::{probe, Health};
use super::service::Cluster;
use crate::core::clock::now_ms;
use crate::core::counters;
use crate::core::link::Link;
use crate::core::store::{Death, Registration, Store as _, StoreError};

/// Longest a health check waits for its answer; shorter when the interval is.
const MAX_PROBE: Duration = Duration::from_secs(2);
/// The load heartbeat is written when the verdict changes, and at least this often.
const HEARTBEAT_REFRESH: Duration = Duration::from_secs(30);

/// Run until the task is aborted.
pub async fn run(cluster: Arc<Cluster>, me: Registration, link: Arc<Link>, latest: Arc<Latest>) {
    let interval = Duration::from_millis(cluster.config.health_interval_ms);
    let probe_timeout = (interval / 2).min(MAX_PROBE);
    let lease_ms = cluster
        .config
        .health_interval_ms
        .saturating_mul(LEASE_INTERVALS);
    let mut misses = Misses::new(SILENT_CHECKS);
    let mut registered = false;
    // Rounds start at a fixed rate, not an interval after the last one ended: a round's own
    // work (probes, store writes) would otherwise stretch the three silent checks that make
    // a node dead past three intervals.
    let mut rounds = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut meter = Meter::new(
        cluster.config.consumers_per_worker,
        cluster.config.max_pps_per_worker,
        cluster.config.overload_ratio,
    )
    .with_max_rx_drops(cluster.config.max_rx_drops_per_s);
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
        if registered {
            match cluster
                .store
                .renew_lease(&me.node_id, lease_ms, now_ms())
                .await
            {
                Ok(()) => {}
                Err(StoreError::NoSuchNode(_)) => {
                    // Taken for dead (or the store was flushed): come back as a new
                    // incarnation now rather than an interval later.
                    tracing::warn!(node = %me.node_id, "this node was removed from the cluster; registering again");
                    registered = false;
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew this node's lease"),
            }
        }
        rounds.tick().await;
        if let Some(report) = measure(&link, &mut meter, &cluster.config) {
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
                    .heartbeat(&me.node_id, report.overloaded, &report.load)
                    .await
                {
                    Ok(()) => reported = Some((report.overloaded, now)),
                    Err(e) => tracing::warn!(error = %e, "cannot record this node's load"),
                }
            }
            latest.set(report);
        }
        let nodes = match cluster.store.list_nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "health check: cannot list nodes");
                continue;
            }
        };
        registered = nodes.iter().any(|n| n.node_id == me.node_id);
        counters::cluster().set_nodes(&nodes);
        misses.retain(&nodes);
        let mut checks = tokio::task::JoinSet::new();
        for n in nodes {
            checks.spawn(async move {
                let health = probe(&n.url, probe_timeout).await;
                (n, health)
            });
        }
        while let Some(done) = checks.join_next().await {
            let Ok((n, health)) = done else { continue };
            let ok = health == Health::Up;
            if n.healthy != ok {
                tracing::warn!(node = %n.node_id, url = %n.url, healthy = ok, "node health changed");
                if let Err(e) = cluster.store.set_health(&n.node_id, ok).await {
                    tracing::warn!(node = %n.node_id, error = %e, "cannot record health");
                }
            }
            // This node is running this loop: whatever its own check says, it is not dead.
            let silent = n.node_id != me.node_id
                && misses.handle_check(&n.incarnation(), health != Health::Silent);
            if silent {
                if let Err(e) = cluster
                    .bury(&n.incarnation(), Death::Silent, now_ms())
                    .await
                {
                    tracing::warn!(node = %n.node_id, error = %e, "cannot remove a silent node");
                }
            }
        }
        if let Err(e) = cluster.bury_lapsed(&me.node_id, now_ms()).await {
            tracing::warn!(error = %e, "cannot remove the nodes whose lease lapsed");
        }
    }
}

/// This node's load now, from the data plane's stats file and `/proc`; None while no data
/// plane has said hello.
fn measure(
    link: &Link,
    meter: &mut Meter,
    config: &switchyard_shared::config::ClusterSection,
) -> Option<load::LoadReport> {
    // Read /proc before taking the lock.
    let host = if config.host_load {
        load::host_reading(config.nic_mbps)
    } else {
        Reading::default()
    };
    let (reading, pid) = {
        let g = link.lock();
        let d = g.node.dataplane()?;
        let tx_packets = g.stats.as_ref().map_or_else(Vec::new, |s| {
            (0..s.workers())
                .filter_map(|w| s.worker(w))
                .map(|b| b.get(Counter::TxPackets))
                .collect()
        });
        let rx_drops = g.stats.as_ref().map(|s| {
            (0..s.workers())
                .filter_map(|w| s.worker(w))
                .map(|b| b.get(Counter::KernelRxDrops))
                .sum()
        });
        let reading = Reading {
            sessions: g.node.session_count() as u64,
            workers: d.workers,
            tx_packets,
            rx_drops,
            ..host
        };
        (reading, d.pid)
    };
    let reading = Reading {
        cpu_ticks: load::cpu_ticks(pid),
        ..reading
    };
    Some(meter.measure(std::time::Instant::now(), reading))
}
