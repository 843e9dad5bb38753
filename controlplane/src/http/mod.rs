//! The HTTP layer: routes, extractors, the one error type that knows status codes
//! ([`ApiError`]), the OpenAPI document, Prometheus rendering, auth and per-client limits, and
//! the server that accepts connections. Everything below it (`services`, `core`) is called
//! with typed values and answers typed errors; strings and status codes exist only here.
//!
//! Each router gets the one service it serves ([`Parts`], built once at start by
//! `crate::start`): `node` (health, metrics, the demo page, `/api`), `sessions`, `webrtc`
//! (WHIP/WHEP), `cluster` (nodes, rooms, discovery), `relays`, `forwards`. See docs/api.md for
//! the reference and docs/architecture.md for which file to open for which change.
//!
//! Every error is a JSON object `{"error": "..."}` with a 4xx or 5xx status, including
//! malformed JSON, oversized bodies, unknown paths and wrong methods.

pub mod auth;
pub mod cluster;
pub mod error;
pub mod forwards;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod quota;
pub mod relays;
pub mod series;
pub mod server;
pub mod sessions;
pub mod tls;
pub mod webrtc;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;
use switchyard_shared::config::LimitsSection;
use utoipa_axum::router::OpenApiRouter;

pub use error::{ApiError, MAX_BODY};

use crate::core::counters::Counters;
use crate::services::cluster::Cluster;
use crate::services::forward::Forwards;
use crate::services::relay::Relays;
use crate::services::sessions::Sessions;
use crate::services::webrtc::Webrtc;

/// What the API serves: each router takes only its part.
pub struct Parts {
    pub node: Arc<node::Status>,
    pub sessions: Arc<Sessions>,
    pub webrtc: Arc<Webrtc>,
    pub cluster: Arc<Cluster>,
    pub relays: Arc<Relays>,
    pub forwards: Arc<Forwards>,
    pub counters: Arc<Counters>,
    /// `None`: auth is off, every endpoint is open.
    pub auth: Option<Arc<auth::Auth>>,
    pub limits: LimitsSection,
    /// `[http] request_timeout_ms`.
    pub request_timeout: Duration,
}

/// The API: every route, the OpenAPI document that lists them, and the middleware around
/// them (outermost first: request counting, the deadline, CORS, auth, per-client limits).
pub fn router(parts: Parts) -> Router {
    // Every route goes through `.routes(routes!(...))`: its path and method come from the
    // handler's `#[utoipa::path]`, so the OpenAPI document at /api lists exactly what is
    // served (docs/api.md, "Adding a route"). Handlers of one path share one `routes!`.
    let (router, mut doc) =
        OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi())
            .merge(node::routes(parts.node))
            .merge(sessions::routes(parts.sessions.clone()))
            .merge(forwards::routes(parts.forwards))
            .merge(relays::routes(parts.relays))
            .merge(webrtc::routes(parts.webrtc))
            .merge(cluster::routes(parts.cluster))
            .split_for_parts();
    openapi::finish(&mut doc);
    let doc = openapi::Served(Arc::new(doc.to_json().unwrap_or_else(|e| {
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
        Arc::new(limits::Limited::new(
            &parts.limits,
            parts.sessions,
            parts.counters.clone(),
        )),
        limits::quota_check,
    ));
    // Inside CORS, so refusals carry the CORS headers and preflights never need a token.
    let router = match parts.auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(auth, auth::check)),
        None => router,
    };
    router
        .layer(cors())
        .layer(axum::middleware::from_fn_with_state(
            parts.request_timeout,
            deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            parts.counters,
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
    State(counters): State<Arc<Counters>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The route template, never the path: ids in paths would mint a series per request.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    counters.count_status(status);
    crate::core::histogram::latency().http(&route, status, start.elapsed());
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
