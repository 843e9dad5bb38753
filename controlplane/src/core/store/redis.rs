//! The cluster store in Redis, shared by every control plane of a cluster.
//!
//! Keys (every one starts with the prefix, `{switchyard}:` by default; the braces are a Redis
//! Cluster hash tag, so all keys share one slot and the scripts may touch them together):
//!
//! - `nodes`: SET of node ids.
//! - `node:<id>`: HASH `url media workers capacity reserved healthy draining overloaded
//!   load(JSON) labels(JSON) region registered heartbeat rtt(JSON)`; flags are `1`/`0`,
//!   times Unix milliseconds; `region` empty or absent for a node in no region, `rtt` the
//!   node's measured relay round-trip times (peer → ms), absent until it measured one.
//! - `rooms`: SET of room ids.
//! - `node:<id>` also holds `leased` = `1` once the node's own control plane renewed a lease.
//! - `lease:<id>`: the node's lease, a string (renewal time) with a TTL (`SET PX`), renewed
//!   every health interval by the node's control plane (`RENEW`). A node with `leased` and no
//!   `lease:<id>` is dead by lapse.
//! - `room:<id>`: HASH `node consumers maxPeerCount eventUri created placed lastNode region`;
//!   `node` is empty while the room is unplaced (its node was removed as dead), `lastNode`
//!   then names that node; `placed` is when it went to its current node.
//! - `rr`: the round-robin counter (INCR).
//! - `streams:<node>`: HASH stream → hop list (JSON array of node ids) of the streams the
//!   node publishes, replaced as a whole by the node's control plane (MULTI/EXEC).
//! - `forwards:<node>`: HASH forward id → JSON body of the forwards made through the API on
//!   that node (the forward service), read back when its control plane starts.
//!
//! A reservation is one Lua script (`RESERVE`): the control plane ranks the nodes from a
//! snapshot (`placement::rank`), and the script walks that ranking inside Redis, re-reading
//! each node's capacity, reservations and flags, and on the node the commit's walk chooses
//! (`placement::Ranking::choose`: the first that still accepts the room within the load
//! bound, else the one it weighs least on) increments `reserved` and writes the room. Redis runs a script alone, so no two control
//! planes can both take the last free consumers of a node. When the snapshot was so stale
//! that no ranked node still fits, the control plane re-reads and tries again (a few times).
//!
//! Removing a dead node is one script too (`REMOVE`): it re-checks the verdict (same
//! registration time; for a lapse, still no lease key), then marks the node's rooms unplaced
//! and deletes the node, its lease and its streams. Two control planes removing the same node
//! at once: the second finds it gone. It walks the `rooms` set: removals are rare and the
//! script is the one place that must see every room of the node at once. `PLACE_AGAIN` is
//! `RESERVE` for an existing unplaced room (it leaves a room someone placed meanwhile).
//! Scripts touch only keys under the prefix; with the default hash-tag prefix they all live
//! in one Redis Cluster slot, the room keys `REMOVE` reads by name included.
//!
//! Connection loss: every command that cannot reach Redis returns
//! [`StoreError::Unavailable`]; the connection is dropped and the next call dials again, so
//! service resumes by itself when Redis does.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Script};
use tokio::sync::Mutex;

use super::contract::{Store, StoreError};
use super::entropy::Entropy;
use super::placement::{self, Near, PoolFilter, Ranking, RoomSpec, Strategy};
use super::records::{
    Death, Incarnation, Node, Placement, Registration, Removal, Replacement, Room,
};
use super::redis_target::{Dialer, Target};
use crate::core::clock::now_ms;

/// Default key prefix (a hash tag: one Redis Cluster slot for the whole cluster state).
pub const DEFAULT_PREFIX: &str = "{switchyard}:";
/// Dialing Redis gives up after this; a placement answers 503 rather than hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// One command gives up after this.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Snapshots re-read when the ranked nodes all filled up between read and script.
const RESERVE_ATTEMPTS: usize = 4;

