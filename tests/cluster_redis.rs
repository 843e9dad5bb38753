//! The cluster store against a real `redis-server` on loopback: two independent control
//! planes (two `RedisStore`s, two connections) place rooms at once and never over-commit a
//! node; Redis going away answers `Unavailable`; the state outlives Redis and control plane
//! restarts (append-only file, fsync always).
//!
//! Needs `redis-server` on the PATH (scripts/test.sh installs it); skipped loudly without.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::Redis;
use switchyard_controlplane::cluster::redis::RedisStore;
use switchyard_controlplane::cluster::{
    consumers_for, placement, MemoryStore, Node, Registration, Room, RoomSpec, Store, StoreError,
    Strategy,
};

fn reg(id: &str, capacity: u64) -> Registration {
    Registration {
        node_id: id.into(),
        url: format!("http://{id}.test:8080"),
        media_address: "192.0.2.1".into(),
        workers: 4,
        capacity,
        labels: BTreeMap::from([("pool".into(), "default".into())]),
        region: None,
    }
}

const CAPACITY: [(&str, u64); 3] = [("a", 3000), ("b", 2000), ("c", 1000)];
const ROOMS: usize = 2000;
const TASKS: usize = 16;

async fn reserved_by_node(store: &RedisStore) -> BTreeMap<String, u64> {
    store
        .list_nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| (n.node_id, n.reserved))
        .collect()
}

