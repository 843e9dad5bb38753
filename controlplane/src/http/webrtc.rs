//! WHIP (RFC 9725) and WHEP routes: `POST /whip|whep/{room}/{stream}` with an SDP offer
//! (client offer mode; the node never sends offers), `DELETE` and `PATCH` on the resource the
//! POST answered. The signaling itself is `services::webrtc`; this file is the HTTP of it.
//!
//! - `201 Created`, `Content-Type: application/sdp`, `Location:
//!   /whip/{room}/{stream}/{id}-{secret}`; `DELETE` or `PATCH` on anything but that exact
//!   Location is 404, like a session that does not exist.
//! - `PATCH` with a trickle-ice-sdpfrag is accepted and ignored (204); an ICE restart is 422.
//! - A POST for a room placed on another node is answered `307 Temporary Redirect` to that
//!   node's `/whip|whep/{room}/{stream}` ([`Webrtc::locate`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::limits::Created;
use super::openapi::ErrorBody;
use crate::sdp::{Direction, SdpError};
use crate::services::webrtc::{self, Route, Webrtc};

const SDP: &str = "application/sdp";
const TRICKLE: &str = "application/trickle-ice-sdpfrag";

/// The routes, each documented by its handler's `#[utoipa::path]` (see `super::openapi`).
pub(crate) fn routes(webrtc: Arc<Webrtc>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(publish))
        .routes(routes!(end_publish, patch_publish))
        .routes(routes!(subscribe))
        .routes(routes!(end_subscribe, patch_subscribe))
        .with_state(webrtc)
}

/// The body of a 307: where the room lives.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RedirectBody {
    room_id: String,
    node: String,
    /// The same URL as the `Location` header.
    location: String,
}

#[utoipa::path(
    post,
    path = "/whip/{room}/{stream}",
    tag = "webrtc",
    params(
        ("room" = String, Path, description = "1 to 128 characters of A-Z a-z 0-9 _ . -; `room/stream` at most 128"),
        ("stream" = String, Path, description = "1 to 128 characters of A-Z a-z 0-9 _ . -; `room/stream` at most 128"),
    ),
    request_body(content = String, content_type = "application/sdp", description = "The client's SDP offer"),
    responses(
        (status = 201, description = "Publishing: the node's SDP answer (ICE-lite, DTLS fingerprint, candidates)",
            content_type = "application/sdp", body = String,
            headers(("Location" = String, description = "The session resource: `/whip/{room}/{stream}/{id}-{secret}`; only this exact URL ends or patches the session"))),
        (status = 307, description = "The room is placed on another node: re-POST the offer to `Location`",
            body = RedirectBody, headers(("Location" = String, description = "`{node url}/whip/{room}/{stream}`"))),
        (status = 400, description = "Bad name or unusable offer", body = ErrorBody),
        (status = 406, description = "No codec in the offer that the node forwards", body = ErrorBody),
        (status = 409, description = "The stream already has a publisher", body = ErrorBody),
        (status = 413, description = "Offer over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not application/sdp", body = ErrorBody),
        (status = 429, description = "This client's live sessions or creation rate (`[limits]`); see `Retry-After`", body = ErrorBody),
        (status = 503, description = "No data plane, or the worker is full", body = ErrorBody),
    )
)]
async fn publish(
    State(webrtc): State<Arc<Webrtc>>,
    Path((room, stream)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    post(&webrtc, Direction::Publish, room, stream, headers, body).await
}

#[utoipa::path(
    post,
    path = "/whep/{room}/{stream}",
    tag = "webrtc",
    params(
        ("room" = String, Path, description = "1 to 128 characters of A-Z a-z 0-9 _ . -; `room/stream` at most 128"),
        ("stream" = String, Path, description = "1 to 128 characters of A-Z a-z 0-9 _ . -; `room/stream` at most 128"),
    ),
    request_body(content = String, content_type = "application/sdp", description = "The client's SDP offer (recvonly)"),
    responses(
        (status = 201, description = "Watching: the node's SDP answer",
            content_type = "application/sdp", body = String,
            headers(("Location" = String, description = "The session resource: `/whep/{room}/{stream}/{id}-{secret}`; only this exact URL ends or patches the session"))),
        (status = 307, description = "The room is placed on another node: re-POST the offer to `Location`",
            body = RedirectBody, headers(("Location" = String, description = "`{node url}/whep/{room}/{stream}`"))),
        (status = 400, description = "Bad name or unusable offer", body = ErrorBody),
        (status = 404, description = "The stream has no publisher", body = ErrorBody),
        (status = 406, description = "No codec in common with the publisher", body = ErrorBody),
        (status = 413, description = "Offer over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not application/sdp", body = ErrorBody),
        (status = 429, description = "This client's live sessions or creation rate (`[limits]`); see `Retry-After`", body = ErrorBody),
        (status = 503, description = "No data plane, or the worker is full", body = ErrorBody),
    )
)]
async fn subscribe(
    State(webrtc): State<Arc<Webrtc>>,
    Path((room, stream)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    post(&webrtc, Direction::Subscribe, room, stream, headers, body).await
}

/// `/whip` or `/whep`.
fn endpoint(dir: Direction) -> &'static str {
    match dir {
        Direction::Publish => "whip",
        Direction::Subscribe => "whep",
    }
}

