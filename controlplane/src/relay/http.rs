//! The relay routes (docs/api.md, "Relays"). Every one needs a cluster token when auth is on
//! (`auth::classify` puts them under `Need::Cluster`).
//!
//! - `POST /v1/streams/{stream}/relays` `{"targetNode": id}` or `{"address": "host:port"}`:
//!   open (or return) the relay of a stream published here. 201 new, 200 existing.
//! - `GET /v1/streams/{stream}/relays`: the relays of that stream from this node.
//! - `DELETE /v1/streams/{stream}/relays/{targetNode}`: end it, both ends.
//! - `GET /v1/relays`: every relay of this node, both directions.
//! - `POST /v1/relays/ingress`, `DELETE /v1/relays/ingress/{relayId}`: the target's side,
//!   called by the source's control plane.
//!
//! Stream names contain `/` (`room/stream`), so `/v1/streams/...` is one wildcard route
//! parsed here: the last `relays` segment (or the one before the last) splits the stream
//! from the rest.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_shared::command::SessionId;

use super::book::{InRelay, OutRelay};
use super::setup::{self, IngressRequest, Target};
use crate::api::{parse_body, validate_stream, ApiError};
use crate::cluster::Cluster;
use crate::link::Shared;

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
}

pub(crate) fn routes(shared: Arc<Shared>, cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route(
            "/v1/streams/{*rest}",
            get(list_stream).post(create).delete(end),
        )
        .route("/v1/relays", get(list_all))
        .route("/v1/relays/ingress", post(ingress))
        .route("/v1/relays/ingress/{id}", delete(end_ingress))
        .with_state(Ctx { shared, cluster })
}

/// `{stream}/relays` → `(stream, None)`; `{stream}/relays/{target}` → `(stream, Some(target))`.
fn split(rest: &str) -> Option<(&str, Option<&str>)> {
    if let Some(stream) = rest.strip_suffix("/relays") {
        return Some((stream, None));
    }
    let (head, target) = rest.rsplit_once('/')?;
    let stream = head.strip_suffix("/relays")?;
    (!target.is_empty()).then_some((stream, Some(target)))
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such resource")
}

/// A relay as the API shows it (never its keys).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OutView {
    stream: String,
    target_node: String,
    target_url: String,
    /// The target's relay id (its `RelayIn` session).
    relay_id: u64,
    /// This node's `RelayOut` session.
    session_id: u64,
    remote: std::net::SocketAddr,
    hops: Vec<String>,
    created_ms: u64,
}