/// The commit's walk ([`placement::Ranking::choose`]), the start of both placing scripts.
/// `pick(first, last, limit, need)`: of the node keys `KEYS[first..=last]`, the first whose
/// node accepts `need` consumers (healthy, not draining or overloaded, with room) and stays
/// within `limit` (a share of its capacity) with them, or else the one that accepts them
/// at the lowest share; nil when none does. `walk(key, arg, need)`: the tiers, whose count
/// is `ARGV[arg]` and whose (length, limit) pairs follow it, over the node keys from
/// `KEYS[key]` on, each used up before the next: the key index chosen, or nil. Lua's
/// numbers are doubles, as the Rust walk's shares are, and a limit travels as Rust's
/// shortest round-trip decimal.
const PICK: &str = r"
local function pick(first, last, limit, need)
  local best, least = nil, nil
  for i = first, last do
    local f = redis.call('HMGET', KEYS[i], 'capacity', 'reserved', 'healthy', 'draining', 'overloaded')
    if f[1] and f[3] == '1' and f[4] ~= '1' and f[5] ~= '1' then
      local capacity = tonumber(f[1])
      local used = tonumber(f[2] or '0') + need
      if used <= capacity then
        local share = used / math.max(capacity, 1)
        if share <= limit then return i end
        if not least or share < least then best, least = i, share end
      end
    end
  end
  return best
end
local function walk(key, arg, need)
  for t = 1, tonumber(ARGV[arg]) do
    local len = tonumber(ARGV[arg + 2 * t - 1])
    local i = pick(key, key + len - 1, tonumber(ARGV[arg + 2 * t]), need)
    if i then return i end
    key = key + len
  end
  return nil
end
";

/// KEYS: rooms set, room key, node keys in order of preference.
/// ARGV: consumers, maxPeerCount, eventUri ('' = none), created ms, room id, the client's
/// region ('' = none), the tier count and each tier's (length, limit), node ids.
/// Returns {'ok', node id} | {'exists'} | {'full'}.
const RESERVE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return {'exists'} end
local need = tonumber(ARGV[1])
local i = walk(3, 7, need)
if not i then return {'full'} end
local node = ARGV[i + 5 + 2 * tonumber(ARGV[7])]
redis.call('HINCRBY', KEYS[i], 'reserved', need)
redis.call('HSET', KEYS[2], 'node', node, 'consumers', need, 'maxPeerCount', ARGV[2],
  'eventUri', ARGV[3], 'created', ARGV[4], 'placed', ARGV[4])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'region', ARGV[6]) end
redis.call('SADD', KEYS[1], ARGV[5])
return {'ok', node}
";

/// KEYS: rooms set, room key, key of the node the caller read from the room.
/// ARGV: room id, that node's id. Returns {'ok'} | {'gone'} | {'moved'}.
const RELEASE: &str = r"
local f = redis.call('HMGET', KEYS[2], 'node', 'consumers')
if not f[1] then return {'gone'} end
if f[1] ~= ARGV[2] then return {'moved'} end
if redis.call('EXISTS', KEYS[3]) == 1 then
  local left = redis.call('HINCRBY', KEYS[3], 'reserved', -tonumber(f[2]))
  if left < 0 then redis.call('HSET', KEYS[3], 'reserved', 0) end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[1])
return {'ok'}
";

/// KEYS: node key, lease key. ARGV: now ms, TTL ms. Returns 1, or 0 for an unknown node.
const RENEW: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'leased', '1')
return 1
";

/// KEYS: nodes set, node key, lease key, rooms set, streams key.
/// ARGV: node id, its registration time, 'lease' | 'checks', room key prefix.
/// Returns {'removed', room ids...} | {'alive'} | {'gone'}.
const REMOVE: &str = r"
local registered = redis.call('HGET', KEYS[2], 'registered')
if not registered then return {'gone'} end
if registered ~= ARGV[2] then return {'alive'} end
if ARGV[3] == 'lease' and redis.call('EXISTS', KEYS[3]) == 1 then return {'alive'} end
local out = {'removed'}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local key = ARGV[4] .. room
  if redis.call('HGET', key, 'node') == ARGV[1] then
    redis.call('HSET', key, 'node', '', 'lastNode', ARGV[1])
    out[#out + 1] = room
  end
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5])
redis.call('SREM', KEYS[1], ARGV[1])
return out
";

/// KEYS: room key, node keys in order of preference. ARGV: placed ms, the tier count and
/// each tier's (length, limit), node ids.
/// Returns {'ok', node id} | {'placed', node id} | {'gone'} | {'full'}.
const PLACE_AGAIN: &str = r"
local f = redis.call('HMGET', KEYS[1], 'node', 'consumers')
if not f[1] then return {'gone'} end
if f[1] ~= '' then return {'placed', f[1]} end
local need = tonumber(f[2])
local i = walk(2, 2, need)
if not i then return {'full'} end
local node = ARGV[i + 1 + 2 * tonumber(ARGV[2])]
redis.call('HINCRBY', KEYS[i], 'reserved', need)
redis.call('HSET', KEYS[1], 'node', node, 'placed', ARGV[1])
redis.call('HDEL', KEYS[1], 'lastNode')
return {'ok', node}
";

