//! The REST API: health, metrics and sessions. See docs/api.md for the reference.
//!
//! Every error is a JSON object `{"error": "..."}` with a 4xx or 5xx status, including
//! malformed JSON, oversized bodies, unknown paths and wrong methods.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_shared::command::{
    CommandError, Keying, Role, SessionId, SessionSpec, SrtpKeys, SrtpProfile, MAX_TRACKS,
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::link::{SendError, Shared};
use crate::openapi::ErrorBody;
use crate::quota::{Client, Quotas, Refusal};
use crate::state::DataplaneInfo;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a request waits for the data plane to answer a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_STREAM: usize = 128;

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        let status = match e {
            SendError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
            SendError::Detached | SendError::Full => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.to_string())
    }
}

fn command_error(e: CommandError) -> ApiError {
    let status = match e {
        CommandError::StreamBusy
        | CommandError::SsrcConflict
        | CommandError::AddressConflict
        | CommandError::DuplicateSession => StatusCode::CONFLICT,
        CommandError::Capacity => StatusCode::SERVICE_UNAVAILABLE,
        CommandError::UnknownSession => StatusCode::NOT_FOUND,
        CommandError::NoSuchWorker
        | CommandError::BadKey
        | CommandError::Invalid
        | CommandError::PlainIngress => StatusCode::BAD_REQUEST,
    };
    let text = match e {
        CommandError::StreamBusy => "stream busy: the stream already has a publisher".to_owned(),
        e => e.to_string(),
    };
    ApiError::new(status, text)
}

pub fn router(
    shared: Arc<Shared>,
    cluster: Arc<crate::cluster::Cluster>,
    auth: Option<Arc<crate::auth::Auth>>,
) -> Router {
    // Every route goes through `.routes(routes!(...))`: its path and method come from the
    // handler's `#[utoipa::path]`, so the OpenAPI document at /api lists exactly what is
    // served (docs/api.md, "Adding a route"). Handlers of one path share one `routes!`.
    let (router, mut doc) =
        OpenApiRouter::with_openapi(<crate::openapi::ApiDoc as utoipa::OpenApi>::openapi())
            .routes(routes!(index))
            .routes(routes!(health))
            .routes(routes!(metrics))
            .routes(routes!(crate::openapi::document))
            .routes(routes!(list_sessions, create_session))
            .routes(routes!(list_streams))
            .routes(routes!(get_session, delete_session))
            .merge(crate::forward::http::routes())
            .merge(crate::relay::http::routes())
            .routes(routes!(crate::whip::publish))
            .routes(routes!(
                crate::whip::end_publish,
                crate::whip::patch_publish
            ))
            .routes(routes!(crate::whip::subscribe))
            .routes(routes!(
                crate::whip::end_subscribe,
                crate::whip::patch_subscribe
            ))
            .with_state(shared.clone())
            // The WHIP/WHEP POSTs look up their room's node (307 to another node's URL).
            .layer(axum::Extension(cluster.clone()))
            .merge(crate::cluster::http::routes(cluster))
            .split_for_parts();
    crate::openapi::finish(&mut doc);
    let doc = crate::openapi::Served(Arc::new(doc.to_json().unwrap_or_else(|e| {
        // Serializing a document built from static attributes cannot fail at run time in
        // practice; if it ever does, /api says so instead of the node not starting.
        json!({ "error": format!("OpenAPI document: {e}") }).to_string()
    })));
    let router: Router = router
        .layer(axum::Extension(doc))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY));
    // Inside auth, which leaves the caller for it; only callers auth knows are limited.
    let router = router.layer(axum::middleware::from_fn_with_state(
        Arc::new(Limited {
            quotas: Mutex::new(Quotas::new(&shared.config.limits)),
            shared: shared.clone(),
        }),
        quota_check,
    ));
    // Inside CORS, so refusals carry the CORS headers and preflights never need a token.
    let router = match auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::check,
        )),
        None => router,
    };
    router
        .layer(cors())
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_millis(shared.config.http.request_timeout_ms),
            deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            count_requests,
        ))
}

