//! Forwards (SRS `forward`): copy every published stream, or those under a prefix, to a list
//! of destinations: plain RTP to a recorder or transcoder (`rtp://ip:port`), or another
//! Switchyard node as hot standby (`node://<node-id>`, `node://host:port`).
//!
//! [`Manager`] is the sans-IO core. It holds the forwards and, per destination, stream and
//! publisher track, one *egress*: a `Keying::Plain` subscriber session sending that track to
//! the destination's port for it (see [`Destination::track_address`]). It is level-triggered:
//! [`Manager::plan`] compares what should exist (forwards × published streams) with what the
//! node's session table holds and answers the commands to close the gap; the driver
//! (`driver`) runs them through the same provisioning path as the API and reports back with
//! [`Manager::added`]. So a publisher appearing or leaving, a forward created or deleted, a
//! data plane restart and a control plane restart (egresses found in the snapshot are adopted,
//! not duplicated) all take the same path, and every one of them is tested here without I/O.
//!
//! A `node://` destination has one egress per (forward, destination, stream), not per track:
//! a relay link (`crate::relay::setup::open`) carries every track of the stream, and the
//! target's relay-in is a publisher there. Its `Active` session is the `RelayOut` here; it is
//! closed (`crate::relay::setup::close`, which also ends the target's ingress) when the
//! publisher leaves or the forward is deleted. Relays no forward claims (made through the
//! relay API, or by cascading) are left alone.
//!
//! An egress that cannot be set up (data plane down or restarting, command refused, target
//! node down or refusing, a relay loop) is retried with exponential backoff, [`BACKOFF_MIN`]
//! doubling to [`BACKOFF_MAX`].
//!
//! `Keying::Plain` sessions belong to forwards: one that no forward wants (its forward was
//! deleted, or it was left by a control plane that was restarted without it) is removed.

mod driver;
pub mod http;
pub mod sdp;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use switchyard_shared::command::{Keying, Role, SessionId, SessionSpec, MAX_TRACKS};
use switchyard_shared::config::{Destination, ForwardSection, NodeRef};

pub use driver::run;

/// First retry delay of an egress that could not be set up.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Most forwards a node holds (each is checked against every stream on every plan).
pub const MAX_FORWARDS: usize = 64;

/// Delay before retry number `attempts` (1 = the first retry): 1 s, 2 s, 4 s … 30 s.
pub fn backoff(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    BACKOFF_MIN.saturating_mul(1 << shift).min(BACKOFF_MAX)
}

/// One forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub id: String,
    /// Streams whose name starts with this; empty: every stream.
    pub prefix: String,
    pub destinations: Vec<Destination>,
    /// From `[[forward]]` in the config (re-created at every start; the API cannot delete it).
    pub from_config: bool,
    pub created_ms: u64,
}

impl Forward {
    /// A `[[forward]]` entry (already validated with the config).
    pub fn from_section(s: &ForwardSection, now_ms: u64) -> Result<Self, String> {
        Ok(Self {
            id: s.id.clone(),
            prefix: s.prefix.clone(),
            destinations: s.check()?,
            from_config: true,
            created_ms: now_ms,
        })
    }

    pub fn matches(&self, stream: &str) -> bool {
        stream.starts_with(&self.prefix)
    }

    /// How an API forward is kept in the cluster store (the config ones are not).
    pub fn saved(&self) -> String {
        serde_json::json!({
            "prefix": self.prefix,
            "destinations": self.destinations.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "createdMs": self.created_ms,
        })
        .to_string()
    }

    /// Back from [`saved`](Self::saved), checked as the API checks a new one.
    pub fn from_saved(id: &str, body: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Saved {
            prefix: String,
            destinations: Vec<String>,
            created_ms: u64,
        }
        let s: Saved = serde_json::from_str(body).map_err(|e| e.to_string())?;
        if !switchyard_shared::config::valid_forward_id(id) {
            return Err("bad id".into());
        }
        Ok(Self {
            id: id.to_owned(),
            destinations: switchyard_shared::config::check_forward(&s.prefix, &s.destinations)?,
            prefix: s.prefix,
            from_config: false,
            created_ms: s.created_ms,
        })
    }
}

/// What one egress is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EgressState {
    /// Due to be set up at the next plan.
    Pending,
    /// Its add is with the driver.
    Starting,
    /// Its session runs.
    Active(SessionId),
    /// Setting it up failed; tried again at `retry_at`.
    Backoff { retry_at: Instant },
}