/// A ranking's tiers as the placing scripts read them: their count, then each one's length
/// and limit.
fn tiers(inv: &mut redis::ScriptInvocation<'_>, ranking: &Ranking) {
    inv.arg(ranking.groups.len());
    for g in &ranking.groups {
        inv.arg(g.len).arg(g.limit.to_string());
    }
}

/// KEYS: node key. ARGV: field, value pairs. Sets them only on a registered node.
const UPDATE_NODE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
";

/// A node's `leased` and `registered` fields.
type LeaseFields = (Option<String>, Option<String>);

pub struct RedisStore {
    dialer: Dialer,
    prefix: String,
    conn: Mutex<Option<MultiplexedConnection>>,
    reserve: Script,
    release: Script,
    update: Script,
    renew: Script,
    remove: Script,
    place_again: Script,
    entropy: Entropy,
}

/// Errors that mean "Redis cannot serve now" rather than "this request is wrong": the
/// connection failed, or the server is loading its data, failing over or read-only.
fn unavailable(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as S};
    matches!(
        e.kind(),
        ErrorKind::Server(
            S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly
        )
    ) || e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

impl RedisStore {
    /// A store on `url` (`redis://host:port/db`). Does not connect: the first call does, and
    /// a Redis that is down at start only makes calls answer `Unavailable` until it is up.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Self::with_prefix(url, DEFAULT_PREFIX, None)
    }

    /// A store on `url` (any of the forms in [`redis_target`](super::redis_target): one
    /// server, or a master found through Sentinel; TLS with `rediss`), trusting `ca` (PEM)
    /// for TLS when given.
    pub fn connect_to(url: &str, ca: Option<Vec<u8>>) -> Result<Self, StoreError> {
        Self::with_prefix(url, DEFAULT_PREFIX, ca)
    }

    /// As [`new`](Self::new), with every key under `prefix` (several clusters in one Redis).
    pub fn with_prefix(url: &str, prefix: &str, ca: Option<Vec<u8>>) -> Result<Self, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let dialer = Dialer::new(Target::parse(url)?, ca, config)?;
        Ok(Self {
            dialer,
            prefix: prefix.into(),
            conn: Mutex::new(None),
            reserve: Script::new(&[PICK, RESERVE].concat()),
            release: Script::new(RELEASE),
            update: Script::new(UPDATE_NODE),
            renew: Script::new(RENEW),
            remove: Script::new(REMOVE),
            place_again: Script::new(&[PICK, PLACE_AGAIN].concat()),
            entropy: Entropy::new(prefix.len() as u64 ^ (std::process::id() as u64) << 32),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}node:{id}", self.prefix)
    }

    fn lease_key(&self, id: &str) -> String {
        format!("{}lease:{id}", self.prefix)
    }

    fn room_key(&self, id: &str) -> String {
        format!("{}room:{id}", self.prefix)
    }

    /// The shared connection, dialed when there is none.
    async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // Through Sentinel this finds the current master: after a failover the old
        // connection failed (`fail` forgot it), and the next call lands here.
        let c = self.dialer.dial().await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Place `spec` by `ranking` (ranked from `nodes`) in one `RESERVE` script: the room,
    /// or None when no ranked node still accepts it (the ranking was stale).
    async fn commit(
        &self,
        spec: &RoomSpec,
        nodes: &[Node],
        ranking: &Ranking,
        created: u64,
    ) -> Result<Option<Placement>, StoreError> {
        let rooms_key = self.key("rooms");
        let room_key = self.room_key(&spec.room_id);
        let answer: Vec<String> = self
            .run(async |c| {
                let mut inv = self.reserve.key(&rooms_key);
                inv.key(&room_key);
                for &i in &ranking.order {
                    inv.key(self.node_key(&nodes[i].node_id));
                }
                inv.arg(spec.consumers)
                    .arg(spec.max_peer_count)
                    .arg(spec.event_notification_uri.as_deref().unwrap_or(""))
                    .arg(created)
                    .arg(&spec.room_id)
                    .arg(spec.region.as_deref().unwrap_or(""));
                tiers(&mut inv, ranking);
                for &i in &ranking.order {
                    inv.arg(&nodes[i].node_id);
                }
                inv.invoke_async(c).await
            })
            .await?;
        match answer.first().map(String::as_str) {
            Some("ok") => {
                let id = answer.get(1).cloned().unwrap_or_default();
                let mut node =
                    nodes
                        .iter()
                        .find(|n| n.node_id == id)
                        .cloned()
                        .ok_or_else(|| {
                            StoreError::Backend(format!("reserved on unknown node {id:?}"))
                        })?;
                // What the script did; a concurrent placement may have added more since.
                node.reserved += spec.consumers;
                let room = Room {
                    room_id: spec.room_id.clone(),
                    node: id,
                    consumers: spec.consumers,
                    max_peer_count: spec.max_peer_count,
                    event_notification_uri: spec.event_notification_uri.clone(),
                    created_ms: created,
                    placed_ms: created,
                    last_node: None,
                    region: spec.region.clone(),
                };
                Ok(Some(Placement { room, node }))
            }
            Some("exists") => Err(StoreError::RoomExists(spec.room_id.clone())),
            Some("full") => Ok(None),
            other => Err(StoreError::Backend(format!(
                "reserve script answered {other:?}"
            ))),
        }
    }

    /// Place `spec` ranked from `view` (nodes read earlier, perhaps stale) in one commit, as
    /// [`super::memory::MemoryStore::reserve_from_view`] does: for tests that hold both
    /// stores' commits to the same walk. `NoCapacity` when no ranked node accepts it now.
    pub async fn reserve_from_view(
        &self,
        spec: RoomSpec,
        strategy: Strategy,
        view: &[Node],
    ) -> Result<Placement, StoreError> {
        let ranking = placement::rank(
            view,
            &spec.room_id,
            spec.consumers,
            &spec.pool,
            Near::region(spec.region.as_deref()),
            strategy,
            self.entropy.next(),
        );
        self.commit(&spec, view, &ranking, now_ms())
            .await?
            .ok_or(StoreError::NoCapacity {
                need: spec.consumers,
            })
    }

    /// Turn a Redis error into a store error, forgetting the connection when it is broken.
    async fn fail(&self, e: RedisError) -> StoreError {
        if unavailable(&e) {
            *self.conn.lock().await = None;
            StoreError::Unavailable(format!("redis: {e}"))
        } else {
            StoreError::Backend(e.to_string())
        }
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, RedisError>,
    {
        let mut c = self.conn().await?;
        match f(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.fail(e).await),
        }
    }

    async fn update_node(&self, node: &str, fields: &[(&str, String)]) -> Result<(), StoreError> {
        let key = self.node_key(node);
        let found: i64 = self
            .run(async |c| {
                let mut inv = self.update.key(&key);
                for (f, v) in fields {
                    inv.arg(*f).arg(v);
                }
                inv.invoke_async(c).await
            })
            .await?;
        if found == 1 {
            Ok(())
        } else {
            Err(StoreError::NoSuchNode(node.into()))
        }
    }

    async fn read_nodes(&self, round_robin: bool) -> Result<(Vec<Node>, u64), StoreError> {
        let nodes_key = self.key("nodes");
        let rr_key = self.key("rr");
        let (mut ids, rr): (Vec<String>, u64) = self
            .run(async |c| {
                let mut p = redis::pipe();
                p.cmd("SMEMBERS").arg(&nodes_key);
                if round_robin {
                    p.cmd("INCR").arg(&rr_key);
                } else {
                    p.cmd("GET").arg(&rr_key);
                }
                let (ids, rr): (Vec<String>, Option<u64>) = p.query_async(c).await?;
                Ok((ids, rr.unwrap_or(0)))
            })
            .await?;
        ids.sort();
        if ids.is_empty() {
            return Ok((Vec::new(), rr));
        }
        let maps: Vec<HashMap<String, String>> = self
            .run(async |c| {
                let mut p = redis::pipe();
                for id in &ids {
                    p.cmd("HGETALL").arg(self.node_key(id));
                }
                p.query_async(c).await
            })
            .await?;
        let mut nodes = Vec::with_capacity(ids.len());
        for (id, m) in ids.into_iter().zip(maps) {
            if !m.is_empty() {
                nodes.push(node_from(id, &m)?);
            }
        }
        Ok((nodes, rr))
    }

    async fn read_rooms(&self, ids: &[String]) -> Result<Vec<Room>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let maps: Vec<HashMap<String, String>> = self
            .run(async |c| {
                let mut p = redis::pipe();
                for id in ids {
                    p.cmd("HGETALL").arg(self.room_key(id));
                }
                p.query_async(c).await
            })
            .await?;
        let mut rooms = Vec::with_capacity(ids.len());
        for (id, m) in ids.iter().zip(maps) {
            if !m.is_empty() {
                rooms.push(room_from(id.clone(), &m)?);
            }
        }
        Ok(rooms)
    }
}

