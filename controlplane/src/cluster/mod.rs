//! The cluster: a registry of nodes, rooms placed on them by capacity, and the store both
//! live in (this control plane's memory, or Redis shared by every control plane).
//!
//! - [`placement`]: pure choice of a node for a room (no I/O, unit tested).
//! - [`store`]: the [`Store`](store::Store) trait and the in-memory store; [`redis`]: the
//!   Redis store, whose reservation is one Lua script.
//! - `health`: the task that checks every node's `GET /health`; `http`: the REST routes.
//!
//! Security: registration, drain and heartbeat are not authenticated yet (issue #4's JWT
//! `cluster` claim is still to come), so bind the HTTP listener to a trusted network.

pub(crate) mod closer;
pub mod events;
pub(crate) mod health;
pub(crate) mod http;
pub mod load;
pub mod placement;
pub mod redis;
pub mod store;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchyard_shared::config::ClusterSection;

pub use placement::Strategy;
pub use store::{AnyStore, MemoryStore, Store, StoreError};

/// A node as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub node_id: String,
    /// Base URL of the node's control plane, e.g. `http://10.0.0.2:8080`.
    pub url: String,
    /// Where peers send media (`ip` or `ip:port`), as the node announces it.
    pub media_address: String,
    pub workers: u16,
    /// Consumers (forwarded streams) the node is sized for: workers × consumers per worker.
    pub capacity: u64,
    /// Consumers reserved by the rooms placed on the node.
    pub reserved: u64,
    /// The last health check passed (true from registration until one fails).
    pub healthy: bool,
    /// Drained: keeps its rooms, takes no new ones (for an upgrade).
    pub draining: bool,
    /// The node's last heartbeat reported a resource at or over the overload ratio.
    pub overloaded: bool,
    pub labels: BTreeMap<String, String>,
    pub registered_ms: u64,
    pub heartbeat_ms: u64,
}

impl Node {
    pub fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.reserved)
    }

    /// Whether a room needing `need` consumers may go here now.
    pub fn accepts(&self, need: u64) -> bool {
        self.healthy && !self.draining && !self.overloaded && self.free() >= need
    }
}

/// What a node says about itself when it registers. Registering again replaces everything
/// but the reservations (its rooms still exist) and clears drain and ill health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub node_id: String,
    pub url: String,
    pub media_address: String,
    pub workers: u16,
    pub capacity: u64,
    pub labels: BTreeMap<String, String>,
}

/// A room to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomSpec {
    pub room_id: String,
    /// Consumers to reserve on the chosen node.
    pub consumers: u64,
    pub max_peer_count: u32,
    pub event_notification_uri: Option<String>,
    /// The nodes it may go to by pool.
    pub pool: placement::PoolFilter,
}

/// A placed room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Room {
    pub room_id: String,
    /// Id of the node hosting it.
    pub node: String,
    pub consumers: u64,
    pub max_peer_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_notification_uri: Option<String>,
    pub created_ms: u64,
}

/// The answer to a reservation: the room and its node as it was right after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub room: Room,
    pub node: Node,
}

/// Consumers a room of `max_peer_count` peers reserves when everyone subscribes to everyone:
/// n × (n − 1) streams, at least 1 so a one-peer room still counts.
pub fn consumers_for(max_peer_count: u32) -> u64 {
    let n = u64::from(max_peer_count);
    (n * n.saturating_sub(1)).max(1)
}

/// The cluster as the control plane holds it: the store and the `[cluster]` settings.
pub struct Cluster {
    pub store: AnyStore,
    pub config: ClusterSection,
    /// Room events (`eventNotificationUri`) waiting for delivery.
    pub events: events::Notifier,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_are_n_times_n_minus_one() {
        assert_eq!(consumers_for(0), 1);
        assert_eq!(consumers_for(1), 1);
        assert_eq!(consumers_for(2), 2);
        assert_eq!(consumers_for(10), 90);
        assert_eq!(
            consumers_for(u32::MAX),
            u64::from(u32::MAX) * (u64::from(u32::MAX) - 1)
        );
    }
}
