//! `/v1/forwards`: create, list, show and delete forwards, and the SDP file of what a
//! plain-RTP destination receives. Same auth as `/v1/sessions` (a cluster token).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use switchyard_shared::config::{check_forward, valid_forward_id, Destination};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{EgressView, Forward, ForwardError, Manager};
use crate::api::{parse_body, ApiError};
use crate::cluster::store::{Store as _, StoreError};
use crate::cluster::Cluster;
use crate::link::Shared;
use crate::openapi::ErrorBody;

/// The routes, each documented by its handler's `#[utoipa::path]` (see `crate::openapi`).
pub fn routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, remove))
        .routes(routes!(sdp_file))
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

fn forward_error(e: ForwardError) -> ApiError {
    let status = match e {
        ForwardError::Exists | ForwardError::FromConfig(_) => StatusCode::CONFLICT,
        ForwardError::NotFound => StatusCode::NOT_FOUND,
        ForwardError::TooMany => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

/// A forward as the API shows it, with its egresses.
fn view(m: &Manager, f: &Forward, now: Instant) -> ForwardView {
    ForwardView {
        id: f.id.clone(),
        prefix: f.prefix.clone(),
        destinations: f.destinations.iter().map(ToString::to_string).collect(),
        from_config: f.from_config,
        created_ms: f.created_ms,
        egresses: m
            .egresses_of(&f.id)
            .map(|(k, e)| EgressView::of(k, e, now))
            .collect(),
    }
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
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
    State(shared): State<Arc<Shared>>,
    Extension(cluster): Extension<Arc<Cluster>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateForward = parse_body(body)?;
    let destinations =
        check_forward(&req.prefix, &req.destinations).map_err(ApiError::bad_request)?;
    if let Some(id) = &req.id {
        if !valid_forward_id(id) {
            return Err(ApiError::bad_request(
                "id: 1 to 64 characters of A-Z a-z 0-9 _ -",
            ));
        }
    }
    let (body, saved) = {
        let mut m = shared.forwards();
        let id = match req.id {
            Some(id) => id,
            None => m.allocate_id(),
        };
        let f = Forward {
            id: id.clone(),
            prefix: req.prefix,
            destinations,
            from_config: false,
            created_ms: crate::api::now_ms(),
        };
        m.add(f.clone()).map_err(forward_error)?;
        tracing::info!(forward = %id, prefix = %f.prefix, destinations = f.destinations.len(), "forward created");
        (view(&m, &f, Instant::now()), f.saved())
    };
    let id = body.id.clone();
    // Kept in the cluster store like rooms, so a restarted control plane has it again.
    if let Err(e) = cluster
        .store
        .put_forward(&shared.config.node.id, &id, &saved)
        .await
    {
        let _ = shared.forwards().delete(&id);
        return Err(store_error(e));
    }
    shared.forward_wake.notify_one();
    let location = format!("/v1/forwards/{id}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/forwards",
    tag = "forwards",
    responses((status = 200, description = "Every forward on this node", body = ForwardList))
)]
async fn list(State(shared): State<Arc<Shared>>) -> Json<ForwardList> {
    let m = shared.forwards();
    let now = Instant::now();
    let forwards = m.forwards().map(|f| view(&m, f, now)).collect();
    Json(ForwardList { forwards })
}

fn not_found() -> ApiError {
    forward_error(ForwardError::NotFound)
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
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<ForwardView>, ApiError> {
    let m = shared.forwards();
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
    State(shared): State<Arc<Shared>>,
    Extension(cluster): Extension<Arc<Cluster>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match shared.forwards().get(&id) {
        None => return Err(not_found()),
        Some(f) if f.from_config => return Err(forward_error(ForwardError::FromConfig(id))),
        Some(_) => {}
    }
    cluster
        .store
        .delete_forward(&shared.config.node.id, &id)
        .await
        .map_err(store_error)?;
    shared.forwards().delete(&id).map_err(forward_error)?;
    tracing::info!(forward = %id, "forward deleted");
    shared.forward_wake.notify_one();
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
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    query: Result<Query<SdpQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query.map_err(|e| ApiError::bad_request(e.body_text()))?.0;
    let stream = q.stream.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::bad_request("stream: the query names the stream (?stream=room/cam)")
    })?;
    let (prefix, destination) = {
        let m = shared.forwards();
        let f = m.get(&id).ok_or_else(not_found)?;
        let d = f.destinations.get(q.destination).cloned().ok_or_else(|| {
            ApiError::bad_request(format!(
                "destination: the forward has {} (0-based index)",
                f.destinations.len()
            ))
        })?;
        (f.prefix.clone(), d)
    };
    if let Destination::Node(_) = destination {
        return Err(ApiError::bad_request(format!(
            "destination {destination} is a node (a relay link): SDP files describe plain rtp:// destinations only"
        )));
    }
    if !stream.starts_with(&prefix) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("stream {stream:?} is not under the forward's prefix {prefix:?}"),
        ));
    }
    let media = {
        let g = shared.lock();
        let published = g.node.sessions().any(|s| {
            s.stream == stream
                && matches!(s.role, switchyard_shared::command::Role::Publisher { .. })
        });
        if !published {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("stream {stream:?} has no publisher on this node"),
            ));
        }
        g.node.publisher_codecs(&stream)
    };
    let tracks = media
        .as_deref()
        .map(super::sdp::track_codecs)
        .unwrap_or_default();
    let origin = shared.config.media.announce_ip();
    let session_id = crate::api::now_ms();
    let text = super::sdp::describe(&id, &stream, &destination, &tracks, origin, session_id)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/sdp")], text).into_response())
}
