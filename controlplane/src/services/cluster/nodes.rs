//! The node registry's entry points: a node registering (again), and a node reporting its
//! load. Both checked here; the store keeps the result.

use std::collections::BTreeMap;

use switchyard_shared::names;

use super::service::{valid_url, Cluster, ClusterError, MAX_LABEL, MAX_LABELS};
use crate::core::store::{Node, Registration, Store as _};

/// Longest media address (`ip`, `ip:port` or a host name).
const MAX_MEDIA_ADDRESS: usize = 128;

/// What a node says about itself when it registers through the API.
#[derive(Debug)]
pub struct Announced {
    pub node_id: String,
    pub url: String,
    pub media_address: String,
    pub workers: u16,
    pub labels: BTreeMap<String, String>,
    pub region: Option<String>,
}

impl Cluster {
    /// Register a node (again): its capacity is its workers × `consumers_per_worker`.
    pub async fn register(&self, b: Announced) -> Result<Node, ClusterError> {
        names::id("nodeId", &b.node_id)?;
        // What health::probe can check.
        valid_url("url", &b.url)?;
        if b.media_address.is_empty() || b.media_address.len() > MAX_MEDIA_ADDRESS {
            return Err(ClusterError::MediaAddress);
        }
        if b.workers == 0 {
            return Err(ClusterError::NoWorkers);
        }
        if b.labels.len() > MAX_LABELS
            || b.labels
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > MAX_LABEL || v.len() > MAX_LABEL)
        {
            return Err(ClusterError::Labels);
        }
        if let Some(r) = &b.region {
            names::id("region", r)?;
        }
        let reg = Registration {
            capacity: u64::from(b.workers) * u64::from(self.config.consumers_per_worker),
            node_id: b.node_id,
            url: b.url.trim_end_matches('/').to_owned(),
            media_address: b.media_address,
            workers: b.workers,
            labels: b.labels,
            region: b.region,
        };
        Ok(self.store.register_node(reg).await?)
    }

    /// Record node `id`'s reported load (shares from 0 per resource); whether it is
    /// overloaded (some share at `overload_ratio` or more): it then takes no new rooms.
    pub async fn heartbeat(
        &self,
        id: &str,
        load: &BTreeMap<String, f64>,
    ) -> Result<bool, ClusterError> {
        if load.values().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(ClusterError::Load);
        }
        let overloaded = load.values().any(|&v| v >= self.config.overload_ratio);
        self.store.heartbeat(id, overloaded, load).await?;
        Ok(overloaded)
    }

    /// Every registered node, in id order.
    pub async fn nodes(&self) -> Result<Vec<Node>, ClusterError> {
        Ok(self.store.list_nodes().await?)
    }

    /// The streams every registered node publishes, node → stream → hop list (the nodes a
    /// relayed stream came through, its source first; empty for a local publisher), as each
    /// node last wrote them to the store (at most a second old).
    pub async fn streams(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, Vec<String>>>, ClusterError> {
        Ok(self.store.all_streams().await?)
    }

    /// Stop (or resume) placing rooms on node `id`; its rooms stay.
    pub async fn drain(&self, id: &str, draining: bool) -> Result<(), ClusterError> {
        Ok(self.store.drain(id, draining).await?)
    }
}
