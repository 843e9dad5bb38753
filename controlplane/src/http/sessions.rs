//! `/v1/sessions` (plain RTP sessions with static SRTP keys) and `/v1/streams` (what is
//! published here). The session service is `services::sessions`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use switchyard_shared::command::{Role, SessionId, SessionSpec, SrtpProfile, VideoCodec};
use switchyard_shared::stats::SessionCounters;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::parse_body;
use super::error::ApiError;
use super::limits::Created;
use super::openapi::ErrorBody;
use crate::core::link::Inner;
use crate::core::traffic::read_all;
use crate::services::sessions::rtp::CreateSession;
use crate::services::sessions::Sessions;

/// The routes, each documented by its handler's `#[utoipa::path]` (see `super::openapi`).
pub(crate) fn routes(sessions: Arc<Sessions>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_sessions, create_session))
        .routes(routes!(list_streams))
        .routes(routes!(fetch_group))
        .routes(routes!(get_session, delete_session))
        .routes(routes!(set_layers))
        .with_state(sessions)
}

/// `GET /v1/streams?prefix=room1/`: only the streams whose name starts with `prefix`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamsQuery {
    /// Only streams whose name starts with this (all when absent or empty).
    #[serde(default)]
    #[param(required = false)]
    prefix: String,
}

/// A stream with a publisher.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct StreamEntry {
    #[schema(example = "room1/cam")]
    stream: String,
    subscribers: usize,
    /// WHEP can watch it: its publisher negotiated WebRTC codecs (WHIP, or a relay of a WHIP
    /// publisher). A plain RTP publisher's stream is forwarded and recorded, not watched.
    webrtc: bool,
    /// What the publisher (or relay-in) sent: packets and bytes since the stream's sessions
    /// started, ended subscribers' shares included (see docs/api.md).
    packets_in: u64,
    bytes_in: u64,
    /// What the node sent the stream's subscribers.
    packets_out: u64,
    bytes_out: u64,
}

#[derive(Debug, Serialize, ToSchema)]
struct StreamList {
    streams: Vec<StreamEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
struct SessionList {
    sessions: Vec<SessionView>,
}

/// Streams with a publisher (WebRTC or plain) and how many subscribers each has, filtered by
/// `?prefix=` (all when absent or empty).
#[utoipa::path(
    get,
    path = "/v1/streams",
    tag = "sessions",
    params(StreamsQuery),
    responses(
        (status = 200, description = "Streams with a publisher, sorted by name", body = StreamList),
        (status = 400, description = "An unknown query parameter", body = ErrorBody),
    )
)]
async fn list_streams(
    State(sessions): State<Arc<Sessions>>,
    query: Result<Query<StreamsQuery>, QueryRejection>,
) -> Result<Json<StreamList>, ApiError> {
    let query = query.map_err(|e| ApiError::bad_request(e.body_text()))?.0;
    let listed = sessions.streams(&query.prefix);
    let (totals, webrtc): (_, std::collections::HashSet<String>) = {
        let g = sessions.lock();
        let totals = g
            .stats
            .as_ref()
            .map(|st| g.traffic.streams(&g.node, st))
            .unwrap_or_default();
        let webrtc = listed
            .iter()
            .filter(|(s, _)| g.node.publisher_media(s).is_some())
            .map(|(s, _)| s.clone())
            .collect();
        (totals, webrtc)
    };
    let streams = listed
        .into_iter()
        .map(|(stream, subscribers)| {
            let t = totals.get(&stream).copied().unwrap_or_default();
            StreamEntry {
                webrtc: webrtc.contains(&stream),
                stream,
                subscribers,
                packets_in: t.packets_in,
                bytes_in: t.bytes_in,
                packets_out: t.packets_out,
                bytes_out: t.bytes_out,
            }
        })
        .collect();
    Ok(Json(StreamList { streams }))
}

/// `GET /v1/streams/{room}/{stream}/fetch?track=1`: which track's group.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct FetchQuery {
    /// The publisher's track (0-based, in the order of its offer's m-lines); default: its
    /// first video track.
    #[serde(default)]
    #[param(required = false)]
    track: Option<u8>,
}