fn check_consistent(rooms: &[Room], reserved: &BTreeMap<String, u64>) {
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rooms {
        *sums.entry(r.node.as_str()).or_default() += r.consumers;
    }
    for (id, cap) in CAPACITY {
        let sum = sums.get(id).copied().unwrap_or(0);
        assert_eq!(
            sum, reserved[id],
            "node {id}: rooms and reservation disagree"
        );
        assert!(sum <= cap, "node {id} over-committed: {sum} > {cap}");
    }
    for bad in ["drained", "sick", "hot"] {
        assert!(!sums.contains_key(bad), "a room was placed on {bad}");
        assert_eq!(reserved[bad], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_never_over_commit() {
    if !Redis::required("two_control_planes_never_over_commit") {
        return;
    }
    let dir: PathBuf =
        std::env::temp_dir().join(format!("switchyard-redis-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut redis = Redis::start_free(&dir, true);
    let port = redis.port;

    let planes = [
        Arc::new(RedisStore::new(&redis.url()).expect("store 1")),
        Arc::new(RedisStore::new(&redis.url()).expect("store 2")),
    ];
    for (id, cap) in CAPACITY {
        planes[0]
            .register_node(reg(id, cap))
            .await
            .expect("register");
    }
    // Big nodes that must never get a room: drained, unhealthy, overloaded.
    for (id, plane) in [("drained", 0), ("sick", 1), ("hot", 0)] {
        planes[plane]
            .register_node(reg(id, 100_000))
            .await
            .expect("register");
    }
    planes[1].drain("drained", true).await.expect("drain");
    planes[0].set_health("sick", false).await.expect("health");
    planes[1]
        .heartbeat("hot", true, &BTreeMap::from([("cpu".to_owned(), 0.95)]))
        .await
        .expect("heartbeat");
    assert_eq!(
        planes[0].drain("nobody", true).await,
        Err(StoreError::NoSuchNode("nobody".into()))
    );

    // 2,000 rooms of 2 to 4 peers (2 to 12 consumers each, ~13,000 in all) on 6,000 of
    // capacity, from 16 tasks spread over both control planes and all three strategies.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = planes[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut placed = Vec::new();
            let mut full = 0;
            for i in (t..ROOMS).step_by(TASKS) {
                let peers = 2 + (i % 3) as u32;
                let spec = RoomSpec {
                    pool: Default::default(),
                    region: None,
                    room_id: format!("room-{i:04}"),
                    consumers: consumers_for(peers),
                    max_peer_count: peers,
                    event_notification_uri: (i % 2 == 0).then(|| format!("http://hooks.test/{i}")),
                };
                let strategy = [
                    Strategy::LeastLoaded,
                    Strategy::RoundRobin,
                    Strategy::ConsistentHash,
                ][i % 3];
                match store.reserve_room(spec, strategy).await {
                    Ok(p) => {
                        assert!(p.node.reserved <= p.node.capacity);
                        placed.push(p.room);
                    }
                    Err(StoreError::NoCapacity { .. }) => full += 1,
                    Err(e) => panic!("reserve: {e}"),
                }
            }
            (placed, full)
        }));
    }
    let mut placed = Vec::new();
    let mut full = 0;
    for t in tasks {
        let (p, f) = t.await.expect("task");
        placed.extend(p);
        full += f;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{ROOMS} reservations from 2 control planes in {elapsed:?}: {} placed, {full} refused (full)",
        placed.len()
    );
    assert!(full > 0, "capacity must run out");
    let reserved = reserved_by_node(&planes[0]).await;
    let total: u64 = CAPACITY.iter().map(|(id, _)| reserved[*id]).sum();
    assert!(total >= 6000 - 3 * 12, "capacity left unused: {reserved:?}");

    // Every created room is in the store exactly once, on the node it was placed on.
    let mut stored = planes[1].list_rooms().await.expect("rooms");
    assert_eq!(stored.len(), placed.len());
    let ids: BTreeSet<&str> = stored.iter().map(|r| r.room_id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "a room id listed twice");
    placed.sort_by(|a, b| a.room_id.cmp(&b.room_id));
    for (s, p) in stored.iter().zip(&placed) {
        assert_eq!(
            (&s.room_id, &s.node, s.consumers),
            (&p.room_id, &p.node, p.consumers)
        );
        assert_eq!(s.event_notification_uri, p.event_notification_uri);
    }
    check_consistent(&stored, &reserved);

    // A room id is placed once, whichever control plane asks.
    let again = RoomSpec {
        pool: Default::default(),
        region: None,
        room_id: placed[0].room_id.clone(),
        consumers: 1,
        max_peer_count: 1,
        event_notification_uri: None,
    };
    assert_eq!(
        planes[1].reserve_room(again, Strategy::LeastLoaded).await,
        Err(StoreError::RoomExists(placed[0].room_id.clone()))
    );

    // Both planes close every other room at once; the capacity comes back exactly.
    let mut tasks = Vec::new();
    for (k, chunk) in placed.chunks(placed.len().div_ceil(4)).enumerate() {
        let store = planes[k % 2].clone();
        let ids: Vec<String> = chunk.iter().step_by(2).map(|r| r.room_id.clone()).collect();
        tasks.push(tokio::spawn(async move {
            for id in ids {
                store.release_room(&id).await.expect("release");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    stored = planes[0].list_rooms().await.expect("rooms");
    let reserved = reserved_by_node(&planes[1]).await;
    check_consistent(&stored, &reserved);
    assert_eq!(
        planes[0].release_room(&placed[0].room_id).await,
        Err(StoreError::NoSuchRoom(placed[0].room_id.clone()))
    );

    // Redis goes away: placement answers Unavailable, quickly.
    redis.kill();
    let spec = RoomSpec {
        pool: Default::default(),
        region: None,
        room_id: "while-down".into(),
        consumers: 1,
        max_peer_count: 1,
        event_notification_uri: None,
    };
    let t = Instant::now();
    for plane in &planes {
        match plane
            .reserve_room(spec.clone(), Strategy::LeastLoaded)
            .await
        {
            Err(StoreError::Unavailable(msg)) => eprintln!("redis down: {msg}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            plane.list_rooms().await,
            Err(StoreError::Unavailable(_))
        ));
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );

    // Redis back (same directory, append-only file): the same stores recover by themselves,
    // and a fresh one (a restarted control plane) reads every room and reservation back.
    let redis = Redis::start(&dir, port, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let back = loop {
        match planes[0].list_rooms().await {
            Ok(r) => break r,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("after restart: {e}"),
        }
    };
    assert_eq!(back, stored, "rooms lost over a redis restart");
    let fresh = RedisStore::new(&redis.url()).expect("store 3");
    assert_eq!(fresh.list_rooms().await.expect("rooms"), stored);
    assert_eq!(reserved_by_node(&fresh).await, reserved);
    let p = fresh
        .reserve_room(spec, Strategy::LeastLoaded)
        .await
        .expect("placed after restart");
    assert!(CAPACITY.iter().any(|(id, _)| *id == p.node.node_id));
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue #5: each node's published streams (with hop lists) as one hash per node, replaced
/// whole; a lookup finds every node that has a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_publish_their_streams() {
    if !Redis::required("nodes_publish_their_streams") {
        return;
    }
    let dir: PathBuf =
        std::env::temp_dir().join(format!("switchyard-redis-streams-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let redis = Redis::start_free(&dir, false);
    let store = RedisStore::new(&redis.url()).expect("store");
    for id in ["a", "b", "c"] {
        store.register_node(reg(id, 10)).await.expect("register");
    }
    let hops = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let streams = |list: &[(&str, &[&str])]| {
        list.iter()
            .map(|(s, h)| (s.to_string(), hops(h)))
            .collect::<BTreeMap<_, _>>()
    };
    store
        .set_node_streams("a", streams(&[("r/cam", &[]), ("r/mic", &[])]))
        .await
        .expect("a");
    store
        .set_node_streams("b", streams(&[("r/cam", &["a"])]))
        .await
        .expect("b");
    assert_eq!(
        store.stream_sources("r/cam").await.expect("lookup"),
        vec![("a".to_owned(), vec![]), ("b".to_owned(), hops(&["a"]))]
    );
    // Replaced whole: r/mic is gone from a, and an empty set clears b.
    store
        .set_node_streams("a", streams(&[("r/cam", &[])]))
        .await
        .expect("a again");
    store
        .set_node_streams("b", BTreeMap::new())
        .await
        .expect("b cleared");
    assert_eq!(store.stream_sources("r/mic").await.expect("lookup"), vec![]);
    assert_eq!(
        store.stream_sources("r/cam").await.expect("lookup"),
        vec![("a".to_owned(), vec![])]
    );
    // The whole view: every registered node with streams, as each wrote them last.
    store
        .set_node_streams("c", streams(&[("r/cam", &["a", "b"])]))
        .await
        .expect("c");
    assert_eq!(
        store.all_streams().await.expect("all"),
        BTreeMap::from([
            ("a".to_owned(), streams(&[("r/cam", &[])])),
            ("c".to_owned(), streams(&[("r/cam", &["a", "b"])])),
        ])
    );
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Redis store's `RESERVE` script and the memory store's commit make the same walk
/// (`placement::Ranking::choose`): given the same stale view, they put each room on the same
/// node. The view is read once and never refreshed, as a control plane that cached it would,
/// so the load bound is only kept because the commit checks it against the nodes as they
/// are; rooms from region `x` stay in `x` while a node there accepts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_commit_walks_as_the_rust_one_does() {
    if !Redis::required("the_redis_commit_walks_as_the_rust_one_does") {
        return;
    }
    let dir: PathBuf =
        std::env::temp_dir().join(format!("switchyard-redis-walk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let redis = Redis::start_free(&dir, false);
    let remote = RedisStore::new(&redis.url()).expect("store");
    let local = MemoryStore::new();
    let nodes = [
        ("x1", 400, "x"),
        ("x2", 200, "x"),
        ("y1", 800, "y"),
        ("y2", 300, "y"),
    ];
    for (id, capacity, region) in nodes {
        let r = Registration {
            region: Some(region.into()),
            ..reg(id, capacity)
        };
        remote.register_node(r.clone()).await.expect("register");
        local.register_node(r).await.expect("register");
    }
    let sorted = |mut v: Vec<Node>| {
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    };
    let view = sorted(remote.list_nodes().await.expect("nodes"));
    let facts = |v: &[Node]| {
        v.iter()
            .map(|n| (n.node_id.clone(), n.capacity, n.reserved, n.region.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        facts(&view),
        facts(&sorted(local.list_nodes().await.expect("nodes")))
    );

    let mut first_choice_passed_over = 0;
    let mut placed = BTreeMap::<String, u64>::new();
    for i in 0..60u64 {
        let consumers = 5 + (i * 7) % 31;
        let region = (i % 3 != 0).then(|| "x".to_owned());
        let spec = RoomSpec {
            room_id: format!("walk-{i}"),
            consumers,
            max_peer_count: 4,
            event_notification_uri: None,
            pool: Default::default(),
            region: region.clone(),
        };
        let ranking = placement::rank(
            &view,
            &spec.room_id,
            consumers,
            &spec.pool,
            placement::Near::region(region.as_deref()),
            Strategy::ConsistentHash,
            0,
        );
        let before = local.list_nodes().await.expect("nodes");
        let r = remote.reserve_from_view(spec.clone(), Strategy::ConsistentHash, &view);
        let l = local.reserve_from_view(spec, Strategy::ConsistentHash, &view);
        match (r.await, l) {
            (Ok(r), Ok(l)) => {
                assert_eq!(r.node.node_id, l.node.node_id, "room {i}");
                // Passed over for the bound: the view's first choice still had room.
                let first = ranking.order.first().map(|&f| view[f].node_id.as_str());
                let still_accepts = before
                    .iter()
                    .any(|n| Some(n.node_id.as_str()) == first && n.accepts(consumers));
                if still_accepts && first != Some(r.node.node_id.as_str()) {
                    first_choice_passed_over += 1;
                }
                if region.is_some() && !r.node.node_id.starts_with('x') {
                    // Only once no x node accepts the room any more.
                    let now = local.list_nodes().await.expect("nodes");
                    assert!(
                        now.iter()
                            .filter(|n| n.node_id.starts_with('x'))
                            .all(|n| !n.accepts(consumers)),
                        "room {i} left region x while it had room"
                    );
                }
                *placed.entry(r.node.node_id).or_default() += consumers;
            }
            (Err(StoreError::NoCapacity { .. }), Err(StoreError::NoCapacity { .. })) => {}
            (r, l) => panic!("room {i}: redis {r:?}, memory {l:?}"),
        }
    }
    let remote_now = sorted(remote.list_nodes().await.expect("nodes"));
    let local_now = sorted(local.list_nodes().await.expect("nodes"));
    for (r, l) in remote_now.iter().zip(&local_now) {
        assert_eq!((&r.node_id, r.reserved), (&l.node_id, l.reserved));
        assert!(r.reserved <= r.capacity, "{} over-committed", r.node_id);
        assert_eq!(placed.get(&r.node_id).copied().unwrap_or(0), r.reserved);
    }
    assert!(
        first_choice_passed_over >= 10,
        "the stale view's first choice was passed over only {first_choice_passed_over} times"
    );
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
