//! [`ApiError`]: the one error type that knows HTTP status codes. Every service's typed error
//! becomes one here, in one `From` impl each, so the status of every failure is decided in
//! this file; the text a client reads is the service error's own `Display`.
//!
//! Every error is a JSON object `{"error": "..."}` with a 4xx or 5xx status.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use switchyard_shared::command::CommandError;
use switchyard_shared::names::BadName;

use super::openapi::ErrorBody;
use crate::core::link::SendError;
use crate::core::random::RngError;
use crate::core::store::StoreError;
use crate::sdp::SdpError;
use crate::services::cluster::ClusterError;
use crate::services::forward::ForwardError;
use crate::services::relay::RelayError;
use crate::services::sessions::fetch::FetchError;
use crate::services::sessions::rtp::RtpError;
use crate::services::sessions::SessionError;
use crate::services::webrtc::WebrtcError;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for a `Retry-After` header (a 503 that will pass).
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// `e`'s own text with `status`.
    fn of(status: StatusCode, e: &impl std::fmt::Display) -> Self {
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        r
    }
}

/// Parse a JSON body ourselves so every failure is a JSON error (and the content type is
/// not required: curl users forget it).
pub(crate) fn parse_body<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!("request body is larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::new(status, format!("cannot read request body: {e}"))
        }
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("invalid JSON: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("invalid JSON at {path}: {}", e.inner()))
        }
    })
}

impl From<BadName> for ApiError {
    fn from(e: BadName) -> Self {
        Self::of(StatusCode::BAD_REQUEST, &e)
    }
}

