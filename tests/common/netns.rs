//! Network namespaces for multi-node tests: a host bridge, three namespaces with a veth each
//! and their own address, nodes started inside them (`ip netns exec`), all torn down on drop.
//! Needs root and iproute2; tests check `is_root()` and `skip()` loudly otherwise.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::BIN;

/// The control plane's port inside every namespace.
pub const PORT: u16 = 8080;

pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Say loudly that `test` did not run and why.
pub fn skip(test: &str, why: &str) {
    eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED {test}: {why}");
    eprintln!("!!! (needs root, iproute2 `ip netns` and redis-server; CI runs it as root)");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
}

/// `bin` on the PATH.
pub fn which(bin: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(bin))
                .find(|f| f.is_file())
        })
        .ok_or(())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// One node's processes and where it lives.
pub struct NodeProc {
    pub id: String,
    pub ns: String,
    pub addr: String,
    pub workers: u16,
    pub shm: PathBuf,
    pub config: PathBuf,
    /// More arguments for both planes (e.g. `--relay-port`).
    pub extra: Vec<String>,
    pub dataplane: Option<Child>,
    pub controlplane: Option<Child>,
}

impl NodeProc {
    pub fn http_addr(&self) -> String {
        format!("{}:{PORT}", self.addr)
    }

    pub fn spawn(&self, role: &str, redis: &str) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, BIN, role])
            .arg("--config")
            .arg(&self.config)
            .args(["--node-id", &self.id])
            .arg("--shm-dir")
            .arg(&self.shm)
            .args(["--http-listen", &self.http_addr()])
            // Auth off on the namespace's own address: a private test network.
            .arg("--insecure")
            .args(["--media-bind", &self.addr])
            .args(["--media-announce", &self.addr])
            .args(["--media-port", "20000"])
            .args(["--workers", &self.workers.to_string()])
            .args(["--pin", "false"])
            .args(["--redis", redis])
            .args(&self.extra)
            .env("SWITCHYARD_HOST_LOAD", "false")
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {role} of {}: {e}", self.id))
    }

    pub fn start(&mut self, redis: &str) {
        self.dataplane = Some(self.spawn("dataplane", redis));
        self.controlplane = Some(self.spawn("controlplane", redis));
    }

    /// SIGKILL both planes (`ip netns exec` execs the command, so the child is the node).
    pub fn kill(&mut self) {
        for c in [self.controlplane.take(), self.dataplane.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Everything the test creates; torn down in `Drop`, also when the test panics.
pub struct Net {
    pub bridge: String,
    pub host: String,
    pub subnet: String,
    pub namespaces: Vec<String>,
    pub nodes: Vec<NodeProc>,
    pub redis: Option<Child>,
    pub dir: PathBuf,
}

impl Net {
    /// A bridge on the host and three namespaces on it. `tag` (one or two letters) keeps the
    /// interface names of different test binaries apart, `octet` their 10.x.0.0/16.
    pub fn new(tag: &str, octet: u8) -> Result<Net, String> {
        let pid = std::process::id();
        // A /24 per test process, so concurrent runs do not share routes.
        let subnet = format!("10.{octet}.{}", 10 + pid % 240);
        let dir = std::env::temp_dir().join(format!("swy-netns-{tag}-{pid}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut net = Net {
            bridge: format!("swy{tag}b{pid}"),
            host: format!("{subnet}.254"),
            subnet,
            namespaces: Vec::new(),
            nodes: Vec::new(),
            redis: None,
            dir,
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for i in 1..=3u32 {
            let ns = format!("swy{tag}{pid}n{i}");
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let veth = format!("swy{tag}v{pid}{i}");
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &net.bridge, "up"])?;
            let addr = format!("{}.{i}", net.subnet);
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    pub fn redis_url(&self, port: u16) -> String {
        format!("redis://{}:{port}", self.host)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if let Some(mut r) = self.redis.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        // Deleting a namespace deletes its veth end, and the peer with it.
        let _ = ip(&["link", "del", &self.bridge]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
