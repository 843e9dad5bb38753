//! Placement at scale, simulated: many control planes placing and releasing rooms on many
//! nodes of mixed capacity, on virtual time. It drives the real code:
//! [`placement::rank`](super::placement::rank) through [`MemoryStore::reserve_from_view`],
//! whose commit is the one every store makes (the Redis store's `RESERVE` script is the same
//! walk), and the store's release. Nothing here stands in for them; the simulation only
//! decides what happens when.
//!
//! What it models:
//! - `nodes` nodes of 1, 2, 4, 8 or 16 workers (20/30/30/15/5 %) × 500 consumers.
//! - Rooms of 2 to 16 peers (`n × (n − 1)` consumers: 45 % of 2 to 4 peers, 35 % of 5 to 8,
//!   20 % of 9 to 16), arriving as a Poisson process sized to fill the cluster to 65 % on
//!   average, living an exponential 20 minutes on average; from 70 % to 88 % of the
//!   arrivals the rate is eight times that, so the cluster runs full and placements are
//!   refused.
//! - `control_planes` control planes; each arriving room goes to one at random. Health
//!   rounds every `health_interval_ms` (staggered over the planes): a few nodes fail their
//!   check for one to three rounds, so the store's health flags lag what happens by up to
//!   one interval.
//! - What a control plane ranks from: with `stale_views` the nodes it read at its last
//!   health round (up to one interval old), updated only by what its own placements told
//!   it (the store answers with the node as the commit left it); otherwise the nodes read
//!   right before each placement, as [`RedisStore`](super::RedisStore) does. A placement
//!   whose ranked nodes all stopped accepting it reads again and retries, 4 attempts in all,
//!   as the Redis store does.
//!
//! What it measures: over-commit (a node's reservation above its capacity, or different
//! from the sum of the rooms placed on it, checked after every placement and every health
//! round, and not back to zero once every room ended: must be zero); balance, as the fullest node's share in use over the cluster's
//! share (all reservations over all capacity) at each health round, in the steady churn
//! and after the surge; the wall time the ranking and the commit took (placements per
//! second, one core). Deterministic: the same setup and seed give the same report.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::contract::{Store, StoreError};
use super::memory::MemoryStore;
use super::placement::{consumers_for, mix, PoolFilter, RoomSpec, Strategy};
use super::records::{Node, Registration};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Setup {
    pub nodes: usize,
    pub control_planes: usize,
    /// Rooms that arrive over the run (placed or refused).
    pub rooms: usize,
    pub health_interval_ms: u64,
    pub strategy: Strategy,
    pub seed: u64,
    /// Each control plane ranks from the nodes it read at its last health round (true), or
    /// reads them before every placement as the Redis store does (false).
    pub stale_views: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            nodes: 1000,
            control_planes: 10,
            rooms: 100_000,
            health_interval_ms: 5000,
            strategy: Strategy::LeastLoaded,
            seed: 1,
            stale_views: true,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Rooms placed, refused (no node had room after every attempt), and released.
    pub placed: u64,
    pub refused: u64,
    pub released: u64,
    /// Placements whose stale ranking had no node left that still accepted the room, so the
    /// control plane read the nodes again.
    pub rereads: u64,
    /// Checks that found a node over its capacity or its reservation different from its
    /// rooms' sum. Zero, or the store is broken.
    pub over_commit: u64,
    /// Balance in the steady churn (the cluster filled to most of its steady share, before
    /// the surge): health rounds measured, the worst and the mean of the fullest node's
    /// share over the cluster's share, and the cluster's share at the worst.
    pub samples: u64,
    pub worst_ratio: f64,
    pub mean_ratio: f64,
    pub share_at_worst: f64,
    /// The worst steady ratio against the plain average of the nodes' shares instead (small
    /// nodes, which the largest rooms do not fit, run a little emptier, so it is higher).
    pub worst_vs_node_average: f64,
    /// The same ratio at the last health round while rooms still arrived (the churn back
    /// at its steady rate since the surge), and its worst after the surge: nodes the surge
    /// filled drain at the pace their rooms end, since placement never moves a room.
    pub end_ratio: f64,
    pub worst_after_surge: f64,
    /// The mean share in use at its highest.
    pub peak_share: f64,
    /// Wall time spent placing (ranking and committing; re-reads of the nodes after a
    /// stale ranking are counted in `reading`, not here), and the virtual time simulated.
    pub placing: Duration,
    pub reading: Duration,
    pub virtual_time: Duration,
}

