//! The words forwards are planned in: a [`Forward`], its egresses ([`EgressKey`],
//! [`Egress`]), the node's sessions reduced to what a plan compares against ([`View`]), and
//! the [`Action`]s a plan answers. Pure data, no I/O.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use switchyard_shared::command::{Keying, Role, SessionId, SessionSpec, MAX_TRACKS};
use switchyard_shared::config::{Destination, ForwardSection, NodeRef};
use switchyard_shared::names::{self, BadName};

use super::sdp::SdpFileError;
use crate::core::store::StoreError;

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
        if names::forward_id("id", id).is_err() {
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

/// The node's sessions, reduced to what [`Manager::plan`](super::manager::Manager::plan) compares against.
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
    /// Add a plain egress session for `key`; report with [`Manager::added`](super::manager::Manager::added).
    Add(EgressKey),
    /// Remove this session (its egress is no longer wanted).
    Remove(SessionId),
    /// Close the relay whose `RelayOut` is this session (a node egress no longer wanted).
    CloseRelay(SessionId),
}

/// Why a forward was not made, deleted or described.
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
    #[error(transparent)]
    Name(#[from] BadName),
    /// A prefix or destination list the config rules refuse (the text says which).
    #[error("{0}")]
    Invalid(String),
    /// The cluster store, where API forwards are kept, cannot be written or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stream: the query names the stream (?stream=room/cam)")]
    NoStream,
    #[error("destination: the forward has {0} (0-based index)")]
    NoDestination(usize),
    #[error(
        "destination {0} is a node (a relay link): SDP files describe plain rtp:// destinations only"
    )]
    NodeDestination(String),
    #[error("stream {stream:?} is not under the forward's prefix {prefix:?}")]
    NotUnderPrefix { stream: String, prefix: String },
    #[error("stream {0:?} has no publisher on this node")]
    NotPublished(String),
    #[error(transparent)]
    SdpFile(#[from] SdpFileError),
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