impl From<RngError> for ApiError {
    fn from(e: RngError) -> Self {
        Self::of(StatusCode::INTERNAL_SERVER_ERROR, &e)
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        let status = match e {
            SendError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
            SendError::Detached | SendError::Full => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::of(status, &e)
    }
}

fn command_status(e: CommandError) -> StatusCode {
    match e {
        CommandError::StreamBusy
        | CommandError::SsrcConflict
        | CommandError::AddressConflict
        | CommandError::DuplicateSession => StatusCode::CONFLICT,
        CommandError::Capacity => StatusCode::SERVICE_UNAVAILABLE,
        CommandError::UnknownSession => StatusCode::NOT_FOUND,
        CommandError::NoSuchWorker
        | CommandError::BadKey
        | CommandError::Invalid
        | CommandError::PlainIngress => StatusCode::BAD_REQUEST,
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let status = match &e {
            SessionError::Ring(SendError::Encode(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            SessionError::Ring(_)
            | SessionError::NotReady(_)
            | SessionError::NoHello
            | SessionError::WorkerFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::NoSuchWorker { .. } => StatusCode::BAD_REQUEST,
            SessionError::Refused(c) => command_status(*c),
            SessionError::AddTimeout | SessionError::RemoveTimeout => StatusCode::GATEWAY_TIMEOUT,
            SessionError::NotFound => StatusCode::NOT_FOUND,
            SessionError::NotSubscriber => StatusCode::CONFLICT,
            SessionError::ShuttingDown => {
                // Another node (or this one's successor) will take the client soon.
                let mut a = Self::of(StatusCode::SERVICE_UNAVAILABLE, &e);
                a.retry_after = Some(5);
                return a;
            }
        };
        Self::of(status, &e)
    }
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> Self {
        let status = match &e {
            FetchError::NotReady(_) | FetchError::Ring(_) | FetchError::Gone => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            FetchError::NoPublisher
            | FetchError::NoVideoTrack
            | FetchError::NoGroup { .. }
            | FetchError::Depay { .. } => StatusCode::NOT_FOUND,
            FetchError::Busy => StatusCode::TOO_MANY_REQUESTS,
            FetchError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<RtpError> for ApiError {
    fn from(e: RtpError) -> Self {
        match e {
            RtpError::Invalid(e) => Self::of(StatusCode::BAD_REQUEST, &e),
            RtpError::Rng(e) => e.into(),
            RtpError::Session(e) => e.into(),
        }
    }
}

impl From<SdpError> for ApiError {
    fn from(e: SdpError) -> Self {
        let status = match e {
            SdpError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            SdpError::NoUsableCodec => StatusCode::NOT_ACCEPTABLE,
            SdpError::Random => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::of(status, &e)
    }
}

impl From<WebrtcError> for ApiError {
    fn from(e: WebrtcError) -> Self {
        let status = match e {
            WebrtcError::Name(e) => return e.into(),
            WebrtcError::Sdp(e) => return e.into(),
            WebrtcError::Rng(e) => return e.into(),
            WebrtcError::Session(e) => return e.into(),
            WebrtcError::NotUtf8 | WebrtcError::DoesNotFit => StatusCode::BAD_REQUEST,
            WebrtcError::NoPublisher(_) | WebrtcError::NoSuchSession => StatusCode::NOT_FOUND,
            WebrtcError::Keep(_) => StatusCode::INTERNAL_SERVER_ERROR,
            WebrtcError::IceRestart => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::of(status, &e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if let StoreError::Unavailable(_) = e {
            // Redis restarting or failing over (Sentinel promotes a replica in seconds).
            let mut a = Self::of(StatusCode::SERVICE_UNAVAILABLE, &e);
            a.retry_after = Some(2);
            return a;
        }
        let status = match e {
            StoreError::Unavailable(_) | StoreError::NoCapacity { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            StoreError::RoomExists(_) => StatusCode::CONFLICT,
            StoreError::NoSuchRoom(_) | StoreError::NoSuchNode(_) => StatusCode::NOT_FOUND,
            StoreError::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::of(status, &e)
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let status = match e {
            ClusterError::Name(e) => return e.into(),
            ClusterError::Store(e) => return e.into(),
            ClusterError::Rng(e) => return e.into(),
            ClusterError::Url(_)
            | ClusterError::MediaAddress
            | ClusterError::NoWorkers
            | ClusterError::Labels
            | ClusterError::Load
            | ClusterError::MaxPeers => StatusCode::BAD_REQUEST,
            ClusterError::HookForbidden => StatusCode::FORBIDDEN,
            ClusterError::NoRoom(_) => StatusCode::NOT_FOUND,
        };
        Self::of(status, &e)
    }
}

impl From<RelayError> for ApiError {
    fn from(e: RelayError) -> Self {
        let status = match e {
            RelayError::Name(e) => return e.into(),
            RelayError::Store(e) => return e.into(),
            RelayError::Session(e) => return e.into(),
            RelayError::Rng(e) => return e.into(),
            RelayError::ToItself
            | RelayError::HopsTooLong
            | RelayError::HopsEnd
            | RelayError::TooManySsrcs
            | RelayError::TooManyTracks => StatusCode::BAD_REQUEST,
            RelayError::PlainKeys(_) => StatusCode::FORBIDDEN,
            RelayError::NotPublished(_)
            | RelayError::UnknownTarget(_)
            | RelayError::NoSuchRelay { .. }
            | RelayError::NoSuchIngress
            | RelayError::NoWebrtcPublisher(_) => StatusCode::NOT_FOUND,
            RelayError::Loop { .. } | RelayError::Conflict(_) => StatusCode::CONFLICT,
            // A refusal the caller can act on (a loop, a conflict) keeps its status.
            RelayError::Refused { status: 409, .. } => StatusCode::CONFLICT,
            RelayError::Refused { .. }
            | RelayError::Unreachable { .. }
            | RelayError::BadAnswer(_)
            | RelayError::WrongNode { .. }
            | RelayError::Concurrent(_)
            | RelayError::Abandoned
            | RelayError::NoSourceAnswered
            | RelayError::Source(_) => StatusCode::BAD_GATEWAY,
            RelayError::NoKeys | RelayError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::of(status, &e)
    }
}

impl From<ForwardError> for ApiError {
    fn from(e: ForwardError) -> Self {
        let status = match e {
            ForwardError::Exists | ForwardError::FromConfig(_) => StatusCode::CONFLICT,
            ForwardError::NotFound
            | ForwardError::NotUnderPrefix { .. }
            | ForwardError::NotPublished(_) => StatusCode::NOT_FOUND,
            // Too many forwards, and the store their copies live in, are this node's
            // condition, not the request's: 503 either way.
            ForwardError::TooMany | ForwardError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ForwardError::Name(_)
            | ForwardError::Invalid(_)
            | ForwardError::NoStream
            | ForwardError::NoDestination(_)
            | ForwardError::NodeDestination(_) => StatusCode::BAD_REQUEST,
            ForwardError::SdpFile(_) => StatusCode::CONFLICT,
        };
        Self::of(status, &e)
    }
}
