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
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
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
use crate::services::cluster::regions::{self, ClientHint};
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

/// `GET /v1/resolve?room=&region=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; the handler reads it as a map (unknown keys ignored).
struct ResolveQuery {
    /// The room to look up.
    room: String,
    /// The viewer's region: `whepUrl` then names a node of that region when the room's node
    /// is elsewhere (the cascade brings the stream there). Default: the trusted
    /// `X-Switchyard-Region` header, else the `cluster.region_map` rule for the caller's
    /// address.
    region: Option<String>,
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
    /// The node's region (an id); absent: in no region.
    #[serde(default)]
    region: Option<String>,
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
            region: b.region,
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
    /// The region of the room's node, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    node_region: Option<String>,
    /// The client's region the room was placed for, if one was known.
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    /// `POST {whipUrl}/{stream}` publishes a stream into the room (WHIP).
    whip_url: Option<String>,
    /// `POST {whepUrl}/{stream}` watches one (WHEP). From `/v1/resolve` with a region, on
    /// a node of that region when the room's node is elsewhere (`whepNode`).
    whep_url: Option<String>,
    /// The node `whepUrl` names when it is not the room's node: one of the viewer's region,
    /// which pulls the room's streams from the nearest node holding them (the cascade).
    #[serde(skip_serializing_if = "Option::is_none")]
    whep_node: Option<String>,
    max_peer_count: u32,
    consumers: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_notification_uri: Option<String>,
    created_ms: u64,
}

fn view(room: Room, node: Option<&Node>) -> RoomView {
    let node_url = node.map(|n| n.url.as_str());
    RoomView {
        whip_url: node_url.map(|u| format!("{u}/whip/{}", room.room_id)),
        whep_url: node_url.map(|u| format!("{u}/whep/{}", room.room_id)),
        node_url: node_url.map(str::to_owned),
        node_region: node.and_then(|n| n.region.clone()),
        region: room.region,
        whep_node: None,
        room_id: room.room_id,
        node: room.node,
        max_peer_count: room.max_peer_count,
        consumers: room.consumers,
        event_notification_uri: room.event_notification_uri,
        created_ms: room.created_ms,
    }
}

/// Where the request's client is, as far as it may say ([`Cluster::client_region`]).
fn client_region(
    cluster: &Cluster,
    caller: Option<&Caller>,
    headers: &HeaderMap,
    peer: Option<&ConnectInfo<SocketAddr>>,
) -> Result<Option<String>, ApiError> {
    let header = match headers.get(regions::HEADER) {
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::bad_request("X-Switchyard-Region: a region id (A-Z a-z 0-9 _ . -)")
        })?),
        None => None,
    };
    Ok(cluster.client_region(ClientHint {
        header,
        trusted: Caller::trusted(caller),
        peer: peer.map(|p| p.0.ip()),
    })?)
}

/// Place `room_id`: 201 with the room and where to publish and watch. Every refusal is
/// counted, a malformed request too.
async fn create(
    cluster: &Cluster,
    caller: Option<Caller>,
    region: Result<Option<String>, ApiError>,
    room_id: String,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let parsed = names::id("room", &room_id)
        .map_err(ApiError::from)
        .and_then(|()| parse_body::<CreateRoom>(body))
        .and_then(|b| Ok((b, region?)));
    let (b, region) = match parsed {
        Ok(b) => b,
        Err(e) => {
            cluster.rejected_malformed();
            return Err(e);
        }
    };
    let req = RoomRequest {
        max_peer_count: b.max_peer_count,
        event_notification_uri: b.event_notification_uri,
        region,
    };
    let p = cluster
        .place(Caller::trusted(caller.as_ref()), room_id, req)
        .await?;
    let v = view(p.room, Some(&p.node));
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
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Path(room): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = caller.map(|c| c.0);
    let region = client_region(&cluster, caller.as_ref(), &headers, peer.as_deref());
    create(&cluster, caller, region, room, body).await
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
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let room = Cluster::generated_room_id()?;
    let caller = caller.map(|c| c.0);
    let region = client_region(&cluster, caller.as_ref(), &headers, peer.as_deref());
    create(&cluster, caller, region, room, body).await
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
        .map(|(r, node)| view(r, node.as_ref()))
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
    let (r, node) = cluster.room(&room).await?;
    Ok(Json(view(r, node.as_ref())))
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

/// HTTP-DNS style: which node serves `room`, and with a region where its viewers there
/// should watch.
#[utoipa::path(
    get,
    path = "/v1/resolve",
    tag = "cluster",
    params(ResolveQuery),
    responses(
        (status = 200, description = "The room, its node and where to publish and watch", body = RoomView),
        (status = 400, description = "No `room` parameter, or a malformed region", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 503, description = "The cluster store is unreachable", body = ErrorBody),
    )
)]
async fn resolve(
    State(cluster): State<Arc<Cluster>>,
    caller: Option<Extension<Caller>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<RoomView>, ApiError> {
    let room = q
        .get("room")
        .ok_or_else(|| ApiError::bad_request("query parameter room is required"))?;
    // A region asked for outright only picks the URLs this caller gets: anyone may.
    let region = match q.get("region") {
        Some(r) => {
            names::id("region", r)?;
            Some(r.clone())
        }
        None => client_region(
            &cluster,
            caller.map(|c| c.0).as_ref(),
            &headers,
            peer.as_deref(),
        )?,
    };
    let found = cluster.resolve(room, region.as_deref()).await?;
    let mut v = view(found.room, found.node.as_ref());
    if let Some(n) = found.viewer {
        v.whep_url = Some(format!("{}/whep/{}", n.url, v.room_id));
        v.whep_node = Some(n.node_id);
    }
    Ok(Json(v))
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
