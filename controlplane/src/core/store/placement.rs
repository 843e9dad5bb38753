//! Which node gets a new room. Pure: fed the nodes, the room id, the consumers it needs and
//! some entropy (or a round-robin counter), it answers the nodes that can take the room, most
//! preferred first. It never reads a clock, a random source or a store.
//!
//! A store then walks that list ([`Ranking::choose`]) under its lock or inside one Lua script,
//! against the nodes as they are at that moment: the list may be stale (another control plane
//! placed a room since it was read), the commit never is. It takes the first node that still
//! accepts the room and stays within the load bound ([`LOAD_BOUND`]) with it, so no node is
//! ever over-committed and none is filled past the bound by placements its ranker did not see.

use std::cmp::Reverse;

pub use switchyard_shared::config::PlacementStrategy as Strategy;
use switchyard_shared::config::PoolBinding;

use super::records::Node;

/// A room to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomSpec {
    pub room_id: String,
    /// Consumers to reserve on the chosen node.
    pub consumers: u64,
    pub max_peer_count: u32,
    pub event_notification_uri: Option<String>,
    /// The nodes it may go to by pool.
    pub pool: PoolFilter,
    /// The client's region: nodes there first while one has room, then the others.
    pub region: Option<String>,
}

/// Consumers a room of `max_peer_count` peers reserves when everyone subscribes to everyone:
/// n × (n − 1) streams, at least 1 so a one-peer room still counts.
pub fn consumers_for(max_peer_count: u32) -> u64 {
    let n = u64::from(max_peer_count);
    (n * n.saturating_sub(1)).max(1)
}

/// Which nodes a room may go to by pool (the node label `pool`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PoolFilter {
    /// No pools are configured.
    #[default]
    Any,
    /// The room's id starts with a bound prefix: only nodes of this pool.
    Only(String),
    /// Any node not reserved to one of these (bound) pools.
    NotIn(Vec<String>),
}

impl PoolFilter {
    /// The filter for `room` under `pools` (the longest matching prefix wins).
    pub fn for_room(room: &str, pools: &[PoolBinding]) -> Self {
        if pools.is_empty() {
            return Self::Any;
        }
        match pools
            .iter()
            .filter(|p| room.starts_with(&p.prefix))
            .max_by_key(|p| p.prefix.len())
        {
            Some(p) => Self::Only(p.pool.clone()),
            None => Self::NotIn(pools.iter().map(|p| p.pool.clone()).collect()),
        }
    }

    pub fn allows(&self, node: &Node) -> bool {
        let pool = node.labels.get("pool");
        match self {
            Self::Any => true,
            Self::Only(want) => pool == Some(want),
            Self::NotIn(bound) => pool.is_none_or(|p| !bound.contains(p)),
        }
    }
}

/// Nodes that accept a room of `need` consumers and that `pool` allows, most preferred first
/// (indexes into `nodes`).
///
/// The pool filter applies before the strategy, not after: power of two choices draws its
/// two nodes and round robin takes its turn among the eligible nodes only (filtering a
/// finished ranking would let p2c's pair fall outside the pool and hand the room to whatever
/// pool node happened to rank next, not the freer of two pool nodes).
///
/// The eligible nodes come in tiers ([`Near`]), each ranked by the strategy on its own and
/// used up before the next: the nodes that already hold the room's streams (a room moved off
/// a dead node goes to its hot standby), then those of the client's region (the room stays
/// there while a node there has room), then the others. Nodes without a region are
/// "others".
///
/// `entropy` is a fresh random number for `LeastLoaded`, and the round-robin counter (any
/// value that grows by one per placement) for `RoundRobin`; `ConsistentHash` ignores it.
/// Nodes that are unhealthy, draining, overloaded or without room are never in the answer.
pub fn rank(
    nodes: &[Node],
    room: &str,
    need: u64,
    pool: &PoolFilter,
    near: Near<'_>,
    strategy: Strategy,
    entropy: u64,
) -> Ranking {
    let mut tiers: [Vec<usize>; 3] = Default::default();
    for i in (0..nodes.len()).filter(|&i| nodes[i].accepts(need) && pool.allows(&nodes[i])) {
        tiers[near.tier(&nodes[i])].push(i);
    }
    let mut ranking = Ranking::default();
    for tier in tiers.into_iter().filter(|t| !t.is_empty()) {
        let (ranked, limit) = order(nodes, tier, room, need, strategy, entropy);
        ranking.groups.push(Group {
            len: ranked.len(),
            limit,
        });
        ranking.order.extend(ranked);
    }
    ranking
}