impl Report {
    pub fn placements_per_s(&self) -> f64 {
        let placing = self.placing.saturating_sub(self.reading);
        (self.placed + self.refused) as f64 / placing.as_secs_f64().max(1e-9)
    }
}

/// Consumers per worker, as `cluster.consumers_per_worker` defaults.
const PER_WORKER: u64 = 500;
/// Average room lifetime.
const LIFETIME_MS: f64 = 20.0 * 60_000.0;
/// The share of the cluster the steady arrival rate fills on average.
const TARGET_SHARE: f64 = 0.65;
/// How many times the arrival rate grows during the surge, and which part of the run
/// (by arrivals) it covers.
const SURGE: f64 = 8.0;
const SURGE_FROM: f64 = 0.7;
const SURGE_TO: f64 = 0.88;
/// Balance is measured at health rounds where the mean share is at least this part of
/// [`TARGET_SHARE`]: while the cluster fills from empty, one room on a small node is a large
/// share and the ratio says more about room sizes than about placement.
const BALANCED_FROM: f64 = 0.8;
/// Per health round, the chance that a healthy node fails its check (for 1 to 3 rounds).
const FLAP: f64 = 0.002;
/// Placement attempts, as the Redis store makes them.
const ATTEMPTS: usize = 4;

/// SplitMix64: small, deterministic, good enough to draw a simulation from.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// Exponential with mean `mean`.
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

fn workers(rng: &mut Rng) -> u16 {
    match rng.unit() {
        u if u < 0.20 => 1,
        u if u < 0.50 => 2,
        u if u < 0.80 => 4,
        u if u < 0.95 => 8,
        _ => 16,
    }
}

fn peers(rng: &mut Rng) -> u32 {
    let (lo, hi) = match rng.unit() {
        u if u < 0.45 => (2, 4),
        u if u < 0.80 => (5, 8),
        _ => (9, 16),
    };
    rng.range(lo, hi) as u32
}

/// Average consumers per room of [`peers`]'s distribution.
fn mean_consumers() -> f64 {
    let band = |lo: u32, hi: u32| {
        (lo..=hi).map(consumers_for).sum::<u64>() as f64 / f64::from(hi - lo + 1)
    };
    0.45 * band(2, 4) + 0.35 * band(5, 8) + 0.20 * band(9, 16)
}

/// The memory store answers at once; its futures never wait.
fn ready<T>(f: impl Future<Output = T>) -> T {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        // The memory store awaits nothing: a pending future would be a store that waits
        // on I/O, which this simulation is not for.
        Poll::Pending => unreachable!("the memory store never waits"),
    }
}

/// What happens next, in time order (ties: health rounds before arrivals before ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Control plane `k`'s health round: it reads the nodes (its new view); plane 0 also
    /// flaps health and samples balance.
    Round(usize),
    Arrival,
    /// Room `i` ends.
    End(u64),
}

