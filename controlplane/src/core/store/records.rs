//! The records the cluster store keeps: nodes (what each registered, and how the cluster
//! sees it now) and the rooms placed on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