/// Which nodes a room goes to before the others.
#[derive(Clone, Copy, Debug, Default)]
pub struct Near<'a> {
    /// Nodes that already hold the room's streams: a hot standby fed by the room's dead
    /// node, or a node whose relays carried them to its viewers. A room placed again goes
    /// there first, so its publisher returns to where its streams' viewers are.
    pub holders: &'a [String],
    /// The client's region.
    pub region: Option<&'a str>,
}

impl<'a> Near<'a> {
    /// Nearness by region alone.
    pub fn region(region: Option<&'a str>) -> Self {
        Self {
            holders: &[],
            region,
        }
    }

    /// 0 for a holder, 1 for a node of the region, 2 for the others.
    fn tier(&self, n: &Node) -> usize {
        if self.holders.contains(&n.node_id) {
            0
        } else if self.region.is_some() && n.region.as_deref() == self.region {
            1
        } else {
            2
        }
    }
}

/// What [`rank`] answers and a store commits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ranking {
    /// Indices into the ranked nodes: those that accept the room, most preferred first.
    pub order: Vec<usize>,
    /// `order` cut into its tiers, in order: the commit uses one up before the next.
    pub groups: Vec<Group>,
}

/// One tier of a [`Ranking`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Group {
    /// How many entries of `order` it has.
    pub len: usize,
    /// The share of its capacity a node of the tier may have in use with the room before
    /// the commit passes it over for the next: [`LOAD_BOUND`] × the tier's mean share, as
    /// the ranker saw the nodes. Finite, so a store can pass it on.
    pub limit: f64,
}

impl Ranking {
    /// The entry of `order` (an index into the nodes it was ranked from) that gets the room,
    /// judged on the nodes as they are now (`now` answers ranked node `i` as it is now, or
    /// None for a node gone since, which is skipped): tier by tier, the first node that
    /// accepts the room and stays within the tier's limit with it, or else the one of the
    /// tier that accepts it at the lowest share. None when no node accepts it any more.
    ///
    /// Why the bound is checked here and not only in [`rank`]: a ranker's view may be a
    /// health interval old, and control planes ranking from views that old all see the
    /// same few nodes with room for a large room; two such rooms a moment apart land on
    /// one of them (`examples/placement_sim.rs`: the fullest node at 1.39 to 1.53 × the
    /// mean). The commit sees what the others placed since. The limit itself comes from
    /// the view: a mean over the cluster moves far more slowly than one node.
    ///
    /// The Redis store's scripts make the same walk (`PICK` in `redis.rs`).
    pub fn choose<'n>(&self, need: u64, now: impl Fn(usize) -> Option<&'n Node>) -> Option<usize> {
        let mut rest = self.order.as_slice();
        for g in &self.groups {
            let (tier, next) = rest.split_at(g.len.min(rest.len()));
            rest = next;
            let mut least: Option<(f64, usize)> = None;
            for &i in tier {
                let Some(n) = now(i) else {
                    continue;
                };
                if !n.accepts(need) {
                    continue;
                }
                let s = share(n, need);
                if s <= g.limit {
                    return Some(i);
                }
                if least.is_none_or(|(l, _)| s < l) {
                    least = Some((s, i));
                }
            }
            if let Some((_, i)) = least {
                return Some(i);
            }
        }
        None
    }
}

/// The share of `n`'s capacity in use once a room of `need` consumers is on it.
fn share(n: &Node, need: u64) -> f64 {
    n.reserved.saturating_add(need) as f64 / n.capacity.max(1) as f64
}

/// A node whose share in use, with the room, would pass this multiple of the mean share of
/// the nodes ranked with it goes after every node that stays under it, whatever the
/// strategy: "consistent hashing with bounded loads" (Mirrokni, Thorup, Zadimoghaddam,
/// SODA 2018), applied to every strategy. Without it round robin and rendezvous hashing give
/// every node the same number of rooms, not the same share of its capacity, so the smallest
/// nodes of a mixed cluster fill first, and even equal nodes drift apart as rooms of very
/// different sizes come and go (`examples/placement_sim.rs` measured the fullest node at
/// 1.3 to 3 times the mean without it; docs/cluster.md, "Placement at scale"). A preference,
/// never a refusal: nodes over the bound remain in the list, after the others.
pub const LOAD_BOUND: f64 = 1.1;

