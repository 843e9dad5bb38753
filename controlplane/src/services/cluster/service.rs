//! [`Cluster`]: the cluster as the control plane holds it (the store and the `[cluster]`
//! settings), and [`ClusterError`], why a cluster request was refused.

use std::sync::Arc;

use switchyard_shared::config::ClusterSection;
use switchyard_shared::names::BadName;

use super::hooks::Notifier;
use crate::core::random::RngError;
use crate::core::store::{AnyStore, StoreError};

/// Most labels a node registers with.
pub const MAX_LABELS: usize = 32;
/// Longest label key or value.
pub const MAX_LABEL: usize = 64;
/// A room of this many peers reserves ~1M consumers; more is a typo, not a meeting.
pub const MAX_PEERS: u32 = 1000;

/// The cluster as the control plane holds it: the store and the `[cluster]` settings.
pub struct Cluster {
    pub store: AnyStore,
    pub config: ClusterSection,
    /// Room events (`eventNotificationUri`) waiting for delivery.
    pub events: Notifier,
    /// This node's id, and the request to shut it down through its own API.
    pub shutdown: ShutdownRequest,
    /// Told when this control plane removed a dead node ([`Cluster::bury`]): the relay
    /// task looks for new sources of the relays it fed at once, not at its next tick.
    pub removed: tokio::sync::Notify,
}

/// A request to shut this node down gracefully (`POST /v1/nodes/{this node}/drain` with
/// `{"shutdown": true}`), as SIGTERM does: no new sessions, the ones there are finish (up to
/// `cluster.shutdown_grace_ms`), then the control plane exits 0.
#[derive(Clone, Debug, Default)]
pub struct ShutdownRequest {
    pub node_id: String,
    notify: Arc<tokio::sync::Notify>,
}

impl ShutdownRequest {
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            notify: Arc::default(),
        }
    }

    pub fn request(&self) {
        // A stored permit: the request counts even before anyone waits for it.
        self.notify.notify_one();
    }

    pub async fn requested(&self) {
        self.notify.notified().await;
    }
}

/// Longest URL a node registers or a room hook names.
pub const MAX_URL: usize = 2048;

/// Why a registration, heartbeat or room request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Name(#[from] BadName),
    #[error("{0}: a URL starting with http:// or https:// (at most {MAX_URL} bytes)")]
    Url(&'static str),
    #[error("mediaAddress: an address or host, at most 128 bytes")]
    MediaAddress,
    #[error("workers: at least 1")]
    NoWorkers,
    #[error("labels: at most {MAX_LABELS}, keys 1 to {MAX_LABEL} bytes, values up to {MAX_LABEL}")]
    Labels,
    #[error("load: finite shares from 0")]
    Load,
    #[error("maxPeerCount: 1 to {MAX_PEERS}")]
    MaxPeers,
    /// The hook is a request the caller makes the node send (SSRF): not this caller's to pick.
    #[error(
        "eventNotificationUri: this URL needs a cluster token (or a prefix in [cluster] \
         hook_allow)"
    )]
    HookForbidden,
    #[error("no room {0:?}")]
    NoRoom(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// Whether `url` is an `http://` or `https://` URL a node can call: a host after the scheme,
/// at most [`MAX_URL`] bytes, no whitespace or control characters.
pub(super) fn valid_url(field: &'static str, url: &str) -> Result<(), ClusterError> {
    let ok = url.len() <= MAX_URL
        && ["http://", "https://"].iter().any(|s| {
            url.strip_prefix(s)
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        })
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Url(field))
    }
}