impl EgressState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Active(_) => "active",
            Self::Backoff { .. } => "backoff",
        }
    }
}

/// Every state name, for metrics (each reported, zero or not).
pub const STATE_NAMES: [&str; 4] = ["pending", "starting", "active", "backoff"];

/// Names one egress: forward, destination, stream, publisher track (always 0 for a node
/// destination, whose one relay carries every track).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EgressKey {
    pub forward: String,
    pub destination: Destination,
    pub stream: String,
    pub track: u8,
}

impl EgressKey {
    /// Where this egress sends its RTP.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.destination.track_address(self.track)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    pub state: EgressState,
    /// Failed set-up attempts since it last ran.
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A published stream as the plan needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub stream: String,
    /// Publisher tracks to forward: its declared SSRCs, or [`MAX_TRACKS`] when it declared
    /// none (the data plane learns them as they come; unused ones just carry nothing).
    pub tracks: u8,
}

/// A relay link from this node, from the relay book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaySession {
    /// Its `RelayOut` session.
    pub id: SessionId,
    pub stream: String,
    pub target_node: String,
    /// The target's control plane base URL.
    pub target_url: String,
}

impl RelaySession {
    /// Whether this relay is what `destination` asks for (`node://id` by node id,
    /// `node://host:port` by the `http://host:port` it was opened to).
    pub fn serves(&self, destination: &Destination) -> bool {
        match destination {
            Destination::Node(NodeRef::Id(id)) => self.target_node == *id,
            Destination::Node(NodeRef::Addr(a)) => self.target_url == node_url(a),
            Destination::Rtp(_) => false,
        }
    }
}

/// The control plane base URL of a `node://host:port` destination.
pub fn node_url(addr: &str) -> String {
    format!("http://{addr}")
}

/// A running plain egress session, from the session table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainSession {
    pub id: SessionId,
    pub stream: String,
    pub remote: Option<SocketAddr>,
    pub tracks: u8,
}

/// The node's sessions, reduced to what [`Manager::plan`] compares against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub published: Vec<Published>,
    pub plain: Vec<PlainSession>,
    /// Relay links from this node (those of node egresses among them).
    pub relays: Vec<RelaySession>,
}

impl View {
    /// From the control plane's session table.
    pub fn of<'a>(sessions: impl IntoIterator<Item = &'a SessionSpec>) -> Self {
        let mut v = View::default();
        for s in sessions {
            match (&s.role, &s.keying) {
                (Role::Publisher { ssrcs, .. }, _) => v.published.push(Published {
                    stream: s.stream.clone(),
                    tracks: if ssrcs.is_empty() {
                        MAX_TRACKS as u8
                    } else {
                        ssrcs.len().min(MAX_TRACKS) as u8
                    },
                }),
                (Role::Subscriber { tracks, .. }, Keying::Plain) => v.plain.push(PlainSession {
                    id: s.id,
                    stream: s.stream.clone(),
                    remote: s.remote,
                    tracks: *tracks,
                }),
                _ => {}
            }
        }
        v
    }
}

/// What the driver should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add a plain egress session for `key`; report with [`Manager::added`].
    Add(EgressKey),
    /// Remove this session (its egress is no longer wanted).
    Remove(SessionId),
    /// Close the relay whose `RelayOut` is this session (a node egress no longer wanted).
    CloseRelay(SessionId),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("a forward with this id already exists")]
    Exists,
    #[error("no such forward")]
    NotFound,
    #[error("forward {0:?} comes from the config file; remove it there")]
    FromConfig(String),
    #[error("the node holds at most {MAX_FORWARDS} forwards")]
    TooMany,
}

#[derive(Debug, Default)]
pub struct Manager {
    forwards: BTreeMap<String, Forward>,
    egresses: BTreeMap<EgressKey, Egress>,
    /// Failed set-up attempts, ever (a counter for metrics).
    retries: u64,
    next_id: u64,
    /// Leave plain sessions no forward claims alone: set while the forwards saved in the
    /// cluster store are not read back yet, since their egresses would look unclaimed.
    pub keep_unclaimed: bool,
    /// Relays of node egresses whose forward was deleted: closed by the next plan.
    closing: Vec<SessionId>,
}

impl Manager {
    pub fn new() -> Self {
        Self {
            next_id: 1,
            ..Self::default()
        }
    }