/// A request gets `limit`, body included (a client dripping its body holds a connection
/// otherwise), then 408. Dropping a handler mid-way is safe: every command it sent has its
/// own shorter timeout, and what the data plane confirms late is cleaned up by the table.
async fn deadline(
    State(limit): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

/// Marks a response whose request created a session, so its caller's quota counts it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Created(pub SessionId);

/// The per-client session limits and what they need to see which sessions still live.
struct Limited {
    quotas: Mutex<Quotas>,
    shared: Arc<Shared>,
}

impl Limited {
    fn quotas(&self) -> std::sync::MutexGuard<'_, Quotas> {
        // Every change is one small update; a poisoned table is still a usable one.
        self.quotas.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Gives an admitted creation back, also when the request is dropped half-way (the client
/// went away, or the deadline passed).
struct Settle<'a> {
    limited: &'a Limited,
    client: Client,
    created: Option<SessionId>,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.limited.quotas().settle(self.client, self.created);
    }
}

/// Whether a request makes a session: a WHIP or WHEP offer, or `POST /v1/sessions`.
fn creates_session(method: &Method, path: &str) -> bool {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    method == Method::POST
        && matches!(
            segs.as_slice(),
            ["whip" | "whep", _, _] | ["v1", "sessions"]
        )
}

/// `[limits]` on session creation: user tokens and anonymous addresses get a cap of live
/// sessions and a creation rate; 429 with `Retry-After` over either (`crate::quota`).
async fn quota_check(
    State(limited): State<Arc<Limited>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !creates_session(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let caller = req.extensions().get::<Caller>().copied();
    let client = match caller {
        c if Caller::trusted(c.as_ref()) => return next.run(req).await,
        Some(Caller::User(token)) => Client::Token(token),
        _ => {
            // The server always sets the peer; without it every such caller shares one quota.
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
            Client::address(ip)
        }
    };
    let admitted = {
        let g = limited.shared.lock();
        limited
            .quotas()
            .admit(client, Instant::now(), |id| g.node.session(id).is_some())
    };
    if let Err(refusal) = admitted {
        let m = &limited.shared.http;
        match refusal {
            Refusal::Sessions(_) => &m.throttled_quota,
            Refusal::Rate { .. } => &m.throttled_rate,
        }
        .fetch_add(1, Ordering::Relaxed);
        let secs = refusal.retry_after().as_secs_f64().ceil().max(1.0);
        let mut resp =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, refusal.to_string()).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs as u64));
        return resp;
    }
    let mut settle = Settle {
        limited: &limited,
        client,
        created: None,
    };
    let resp = next.run(req).await;
    settle.created = resp.extensions().get::<Created>().map(|c| c.0);
    drop(settle);
    resp
}

/// A page on another origin may publish and watch (WHIP/WHEP from a web app), so CORS is
/// open; the Location, ETag and Link headers WHIP clients read are exposed.
fn cors() -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method};
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::IF_MATCH,
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::WWW_AUTHENTICATE,
            HeaderName::from_static("link"),
        ])
}

async fn count_requests(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    shared.http.count_status(resp.status().as_u16());
    resp
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such resource")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this resource",
    )
}

/// The demo page: publish with WHIP, list streams, watch with WHEP (docs/webrtc.md).
#[utoipa::path(
    get,
    path = "/",
    tag = "node",
    responses((status = 200, description = "The demo page", content_type = "text/html", body = String))
)]
async fn index() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../static/index.html"))
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
struct StreamEntry {
    #[schema(example = "room1/cam")]
    stream: String,
    subscribers: usize,
}

