//! WHIP (RFC 9725) and WHEP signaling: an SDP offer in, the node's answer out, and a session
//! on the least-loaded worker whose ICE-lite credentials and DTLS fingerprint are in that
//! answer. The data plane does ICE, DTLS and SRTP; nothing here touches media. The routes,
//! status codes and headers are `http::webrtc`'s.
//!
//! - A session's resource is `/whip|whep/{room}/{stream}/{id}-{secret}`: the session id and
//!   128 random bits (32 hex digits) drawn for this session alone.
//! - Security contract: that resource URL is the session's capability. A token (or the public
//!   prefix) that may use the stream still needs it: anything but the exact resource of a
//!   live session is [`WebrtcError::NoSuchSession`], like a session that does not exist, so
//!   no viewer of a stream can end another viewer's session, nor learn which ids are live
//!   (ids are sequential and visible in room events). The secret is kept in the session's
//!   spec ([`crate::core::kept`]), so it outlives a control plane restart.
//! - Trickled candidates are accepted and ignored (an ICE-lite agent learns the peer's address
//!   from its checks, so remote candidates change nothing); an ICE restart is refused, as the
//!   RFC allows a server that does not support it.
//! - Discovery ([`Webrtc::locate`]): an offer for a room the cluster store places on another
//!   node goes there; a room not in the store, or on this node, is served here. The store
//!   being down never stops media: the offer is then served here too, with a warning.
//! - Cascade (`[cluster] cascade`, on by default): a WHEP offer for a stream not published
//!   here, which the store says another healthy node publishes, is served here through a
//!   relay from that node ([`Relays::pull`]), when this node is in sync with its data plane
//!   and not overloaded; otherwise (or when the relay cannot be set up) the room's node
//!   serves it. WHIP always goes to the room's node.
//!
//! Names: `room` and `stream` are ids (`switchyard_shared::names`), and `room/stream`, the
//! session's stream, is a stream name.

mod tracks;

/// A publisher's simulcast map from its negotiated media: a relay-in carries its source's.
pub(crate) use tracks::simulcast as simulcast_map;
pub(crate) use tracks::video as video_codecs;

use std::net::SocketAddr;
use std::sync::Arc;

use switchyard_shared::command::{
    IceCredentials, Keying, Opaque, Role, SessionId, SessionSpec, ALL_TRACKS, MAX_MESSAGE,
    MAX_TRACKS,
};
use switchyard_shared::names::{self, BadName};

use super::cluster::Cluster;
use super::relay::{PullError, Relays};
use super::sessions::{SessionError, Sessions};
use crate::core::clock::now_ms;
use crate::core::kept::{self, KeepError, Kept, Secret};
use crate::core::random::{self, RngError};
use crate::core::store::Store as _;
use crate::sdp::{self, AnswerParams, Direction, Negotiated, SdpError};

/// Why an offer, a resource lookup or a trickle was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebrtcError {
    #[error(transparent)]
    Name(#[from] BadName),
    #[error(transparent)]
    Sdp(#[from] SdpError),
    #[error("the offer is not UTF-8")]
    NotUtf8,
    #[error("no WebRTC publisher on stream {0}")]
    NoPublisher(String),
    /// Only an offer with outlandish codec parameters or many tracks (a browser's two tracks
    /// take a tenth of the room): refused, rather than made a session that a control plane
    /// restart would lose.
    #[error(
        "the offer's negotiated codecs and parameters do not fit in the node's \
         {MAX_MESSAGE}-byte session record; offer fewer tracks or shorter a=fmtp lines"
    )]
    DoesNotFit,
    #[error(transparent)]
    Keep(#[from] KeepError),
    #[error(transparent)]
    Rng(#[from] RngError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("no such session")]
    NoSuchSession,
    #[error("ICE restart is not supported; start a new session")]
    IceRestart,
}

/// Where an offer is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Here,
    /// The room is placed on another node: the offer goes to `url` (its control plane).
    Elsewhere {
        node: String,
        url: String,
    },
}

/// A session made from an offer.
#[derive(Debug)]
pub struct Answered {
    pub id: SessionId,
    /// The SDP answer.
    pub answer: String,
    /// The session's resource: `/whip|whep/{room}/{stream}/{id}-{secret}`.
    pub location: String,
}

/// The WHIP/WHEP service.
pub struct Webrtc {
    sessions: Arc<Sessions>,
    cluster: Arc<Cluster>,
    relays: Arc<Relays>,
    node_id: String,
}