/// The cached group of a stream's video track (the packets since its latest keyframe, what
/// a late joiner is started from) as a file a player opens: IVF for VP8, VP9 and AV1, an
/// Annex B byte stream for H.264. For debugging what a publisher sends. Frames with a
/// missing packet are left out. Headers: `X-Switchyard-Codec`, `X-Switchyard-Track`,
/// `X-Switchyard-Frames`, `X-Switchyard-Skipped-Frames`, `X-Switchyard-Packets`.
#[utoipa::path(
    get,
    path = "/v1/streams/{room}/{stream}/fetch",
    tag = "sessions",
    params(
        ("room" = String, Path, description = "The stream name's first segment"),
        ("stream" = String, Path, description = "The rest of the stream name (further `/` percent-encoded)"),
        FetchQuery,
    ),
    responses(
        (status = 200, description = "The group as IVF (`video/x-ivf`) or H.264 Annex B (`video/h264`)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Bad stream name or query", body = ErrorBody),
        (status = 404, description = "No publisher of the stream here, no such video track, or no whole group cached (no keyframe yet, a group longer than `media.nack_cache`, a quiet track)", body = ErrorBody),
        (status = 429, description = "Two fetches are in flight already", body = ErrorBody),
        (status = 503, description = "No data plane", body = ErrorBody),
        (status = 504, description = "The data plane did not answer in time", body = ErrorBody),
    )
)]
async fn fetch_group(
    State(sessions): State<Arc<Sessions>>,
    Path((room, name)): Path<(String, String)>,
    query: Result<Query<FetchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let stream = format!("{room}/{name}");
    switchyard_shared::names::stream("stream", &stream)?;
    let query = query.map_err(|e| ApiError::bad_request(e.body_text()))?.0;
    let got = sessions.fetch_group(&stream, query.track).await?;
    let file = got.file;
    let filename = format!(
        "{}-track{}.{}",
        stream.replace('/', "-"),
        got.track,
        file.container.extension()
    );
    let codec = match got.codec {
        VideoCodec::Vp8(_) => "vp8",
        VideoCodec::Vp9(_) => "vp9",
        VideoCodec::Av1(_) => "av1",
        VideoCodec::H264(_) => "h264",
    };
    let headers = [
        (header::CONTENT_TYPE, file.container.media_type().to_owned()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        ),
        (header::CACHE_CONTROL, "no-store".to_owned()),
    ];
    let mut response = (StatusCode::OK, headers, file.bytes).into_response();
    let h = response.headers_mut();
    for (name, value) in [
        ("x-switchyard-codec", codec.to_owned()),
        ("x-switchyard-track", got.track.to_string()),
        ("x-switchyard-frames", file.frames.to_string()),
        ("x-switchyard-skipped-frames", file.skipped.to_string()),
        ("x-switchyard-packets", got.packets.to_string()),
    ] {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    Ok(response)
}

/// A session as the API shows it. Keys appear only in the answer to the POST that made it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionView {
    id: u64,
    worker: u16,
    /// Where the peer sends media: `ip:port` of the session's worker.
    #[schema(value_type = String, example = "192.0.2.10:10001")]
    media_address: SocketAddr,
    stream: String,
    /// `publisher` or `subscriber`.
    #[schema(value_type = String)]
    role: &'static str,
    /// The SRTP profile; `None` while a DTLS-keyed session has not negotiated one.
    #[schema(value_type = Option<String>)]
    profile: Option<&'static str>,
    #[schema(value_type = Option<String>)]
    remote: Option<SocketAddr>,
    ssrcs: Vec<u32>,
    created_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_key: Option<String>,
    /// ICE (WebRTC sessions only): `checking` until a connectivity check latched the peer,
    /// then `connected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "connected")]
    ice: Option<&'static str>,
    /// DTLS (DTLS-keyed sessions only): `connecting`, then `connected`. A failed handshake
    /// ends the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "connected")]
    dtls: Option<&'static str>,
    /// Traffic counters from the data plane; absent while the data plane's stats are not
    /// mapped (and in the answer to the POST that made the session).
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<SessionStats>,
}

