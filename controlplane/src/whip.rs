//! WHIP (RFC 9725) and WHEP signaling: an SDP offer in, the node's answer out, and a
//! session on the least-loaded worker whose ICE-lite credentials and DTLS fingerprint are
//! in that answer. The data plane does ICE, DTLS and SRTP; nothing here touches media.
//!
//! - `POST /whip/{room}/{stream}` publishes, `POST /whep/{room}/{stream}` subscribes
//!   (client offer mode; the node never sends offers).
//! - `201 Created`, `Content-Type: application/sdp`,
//!   `Location: /whip/{room}/{stream}/{id}-{secret}`: the session id and 128 random bits
//!   (32 hex digits) drawn for this session alone.
//! - Security contract: the Location is the session's capability. A token (or the public
//!   prefix) that may use the stream still needs it: `DELETE` or `PATCH` on anything but the
//!   exact Location is answered 404 like a session that does not exist, so no viewer of a
//!   stream can end another viewer's session, nor learn which ids are live (ids are
//!   sequential and visible in room events). The secret is kept in the session's spec
//!   ([`crate::kept`]), so it outlives a control plane restart.
//! - `DELETE` on the Location ends the session; `PATCH` with a trickle-ice-sdpfrag is
//!   accepted and ignored (an ICE-lite agent learns the peer's address from its checks, so
//!   remote candidates change nothing); an ICE restart is answered 422, as the RFC allows a
//!   server that does not support it.
//! - Discovery: a POST for a room the cluster store places on another node is answered
//!   `307 Temporary Redirect` to that node's `/whip|whep/{room}/{stream}`; a room not in the
//!   store, or on this node, is served here. The store being down never stops media: the
//!   offer is then served here too, with a warning.
//! - Cascade (`[cluster] cascade`, on by default): a WHEP POST for a stream not published
//!   here, which the store says another healthy node publishes, is served here through a
//!   relay from that node (`relay::pull`), when this node is in sync with its data plane and
//!   not overloaded; otherwise (or when the relay cannot be set up) the 307 above applies.
//!   WHIP is always redirected to the room's node.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use switchyard_shared::command::{
    IceCredentials, Keying, Role, SessionId, SessionSpec, MAX_TRACKS,
};

use crate::api::{provision, random_bytes, remove, ApiError};
use crate::cluster::{Cluster, Store as _};
use crate::kept::{self, Kept, Secret};
use crate::link::Shared;
use crate::openapi::ErrorBody;
use crate::sdp::{self, AnswerParams, Direction, SdpError};

const SDP: &str = "application/sdp";
const TRICKLE: &str = "application/trickle-ice-sdpfrag";

fn check_name(what: &str, v: &str) -> Result<(), ApiError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what}: 1 to 64 characters of A-Z a-z 0-9 _ . -"
        )))
    }
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map_or("", str::trim)
}

fn sdp_error(e: SdpError) -> ApiError {
    let status = match e {
        SdpError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        SdpError::NoUsableCodec => StatusCode::NOT_ACCEPTABLE,
        SdpError::Random => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.to_string())
}

/// Random ICE credentials: ufrag ≥ 4 and password ≥ 22 characters of ice-char (RFC 8839).
fn credentials() -> Result<(String, String), ApiError> {
    use ring::rand::SecureRandom as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut raw = [0u8; 8 + 24];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "system RNG failed"))?;
    let s = |b: &[u8]| -> String {
        b.iter()
            .map(|&x| char::from(ALPHABET[usize::from(x) % ALPHABET.len()]))
            .collect()
    };
    Ok((s(&raw[..8]), s(&raw[8..])))
}

fn candidates(shared: &Shared, worker: u16) -> Vec<SocketAddr> {
    let media = &shared.config.media;
    let port = media.port.saturating_add(worker);
    media
        .announce_ips()
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// The body of a 307: where the room lives.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RedirectBody {
    room_id: String,
    node: String,
    /// The same URL as the `Location` header.
    location: String,
}

