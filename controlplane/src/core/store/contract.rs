//! What every cluster store promises: the [`Store`] trait and its errors.
//!
//! `reserve_room` picks a node and reserves the room's consumers in one atomic step, so
//! concurrent reservations (from one or many control planes) never take a node past its
//! capacity, and a room id is placed at most once.
//!
//! Liveness: a node's own control plane renews its lease (`renew_lease`) every health
//! interval; `lapsed` lists the nodes whose lease ran out, and `remove_node` removes a dead
//! node in one atomic step that re-checks the verdict (lease still lapsed, same
//! incarnation), so several control planes removing the same node remove it once. Its rooms
//! stay, unplaced, until `place_again` puts them on a live node. Times are passed in
//! (`now_ms`): the memory store runs on them alone, so liveness is tested on virtual time;
//! Redis keeps leases with its own TTLs.

use std::collections::BTreeMap;
use std::future::Future;

use super::placement::{PoolFilter, RoomSpec, Strategy};
use super::records::{
    Death, Incarnation, Node, Placement, Registration, Removal, Replacement, Room,
};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The shared store cannot be reached; the HTTP layer answers 503.
    #[error("cluster store unavailable: {0}")]
    Unavailable(String),
    #[error(
        "no node has room for {need} more consumers (all full, draining, unhealthy or overloaded)"
    )]
    NoCapacity { need: u64 },
    #[error("room {0:?} already exists")]
    RoomExists(String),
    #[error("no room {0:?}")]
    NoSuchRoom(String),
    #[error("no node {0:?}")]
    NoSuchNode(String),
    /// The store answered something this version does not understand.
    #[error("cluster store: {0}")]
    Backend(String),
}

/// The cluster store. Every method is one request to the store; the futures are `Send` so
/// HTTP handlers can await them.
pub trait Store: Send + Sync {
    /// Add a node, or replace its entry (keeping its reservations).
    fn register_node(
        &self,
        reg: Registration,
    ) -> impl Future<Output = Result<Node, StoreError>> + Send;
    /// Record a node's heartbeat: whether it reports itself overloaded, and its load.
    fn heartbeat(
        &self,
        node: &str,
        overloaded: bool,
        load: &BTreeMap<String, f64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Replace the relay round-trip times `node` measured (peer node id → milliseconds).
    fn set_relay_rtt(
        &self,
        node: &str,
        rtt_ms: &BTreeMap<String, f64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Record the result of a health check.
    fn set_health(
        &self,
        node: &str,
        healthy: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Stop (or resume) placing rooms on a node.
    fn drain(
        &self,
        node: &str,
        draining: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Renew `node`'s lease for `ttl_ms` from `now_ms`. [`StoreError::NoSuchNode`] when the
    /// node is not registered (removed as dead): it must register again.
    fn renew_lease(
        &self,
        node: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The nodes that held a lease and let it run out by `now_ms`. A node that never renewed
    /// one (registered through the API by an outside agent) is judged by health checks only.
    fn lapsed(
        &self,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Incarnation>, StoreError>> + Send;
    /// Remove a node declared dead, atomically: only `node` as it was registered then, and
    /// for [`Death::LeaseLapsed`] only while its lease is still lapsed at `now_ms`. Its
    /// reservations and published streams go with it; its rooms become unplaced.
    fn remove_node(
        &self,
        node: &Incarnation,
        death: Death,
        now_ms: u64,
    ) -> impl Future<Output = Result<Removal, StoreError>> + Send;
    /// Put an unplaced room on a node with `strategy` (reserving its consumers there),
    /// atomically; `pool` as for `reserve_room`, `holders` the nodes that hold the room's
    /// streams (tried first: `placement::Near`), `now_ms` its new `placed_ms`. A room placed
    /// meanwhile is left where it is (`from` is None).
    fn place_again(
        &self,
        room: &str,
        pool: &PoolFilter,
        strategy: Strategy,
        holders: &[String],
        now_ms: u64,
    ) -> impl Future<Output = Result<Replacement, StoreError>> + Send;
    /// Every node, in id order.
    fn list_nodes(&self) -> impl Future<Output = Result<Vec<Node>, StoreError>> + Send;
    /// Pick a node with `strategy` and reserve `spec.consumers` on it, atomically.
    fn reserve_room(
        &self,
        spec: RoomSpec,
        strategy: Strategy,
    ) -> impl Future<Output = Result<Placement, StoreError>> + Send;
    /// Remove a room and give its consumers back to its node.
    fn release_room(&self, room: &str) -> impl Future<Output = Result<Room, StoreError>> + Send;
    fn get_room(&self, room: &str)
        -> impl Future<Output = Result<Option<Room>, StoreError>> + Send;
    /// Every room, in id order.
    fn list_rooms(&self) -> impl Future<Output = Result<Vec<Room>, StoreError>> + Send;
    /// Replace the streams `node` publishes (its own publishers and the streams relayed to
    /// it), each with its hop list (the nodes it was relayed through, empty for a local
    /// publisher). The node's control plane writes its whole set, so a restart heals it.
    fn set_node_streams(
        &self,
        node: &str,
        streams: BTreeMap<String, Vec<String>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The nodes that publish `stream`, in node id order, each with the stream's hop list
    /// there.
    fn stream_sources(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Vec<(String, Vec<String>)>, StoreError>> + Send;
    /// Every node's streams as its control plane last wrote them ([`Store::set_node_streams`]):
    /// node → stream → hop list, in node id order. Only registered nodes (a removed node's
    /// streams go with it). For views of the whole cluster (`GET /v1/cluster/streams`).
    fn all_streams(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, BTreeMap<String, Vec<String>>>, StoreError>> + Send;
    /// Save (or replace) forward `id` made through the API on `node`; `body` is its JSON
    /// (controlplane `forward::http`), opaque here.
    fn put_forward(
        &self,
        node: &str,
        id: &str,
        body: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forget forward `id` of `node` (no error if it is not there).
    fn delete_forward(
        &self,
        node: &str,
        id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The forwards saved for `node`, `(id, body)` in id order.
    fn list_forwards(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;
}
