//! The cluster in this process's memory: the store of a single node (the default), and of
//! tests. Lost when the process exits.
//!
//! Leases keep their expiry as a time and compare it with the `now_ms` each call is given,
//! never the clock, so liveness runs here on virtual time.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::contract::{Store, StoreError};
use super::entropy::Entropy;
use super::placement::{self, Near, PoolFilter, Ranking, RoomSpec, Strategy};
use super::records::{
    Death, Incarnation, Node, Placement, Registration, Removal, Replacement, Room,
};
use crate::core::clock::now_ms;

#[derive(Default)]
struct Memory {
    nodes: BTreeMap<String, Node>,
    rooms: BTreeMap<String, Room>,
    /// Node → stream → hops.
    streams: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    round_robin: u64,
    /// (node, forward id) → body.
    forwards: BTreeMap<(String, String), String>,
    /// Node → when its lease runs out (ms). Only nodes that renewed one are here.
    leases: BTreeMap<String, u64>,
}

impl Memory {
    /// `random` for the strategies that draw, the next turn for round robin.
    fn entropy_for(&mut self, strategy: Strategy, random: u64) -> u64 {
        match strategy {
            Strategy::RoundRobin => {
                self.round_robin += 1;
                self.round_robin
            }
            _ => random,
        }
    }

    /// Reserve `spec.consumers` on the node `ranking` (ranked from `view`) chooses among the
    /// nodes as they are now, and write the room: the atomic commit every placement ends
    /// with.
    fn place(
        &mut self,
        spec: RoomSpec,
        view: &[Node],
        ranking: &Ranking,
    ) -> Result<Placement, StoreError> {
        let need = spec.consumers;
        let chosen = ranking
            .choose(need, |i| self.nodes.get(&view.get(i)?.node_id))
            .ok_or(StoreError::NoCapacity { need })?;
        let node = self
            .nodes
            .get_mut(&view[chosen].node_id)
            .ok_or(StoreError::NoCapacity { need })?;
        node.reserved += need;
        let node = node.clone();
        let created = now_ms();
        let room = Room {
            room_id: spec.room_id.clone(),
            node: node.node_id.clone(),
            consumers: need,
            max_peer_count: spec.max_peer_count,
            event_notification_uri: spec.event_notification_uri,
            created_ms: created,
            placed_ms: created,
            last_node: None,
            region: spec.region,
        };
        self.rooms.insert(spec.room_id, room.clone());
        Ok(Placement { room, node })
    }
}

/// The cluster in this process's memory: one node, or tests. Lost when the process exits.
pub struct MemoryStore {
    inner: Mutex<Memory>,
    entropy: Entropy,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        let inner = Mutex::new(Memory::default());
        let seed = &inner as *const _ as u64;
        Self {
            inner,
            entropy: Entropy::new(seed),
        }
    }

    /// A store whose placement entropy is the sequence `seed` starts (not the clock's), so a
    /// simulation of placements runs the same every time.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            inner: Mutex::new(Memory::default()),
            entropy: Entropy::fixed(seed),
        }
    }

    /// Reserve a room on a node ranked from `view`, a control plane's picture of the nodes
    /// (read earlier, possibly stale): the strategy ranks `view`, then the store reserves
    /// on the first ranked node that still accepts the room as the store holds it now.
    /// This is what [`RedisStore`](super::RedisStore) does with the snapshot it read and
    /// its `RESERVE` script, so a simulation of many control planes placing from stale
    /// views runs the real placement path. A stale view costs balance, never capacity: no
    /// node is over-committed. `NoCapacity` when no ranked node still accepts the room
    /// (the caller may read again and retry, as the Redis store does).
    pub fn reserve_from_view(
        &self,
        spec: RoomSpec,
        strategy: Strategy,
        view: &[Node],
    ) -> Result<Placement, StoreError> {
        let entropy = self.entropy.next();
        let mut g = self.lock();
        if g.rooms.contains_key(&spec.room_id) {
            return Err(StoreError::RoomExists(spec.room_id));
        }
        let e = g.entropy_for(strategy, entropy);
        let ranking = placement::rank(
            view,
            &spec.room_id,
            spec.consumers,
            &spec.pool,
            Near::region(spec.region.as_deref()),
            strategy,
            e,
        );
        g.place(spec, view, &ranking)
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        // A panic while holding the lock leaves maps that are still consistent (every update
        // is a single insert or field write), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, node: &str, f: impl FnOnce(&mut Node)) -> Result<(), StoreError> {
        let mut g = self.lock();
        let n = g
            .nodes
            .get_mut(node)
            .ok_or_else(|| StoreError::NoSuchNode(node.into()))?;
        f(n);
        Ok(())
    }
}