#[derive(Debug, Serialize, ToSchema)]
struct StreamList {
    streams: Vec<StreamEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
struct SessionList {
    sessions: Vec<SessionView>,
}

/// `GET /health`. Fields after `sessions` appear once the data plane said hello (and `load`
/// once the node measured it).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct HealthView {
    /// `ok`, `overloaded` or `unavailable`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
    node: String,
    sessions: usize,
    /// The command ring to the data plane: `ok`, `detached` (no data plane ring yet, or
    /// between two files) or `corrupt` (found corrupt; 503 until the data plane has
    /// recreated it, which it does at once while it runs).
    #[schema(value_type = String, example = "ok")]
    ring: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<u16>,
    /// The data plane's I/O engine, e.g. `uring` or `mmsg`.
    #[serde(skip_serializing_if = "Option::is_none")]
    engine: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataplane_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_port: Option<u16>,
    /// Share in use of each resource the node measures, 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    load: Option<std::collections::BTreeMap<String, f64>>,
    /// Why the node is not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
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
    State(shared): State<Arc<Shared>>,
    query: Result<axum::extract::Query<StreamsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<StreamList>, ApiError> {
    let query = query.map_err(|e| ApiError::bad_request(e.body_text()))?.0;
    let g = shared.lock();
    let list: Vec<_> = published_streams(
        g.node
            .sessions()
            // A relay that feeds this node publishes its stream here.
            .map(|s| {
                (
                    s.stream.as_str(),
                    matches!(s.role, Role::Publisher { .. } | Role::RelayIn { .. }),
                )
            }),
        &query.prefix,
    )
    .into_iter()
    .map(|(stream, subscribers)| StreamEntry {
        stream: stream.to_owned(),
        subscribers,
    })
    .collect();
    Ok(Json(StreamList { streams: list }))
}

/// From `(stream, is_publisher)` per session: the streams starting with `prefix` that have a
/// publisher, sorted, each with its number of subscribers.
fn published_streams<'a>(
    sessions: impl IntoIterator<Item = (&'a str, bool)>,
    prefix: &str,
) -> Vec<(&'a str, usize)> {
    let mut streams = std::collections::BTreeMap::<&str, (bool, usize)>::new();
    for (stream, publisher) in sessions {
        if !stream.starts_with(prefix) {
            continue;
        }
        let e = streams.entry(stream).or_default();
        if publisher {
            e.0 = true;
        } else {
            e.1 += 1;
        }
    }
    streams
        .into_iter()
        .filter(|(_, (published, _))| *published)
        .map(|(stream, (_, subscribers))| (stream, subscribers))
        .collect()
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "node",
    responses(
        (status = 200, description = "Ready: the data plane is attached and the node not overloaded", body = HealthView),
        (status = 503, description = "`unavailable` (no data plane yet, or it went away) or `overloaded`, with `error` saying why", body = HealthView),
    )
)]
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let g = shared.lock();
    let dp = g.node.dataplane();
    let load = shared
        .load
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut body = HealthView {
        status: "ok",
        node: shared.config.node.id.clone(),
        sessions: g.node.session_count(),
        ring: g.ring_health().as_str(),
        workers: dp.map(|d| d.workers),
        engine: dp.map(|d| format!("{:?}", d.engine).to_lowercase()),
        dataplane_pid: dp.map(|d| d.pid),
        media_port: dp.map(|d| d.media_port),
        load: load.as_ref().map(|l| l.load.clone()),
        error: None,
    };
    match g.node.ready() {
        Ok(()) => match load.and_then(|l| l.reason) {
            // Overloaded: the cluster's health checks then keep new rooms away too.
            Some(reason) => {
                body.status = "overloaded";
                body.error = Some(format!("overloaded: {reason}"));
                (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
            }
            None => (StatusCode::OK, Json(body)).into_response(),
        },
        Err(e) => {
            body.status = "unavailable";
            body.error = Some(match g.ring_health() {
                crate::link::RingHealth::Corrupt => {
                    "command ring corrupt; waiting for the data plane to recreate it".into()
                }
                _ => e.to_string(),
            });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    responses((status = 200, description = "Prometheus text exposition (docs/operations.md)",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String))
)]
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = {
        let load = shared
            .load
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut text = {
            let g = shared.lock();
            crate::metrics::render(&g, &shared.http, load.as_ref())
        };
        crate::metrics::render_forwards(&mut text, &shared.forwards());
        text
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A plain RTP session with static SRTP keys (docs/api.md).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateSession {
    role: RoleName,
    /// 1 to 128 characters of A-Z a-z 0-9 _ . / -; `room/stream` joins a room's events.
    #[schema(example = "room1/cam")]
    stream: String,
    /// `ip:port` to send to; required for subscribers.
    #[serde(default)]
    remote: Option<String>,
    /// `AEAD_AES_128_GCM` (default) or `AES_CM_128_HMAC_SHA1_80`.
    #[serde(default)]
    profile: Option<String>,
    /// Base64 master key || salt the peer sends with; random when absent.
    #[serde(default)]
    remote_key: Option<String>,
    /// Base64 master key || salt the node sends with; random when absent.
    #[serde(default)]
    local_key: Option<String>,
    #[serde(default)]
    ssrcs: Option<Vec<u32>>,
    /// The worker to place it on; the least loaded when absent.
    #[serde(default)]
    worker: Option<u16>,
    /// Subscribers: `[[publisherPt, subscriberPt], ...]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Vec<u8>>>)]
    payload_types: Option<Vec<[u8; 2]>>,
    /// Publishers: the RTP clock rate (Hz) of each of `ssrcs`, in the same order, for the
    /// jitter in the receiver reports the node sends; without it jitter is reported as 0.
    #[serde(default)]
    clock_rates: Option<Vec<u32>>,
    /// Publishers: the codec of each of `ssrcs`, in the same order, so forwards can describe
    /// the stream in an SDP file.
    #[serde(default)]
    codecs: Option<Vec<CodecSpec>>,
}

/// `{"kind": "audio", "payloadType": 111, "name": "opus", "clockRate": 48000, "channels": 2,
/// "fmtp": "minptime=10;useinbandfec=1"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CodecSpec {
    kind: KindName,
    payload_type: u8,
    name: String,
    clock_rate: u32,
    #[serde(default)]
    channels: Option<u16>,
    #[serde(default)]
    fmtp: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
enum KindName {
    Audio,
    Video,
}

/// A REST publisher's codecs as the WHIP path records a negotiation: one track per declared
/// SSRC that has a codec, in order.
fn publisher_codecs(
    given: Vec<CodecSpec>,
    ssrcs: &[u32],
) -> Result<crate::sdp::Negotiated, ApiError> {
    use crate::sdp::{Codec, Kind, Negotiated, Track};
    if given.len() > ssrcs.len() {
        return Err(ApiError::bad_request(
            "codecs: at most one per entry of ssrcs, in the same order",
        ));
    }
    let mut tracks = Vec::with_capacity(given.len());
    for (i, (c, &ssrc)) in given.into_iter().zip(ssrcs).enumerate() {
        let bad = |m: &str| Err(ApiError::bad_request(format!("codecs[{i}]: {m}")));
        if c.payload_type >= 128 || (72..=76).contains(&c.payload_type) {
            return bad("payloadType is 0..=127 and not 72..=76");
        }
        if c.name.is_empty()
            || c.name.len() > 32
            || !c
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("name is 1 to 32 characters of A-Z a-z 0-9 - _ (opus, VP8, H264)");
        }
        if c.clock_rate == 0 || c.clock_rate > 1_000_000 {
            return bad("clockRate is 1..=1000000 Hz");
        }
        if c.channels.is_some_and(|n| n == 0 || n > 8) {
            return bad("channels is 1..=8");
        }
        if c.fmtp
            .as_deref()
            .is_some_and(|f| f.len() > 512 || !f.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        {
            return bad("fmtp is up to 512 printable ASCII characters");
        }
        tracks.push(Track {
            mid: i.to_string(),
            kind: match c.kind {
                KindName::Audio => Kind::Audio,
                KindName::Video => Kind::Video,
            },
            codec: Codec {
                name: c.name,
                payload_type: c.payload_type,
                clock_rate: c.clock_rate,
                channels: c.channels,
                fmtp: c.fmtp,
                rtcp_fb: Vec::new(),
            },
            ssrcs: vec![ssrc],
            rtx: None,
            extensions: Vec::new(),
            rids: Vec::new(),
            remap: None,
        });
    }
    Ok(Negotiated {
        ice_ufrag_remote: String::new(),
        ice_pwd_remote: String::new(),
        remote_fingerprint: String::new(),
        tracks,
        answer: String::new(),
        data_channel: None,
    })
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
enum RoleName {
    Publisher,
    Subscriber,
    /// `Role::RelayIn`: this node's end of a relay link, on the worker's relay socket.
    #[serde(rename = "relay-in")]
    RelayIn,
    /// `Role::RelayOut`: sends the stream unchanged to another node's relay socket.
    #[serde(rename = "relay-out")]
    RelayOut,
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
}

/// `relay`: the relay base port (see [`relay_base`]).
fn view(shared: &Shared, spec: &SessionSpec, keys: bool, relay: u16) -> SessionView {
    let media = &shared.config.media;
    let (role, ssrcs) = match &spec.role {
        Role::Publisher { ssrcs, .. } => ("publisher", ssrcs.clone()),
        Role::Subscriber { ssrcs, .. } => ("subscriber", ssrcs.clone()),
        Role::RelayIn { ssrcs } => ("relay-in", ssrcs.clone()),
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
        profile: spec.keying.keys().map(|k| k.profile.name()),
        remote: spec.remote,
        ssrcs,
        created_ms: spec.created_ms,
        remote_key: spec.keying.keys().filter(|_| keys).map(|k| b64(&k.remote)),
        local_key: spec.keying.keys().filter(|_| keys).map(|k| b64(&k.local)),
    }
}

/// The data plane's relay base port as its `Hello` said (the configured one before that).
pub(crate) fn relay_base(shared: &Shared, node: &crate::state::NodeState) -> u16 {
    node.dataplane()
        .map_or(shared.config.media.relay_port, |d| d.relay_port)
}

/// Parse a JSON body ourselves so every failure is a JSON error (and the content type is
/// not required: curl users forget it).
pub(crate) fn parse_body<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!("request body is larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::new(status, format!("cannot read request body: {e}"))
        }
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("invalid JSON: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("invalid JSON at {path}: {}", e.inner()))
        }
    })
}