#[utoipa::path(
    post,
    path = "/whip/{room}/{stream}",
    tag = "webrtc",
    params(
        ("room" = String, Path, description = "1 to 64 characters of A-Z a-z 0-9 _ . -"),
        ("stream" = String, Path, description = "1 to 64 characters of A-Z a-z 0-9 _ . -"),
    ),
    request_body(content = String, content_type = "application/sdp", description = "The client's SDP offer"),
    responses(
        (status = 201, description = "Publishing: the node's SDP answer (ICE-lite, DTLS fingerprint, candidates)",
            content_type = "application/sdp", body = String,
            headers(("Location" = String, description = "The session resource: `/whip/{room}/{stream}/{id}-{secret}`; only this exact URL ends or patches the session"))),
        (status = 307, description = "The room is placed on another node: re-POST the offer to `Location`",
            body = RedirectBody, headers(("Location" = String, description = "`{node url}/whip/{room}/{stream}`"))),
        (status = 400, description = "Bad name or unusable offer", body = ErrorBody),
        (status = 406, description = "No codec in the offer that the node forwards", body = ErrorBody),
        (status = 409, description = "The stream already has a publisher", body = ErrorBody),
        (status = 413, description = "Offer over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not application/sdp", body = ErrorBody),
        (status = 429, description = "This client's live sessions or creation rate (`[limits]`); see `Retry-After`", body = ErrorBody),
        (status = 503, description = "No data plane, or the worker is full", body = ErrorBody),
    )
)]
pub async fn publish(
    State(shared): State<Arc<Shared>>,
    Extension(cluster): Extension<Arc<Cluster>>,
    Path((room, stream)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if let Some(r) = redirect(&shared, &cluster, "whip", &room, &stream).await? {
        return Ok(r);
    }
    offer(shared, Direction::Publish, room, stream, headers, body).await
}

#[utoipa::path(
    post,
    path = "/whep/{room}/{stream}",
    tag = "webrtc",
    params(
        ("room" = String, Path, description = "1 to 64 characters of A-Z a-z 0-9 _ . -"),
        ("stream" = String, Path, description = "1 to 64 characters of A-Z a-z 0-9 _ . -"),
    ),
    request_body(content = String, content_type = "application/sdp", description = "The client's SDP offer (recvonly)"),
    responses(
        (status = 201, description = "Watching: the node's SDP answer",
            content_type = "application/sdp", body = String,
            headers(("Location" = String, description = "The session resource: `/whep/{room}/{stream}/{id}-{secret}`; only this exact URL ends or patches the session"))),
        (status = 307, description = "The room is placed on another node: re-POST the offer to `Location`",
            body = RedirectBody, headers(("Location" = String, description = "`{node url}/whep/{room}/{stream}`"))),
        (status = 400, description = "Bad name or unusable offer", body = ErrorBody),
        (status = 404, description = "The stream has no publisher", body = ErrorBody),
        (status = 406, description = "No codec in common with the publisher", body = ErrorBody),
        (status = 413, description = "Offer over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not application/sdp", body = ErrorBody),
        (status = 429, description = "This client's live sessions or creation rate (`[limits]`); see `Retry-After`", body = ErrorBody),
        (status = 503, description = "No data plane, or the worker is full", body = ErrorBody),
    )
)]
pub async fn subscribe(
    State(shared): State<Arc<Shared>>,
    Extension(cluster): Extension<Arc<Cluster>>,
    Path((room, stream)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_name("room", &room)?;
    check_name("stream", &stream)?;
    let name = format!("{room}/{stream}");
    if shared.lock().node.publisher_media(&name).is_none() {
        match crate::relay::pull(&shared, &cluster, &name).await {
            Ok(()) => {
                return offer(shared, Direction::Subscribe, room, stream, headers, body).await
            }
            Err(crate::relay::PullError::NoSource) => {}
            Err(crate::relay::PullError::Failed(e)) => {
                tracing::warn!(stream = %name, error = %e.message(), "cascade failed; falling back to the room's node");
            }
        }
    }
    if let Some(r) = redirect(&shared, &cluster, "whep", &room, &stream).await? {
        return Ok(r);
    }
    offer(shared, Direction::Subscribe, room, stream, headers, body).await
}

/// Where the cluster says `room` lives: `None` to serve the offer here (the room is not in
/// the store, is on this node, or the store cannot answer), or a 307 to the node hosting it.
async fn redirect(
    shared: &Shared,
    cluster: &Cluster,
    path: &str,
    room: &str,
    stream: &str,
) -> Result<Option<Response>, ApiError> {
    check_name("room", room)?;
    check_name("stream", stream)?;
    let placed = match cluster.store.get_room(room).await {
        Ok(Some(r)) if r.node != shared.config.node.id => r,
        Ok(_) => return Ok(None),
        Err(e) => {
            tracing::warn!(%room, error = %e, "cluster store unavailable: serving the offer on this node");
            return Ok(None);
        }
    };
    let url = match cluster.store.list_nodes().await {
        Ok(nodes) => nodes
            .into_iter()
            .find(|n| n.node_id == placed.node)
            .map(|n| n.url),
        Err(e) => {
            tracing::warn!(%room, error = %e, "cluster store unavailable: serving the offer on this node");
            return Ok(None);
        }
    };
    let Some(url) = url else {
        // The room names a node the registry no longer has: nowhere better to send it.
        tracing::warn!(%room, node = %placed.node, "room placed on an unknown node: serving the offer here");
        return Ok(None);
    };
    let location = format!("{url}/{path}/{room}/{stream}");
    tracing::info!(%room, %stream, node = %placed.node, %location, "redirecting to the room's node");
    let body = serde_json::to_string(&RedirectBody {
        room_id: room.to_owned(),
        node: placed.node,
        location: location.clone(),
    })
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Some(
        (
            StatusCode::TEMPORARY_REDIRECT,
            [
                (header::LOCATION, location),
                (header::CONTENT_TYPE, "application/json".to_owned()),
            ],
            body,
        )
            .into_response(),
    ))
}

