//! The relay routes (docs/api.md, "Relays"). Every one needs a cluster token when auth is on
//! (`super::auth` puts them under `Need::Cluster`). The relays themselves are
//! `services::relay`'s.
//!
//! - `POST /v1/streams/{room}/{stream}/relays` `{"targetNode": id}` or `{"address":
//!   "host:port"}`: open (or return) the relay of a stream published here. 201 new, 200
//!   existing.
//! - `GET /v1/streams/{room}/{stream}/relays`: the relays of that stream from this node.
//! - `DELETE /v1/streams/{room}/{stream}/relays/{targetNode}`: end it, both ends.
//! - `GET /v1/relays`: every relay of this node, both directions.
//! - `POST /v1/relays/ingress`, `DELETE /v1/relays/ingress/{relayId}`: the target's side,
//!   called by the source's control plane.
//!
//! Stream names are `room/stream` like WHIP and WHEP's `/{room}/{stream}`: the two path
//! segments joined with `/` are the stream. A name with more `/`s (`a/b/c`) is reachable with
//! the rest percent-encoded (`/v1/streams/a/b%2Fc/relays`, see `client::stream_path`); axum decodes
//! each segment. Each handler serves the one path its `#[utoipa::path]` documents.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use switchyard_shared::command::SessionId;
use switchyard_shared::names;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::parse_body;
use super::error::ApiError;
use super::openapi::ErrorBody;
use crate::services::cluster::probe::authority;
use crate::services::relay::book::{InRelay, OutRelay};
use crate::services::relay::{IngressAnswer, IngressRequest, Relays, Target};

/// The routes, each documented by its handler's `#[utoipa::path]` (see `super::openapi`).
pub(crate) fn routes(relays: Arc<Relays>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_stream_relays, create_relay))
        .routes(routes!(end_relay))
        .routes(routes!(list_relays))
        .routes(routes!(open_ingress))
        .routes(routes!(end_ingress))
        .with_state(relays)
}

/// The stream named by a path's `{room}` and `{stream}`.
fn stream_of(room: &str, name: &str) -> Result<String, ApiError> {
    let stream = format!("{room}/{name}");
    names::stream("stream", &stream)?;
    Ok(stream)
}

/// A relay as the API shows it (never its keys).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct OutView {
    stream: String,
    target_node: String,
    target_url: String,
    /// The target's relay id (its `RelayIn` session).
    relay_id: u64,
    /// This node's `RelayOut` session.
    session_id: u64,
    /// The target's relay socket this node sends to.
    #[schema(value_type = String, example = "10.0.0.2:9443")]
    remote: std::net::SocketAddr,
    /// Every node the stream went through before the target, the source last.
    hops: Vec<String>,
    created_ms: u64,
    /// The link's smoothed round-trip time in milliseconds, measured here from the sender
    /// reports this node passes on and the target's receiver reports (RFC 3550 §6.4.1);
    /// absent until the target echoed one (a publisher that sends no sender reports gives
    /// none).
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt_ms: Option<f64>,
}

impl OutView {
    /// The views of `outs` with their links' RTT. Takes the book's relays as copies: the
    /// RTT is read under the session table's lock, which is never taken inside the book's.
    fn measured(relays: &Relays, outs: Vec<OutRelay>) -> Vec<OutView> {
        outs.iter()
            .map(|r| OutView {
                rtt_ms: relays
                    .link_rtt(r.session)
                    .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
                ..OutView::from(r)
            })
            .collect()
    }
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
            rtt_ms: None,
        }
    }
}

/// A relay that feeds this node.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct InView {
    stream: String,
    source_node: String,
    /// This node's `RelayIn` session.
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

/// `POST /v1/streams/{room}/{stream}/relays`: one of `targetNode` or `address`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateBody {
    /// A node in the registry.
    #[serde(default)]
    target_node: Option<String>,
    /// A control plane outside the registry: `host:port` (HTTP) or a base URL.
    #[serde(default)]
    address: Option<String>,
    /// Informational with `address` (the target's room); the stream keeps its name.
    #[serde(default)]
    room: Option<String>,
}

/// The relays of one stream.
#[derive(Debug, Serialize, ToSchema)]
struct StreamRelays {
    stream: String,
    /// Relays of the stream from this node.
    relays: Vec<OutView>,
    /// The relay that feeds this node the stream, if any.
    incoming: Option<InView>,
}

/// A relay ended.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Ended {
    stream: String,
    target_node: String,
    /// Whether the target confirmed it ended its side too.
    target_ended: bool,
}

/// `DELETE /v1/relays/ingress/{relayId}?sourceNode=`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndIngressQuery {
    #[serde(default)]
    source_node: Option<String>,
}