fn field<T: std::str::FromStr>(
    m: &HashMap<String, String>,
    what: &str,
    name: &str,
) -> Result<T, StoreError> {
    m.get(name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Backend(format!("{what}: field {name:?} missing or malformed")))
}

fn flag(m: &HashMap<String, String>, name: &str) -> bool {
    m.get(name).is_some_and(|v| v == "1")
}

fn node_from(id: String, m: &HashMap<String, String>) -> Result<Node, StoreError> {
    let what = format!("node {id}");
    let labels = match m.get("labels") {
        Some(j) if !j.is_empty() => serde_json::from_str(j)
            .map_err(|e| StoreError::Backend(format!("{what}: labels: {e}")))?,
        _ => BTreeMap::new(),
    };
    Ok(Node {
        url: field(m, &what, "url")?,
        media_address: field(m, &what, "media")?,
        workers: field(m, &what, "workers")?,
        capacity: field(m, &what, "capacity")?,
        reserved: field(m, &what, "reserved")?,
        healthy: flag(m, "healthy"),
        draining: flag(m, "draining"),
        overloaded: flag(m, "overloaded"),
        // Written by heartbeats since the field was added; unreadable is "not reported".
        load: m
            .get("load")
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default(),
        labels,
        // Nodes registered before regions have neither field.
        region: m.get("region").filter(|r| !r.is_empty()).cloned(),
        relay_rtt_ms: m
            .get("rtt")
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default(),
        registered_ms: field(m, &what, "registered")?,
        heartbeat_ms: field(m, &what, "heartbeat")?,
        node_id: id,
    })
}