impl Store for MemoryStore {
    async fn register_node(&self, reg: Registration) -> Result<Node, StoreError> {
        let now = now_ms();
        let mut g = self.lock();
        let reserved = g.nodes.get(&reg.node_id).map_or(0, |n| n.reserved);
        let node = Node {
            node_id: reg.node_id.clone(),
            url: reg.url,
            media_address: reg.media_address,
            workers: reg.workers,
            capacity: reg.capacity,
            reserved,
            healthy: true,
            draining: false,
            overloaded: false,
            load: BTreeMap::new(),
            labels: reg.labels,
            region: reg.region,
            relay_rtt_ms: BTreeMap::new(),
            registered_ms: now,
            heartbeat_ms: now,
        };
        // A fresh registration holds no lease until its control plane renews one, so a lease
        // that lapsed on the old entry never condemns the new one.
        g.leases.remove(&reg.node_id);
        g.nodes.insert(reg.node_id, node.clone());
        Ok(node)
    }

    async fn heartbeat(
        &self,
        node: &str,
        overloaded: bool,
        load: &BTreeMap<String, f64>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.update(node, |n| {
            n.overloaded = overloaded;
            n.load = load.clone();
            n.heartbeat_ms = now;
        })
    }

    async fn set_health(&self, node: &str, healthy: bool) -> Result<(), StoreError> {
        self.update(node, |n| n.healthy = healthy)
    }

    async fn set_relay_rtt(
        &self,
        node: &str,
        rtt_ms: &BTreeMap<String, f64>,
    ) -> Result<(), StoreError> {
        self.update(node, |n| n.relay_rtt_ms = rtt_ms.clone())
    }

    async fn drain(&self, node: &str, draining: bool) -> Result<(), StoreError> {
        self.update(node, |n| n.draining = draining)
    }