/// The session's stream for a WHIP/WHEP path: `room/stream`, both ids.
pub fn stream_name(room: &str, stream: &str) -> Result<String, BadName> {
    names::id("room", room)?;
    names::id("stream", stream)?;
    let name = format!("{room}/{stream}");
    names::stream("room/stream", &name)?;
    Ok(name)
}

fn endpoint(dir: Direction) -> &'static str {
    match dir {
        Direction::Publish => "whip",
        Direction::Subscribe => "whep",
    }
}

impl Webrtc {
    pub fn new(
        sessions: Arc<Sessions>,
        cluster: Arc<Cluster>,
        relays: Arc<Relays>,
        node_id: String,
    ) -> Self {
        Self {
            sessions,
            cluster,
            relays,
            node_id,
        }
    }

    /// Where an offer for `room/stream` is served: here, or on the room's node. With the
    /// cascade on, a WHEP offer for a stream this node has (its publisher, or a relay that
    /// feeds it) is served here wherever the room is placed: a region's viewers are sent to
    /// a node of their region (`/v1/resolve?region=`), which holds the stream once the
    /// first of them pulled it; one for a stream published elsewhere is first tried through
    /// a cascade relay.
    pub async fn locate(
        &self,
        dir: Direction,
        room: &str,
        stream: &str,
    ) -> Result<Route, WebrtcError> {
        let name = stream_name(room, stream)?;
        let here = self.sessions.lock().node.publisher_media(&name).is_some();
        if dir == Direction::Subscribe && here && self.relays.cascades() {
            // Published or relayed here already: what a cascade would do, without a pull.
            return Ok(Route::Here);
        }
        if dir == Direction::Subscribe && !here {
            match self.relays.pull(&name).await {
                Ok(()) => return Ok(Route::Here),
                Err(PullError::NoSource) => {}
                Err(PullError::Failed(e)) => {
                    tracing::warn!(stream = %name, error = %e, "cascade failed; falling back to the room's node");
                }
            }
        }
        Ok(self.placed(room).await)
    }