fn room_from(id: String, m: &HashMap<String, String>) -> Result<Room, StoreError> {
    let what = format!("room {id}");
    let created_ms = field(m, &what, "created")?;
    Ok(Room {
        // Rooms written before moves existed have no `placed`: their creation is.
        placed_ms: m
            .get("placed")
            .and_then(|v| v.parse().ok())
            .unwrap_or(created_ms),
        last_node: m.get("lastNode").filter(|n| !n.is_empty()).cloned(),
        node: field(m, &what, "node")?,
        consumers: field(m, &what, "consumers")?,
        max_peer_count: field(m, &what, "maxPeerCount")?,
        event_notification_uri: m.get("eventUri").filter(|u| !u.is_empty()).cloned(),
        region: m.get("region").filter(|r| !r.is_empty()).cloned(),
        created_ms,
        room_id: id,
    })
}

impl Store for RedisStore {
    async fn register_node(&self, reg: Registration) -> Result<Node, StoreError> {
        let key = self.node_key(&reg.node_id);
        let nodes_key = self.key("nodes");
        let labels = serde_json::to_string(&reg.labels)
            .map_err(|e| StoreError::Backend(format!("labels: {e}")))?;
        let now = now_ms().to_string();
        let m: HashMap<String, String> = self
            .run(async |c| {
                let mut p = redis::pipe();
                p.atomic()
                    .cmd("SADD")
                    .arg(&nodes_key)
                    .arg(&reg.node_id)
                    .ignore()
                    .cmd("HSET")
                    .arg(&key)
                    .arg("url")
                    .arg(&reg.url)
                    .arg("media")
                    .arg(&reg.media_address)
                    .arg("workers")
                    .arg(reg.workers)
                    .arg("capacity")
                    .arg(reg.capacity)
                    .arg("healthy")
                    .arg(1)
                    .arg("draining")
                    .arg(0)
                    .arg("overloaded")
                    .arg(0)
                    .arg("labels")
                    .arg(&labels)
                    .arg("region")
                    .arg(reg.region.as_deref().unwrap_or(""))
                    .arg("registered")
                    .arg(&now)
                    .arg("heartbeat")
                    .arg(&now)
                    .ignore()
                    // Measured again by the new incarnation's control plane.
                    .cmd("HDEL")
                    .arg(&key)
                    .arg("rtt")
                    .ignore()
                    .cmd("HSETNX")
                    .arg(&key)
                    .arg("reserved")
                    .arg(0)
                    .ignore()
                    // A fresh registration holds no lease until its control plane renews
                    // one, so a lapse of the old entry never condemns the new one.
                    .cmd("HDEL")
                    .arg(&key)
                    .arg("leased")
                    .ignore()
                    .cmd("HGETALL")
                    .arg(&key);
                let (m,): (HashMap<String, String>,) = p.query_async(c).await?;
                Ok(m)
            })
            .await?;
        node_from(reg.node_id, &m)
    }

    async fn heartbeat(
        &self,
        node: &str,
        overloaded: bool,
        load: &BTreeMap<String, f64>,
    ) -> Result<(), StoreError> {
        let load = serde_json::to_string(load).map_err(|e| StoreError::Backend(e.to_string()))?;
        let fields = [
            ("overloaded", u8::from(overloaded).to_string()),
            ("load", load),
            ("heartbeat", now_ms().to_string()),
        ];
        self.update_node(node, &fields).await
    }

