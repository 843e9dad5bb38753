//! The control plane's own counters: atomics and small maps that the parts of the control
//! plane bump as things happen, and `GET /metrics` (`http::metrics`) reads at scrape time.
//! The data plane's counters are not here: they live in its shared stats file.
//!
//! [`Counters`] is built at start and handed to whoever counts. The cluster counters are one
//! per process ([`cluster`]): they are bumped from deep inside background tasks (hook
//! deliveries, relay set-ups) where threading a handle through would buy nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::store::Node;

/// HTTP, session and connection counters of this control plane.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    pub sessions_created: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub sessions_removed: AtomicU64,
    /// Session creations refused (429) by `[limits]`: a client's live-session cap, its rate.
    pub throttled_quota: AtomicU64,
    pub throttled_rate: AtomicU64,
    /// HTTP connections held now, and those closed at accept over `[http] max_connections`.
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
}

impl Counters {
    /// One answered request with `status`.
    pub fn count_status(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if (400..500).contains(&status) {
            self.client_errors.fetch_add(1, Ordering::Relaxed);
        } else if status >= 500 {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Cluster counters of this control plane (placements it made, rejections, relay failures,
/// room events) and the nodes as its last health round saw them. One per process.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    placements: Mutex<BTreeMap<String, u64>>,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    relay_failures: Mutex<BTreeMap<&'static str, u64>>,
    nodes: Mutex<Vec<Node>>,
    /// Round-trip time of this node's relay links by peer, milliseconds.
    relay_rtts: Mutex<BTreeMap<String, f64>>,
    pub events_sent: AtomicU64,
    pub events_failed: AtomicU64,
    pub events_dropped: AtomicU64,
    pub rooms_closed_idle: AtomicU64,
    /// Dead nodes this control plane removed, and rooms it placed again after one.
    pub nodes_removed: AtomicU64,
    pub rooms_moved: AtomicU64,
    /// Suspected nodes found dead by refused connections (`Cluster::confirm_dead`).
    pub fast_verdicts: AtomicU64,
    /// Relay-ins here taken over by a new source after theirs was lost.
    pub relays_retargeted: AtomicU64,
}

/// The process's cluster counters.
pub fn cluster() -> &'static ClusterCounters {
    static M: OnceLock<ClusterCounters> = OnceLock::new();
    M.get_or_init(ClusterCounters::default)
}

/// Every update is one map operation: a poisoned lock still holds consistent counts.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClusterCounters {
    /// A room placed on `node`.
    pub fn placed(&self, node: &str) {
        *locked(&self.placements).entry(node.to_owned()).or_default() += 1;
    }

    /// A relay-in here was taken over by a new source (viewer continuity).
    pub fn relay_retargeted(&self) {
        self.relays_retargeted.fetch_add(1, Ordering::Relaxed);
    }

    /// A relay set-up (either end) failed for `reason`.
    pub fn relay_failed(&self, reason: &'static str) {
        *locked(&self.relay_failures).entry(reason).or_default() += 1;
    }

    /// A room refused: `no_capacity`, `store_unavailable`, `room_exists`, `bad_request`, ...
    pub fn rejected(&self, reason: &'static str) {
        *locked(&self.rejections).entry(reason).or_default() += 1;
    }

    /// The relay links' round-trip times by peer (ms), as the relay task last read them.
    pub fn set_relay_rtts(&self, rtts: &BTreeMap<String, f64>) {
        rtts.clone_into(&mut locked(&self.relay_rtts));
    }

    pub fn relay_rtts(&self) -> BTreeMap<String, f64> {
        locked(&self.relay_rtts).clone()
    }

    /// The nodes as the last health round listed them.
    pub fn set_nodes(&self, nodes: &[Node]) {
        *locked(&self.nodes) = nodes.to_vec();
    }

    /// Placements so far, by node.
    pub fn placements(&self) -> BTreeMap<String, u64> {
        locked(&self.placements).clone()
    }

    /// Room creations refused so far, by reason.
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        locked(&self.rejections).clone()
    }

    /// Failed relay set-ups so far, by reason.
    pub fn relay_failures(&self) -> BTreeMap<&'static str, u64> {
        locked(&self.relay_failures).clone()
    }

    /// The nodes as the last health round listed them.
    pub fn nodes(&self) -> Vec<Node> {
        locked(&self.nodes).clone()
    }
}
