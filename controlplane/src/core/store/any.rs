//! The store a control plane runs with, chosen at start by `[cluster] redis`.

use std::collections::BTreeMap;

use super::contract::{Store, StoreError};
use super::memory::MemoryStore;
use super::placement::{PoolFilter, RoomSpec, Strategy};
use super::records::{
    Death, Incarnation, Node, Placement, Registration, Removal, Replacement, Room,
};
use super::redis::RedisStore;

/// The store a control plane runs with, chosen by `[cluster] redis`.
pub enum AnyStore {
    Memory(MemoryStore),
    // Boxed: the Redis client is large and there is one store per process.
    Redis(Box<RedisStore>),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($s) => $call.await,
            AnyStore::Redis($s) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn register_node(&self, reg: Registration) -> Result<Node, StoreError> {
        dispatch!(self, s => s.register_node(reg))
    }
    async fn heartbeat(
        &self,
        node: &str,
        overloaded: bool,
        load: &BTreeMap<String, f64>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.heartbeat(node, overloaded, load))
    }
    async fn set_health(&self, node: &str, healthy: bool) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_health(node, healthy))
    }
    async fn set_relay_rtt(
        &self,
        node: &str,
        rtt_ms: &BTreeMap<String, f64>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_relay_rtt(node, rtt_ms))
    }
    async fn drain(&self, node: &str, draining: bool) -> Result<(), StoreError> {
        dispatch!(self, s => s.drain(node, draining))
    }
    async fn renew_lease(&self, node: &str, ttl_ms: u64, now_ms: u64) -> Result<(), StoreError> {
        dispatch!(self, s => s.renew_lease(node, ttl_ms, now_ms))
    }
    async fn lapsed(&self, now_ms: u64) -> Result<Vec<Incarnation>, StoreError> {
        dispatch!(self, s => s.lapsed(now_ms))
    }
    async fn remove_node(
        &self,
        node: &Incarnation,
        death: Death,
        now_ms: u64,
    ) -> Result<Removal, StoreError> {
        dispatch!(self, s => s.remove_node(node, death, now_ms))
    }
    async fn place_again(
        &self,
        room: &str,
        pool: &PoolFilter,
        strategy: Strategy,
        holders: &[String],
        now_ms: u64,
    ) -> Result<Replacement, StoreError> {
        dispatch!(self, s => s.place_again(room, pool, strategy, holders, now_ms))
    }
    async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        dispatch!(self, s => s.list_nodes())
    }
    async fn reserve_room(
        &self,
        spec: RoomSpec,
        strategy: Strategy,
    ) -> Result<Placement, StoreError> {
        dispatch!(self, s => s.reserve_room(spec, strategy))
    }
    async fn release_room(&self, room: &str) -> Result<Room, StoreError> {
        dispatch!(self, s => s.release_room(room))
    }
    async fn get_room(&self, room: &str) -> Result<Option<Room>, StoreError> {
        dispatch!(self, s => s.get_room(room))
    }
    async fn list_rooms(&self) -> Result<Vec<Room>, StoreError> {
        dispatch!(self, s => s.list_rooms())
    }
    async fn set_node_streams(
        &self,
        node: &str,
        streams: BTreeMap<String, Vec<String>>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_node_streams(node, streams))
    }
    async fn stream_sources(&self, stream: &str) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        dispatch!(self, s => s.stream_sources(stream))
    }
    async fn all_streams(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, Vec<String>>>, StoreError> {
        dispatch!(self, s => s.all_streams())
    }
    async fn put_forward(&self, node: &str, id: &str, body: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_forward(node, id, body))
    }
    async fn delete_forward(&self, node: &str, id: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.delete_forward(node, id))
    }
    async fn list_forwards(&self, node: &str) -> Result<Vec<(String, String)>, StoreError> {
        dispatch!(self, s => s.list_forwards(node))
    }
}