pub(crate) fn validate_stream(stream: &str) -> Result<(), ApiError> {
    let ok = !stream.is_empty()
        && stream.len() <= MAX_STREAM
        && stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "stream: 1 to {MAX_STREAM} characters of A-Z a-z 0-9 _ . / -"
        )))
    }
}

fn parse_profile(name: Option<&str>) -> Result<SrtpProfile, ApiError> {
    match name {
        None => Ok(SrtpProfile::AeadAes128Gcm),
        Some(n) => [SrtpProfile::AeadAes128Gcm, SrtpProfile::AesCm128HmacSha1_80]
            .into_iter()
            .find(|p| p.name() == n)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "profile: {n:?} is not one of AEAD_AES_128_GCM, AES_CM_128_HMAC_SHA1_80"
                ))
            }),
    }
}

pub(crate) fn random_bytes(out: &mut [u8]) -> Result<(), ApiError> {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "system RNG failed"))
}

fn key(field: &str, given: Option<&str>, profile: SrtpProfile) -> Result<Vec<u8>, ApiError> {
    let len = profile.master_len();
    match given {
        Some(b64) => {
            let k = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| ApiError::bad_request(format!("{field}: not valid base64")))?;
            if k.len() != len {
                return Err(ApiError::bad_request(format!(
                    "{field}: {} bytes; {} needs {len} (master key || salt)",
                    k.len(),
                    profile.name()
                )));
            }
            Ok(k)
        }
        None => {
            let mut k = vec![0; len];
            random_bytes(&mut k)?;
            Ok(k)
        }
    }
}