/// `ok` (eligible nodes) most preferred first by `strategy`, then nodes over
/// [`LOAD_BOUND`] moved behind the others (in that order); and the bound's share.
fn order(
    nodes: &[Node],
    mut ok: Vec<usize>,
    room: &str,
    need: u64,
    strategy: Strategy,
    entropy: u64,
) -> (Vec<usize>, f64) {
    match strategy {
        Strategy::LeastLoaded => {
            // Lowest share in use with the room first: on nodes of mixed capacity the
            // "freest" node is the least used in proportion, not the one with the most
            // consumers free (which would fill the big nodes' extra room first and leave
            // small nodes idle). More free consumers, then the id, break ties, so the order
            // is total and repeatable.
            // (Two choices come after the bound, among the nodes under it.) Keys computed
            // once per node: a ranking sorts every eligible node, a thousand of them in a
            // large cluster. A share is never negative, so its bits order like its value.
            ok.sort_by_cached_key(|&i| {
                let n = &nodes[i];
                (
                    share(n, need).to_bits(),
                    Reverse(n.free()),
                    n.node_id.as_str(),
                )
            });
        }
        Strategy::RoundRobin => {
            // (The turn is taken after the bound, among the nodes under it.)
            ok.sort_by(|&a, &b| nodes[a].node_id.cmp(&nodes[b].node_id));
        }
        Strategy::ConsistentHash => {
            // Rendezvous (highest random weight) hashing: adding or removing a node moves only
            // the rooms that score highest on it, and the fallbacks are the next scores.
            ok.sort_by_cached_key(|&i| Reverse(Affinity::of(room, &nodes[i])));
        }
    }
    let (mut under, over, limit) = bound(nodes, ok, need);
    match strategy {
        Strategy::LeastLoaded => two_choices(&mut under, entropy),
        // The turn among the nodes under the bound: taking it among all nodes and then
        // skipping those over it would hand every turn that falls on a run of full nodes
        // to the same next one.
        Strategy::RoundRobin if !under.is_empty() => {
            let start = (entropy % under.len() as u64) as usize;
            under.rotate_left(start);
        }
        _ => {}
    }
    under.extend(over);
    (under, limit)
}

/// Power of two choices on `sorted` (best first): two distinct entries at random, the better
/// one moved to the front. The best is still favoured, but a burst placed from the same
/// (stale) view spreads instead of all landing on it.
fn two_choices(sorted: &mut Vec<usize>, entropy: u64) {
    let k = sorted.len();
    if k < 2 {
        return;
    }
    let a = (entropy % k as u64) as usize;
    let mut b = ((entropy / k as u64) % (k as u64 - 1)) as usize;
    if b >= a {
        b += 1;
    }
    let chosen = sorted.remove(a.min(b)); // The lower index is the better one.
    sorted.insert(0, chosen);
}

/// `order` split by [`LOAD_BOUND`]: the nodes whose share in use with the room stays within
/// the bound, in `order`'s order, and the others by that share, lowest first (stable:
/// equals keep `order`'s order); and the bound (`f64::MAX` when `order` is empty). The bound is `LOAD_BOUND` × the mean share of `order` with
/// the room, or × the lowest share the room can make on any of them when that is higher:
/// a room too big to stay under the mean's bound anywhere (a large room at a moderate
/// load) goes to the nodes it weighs least on, not to where the strategy's turn or hash
/// falls (a third of a small node in one room), and there are always some to choose
/// among. An idle cluster of equal nodes keeps the strategy's order; one of mixed nodes
/// fills its largest first until the shares even out. (The paper's "an empty node takes
/// any room" ceiling was measured worse: several control planes ranking from views a few
/// seconds old all saw the same empty small nodes and piled large rooms onto them.)
fn bound(nodes: &[Node], order: Vec<usize>, need: u64) -> (Vec<usize>, Vec<usize>, f64) {
    let (used, capacity) = order.iter().fold((need, 0u64), |(u, c), &i| {
        (
            u.saturating_add(nodes[i].reserved),
            c.saturating_add(nodes[i].capacity),
        )
    });
    let mean = used as f64 / capacity.max(1) as f64;
    let share = |i: usize| share(&nodes[i], need);
    let least = order
        .iter()
        .map(|&i| share(i))
        .fold(f64::INFINITY, f64::min);
    let limit = LOAD_BOUND * mean.max(least);
    let limit = if limit.is_finite() { limit } else { f64::MAX };
    let (under, mut over): (Vec<usize>, Vec<usize>) =
        order.into_iter().partition(|&i| share(i) <= limit);
    // Shares are never negative: their bits order like their values.
    over.sort_by_cached_key(|&i| share(i).to_bits());
    (under, over, limit)
}

/// How much `room` wants a node in rendezvous hashing, weighted by the node's capacity
/// (Schindelhauer and Schomaker's weighted rendezvous: `capacity / −ln(u)`, `u` the node's
/// hash with the room in (0, 1]): a node gets rooms in proportion to its capacity, and on
/// nodes of equal capacity the order is the plain hash order. Ties (equal scores) go to the
/// lower node id.
#[derive(Clone, Debug)]
struct Affinity<'a>(f64, Reverse<&'a str>);

impl PartialEq for Affinity<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Affinity<'_> {}

impl PartialOrd for Affinity<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Affinity<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .total_cmp(&other.0)
            .then_with(|| self.1.cmp(&other.1))
    }
}

