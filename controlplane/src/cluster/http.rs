//! The cluster's REST routes: node registry, room placement, discovery. See docs/cluster.md.
//!
//! Security: `auth::check` decides who reaches each route (docs/api.md, "Auth"). A room's
//! `eventNotificationUri` is a URL the node will POST to from inside the cluster's network,
//! so beyond that only a trusted caller (cluster token, or auth off) sets an arbitrary one;
//! others only one under `[cluster] hook_allow` (`may_set_hook`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{Store as _, StoreError};
use super::{consumers_for, Cluster, Node, Registration, Room, RoomSpec};
use crate::api::{parse_body, random_bytes, ApiError};
use crate::auth::Caller;
use crate::openapi::ErrorBody;

const MAX_ID: usize = 128;
/// A room of this many peers reserves ~1M consumers; more is a typo, not a meeting.
const MAX_PEERS: u32 = 1000;
const MAX_URL: usize = 2048;
const MAX_LABELS: usize = 32;
const MAX_LABEL: usize = 64;

/// The routes, each documented by its handler's `#[utoipa::path]` (see `crate::openapi`).
pub(crate) fn routes(cluster: Arc<Cluster>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_nodes))
        .routes(routes!(register))
        .routes(routes!(drain, undrain))
        .routes(routes!(heartbeat))
        .routes(routes!(list_rooms, create_generated))
        .routes(routes!(get_room, create_named, delete_room))
        .routes(routes!(resolve))
        .with_state(cluster)
}

#[derive(Debug, Serialize, ToSchema)]
struct NodeList {
    nodes: Vec<Node>,
}

#[derive(Debug, Serialize, ToSchema)]
struct RoomList {
    rooms: Vec<RoomView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DrainState {
    node_id: String,
    draining: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct HeartbeatAnswer {
    node_id: String,
    /// Some reported share reached `overload_ratio`: the node takes no new rooms.
    overloaded: bool,
}

/// `GET /v1/resolve?room=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; the handler reads it as a map (unknown keys ignored).
struct ResolveQuery {
    /// The room to look up.
    room: String,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::Unavailable(_) | StoreError::NoCapacity { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            StoreError::RoomExists(_) => StatusCode::CONFLICT,
            StoreError::NoSuchRoom(_) | StoreError::NoSuchNode(_) => StatusCode::NOT_FOUND,
            StoreError::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

fn valid_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what}: 1 to {MAX_ID} characters of A-Z a-z 0-9 _ . -"
        )))
    }
}