    pub fn add(&mut self, f: Forward) -> Result<(), ForwardError> {
        if self.forwards.contains_key(&f.id) {
            return Err(ForwardError::Exists);
        }
        if self.forwards.len() >= MAX_FORWARDS {
            return Err(ForwardError::TooMany);
        }
        self.forwards.insert(f.id.clone(), f);
        Ok(())
    }

    /// A fresh id for a forward made through the API (`fwd-N`, never one in use).
    pub fn allocate_id(&mut self) -> String {
        loop {
            let id = format!("fwd-{}", self.next_id);
            self.next_id += 1;
            if !self.forwards.contains_key(&id) {
                return id;
            }
        }
    }

    /// Delete an API forward. Its egress sessions are removed by the next plan.
    pub fn delete(&mut self, id: &str) -> Result<Forward, ForwardError> {
        match self.forwards.get(id) {
            None => return Err(ForwardError::NotFound),
            Some(f) if f.from_config => return Err(ForwardError::FromConfig(id.to_owned())),
            Some(_) => {}
        }
        let closing = &mut self.closing;
        self.egresses.retain(|k, e| {
            if k.forward != id {
                return true;
            }
            if let (true, EgressState::Active(s)) = (k.destination.is_node(), &e.state) {
                closing.push(*s);
            }
            false
        });
        self.forwards.remove(id).ok_or(ForwardError::NotFound)
    }

    pub fn get(&self, id: &str) -> Option<&Forward> {
        self.forwards.get(id)
    }

    pub fn forwards(&self) -> impl Iterator<Item = &Forward> {
        self.forwards.values()
    }