async fn offer(
    shared: Arc<Shared>,
    dir: Direction,
    room: String,
    stream: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // Over the router's body limit (64 KiB) the body never arrives: the offer is too large.
    let body = body.map_err(|_| sdp_error(SdpError::TooLarge))?;
    check_name("room", &room)?;
    check_name("stream", &stream)?;
    if content_type(&headers) != SDP {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be sent as application/sdp",
        ));
    }
    if body.len() > sdp::MAX_SDP {
        return Err(sdp_error(SdpError::TooLarge));
    }
    let offer = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the offer is not UTF-8"))?
        .to_owned();
    let name = format!("{room}/{stream}");
    let publisher = match dir {
        Direction::Publish => None,
        Direction::Subscribe => {
            Some(shared.lock().node.publisher_media(&name).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no WebRTC publisher on stream {name}"),
                )
            })?)
        }
    };
    let (ufrag, pwd) = credentials()?;
    let mut secret = [0u8; kept::SECRET_LEN];
    random_bytes(&mut secret)?;
    let secret = Secret::from_bytes(secret);
    let path = match dir {
        Direction::Publish => "whip",
        Direction::Subscribe => "whep",
    };
    let (spec, negotiated) = provision(&shared, None, |id, worker, dp| {
        let cands = candidates(&shared, worker);
        let params = AnswerParams {
            ice_ufrag: &ufrag,
            ice_pwd: &pwd,
            fingerprint: &dp.fingerprint,
            candidates: &cands,
            publisher: publisher.as_deref(),
        };
        let n = sdp::answer(&offer, dir, &params).map_err(sdp_error)?;
        let role = match (dir, publisher.as_deref()) {
            (Direction::Publish, _) => {
                // One SSRC per track: the media one (RTX and simulcast layers come later),
                // with its codec's clock rate for the receiver reports' jitter.
                let (ssrcs, clock_rates) = n
                    .tracks
                    .iter()
                    .filter_map(|t| Some((*t.ssrcs.first()?, t.codec.clock_rate)))
                    .take(MAX_TRACKS)
                    .unzip();
                Role::Publisher { ssrcs, clock_rates }
            }
            (Direction::Subscribe, p) => Role::Subscriber {
                ssrcs: subscriber_ssrcs(p, &n),
                payload_types: payload_type_map(&n),
                extensions: Some(extension_map(&n)),
                rtx: subscriber_rtx(p, &n),
                tracks: switchyard_shared::command::ALL_TRACKS,
            },
        };
        let spec = SessionSpec {
            id,
            worker,
            stream: name.clone(),
            role,
            remote: None,
            keying: Keying::Dtls {
                remote_fingerprint: n.remote_fingerprint.clone(),
            },
            ice: Some(IceCredentials {
                local_ufrag: ufrag.clone(),
                local_pwd: pwd.clone(),
                remote_ufrag: n.ice_ufrag_remote.clone(),
                // Keys the worker's own checks to a new address of the peer: media moves
                // only to an address that answers them (RFC 7675 consent per address).
                remote_pwd: n.ice_pwd_remote.clone(),
            }),
            twcc_ext: match dir {
                Direction::Publish => n.tracks.iter().find_map(|t| {
                    t.extensions
                        .iter()
                        .find(|(_, uri)| uri == sdp::TRANSPORT_CC_URI)
                        .map(|&(id, _)| id)
                }),
                Direction::Subscribe => None,
            },
            created_ms: crate::api::now_ms(),
            control: keep(secret, dir, &n)?,
        };
        if !kept::fits(&spec) {
            // Only an offer with outlandish codec parameters or many tracks (a browser's
            // two tracks take a tenth of the room): refused, rather than made a session
            // that a control plane restart would lose.
            return Err(ApiError::bad_request(format!(
                "the offer's negotiated codecs and parameters do not fit in the node's \
                 {}-byte session record; offer fewer tracks or shorter a=fmtp lines",
                switchyard_shared::command::MAX_MESSAGE
            )));
        }
        Ok((spec, n))
    })
    .await?;
    let answer = negotiated.answer.clone();
    if dir == Direction::Publish {
        shared
            .lock()
            .node
            .set_publisher_media(&name, spec.id, Arc::new(negotiated));
    }
    let location = format!("/{path}/{room}/{stream}/{}-{}", spec.id.0, secret.to_hex());
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, SDP.to_owned()),
            (header::LOCATION, location),
        ],
        Extension(crate::api::Created(spec.id)),
        answer,
    )
        .into_response())
}