fn ssrcs(role: RoleName, given: Option<Vec<u32>>) -> Result<Vec<u32>, ApiError> {
    let mut list = given.unwrap_or_default();
    if list.len() > MAX_TRACKS {
        return Err(ApiError::bad_request(format!(
            "ssrcs: at most {MAX_TRACKS} tracks"
        )));
    }
    if list.contains(&0) {
        return Err(ApiError::bad_request("ssrcs: 0 is not a usable SSRC"));
    }
    let mut sorted = list.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != list.len() {
        return Err(ApiError::bad_request("ssrcs: duplicate SSRC"));
    }
    if role == RoleName::Subscriber {
        // A subscriber gets an SSRC for every track the publisher may have.
        while list.len() < MAX_TRACKS {
            let mut b = [0u8; 4];
            random_bytes(&mut b)?;
            let s = u32::from_be_bytes(b);
            if s != 0 && !list.contains(&s) {
                list.push(s);
            }
        }
    }
    Ok(list)
}

/// A publisher's clock rates: one per declared SSRC (the data plane learns undeclared SSRCs
/// and cannot know their rates), each a plausible RTP clock.
fn clock_rates(given: Option<Vec<u32>>, ssrcs: usize) -> Result<Vec<u32>, ApiError> {
    let list = given.unwrap_or_default();
    if list.len() > ssrcs {
        return Err(ApiError::bad_request(
            "clockRates: at most one per entry of ssrcs, in the same order",
        ));
    }
    if list.iter().any(|&r| r == 0 || r > 1_000_000) {
        return Err(ApiError::bad_request(
            "clockRates: rates are 1..=1000000 Hz",
        ));
    }
    Ok(list)
}

