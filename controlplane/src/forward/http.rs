//! `/v1/forwards`: create, list, show and delete forwards, and the SDP file of what a
//! plain-RTP destination receives. Same auth as `/v1/sessions` (a cluster token).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_shared::config::{check_forward, valid_forward_id, Destination, DestinationError};

use super::{EgressView, Forward, ForwardError, Manager};
use crate::api::{parse_body, ApiError};
use crate::cluster::store::{Store as _, StoreError};
use crate::cluster::Cluster;
use crate::link::Shared;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/forwards", get(list).post(create))
        .route("/v1/forwards/{id}", get(show).delete(remove))
        .route("/v1/forwards/{id}/sdp", get(sdp_file))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateForward {
    /// Optional name; `fwd-N` when absent.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    prefix: String,
    destinations: Vec<String>,
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
fn view(m: &Manager, f: &Forward, now: Instant) -> Value {
    let egresses: Vec<EgressView> = m
        .egresses_of(&f.id)
        .map(|(k, e)| EgressView::of(k, e, now))
        .collect();
    json!({
        "id": f.id,
        "prefix": f.prefix,
        "destinations": f.destinations.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "fromConfig": f.from_config,
        "createdMs": f.created_ms,
        "egresses": egresses,
    })
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(cluster): Extension<Arc<Cluster>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateForward = parse_body(body)?;
    // The node kind is a known destination this build cannot serve yet: say so, not "bad".
    for d in &req.destinations {
        if let Err(e @ DestinationError::NotYetSupported(_)) = Destination::parse(d) {
            return Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, e.to_string()));
        }
    }
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
    let id = body["id"].as_str().unwrap_or_default().to_owned();
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

async fn list(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let m = shared.forwards();
    let now = Instant::now();
    let list: Vec<Value> = m.forwards().map(|f| view(&m, f, now)).collect();
    Json(json!({ "forwards": list }))
}

fn not_found() -> ApiError {
    forward_error(ForwardError::NotFound)
}

async fn show(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = shared.forwards();
    let f = m.get(&id).ok_or_else(not_found)?;
    Ok(Json(view(&m, f, Instant::now())))
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SdpQuery {
    stream: Option<String>,
    /// Index into the forward's destinations; 0 when absent.
    #[serde(default)]
    destination: usize,
}

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
        let d = f.destinations.get(q.destination).copied().ok_or_else(|| {
            ApiError::bad_request(format!(
                "destination: the forward has {} (0-based index)",
                f.destinations.len()
            ))
        })?;
        (f.prefix.clone(), d)
    };
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
