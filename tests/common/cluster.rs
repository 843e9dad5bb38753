//! Two or three real nodes (`a`, `b`, `c`) on loopback sharing one Redis and one auth key,
//! for the relay and forward tests; every call carries a cluster token unless told otherwise.

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use super::cli;
use super::{http_with, Http, Node, Redis};

/// Nodes `a`, `b`, ... sharing one Redis and one auth key.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// The shared HS256 key (`switchyard token generate`).
    pub key: String,
    /// A cluster token signed with it.
    pub token: String,
    _redis: Redis,
    pub dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn cluster(test: &str, n: usize, extra_config: &str) -> Option<Cluster> {
    if !Redis::required(test) {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("swy-cluster-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let redis = Redis::start_free(&dir, false);
    let key = cli(&["token", "generate"]);
    let token = cli(&[
        "token",
        "sign",
        "--key",
        &key,
        "--cluster",
        "--expires",
        "1h",
    ]);
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        format!("[auth]\nkey = \"{key}\"\n[cluster]\nhealth_interval_ms = 300\n{extra_config}"),
    )
    .expect("config");
    let ids = ["a", "b", "c"];
    let nodes: Vec<Node> = ids[..n]
        .iter()
        .map(|id| {
            Node::spawn_named(
                id,
                1,
                vec![
                    "--config".into(),
                    config.clone().into(),
                    "--redis".into(),
                    redis.url().into(),
                ],
            )
        })
        .collect();
    for node in &nodes {
        node.wait_healthy();
    }
    let c = Cluster {
        nodes,
        key,
        token,
        _redis: redis,
        dir,
    };
    wait("every node registered and healthy", || {
        let r = c.call(0, "GET", "/v1/nodes", None);
        r.status == 200
            && r.json()["nodes"]
                .as_array()
                .is_some_and(|l| l.len() == n && l.iter().all(|x| x["healthy"] == true))
    });
    Some(c)
}

impl Cluster {
    pub fn call(&self, i: usize, method: &str, path: &str, body: Option<&str>) -> Http {
        self.call_as(i, method, path, body, Some(&self.token))
    }

    pub fn call_as(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> Http {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("Authorization", b)])
            .unwrap_or_default();
        let ctype = if path.starts_with("/whip/") || path.starts_with("/whep/") {
            "application/sdp"
        } else {
            "application/json"
        };
        http_with(
            &self.nodes[i].http_addr,
            method,
            path,
            ctype,
            &headers,
            body.map(str::as_bytes),
        )
        .expect("HTTP")
    }

    /// Node `i`'s sessions without their live counters (`stats` moves with every packet).
    pub fn sessions(&self, i: usize) -> Vec<serde_json::Value> {
        let r = self.call(i, "GET", "/v1/sessions", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let mut list = r.json()["sessions"].as_array().expect("sessions").clone();
        for s in &mut list {
            if let Some(o) = s.as_object_mut() {
                o.remove("stats");
            }
        }
        list
    }

    pub fn relays(&self, i: usize) -> serde_json::Value {
        let r = self.call(i, "GET", "/v1/relays", None);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }
}

pub fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Nodes `a` and `c` without auth on one fresh Redis, health checks every 300 ms, both
/// healthy: the browser cascade tests publish on `a` and watch on `c`.
pub struct CascadePair {
    pub a: Node,
    pub c: Node,
    _redis: Redis,
    dir: PathBuf,
}

impl Drop for CascadePair {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// [`CascadePair`] under a temporary folder named for `tag`.
pub fn cascade_pair(tag: &str) -> CascadePair {
    let dir = std::env::temp_dir().join(format!("swy-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let redis = Redis::start_free(&dir, false);
    let config = dir.join("switchyard.toml");
    std::fs::write(&config, "[cluster]\nhealth_interval_ms = 300\n").expect("config");
    let extra = || -> Vec<std::ffi::OsString> {
        vec![
            "--config".into(),
            config.clone().into(),
            "--redis".into(),
            redis.url().into(),
        ]
    };
    let a = Node::spawn_named("a", 1, extra());
    let c = Node::spawn_named("c", 1, extra());
    a.wait_healthy();
    c.wait_healthy();
    CascadePair {
        a,
        c,
        _redis: redis,
        dir,
    }
}

impl CascadePair {
    /// Wait (up to 10 s) until `c` lists both nodes, then two seconds more: by then `c`
    /// has read `a`'s streams from the store and a WHEP offer on `c` cascades.
    pub fn wait_cascade(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.c.get("/v1/nodes").json()["nodes"]
            .as_array()
            .is_none_or(|l| l.len() != 2)
        {
            assert!(Instant::now() < deadline, "nodes did not register");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