/// What the session's spec keeps for the control plane: the resource secret, and a WHIP
/// publisher's tracks for WHEP answers after a control plane restart.
fn keep(
    secret: Secret,
    dir: Direction,
    n: &sdp::Negotiated,
) -> Result<switchyard_shared::command::Opaque, ApiError> {
    Kept {
        secret: Some(secret),
        media: (dir == Direction::Publish).then(|| n.tracks.clone()),
    }
    .encode()
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The SSRC the subscriber sees for each of the publisher's tracks, in the publisher's
/// track order (the order of its WHIP m-lines, which is the order of its session's SSRCs).
/// A publisher track the subscriber did not accept still gets an SSRC (the data plane fills
/// every track); the subscriber's browser ignores it.
fn subscriber_ssrcs(publisher: Option<&sdp::Negotiated>, n: &sdp::Negotiated) -> Vec<u32> {
    let mut out = Vec::with_capacity(MAX_TRACKS);
    if let Some(p) = publisher {
        for pt in p.tracks.iter().filter(|t| !t.ssrcs.is_empty()) {
            let ours = n
                .tracks
                .iter()
                .find(|t| t.remap.as_ref().is_some_and(|r| r.publisher_mid == pt.mid))
                .and_then(|t| t.ssrcs.first().copied());
            if let Some(s) = ours {
                out.push(s);
            } else {
                out.push(spare_ssrc(&out, n));
            }
            if out.len() == MAX_TRACKS {
                break;
            }
        }
    }
    while out.len() < MAX_TRACKS {
        out.push(spare_ssrc(&out, n));
    }
    out
}

/// Per publisher track, in the order of [`subscriber_ssrcs`]: our RTX SSRC and the
/// subscriber's RTX payload type, where its answered m-line negotiated RTX (RFC 4588).
fn subscriber_rtx(
    publisher: Option<&sdp::Negotiated>,
    n: &sdp::Negotiated,
) -> Vec<Option<(u32, u8)>> {
    let Some(p) = publisher else {
        return Vec::new();
    };
    p.tracks
        .iter()
        .filter(|t| !t.ssrcs.is_empty())
        .take(MAX_TRACKS)
        .map(|pt| {
            let ours = n
                .tracks
                .iter()
                .find(|t| t.remap.as_ref().is_some_and(|r| r.publisher_mid == pt.mid))?;
            let rtx = ours.rtx.as_ref()?;
            Some((*ours.ssrcs.get(1)?, rtx.payload_type))
        })
        .collect()
}

/// The publisher → subscriber payload types the SDP module worked out for each track
/// (media and RTX), without identities.
fn payload_type_map(n: &sdp::Negotiated) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    for r in n.tracks.iter().filter_map(|t| t.remap.as_ref()) {
        for (a, b) in std::iter::once(r.payload_type).chain(r.rtx_payload_type) {
            if a != b && !out.iter().any(|&(x, _)| x == a) {
                out.push((a, b));
            }
        }
    }
    out.truncate(switchyard_shared::command::MAX_PT_MAP);
    out
}