fn payload_types(given: Option<Vec<[u8; 2]>>) -> Result<Vec<(u8, u8)>, ApiError> {
    let list = given.unwrap_or_default();
    if list.len() > switchyard_shared::command::MAX_PT_MAP {
        return Err(ApiError::bad_request(format!(
            "payloadTypes: at most {} pairs",
            switchyard_shared::command::MAX_PT_MAP
        )));
    }
    let bad = |p: u8| p >= 128 || (72..=76).contains(&p);
    if list.iter().any(|&[a, b]| bad(a) || bad(b)) {
        return Err(ApiError::bad_request(
            "payloadTypes: types are 0..=127 and not 72..=76 (those read as RTCP)",
        ));
    }
    Ok(list.into_iter().map(|[a, b]| (a, b)).collect())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateSession = parse_body(body)?;
    validate_stream(&req.stream)?;
    let remote = match req.remote.as_deref() {
        Some(r) => Some(r.parse::<SocketAddr>().map_err(|_| {
            ApiError::bad_request(format!("remote: {r:?} is not an ip:port address"))
        })?),
        None => None,
    };
    if let Some(r) = remote {
        if r.port() == 0 || r.ip().is_unspecified() || r.ip().is_multicast() {
            return Err(ApiError::bad_request(
                "remote: needs a unicast address and a non-zero port",
            ));
        }
    }
    if matches!(req.role, RoleName::Subscriber | RoleName::RelayOut) && remote.is_none() {
        return Err(ApiError::bad_request(
            "remote: a subscriber or relay-out needs the address to send to",
        ));
    }
    if matches!(req.role, RoleName::RelayIn | RoleName::RelayOut)
        && (req.ssrcs.is_some() || req.payload_types.is_some() || req.clock_rates.is_some())
    {
        return Err(ApiError::bad_request(
            "relay-in/relay-out: ssrcs, payloadTypes and clockRates do not apply (a relay \
             passes every track unchanged and learns its SSRCs)",
        ));
    }
    let profile = parse_profile(req.profile.as_deref())?;
    let srtp = SrtpKeys {
        profile,
        remote: key("remoteKey", req.remote_key.as_deref(), profile)?,
        local: key("localKey", req.local_key.as_deref(), profile)?,
    };
    if req.role != RoleName::Publisher && req.clock_rates.is_some() {
        return Err(ApiError::bad_request("clockRates: for publishers only"));
    }
    if req.role == RoleName::Subscriber && req.codecs.is_some() {
        return Err(ApiError::bad_request("codecs: for publishers only"));
    }
    let ssrcs = ssrcs(req.role, req.ssrcs)?;
    let codecs = match req.codecs {
        Some(c) => Some(publisher_codecs(c, &ssrcs)?),
        None => None,
    };
    let role = match req.role {
        RoleName::Publisher => Role::Publisher {
            clock_rates: clock_rates(req.clock_rates, ssrcs.len())?,
            ssrcs,
        },
        RoleName::Subscriber => Role::Subscriber {
            ssrcs,
            payload_types: payload_types(req.payload_types)?,
            extensions: None,
            rtx: Vec::new(),
            tracks: switchyard_shared::command::ALL_TRACKS,
        },
        RoleName::RelayIn => Role::RelayIn { ssrcs: Vec::new() },
        RoleName::RelayOut => Role::RelayOut,
    };

    let want = req.worker;
    let (spec, ()) = provision(&shared, want, |id, worker, _| {
        Ok((
            SessionSpec {
                id,
                worker,
                stream: req.stream,
                role,
                remote,
                keying: Keying::Static(srtp),
                ice: None,
                twcc_ext: None,
                created_ms: now_ms(),
                control: Default::default(),
            },
            (),
        ))
    })
    .await?;
    if let Some(n) = codecs {
        shared
            .lock()
            .node
            .set_declared_codecs(&spec.stream, spec.id, Arc::new(n));
    }
    let location = format!("/v1/sessions/{}", spec.id.0);
    let relay = relay_base(&shared, &shared.lock().node);
    let body = view(&shared, &spec, true, relay);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Extension(Created(spec.id)),
        Json(body),
    )
        .into_response())
}

