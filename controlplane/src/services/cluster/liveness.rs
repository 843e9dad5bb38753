//! When a node dies: the verdict, and what follows it (docs/cluster.md, "When a node dies").
//!
//! A node is dead when its lease lapsed (its control plane renews it every health interval
//! for [`LEASE_INTERVALS`] intervals; the store keeps it) or when this control plane's health
//! checks got no answer from it [`SILENT_CHECKS`] times in a row ([`Misses`], sans-IO). A
//! check answered with anything, a 503 included, is an answer: an overloaded node or one
//! waiting for its data plane is alive and stays (merely unhealthy).
//!
//! A dead node is removed in one atomic store step that re-checks the verdict
//! ([`Cluster::bury`]); every control plane may reach the verdict, only one removes. Its
//! reservations go with its entry, its rooms stay, unplaced: each gets `node-down`, then is
//! placed again on a live node (`room-moved`) right away, or on its next lookup
//! ([`Cluster::ensure_placed`]) when no node had room. A room is never forgotten.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde_json::json;

use super::hooks::event;
use super::service::{Cluster, ClusterError};
use crate::core::counters;
use crate::core::store::{
    Death, Incarnation, Node, PoolFilter, Removal, Room, Store as _, StoreError,
};

/// A lease lasts this many health intervals: two renewals may be lost (a slow store, a
/// stalled loop) before a live node is taken for dead.
pub const LEASE_INTERVALS: u64 = 3;
/// Unanswered checks in a row that make a node dead. With the first at most an interval
/// after the death, the node goes within three intervals; one lost probe (a dropped SYN)
/// is not enough.
pub const SILENT_CHECKS: u32 = 3;

/// A suspected node ([`Cluster::confirm_dead`]) is dead when this many connections to its
/// API in a row, [`REFUSAL_SPACING`] apart, are refused.
pub const REFUSALS: u32 = 3;
/// Time between those connections.
pub const REFUSAL_SPACING: std::time::Duration = std::time::Duration::from_millis(150);
/// How long each may take to be refused.
const REFUSAL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Consecutive unanswered health checks, per node incarnation. Sans-IO: fed each check's
/// outcome, it says when a node has been silent long enough.
#[derive(Debug)]
pub struct Misses {
    limit: u32,
    /// Node id → (registration time, unanswered checks in a row).
    nodes: HashMap<String, (u64, u32)>,
}

impl Misses {
    pub fn new(limit: u32) -> Self {
        Self {
            limit: limit.max(1),
            nodes: HashMap::new(),
        }
    }

    /// One check of `node`: `answered` is whether it said anything at all. True when this
    /// makes it dead (and every further silent check, until it answers or is forgotten).
    pub fn handle_check(&mut self, node: &Incarnation, answered: bool) -> bool {
        let entry = self
            .nodes
            .entry(node.node_id.clone())
            .or_insert((node.registered_ms, 0));
        if entry.0 != node.registered_ms {
            // Registered again: what the old incarnation missed says nothing about this one.
            *entry = (node.registered_ms, 0);
        }
        entry.1 = if answered {
            0
        } else {
            entry.1.saturating_add(1)
        };
        entry.1 >= self.limit
    }

    /// Keep only the nodes the registry still lists, so the table stays as small as it.
    pub fn retain(&mut self, listed: &[Node]) {
        self.nodes
            .retain(|id, _| listed.iter().any(|n| &n.node_id == id));
    }
}

