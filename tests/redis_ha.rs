//! Redis high availability for the cluster store (issue 13 item 5), against real servers:
//!
//! - Sentinel: a master, one replica and three sentinels (`redis-server --sentinel`, the same
//!   binary Debian's `redis-sentinel` runs). Two control planes (two `RedisStore`s on a
//!   `redis+sentinel://` URL) place 2 × 1,000 rooms at once; the master is SIGKILLed a third
//!   of the way in. While the sentinels fail over, placements answer `Unavailable` (a 503
//!   with `Retry-After` over HTTP) and are retried; afterwards they go on against the
//!   promoted replica, and no node is over its capacity, every node's reservation equals the
//!   rooms placed on it.
//! - TLS: a `rediss://` server whose certificate a private CA signed is used with
//!   `[cluster] redis_ca`, and refused without it.
//!
//! Needs `redis-server` (built with TLS, as Debian's is); skipped without it except under
//! CI=true.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Redis;
use switchyard_controlplane::cluster::redis::RedisStore;
use switchyard_controlplane::cluster::{
    consumers_for, Registration, RoomSpec, Store, StoreError, Strategy,
};

/// Redis processes, killed on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn redis(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

/// One line of `INFO` from the server on `port` (`redis-cli` is not needed: RESP by hand).
fn info(port: u16, section: &str, field: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("INFO {section}\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        // The bulk reply ends with an empty line.
        if text.ends_with("\r\n\r\n") || text.matches("\r\n").count() > 3 && text.contains(field) {
            break;
        }
    }
    let at = text.find(&format!("{field}:"))? + field.len() + 1;
    text[at..].lines().next().map(|l| l.trim().to_owned())
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placements_continue_after_a_sentinel_failover_without_over_commit() {
    if !Redis::required("placements_continue_after_a_sentinel_failover_without_over_commit") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("swy-redis-ha-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let port = common::free_tcp_port;
    let (pm, pr) = (port(), port());
    let common_args = |p: u16, sub: &str| -> Vec<String> {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).expect("dir");
        vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--port".into(),
            p.to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            d.display().to_string(),
        ]
    };
    let mut procs = Procs(vec![redis(&common_args(pm, "m"))]);
    let mut replica = common_args(pr, "r");
    replica.extend(["--replicaof".into(), "127.0.0.1".into(), pm.to_string()]);
    procs.0.push(redis(&replica));
    wait_for("the replica syncs", Duration::from_secs(15), || {
        info(pr, "replication", "master_link_status").as_deref() == Some("up")
    });
    let sentinels: Vec<u16> = (0..3).map(|_| port()).collect();
    for (i, &sp) in sentinels.iter().enumerate() {
        let conf = dir.join(format!("sentinel-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {sp}\nbind 127.0.0.1\ndir {}\nsentinel monitor m 127.0.0.1 {pm} 2\n\
                 sentinel down-after-milliseconds m 1000\nsentinel failover-timeout m 4000\n\
                 sentinel parallel-syncs m 1\n",
                dir.display()
            ),
        )
        .expect("sentinel conf");
        procs.0.push(
            Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("start sentinel"),
        );
    }
    // Sentinels found each other and the replica.
    wait_for("the sentinels see the set", Duration::from_secs(20), || {
        sentinels.iter().all(|&sp| {
            info(sp, "sentinel", "master0")
                .is_some_and(|l| l.contains("slaves=1") && l.contains("sentinels=3"))
        })
    });
    let url = format!(
        "redis+sentinel://{}/m",
        sentinels
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let planes = [
        Arc::new(RedisStore::new(&url).expect("store 1")),
        Arc::new(RedisStore::new(&url).expect("store 2")),
    ];
    for (id, cap) in CAPACITY {
        planes[0]
            .register_node(reg(id, cap))
            .await
            .expect("register");
    }

    const ROOMS: usize = 2000;
    const TASKS: usize = 16;
    let started = Instant::now();
    let unavailable = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = planes[t % 2].clone();
        let unavailable = unavailable.clone();
        tasks.push(tokio::spawn(async move {
            let (mut placed, mut full) = (0u64, 0u64);
            for i in (t..ROOMS).step_by(TASKS) {
                let peers = 2 + (i % 3) as u32;
                let spec = RoomSpec {
                    pool: Default::default(),
                    region: None,
                    room_id: format!("room-{i:04}"),
                    consumers: consumers_for(peers),
                    max_peer_count: peers,
                    event_notification_uri: None,
                };
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match store
                        .reserve_room(spec.clone(), Strategy::LeastLoaded)
                        .await
                    {
                        Ok(_) => {
                            placed += 1;
                            break;
                        }
                        Err(StoreError::NoCapacity { .. }) => {
                            full += 1;
                            break;
                        }
                        // A placement made just before the master died may have reached
                        // the replica (the room exists) or not (placed again now).
                        Err(StoreError::RoomExists(_)) => {
                            placed += 1;
                            break;
                        }
                        Err(StoreError::Unavailable(_)) => {
                            unavailable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            assert!(Instant::now() < deadline, "the store never came back");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("reserve: {e}"),
                    }
                }
            }
            (placed, full)
        }));
    }
    // A third of the way in, the master dies.
    let third = (ROOMS / 3) as u64;
    loop {
        let rooms = planes[0].list_rooms().await.map(|r| r.len()).unwrap_or(0) as u64;
        if rooms >= third {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "placements stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Instant::now();
    let mut master = procs.0.remove(0);
    let _ = master.kill();
    let _ = master.wait();
    let (mut placed, mut full) = (0, 0);
    for t in tasks {
        let (p, f) = t.await.expect("task");
        placed += p;
        full += f;
    }
    eprintln!(
        "{ROOMS} placements over a failover: {placed} placed, {full} full, {} unavailable answers \
         retried; done {:.1} s after the master died",
        unavailable.load(std::sync::atomic::Ordering::Relaxed),
        killed.elapsed().as_secs_f64()
    );
    assert!(
        info(pr, "replication", "role").as_deref() == Some("master"),
        "the replica was promoted"
    );
    assert!(
        unavailable.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the failover was seen"
    );
    // After it: every node's reservation is what its rooms add up to, within capacity.
    let rooms = planes[1].list_rooms().await.expect("rooms");
    let nodes = planes[1].list_nodes().await.expect("nodes");
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rooms {
        *sums.entry(r.node.clone()).or_default() += r.consumers;
    }
    for n in &nodes {
        let sum = sums.get(&n.node_id).copied().unwrap_or(0);
        assert_eq!(
            sum, n.reserved,
            "node {}: rooms and reservation disagree",
            n.node_id
        );
        assert!(
            n.reserved <= n.capacity,
            "node {} over-committed: {} > {}",
            n.node_id,
            n.reserved,
            n.capacity
        );
    }
    assert!(full > 0, "capacity ran out, so over-commit was possible");
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    if !Redis::required("rediss_with_a_private_ca") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("swy-rediss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "switchyard test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("cert");
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write pem");
        p.display().to_string()
    };
    let ca_pem = ca.pem();
    let ca_file = write("ca.pem", ca_pem.clone());
    let cert_file = write("cert.pem", cert.pem());
    let key_file = write("key.pem", key.serialize_pem());
    let port = common::free_tcp_port();
    let _server = Procs(vec![redis(&[
        "--bind".into(),
        "127.0.0.1".into(),
        "--port".into(),
        "0".into(),
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        cert_file,
        "--tls-key-file".into(),
        key_file,
        "--tls-ca-cert-file".into(),
        ca_file,
        "--tls-auth-clients".into(),
        "no".into(),
        "--save".into(),
        String::new(),
        "--dir".into(),
        dir.display().to_string(),
    ])]);
    wait_for("the TLS port", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let url = format!("rediss://127.0.0.1:{port}/");
    let store = RedisStore::connect_to(&url, Some(ca_pem.into_bytes())).expect("store");
    store
        .register_node(reg("a", 10))
        .await
        .expect("register over TLS");
    assert_eq!(store.list_nodes().await.expect("nodes").len(), 1);
    // Without the CA the server's certificate is not trusted: the store is unavailable,
    // never silently in the clear.
    let untrusted = RedisStore::connect_to(&url, None).expect("store");
    assert!(matches!(
        untrusted.list_nodes().await,
        Err(StoreError::Unavailable(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
