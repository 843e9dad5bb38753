//! The cluster's routes: node registry, room placement, discovery. See docs/cluster.md. The
//! checks and the store calls are `services::cluster`'s.
//!
//! Security: [`super::auth::check`] decides who reaches each route (docs/api.md, "Auth"). A
//! room's `eventNotificationUri` is a request the node will make from inside the cluster's
//! network, so only a trusted caller (cluster token, or auth off) sets an arbitrary one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use switchyard_shared::names;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::parse_body;
use super::error::ApiError;
use super::openapi::ErrorBody;
use crate::core::store::{Node, Room};
use crate::services::cluster::nodes::Announced;
use crate::services::cluster::rooms::RoomRequest;
use crate::services::cluster::Cluster;

/// The routes, each documented by its handler's `#[utoipa::path]` (see `super::openapi`).
pub(crate) fn routes(cluster: Arc<Cluster>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_nodes))
        .routes(routes!(register))
        .routes(routes!(drain, undrain))
        .routes(routes!(heartbeat))
        .routes(routes!(list_rooms, create_generated))
        .routes(routes!(get_room, create_named, delete_room))
        .routes(routes!(resolve))
        .routes(routes!(cluster_streams))
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

/// `GET /v1/cluster/streams`.
#[derive(Debug, Serialize, ToSchema)]
struct ClusterStreams {
    streams: Vec<NodeStream>,
}

/// One stream published on one node, as that node last recorded it in the cluster store.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct NodeStream {
    #[schema(example = "room1/cam")]
    stream: String,
    /// The node that publishes it (a publisher there, or a relay link into it).
    node: String,
    /// The nodes the stream was relayed through to reach `node`, its source first; empty
    /// for a publisher on `node` itself.
    hops: Vec<String>,
    /// The node whose relay link feeds it to `node` (the last of `hops`); null for a
    /// publisher on `node` itself.
    relayed_from: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DrainState {
    node_id: String,
    draining: bool,
    /// The node is shutting down: it exits once its sessions ended (or its grace passed).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    shutdown: bool,
}

/// `POST /v1/nodes/{id}/drain` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DrainBody {
    /// Also shut the node down, as SIGTERM does: no new sessions, wait for the ones it has
    /// (up to `cluster.shutdown_grace_ms`), exit 0. Only a node's own API can do this.
    #[serde(default)]
    shutdown: bool,
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
    let node = cluster
        .register(Announced {
            node_id: b.node_id,
            url: b.url,
            media_address: b.media_address,
            workers: b.workers,
            labels: b.labels,
        })
        .await?;
    Ok(Json(node))
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
    let nodes = cluster.nodes().await?;
    Ok(Json(NodeList { nodes }).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/drain",
    tag = "cluster",
    params(("id" = String, Path, description = "Node id")),
    request_body(content = Option<DrainBody>, description = "`{\"shutdown\": true}` also shuts this node down"),
    responses(
        (status = 200, description = "Draining: keeps its rooms, takes no new ones", body = DrainState),
        (status = 202, description = "Shutting down: no new sessions, exits once its sessions ended", body = DrainState),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 409, description = "`shutdown` for another node: ask that node's own API", body = ErrorBody),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn drain(
    State(cluster): State<Arc<Cluster>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: DrainBody = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => DrainBody::default(),
        _ => parse_body(body)?,
    };
    if body.shutdown && id != cluster.shutdown.node_id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "this is node {:?}: shut down node {id:?} through its own API",
                cluster.shutdown.node_id
            ),
        ));
    }
    cluster.drain(&id, true).await?;
    if body.shutdown {
        cluster.shutdown.request();
    }
    let status = if body.shutdown {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(DrainState {
            node_id: id,
            draining: true,
            shutdown: body.shutdown,
        }),
    )
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
    cluster.drain(&id, false).await?;
    Ok(Json(DrainState {
        node_id: id,
        draining: false,
        shutdown: false,
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
    let overloaded = cluster.heartbeat(&id, &b.load).await?;
    Ok(Json(HeartbeatAnswer {
        node_id: id,
        overloaded,
    })
    .into_response())
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
    /// The room's node; empty while the room is unplaced (its node died and no node has room
    /// for it yet; docs/cluster.md, "When a node dies").
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

/// Place `room_id`: 201 with the room and where to publish and watch. Every refusal is
/// counted, a malformed request too.
async fn create(
    cluster: &Cluster,
    caller: Option<Caller>,
    room_id: String,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let parsed = names::id("room", &room_id)
        .map_err(ApiError::from)
        .and_then(|()| parse_body::<CreateRoom>(body));
    let b = match parsed {
        Ok(b) => b,
        Err(e) => {
            cluster.rejected_malformed();
            return Err(e);
        }
    };
    let req = RoomRequest {
        max_peer_count: b.max_peer_count,
        event_notification_uri: b.event_notification_uri,
    };
    let p = cluster
        .place(Caller::trusted(caller.as_ref()), room_id, req)
        .await?;
    let v = view(p.room, Some(&p.node.url));
    Ok((StatusCode::CREATED, Json(v)).into_response())
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
    let room = Cluster::generated_room_id()?;
    create(&cluster, caller.map(|c| c.0), room, body).await
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
    let views: Vec<RoomView> = cluster
        .rooms()
        .await?
        .into_iter()
        .map(|(r, url)| view(r, url.as_deref()))
        .collect();
    Ok(Json(RoomList { rooms: views }).into_response())
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
    let (r, url) = cluster.room(&room).await?;
    Ok(Json(view(r, url.as_deref())))
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
    cluster.close_room(&room).await?;
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
    let (r, url) = cluster.room(room).await?;
    Ok(Json(view(r, url.as_deref())))
}

/// Every stream on every node, with the relay links between nodes: what a view of the whole
/// cluster draws (the cluster page, `GET /cluster`). From the cluster store, where each node
/// writes its streams every second; `GET /v1/streams` has one node's streams with counters.
#[utoipa::path(
    get,
    path = "/v1/cluster/streams",
    tag = "cluster",
    responses(
        (status = 200, description = "Every registered node's streams, by node then stream", body = ClusterStreams),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn cluster_streams(State(cluster): State<Arc<Cluster>>) -> Result<Response, ApiError> {
    let streams = cluster
        .streams()
        .await?
        .into_iter()
        .flat_map(|(node, streams)| {
            streams.into_iter().map(move |(stream, hops)| NodeStream {
                relayed_from: hops.last().cloned(),
                stream,
                node: node.clone(),
                hops,
            })
        })
        .collect();
    Ok(Json(ClusterStreams { streams }).into_response())
}