    /// The egresses of forward `id`.
    pub fn egresses_of<'a>(
        &'a self,
        id: &'a str,
    ) -> impl Iterator<Item = (&'a EgressKey, &'a Egress)> + 'a {
        self.egresses.iter().filter(move |(k, _)| k.forward == id)
    }

    /// Egresses per state, in [`STATE_NAMES`] order.
    pub fn state_counts(&self) -> [u64; 4] {
        let mut n = [0u64; 4];
        for e in self.egresses.values() {
            if let Some(i) = STATE_NAMES.iter().position(|s| *s == e.state.name()) {
                n[i] += 1;
            }
        }
        n
    }

    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Compare what should run with `view` and say what to do. Every `Add` marks its egress
    /// `Starting` until [`added`](Self::added) reports the outcome.
    pub fn plan(&mut self, now: Instant, view: &View) -> Vec<Action> {
        let mut wanted = BTreeMap::new();
        for f in self.forwards.values() {
            for p in view.published.iter().filter(|p| f.matches(&p.stream)) {
                for destination in &f.destinations {
                    // One relay carries every track of a stream to a node.
                    let tracks = if destination.is_node() { 1 } else { p.tracks };
                    for track in 0..tracks {
                        let key = EgressKey {
                            forward: f.id.clone(),
                            destination: destination.clone(),
                            stream: p.stream.clone(),
                            track,
                        };
                        wanted.insert(key, ());
                    }
                }
            }
        }
        let mut actions = Vec::new();
        let live: HashSet<SessionId> = view.plain.iter().map(|s| s.id).collect();
        let live_relays: HashSet<SessionId> = view.relays.iter().map(|r| r.id).collect();
        let mut removing = HashSet::new();
        // Relays of deleted forwards' node egresses.
        for id in std::mem::take(&mut self.closing) {
            if live_relays.contains(&id) && removing.insert(id) {
                actions.push(Action::CloseRelay(id));
            }
        }
        // Egresses no longer wanted: their sessions go, and so do they.
        let mut gone = Vec::new();
        for (k, e) in &self.egresses {
            if !wanted.contains_key(k) {
                gone.push(k.clone());
                if let EgressState::Active(id) = e.state {
                    if k.destination.is_node() {
                        if live_relays.contains(&id) && removing.insert(id) {
                            actions.push(Action::CloseRelay(id));
                        }
                    } else if live.contains(&id) && removing.insert(id) {
                        actions.push(Action::Remove(id));
                    }
                }
            }
        }
        for k in gone {
            self.egresses.remove(&k);
        }
        let mut claimed: HashSet<SessionId> = self
            .egresses
            .values()
            .filter_map(|e| match e.state {
                EgressState::Active(id) => Some(id),
                _ => None,
            })
            .collect();
        for key in wanted.into_keys() {
            let e = self.egresses.entry(key.clone()).or_insert(Egress {
                state: EgressState::Pending,
                attempts: 0,
                last_error: None,
            });
            let node = key.destination.is_node();
            match e.state {
                EgressState::Starting => continue,
                EgressState::Active(id) if !node && live.contains(&id) => continue,
                EgressState::Active(id) if node && live_relays.contains(&id) => continue,
                EgressState::Active(id) => {
                    // The data plane lost it (refused on re-provisioning, or ended it).
                    claimed.remove(&id);
                    e.last_error = Some(if node {
                        "the relay ended without being closed".into()
                    } else {
                        "the session ended without being removed".into()
                    });
                    e.state = EgressState::Pending;
                }
                _ => {}
            }
            // A session for it may already run: left by an earlier control plane (found in
            // the data plane's snapshot), or set up by an add whose answer was lost.
            // For a node egress: a relay of the stream to that node (one relay per stream
            // and target, whoever opened it).
            let found = if node {
                view.relays
                    .iter()
                    .find(|r| r.stream == key.stream && r.serves(&key.destination))
                    .map(|r| r.id)
            } else {
                view.plain
                    .iter()
                    .find(|s| {
                        !claimed.contains(&s.id)
                            && s.stream == key.stream
                            && s.remote == key.remote()
                            && s.tracks == 1 << key.track
                    })
                    .map(|s| s.id)
            };
            if let Some(id) = found {
                claimed.insert(id);
                e.state = EgressState::Active(id);
                e.attempts = 0;
                continue;
            }
            let due = match e.state {
                EgressState::Pending => true,
                EgressState::Backoff { retry_at } => now >= retry_at,
                _ => false,
            };
            if due {
                e.state = EgressState::Starting;
                actions.push(Action::Add(key));
            }
        }
        // A relay another forward's egress still uses stays.
        let in_use: HashSet<SessionId> = self
            .egresses
            .values()
            .filter_map(|e| match e.state {
                EgressState::Active(id) => Some(id),
                _ => None,
            })
            .collect();
        actions.retain(|a| !matches!(a, Action::CloseRelay(id) if in_use.contains(id)));
        // Plain sessions nobody claims belong to no forward any more.
        for s in view.plain.iter().filter(|_| !self.keep_unclaimed) {
            if !claimed.contains(&s.id) && removing.insert(s.id) {
                actions.push(Action::Remove(s.id));
            }
        }
        actions
    }

    /// The outcome of an `Add`. Returns a session to remove when its egress went away while
    /// the add was in flight.
    pub fn added(
        &mut self,
        key: &EgressKey,
        result: Result<SessionId, String>,
        now: Instant,
    ) -> Option<SessionId> {
        let Some(e) = self.egresses.get_mut(key) else {
            return result.ok();
        };
        match result {
            Ok(id) => {
                e.state = EgressState::Active(id);
                e.attempts = 0;
                e.last_error = None;
            }
            Err(err) => {
                e.attempts = e.attempts.saturating_add(1);
                e.last_error = Some(err);
                e.state = EgressState::Backoff {
                    retry_at: now + backoff(e.attempts),
                };
                self.retries += 1;
            }
        }
        None
    }
}

/// How the API shows one egress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressView {
    pub destination: String,
    pub stream: String,
    /// The publisher track (0 for a node destination: its relay carries every track).
    pub track: u8,
    /// Where the track's RTP goes (its RTCP: the port above); null for a node destination.
    #[schema(value_type = Option<String>)]
    pub remote: Option<SocketAddr>,
    pub state: &'static str,
    /// The egress session here: the plain subscriber, or for a node destination the relay's
    /// `RelayOut` (as `GET /v1/relays` shows it).
    pub session: Option<u64>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Milliseconds until the next attempt, in backoff.
    pub retry_in_ms: Option<u64>,
}