/// A session's traffic as its worker counted it. "In" is what the peer sent (authenticated
/// RTP and RTCP), "out" what the node sent it (media, retransmissions, RTCP).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionStats {
    packets_in: u64,
    bytes_in: u64,
    packets_out: u64,
    bytes_out: u64,
    /// Sequence numbers the peer NACKed (subscribers).
    nacks_received: u64,
    /// Keyframe requests (PLI, FIR) from the peer (subscribers).
    plis_received: u64,
    /// Keyframe requests sent to the peer (publishers).
    plis_sent: u64,
    /// Bits per second in and out over the last one-second sample (two reads of the
    /// counters one second apart, by the control plane); absent until sampled once.
    #[serde(skip_serializing_if = "Option::is_none")]
    bitrate_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bitrate_out: Option<u64>,
    /// Milliseconds since the last authenticated packet from the peer; absent before the
    /// first.
    #[serde(skip_serializing_if = "Option::is_none")]
    ms_since_last_packet: Option<u64>,
    /// A relay-out: the link's smoothed round-trip time in milliseconds (RTCP SR/RR);
    /// absent for other roles and until the far node echoed a sender report.
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt_ms: Option<f64>,
    /// A WebRTC viewer's bandwidth estimate in bits per second (transport-cc feedback, or
    /// REMB), which picks its simulcast layers; absent for other sessions and before the
    /// first estimate is published.
    #[serde(skip_serializing_if = "Option::is_none")]
    estimate_bps: Option<u64>,
    /// The simulcast layer (0-based index in the publisher's `a=simulcast` order) a viewer
    /// receives of each publisher track, `null` for a track it receives without layers;
    /// absent when nothing is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<Option<u8>>>,
    /// The highest VP8 temporal layer a viewer receives of each track's simulcast layer,
    /// where that is not every one (a `maxTemporalLayer` cap, or an estimate below the
    /// lowest layer), `null` for the other tracks; absent when it receives every frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    temporal_layers: Option<Vec<Option<u8>>>,
}

/// The per-track values of a session slot up to the last one set; `None` when none is.
fn per_track(values: &[Option<u8>]) -> Option<Vec<Option<u8>>> {
    let used = values.iter().rposition(Option::is_some)? + 1;
    Some(values[..used].to_vec())
}

/// What the data plane and the event stream say about a live session, for [`view`].
#[derive(Default)]
struct Live {
    ice: Option<&'static str>,
    dtls: Option<&'static str>,
    stats: Option<SessionStats>,
}

/// `read`: the session's counters if already read (a list reads every slot in one pass).
fn live(g: &Inner, id: SessionId, read: Option<SessionCounters>) -> Live {
    let (ice, dtls) = g.node.transport(id);
    let stats = g.stats.as_ref().and_then(|stats| {
        let spec = g.node.session(id)?;
        let c = read.or_else(|| stats.find(usize::from(spec.worker), id.0))?;
        let rate = g.traffic.bitrate(id);
        Some(SessionStats {
            packets_in: c.rx_packets,
            bytes_in: c.rx_bytes,
            packets_out: c.tx_packets,
            bytes_out: c.tx_bytes,
            nacks_received: c.nacks_received,
            plis_received: c.plis_received,
            plis_sent: c.plis_sent,
            bitrate_in: rate.map(|r| r.0),
            bitrate_out: rate.map(|r| r.1),
            ms_since_last_packet: c
                .last_rx
                .map(|t| u64::try_from(stats.age(t).as_millis()).unwrap_or(u64::MAX)),
            rtt_ms: c.rtt.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
            estimate_bps: c.estimate_bps,
            layers: per_track(&c.layers),
            temporal_layers: per_track(&c.temporal),
        })
    });
    Live { ice, dtls, stats }
}

/// `relay`: the relay base port (see [`Sessions::relay_base`]).
/// `negotiated`: the SRTP profile a DTLS-keyed session agreed on, once it has.
fn view(
    sessions: &Sessions,
    spec: &SessionSpec,
    keys: bool,
    relay: u16,
    negotiated: Option<SrtpProfile>,
    live: Live,
) -> SessionView {
    let media = sessions.media();
    let (role, ssrcs) = match &spec.role {
        Role::Publisher { ssrcs, .. } => ("publisher", ssrcs.clone()),
        Role::Subscriber { ssrcs, .. } => ("subscriber", ssrcs.clone()),
        Role::RelayIn { ssrcs, .. } => ("relay-in", ssrcs.clone()),
        Role::RelayOut => ("relay-out", Vec::new()),
    };
    // Relay sessions send and receive on the worker's relay socket.
    let base = match spec.role {
        Role::RelayIn { .. } | Role::RelayOut => relay,
        _ => media.port,
    };
    let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
    SessionView {
        id: spec.id.0,
        worker: spec.worker,
        media_address: SocketAddr::new(media.announce_ip(), base.saturating_add(spec.worker)),
        stream: spec.stream.clone(),
        role,
        profile: spec
            .keying
            .keys()
            .map(|k| k.profile)
            .or(negotiated)
            .map(SrtpProfile::name),
        remote: spec.remote,
        ssrcs,
        created_ms: spec.created_ms,
        remote_key: spec.keying.keys().filter(|_| keys).map(|k| b64(&k.remote)),
        local_key: spec.keying.keys().filter(|_| keys).map(|k| b64(&k.local)),
        ice: live.ice,
        dtls: live.dtls,
        stats: live.stats,
    }
}