/// Run one simulation.
pub fn run(setup: &Setup) -> Report {
    let mut rng = Rng(setup.seed);
    let store = MemoryStore::with_seed(setup.seed ^ 0x5eed);
    let mut capacity = BTreeMap::new();
    for i in 0..setup.nodes {
        let w = workers(&mut rng);
        let id = format!("n{i:04}");
        capacity.insert(id.clone(), u64::from(w) * PER_WORKER);
        let reg = Registration {
            node_id: id,
            url: format!("http://10.0.{}.{}:8080", i / 250, i % 250 + 1),
            media_address: "10.0.0.1".into(),
            workers: w,
            capacity: u64::from(w) * PER_WORKER,
            labels: BTreeMap::new(),
            region: None,
        };
        ready(store.register_node(reg)).expect("the memory store registers any node");
    }
    let total: u64 = capacity.values().sum();
    let rate_per_ms = TARGET_SHARE * total as f64 / mean_consumers() / LIFETIME_MS;
    let interval = setup.health_interval_ms.max(1);
    let planes = setup.control_planes.max(1);

    let mut report = Report::default();
    let mut views: Vec<Vec<Node>> = vec![ready(store.list_nodes()).unwrap_or_default(); planes];
    // Virtual ms → events; a heap of (time, event), earliest first.
    let mut queue = BinaryHeap::new();
    for k in 0..planes {
        // Staggered rounds: plane k reads at k/planes of each interval.
        queue.push(Reverse((
            interval * k as u64 / planes as u64,
            Event::Round(k),
        )));
    }
    queue.push(Reverse((0, Event::Arrival)));
    // Room → (node, consumers); node → the sum of its rooms, to check the store against.
    let mut rooms: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    let mut booked: BTreeMap<String, u64> = BTreeMap::new();
    // Node → rounds it stays unhealthy.
    let mut sick: BTreeMap<String, u32> = BTreeMap::new();
    let (mut arrived, mut ratio_sum, mut now) = (0u64, 0.0, 0u64);
    let mut shares = Vec::with_capacity(setup.nodes);

    while let Some(Reverse((t, ev))) = queue.pop() {
        now = t;
        match ev {
            Event::Arrival => {
                let room = arrived;
                arrived += 1;
                let progress = arrived as f64 / setup.rooms as f64;
                let plane = (rng.next() % planes as u64) as usize;
                let max_peer_count = peers(&mut rng);
                let spec = RoomSpec {
                    room_id: format!("r{room}"),
                    consumers: consumers_for(max_peer_count),
                    max_peer_count,
                    event_notification_uri: None,
                    pool: PoolFilter::Any,
                    region: None,
                };
                if !setup.stale_views {
                    views[plane] = ready(store.list_nodes()).unwrap_or_default();
                }
                // Placing: the ranking and the commit; not the reads of the nodes, which a
                // real store makes over the network.
                let started = Instant::now();
                let mut placed = None;
                for attempt in 0..ATTEMPTS {
                    if attempt > 0 {
                        report.rereads += 1;
                        let read = started.elapsed();
                        views[plane] = ready(store.list_nodes()).unwrap_or_default();
                        report.reading += started.elapsed() - read;
                    }
                    match store.reserve_from_view(spec.clone(), setup.strategy, &views[plane]) {
                        Ok(p) => {
                            // The store answers with the node as the commit left it: the
                            // plane knows that much about its own placements.
                            if let Some(n) = views[plane]
                                .iter_mut()
                                .find(|n| n.node_id == p.node.node_id)
                            {
                                n.clone_from(&p.node);
                            }
                            placed = Some(p);
                            break;
                        }
                        Err(StoreError::NoCapacity { .. }) => continue,
                        Err(_) => break,
                    }
                }
                report.placing += started.elapsed();
                match placed {
                    Some(p) => {
                        report.placed += 1;
                        if p.node.reserved > p.node.capacity {
                            report.over_commit += 1;
                        }
                        *booked.entry(p.node.node_id.clone()).or_default() += p.room.consumers;
                        rooms.insert(room, (p.node.node_id, p.room.consumers));
                        let end = t + rng.exp(LIFETIME_MS) as u64 + 1;
                        queue.push(Reverse((end, Event::End(room))));
                    }
                    None => report.refused += 1,
                }
                if arrived < setup.rooms as u64 {
                    let surge = (SURGE_FROM..SURGE_TO).contains(&progress);
                    let rate = rate_per_ms * if surge { SURGE } else { 1.0 };
                    queue.push(Reverse((t + rng.exp(1.0 / rate) as u64, Event::Arrival)));
                }
            }
            Event::End(room) => {
                if let Some((node, consumers)) = rooms.remove(&room) {
                    if ready(store.release_room(&format!("r{room}"))).is_ok() {
                        report.released += 1;
                    }
                    if let Some(b) = booked.get_mut(&node) {
                        *b -= consumers;
                    }
                }
            }
            Event::Round(k) => {
                if k == 0 {
                    flap(&store, &mut rng, &mut sick, &capacity);
                    let nodes = ready(store.list_nodes()).unwrap_or_default();
                    for n in &nodes {
                        let mine = booked.get(&n.node_id).copied().unwrap_or(0);
                        if n.reserved > n.capacity || n.reserved != mine {
                            report.over_commit += 1;
                        }
                    }
                    shares.clear();
                    shares.extend(nodes.iter().map(|n| n.reserved as f64 / n.capacity as f64));
                    let (used, cap) = nodes
                        .iter()
                        .fold((0u64, 0u64), |(u, c), n| (u + n.reserved, c + n.capacity));
                    let mean = used as f64 / cap.max(1) as f64;
                    let average = shares.iter().sum::<f64>() / shares.len().max(1) as f64;
                    let fullest = shares.iter().copied().fold(0.0, f64::max);
                    report.peak_share = report.peak_share.max(mean);
                    let progress = arrived as f64 / setup.rooms as f64;
                    let placing = arrived < setup.rooms as u64;
                    let ratio = fullest / mean.max(f64::MIN_POSITIVE);
                    // Balance once the cluster has filled (most of the steady share), until
                    // the surge.
                    if mean >= BALANCED_FROM * TARGET_SHARE && progress < SURGE_FROM {
                        report.samples += 1;
                        ratio_sum += ratio;
                        if ratio > report.worst_ratio {
                            report.worst_ratio = ratio;
                            report.share_at_worst = mean;
                        }
                        let vs_average = fullest / average.max(f64::MIN_POSITIVE);
                        report.worst_vs_node_average = report.worst_vs_node_average.max(vs_average);
                    }
                    if placing && progress >= SURGE_TO {
                        report.end_ratio = ratio;
                        report.worst_after_surge = report.worst_after_surge.max(ratio);
                    }
                }
                views[k] = ready(store.list_nodes()).unwrap_or_default();
                // Rounds go on while rooms are still to come or to end.
                if arrived < setup.rooms as u64 || !rooms.is_empty() {
                    queue.push(Reverse((t + interval, Event::Round(k))));
                }
            }
        }
    }
    // Every room has ended: every reservation must be back to nothing.
    for n in ready(store.list_nodes()).unwrap_or_default() {
        if n.reserved != 0 {
            report.over_commit += 1;
        }
    }
    report.mean_ratio = ratio_sum / report.samples.max(1) as f64;
    report.virtual_time = Duration::from_millis(now);
    report
}

