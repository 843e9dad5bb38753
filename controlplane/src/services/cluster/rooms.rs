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
use super::regions;
use super::service::{valid_url, Cluster, ClusterError, MAX_PEERS};
use crate::core::clock::now_ms;
use crate::core::counters;
use crate::core::random;
use crate::core::store::{
    consumers_for, Node, Placement, PoolFilter, Room, RoomSpec, Store as _, StoreError,
};

/// A room as `/v1/resolve` finds it.
#[derive(Debug)]
pub struct Resolved {
    pub room: Room,
    /// The room's node; None while the room is unplaced.
    pub node: Option<Node>,
    /// Where a viewer in the asked region should watch, when not on the room's node.
    pub viewer: Option<Node>,
}

/// A room to place, as asked.
#[derive(Debug)]
pub struct RoomRequest {
    pub max_peer_count: u32,
    pub event_notification_uri: Option<String>,
    /// The client's region ([`Cluster::client_region`]): placed there while a node there
    /// has room.
    pub region: Option<String>,
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
            region: req.region,
        };
        let p = self.store.reserve_room(spec, self.config.strategy).await?;
        tracing::info!(
            room = %p.room.room_id,
            node = %p.node.node_id,
            consumers = p.room.consumers,
            region = p.room.region.as_deref().unwrap_or(""),
            node_region = p.node.region.as_deref().unwrap_or(""),
            "room placed"
        );
        Ok(p)
    }

    async fn nodes_by_id(&self) -> Result<HashMap<String, Node>, ClusterError> {
        Ok(self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .map(|n| (n.node_id.clone(), n))
            .collect())
    }

    /// Every placed room, each with its node (None when the node is gone). A room whose
    /// node died is placed again first; one no node has room for is listed unplaced.
    pub async fn rooms(&self) -> Result<Vec<(Room, Option<Node>)>, ClusterError> {
        let mut rooms = self.store.list_rooms().await?;
        for r in rooms.iter_mut().filter(|r| r.unplaced()) {
            match self.ensure_placed(r.clone(), now_ms()).await {
                Ok(placed) => *r = placed,
                Err(e) => tracing::warn!(room = %r.room_id, error = %e, "room still unplaced"),
            }
        }
        let nodes = self.nodes_by_id().await?;
        Ok(rooms
            .into_iter()
            .map(|r| {
                let node = nodes.get(&r.node).cloned();
                (r, node)
            })
            .collect())
    }

    /// One room and its node; a room whose node died is placed again first (still
    /// unplaced, without a node, when no node has room for it).
    pub async fn room(&self, room: &str) -> Result<(Room, Option<Node>), ClusterError> {
        let (r, nodes) = self.room_and_nodes(room).await?;
        let node = nodes.into_iter().find(|n| n.node_id == r.node);
        Ok((r, node))
    }

    /// `/v1/resolve`: the room and its node, and for a viewer in `region` the node of that
    /// region its WHEP offer should go to, when that is another node than the room's and
    /// the cascade is on ([`regions::viewer_node`]). A room's node that refuses connections
    /// is found dead first (`Cluster::confirm_dead`), so a client is not sent to it.
    pub async fn resolve(
        &self,
        room: &str,
        region: Option<&str>,
    ) -> Result<Resolved, ClusterError> {
        let (mut r, mut nodes) = self.room_and_nodes(room).await?;
        let me = self.shutdown.node_id.as_str();
        if let Some(n) = nodes.iter().find(|n| n.node_id == r.node) {
            if self.confirm_dead(n, me).await {
                (r, nodes) = self.room_and_nodes(room).await?;
            }
        }
        let viewer = match region {
            Some(region) if self.config.cascade && !r.unplaced() => {
                let pool = PoolFilter::for_room(&r.room_id, &self.config.pools);
                regions::viewer_node(&r.room_id, region, &r.node, &nodes, &pool).cloned()
            }
            _ => None,
        };
        let node = nodes.into_iter().find(|n| n.node_id == r.node);
        Ok(Resolved {
            room: r,
            node,
            viewer,
        })
    }

    async fn room_and_nodes(&self, room: &str) -> Result<(Room, Vec<Node>), ClusterError> {
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
        Ok((r, self.store.list_nodes().await?))
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