    /// Where the cluster says `room` lives: here when the room is not in the store, is on
    /// this node, or the store cannot answer. A room whose node was removed as dead is
    /// placed again first, so an offer never goes to a dead node; and a node that refuses
    /// connections to its API is found dead and removed before a client is sent there
    /// (`Cluster::confirm_dead`: a publisher re-POSTing after its node died is not sent
    /// back to it for the three health rounds the verdict would otherwise take).
    async fn placed(&self, room: &str) -> Route {
        // Twice at most: once more after the room's node was found dead here.
        for _ in 0..2 {
            let placed = match self.cluster.store.get_room(room).await {
                Ok(Some(r)) if r.unplaced() => {
                    match self.cluster.ensure_placed(r, now_ms()).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(%room, error = %e, "room of a dead node not placed again: serving the offer on this node");
                            return Route::Here;
                        }
                    }
                }
                Ok(Some(r)) => r,
                Ok(None) => return Route::Here,
                Err(e) => {
                    tracing::warn!(%room, error = %e, "cluster store unavailable: serving the offer on this node");
                    return Route::Here;
                }
            };
            if placed.node == self.node_id {
                return Route::Here;
            }
            let node = match self.cluster.store.list_nodes().await {
                Ok(nodes) => nodes.into_iter().find(|n| n.node_id == placed.node),
                Err(e) => {
                    tracing::warn!(%room, error = %e, "cluster store unavailable: serving the offer on this node");
                    return Route::Here;
                }
            };
            let Some(node) = node else {
                // The room names a node the registry no longer has: nowhere better to send it.
                tracing::warn!(%room, node = %placed.node, "room placed on an unknown node: serving the offer here");
                return Route::Here;
            };
            if self.cluster.confirm_dead(&node, &self.node_id).await {
                continue;
            }
            return Route::Elsewhere {
                node: placed.node,
                url: node.url,
            };
        }
        Route::Here
    }

    /// Answer `offer` (the request body) with a new session on this node.
    pub async fn offer(
        &self,
        dir: Direction,
        room: &str,
        stream: &str,
        offer: &[u8],
    ) -> Result<Answered, WebrtcError> {
        let name = stream_name(room, stream)?;
        if offer.len() > sdp::MAX_SDP {
            return Err(SdpError::TooLarge.into());
        }
        let offer = std::str::from_utf8(offer).map_err(|_| WebrtcError::NotUtf8)?;
        if dir == Direction::Publish {
            // A publisher that moved here (its node died): it replaces the relay of its
            // stream, and this node's viewers of the stream follow it.
            self.relays.yield_to_publisher(&name).await;
        }
        let publisher = match dir {
            Direction::Publish => None,
            Direction::Subscribe => Some(
                self.sessions
                    .lock()
                    .node
                    .publisher_media(&name)
                    .ok_or_else(|| WebrtcError::NoPublisher(name.clone()))?,
            ),
        };
        let local = Local::draw()?;
        let (spec, negotiated) = self
            .sessions
            .provision(None, |id, worker, dp| {
                let cands = self.candidates(worker);
                let params = AnswerParams {
                    ice_ufrag: &local.ufrag,
                    ice_pwd: &local.pwd,
                    fingerprint: &dp.fingerprint,
                    candidates: &cands,
                    ice_tcp: self.sessions.media().ice_tcp,
                    publisher: publisher.as_deref(),
                };
                let n = sdp::answer(offer, dir, &params)?;
                let spec = session_spec(id, worker, &name, dir, publisher.as_deref(), &n, &local)?;
                if !kept::fits(&spec) {
                    return Err(WebrtcError::DoesNotFit);
                }
                Ok((spec, n))
            })
            .await?;
        let answer = negotiated.answer.clone();
        if dir == Direction::Publish {
            self.sessions
                .lock()
                .node
                .set_publisher_media(&name, spec.id, Arc::new(negotiated));
            // Listed in the store now rather than at the next relay tick: nodes whose relay
            // of the stream lost its source are waiting for it (viewer continuity). In the
            // background, so the answer never waits for the store.
            let relays = self.relays.clone();
            let stream = name.clone();
            tokio::spawn(async move {
                relays.sync_streams().await;
                // Relays onwards that a replaced relay fed carry this publisher from now on.
                relays.publisher_changed(&stream).await;
            });
        }
        Ok(Answered {
            id: spec.id,
            answer,
            location: format!(
                "/{}/{room}/{stream}/{}-{}",
                endpoint(dir),
                spec.id.0,
                local.secret.to_hex()
            ),
        })
    }

    /// The worker's media port on each of the node's addresses.
    fn candidates(&self, worker: u16) -> Vec<SocketAddr> {
        let media = self.sessions.media();
        let port = media.port.saturating_add(worker);
        media
            .announce_ips()
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect()
    }

    /// The session a WHIP/WHEP resource names: `raw` is the last path segment,
    /// `{id}-{secret}`. Everything that is not exactly a live session's resource on this
    /// room, stream and endpoint (bad syntax, an unknown id, a wrong secret, another stream,
    /// the other endpoint) is the same [`WebrtcError::NoSuchSession`], so the answer never
    /// tells an id that exists from one that does not.
    pub fn resource(
        &self,
        room: &str,
        stream: &str,
        raw: &str,
        dir: Direction,
    ) -> Result<SessionId, WebrtcError> {
        let not_found = || WebrtcError::NoSuchSession;
        let (id, hex) = raw.split_once('-').ok_or_else(not_found)?;
        // Digits only: `u64::from_str` would also take a leading `+`.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_found());
        }
        let id = id.parse::<u64>().map(SessionId).map_err(|_| not_found())?;
        let g = self.sessions.lock();
        let spec = g.node.session(id).ok_or_else(not_found)?;
        let owner = Kept::of(spec).secret.is_some_and(|s| s.matches(hex));
        let matches = owner
            && spec.stream == format!("{room}/{stream}")
            && spec.ice.is_some()
            && matches!(spec.role, Role::Publisher { .. }) == (dir == Direction::Publish);
        if matches {
            Ok(id)
        } else {
            Err(not_found())
        }
    }

    /// End the session of a resource; done once the data plane removed it.
    pub async fn end(
        &self,
        room: &str,
        stream: &str,
        raw: &str,
        dir: Direction,
    ) -> Result<(), WebrtcError> {
        let id = self.resource(room, stream, raw, dir)?;
        self.sessions.remove(id).await?;
        Ok(())
    }

    /// A trickle-ice-sdpfrag for a session (RFC 9725 §4.3): candidates are accepted and
    /// ignored; new ICE credentials (a restart) are refused.
    pub fn trickle(fragment: &[u8]) -> Result<(), WebrtcError> {
        let frag = String::from_utf8_lossy(fragment);
        if frag
            .lines()
            .any(|l| l.starts_with("a=ice-ufrag:") || l.starts_with("a=ice-pwd:"))
        {
            return Err(WebrtcError::IceRestart);
        }
        Ok(())
    }
}