/// One health round's flaps: nodes whose sickness ran out are healthy again; a few healthy
/// ones fail for 1 to 3 rounds.
fn flap(
    store: &MemoryStore,
    rng: &mut Rng,
    sick: &mut BTreeMap<String, u32>,
    nodes: &BTreeMap<String, u64>,
) {
    sick.retain(|id, left| {
        *left -= 1;
        if *left == 0 {
            let _ = ready(store.set_health(id, true));
        }
        *left > 0
    });
    for id in nodes.keys() {
        if !sick.contains_key(id) && rng.unit() < FLAP {
            let _ = ready(store.set_health(id, false));
            sick.insert(id.clone(), rng.range(1, 3) as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commit never over-books a node, whatever the strategy and however stale the
    /// views, and the fullest node stays within 1.2 × the cluster's share: a reduced run
    /// (60 nodes, 4 planes, 6,000 rooms) whose surge fills the cluster. (The full-scale
    /// figures are `examples/placement_sim.rs`'s, in docs/cluster.md.)
    #[test]
    fn no_node_is_ever_over_committed() {
        for stale_views in [true, false] {
            for strategy in [
                Strategy::LeastLoaded,
                Strategy::RoundRobin,
                Strategy::ConsistentHash,
            ] {
                let setup = Setup {
                    nodes: 60,
                    control_planes: 4,
                    rooms: 6000,
                    strategy,
                    stale_views,
                    ..Setup::default()
                };
                let r = run(&setup);
                let what = format!("{strategy:?}, stale views {stale_views}: {r:?}");
                assert_eq!(r.over_commit, 0, "{what}");
                assert_eq!(r.placed + r.refused, 6000, "{what}");
                assert_eq!(r.released, r.placed, "every room ends: {what}");
                assert!(
                    r.peak_share > 0.85,
                    "the surge must fill the cluster: {what}"
                );
                assert!(r.samples > 0, "{what}");
                // Issue 13's bar, on a deterministic model (not a timing): measured 1.11 to
                // 1.16 here. (What the commit's bound fixed, stale views piling large rooms
                // onto one node, shows only at the full scale of the example: a unit test
                // in `placement` and a Redis test cover that walk.)
                assert!(r.worst_ratio <= 1.2, "fullest node: {what}");
            }
        }
    }

    #[test]
    fn a_run_is_repeatable() {
        let setup = Setup {
            nodes: 30,
            control_planes: 3,
            rooms: 1000,
            ..Setup::default()
        };
        let (a, b) = (run(&setup), run(&setup));
        assert_eq!(
            (a.placed, a.refused, a.rereads, a.worst_ratio.to_bits()),
            (b.placed, b.refused, b.rereads, b.worst_ratio.to_bits())
        );
    }
}