/// The publisher → subscriber header extension ids both negotiated, except the ones whose
/// values mean something only on the publisher's leg: its transport-wide sequence numbers
/// (the node answers them itself) and its mids (the subscriber's m-lines have their own;
/// without the extension the subscriber demultiplexes by the SSRCs in its answer).
fn extension_map(n: &sdp::Negotiated) -> Vec<(u8, u8)> {
    const MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
    let mut out: Vec<(u8, u8)> = Vec::new();
    for t in &n.tracks {
        let Some(r) = &t.remap else { continue };
        for &(pid, sid) in &r.extensions {
            let uri = t
                .extensions
                .iter()
                .find(|(id, _)| *id == sid)
                .map(|(_, u)| u.as_str());
            let local_only = matches!(uri, Some(u) if u == MID || u == sdp::TRANSPORT_CC_URI);
            if !local_only && !out.iter().any(|&(p, _)| p == pid) {
                out.push((pid, sid));
            }
        }
    }
    out
}

/// An SSRC not used by the subscriber's tracks nor already picked.
fn spare_ssrc(picked: &[u32], n: &sdp::Negotiated) -> u32 {
    let used = |s: u32| picked.contains(&s) || n.tracks.iter().any(|t| t.ssrcs.contains(&s));
    (0x5357_0001u32..)
        .find(|&s| !used(s))
        .unwrap_or(0x5357_0000)
}

/// The session a WHIP/WHEP resource URL names: `raw` is the last path segment,
/// `{id}-{secret}`. Everything that is not exactly a live session's Location on this
/// room, stream and endpoint (bad syntax, an unknown id, a wrong secret, another stream, the
/// other endpoint) is the same 404, so the answer never tells an id that exists from one
/// that does not.
fn session_of(
    shared: &Shared,
    room: &str,
    stream: &str,
    raw: &str,
    role_publisher: bool,
) -> Result<SessionId, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "no such session");
    let (id, hex) = raw.split_once('-').ok_or_else(not_found)?;
    // Digits only: `u64::from_str` would also take a leading `+`.
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_found());
    }
    let id = id.parse::<u64>().map(SessionId).map_err(|_| not_found())?;
    let g = shared.lock();
    let spec = g.node.session(id).ok_or_else(not_found)?;
    let owner = Kept::of(spec).secret.is_some_and(|s| s.matches(hex));
    let matches = owner
        && spec.stream == format!("{room}/{stream}")
        && spec.ice.is_some()
        && matches!(spec.role, Role::Publisher { .. }) == role_publisher;
    if matches {
        Ok(id)
    } else {
        Err(not_found())
    }
}

#[utoipa::path(
    delete,
    path = "/whip/{room}/{stream}/{id}",
    tag = "webrtc",
    params(("room" = String, Path), ("stream" = String, Path), ("id" = String, Path, description = "`{id}-{secret}`: the last segment of the `Location` the POST answered")),
    responses(
        (status = 200, description = "Session ended"),
        (status = 404, description = "No such WHIP session", body = ErrorBody),
        (status = 504, description = "The data plane did not answer in time", body = ErrorBody),
    )
)]
pub async fn end_publish(
    State(shared): State<Arc<Shared>>,
    Path((room, stream, raw)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    end(&shared, &room, &stream, &raw, true).await
}

#[utoipa::path(
    delete,
    path = "/whep/{room}/{stream}/{id}",
    tag = "webrtc",
    params(("room" = String, Path), ("stream" = String, Path), ("id" = String, Path, description = "`{id}-{secret}`: the last segment of the `Location` the POST answered")),
    responses(
        (status = 200, description = "Session ended"),
        (status = 404, description = "No such WHEP session", body = ErrorBody),
        (status = 504, description = "The data plane did not answer in time", body = ErrorBody),
    )
)]
pub async fn end_subscribe(
    State(shared): State<Arc<Shared>>,
    Path((room, stream, raw)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    end(&shared, &room, &stream, &raw, false).await
}

/// DELETE on a WHIP/WHEP resource: 200 once the data plane removed the session.
async fn end(
    shared: &Arc<Shared>,
    room: &str,
    stream: &str,
    raw: &str,
    publisher: bool,
) -> Result<Response, ApiError> {
    let id = session_of(shared, room, stream, raw, publisher)?;
    remove(shared, id).await?;
    Ok(StatusCode::OK.into_response())
}

#[utoipa::path(
    patch,
    path = "/whip/{room}/{stream}/{id}",
    tag = "webrtc",
    params(("room" = String, Path), ("stream" = String, Path), ("id" = String, Path, description = "`{id}-{secret}`: the last segment of the `Location` the POST answered")),
    request_body(content = String, content_type = "application/trickle-ice-sdpfrag"),
    responses(
        (status = 204, description = "Trickled candidates accepted (an ICE-lite node needs none)"),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 413, description = "Fragment too large", body = ErrorBody),
        (status = 415, description = "Not application/trickle-ice-sdpfrag", body = ErrorBody),
        (status = 422, description = "An ICE restart: not supported, start a new session", body = ErrorBody),
    )
)]
pub async fn patch_publish(
    state: State<Arc<Shared>>,
    path: Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    patch(state, path, headers, body).await
}