    async fn set_relay_rtt(
        &self,
        node: &str,
        rtt_ms: &BTreeMap<String, f64>,
    ) -> Result<(), StoreError> {
        let rtt = serde_json::to_string(rtt_ms).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.update_node(node, &[("rtt", rtt)]).await
    }

    async fn set_health(&self, node: &str, healthy: bool) -> Result<(), StoreError> {
        self.update_node(node, &[("healthy", u8::from(healthy).to_string())])
            .await
    }

    async fn drain(&self, node: &str, draining: bool) -> Result<(), StoreError> {
        self.update_node(node, &[("draining", u8::from(draining).to_string())])
            .await
    }

    async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        Ok(self.read_nodes(false).await?.0)
    }

    async fn renew_lease(&self, node: &str, ttl_ms: u64, now_ms: u64) -> Result<(), StoreError> {
        let key = self.node_key(node);
        let lease = self.lease_key(node);
        // PX 0 is an error in Redis; a lease shorter than a millisecond is no lease anyway.
        let ttl = ttl_ms.max(1);
        let found: i64 = self
            .run(async |c| {
                self.renew
                    .key(&key)
                    .key(&lease)
                    .arg(now_ms)
                    .arg(ttl)
                    .invoke_async(c)
                    .await
            })
            .await?;
        if found == 1 {
            Ok(())
        } else {
            Err(StoreError::NoSuchNode(node.into()))
        }
    }

    async fn lapsed(&self, _now_ms: u64) -> Result<Vec<Incarnation>, StoreError> {
        // Redis expires the lease keys on its own clock; `now_ms` is the memory store's.
        let nodes_key = self.key("nodes");
        let mut ids: Vec<String> = self
            .run(async |c| redis::cmd("SMEMBERS").arg(&nodes_key).query_async(c).await)
            .await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<(LeaseFields, bool)> = self
            .run(async |c| {
                let mut p = redis::pipe();
                for id in &ids {
                    p.cmd("HMGET")
                        .arg(self.node_key(id))
                        .arg("leased")
                        .arg("registered");
                    p.cmd("EXISTS").arg(self.lease_key(id));
                }
                let flat: Vec<redis::Value> = p.query_async(c).await?;
                let mut out = Vec::with_capacity(ids.len());
                for pair in flat.chunks(2) {
                    let (fields, held) = match pair {
                        [f, e] => (
                            redis::from_redis_value::<LeaseFields>(f.clone())?,
                            redis::from_redis_value::<bool>(e.clone())?,
                        ),
                        _ => break,
                    };
                    out.push((fields, held));
                }
                Ok(out)
            })
            .await?;
        let mut out = Vec::new();
        for (id, ((leased, registered), held)) in ids.into_iter().zip(found) {
            if leased.as_deref() != Some("1") || held {
                continue;
            }
            let registered_ms = registered
                .and_then(|r| r.parse().ok())
                .ok_or_else(|| StoreError::Backend(format!("node {id}: no registration time")))?;
            out.push(Incarnation {
                node_id: id,
                registered_ms,
            });
        }
        Ok(out)
    }

    async fn remove_node(
        &self,
        node: &Incarnation,
        death: Death,
        _now_ms: u64,
    ) -> Result<Removal, StoreError> {
        let id = &node.node_id;
        let answer: Vec<String> = self
            .run(async |c| {
                self.remove
                    .key(self.key("nodes"))
                    .key(self.node_key(id))
                    .key(self.lease_key(id))
                    .key(self.key("rooms"))
                    .key(self.key(&format!("streams:{id}")))
                    .arg(id)
                    .arg(node.registered_ms)
                    .arg(death.as_str())
                    .arg(self.key("room:"))
                    .invoke_async(c)
                    .await
            })
            .await?;
        match answer.split_first() {
            Some((verdict, rooms)) if verdict == "removed" => {
                let rooms = self.read_rooms(rooms).await?;
                Ok(Removal::Removed { rooms })
            }
            Some((verdict, _)) if verdict == "alive" => Ok(Removal::Alive),
            Some((verdict, _)) if verdict == "gone" => Ok(Removal::Gone),
            other => Err(StoreError::Backend(format!(
                "remove script answered {other:?}"
            ))),
        }
    }

    async fn place_again(
        &self,
        room: &str,
        pool: &PoolFilter,
        strategy: Strategy,
        holders: &[String],
        now_ms: u64,
    ) -> Result<Replacement, StoreError> {
        let room_key = self.room_key(room);
        for _ in 0..RESERVE_ATTEMPTS {
            let r = self
                .get_room(room)
                .await?
                .ok_or_else(|| StoreError::NoSuchRoom(room.into()))?;
            let (nodes, rr) = self.read_nodes(strategy == Strategy::RoundRobin).await?;
            if !r.unplaced() {
                let node = nodes
                    .into_iter()
                    .find(|n| n.node_id == r.node)
                    .ok_or_else(|| StoreError::NoSuchNode(r.node.clone()))?;
                return Ok(Replacement {
                    placement: Placement { room: r, node },
                    from: None,
                });
            }
            let entropy = match strategy {
                Strategy::RoundRobin => rr,
                _ => self.entropy.next(),
            };
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
                entropy,
            );
            if ranking.order.is_empty() {
                return Err(StoreError::NoCapacity { need: r.consumers });
            }
            let answer: Vec<String> = self
                .run(async |c| {
                    let mut inv = self.place_again.key(&room_key);
                    for &i in &ranking.order {
                        inv.key(self.node_key(&nodes[i].node_id));
                    }
                    inv.arg(now_ms);
                    tiers(&mut inv, &ranking);
                    for &i in &ranking.order {
                        inv.arg(&nodes[i].node_id);
                    }
                    inv.invoke_async(c).await
                })
                .await?;
            match answer.first().map(String::as_str) {
                Some("ok") => {
                    let id = answer.get(1).cloned().unwrap_or_default();
                    let mut node =
                        nodes.into_iter().find(|n| n.node_id == id).ok_or_else(|| {
                            StoreError::Backend(format!("placed on unknown node {id:?}"))
                        })?;
                    node.reserved += r.consumers;
                    let mut moved = r;
                    let from = moved.last_node.take().unwrap_or_default();
                    moved.node = id;
                    moved.placed_ms = now_ms;
                    return Ok(Replacement {
                        placement: Placement { room: moved, node },
                        from: Some(from),
                    });
                }
                // Placed by someone else between our read and the script: read it again.
                Some("placed") | Some("full") => continue,
                Some("gone") => return Err(StoreError::NoSuchRoom(room.into())),
                other => {
                    return Err(StoreError::Backend(format!(
                        "place-again script answered {other:?}"
                    )))
                }
            }
        }
        Err(StoreError::NoCapacity {
            need: self.get_room(room).await?.map_or(0, |r| r.consumers),
        })
    }

    async fn reserve_room(
        &self,
        spec: RoomSpec,
        strategy: Strategy,
    ) -> Result<Placement, StoreError> {
        let created = now_ms();
        for _ in 0..RESERVE_ATTEMPTS {
            let (nodes, rr) = self.read_nodes(strategy == Strategy::RoundRobin).await?;
            let entropy = match strategy {
                Strategy::RoundRobin => rr,
                _ => self.entropy.next(),
            };
            let ranking = placement::rank(
                &nodes,
                &spec.room_id,
                spec.consumers,
                &spec.pool,
                Near::region(spec.region.as_deref()),
                strategy,
                entropy,
            );
            if ranking.order.is_empty() {
                // Still refuse a duplicate room id first, as the script would.
                if self.get_room(&spec.room_id).await?.is_some() {
                    return Err(StoreError::RoomExists(spec.room_id));
                }
                return Err(StoreError::NoCapacity {
                    need: spec.consumers,
                });
            }
            if let Some(placed) = self.commit(&spec, &nodes, &ranking, created).await? {
                return Ok(placed);
            }
        }
        Err(StoreError::NoCapacity {
            need: spec.consumers,
        })
    }

    async fn release_room(&self, room: &str) -> Result<Room, StoreError> {
        let rooms_key = self.key("rooms");
        let room_key = self.room_key(room);
        for _ in 0..RESERVE_ATTEMPTS {
            let Some(r) = self.get_room(room).await? else {
                return Err(StoreError::NoSuchRoom(room.into()));
            };
            let node_key = self.node_key(&r.node);
            let answer: Vec<String> = self
                .run(async |c| {
                    self.release
                        .key(&rooms_key)
                        .key(&room_key)
                        .key(&node_key)
                        .arg(room)
                        .arg(&r.node)
                        .invoke_async(c)
                        .await
                })
                .await?;
            match answer.first().map(String::as_str) {
                Some("ok") => return Ok(r),
                Some("gone") => return Err(StoreError::NoSuchRoom(room.into())),
                // Released and placed again elsewhere between our read and the script.
                Some("moved") => continue,
                other => {
                    return Err(StoreError::Backend(format!(
                        "release script answered {other:?}"
                    )))
                }
            }
        }
        Err(StoreError::Backend(format!("room {room:?} keeps moving")))
    }

    async fn get_room(&self, room: &str) -> Result<Option<Room>, StoreError> {
        let key = self.room_key(room);
        let m: HashMap<String, String> = self
            .run(async |c| redis::cmd("HGETALL").arg(&key).query_async(c).await)
            .await?;
        if m.is_empty() {
            Ok(None)
        } else {
            room_from(room.into(), &m).map(Some)
        }
    }

    async fn put_forward(&self, node: &str, id: &str, body: &str) -> Result<(), StoreError> {
        let key = self.key(&format!("forwards:{node}"));
        self.run(async |c| {
            redis::cmd("HSET")
                .arg(&key)
                .arg(id)
                .arg(body)
                .query_async::<i64>(c)
                .await
        })
        .await
        .map(drop)
    }

    async fn delete_forward(&self, node: &str, id: &str) -> Result<(), StoreError> {
        let key = self.key(&format!("forwards:{node}"));
        self.run(async |c| {
            redis::cmd("HDEL")
                .arg(&key)
                .arg(id)
                .query_async::<i64>(c)
                .await
        })
        .await
        .map(drop)
    }

    async fn list_forwards(&self, node: &str) -> Result<Vec<(String, String)>, StoreError> {
        let key = self.key(&format!("forwards:{node}"));
        let m: BTreeMap<String, String> = self
            .run(async |c| redis::cmd("HGETALL").arg(&key).query_async(c).await)
            .await?;
        Ok(m.into_iter().collect())
    }

    async fn list_rooms(&self) -> Result<Vec<Room>, StoreError> {
        let key = self.key("rooms");
        let mut ids: Vec<String> = self
            .run(async |c| redis::cmd("SMEMBERS").arg(&key).query_async(c).await)
            .await?;
        ids.sort();
        self.read_rooms(&ids).await
    }

    async fn set_node_streams(
        &self,
        node: &str,
        streams: BTreeMap<String, Vec<String>>,
    ) -> Result<(), StoreError> {
        let key = self.key(&format!("streams:{node}"));
        let mut fields = Vec::with_capacity(streams.len());
        for (stream, hops) in streams {
            let hops =
                serde_json::to_string(&hops).map_err(|e| StoreError::Backend(e.to_string()))?;
            fields.push((stream, hops));
        }
        self.run(async |c| {
            let mut p = redis::pipe();
            p.atomic().cmd("DEL").arg(&key).ignore();
            if !fields.is_empty() {
                p.cmd("HSET").arg(&key).arg(&fields).ignore();
            }
            p.query_async::<()>(c).await
        })
        .await
    }

    async fn all_streams(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, Vec<String>>>, StoreError> {
        let nodes_key = self.key("nodes");
        let mut ids: Vec<String> = self
            .run(async |c| redis::cmd("SMEMBERS").arg(&nodes_key).query_async(c).await)
            .await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let found: Vec<BTreeMap<String, String>> = self
            .run(async |c| {
                let mut p = redis::pipe();
                for id in &ids {
                    p.cmd("HGETALL").arg(self.key(&format!("streams:{id}")));
                }
                p.query_async(c).await
            })
            .await?;
        let mut out = BTreeMap::new();
        for (id, streams) in ids.into_iter().zip(found) {
            let mut parsed = BTreeMap::new();
            for (stream, hops) in streams {
                let hops: Vec<String> = serde_json::from_str(&hops)
                    .map_err(|e| StoreError::Backend(format!("streams:{id}: {e}")))?;
                parsed.insert(stream, hops);
            }
            if !parsed.is_empty() {
                out.insert(id, parsed);
            }
        }
        Ok(out)
    }

    async fn stream_sources(&self, stream: &str) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let nodes_key = self.key("nodes");
        let mut ids: Vec<String> = self
            .run(async |c| redis::cmd("SMEMBERS").arg(&nodes_key).query_async(c).await)
            .await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<Option<String>> = self
            .run(async |c| {
                let mut p = redis::pipe();
                for id in &ids {
                    p.cmd("HGET")
                        .arg(self.key(&format!("streams:{id}")))
                        .arg(stream);
                }
                p.query_async(c).await
            })
            .await?;
        let mut out = Vec::new();
        for (id, hops) in ids.into_iter().zip(found) {
            if let Some(h) = hops {
                let hops: Vec<String> = serde_json::from_str(&h)
                    .map_err(|e| StoreError::Backend(format!("streams:{id}: {e}")))?;
                out.push((id, hops));
            }
        }
        Ok(out)
    }
}