impl From<&OutRelay> for OutView {
    fn from(r: &OutRelay) -> Self {
        OutView {
            stream: r.stream.clone(),
            target_node: r.target_node.clone(),
            target_url: r.target_url.clone(),
            relay_id: r.remote_relay_id,
            session_id: r.session.0,
            remote: r.remote,
            hops: r.hops.clone(),
            created_ms: r.created_ms,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InView {
    stream: String,
    source_node: String,
    relay_id: u64,
    hops: Vec<String>,
    /// Opened by a WHEP cascade (ends after the grace period without subscribers).
    cascade: bool,
    created_ms: u64,
}

impl From<&InRelay> for InView {
    fn from(r: &InRelay) -> Self {
        InView {
            stream: r.stream.clone(),
            source_node: r.source_node.clone(),
            relay_id: r.session.0,
            hops: r.hops.clone(),
            cascade: r.auto,
            created_ms: r.created_ms,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    target_node: Option<String>,
    /// A control plane outside the registry: `host:port` (HTTP) or a base URL.
    #[serde(default)]
    address: Option<String>,
    /// Informational with `address` (the target's room); the stream keeps its name.
    #[serde(default)]
    room: Option<String>,
}

fn target_of(b: CreateBody) -> Result<Target, ApiError> {
    let _ = b.room;
    match (b.target_node, b.address) {
        (Some(n), None) => Ok(Target::Node(n)),
        (None, Some(a)) => {
            let url = if a.starts_with("http://") || a.starts_with("https://") {
                a.trim_end_matches('/').to_owned()
            } else if a.contains('/') {
                // Another scheme, or a path: not a control plane address.
                String::new()
            } else {
                format!("http://{a}")
            };
            let ok = url.len() <= 2048
                && crate::cluster::health::authority(&url).is_some()
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if ok {
                Ok(Target::Url(url))
            } else {
                Err(ApiError::bad_request(
                    "address: host:port or an http(s):// URL of the target's control plane",
                ))
            }
        }
        _ => Err(ApiError::bad_request(
            "one of targetNode (a registered node) or address (host:port) is required",
        )),
    }
}

async fn create(
    State(ctx): State<Ctx>,
    Path(rest): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some((stream, None)) = split(&rest) else {
        return Err(not_found());
    };
    validate_stream(stream)?;
    let target = target_of(parse_body(body)?)?;
    let (relay, created) = setup::open(&ctx.shared, &ctx.cluster, stream, target).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(OutView::from(&relay))).into_response())
}

async fn list_stream(
    State(ctx): State<Ctx>,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    let Some((stream, None)) = split(&rest) else {
        return Err(not_found());
    };
    validate_stream(stream)?;
    let book = ctx.shared.relays.lock();
    let relays: Vec<OutView> = book
        .outs()
        .filter(|r| r.stream == stream)
        .map(OutView::from)
        .collect();
    let incoming = book.incoming(stream).map(InView::from);
    Ok(Json(json!({ "stream": stream, "relays": relays, "incoming": incoming })).into_response())
}

async fn end(State(ctx): State<Ctx>, Path(rest): Path<String>) -> Result<Response, ApiError> {
    let Some((stream, Some(target))) = split(&rest) else {
        return Err(not_found());
    };
    validate_stream(stream)?;
    let confirmed = setup::close(&ctx.shared, stream, target).await?;
    Ok(
        Json(json!({ "stream": stream, "targetNode": target, "targetEnded": confirmed }))
            .into_response(),
    )
}

async fn list_all(State(ctx): State<Ctx>) -> Response {
    let book = ctx.shared.relays.lock();
    let outgoing: Vec<OutView> = book.outs().map(OutView::from).collect();
    let incoming: Vec<InView> = book.ins().map(InView::from).collect();
    Json(json!({
        "node": ctx.shared.config.node.id,
        "outgoing": outgoing,
        "incoming": incoming,
    }))
    .into_response()
}

async fn ingress(
    State(ctx): State<Ctx>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: IngressRequest = parse_body(body)?;
    let (answer, created) = setup::ingress(&ctx.shared, &ctx.cluster, req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)).into_response())
}

async fn end_ingress(
    State(ctx): State<Ctx>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = raw
        .parse::<u64>()
        .map(SessionId)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such relay ingress"))?;
    setup::close_ingress(&ctx.shared, &ctx.cluster, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paths_split_at_relays() {
        assert_eq!(split("room/cam/relays"), Some(("room/cam", None)));
        assert_eq!(
            split("room/cam/relays/node-b"),
            Some(("room/cam", Some("node-b")))
        );
        assert_eq!(split("relays/relays"), Some(("relays", None)));
        assert_eq!(split("room/cam"), None);
        assert_eq!(split("room/cam/relays/"), None);
        assert_eq!(split("room/cam/relays/b/c"), None);
    }

    #[test]
    fn targets_are_a_node_or_an_address() {
        let body = |t: Option<&str>, a: Option<&str>| CreateBody {
            target_node: t.map(str::to_owned),
            address: a.map(str::to_owned),
            room: None,
        };
        assert!(matches!(target_of(body(Some("b"), None)), Ok(Target::Node(n)) if n == "b"));
        assert!(matches!(
            target_of(body(None, Some("10.0.0.2:8080"))),
            Ok(Target::Url(u)) if u == "http://10.0.0.2:8080"
        ));
        assert!(matches!(
            target_of(body(None, Some("https://b.example:8443/"))),
            Ok(Target::Url(u)) if u == "https://b.example:8443"
        ));
        assert!(target_of(body(None, None)).is_err());
        assert!(target_of(body(Some("b"), Some("x:1"))).is_err());
        assert!(target_of(body(None, Some("ftp://x"))).is_err());
    }
}