/// An offer: served here (201 with the answer), or redirected to the room's node (307).
async fn post(
    webrtc: &Webrtc,
    dir: Direction,
    room: String,
    stream: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if let Route::Elsewhere { node, url } = webrtc.locate(dir, &room, &stream).await? {
        return redirect(dir, &room, &stream, node, &url);
    }
    // Over the router's body limit (64 KiB) the body never arrives: the offer is too large.
    let body = body.map_err(|_| ApiError::from(SdpError::TooLarge))?;
    webrtc::stream_name(&room, &stream)?;
    if content_type(&headers) != SDP {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be sent as application/sdp",
        ));
    }
    let answered = webrtc.offer(dir, &room, &stream, &body).await?;
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, SDP.to_owned()),
            (header::LOCATION, answered.location),
        ],
        Extension(Created(answered.id)),
        answered.answer,
    )
        .into_response())
}

/// The 307 to the node hosting `room`.
fn redirect(
    dir: Direction,
    room: &str,
    stream: &str,
    node: String,
    url: &str,
) -> Result<Response, ApiError> {
    let location = format!("{url}/{}/{room}/{stream}", endpoint(dir));
    tracing::info!(%room, %stream, %node, %location, "redirecting to the room's node");
    let body = serde_json::to_string(&RedirectBody {
        room_id: room.to_owned(),
        node,
        location: location.clone(),
    })
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        StatusCode::TEMPORARY_REDIRECT,
        [
            (header::LOCATION, location),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ],
        body,
    )
        .into_response())
}

#[utoipa::path(
    delete,
    path = "/whip/{room}/{stream}/{id}",
    tag = "webrtc",
    params(("room" = String, Path), ("stream" = String, Path), ("id" = String, Path, description = "`{id}-{secret}`: the last segment of the `Location` the POST answered")),
    responses(
        (status = 200, description = "Session ended"),
        (status = 404, description = "No such WHIP session", body = ErrorBody),
        (status = 504, description = "The data plane did not answer in time", body = ErrorBody),
    )
)]
async fn end_publish(
    State(webrtc): State<Arc<Webrtc>>,
    Path((room, stream, raw)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    webrtc.end(&room, &stream, &raw, Direction::Publish).await?;
    Ok(StatusCode::OK.into_response())
}

#[utoipa::path(
    delete,
    path = "/whep/{room}/{stream}/{id}",
    tag = "webrtc",
    params(("room" = String, Path), ("stream" = String, Path), ("id" = String, Path, description = "`{id}-{secret}`: the last segment of the `Location` the POST answered")),
    responses(
        (status = 200, description = "Session ended"),
        (status = 404, description = "No such WHEP session", body = ErrorBody),
        (status = 504, description = "The data plane did not answer in time", body = ErrorBody),
    )
)]
async fn end_subscribe(
    State(webrtc): State<Arc<Webrtc>>,
    Path((room, stream, raw)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    webrtc
        .end(&room, &stream, &raw, Direction::Subscribe)
        .await?;
    Ok(StatusCode::OK.into_response())
}

#[utoipa::path(
    patch,
    path = "/whip/{room}/{stream}/{id}",
    tag = "webrtc",
    params(("room" = String, Path), ("stream" = String, Path), ("id" = String, Path, description = "`{id}-{secret}`: the last segment of the `Location` the POST answered")),
    request_body(content = String, content_type = "application/trickle-ice-sdpfrag"),
    responses(
        (status = 204, description = "Trickled candidates accepted (an ICE-lite node needs none)"),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 413, description = "Fragment too large", body = ErrorBody),
        (status = 415, description = "Not application/trickle-ice-sdpfrag", body = ErrorBody),
        (status = 422, description = "An ICE restart: not supported, start a new session", body = ErrorBody),
    )
)]
async fn patch_publish(
    state: State<Arc<Webrtc>>,
    path: Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    patch(state, path, headers, body).await
}

#[utoipa::path(
    patch,
    path = "/whep/{room}/{stream}/{id}",
    tag = "webrtc",
    params(("room" = String, Path), ("stream" = String, Path), ("id" = String, Path, description = "`{id}-{secret}`: the last segment of the `Location` the POST answered")),
    request_body(content = String, content_type = "application/trickle-ice-sdpfrag"),
    responses(
        (status = 204, description = "Trickled candidates accepted (an ICE-lite node needs none)"),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 413, description = "Fragment too large", body = ErrorBody),
        (status = 415, description = "Not application/trickle-ice-sdpfrag", body = ErrorBody),
        (status = 422, description = "An ICE restart: not supported, start a new session", body = ErrorBody),
    )
)]
async fn patch_subscribe(
    state: State<Arc<Webrtc>>,
    path: Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    patch(state, path, headers, body).await
}

/// Trickle ICE and ICE restarts (RFC 9725 §4.3), on a WHIP or a WHEP session alike.
async fn patch(
    State(webrtc): State<Arc<Webrtc>>,
    Path((room, stream, raw)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body =
        body.map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "fragment too large"))?;
    if webrtc
        .resource(&room, &stream, &raw, Direction::Publish)
        .is_err()
    {
        webrtc.resource(&room, &stream, &raw, Direction::Subscribe)?;
    }
    if content_type(&headers) != TRICKLE {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "PATCH takes application/trickle-ice-sdpfrag",
        ));
    }
    Webrtc::trickle(&body)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The `Content-Type` of a request, without parameters (`application/sdp; charset=x` →
/// `application/sdp`); empty when absent.
fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map_or("", str::trim)
}
