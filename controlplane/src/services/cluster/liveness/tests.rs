//! Liveness on virtual time: the memory store's leases and removals, the silent-check count,
//! and what a removal does to rooms, reservations and hooks.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use switchyard_shared::config::ClusterSection;
use tokio::sync::mpsc;

use super::*;
use crate::core::store::{AnyStore, MemoryStore, Registration, RoomSpec, Strategy};
use crate::services::cluster::hooks::Notifier;

const TTL: u64 = 3_000;

fn reg(id: &str, capacity: u64) -> Registration {
    Registration {
        node_id: id.into(),
        url: format!("http://{id}:8080"),
        media_address: "192.0.2.1".into(),
        workers: 1,
        capacity,
        labels: BTreeMap::new(),
        region: None,
    }
}

fn spec(id: &str, consumers: u64, hook: bool) -> RoomSpec {
    RoomSpec {
        room_id: id.into(),
        consumers,
        max_peer_count: 2,
        event_notification_uri: hook.then(|| format!("http://hooks.test/{id}")),
        pool: Default::default(),
        region: None,
    }
}

fn cluster() -> (Cluster, mpsc::Receiver<(String, Value)>) {
    let (events, rx) = Notifier::new();
    let c = Cluster {
        store: AnyStore::Memory(MemoryStore::new()),
        config: ClusterSection::default(),
        events,
        shutdown: Default::default(),
        removed: Default::default(),
    };
    (c, rx)
}

fn drain(rx: &mut mpsc::Receiver<(String, Value)>) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    while let Ok((_, e)) = rx.try_recv() {
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
        out.push((
            s("event"),
            s("roomId"),
            format!("{}<-{}", s("node"), s("from")),
        ));
    }
    out
}

async fn reserved(c: &Cluster) -> BTreeMap<String, u64> {
    let nodes = c.store.list_nodes().await.expect("nodes");
    nodes.into_iter().map(|n| (n.node_id, n.reserved)).collect()
}

#[tokio::test]
async fn a_lease_lapses_three_intervals_after_its_last_renewal() {
    let s = MemoryStore::new();
    let a = s.register_node(reg("a", 10)).await.expect("a");
    s.register_node(reg("outside", 10)).await.expect("outside");
    // Registered but never renewed (an agent through the API): judged by checks alone.
    assert!(s.lapsed(1_000_000).await.expect("lapsed").is_empty());
    s.renew_lease("a", TTL, 10_000).await.expect("renew");
    assert!(s.lapsed(12_999).await.expect("lapsed").is_empty());
    s.renew_lease("a", TTL, 12_000).await.expect("renew");
    assert!(s.lapsed(14_999).await.expect("lapsed").is_empty());
    assert_eq!(s.lapsed(15_000).await.expect("lapsed"), [a.incarnation()]);
    // A verdict reached before the lease ran out is refused by the store.
    assert_eq!(
        s.remove_node(&a.incarnation(), Death::LeaseLapsed, 14_000)
            .await,
        Ok(Removal::Alive)
    );
    assert_eq!(
        s.renew_lease("nobody", TTL, 0).await,
        Err(StoreError::NoSuchNode("nobody".into()))
    );
}

#[test]
fn three_silent_checks_in_a_row_make_a_node_dead() {
    let mut m = Misses::new(SILENT_CHECKS);
    let a = Incarnation {
        node_id: "a".into(),
        registered_ms: 1,
    };
    assert!(!m.handle_check(&a, false));
    assert!(!m.handle_check(&a, false));
    // An answer (a 503 too) starts the count again.
    assert!(!m.handle_check(&a, true));
    assert!(!m.handle_check(&a, false));
    assert!(!m.handle_check(&a, false));
    assert!(m.handle_check(&a, false));
    // The same id registered again is another incarnation: its count starts at zero.
    let again = Incarnation {
        registered_ms: 2,
        ..a.clone()
    };
    assert!(!m.handle_check(&again, false));
    // Nodes no longer listed are forgotten.
    m.retain(&[]);
    assert!(m.nodes.is_empty());
}

