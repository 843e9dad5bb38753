//! The records the cluster store keeps: nodes (what each registered, and how the cluster
//! sees it now) and the rooms placed on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node as the registry holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// What its last heartbeat reported: each resource's share in use (1 = the size the node
    /// is rated for; docs/cluster.md, "Load"). Empty before the first.
    #[serde(default)]
    pub load: BTreeMap<String, f64>,
    pub labels: BTreeMap<String, String>,
    /// The node's region (`cluster.region`): placement prefers nodes in the client's region,
    /// the cascade sources in its own (docs/cluster.md, "Regions"). None: a node registered
    /// without one (or by a version before regions), in no region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Smoothed round-trip time in milliseconds of the relay links between this node and
    /// each peer (by node id), as this node's control plane measured them from RTCP
    /// (RFC 3550 §6.4.1) on its relay-outs. The cascade's source choice reads it. Empty
    /// before any relay link carried sender and receiver reports.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub relay_rtt_ms: BTreeMap<String, f64>,
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
    pub region: Option<String>,
}

/// A placed room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Room {
    pub room_id: String,
    /// Id of the node hosting it; empty while the room is unplaced (its node died and no
    /// node has taken it yet, see [`Room::unplaced`]).
    pub node: String,
    pub consumers: u64,
    pub max_peer_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_notification_uri: Option<String>,
    pub created_ms: u64,
    /// When the room was placed on its current node: its creation, or the time it moved
    /// after its node died. The idle close counts from here, so a moved room gets a fresh
    /// chance to be joined on its new node.
    #[serde(default)]
    pub placed_ms: u64,
    /// The node the room was on when that node was removed as dead; set while the room is
    /// unplaced, so whoever places it again can say where it came from (`room-moved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_node: Option<String>,
    /// The client's region it was placed for: placed in that region while it has room, and
    /// placed there again when its node dies. None: no preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl Room {
    /// Its node was removed as dead and no node holds its reservation now.
    pub fn unplaced(&self) -> bool {
        self.node.is_empty()
    }
}

/// One registration of a node: its id and the time of that registration. A node that
/// registers again (a restart with the same id) is a new incarnation, so a verdict reached
/// on the old one ("dead") never removes the new one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Incarnation {
    pub node_id: String,
    pub registered_ms: u64,
}

impl Node {
    pub fn incarnation(&self) -> Incarnation {
        Incarnation {
            node_id: self.node_id.clone(),
            registered_ms: self.registered_ms,
        }
    }
}

/// Why a node is declared dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Death {
    /// Its lease lapsed: its control plane stopped renewing it.
    LeaseLapsed,
    /// Health checks got no answer at all (no connection, or a timeout) this many times in
    /// a row. A 503 is an answer: an overloaded node is alive.
    Silent,
    /// Its host refused connections to its API several times in a row, checked when a
    /// relay from it went quiet: the process is gone.
    Refused,
}

impl Death {
    pub fn as_str(self) -> &'static str {
        match self {
            Death::LeaseLapsed => "lease",
            Death::Silent => "checks",
            Death::Refused => "refused",
        }
    }
}

/// What a removal did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// This call removed the node. Its rooms are now unplaced (their reservations went
    /// with the node's entry), listed here for their events and re-placement.
    Removed { rooms: Vec<Room> },
    /// Not dead: its lease is held, or it registered again since the verdict.
    Alive,
    /// Already gone (another control plane removed it first).
    Gone,
}

/// The answer to [`Store::place_again`](super::Store::place_again).
#[derive(Clone, Debug, PartialEq)]
pub struct Replacement {
    pub placement: Placement,
    /// The node the room was on before, when this call moved it (None: someone else
    /// placed it first, and `placement` is where it is now).
    pub from: Option<String>,
}

/// The answer to a reservation: the room and its node as it was right after.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub room: Room,
    pub node: Node,
}