impl EgressView {
    pub fn of(k: &EgressKey, e: &Egress, now: Instant) -> Self {
        Self {
            destination: k.destination.to_string(),
            stream: k.stream.clone(),
            track: k.track,
            remote: k.remote(),
            state: e.state.name(),
            session: match e.state {
                EgressState::Active(id) => Some(id.0),
                _ => None,
            },
            attempts: e.attempts,
            last_error: e.last_error.clone(),
            retry_in_ms: match e.state {
                EgressState::Backoff { retry_at } => {
                    Some(retry_at.saturating_duration_since(now).as_millis() as u64)
                }
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(id: &str, prefix: &str, dests: &[&str]) -> Forward {
        Forward {
            id: id.into(),
            prefix: prefix.into(),
            destinations: dests
                .iter()
                .map(|d| Destination::parse(d).expect("destination"))
                .collect(),
            from_config: false,
            created_ms: 0,
        }
    }

    fn published(streams: &[(&str, u8)]) -> View {
        View {
            published: streams
                .iter()
                .map(|&(s, t)| Published {
                    stream: s.into(),
                    tracks: t,
                })
                .collect(),
            plain: Vec::new(),
            relays: Vec::new(),
        }
    }

    fn adds(actions: &[Action]) -> Vec<(String, String, u8)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Add(k) => Some((k.forward.clone(), k.stream.clone(), k.track)),
                Action::Remove(_) | Action::CloseRelay(_) => None,
            })
            .collect()
    }

    /// Confirm every add with consecutive session ids, and put the sessions in the view.
    fn confirm(m: &mut Manager, view: &mut View, actions: &[Action], now: Instant, next: &mut u64) {
        for a in actions {
            if let Action::Add(k) = a {
                let id = SessionId(*next);
                *next += 1;
                assert_eq!(m.added(k, Ok(id), now), None);
                view.plain.push(PlainSession {
                    id,
                    stream: k.stream.clone(),
                    remote: k.remote(),
                    tracks: 1 << k.track,
                });
            }
        }
    }

    fn relay(id: u64, stream: &str, node: &str, url: &str) -> RelaySession {
        RelaySession {
            id: SessionId(id),
            stream: stream.into(),
            target_node: node.into(),
            target_url: url.into(),
        }
    }

    #[test]
    fn node_destinations_get_one_egress_per_stream_and_back_off() {
        let mut m = Manager::new();
        m.add(fwd(
            "standby",
            "room/",
            &[
                "node://node-b",
                "node://10.0.0.3:8080",
                "rtp://10.0.0.9:5004",
            ],
        ))
        .expect("add");
        let t0 = Instant::now();
        let mut view = published(&[("room/cam", 2), ("other/x", 2)]);
        let actions = m.plan(t0, &view);
        let mut nodes = Vec::new();
        for a in &actions {
            if let Action::Add(k) = a {
                if k.destination.is_node() {
                    assert_eq!(
                        (k.stream.as_str(), k.track, k.remote()),
                        ("room/cam", 0, None)
                    );
                    nodes.push(k.clone());
                }
            }
        }
        // Two node egresses (not per track) plus two plain ones (one per track).
        assert_eq!(nodes.len(), 2);
        assert_eq!(actions.len(), 4);

        // node-b is down: backoff 1 s, 2 s … with the error shown.
        let b = &nodes[0];
        assert_eq!(b.destination.to_string(), "node://node-b");
        assert_eq!(
            m.added(b, Err("target control plane: refused".into()), t0),
            None
        );
        let e = m
            .egresses_of("standby")
            .find(|(k, _)| *k == b)
            .expect("egress")
            .1;
        assert_eq!((e.state.name(), e.attempts), ("backoff", 1));
        assert_eq!(
            e.last_error.as_deref(),
            Some("target control plane: refused")
        );
        assert!(adds(&m.plan(t0 + Duration::from_millis(900), &view)).is_empty());
        let again = m.plan(t0 + BACKOFF_MIN, &view);
        assert_eq!(again, [Action::Add(b.clone())]);
        m.added(b, Err("relay loop".into()), t0 + BACKOFF_MIN);
        let later = t0 + BACKOFF_MIN + backoff(2);
        assert!(m.plan(later - Duration::from_millis(1), &view).is_empty());
        assert_eq!(m.plan(later, &view), [Action::Add(b.clone())]);
        // Up now: the relay runs; attempts reset, nothing more to do.
        m.added(b, Ok(SessionId(7)), later);
        view.relays
            .push(relay(7, "room/cam", "node-b", "http://10.0.0.2:8080"));
        // The address destination's relay was opened meanwhile (its add answer was lost):
        // it is adopted, by URL, not opened twice.
        view.relays
            .push(relay(8, "room/cam", "node-c", "http://10.0.0.3:8080"));
        // A relay no forward asked for (relay API, cascade) is left alone.
        view.relays
            .push(relay(9, "other/x", "node-b", "http://10.0.0.2:8080"));
        m.added(&nodes[1], Err("lost".into()), later);
        let steady = later + BACKOFF_MAX;
        for a in m.plan(steady, &view) {
            assert!(
                matches!(a, Action::Add(ref k) if !k.destination.is_node()),
                "{a:?}"
            );
        }
        let states: Vec<_> = m
            .egresses_of("standby")
            .filter(|(k, _)| k.destination.is_node())
            .map(|(_, e)| (e.state.clone(), e.attempts))
            .collect();
        assert_eq!(
            states,
            [
                (EgressState::Active(SessionId(7)), 0),
                (EgressState::Active(SessionId(8)), 0)
            ]
        );

        // The relay ended on its own (target restarted): opened again.
        view.relays.retain(|r| r.id != SessionId(7));
        let a = m.plan(steady, &view);
        assert!(a.contains(&Action::Add(b.clone())), "{a:?}");
        m.added(b, Ok(SessionId(10)), steady);
        view.relays
            .push(relay(10, "room/cam", "node-b", "http://10.0.0.2:8080"));

        // The publisher leaves: both relays close; the unclaimed one stays.
        view.published.retain(|p| p.stream != "room/cam");
        let a = m.plan(steady, &view);
        assert!(a.contains(&Action::CloseRelay(SessionId(8))), "{a:?}");
        assert!(a.contains(&Action::CloseRelay(SessionId(10))), "{a:?}");
        assert!(!a.contains(&Action::CloseRelay(SessionId(9))), "{a:?}");
        assert_eq!(m.egresses_of("standby").count(), 0);
    }