impl<'a> Affinity<'a> {
    fn of(room: &str, node: &'a Node) -> Self {
        // The top 53 bits as a fraction in (0, 1]: never 0, so the logarithm is finite.
        let u = ((score(room, &node.node_id) >> 11) + 1) as f64 / (1u64 << 53) as f64;
        // u = 1 gives −ln(u) = 0: the smallest positive divisor instead, the top score.
        let spread = (-u.ln()).max(f64::MIN_POSITIVE);
        Affinity(
            node.capacity as f64 / spread,
            Reverse(node.node_id.as_str()),
        )
    }
}

/// The node of `candidates` that `room` hashes to first (weighted rendezvous, as
/// `consistent_hash` ranks, without the load bound): stable for a room while its node is
/// among the candidates. None when there are none.
pub fn rendezvous<'a>(
    room: &str,
    candidates: impl IntoIterator<Item = &'a Node>,
) -> Option<&'a Node> {
    candidates.into_iter().max_by_key(|n| Affinity::of(room, n))
}

/// Reserve `need` consumers on the node `ranking` chooses (ranked from `view`) in `nodes`
/// as they are now. Returns its index in `nodes`, or None when none accepts the room. This
/// is the step a store runs atomically.
pub fn commit(nodes: &mut [Node], view: &[Node], ranking: &Ranking, need: u64) -> Option<usize> {
    let chosen = ranking.choose(need, |i| {
        let id = &view.get(i)?.node_id;
        nodes.iter().find(|n| n.node_id == *id)
    })?;
    let i = nodes
        .iter()
        .position(|n| n.node_id == view[chosen].node_id)?;
    nodes[i].reserved += need;
    Some(i)
}