    async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        Ok(self.lock().nodes.values().cloned().collect())
    }

    async fn renew_lease(&self, node: &str, ttl_ms: u64, now_ms: u64) -> Result<(), StoreError> {
        let mut g = self.lock();
        if !g.nodes.contains_key(node) {
            return Err(StoreError::NoSuchNode(node.into()));
        }
        g.leases
            .insert(node.to_owned(), now_ms.saturating_add(ttl_ms));
        Ok(())
    }

    async fn lapsed(&self, now_ms: u64) -> Result<Vec<Incarnation>, StoreError> {
        let g = self.lock();
        Ok(g.leases
            .iter()
            .filter(|(_, &until)| until <= now_ms)
            .filter_map(|(id, _)| g.nodes.get(id).map(Node::incarnation))
            .collect())
    }

    async fn remove_node(
        &self,
        node: &Incarnation,
        death: Death,
        now_ms: u64,
    ) -> Result<Removal, StoreError> {
        let mut g = self.lock();
        let Some(n) = g.nodes.get(&node.node_id) else {
            return Ok(Removal::Gone);
        };
        if n.registered_ms != node.registered_ms {
            return Ok(Removal::Alive);
        }
        let held = g.leases.get(&node.node_id).is_some_and(|&t| t > now_ms);
        if death == Death::LeaseLapsed && held {
            return Ok(Removal::Alive);
        }
        g.nodes.remove(&node.node_id);
        g.leases.remove(&node.node_id);
        g.streams.remove(&node.node_id);
        let mut rooms = Vec::new();
        for r in g.rooms.values_mut().filter(|r| r.node == node.node_id) {
            r.last_node = Some(std::mem::take(&mut r.node));
            rooms.push(r.clone());
        }
        Ok(Removal::Removed { rooms })
    }

    async fn place_again(
        &self,
        room: &str,
        pool: &PoolFilter,
        strategy: Strategy,
        holders: &[String],
        now_ms: u64,
    ) -> Result<Replacement, StoreError> {
        let entropy = self.entropy.next();
        let mut g = self.lock();
        let r = g
            .rooms
            .get(room)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchRoom(room.into()))?;
        if !r.unplaced() {
            let node = g
                .nodes
                .get(&r.node)
                .cloned()
                .ok_or_else(|| StoreError::NoSuchNode(r.node.clone()))?;
            return Ok(Replacement {
                placement: Placement { room: r, node },
                from: None,
            });
        }
        let mut nodes: Vec<Node> = g.nodes.values().cloned().collect();
        let e = g.entropy_for(strategy, entropy);
        let ranking = placement::rank(
            &nodes,
            room,
            r.consumers,
            pool,
            Near {
                holders,
                region: r.region.as_deref(),
            },
            strategy,
            e,
        );
        // Ranked and chosen under one lock: the view is the nodes as they are.
        let i = ranking
            .choose(r.consumers, |i| nodes.get(i))
            .ok_or(StoreError::NoCapacity { need: r.consumers })?;
        nodes[i].reserved += r.consumers;
        let node = nodes.swap_remove(i);
        let mut moved = r;
        let from = moved.last_node.take().unwrap_or_default();
        moved.node = node.node_id.clone();
        moved.placed_ms = now_ms;
        g.nodes.insert(node.node_id.clone(), node.clone());
        g.rooms.insert(room.to_owned(), moved.clone());
        Ok(Replacement {
            placement: Placement { room: moved, node },
            from: Some(from),
        })
    }

    async fn reserve_room(
        &self,
        spec: RoomSpec,
        strategy: Strategy,
    ) -> Result<Placement, StoreError> {
        let entropy = self.entropy.next();
        let mut g = self.lock();
        if g.rooms.contains_key(&spec.room_id) {
            return Err(StoreError::RoomExists(spec.room_id));
        }
        // Ranked and committed under one lock: this view is never stale.
        let nodes: Vec<Node> = g.nodes.values().cloned().collect();
        let e = g.entropy_for(strategy, entropy);
        let ranking = placement::rank(
            &nodes,
            &spec.room_id,
            spec.consumers,
            &spec.pool,
            Near::region(spec.region.as_deref()),
            strategy,
            e,
        );
        g.place(spec, &nodes, &ranking)
    }

    async fn release_room(&self, room: &str) -> Result<Room, StoreError> {
        let mut g = self.lock();
        let r = g
            .rooms
            .remove(room)
            .ok_or_else(|| StoreError::NoSuchRoom(room.into()))?;
        if let Some(n) = g.nodes.get_mut(&r.node) {
            n.reserved = n.reserved.saturating_sub(r.consumers);
        }
        Ok(r)
    }

    async fn get_room(&self, room: &str) -> Result<Option<Room>, StoreError> {
        Ok(self.lock().rooms.get(room).cloned())
    }

    async fn list_rooms(&self) -> Result<Vec<Room>, StoreError> {
        Ok(self.lock().rooms.values().cloned().collect())
    }

    async fn set_node_streams(
        &self,
        node: &str,
        streams: BTreeMap<String, Vec<String>>,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        if streams.is_empty() {
            g.streams.remove(node);
        } else {
            g.streams.insert(node.to_owned(), streams);
        }
        Ok(())
    }

    async fn stream_sources(&self, stream: &str) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        Ok(self
            .lock()
            .streams
            .iter()
            .filter_map(|(node, s)| Some((node.clone(), s.get(stream)?.clone())))
            .collect())
    }

    async fn all_streams(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, Vec<String>>>, StoreError> {
        let g = self.lock();
        Ok(g.streams
            .iter()
            .filter(|(node, _)| g.nodes.contains_key(*node))
            .map(|(node, s)| (node.clone(), s.clone()))
            .collect())
    }

    async fn put_forward(&self, node: &str, id: &str, body: &str) -> Result<(), StoreError> {
        self.lock()
            .forwards
            .insert((node.into(), id.into()), body.into());
        Ok(())
    }

    async fn delete_forward(&self, node: &str, id: &str) -> Result<(), StoreError> {
        self.lock().forwards.remove(&(node.into(), id.into()));
        Ok(())
    }

    async fn list_forwards(&self, node: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .lock()
            .forwards
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|((_, id), body)| (id.clone(), body.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Arc;

    fn reg(id: &str, capacity: u64) -> Registration {
        Registration {
            node_id: id.into(),
            url: format!("http://{id}:8080"),
            media_address: "127.0.0.1".into(),
            workers: 1,
            capacity,
            labels: BTreeMap::new(),
            region: None,
        }
    }

    fn spec(id: &str, consumers: u64) -> RoomSpec {
        RoomSpec {
            room_id: id.into(),
            consumers,
            max_peer_count: 2,
            event_notification_uri: None,
            pool: Default::default(),
            region: None,
        }
    }

    fn block<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn reserve_release_and_errors() {
        block(async {
            let s = MemoryStore::new();
            assert_eq!(
                s.reserve_room(spec("r", 1), Strategy::LeastLoaded).await,
                Err(StoreError::NoCapacity { need: 1 })
            );
            s.register_node(reg("a", 10)).await.unwrap();
            s.register_node(reg("b", 4)).await.unwrap();
            let p = s
                .reserve_room(spec("r1", 6), Strategy::LeastLoaded)
                .await
                .unwrap();
            assert_eq!(p.node.node_id, "a");
            assert_eq!(p.node.reserved, 6);
            assert_eq!(
                s.reserve_room(spec("r1", 1), Strategy::LeastLoaded).await,
                Err(StoreError::RoomExists("r1".into()))
            );
            // Re-registering keeps the reservation.
            let a = s.register_node(reg("a", 10)).await.unwrap();
            assert_eq!(a.reserved, 6);
            s.drain("b", true).await.unwrap();
            assert!(matches!(
                s.reserve_room(spec("r2", 4), Strategy::RoundRobin).await,
                Ok(Placement { node, .. }) if node.node_id == "a"
            ));
            assert_eq!(
                s.reserve_room(spec("r3", 1), Strategy::ConsistentHash)
                    .await,
                Err(StoreError::NoCapacity { need: 1 })
            );
            assert_eq!(
                s.set_health("zz", false).await,
                Err(StoreError::NoSuchNode("zz".into()))
            );
            let r = s.release_room("r1").await.unwrap();
            assert_eq!((r.node.as_str(), r.consumers), ("a", 6));
            assert_eq!(
                s.release_room("r1").await,
                Err(StoreError::NoSuchRoom("r1".into()))
            );
            assert_eq!(s.list_rooms().await.unwrap().len(), 1);
            let nodes = s.list_nodes().await.unwrap();
            assert_eq!(nodes[0].reserved, 4);
            assert_eq!(nodes[1].reserved, 0);
            s.set_health("a", false).await.unwrap();
            s.drain("b", false).await.unwrap();
            s.heartbeat("b", true, &BTreeMap::new()).await.unwrap();
            assert!(s
                .reserve_room(spec("r4", 1), Strategy::LeastLoaded)
                .await
                .is_err());
            s.heartbeat("b", false, &BTreeMap::new()).await.unwrap();
            let p = s
                .reserve_room(spec("r4", 1), Strategy::LeastLoaded)
                .await
                .unwrap();
            assert_eq!(p.node.node_id, "b");
        });
    }

    #[test]
    fn nodes_publish_their_streams() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let s = MemoryStore::new();
            let set = |list: &[(&str, Vec<String>)]| {
                list.iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect::<BTreeMap<_, _>>()
            };
            s.set_node_streams("a", set(&[("r/cam", vec![]), ("r/mic", vec![])]))
                .await
                .unwrap();
            s.set_node_streams("b", set(&[("r/cam", vec!["a".into()])]))
                .await
                .unwrap();
            assert_eq!(
                s.stream_sources("r/cam").await.unwrap(),
                vec![("a".into(), vec![]), ("b".into(), vec!["a".into()])]
            );
            s.set_node_streams("a", set(&[("r/cam", vec![])]))
                .await
                .unwrap();
            s.set_node_streams("b", BTreeMap::new()).await.unwrap();
            assert!(s.stream_sources("r/mic").await.unwrap().is_empty());
            assert_eq!(s.stream_sources("r/cam").await.unwrap().len(), 1);
            // The whole view lists registered nodes only, with what each wrote last.
            assert!(s.all_streams().await.unwrap().is_empty());
            s.register_node(reg("a", 10)).await.unwrap();
            s.register_node(reg("b", 10)).await.unwrap();
            s.set_node_streams("b", set(&[("r/cam", vec!["a".into()])]))
                .await
                .unwrap();
            let all = s.all_streams().await.unwrap();
            assert_eq!(
                all.keys().collect::<Vec<_>>(),
                ["a", "b"],
                "every registered node with streams"
            );
            assert_eq!(all["a"], set(&[("r/cam", vec![])]));
            assert_eq!(all["b"], set(&[("r/cam", vec!["a".into()])]));
        });
    }

    #[test]
    fn forwards_are_kept_per_node() {
        let s = MemoryStore::new();
        block(s.put_forward("n1", "fwd-1", "{\"a\":1}")).expect("put");
        block(s.put_forward("n1", "fwd-1", "{\"a\":2}")).expect("replace");
        block(s.put_forward("n2", "fwd-1", "{}")).expect("put");
        assert_eq!(
            block(s.list_forwards("n1")).expect("list"),
            [("fwd-1".to_owned(), "{\"a\":2}".to_owned())]
        );
        block(s.delete_forward("n1", "fwd-1")).expect("delete");
        block(s.delete_forward("n1", "fwd-1")).expect("delete again");
        assert!(block(s.list_forwards("n1")).expect("list").is_empty());
        assert_eq!(block(s.list_forwards("n2")).expect("list").len(), 1);
    }

    #[test]
    fn concurrent_reservations_never_over_commit() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let s = Arc::new(MemoryStore::new());
            for (id, cap) in [("a", 500), ("b", 300), ("c", 200)] {
                s.register_node(reg(id, cap)).await.unwrap();
            }
            let mut tasks = Vec::new();
            for t in 0..8 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ok = Vec::new();
                    for i in 0..100 {
                        let id = format!("t{t}-{i}");
                        if let Ok(p) = s
                            .reserve_room(spec(&id, 1 + i % 3), Strategy::LeastLoaded)
                            .await
                        {
                            ok.push(p.room);
                        }
                    }
                    ok
                }));
            }
            let mut placed = Vec::new();
            for t in tasks {
                placed.extend(t.await.unwrap());
            }
            let nodes = s.list_nodes().await.unwrap();
            for n in &nodes {
                let sum: u64 = placed
                    .iter()
                    .filter(|r| r.node == n.node_id)
                    .map(|r| r.consumers)
                    .sum();
                assert_eq!(sum, n.reserved, "{}", n.node_id);
                assert!(n.reserved <= n.capacity);
            }
            assert_eq!(s.list_rooms().await.unwrap().len(), placed.len());
        });
    }
}