    #[test]
    fn deleting_a_forward_closes_its_relays_but_not_a_shared_one() {
        let mut m = Manager::new();
        m.add(fwd("a", "", &["node://node-b"])).expect("add");
        m.add(fwd("b", "cams/", &["node://node-b"])).expect("add");
        let now = Instant::now();
        let mut view = published(&[("cams/1", 2), ("x", 1)]);
        for a in m.plan(now, &view) {
            let Action::Add(k) = a else { panic!("add") };
            // Forward b's add finds the relay forward a opened (open is idempotent).
            let id = if k.stream == "cams/1" { 1 } else { 2 };
            m.added(&k, Ok(SessionId(id)), now);
        }
        view.relays.push(relay(1, "cams/1", "node-b", "http://b"));
        view.relays.push(relay(2, "x", "node-b", "http://b"));
        assert!(m.plan(now, &view).is_empty());
        m.delete("a").expect("delete");
        // x's relay closes; cams/1's is still forward b's.
        assert_eq!(m.plan(now, &view), [Action::CloseRelay(SessionId(2))]);
        assert!(m.plan(now, &view).is_empty());
    }

    #[test]
    fn backoff_doubles_from_one_second_to_thirty() {
        let s: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn matching_streams_get_one_egress_per_destination_and_track() {
        let mut m = Manager::new();
        m.add(fwd("all", "", &["rtp://127.0.0.1:5004"]))
            .expect("add");
        m.add(fwd(
            "cams",
            "cams/",
            &["rtp://127.0.0.1:6000", "rtp://127.0.0.1:7000"],
        ))
        .expect("add");
        assert_eq!(
            m.add(fwd("all", "", &["rtp://127.0.0.1:5004"])),
            Err(ForwardError::Exists)
        );
        let view = published(&[("cams/a", 2), ("talks/b", 1)]);
        let a = adds(&m.plan(Instant::now(), &view));
        assert_eq!(
            a,
            [
                ("all".into(), "cams/a".into(), 0),
                ("all".into(), "cams/a".into(), 1),
                ("all".into(), "talks/b".into(), 0),
                ("cams".into(), "cams/a".into(), 0),
                ("cams".into(), "cams/a".into(), 1),
                ("cams".into(), "cams/a".into(), 0),
                ("cams".into(), "cams/a".into(), 1),
            ]
            .map(|(f, s, t): (String, String, u8)| (f, s, t))
        );
        assert_eq!(m.state_counts(), [0, 7, 0, 0]);
        // In flight: a second plan adds nothing again.
        assert!(m.plan(Instant::now(), &view).is_empty());
    }

    #[test]
    fn publisher_coming_and_going() {
        let mut m = Manager::new();
        m.add(fwd("rec", "room/", &["rtp://10.0.0.9:5004"]))
            .expect("add");
        let now = Instant::now();
        let mut next = 100;
        let mut view = View::default();
        assert!(m.plan(now, &view).is_empty(), "no publisher, nothing to do");

        view.published = published(&[("room/cam", 2)]).published;
        let actions = m.plan(now, &view);
        assert_eq!(actions.len(), 2);
        let Action::Add(k) = &actions[1] else {
            panic!("add")
        };
        assert_eq!(k.remote(), Some("10.0.0.9:5006".parse().expect("addr")));
        confirm(&mut m, &mut view, &actions, now, &mut next);
        assert_eq!(m.state_counts(), [0, 0, 2, 0]);
        assert!(m.plan(now, &view).is_empty(), "steady state");

        // The publisher leaves: both egress sessions are removed, the egresses forgotten.
        view.published.clear();
        let mut actions = m.plan(now, &view);
        actions.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(
            actions,
            [
                Action::Remove(SessionId(100)),
                Action::Remove(SessionId(101))
            ]
        );
        view.plain.clear();
        assert!(m.plan(now, &view).is_empty());
        assert_eq!(m.state_counts(), [0; 4]);

        // It comes back: set up again.
        view.published = published(&[("room/cam", 1)]).published;
        assert_eq!(m.plan(now, &view).len(), 1);
    }

    #[test]
    fn failed_setups_back_off_and_recover() {
        let mut m = Manager::new();
        m.add(fwd("rec", "", &["rtp://10.0.0.9:5004"]))
            .expect("add");
        let view = published(&[("s", 1)]);
        let t0 = Instant::now();
        let mut t = t0;
        let mut waits = Vec::new();
        for attempt in 1..=7u32 {
            let actions = m.plan(t, &view);
            assert_eq!(actions.len(), 1, "attempt {attempt} is due");
            let Action::Add(k) = &actions[0] else {
                panic!("add")
            };
            m.added(k, Err("data plane down".into()), t);
            let e = m.egresses_of("rec").next().expect("egress").1.clone();
            assert_eq!(e.attempts, attempt);
            let EgressState::Backoff { retry_at } = e.state else {
                panic!("backoff")
            };
            waits.push((retry_at - t).as_secs());
            // Not before its time.
            assert!(m
                .plan(retry_at - Duration::from_millis(1), &view)
                .is_empty());
            t = retry_at;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(m.retries(), 7);
        let view_at = m
            .egresses_of("rec")
            .next()
            .map(|(k, e)| EgressView::of(k, e, t0));
        let v = view_at.expect("view");
        assert_eq!(v.state, "backoff");
        assert_eq!(v.last_error.as_deref(), Some("data plane down"));

        let actions = m.plan(t, &view);
        let Action::Add(k) = &actions[0] else {
            panic!("add")
        };
        m.added(k, Ok(SessionId(5)), t);
        let e = m.egresses_of("rec").next().expect("egress").1;
        assert_eq!((e.attempts, e.last_error.clone()), (0, None));
        assert_eq!(e.state, EgressState::Active(SessionId(5)));
    }

    #[test]
    fn lost_sessions_are_set_up_again() {
        let mut m = Manager::new();
        m.add(fwd("rec", "", &["rtp://10.0.0.9:5004"]))
            .expect("add");
        let now = Instant::now();
        let mut view = published(&[("s", 1)]);
        let mut next = 1;
        let actions = m.plan(now, &view);
        confirm(&mut m, &mut view, &actions, now, &mut next);
        view.plain.clear(); // refused on re-provisioning after a data plane restart
        let actions = m.plan(now, &view);
        assert_eq!(adds(&actions).len(), 1);
    }

    #[test]
    fn a_restarted_control_plane_adopts_running_egresses_and_removes_orphans() {
        let now = Instant::now();
        let mut view = published(&[("s", 2)]);
        view.plain = vec![
            // Left by the previous control plane for the forward the config re-creates.
            PlainSession {
                id: SessionId(7),
                stream: "s".into(),
                remote: Some("10.0.0.9:5004".parse().expect("addr")),
                tracks: 0b01,
            },
            // One of a forward made through the API, lost with the old control plane.
            PlainSession {
                id: SessionId(8),
                stream: "s".into(),
                remote: Some("10.0.0.5:9000".parse().expect("addr")),
                tracks: 0b01,
            },
        ];
        let mut m = Manager::new();
        m.add(fwd("rec", "", &["rtp://10.0.0.9:5004"]))
            .expect("add");
        // Until the saved forwards are back, an unclaimed session may still be theirs.
        m.keep_unclaimed = true;
        let held = m.plan(now, &view);
        assert!(!held.contains(&Action::Remove(SessionId(8))), "{held:?}");
        let mut m = Manager::new();
        m.add(fwd("rec", "", &["rtp://10.0.0.9:5004"]))
            .expect("add");
        let actions = m.plan(now, &view);
        assert_eq!(
            adds(&actions),
            [("rec".into(), "s".into(), 1)],
            "track 0 adopted"
        );
        assert!(actions.contains(&Action::Remove(SessionId(8))));
        let (_, e) = m.egresses_of("rec").next().expect("egress");
        assert_eq!(e.state, EgressState::Active(SessionId(7)));
    }

    #[test]
    fn deleting_a_forward_removes_its_sessions() {
        let mut m = Manager::new();
        let id = m.allocate_id();
        assert_eq!(id, "fwd-1");
        m.add(fwd(&id, "", &["rtp://10.0.0.9:5004"])).expect("add");
        let mut cfg = fwd("cfg", "x/", &["rtp://10.0.0.9:6000"]);
        cfg.from_config = true;
        m.add(cfg).expect("add");
        assert_eq!(m.delete("cfg"), Err(ForwardError::FromConfig("cfg".into())));
        assert_eq!(m.delete("nope"), Err(ForwardError::NotFound));
        let now = Instant::now();
        let mut view = published(&[("s", 1)]);
        let mut next = 1;
        let actions = m.plan(now, &view);
        confirm(&mut m, &mut view, &actions, now, &mut next);
        m.delete(&id).expect("delete");
        assert_eq!(m.plan(now, &view), [Action::Remove(SessionId(1))]);
        // An add that was in flight for a deleted forward is undone when it lands.
        m.add(fwd("again", "", &["rtp://10.0.0.9:5004"]))
            .expect("add");
        view.plain.clear();
        let actions = m.plan(now, &view);
        let Action::Add(k) = &actions[0] else {
            panic!("add")
        };
        m.delete("again").expect("delete");
        assert_eq!(m.added(k, Ok(SessionId(9)), now), Some(SessionId(9)));
    }

    #[test]
    fn saved_forwards_come_back_the_same() {
        let f = fwd(
            "fwd-3",
            "room/",
            &["rtp://10.0.0.9:5004", "rtp://[::1]:6000"],
        );
        assert_eq!(Forward::from_saved("fwd-3", &f.saved()), Ok(f));
        assert!(Forward::from_saved("fwd-3", "{}").is_err());
        let n = fwd("n", "", &["node://n2", "node://10.0.0.2:8080"]);
        assert_eq!(Forward::from_saved("n", &n.saved()), Ok(n));
        assert!(Forward::from_saved(
            "x",
            r#"{"prefix":"","destinations":["node://a b"],"createdMs":0}"#
        )
        .is_err());
    }

    #[test]
    fn view_reads_publishers_and_plain_sessions() {
        use switchyard_shared::command::{SrtpKeys, SrtpProfile, ALL_TRACKS};
        let spec = |id: u64, role: Role, keying: Keying| SessionSpec {
            id: SessionId(id),
            worker: 0,
            stream: "s".into(),
            role,
            remote: Some("10.0.0.1:4000".parse().expect("addr")),
            keying,
            ice: None,
            twcc_ext: None,
            created_ms: 0,
            control: Default::default(),
        };
        let sub = |tracks| Role::Subscriber {
            ssrcs: vec![1, 2, 3, 4],
            payload_types: vec![],
            extensions: None,
            rtx: vec![],
            tracks,
        };
        let keys = Keying::Static(SrtpKeys {
            profile: SrtpProfile::AeadAes128Gcm,
            remote: vec![0; 28],
            local: vec![0; 28],
        });
        let specs = [
            spec(
                1,
                Role::Publisher {
                    ssrcs: vec![],
                    clock_rates: vec![],
                },
                keys.clone(),
            ),
            spec(2, sub(ALL_TRACKS), keys),
            spec(3, sub(0b10), Keying::Plain),
        ];
        let v = View::of(&specs);
        assert_eq!(
            v.published,
            [Published {
                stream: "s".into(),
                tracks: MAX_TRACKS as u8
            }]
        );
        assert_eq!(v.plain.len(), 1, "only plain subscribers");
        assert_eq!(v.plain[0].tracks, 0b10);
    }
}