fn valid_url(what: &str, url: &str, schemes: &[&str]) -> Result<(), ApiError> {
    let ok = url.len() <= MAX_URL
        && schemes.iter().any(|s| {
            url.strip_prefix(s)
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        })
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what}: a URL starting with {} (at most {MAX_URL} bytes)",
            schemes.join(" or ")
        )))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RegisterBody {
    node_id: String,
    /// Base URL of the node's control plane (`http://` or `https://`).
    #[schema(example = "http://10.0.0.2:8080")]
    url: String,
    /// Where peers send media: `ip` or `ip:port`.
    media_address: String,
    /// Media workers: capacity = workers × `consumers_per_worker`.
    workers: u16,
    /// Up to 32; the label `pool` binds the node to a pool (docs/cluster.md).
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[utoipa::path(
    post,
    path = "/v1/nodes/register",
    tag = "cluster",
    request_body = RegisterBody,
    responses(
        (status = 200, description = "Registered (again): the node as the registry holds it", body = Node),
        (status = 400, description = "Invalid registration", body = ErrorBody),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn register(
    State(cluster): State<Arc<Cluster>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Node>, ApiError> {
    let b: RegisterBody = parse_body(body)?;
    valid_id("nodeId", &b.node_id)?;
    // What health::probe can check.
    valid_url("url", &b.url, &["http://", "https://"])?;
    if b.media_address.is_empty() || b.media_address.len() > MAX_ID {
        return Err(ApiError::bad_request(
            "mediaAddress: an address or host, at most 128 bytes",
        ));
    }
    if b.workers == 0 {
        return Err(ApiError::bad_request("workers: at least 1"));
    }
    if b.labels.len() > MAX_LABELS
        || b.labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > MAX_LABEL || v.len() > MAX_LABEL)
    {
        return Err(ApiError::bad_request(format!(
            "labels: at most {MAX_LABELS}, keys 1 to {MAX_LABEL} bytes, values up to {MAX_LABEL}"
        )));
    }
    let reg = Registration {
        capacity: u64::from(b.workers) * u64::from(cluster.config.consumers_per_worker),
        node_id: b.node_id,
        url: b.url.trim_end_matches('/').to_owned(),
        media_address: b.media_address,
        workers: b.workers,
        labels: b.labels,
    };
    Ok(Json(cluster.store.register_node(reg).await?))
}

#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "cluster",
    responses(
        (status = 200, description = "Every registered node", body = NodeList),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn list_nodes(State(cluster): State<Arc<Cluster>>) -> Result<Response, ApiError> {
    let nodes = cluster.store.list_nodes().await?;
    Ok(Json(NodeList { nodes }).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/drain",
    tag = "cluster",
    params(("id" = String, Path, description = "Node id")),
    responses(
        (status = 200, description = "Draining: keeps its rooms, takes no new ones", body = DrainState),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn drain(
    State(cluster): State<Arc<Cluster>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    cluster.store.drain(&id, true).await?;
    Ok(Json(DrainState {
        node_id: id,
        draining: true,
    })
    .into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/nodes/{id}/drain",
    tag = "cluster",
    params(("id" = String, Path, description = "Node id")),
    responses(
        (status = 200, description = "No longer draining", body = DrainState),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn undrain(
    State(cluster): State<Arc<Cluster>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    cluster.store.drain(&id, false).await?;
    Ok(Json(DrainState {
        node_id: id,
        draining: false,
    })
    .into_response())
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeartbeatBody {
    /// Share in use of each resource the node measures (`cpu`, `bandwidth`, ...), 0 to 1.
    #[serde(default)]
    load: BTreeMap<String, f64>,
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/heartbeat",
    tag = "cluster",
    params(("id" = String, Path, description = "Node id")),
    request_body(content = HeartbeatBody, description = "Optional: an empty body reports no load"),
    responses(
        (status = 200, description = "Recorded", body = HeartbeatAnswer),
        (status = 400, description = "Invalid load", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn heartbeat(
    State(cluster): State<Arc<Cluster>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let empty = body.as_ref().is_ok_and(|b| b.is_empty());
    let b: HeartbeatBody = if empty {
        HeartbeatBody::default()
    } else {
        parse_body(body)?
    };
    if b.load.values().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(ApiError::bad_request("load: finite shares from 0"));
    }
    let overloaded = b.load.values().any(|&v| v >= cluster.config.overload_ratio);
    cluster.store.heartbeat(&id, overloaded).await?;
    Ok(Json(HeartbeatAnswer {
        node_id: id,
        overloaded,
    })
    .into_response())
}

/// The node POSTs room events to a hook from inside the cluster's network, so a hook is a
/// request the caller makes the node send (SSRF): only trusted callers (a cluster token, or
/// anyone while auth is off) pick any URL; others only one under `[cluster] hook_allow`.
fn may_set_hook(caller: Option<&Caller>, url: &str, allow: &[String]) -> Result<(), ApiError> {
    if Caller::trusted(caller) || switchyard_shared::config::hook_allowed(url, allow) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "eventNotificationUri: this URL needs a cluster token (or a prefix in [cluster] \
             hook_allow)",
        ))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRoom {
    /// 1 to 1000; the room reserves n × (n − 1) consumers on its node.
    max_peer_count: u32,
    /// `http://` or `https://` URL that gets the room's JSON events.
    #[serde(default)]
    event_notification_uri: Option<String>,
}

/// A room as the API shows it: where it is and where to publish and subscribe.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct RoomView {
    room_id: String,
    node: String,
    node_url: Option<String>,
    /// `POST {whipUrl}/{stream}` publishes a stream into the room (WHIP).
    whip_url: Option<String>,
    /// `POST {whepUrl}/{stream}` watches one (WHEP).
    whep_url: Option<String>,
    max_peer_count: u32,
    consumers: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_notification_uri: Option<String>,
    created_ms: u64,
}

fn view(room: Room, node_url: Option<&str>) -> RoomView {
    RoomView {
        whip_url: node_url.map(|u| format!("{u}/whip/{}", room.room_id)),
        whep_url: node_url.map(|u| format!("{u}/whep/{}", room.room_id)),
        node_url: node_url.map(str::to_owned),
        room_id: room.room_id,
        node: room.node,
        max_peer_count: room.max_peer_count,
        consumers: room.consumers,
        event_notification_uri: room.event_notification_uri,
        created_ms: room.created_ms,
    }
}

async fn create(
    cluster: &Cluster,
    caller: Option<Caller>,
    room_id: String,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let m = crate::metrics::cluster();
    match place(cluster, caller, room_id, body).await {
        Ok((room, node)) => {
            m.placed(&node.node_id);
            let v = view(room, Some(&node.url));
            Ok((StatusCode::CREATED, Json(v)).into_response())
        }
        Err(Rejection::Input(e)) => {
            m.rejected(if e.status() == StatusCode::FORBIDDEN {
                "hook_forbidden"
            } else {
                "bad_request"
            });
            Err(e)
        }
        Err(Rejection::Store(e)) => {
            m.rejected(match e {
                StoreError::NoCapacity { .. } => "no_capacity",
                StoreError::Unavailable(_) => "store_unavailable",
                StoreError::RoomExists(_) => "room_exists",
                _ => "store_error",
            });
            Err(e.into())
        }
    }
}

enum Rejection {
    Input(ApiError),
    Store(StoreError),
}

impl From<ApiError> for Rejection {
    fn from(e: ApiError) -> Self {
        Self::Input(e)
    }
}

async fn place(
    cluster: &Cluster,
    caller: Option<Caller>,
    room_id: String,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Room, Node), Rejection> {
    valid_id("room", &room_id)?;
    let b: CreateRoom = parse_body(body)?;
    if b.max_peer_count == 0 || b.max_peer_count > MAX_PEERS {
        return Err(ApiError::bad_request(format!("maxPeerCount: 1 to {MAX_PEERS}")).into());
    }
    if let Some(u) = &b.event_notification_uri {
        valid_url("eventNotificationUri", u, &["http://", "https://"])?;
        may_set_hook(caller.as_ref(), u, &cluster.config.hook_allow)?;
    }
    let spec = RoomSpec {
        pool: super::placement::PoolFilter::for_room(&room_id, &cluster.config.pools),
        room_id,
        consumers: consumers_for(b.max_peer_count),
        max_peer_count: b.max_peer_count,
        event_notification_uri: b.event_notification_uri,
    };
    let p = cluster
        .store
        .reserve_room(spec, cluster.config.strategy)
        .await
        .map_err(Rejection::Store)?;
    tracing::info!(room = %p.room.room_id, node = %p.node.node_id, consumers = p.room.consumers, "room placed");
    Ok((p.room, p.node))
}

#[utoipa::path(
    post,
    path = "/v1/rooms/{room}",
    tag = "cluster",
    params(("room" = String, Path, description = "Room id: 1 to 128 characters of A-Z a-z 0-9 _ . -")),
    request_body = CreateRoom,
    responses(
        (status = 201, description = "Placed: the room, its node and where to publish and watch", body = RoomView),
        (status = 400, description = "Invalid room id or body", body = ErrorBody),
        (status = 403, description = "`eventNotificationUri` outside `[cluster] hook_allow` without a cluster token", body = ErrorBody),
        (status = 409, description = "The room exists", body = ErrorBody),
        (status = 503, description = "No node has room, or the cluster store is unreachable", body = ErrorBody),
    )
)]
async fn create_named(
    State(cluster): State<Arc<Cluster>>,
    caller: Option<Extension<Caller>>,
    Path(room): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    create(&cluster, caller.map(|c| c.0), room, body).await
}

#[utoipa::path(
    post,
    path = "/v1/rooms",
    tag = "cluster",
    request_body = CreateRoom,
    responses(
        (status = 201, description = "Placed under a random 16-hex-digit id", body = RoomView),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 403, description = "`eventNotificationUri` outside `[cluster] hook_allow` without a cluster token", body = ErrorBody),
        (status = 503, description = "No node has room, or the cluster store is unreachable", body = ErrorBody),
    )
)]
async fn create_generated(
    State(cluster): State<Arc<Cluster>>,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut id = [0u8; 8];
    random_bytes(&mut id)?;
    let room = id.iter().map(|b| format!("{b:02x}")).collect();
    create(&cluster, caller.map(|c| c.0), room, body).await
}

async fn node_urls(cluster: &Cluster) -> Result<HashMap<String, String>, ApiError> {
    Ok(cluster
        .store
        .list_nodes()
        .await?
        .into_iter()
        .map(|n| (n.node_id, n.url))
        .collect())
}

#[utoipa::path(
    get,
    path = "/v1/rooms",
    tag = "cluster",
    responses(
        (status = 200, description = "Every placed room", body = RoomList),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn list_rooms(State(cluster): State<Arc<Cluster>>) -> Result<Response, ApiError> {
    let rooms = cluster.store.list_rooms().await?;
    let urls = node_urls(&cluster).await?;
    let views: Vec<RoomView> = rooms
        .into_iter()
        .map(|r| {
            let url = urls.get(&r.node).map(String::as_str);
            view(r, url)
        })
        .collect();
    Ok(Json(RoomList { rooms: views }).into_response())
}

async fn find(cluster: &Cluster, room: &str) -> Result<RoomView, ApiError> {
    valid_id("room", room)?;
    let r = cluster
        .store
        .get_room(room)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no room {room:?}")))?;
    let urls = node_urls(cluster).await?;
    let url = urls.get(&r.node).map(String::as_str);
    Ok(view(r, url))
}

#[utoipa::path(
    get,
    path = "/v1/rooms/{room}",
    tag = "cluster",
    params(("room" = String, Path, description = "Room id: 1 to 128 characters of A-Z a-z 0-9 _ . -")),
    responses(
        (status = 200, description = "The room", body = RoomView),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn get_room(
    State(cluster): State<Arc<Cluster>>,
    Path(room): Path<String>,
) -> Result<Json<RoomView>, ApiError> {
    Ok(Json(find(&cluster, &room).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/rooms/{room}",
    tag = "cluster",
    params(("room" = String, Path, description = "Room id: 1 to 128 characters of A-Z a-z 0-9 _ . -")),
    responses(
        (status = 204, description = "Closed: capacity given back, `room-closed` sent"),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn delete_room(
    State(cluster): State<Arc<Cluster>>,
    Path(room): Path<String>,
) -> Result<StatusCode, ApiError> {
    valid_id("room", &room)?;
    let r = cluster.store.release_room(&room).await?;
    tracing::info!(room = %r.room_id, node = %r.node, consumers = r.consumers, "room closed");
    if let Some(uri) = &r.event_notification_uri {
        cluster.events.send(
            uri,
            super::events::event("room-closed", &r.room_id, &r.node),
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

/// HTTP-DNS style: which node serves `room`.
#[utoipa::path(
    get,
    path = "/v1/resolve",
    tag = "cluster",
    params(ResolveQuery),
    responses(
        (status = 200, description = "The room, its node and where to publish and watch", body = RoomView),
        (status = 400, description = "No `room` parameter", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn resolve(
    State(cluster): State<Arc<Cluster>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<RoomView>, ApiError> {
    let room = q
        .get("room")
        .ok_or_else(|| ApiError::bad_request("query parameter room is required"))?;
    Ok(Json(find(&cluster, room).await?))
}
