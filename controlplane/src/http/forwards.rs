//! `/v1/forwards`: create, list, show and delete forwards, and the SDP file of what a
//! plain-RTP destination receives. Same auth as `/v1/sessions` (a cluster token). The
//! forwards themselves are `services::forward`'s.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::parse_body;
use super::error::ApiError;
use super::openapi::ErrorBody;
use crate::services::forward::{EgressView, Forward, ForwardError, Forwards, Manager};

/// The routes, each documented by its handler's `#[utoipa::path]` (see `super::openapi`).
pub(crate) fn routes(forwards: Arc<Forwards>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, remove))
        .routes(routes!(sdp_file))
        .with_state(forwards)
}

/// `POST /v1/forwards`: copy every stream under `prefix` to `destinations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateForward {
    /// Optional name; `fwd-N` when absent.
    #[serde(default)]
    id: Option<String>,
    /// Streams whose name starts with this; empty: every stream.
    #[serde(default)]
    prefix: String,
    /// `rtp://ip:port` (track `i` to `port + 2i`, its RTCP one above), `node://<node-id>` (a
    /// registered node, hot standby through a relay link) or `node://host:port` (a control
    /// plane's HTTP address outside the registry; a `:` tells it from a node id).
    #[schema(example = json!(["rtp://192.0.2.20:5004", "node://node-b"]))]
    destinations: Vec<String>,
}

/// A forward and its egresses (one per destination × stream × track).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ForwardView {
    id: String,
    prefix: String,
    destinations: Vec<String>,
    /// Made from `[[forward]]` in the config (cannot be deleted through the API).
    from_config: bool,
    created_ms: u64,
    egresses: Vec<EgressView>,
}

#[derive(Debug, Serialize, ToSchema)]
struct ForwardList {
    forwards: Vec<ForwardView>,
}

/// A forward as the API shows it, with `egresses`.
fn view_with(f: &Forward, egresses: Vec<EgressView>) -> ForwardView {
    ForwardView {
        id: f.id.clone(),
        prefix: f.prefix.clone(),
        destinations: f.destinations.iter().map(ToString::to_string).collect(),
        from_config: f.from_config,
        created_ms: f.created_ms,
        egresses,
    }
}

/// A forward as the API shows it, with its egresses now.
fn view(m: &Manager, f: &Forward, now: Instant) -> ForwardView {
    let egresses = m
        .egresses_of(&f.id)
        .map(|(k, e)| EgressView::of(k, e, now))
        .collect();
    view_with(f, egresses)
}

#[utoipa::path(
    post,
    path = "/v1/forwards",
    tag = "forwards",
    request_body = CreateForward,
    responses(
        (status = 201, description = "Created; `Location` names it", body = ForwardView),
        (status = 400, description = "Invalid prefix, destination or id", body = ErrorBody),
        (status = 409, description = "A forward with this id exists", body = ErrorBody),
        (status = 503, description = "Too many forwards, or the cluster store is unreachable", body = ErrorBody),
    )
)]
async fn create(
    State(forwards): State<Arc<Forwards>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateForward = parse_body(body)?;
    let (f, egresses) = forwards
        .create(req.id, req.prefix, &req.destinations)
        .await?;
    let location = format!("/v1/forwards/{}", f.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view_with(&f, egresses)),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/forwards",
    tag = "forwards",
    responses((status = 200, description = "Every forward on this node", body = ForwardList))
)]
async fn list(State(forwards): State<Arc<Forwards>>) -> Json<ForwardList> {
    let m = forwards.manager();
    let now = Instant::now();
    let forwards = m.forwards().map(|f| view(&m, f, now)).collect();
    Json(ForwardList { forwards })
}

fn not_found() -> ApiError {
    ForwardError::NotFound.into()
}

#[utoipa::path(
    get,
    path = "/v1/forwards/{id}",
    tag = "forwards",
    params(("id" = String, Path, description = "Forward id")),
    responses(
        (status = 200, description = "The forward and its egresses' state, attempts and last error", body = ForwardView),
        (status = 404, description = "No such forward", body = ErrorBody),
    )
)]
async fn show(
    State(forwards): State<Arc<Forwards>>,
    Path(id): Path<String>,
) -> Result<Json<ForwardView>, ApiError> {
    let m = forwards.manager();
    let f = m.get(&id).ok_or_else(not_found)?;
    Ok(Json(view(&m, f, Instant::now())))
}

#[utoipa::path(
    delete,
    path = "/v1/forwards/{id}",
    tag = "forwards",
    params(("id" = String, Path, description = "Forward id")),
    responses(
        (status = 204, description = "Deleted; its egresses are removed"),
        (status = 404, description = "No such forward", body = ErrorBody),
        (status = 409, description = "A forward from the config file", body = ErrorBody),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn remove(
    State(forwards): State<Arc<Forwards>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    forwards.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SdpQuery {
    /// The stream described (`room/stream`).
    stream: Option<String>,
    /// Index into the forward's destinations; 0 when absent.
    #[serde(default)]
    destination: usize,
}

#[utoipa::path(
    get,
    path = "/v1/forwards/{id}/sdp",
    tag = "forwards",
    params(("id" = String, Path, description = "Forward id"), SdpQuery),
    responses(
        (status = 200, description = "An SDP file describing the plain RTP the destination receives for the stream (for ffmpeg or GStreamer)", content_type = "application/sdp", body = String),
        (status = 400, description = "Missing stream, bad destination index, or a node:// destination (no SDP file: a relay link)", body = ErrorBody),
        (status = 404, description = "No such forward, or the stream is not published here under its prefix", body = ErrorBody),
        (status = 409, description = "The stream's codecs are not known (e.g. after a control-plane restart)", body = ErrorBody),
    )
)]
async fn sdp_file(
    State(forwards): State<Arc<Forwards>>,
    Path(id): Path<String>,
    query: Result<Query<SdpQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query.map_err(|e| ApiError::bad_request(e.body_text()))?.0;
    let text = forwards.sdp_file(&id, q.stream, q.destination)?;
    Ok(([(header::CONTENT_TYPE, "application/sdp")], text).into_response())
}