/// What this node draws for a new WHIP/WHEP session: its ICE-lite credentials and the
/// secret of its resource URL.
struct Local {
    ufrag: String,
    pwd: String,
    secret: Secret,
}

impl Local {
    fn draw() -> Result<Self, RngError> {
        let (ufrag, pwd) = tracks::credentials()?;
        let mut secret = [0u8; kept::SECRET_LEN];
        random::fill(&mut secret)?;
        Ok(Self {
            ufrag,
            pwd,
            secret: Secret::from_bytes(secret),
        })
    }
}

/// The spec of a WHIP/WHEP session from what its offer negotiated.
fn session_spec(
    id: SessionId,
    worker: u16,
    name: &str,
    dir: Direction,
    publisher: Option<&Negotiated>,
    n: &Negotiated,
    local: &Local,
) -> Result<SessionSpec, WebrtcError> {
    let role = match dir {
        Direction::Publish => match tracks::simulcast(n) {
            // Tracks are the m-lines, with or without SSRCs; packets find theirs by rid/mid.
            Some(simulcast) => Role::Publisher {
                ssrcs: Vec::new(),
                clock_rates: tracks::published(n).map(|t| t.codec.clock_rate).collect(),
                simulcast: Some(simulcast),
                uplink: tracks::uplink(n),
            },
            None => {
                // One SSRC per track: the media one (its RTX is unwrapped into it, see
                // `uplink`), with its codec's clock rate for the receiver reports' jitter.
                let (ssrcs, clock_rates) = n
                    .tracks
                    .iter()
                    .filter_map(|t| Some((*t.ssrcs.first()?, t.codec.clock_rate)))
                    .take(MAX_TRACKS)
                    .unzip();
                Role::Publisher {
                    ssrcs,
                    clock_rates,
                    simulcast: None,
                    uplink: tracks::uplink(n),
                }
            }
        },
        Direction::Subscribe => Role::Subscriber {
            ssrcs: tracks::subscriber_ssrcs(publisher, n),
            payload_types: tracks::payload_type_map(n),
            extensions: Some(tracks::extension_map(n)),
            rtx: tracks::subscriber_rtx(publisher, n),
            tracks: ALL_TRACKS,
        },
    };
    Ok(SessionSpec {
        id,
        worker,
        stream: name.to_owned(),
        role,
        remote: None,
        keying: Keying::Dtls {
            remote_fingerprint: n.remote_fingerprint.clone(),
        },
        ice: Some(IceCredentials {
            local_ufrag: local.ufrag.clone(),
            local_pwd: local.pwd.clone(),
            remote_ufrag: n.ice_ufrag_remote.clone(),
            // Keys the worker's own checks to a new address of the peer: media moves only to
            // an address that answers them (RFC 7675 consent per address).
            remote_pwd: n.ice_pwd_remote.clone(),
        }),
        twcc_ext: match dir {
            Direction::Publish => n.tracks.iter().find_map(|t| {
                t.extensions
                    .iter()
                    .find(|(_, uri)| uri == sdp::TRANSPORT_CC_URI)
                    .map(|&(id, _)| id)
            }),
            // A viewer that accepted transport-cc feedback: the node numbers what it sends
            // it on this id and estimates its bandwidth from the feedback.
            Direction::Subscribe => n.tracks.iter().find_map(|t| {
                if !t.codec.rtcp_fb.iter().any(|f| f == "transport-cc") {
                    return None;
                }
                t.extensions
                    .iter()
                    .find(|(_, uri)| uri == sdp::TRANSPORT_CC_URI)
                    .map(|&(id, _)| id)
            }),
        },
        created_ms: now_ms(),
        control: keep(local.secret, dir, n)?,
    })
}

/// What the session's spec keeps for the control plane: the resource secret, and a WHIP
/// publisher's tracks for WHEP answers after a control plane restart.
fn keep(secret: Secret, dir: Direction, n: &Negotiated) -> Result<Opaque, KeepError> {
    Kept {
        secret: Some(secret),
        media: (dir == Direction::Publish).then(|| n.tracks.clone()),
    }
    .encode()
}