/// A stable 64-bit score of (room, node): FNV-1a over both, then the SplitMix64 finalizer
/// so close inputs spread. Stable across processes and versions; changing it moves rooms.
fn score(room: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes().chain([0xff]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finalizer; also what the stores use to turn a counter into entropy.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// [`rank`]'s order alone, with nearness by region: what most tests look at.
#[cfg(test)]
fn rank_order(
    nodes: &[Node],
    room: &str,
    need: u64,
    pool: &PoolFilter,
    region: Option<&str>,
    strategy: Strategy,
    entropy: u64,
) -> Vec<usize> {
    rank(
        nodes,
        room,
        need,
        pool,
        Near::region(region),
        strategy,
        entropy,
    )
    .order
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use std::collections::BTreeMap;

    use super::rank_order as rank;

    fn node(id: &str, pool: Option<&str>) -> Node {
        Node {
            node_id: id.into(),
            url: String::new(),
            media_address: String::new(),
            workers: 1,
            capacity: 100,
            reserved: 0,
            healthy: true,
            draining: false,
            overloaded: false,
            load: BTreeMap::new(),
            labels: pool
                .map(|p| BTreeMap::from([("pool".to_owned(), p.to_owned())]))
                .unwrap_or_default(),
            region: None,
            relay_rtt_ms: BTreeMap::new(),
            registered_ms: 0,
            heartbeat_ms: 0,
        }
    }

    #[test]
    fn pools_keep_rooms_apart() {
        let pools = [PoolBinding {
            prefix: "acme-".into(),
            pool: "acme".into(),
        }];
        let (a, other, free) = (
            node("a", Some("acme")),
            node("o", Some("other")),
            node("f", None),
        );
        let acme = PoolFilter::for_room("acme-standup", &pools);
        assert_eq!(acme, PoolFilter::Only("acme".into()));
        assert!(acme.allows(&a) && !acme.allows(&other) && !acme.allows(&free));
        let rest = PoolFilter::for_room("meet", &pools);
        assert!(!rest.allows(&a) && rest.allows(&other) && rest.allows(&free));
        let any = PoolFilter::for_room("acme-x", &[]);
        assert!(any.allows(&a) && any.allows(&free));
    }

    /// Three `acme` nodes, fuller than the two others, which are entirely free: a filter
    /// applied after ranking would see the free non-pool nodes win most draws.
    fn mixed() -> (Vec<Node>, [PoolBinding; 1]) {
        let mut nodes = vec![
            node("o1", Some("other")),
            node("a1", Some("acme")),
            node("f1", None),
            node("a2", Some("acme")),
            node("a3", Some("acme")),
        ];
        nodes[1].reserved = 90; // a1: 10 free, the pool's fullest
        nodes[3].reserved = 50; // a2: 50 free
        nodes[4].reserved = 10; // a3: 90 free, the pool's freest
        let pools = [PoolBinding {
            prefix: "acme-".into(),
            pool: "acme".into(),
        }];
        (nodes, pools)
    }

    #[test]
    fn a_pool_bound_room_never_lands_outside_its_pool() {
        let (nodes, pools) = mixed();
        for s in [
            Strategy::LeastLoaded,
            Strategy::RoundRobin,
            Strategy::ConsistentHash,
        ] {
            for e in 0..500u64 {
                let room = format!("acme-{e}");
                let filter = PoolFilter::for_room(&room, &pools);
                let r = rank(&nodes, &room, 5, &filter, None, s, mix(e));
                assert_eq!(r.len(), 3, "{s:?}: every acme node, nothing else");
                assert!(
                    r.iter().all(|&i| nodes[i].labels["pool"] == "acme"),
                    "{s:?}: {r:?}"
                );
                // And the other rooms never land in the bound pool.
                let room = format!("meet-{e}");
                let filter = PoolFilter::for_room(&room, &pools);
                let r = rank(&nodes, &room, 5, &filter, None, s, mix(e));
                let ids: Vec<&str> = r.iter().map(|&i| nodes[i].node_id.as_str()).collect();
                assert_eq!(ids.len(), 2, "{s:?}: {ids:?}");
                assert!(ids.contains(&"o1") && ids.contains(&"f1"), "{s:?}: {ids:?}");
            }
        }
        // A pool with no room left refuses rather than spilling over.
        let filter = PoolFilter::for_room("acme-big", &pools);
        assert!(rank(
            &nodes,
            "acme-big",
            95,
            &filter,
            None,
            Strategy::LeastLoaded,
            1
        )
        .is_empty());
    }

    #[test]
    fn power_of_two_choices_draws_among_the_pool() {
        let (mut nodes, pools) = mixed();
        // Pool nodes a little apart, all within the load bound: the freest acme node wins
        // 2/3 of the draws, the middle one 1/3, the fullest never; the free nodes outside
        // the pool never. (Filtering after ranking gave a2 only ~1/10.)
        nodes[1].reserved = 48; // a1, the pool's fullest
        nodes[3].reserved = 46; // a2
        nodes[4].reserved = 44; // a3, the pool's freest
        let filter = PoolFilter::for_room("acme-x", &pools);
        let mut first = BTreeMap::<&str, u32>::new();
        for e in 0..3000u64 {
            let r = rank(
                &nodes,
                "acme-x",
                1,
                &filter,
                None,
                Strategy::LeastLoaded,
                mix(e),
            );
            *first.entry(nodes[r[0]].node_id.as_str()).or_default() += 1;
        }
        assert!(first["a3"] > 1800 && first["a3"] < 2200, "{first:?}");
        assert!(first["a2"] > 800, "{first:?}");
        assert!(!first.contains_key("a1"), "{first:?}");
        assert_eq!(first.len(), 2, "{first:?}");
    }

    #[test]
    fn round_robin_takes_turns_within_the_pool() {
        let (mut nodes, pools) = mixed();
        // Equally used, so the load bound keeps out of the turns.
        for n in &mut nodes {
            n.reserved = 50;
        }
        let filter = PoolFilter::for_room("acme-x", &pools);
        let mut first = BTreeMap::<&str, u32>::new();
        for counter in 0..300u64 {
            let r = rank(
                &nodes,
                "acme-x",
                1,
                &filter,
                None,
                Strategy::RoundRobin,
                counter,
            );
            *first.entry(nodes[r[0]].node_id.as_str()).or_default() += 1;
        }
        assert_eq!(
            first,
            BTreeMap::from([("a1", 100), ("a2", 100), ("a3", 100)])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use super::rank_order as rank;

    fn node(id: &str, capacity: u64, reserved: u64) -> Node {
        Node {
            node_id: id.into(),
            url: format!("http://{id}:8080"),
            media_address: "127.0.0.1".into(),
            workers: 1,
            capacity,
            reserved,
            healthy: true,
            draining: false,
            overloaded: false,
            load: BTreeMap::new(),
            labels: BTreeMap::new(),
            region: None,
            relay_rtt_ms: BTreeMap::new(),
            registered_ms: 0,
            heartbeat_ms: 0,
        }
    }

    const ANY: PoolFilter = PoolFilter::Any;

    const ALL: [Strategy; 3] = [
        Strategy::LeastLoaded,
        Strategy::RoundRobin,
        Strategy::ConsistentHash,
    ];

    #[test]
    fn unfit_nodes_are_never_chosen() {
        let mut nodes = vec![
            node("sick", 1000, 0),
            node("drained", 1000, 0),
            node("hot", 1000, 0),
            node("full", 1000, 995),
            node("ok", 100, 0),
        ];
        nodes[0].healthy = false;
        nodes[1].draining = true;
        nodes[2].overloaded = true;
        for s in ALL {
            for e in 0..200 {
                let r = rank(&nodes, &format!("room{e}"), 10, &ANY, None, s, mix(e));
                assert_eq!(r, vec![4], "{s:?}");
            }
        }
        nodes[4].healthy = false;
        for s in ALL {
            assert!(rank(&nodes, "r", 10, &ANY, None, s, 7).is_empty());
        }
    }

    #[test]
    fn least_loaded_favours_free_nodes_but_spreads_a_burst() {
        let nodes = vec![
            node("a", 1000, 900),
            node("b", 1000, 0),
            node("c", 1000, 300),
            node("d", 1000, 400),
        ];
        let mut first = BTreeMap::new();
        for e in 0..3000u64 {
            let r = rank(&nodes, "r", 1, &ANY, None, Strategy::LeastLoaded, mix(e));
            assert_eq!(r.len(), 4);
            assert_eq!(nodes[r[3]].node_id, "a", "over the load bound: last");
            *first.entry(nodes[r[0]].node_id.clone()).or_insert(0) += 1;
        }
        // Two choices among b, c and d (a is far over the mean): two of three picks hold
        // b, the freest; c wins the rest; d, the fullest of them, never; a never.
        assert!(first["b"] > 1800 && first["b"] < 2200, "{first:?}");
        assert!(first["c"] > 800, "{first:?}");
        assert!(!first.contains_key("a"), "{first:?}");
        assert!(!first.contains_key("d"), "{first:?}");
    }

    #[test]
    fn round_robin_rotates_in_id_order() {
        let nodes = vec![node("c", 10, 0), node("a", 10, 0), node("b", 10, 0)];
        let ids = |e| -> Vec<&str> {
            rank(&nodes, "r", 1, &ANY, None, Strategy::RoundRobin, e)
                .into_iter()
                .map(|i| nodes[i].node_id.as_str())
                .collect()
        };
        assert_eq!(ids(0), ["a", "b", "c"]);
        assert_eq!(ids(1), ["b", "c", "a"]);
        assert_eq!(ids(5), ["c", "a", "b"]);
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_little() {
        let nodes: Vec<Node> = (0..5).map(|i| node(&format!("n{i}"), 1000, 0)).collect();
        let pick = |nodes: &[Node], room: &str| -> String {
            let r = rank(nodes, room, 1, &ANY, None, Strategy::ConsistentHash, 0);
            nodes[r[0]].node_id.clone()
        };
        let before: Vec<String> = (0..1000)
            .map(|i| pick(&nodes, &format!("room{i}")))
            .collect();
        // Same answer whatever the entropy and the node order.
        let mut reversed = nodes.clone();
        reversed.reverse();
        for (i, n) in before.iter().enumerate() {
            assert_eq!(&pick(&reversed, &format!("room{i}")), n);
        }
        // Every node gets a share.
        for n in &nodes {
            let c = before.iter().filter(|b| **b == n.node_id).count();
            assert!(c > 120, "{} got {c}", n.node_id);
        }
        // Removing n4 moves only n4's rooms.
        let fewer = &nodes[..4];
        for (i, n) in before.iter().enumerate() {
            let now = pick(fewer, &format!("room{i}"));
            if n != "n4" {
                assert_eq!(&now, n);
            }
        }
    }

    /// Several control planes place from stale views (read before the others committed);
    /// the atomic commit still never books a node past its capacity.
    #[test]
    fn stale_views_never_double_book() {
        let mut truth = vec![node("a", 1000, 0), node("b", 700, 0), node("c", 300, 0)];
        let planes = 4;
        let mut placed = 0u64;
        let mut refused = 0;
        let mut e = 0u64;
        for round in 0..400 {
            // Every plane reads the same snapshot, then they all commit one after another.
            let views: Vec<Vec<Node>> = (0..planes).map(|_| truth.clone()).collect();
            for view in &views {
                e += 1;
                let need = 1 + (mix(e) % 13);
                let room = format!("room{round}-{e}");
                let strategy = ALL[(e % 3) as usize];
                let ranking =
                    super::rank(view, &room, need, &ANY, Near::default(), strategy, mix(e));
                match commit(&mut truth, view, &ranking, need) {
                    Some(_) => placed += need,
                    None => refused += 1,
                }
                for n in &truth {
                    assert!(n.reserved <= n.capacity, "{} over-committed", n.node_id);
                }
            }
        }
        let reserved: u64 = truth.iter().map(|n| n.reserved).sum();
        assert_eq!(reserved, placed);
        assert!(refused > 0, "the test must run the cluster full");
        assert!(reserved > 1900, "capacity left unused: {reserved}");
    }

    #[test]
    fn least_loaded_compares_shares_not_free_consumers() {
        // A small node a quarter used and a big one half used: the big one has more
        // consumers free, the small one the lower share. The small one wins every draw.
        let nodes = vec![node("small", 400, 100), node("big", 4000, 2000)];
        for e in 0..200u64 {
            let r = rank(&nodes, "r", 10, &ANY, None, Strategy::LeastLoaded, mix(e));
            assert_eq!(nodes[r[0]].node_id, "small");
        }
    }

    #[test]
    fn nodes_far_over_the_mean_go_last() {
        // "hot" is at 0.9 while the others are at 0.2: whatever the strategy ranks first,
        // hot only comes after the others (never refused: it still has room).
        let nodes = vec![
            node("a", 1000, 200),
            node("hot", 1000, 900),
            node("c", 1000, 200),
            node("d", 1000, 200),
        ];
        for s in ALL {
            for e in 0..300u64 {
                let room = format!("room{e}");
                let r = rank(&nodes, &room, 5, &ANY, None, s, mix(e));
                assert_eq!(r.len(), 4, "{s:?}");
                assert_eq!(nodes[r[3]].node_id, "hot", "{s:?}: {r:?}");
            }
        }
        // An idle cluster of equal nodes keeps the strategy's order; a room over the bound
        // everywhere goes where it weighs least.
        let idle = vec![node("a", 100, 0), node("b", 100, 0)];
        for counter in 0..4 {
            let r = rank(&idle, "r", 50, &ANY, None, Strategy::RoundRobin, counter);
            assert_eq!(r[0], (counter % 2) as usize);
        }
        let mixed = vec![node("small", 100, 10), node("big", 1000, 300)];
        for s in ALL {
            for e in 0..20 {
                let r = rank(&mixed, "r", 80, &ANY, None, s, mix(e));
                assert_eq!(
                    mixed[r[0]].node_id, "big",
                    "{s:?}: 0.38 of big, not 0.9 of small"
                );
            }
        }
    }

    #[test]
    fn consistent_hash_weighs_capacity() {
        // One node of capacity 4000 and four of 1000, all half full: the big one hashes
        // first for about half the rooms, and each room keeps its node from call to call.
        let mut nodes = vec![node("big", 4000, 2000)];
        nodes.extend((0..4).map(|i| node(&format!("n{i}"), 1000, 500)));
        let first = |room: &str| {
            let r = rank(&nodes, room, 1, &ANY, None, Strategy::ConsistentHash, 0);
            nodes[r[0]].node_id.clone()
        };
        let big = (0..4000)
            .filter(|i| first(&format!("room{i}")) == "big")
            .count();
        assert!((1800..2200).contains(&big), "{big}");
        assert_eq!(first("room7"), first("room7"));
        assert_eq!(
            rendezvous("room7", &nodes).map(|n| n.node_id.clone()),
            Some(first("room7"))
        );
    }

    #[test]
    fn the_client_region_comes_first() {
        let mut nodes = vec![
            node("x1", 1000, 0),
            node("x2", 1000, 0),
            node("y1", 1000, 900),
            node("none", 1000, 0),
        ];
        nodes[0].region = Some("x".into());
        nodes[1].region = Some("x".into());
        nodes[2].region = Some("y".into());
        for s in ALL {
            for e in 0..100u64 {
                // y1 is far fuller than the rest, and still first for a client in y.
                let r = rank(&nodes, &format!("r{e}"), 10, &ANY, Some("y"), s, mix(e));
                assert_eq!(nodes[r[0]].node_id, "y1", "{s:?}");
                assert_eq!(r.len(), 4);
                let r = rank(&nodes, &format!("r{e}"), 10, &ANY, Some("x"), s, mix(e));
                let ids: Vec<&str> = r.iter().map(|&i| nodes[i].node_id.as_str()).collect();
                assert!(
                    ids[..2].contains(&"x1") && ids[..2].contains(&"x2"),
                    "{ids:?}"
                );
            }
            // A region without room (or unknown): the others, as without a region.
            let r = rank(&nodes, "big", 200, &ANY, Some("y"), s, 3);
            assert!(r.iter().all(|&i| nodes[i].node_id != "y1"));
            assert_eq!(r.len(), 3);
            assert_eq!(
                rank(&nodes, "r", 10, &ANY, Some("zz"), s, 5),
                rank(&nodes, "r", 10, &ANY, None, s, 5)
            );
        }
    }

    /// A room moved off a dead node goes to the node that holds its streams (a hot standby)
    /// before the client's region and before emptier nodes; a holder without room is passed
    /// over like any node.
    #[test]
    fn the_holders_of_the_rooms_streams_come_first() {
        let mut nodes = vec![
            node("x1", 1000, 0),
            node("standby", 1000, 700),
            node("y1", 1000, 0),
        ];
        nodes[0].region = Some("x".into());
        nodes[1].region = Some("y".into());
        let holders = ["standby".to_owned()];
        let near = Near {
            holders: &holders,
            region: Some("x"),
        };
        for s in ALL {
            for e in 0..50u64 {
                let r = super::rank(&nodes, &format!("r{e}"), 10, &ANY, near, s, mix(e));
                let ids: Vec<&str> = r.order.iter().map(|&i| nodes[i].node_id.as_str()).collect();
                assert_eq!(ids, ["standby", "x1", "y1"], "{s:?}");
                assert_eq!(r.groups.len(), 3);
                let mut truth = nodes.clone();
                assert_eq!(commit(&mut truth, &nodes, &r, 10), Some(1), "{s:?}");
            }
            let r = super::rank(&nodes, "big", 400, &ANY, near, s, 1);
            assert_eq!(
                nodes[r.order[0]].node_id, "x1",
                "{s:?}: the standby is full"
            );
        }
    }

    #[test]
    fn commit_skips_nodes_that_changed() {
        let view = vec![node("a", 10, 0), node("gone", 10, 0), node("b", 10, 0)];
        let ranking = Ranking {
            order: vec![0, 1, 2],
            groups: vec![Group { len: 3, limit: 1.0 }],
        };
        let mut nodes = vec![node("a", 10, 0), node("b", 10, 0)];
        nodes[0].draining = true;
        assert_eq!(commit(&mut nodes, &view, &ranking, 10), Some(1));
        assert_eq!(commit(&mut nodes, &view, &ranking, 1), None);
        assert_eq!(nodes[1].reserved, 10);
        assert_eq!(nodes[0].reserved, 0);
    }

    /// Two planes rank from the same view, in which `a` is the freest node; the first
    /// commit fills `a` to the bound, so the second passes it over for the next node that
    /// stays within the bound, though `a` still has room.
    #[test]
    fn the_commit_keeps_the_load_bound_that_a_stale_view_missed() {
        let view = vec![node("a", 100, 10), node("b", 100, 30), node("c", 100, 40)];
        let ranking = super::rank(
            &view,
            "r",
            30,
            &ANY,
            Near::default(),
            Strategy::LeastLoaded,
            0,
        );
        assert_eq!(view[ranking.order[0]].node_id, "a");
        // The mean share with the room, (80 + 30) / 300, is below the least the room makes
        // anywhere (a: 0.4): the bound is 1.1 × that.
        assert!((ranking.groups[0].limit - 1.1 * 0.4).abs() < 1e-12);
        let mut truth = view.clone();
        assert_eq!(commit(&mut truth, &view, &ranking, 30), Some(0));
        // `a` at 40 + 30 = 0.7 is over the bound (0.44); `b` at 0.6 too; `c` at 0.7 as
        // well: none within, so the lowest share wins, not the first in the ranking.
        assert_eq!(commit(&mut truth, &view, &ranking, 30), Some(1));
        // With every node over the bound and `a` and `c` equal, the first of them.
        assert_eq!(commit(&mut truth, &view, &ranking, 30), Some(0));
        let reserved: Vec<u64> = truth.iter().map(|n| n.reserved).collect();
        assert_eq!(reserved, [70, 60, 40]);

        // Within the bound, the ranking's order wins even when another node is emptier.
        let mut truth = vec![node("a", 100, 20), node("b", 100, 0), node("c", 100, 0)];
        let ranking = Ranking {
            order: vec![0, 1, 2],
            groups: vec![Group { len: 3, limit: 0.5 }],
        };
        assert_eq!(commit(&mut truth, &view, &ranking, 30), Some(0));
    }

    /// A tier (here the client's region) is used up before the next is looked at, even
    /// when a node of the next would stay within the bound and those of the first would not.
    #[test]
    fn the_commit_keeps_the_tiers_before_the_bound() {
        let view = vec![node("x1", 100, 60), node("y1", 100, 0)];
        let ranking = Ranking {
            order: vec![0, 1],
            groups: vec![Group { len: 1, limit: 0.5 }, Group { len: 1, limit: 0.5 }],
        };
        let mut truth = view.clone();
        assert_eq!(commit(&mut truth, &view, &ranking, 30), Some(0));
        assert_eq!(
            commit(&mut truth, &view, &ranking, 30),
            Some(1),
            "x1 is full"
        );
    }
}

#[cfg(test)]
mod consumer_tests {
    use super::*;

    #[test]
    fn consumers_are_n_times_n_minus_one() {
        assert_eq!(consumers_for(0), 1);
        assert_eq!(consumers_for(1), 1);
        assert_eq!(consumers_for(2), 2);
        assert_eq!(consumers_for(10), 90);
        assert_eq!(
            consumers_for(u32::MAX),
            u64::from(u32::MAX) * (u64::from(u32::MAX) - 1)
        );
    }
}