#[utoipa::path(
    patch,
    path = "/whep/{room}/{stream}/{id}",
    tag = "webrtc",
    params(("room" = String, Path), ("stream" = String, Path), ("id" = String, Path, description = "`{id}-{secret}`: the last segment of the `Location` the POST answered")),
    request_body(content = String, content_type = "application/trickle-ice-sdpfrag"),
    responses(
        (status = 204, description = "Trickled candidates accepted (an ICE-lite node needs none)"),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 413, description = "Fragment too large", body = ErrorBody),
        (status = 415, description = "Not application/trickle-ice-sdpfrag", body = ErrorBody),
        (status = 422, description = "An ICE restart: not supported, start a new session", body = ErrorBody),
    )
)]
pub async fn patch_subscribe(
    state: State<Arc<Shared>>,
    path: Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    patch(state, path, headers, body).await
}

/// Trickle ICE and ICE restarts (RFC 9725 §4.3), on a WHIP or a WHEP session alike.
async fn patch(
    State(shared): State<Arc<Shared>>,
    Path((room, stream, raw)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body =
        body.map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "fragment too large"))?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "no such session");
    let publisher = session_of(&shared, &room, &stream, &raw, true).is_ok();
    if !publisher {
        session_of(&shared, &room, &stream, &raw, false).map_err(|_| not_found())?;
    }
    if content_type(&headers) != TRICKLE {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "PATCH takes application/trickle-ice-sdpfrag",
        ));
    }
    let frag = String::from_utf8_lossy(&body);
    if frag
        .lines()
        .any(|l| l.starts_with("a=ice-ufrag:") || l.starts_with("a=ice-pwd:"))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ICE restart is not supported; start a new session",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whep_subscriber_gets_rtx_ssrc_and_payload_type_per_publisher_track() {
        let cands: [std::net::SocketAddr; 1] = ["192.0.2.10:10001".parse().expect("literal")];
        let params = |publisher| {
            AnswerParams {
            ice_ufrag: "swyU",
            ice_pwd: "0123456789abcdefABCDEF",
            fingerprint: "sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9",
            candidates: &cands,
            publisher,
        }
        };
        let publisher = sdp::answer(
            include_str!("sdp/fixtures/firefox_publish.sdp"),
            Direction::Publish,
            &params(None),
        )
        .expect("publish answer");
        let n = sdp::answer(
            include_str!("sdp/fixtures/chrome_subscribe.sdp"),
            Direction::Subscribe,
            &params(Some(&publisher)),
        )
        .expect("subscribe answer");
        let ssrcs = subscriber_ssrcs(Some(&publisher), &n);
        let rtx = subscriber_rtx(Some(&publisher), &n);
        let tracks: Vec<_> = publisher
            .tracks
            .iter()
            .filter(|t| !t.ssrcs.is_empty())
            .collect();
        assert_eq!(rtx.len(), tracks.len());
        for (i, pt) in tracks.iter().enumerate() {
            let ours = n
                .tracks
                .iter()
                .find(|t| t.remap.as_ref().is_some_and(|r| r.publisher_mid == pt.mid))
                .expect("forwarded");
            assert_eq!(ssrcs[i], ours.ssrcs[0]);
            match pt.kind {
                sdp::Kind::Audio => assert_eq!(rtx[i], None, "no RTX for opus"),
                sdp::Kind::Video => {
                    assert_eq!(rtx[i], Some((ours.ssrcs[1], 97)), "Chrome's rtx PT")
                }
            }
        }
    }
}