impl Cluster {
    /// Remove `node`, dead by `death` at `now_ms`, if the store agrees it still is: its rooms
    /// get `node-down` and are placed again where they fit.
    pub async fn bury(
        &self,
        node: &Incarnation,
        death: Death,
        now_ms: u64,
    ) -> Result<Removal, ClusterError> {
        let removal = self.store.remove_node(node, death, now_ms).await?;
        let Removal::Removed { rooms } = &removal else {
            return Ok(removal);
        };
        counters::cluster()
            .nodes_removed
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node = %node.node_id, cause = death.as_str(), rooms = rooms.len(), "node dead: removed, its rooms move");
        // A stored permit: the relay task sees it even when it is busy right now.
        self.removed.notify_one();
        for r in rooms {
            if let Some(uri) = &r.event_notification_uri {
                self.events
                    .send(uri, event("node-down", &r.room_id, &node.node_id));
            }
        }
        for r in rooms {
            if let Err(e) = self.ensure_placed(r.clone(), now_ms).await {
                // Left unplaced, not lost: the next lookup of the room tries again.
                tracing::warn!(room = %r.room_id, error = %e, "room of a dead node not placed yet");
            }
        }
        Ok(removal)
    }

    /// A node something here suspects of being dead (a relay from it went quiet, or a
    /// client is about to be sent to it: an offer's 307, `/v1/resolve`): if its
    /// host refuses [`REFUSALS`] connections to its API in a row, its process is gone
    /// (a live one listens; a restarting one registers again as a new incarnation), and it
    /// is removed now rather than after three silent health rounds. Anything but a
    /// refusal (an answer, a timeout, an unreachable host) leaves it to the health rounds:
    /// a path that drops packets is not proof of death. True when it is removed (by this
    /// call or, meanwhile, by another).
    pub async fn confirm_dead(&self, node: &Node, me: &str) -> bool {
        if node.node_id == me {
            return false;
        }
        for i in 0..REFUSALS {
            if i > 0 {
                tokio::time::sleep(REFUSAL_SPACING).await;
            }
            if !super::probe::refused(&node.url, REFUSAL_TIMEOUT).await {
                return false;
            }
        }
        counters::cluster()
            .fast_verdicts
            .fetch_add(1, Ordering::Relaxed);
        match self
            .bury(
                &node.incarnation(),
                Death::Refused,
                crate::core::clock::now_ms(),
            )
            .await
        {
            Ok(Removal::Removed { .. }) => true,
            // Removed by someone else meanwhile (another suspicion here, or another control
            // plane): just as dead. Not sending a client to it is the point.
            Ok(Removal::Gone) => {
                self.removed.notify_one();
                true
            }
            Ok(Removal::Alive) => false,
            Err(e) => {
                tracing::warn!(node = %node.node_id, error = %e, "cannot remove a node that refuses connections");
                false
            }
        }
    }

    /// Remove every node whose lease lapsed by `now_ms`, but `me` (this node is running this
    /// very code; its lease is renewed by the same loop). The nodes removed, by id.
    pub async fn bury_lapsed(&self, me: &str, now_ms: u64) -> Result<Vec<String>, ClusterError> {
        let mut buried = Vec::new();
        for n in self.store.lapsed(now_ms).await? {
            if n.node_id == me {
                continue;
            }
            if let Removal::Removed { .. } = self.bury(&n, Death::LeaseLapsed, now_ms).await? {
                buried.push(n.node_id);
            }
        }
        Ok(buried)
    }

    /// `room` on a live node: as it is when placed, or placed again now (and its hook told
    /// `room-moved`) when its node was removed, on a node that holds its streams first (a
    /// hot standby the dead node forwarded them to: its publisher comes back where the
    /// viewers already are). `NoCapacity` leaves it unplaced.
    pub async fn ensure_placed(&self, room: Room, now_ms: u64) -> Result<Room, ClusterError> {
        if !room.unplaced() {
            return Ok(room);
        }
        let pool = PoolFilter::for_room(&room.room_id, &self.config.pools);
        let holders = self.holders(&room.room_id).await;
        let moved = match self
            .store
            .place_again(&room.room_id, &pool, self.config.strategy, &holders, now_ms)
            .await
        {
            Ok(m) => m,
            Err(StoreError::NoSuchRoom(id)) => return Err(ClusterError::NoRoom(id)),
            Err(e) => return Err(e.into()),
        };
        let placed = moved.placement.room;
        if let Some(from) = moved.from {
            counters::cluster()
                .rooms_moved
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(room = %placed.room_id, %from, node = %placed.node, "room moved off a dead node");
            if let Some(uri) = &placed.event_notification_uri {
                let mut ev = event("room-moved", &placed.room_id, &placed.node);
                ev["from"] = json!(from);
                self.events.send(uri, ev);
            }
        }
        Ok(placed)
    }

    /// The nodes that list a stream of `room` (`room/…`), in id order; none when the store
    /// cannot say (the room is then placed as a new one would be).
    async fn holders(&self, room: &str) -> Vec<String> {
        let prefix = format!("{room}/");
        match self.store.all_streams().await {
            Ok(all) => all
                .into_iter()
                .filter(|(_, streams)| streams.keys().any(|s| s.starts_with(&prefix)))
                .map(|(node, _)| node)
                .collect(),
            Err(e) => {
                tracing::warn!(%room, error = %e, "streams unreadable: the room is placed again without its holders");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests;