#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "sessions",
    request_body = CreateSession,
    responses(
        (status = 201, description = "Created; the only answer that shows the keys", body = SessionView,
            headers(("Location" = String, description = "`/v1/sessions/{id}`"))),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 409, description = "The stream already has a publisher, or an SSRC or address conflict", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 503, description = "No data plane, or the worker is full", body = ErrorBody),
        (status = 504, description = "The data plane did not answer in time", body = ErrorBody),
    )
)]
async fn create_session(
    State(sessions): State<Arc<Sessions>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateSession = parse_body(body)?;
    let spec = sessions.create_rtp(req).await?;
    let location = format!("/v1/sessions/{}", spec.id.0);
    let relay = sessions.relay_base(&sessions.lock().node);
    // Static keys: the profile is in the spec.
    let body = view(&sessions, &spec, true, relay, None, Live::default());
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Extension(Created(spec.id)),
        Json(body),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    responses((status = 200, description = "Every session of this node (without keys)", body = SessionList))
)]
async fn list_sessions(State(sessions): State<Arc<Sessions>>) -> Result<Response, ApiError> {
    let g = sessions.lock();
    let relay = sessions.relay_base(&g.node);
    let read = g.stats.as_ref().map(read_all).unwrap_or_default();
    let list: Vec<SessionView> = g
        .node
        .sessions()
        .map(|s| {
            let l = live(&g, s.id, read.get(&s.id).copied());
            view(&sessions, s, false, relay, g.node.dtls_profile(s.id), l)
        })
        .collect();
    Ok(Json(SessionList { sessions: list }).into_response())
}

fn parse_id(raw: &str) -> Result<SessionId, ApiError> {
    raw.parse::<u64>()
        .map(SessionId)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such session"))
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = u64, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session (without keys)", body = SessionView),
        (status = 404, description = "No such session", body = ErrorBody),
    )
)]
async fn get_session(
    State(sessions): State<Arc<Sessions>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let g = sessions.lock();
    let spec = g
        .node
        .session(id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such session"))?;
    let relay = sessions.relay_base(&g.node);
    let l = live(&g, id, None);
    Ok(Json(view(
        &sessions,
        spec,
        false,
        relay,
        g.node.dtls_profile(id),
        l,
    ))
    .into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = u64, Path, description = "Session id")),
    responses(
        (status = 204, description = "Removed from the data plane"),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 503, description = "No data plane", body = ErrorBody),
        (status = 504, description = "The data plane did not answer in time; the removal is still queued", body = ErrorBody),
    )
)]
async fn delete_session(
    State(sessions): State<Arc<Sessions>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    sessions.remove(id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/sessions/{id}/layers`: which simulcast layers a subscriber takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LayersRequest {
    /// Highest layer rank the subscriber receives: 0 is the lowest quality the publisher
    /// sends, 1 the next, 2 the best of three; `null` removes the cap. Ranks count the
    /// layers the publisher sends now, so a cap above what is sent means the best sent.
    #[schema(example = 0)]
    max_layer: Option<u8>,
    /// Highest VP8 temporal layer the subscriber receives of a simulcast layer that has
    /// them (Chromium sends three: 0 is a quarter of the frames, 1 half); absent or `null`:
    /// every one.
    #[serde(default)]
    #[schema(example = 1)]
    max_temporal_layer: Option<u8>,
}

/// Cap the simulcast layer a subscriber (WHEP or plain) receives of every simulcast track
/// of its stream, and the VP8 temporal layers of it. It moves at the next keyframe of the
/// layer picked (the node asks the publisher for one), with no gap in its numbering;
/// temporal layers at the next frame. Streams without simulcast ignore it.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/layers",
    tag = "sessions",
    params(("id" = u64, Path, description = "Session id of a subscriber")),
    request_body = LayersRequest,
    responses(
        (status = 204, description = "Handed to the data plane"),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 409, description = "The session is not a subscriber", body = ErrorBody),
        (status = 503, description = "No data plane", body = ErrorBody),
    )
)]
async fn set_layers(
    State(sessions): State<Arc<Sessions>>,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let req: LayersRequest = parse_body(body)?;
    sessions.set_max_layer(id, req.max_layer)?;
    sessions.set_max_temporal(id, req.max_temporal_layer)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
