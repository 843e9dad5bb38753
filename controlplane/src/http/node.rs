//! This node's own routes: the demo page, the cluster page, `GET /health`, `GET /metrics` and `GET /api` (the
//! OpenAPI document, [`super::openapi`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::counters::Counters;
use crate::core::link::{Link, RingHealth};
use crate::services::cluster::load::Latest;
use crate::services::forward::Forwards;

/// What the node's own routes read.
pub struct Status {
    pub node_id: String,
    pub link: Arc<Link>,
    pub counters: Arc<Counters>,
    pub load: Arc<Latest>,
    pub forwards: Arc<Forwards>,
    /// `[metrics] max_stream_series`.
    pub max_stream_series: usize,
    /// SHA-256 of the HTTPS certificate (hex), when the API serves HTTPS.
    pub https_sha256: Option<String>,
}

/// The routes, each documented by its handler's `#[utoipa::path]` (see `super::openapi`).
pub(crate) fn routes(status: Arc<Status>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(cluster_page))
        .routes(routes!(health))
        .routes(routes!(certificates))
        .routes(routes!(metrics))
        .routes(routes!(super::openapi::document))
        .routes(routes!(explorer))
        .routes(routes!(explorer_script))
        .routes(routes!(explorer_style))
        .with_state(status)
}

/// The demo page: publish with WHIP, list streams, watch with WHEP (docs/webrtc.md).
#[utoipa::path(
    get,
    path = "/",
    tag = "node",
    responses((status = 200, description = "The demo page", content_type = "text/html", body = String))
)]
async fn index() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../static/index.html"))
}

/// The cluster page: nodes with their load and health, rooms, streams and the relay links
/// between nodes, drawn as a graph (SVG) and refreshed every second from `/v1/nodes`,
/// `/v1/rooms` and `/v1/cluster/streams` (docs/operations.md, "Cluster page"). One file, no
/// script from anywhere else.
#[utoipa::path(
    get,
    path = "/cluster",
    tag = "node",
    responses((status = 200, description = "The cluster page", content_type = "text/html", body = String))
)]
async fn cluster_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../../static/cluster.html"))
}

/// The API explorer: Swagger UI (vendored, controlplane/static/swagger-ui) on this node's
/// OpenAPI document at `/api`. Everything it needs is built into the binary.
#[utoipa::path(
    get,
    path = "/api/docs",
    tag = "node",
    responses((status = 200, description = "Swagger UI on /api", content_type = "text/html", body = String))
)]
async fn explorer() -> axum::response::Html<&'static str> {
    axum::response::Html(EXPLORER)
}

const EXPLORER: &str = r##"<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>Switchyard API</title>
<link rel="stylesheet" href="/api/docs/swagger-ui.css">
<div id="swagger-ui"></div>
<script src="/api/docs/swagger-ui-bundle.js"></script>
<script>
  window.ui = SwaggerUIBundle({ url: "/api", dom_id: "#swagger-ui", deepLinking: true });
</script>
</html>
"##;

#[utoipa::path(
    get,
    path = "/api/docs/swagger-ui-bundle.js",
    tag = "node",
    responses((status = 200, description = "Swagger UI's script", content_type = "text/javascript", body = String))
)]
async fn explorer_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../static/swagger-ui/swagger-ui-bundle.js"),
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/api/docs/swagger-ui.css",
    tag = "node",
    responses((status = 200, description = "Swagger UI's style sheet", content_type = "text/css", body = String))
)]
async fn explorer_style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../static/swagger-ui/swagger-ui.css"),
    )
        .into_response()
}

/// `GET /certificate.sha256`: SHA-256 fingerprints (lowercase hex, no separators) of the
/// certificates a client may want to pin.
#[derive(Debug, Serialize, ToSchema)]
struct Certificates {
    /// The API's HTTPS certificate (its leaf); null over plain HTTP.
    https: Option<String>,
    /// The data plane's DTLS certificate (what every WebRTC answer's `a=fingerprint` says);
    /// null until the data plane said hello.
    dtls: Option<String>,
}

/// The fingerprints of this node's certificates (moq-relay serves the same path for its TLS
/// certificate; this one also names the DTLS certificate of its media).
#[utoipa::path(
    get,
    path = "/certificate.sha256",
    tag = "node",
    responses((status = 200, description = "Certificate fingerprints", body = Certificates))
)]
async fn certificates(State(node): State<Arc<Status>>) -> Json<Certificates> {
    let dtls = node.link.lock().node.dataplane().map(|d| {
        // The Hello says `sha-256 AB:CD:...`.
        let hex = d.fingerprint.rsplit(' ').next().unwrap_or_default();
        hex.replace(':', "").to_ascii_lowercase()
    });
    Json(Certificates {
        https: node.https_sha256.clone(),
        dtls,
    })
}

/// `GET /health`. Fields after `sessions` appear once the data plane said hello (and `load`
/// once the node measured it).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HealthView {
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
    load: Option<BTreeMap<String, f64>>,
    /// Why the node is not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
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
async fn health(State(node): State<Arc<Status>>) -> Response {
    let g = node.link.lock();
    let dp = g.node.dataplane();
    let load = node.load.get();
    let mut body = HealthView {
        status: "ok",
        node: node.node_id.clone(),
        sessions: g.node.session_count(),
        ring: g.ring_health().as_str(),
        workers: dp.map(|d| d.workers),
        engine: dp.map(|d| d.engine.name().to_owned()),
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
                RingHealth::Corrupt => {
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
async fn metrics(State(node): State<Arc<Status>>) -> Response {
    let text = {
        let load = node.load.get();
        let mut text = {
            let g = node.link.lock();
            let mut text = super::metrics::render(&g, &node.counters, load.as_ref());
            super::series::render(&mut text, &g, node.max_stream_series);
            text
        };
        super::metrics::render_forwards(&mut text, &node.forwards.manager());
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
