//! Rooms: placed on a node by capacity (`core::store::placement`), looked up, closed. Every
//! room this control plane places or refuses is counted (`switchyard_cluster_placements_total`,
//! `switchyard_cluster_rejections_total`).
//!
//! A room's hook is a request the caller makes the node send from inside the cluster's
//! network (SSRF): only trusted callers (a cluster token, or anyone while auth is off) pick
//! any URL; others only one under `[cluster] hook_allow`.

use std::collections::HashMap;

use switchyard_shared::names;

use super::hooks;
use super::service::{valid_url, Cluster, ClusterError, MAX_PEERS};
use crate::core::clock::now_ms;
use crate::core::counters;
use crate::core::random;
use crate::core::store::{
    consumers_for, Placement, PoolFilter, Room, RoomSpec, Store as _, StoreError,
};

/// A room to place, as asked.
#[derive(Debug)]
pub struct RoomRequest {
    pub max_peer_count: u32,
    pub event_notification_uri: Option<String>,
}

impl ClusterError {
    /// The reason label of a refused room.
    fn rejection(&self) -> &'static str {
        match self {
            ClusterError::HookForbidden => "hook_forbidden",
            ClusterError::Store(StoreError::NoCapacity { .. }) => "no_capacity",
            ClusterError::Store(StoreError::Unavailable(_)) => "store_unavailable",
            ClusterError::Store(StoreError::RoomExists(_)) => "room_exists",
            ClusterError::Store(_) => "store_error",
            _ => "bad_request",
        }
    }
}

impl Cluster {
    /// A fresh room id: 16 random hex digits.
    pub fn generated_room_id() -> Result<String, ClusterError> {
        let mut id = [0u8; 8];
        random::fill(&mut id)?;
        Ok(id.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Place `room_id` on a node. `trusted`: the caller may set any hook.
    pub async fn place(
        &self,
        trusted: bool,
        room_id: String,
        req: RoomRequest,
    ) -> Result<Placement, ClusterError> {
        let m = counters::cluster();
        match self.reserve(trusted, room_id, req).await {
            Ok(p) => {
                m.placed(&p.node.node_id);
                Ok(p)
            }
            Err(e) => {
                m.rejected(e.rejection());
                Err(e)
            }
        }
    }

    /// A room request that did not even parse: refused, and counted as such.
    pub fn rejected_malformed(&self) {
        counters::cluster().rejected("bad_request");
    }

    async fn reserve(
        &self,
        trusted: bool,
        room_id: String,
        req: RoomRequest,
    ) -> Result<Placement, ClusterError> {
        names::id("room", &room_id)?;
        if req.max_peer_count == 0 || req.max_peer_count > MAX_PEERS {
            return Err(ClusterError::MaxPeers);
        }
        if let Some(u) = &req.event_notification_uri {
            valid_url("eventNotificationUri", u)?;
            if !trusted && !switchyard_shared::config::hook_allowed(u, &self.config.hook_allow) {
                return Err(ClusterError::HookForbidden);
            }
        }
        let spec = RoomSpec {
            pool: PoolFilter::for_room(&room_id, &self.config.pools),
            room_id,
            consumers: consumers_for(req.max_peer_count),
            max_peer_count: req.max_peer_count,
            event_notification_uri: req.event_notification_uri,
        };
        let p = self.store.reserve_room(spec, self.config.strategy).await?;
        tracing::info!(room = %p.room.room_id, node = %p.node.node_id, consumers = p.room.consumers, "room placed");
        Ok(p)
    }

    async fn node_urls(&self) -> Result<HashMap<String, String>, ClusterError> {
        Ok(self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .map(|n| (n.node_id, n.url))
            .collect())
    }

    /// Every placed room, each with its node's URL (None when the node is gone). A room
    /// whose node died is placed again first; one no node has room for is listed unplaced.
    pub async fn rooms(&self) -> Result<Vec<(Room, Option<String>)>, ClusterError> {
        let mut rooms = self.store.list_rooms().await?;
        for r in rooms.iter_mut().filter(|r| r.unplaced()) {
            match self.ensure_placed(r.clone(), now_ms()).await {
                Ok(placed) => *r = placed,
                Err(e) => tracing::warn!(room = %r.room_id, error = %e, "room still unplaced"),
            }
        }
        let urls = self.node_urls().await?;
        Ok(rooms
            .into_iter()
            .map(|r| {
                let url = urls.get(&r.node).cloned();
                (r, url)
            })
            .collect())
    }

    /// One room and its node's URL; a room whose node died is placed again first (still
    /// unplaced, without a URL, when no node has room for it).
    pub async fn room(&self, room: &str) -> Result<(Room, Option<String>), ClusterError> {
        names::id("room", room)?;
        let mut r = self
            .store
            .get_room(room)
            .await?
            .ok_or_else(|| ClusterError::NoRoom(room.to_owned()))?;
        if r.unplaced() {
            match self.ensure_placed(r.clone(), now_ms()).await {
                Ok(placed) => r = placed,
                Err(ClusterError::Store(StoreError::NoCapacity { need })) => {
                    tracing::warn!(%room, need, "room still unplaced: no node has room for it");
                }
                Err(e) => return Err(e),
            }
        }
        let url = self.node_urls().await?.remove(&r.node);
        Ok((r, url))
    }

    /// Close a room: its reservation is released (capacity back) and its hook told.
    pub async fn close_room(&self, room: &str) -> Result<Room, ClusterError> {
        names::id("room", room)?;
        let r = self.store.release_room(room).await?;
        tracing::info!(room = %r.room_id, node = %r.node, consumers = r.consumers, "room closed");
        if let Some(uri) = &r.event_notification_uri {
            self.events
                .send(uri, hooks::event("room-closed", &r.room_id, &r.node));
        }
        Ok(r)
    }
}