/// Every relay of this node.
#[derive(Debug, Serialize, ToSchema)]
struct NodeRelays {
    node: String,
    outgoing: Vec<OutView>,
    incoming: Vec<InView>,
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
                && authority(&url).is_some()
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

#[utoipa::path(
    post,
    path = "/v1/streams/{room}/{stream}/relays",
    tag = "relays",
    params(
        ("room" = String, Path, description = "The stream name's first segment"),
        ("stream" = String, Path, description = "The rest of the stream name (further `/` percent-encoded)"),
    ),
    request_body = CreateBody,
    responses(
        (status = 201, description = "Relay opened: both ends set up", body = OutView),
        (status = 200, description = "The relay existed already", body = OutView),
        (status = 400, description = "Bad stream name or body", body = ErrorBody),
        (status = 404, description = "The stream has no publisher here, or the target node is unknown", body = ErrorBody),
        (status = 403, description = "A plain `http://` target that is not on loopback, without `[cluster] allow_plain_http_keys`", body = ErrorBody),
        (status = 409, description = "A loop, or a relay in the other direction", body = ErrorBody),
        (status = 502, description = "The target refused or did not answer", body = ErrorBody),
        (status = 503, description = "No data plane", body = ErrorBody),
    )
)]
async fn create_relay(
    State(relays): State<Arc<Relays>>,
    Path((room, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let stream = stream_of(&room, &name)?;
    let target = target_of(parse_body(body)?)?;
    let (relay, created) = relays.open(&stream, target).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(OutView::from(&relay))).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/streams/{room}/{stream}/relays",
    tag = "relays",
    params(
        ("room" = String, Path, description = "The stream name's first segment"),
        ("stream" = String, Path, description = "The rest of the stream name (further `/` percent-encoded)"),
    ),
    responses(
        (status = 200, description = "The stream's relays from this node and the one feeding it", body = StreamRelays),
        (status = 400, description = "Bad stream name", body = ErrorBody),
    )
)]
async fn list_stream_relays(
    State(relays): State<Arc<Relays>>,
    Path((room, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let stream = stream_of(&room, &name)?;
    let (outs, incoming) = {
        let book = relays.book();
        let outs: Vec<OutRelay> = book
            .outs()
            .filter(|r| r.stream == stream)
            .cloned()
            .collect();
        (outs, book.incoming(&stream).map(InView::from))
    };
    Ok(Json(StreamRelays {
        stream,
        relays: OutView::measured(&relays, outs),
        incoming,
    })
    .into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/streams/{room}/{stream}/relays/{targetNode}",
    tag = "relays",
    params(
        ("room" = String, Path, description = "The stream name's first segment"),
        ("stream" = String, Path, description = "The rest of the stream name (further `/` percent-encoded)"),
        ("targetNode" = String, Path, description = "The node the stream is relayed to"),
    ),
    responses(
        (status = 200, description = "Ended here; `targetEnded` says whether the target confirmed", body = Ended),
        (status = 400, description = "Bad stream name", body = ErrorBody),
        (status = 404, description = "No relay of this stream to that node", body = ErrorBody),
        (status = 503, description = "No data plane", body = ErrorBody),
    )
)]
async fn end_relay(
    State(relays): State<Arc<Relays>>,
    Path((room, name, target)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let stream = stream_of(&room, &name)?;
    let confirmed = relays.close(&stream, &target).await?;
    Ok(Json(Ended {
        stream,
        target_node: target,
        target_ended: confirmed,
    })
    .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/relays",
    tag = "relays",
    responses((status = 200, description = "Every relay of this node, both directions", body = NodeRelays))
)]
async fn list_relays(State(relays): State<Arc<Relays>>) -> Response {
    let (outs, incoming) = {
        let book = relays.book();
        let outs: Vec<OutRelay> = book.outs().cloned().collect();
        (outs, book.ins().map(InView::from).collect())
    };
    Json(NodeRelays {
        node: relays.node_id().to_owned(),
        outgoing: OutView::measured(&relays, outs),
        incoming,
    })
    .into_response()
}

#[utoipa::path(
    post,
    path = "/v1/relays/ingress",
    tag = "relays",
    request_body = IngressRequest,
    responses(
        (status = 201, description = "This node's end of a new relay: where to send, with which key", body = IngressAnswer),
        (status = 200, description = "The relay existed already (same key)", body = IngressAnswer),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 403, description = "Plain HTTP from a non-loopback source without `[cluster] allow_plain_http_keys`: the keys would cross the network in the clear", body = ErrorBody),
        (status = 409, description = "A loop (this node is in the hop list), or the stream has another source here", body = ErrorBody),
        (status = 503, description = "No data plane", body = ErrorBody),
    )
)]
async fn open_ingress(
    State(relays): State<Arc<Relays>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // The answer carries the link keys.
    relays.check_ingress_peer(peer.map(|p| p.0 .0))?;
    let req: IngressRequest = parse_body(body)?;
    let (answer, created) = relays.ingress(req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/relays/ingress/{relayId}",
    tag = "relays",
    params(
        ("relayId" = u64, Path, description = "The `relayId` the ingress answered"),
        ("sourceNode" = Option<String>, Query, description = "The source asking: the ingress ends only while it is still fed from there (a relay-in taken over by a new source is not the old source's to end)"),
    ),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "No such relay ingress (from `sourceNode`, when given)", body = ErrorBody),
        (status = 503, description = "No data plane", body = ErrorBody),
    )
)]
async fn end_ingress(
    State(relays): State<Arc<Relays>>,
    Path(raw): Path<String>,
    Query(q): Query<EndIngressQuery>,
) -> Result<Response, ApiError> {
    let id = raw
        .parse::<u64>()
        .map(SessionId)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such relay ingress"))?;
    if let Some(source) = &q.source_node {
        if !relays.fed_from(id, source) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no relay ingress {} from {source}", id.0),
            ));
        }
    }
    relays.close_ingress(id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::relay::client::{stream_path, Answer};
    use crate::services::relay::setup::parse_answer;
    use crate::services::relay::trust::{check_source, check_target};
    use axum::http::StatusCode;
    use base64::Engine as _;

    #[test]
    fn stream_paths_put_the_room_first() {
        assert_eq!(stream_path("room/cam"), "/v1/streams/room/cam/relays");
        assert_eq!(stream_path("a/b/c"), "/v1/streams/a/b%2Fc/relays");
        assert_eq!(stream_of("room", "cam").expect("valid"), "room/cam");
        assert_eq!(stream_of("a", "b/c").expect("valid"), "a/b/c");
        assert!(stream_of("room", "c am").is_err());
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

    #[test]
    fn link_keys_go_over_plain_http_on_loopback_only() {
        for (url, ok) in [
            ("http://127.0.0.1:8080", true),
            ("http://127.0.0.2:8080", true),
            ("http://[::1]:8080", true),
            ("http://localhost:8080", true),
            ("https://10.0.0.2:8443", true),
            ("https://b.example", true),
            ("http://10.0.0.2:8080", false),
            ("http://[::ffff:10.0.0.2]:8080", false),
            ("http://b.example:8080", false),
            ("http://localhost.evil.test:8080", false),
        ] {
            assert_eq!(check_target(url, false).is_ok(), ok, "{url}");
            assert!(check_target(url, true).is_ok(), "{url} allowed");
        }
        let e = ApiError::from(check_target("http://10.0.0.2:8080", false).expect_err("remote"));
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(
            e.message().contains("allow_plain_http_keys"),
            "{}",
            e.message()
        );

        let peer = |s: &str| Some(s.parse::<SocketAddr>().expect("addr"));
        assert!(check_source(peer("127.0.0.1:40000"), false, false).is_ok());
        assert!(check_source(peer("[::ffff:127.0.0.1]:40000"), false, false).is_ok());
        assert!(check_source(peer("[::1]:40000"), false, false).is_ok());
        assert!(check_source(peer("10.0.0.3:40000"), false, false).is_err());
        assert!(check_source(None, false, false).is_err());
        assert!(
            check_source(peer("10.0.0.3:40000"), true, false).is_ok(),
            "HTTPS"
        );
        assert!(
            check_source(peer("10.0.0.3:40000"), false, true).is_ok(),
            "allowed"
        );
    }

    fn b64(k: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(k)
    }

    fn answer(key: &str, key_back: &str, profile: &str, port: u16) -> Answer {
        let body = serde_json::json!({
            "relayId": 7, "node": "b", "stream": "r/s", "address": "10.0.0.2",
            "port": port, "profile": profile, "key": key, "keyBack": key_back, "hops": ["a"],
        });
        Answer {
            status: 201,
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn bad_answers_are_refused() {
        let k = b64(&[1; 28]);
        let short = b64(&[1; 16]);
        for a in [
            answer(&k, &k, "AES_CM_128_HMAC_SHA1_80", 9443),
            answer(&k, &short, "AEAD_AES_128_GCM", 9443),
            answer("not base64!", &k, "AEAD_AES_128_GCM", 9443),
            answer(&k, &k, "AEAD_AES_128_GCM", 0),
            Answer {
                status: 201,
                body: b"{}".to_vec(),
            },
        ] {
            let e = ApiError::from(parse_answer(&a).expect_err("refused"));
            assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        }
    }
}