/// Place a new session on a worker (`want`, or the least loaded), let `build` make its
/// spec (and whatever else the caller needs, e.g. an SDP answer) for that id and worker,
/// and add it to the data plane. Returns once the data plane confirmed it.
pub(crate) async fn provision<T>(
    shared: &Arc<Shared>,
    want: Option<u16>,
    build: impl FnOnce(SessionId, u16, &DataplaneInfo) -> Result<(SessionSpec, T), ApiError>,
) -> Result<(SessionSpec, T), ApiError> {
    let (spec, extra, rx) = {
        let mut g = shared.lock();
        g.node
            .ready()
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let Some(dp) = g.node.dataplane().cloned() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the data plane has not said hello yet",
            ));
        };
        let workers = dp.workers;
        let load = g.node.load(workers);
        let max = shared.config.media.max_sessions_per_worker;
        let worker = match want {
            Some(w) if w >= workers => {
                return Err(ApiError::bad_request(format!(
                    "worker: {w} is out of range; the data plane has {workers}"
                )))
            }
            Some(w) => w,
            None => (0..workers)
                .min_by_key(|&w| load.get(usize::from(w)).copied().unwrap_or(u32::MAX))
                .unwrap_or(0),
        };
        if load.get(usize::from(worker)).copied().unwrap_or(0) >= max {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("worker {worker} is at its limit of {max} sessions"),
            ));
        }
        let id = g.node.allocate_id();
        let (spec, extra) = build(id, worker, &dp)?;
        let (cmd, rx) = g.node.begin_add(spec.clone());
        if let Err(e) = g.send(&cmd) {
            g.node.cancel_add(spec.id);
            shared.http.sessions_refused.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
        (spec, extra, rx)
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
        Ok(Ok(Ok(()))) => {
            shared.http.sessions_created.fetch_add(1, Ordering::Relaxed);
            tracing::info!(id = spec.id.0, stream = %spec.stream, worker = spec.worker, role = ?spec.role, "session created");
            Ok((spec, extra))
        }
        Ok(Ok(Err(e))) => {
            shared.http.sessions_refused.fetch_add(1, Ordering::Relaxed);
            Err(command_error(e))
        }
        Ok(Err(_)) | Err(_) => {
            shared.lock().node.abandon_add(spec.id);
            shared.http.sessions_refused.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the data plane did not answer in time",
            ))
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    responses((status = 200, description = "Every session of this node (without keys)", body = SessionList))
)]
async fn list_sessions(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let g = shared.lock();
    let relay = relay_base(&shared, &g.node);
    let sessions: Vec<SessionView> = g
        .node
        .sessions()
        .map(|s| view(&shared, s, false, relay))
        .collect();
    Ok(Json(SessionList { sessions }).into_response())
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
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let g = shared.lock();
    let spec = g
        .node
        .session(id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such session"))?;
    Ok(Json(view(&shared, spec, false, relay_base(&shared, &g.node))).into_response())
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
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    remove(&shared, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Remove a session and wait for the data plane to confirm.
pub(crate) async fn remove(shared: &Arc<Shared>, id: SessionId) -> Result<(), ApiError> {
    let rx = {
        let mut g = shared.lock();
        g.node
            .ready()
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let (cmd, rx) = g
            .node
            .begin_remove(id)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such session"))?;
        if let Some(cmd) = cmd {
            if let Err(e) = g.send(&cmd) {
                g.node.cancel_remove(id);
                return Err(e.into());
            }
        }
        rx
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
        Ok(Ok(Ok(()))) => {
            shared.http.sessions_removed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(id = id.0, "session removed");
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(command_error(e)),
        Ok(Err(_)) | Err(_) => {
            // Forget the waiters so a retried DELETE sends the command again; a late
            // answer to this one still removes the session from the table.
            shared.lock().node.cancel_remove(id);
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the data plane did not answer in time; the removal is still queued",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{clock_rates, published_streams};

    #[test]
    fn streams_filter_by_prefix() {
        let sessions = [
            ("room1/cam", true),
            ("room1/cam", false),
            ("room1/cam", false),
            ("room1/screen", true),
            ("room10/cam", true),
            ("room2/cam", true),
            ("room1/watch-only", false),
        ];
        assert_eq!(
            published_streams(sessions, "room1/"),
            vec![("room1/cam", 2), ("room1/screen", 0)]
        );
        assert_eq!(published_streams(sessions, "").len(), 4);
        assert_eq!(published_streams(sessions, "room3/"), vec![]);
    }

    #[test]
    fn clock_rates_are_one_per_declared_ssrc() {
        assert_eq!(clock_rates(None, 2).ok(), Some(vec![]));
        assert_eq!(
            clock_rates(Some(vec![90000, 48000]), 2).ok(),
            Some(vec![90000, 48000])
        );
        assert!(
            clock_rates(Some(vec![90000]), 0).is_err(),
            "no SSRC to go with"
        );
        assert!(clock_rates(Some(vec![0]), 1).is_err());
    }
}