#[tokio::test]
async fn a_dead_nodes_rooms_move_and_its_reservations_go() {
    let (c, mut rx) = cluster();
    let a = c.store.register_node(reg("a", 100)).await.expect("a");
    c.store.renew_lease("a", TTL, 0).await.expect("lease");
    // Both rooms on a, the only node yet; then b comes.
    for (id, hook) in [("r1", true), ("r2", false)] {
        let p = c
            .store
            .reserve_room(spec(id, 10, hook), Strategy::LeastLoaded)
            .await
            .expect("placed");
        assert_eq!(p.node.node_id, "a");
    }
    c.store.register_node(reg("b", 50)).await.expect("b");
    assert_eq!(reserved(&c).await["a"], 20);

    assert!(c.bury_lapsed("b", TTL - 1).await.expect("sweep").is_empty());
    assert_eq!(
        c.bury_lapsed("b", TTL).await.expect("sweep"),
        ["a".to_owned()]
    );
    // a is gone, with its reservations; b holds both rooms now.
    assert_eq!(reserved(&c).await, BTreeMap::from([("b".into(), 20)]));
    for r in c.store.list_rooms().await.expect("rooms") {
        assert_eq!(r.node, "b", "{r:?}");
        assert_eq!(r.placed_ms, TTL);
        assert_eq!(r.last_node, None);
    }
    // Only the room with a hook hears of it: node-down first, then where it went.
    assert_eq!(
        drain(&mut rx),
        [
            ("node-down".into(), "r1".into(), "a<-".into()),
            ("room-moved".into(), "r1".into(), "b<-a".into()),
        ]
    );
    // A second verdict on the same node (another control plane's) finds it gone.
    assert_eq!(
        c.bury(&a.incarnation(), Death::Silent, TTL)
            .await
            .expect("bury"),
        Removal::Gone
    );
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_removing_one_node_remove_it_once() {
    for round in 0..50 {
        let s = Arc::new(MemoryStore::new());
        let a = s.register_node(reg("a", 100)).await.expect("a");
        s.register_node(reg("b", 100)).await.expect("b");
        s.reserve_room(spec("r", 5, false), Strategy::ConsistentHash)
            .await
            .expect("room");
        let tasks: Vec<_> = [Death::LeaseLapsed, Death::Silent]
            .into_iter()
            .map(|death| {
                let (s, a) = (s.clone(), a.incarnation());
                // No lease was ever renewed, so the lapse verdict stands as well.
                tokio::spawn(async move { s.remove_node(&a, death, u64::MAX).await })
            })
            .collect();
        let mut removed = 0;
        for t in tasks {
            match t.await.expect("task").expect("remove") {
                Removal::Removed { rooms } => {
                    removed += 1;
                    // The room is listed only if it was on a.
                    assert!(rooms.iter().all(|r| r.last_node.as_deref() == Some("a")));
                }
                Removal::Gone => {}
                Removal::Alive => panic!("round {round}: a is dead"),
            }
        }
        assert_eq!(removed, 1, "round {round}");
    }
}

#[tokio::test]
async fn a_room_no_node_fits_stays_unplaced_until_one_does() {
    let (c, mut rx) = cluster();
    let a = c.store.register_node(reg("a", 100)).await.expect("a");
    c.store
        .reserve_room(spec("big", 60, true), Strategy::LeastLoaded)
        .await
        .expect("room");
    c.store.register_node(reg("b", 50)).await.expect("b");
    let removal = c
        .bury(&a.incarnation(), Death::Silent, 5)
        .await
        .expect("bury");
    assert!(matches!(removal, Removal::Removed { rooms } if rooms.len() == 1));
    // Not lost: listed, unplaced, with no URL.
    let (r, node) = c.room("big").await.expect("room");
    assert!(r.unplaced() && node.is_none(), "{r:?}");
    assert_eq!(r.last_node.as_deref(), Some("a"));
    assert_eq!(reserved(&c).await["b"], 0);
    // A node with room arrives: the next lookup places it there.
    c.store.register_node(reg("c", 100)).await.expect("c");
    let (r, node) = c.room("big").await.expect("room");
    assert_eq!(
        (r.node.as_str(), node.as_ref().map(|n| n.url.as_str())),
        ("c", Some("http://c:8080"))
    );
    assert_eq!(reserved(&c).await["c"], 60);
    assert_eq!(
        drain(&mut rx),
        [
            ("node-down".into(), "big".into(), "a<-".into()),
            ("room-moved".into(), "big".into(), "c<-a".into()),
        ]
    );
}

#[tokio::test]
async fn a_returning_node_registers_cleanly_and_an_old_verdict_spares_it() {
    let (c, _rx) = cluster();
    let old = c.store.register_node(reg("a", 100)).await.expect("a");
    c.store.register_node(reg("b", 100)).await.expect("b");
    c.store.renew_lease("a", TTL, 0).await.expect("lease");
    c.store
        .reserve_room(spec("r", 10, false), Strategy::ConsistentHash)
        .await
        .expect("room");
    assert_eq!(c.bury_lapsed("b", TTL).await.expect("sweep"), ["a"]);
    // Its control plane's next renewal says it was removed; it registers again.
    assert_eq!(
        c.store.renew_lease("a", TTL, TTL + 1).await,
        Err(StoreError::NoSuchNode("a".into()))
    );
    // The clock of this test is virtual, the registration time real: make sure they differ.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let new = c.store.register_node(reg("a", 100)).await.expect("again");
    assert_eq!((new.reserved, new.healthy), (0, true));
    c.store.renew_lease("a", TTL, TTL + 1).await.expect("renew");
    // Its rooms stay where they moved; a stale verdict on the old incarnation spares it.
    let r = c.store.get_room("r").await.expect("get").expect("room");
    assert_eq!(r.node, "b");
    for death in [Death::Silent, Death::LeaseLapsed] {
        assert_eq!(
            c.bury(&old.incarnation(), death, u64::MAX)
                .await
                .expect("bury"),
            Removal::Alive
        );
    }
    assert!(c.bury_lapsed("b", TTL + 2).await.expect("sweep").is_empty());
    assert_eq!(
        reserved(&c).await,
        BTreeMap::from([("a".into(), 0), ("b".into(), 10)])
    );
}
