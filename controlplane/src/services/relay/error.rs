//! [`RelayError`]: why a relay was not opened, closed or answered. The HTTP layer gives each
//! its status (`http::error`).

use switchyard_shared::names::BadName;

use super::book::{HopError, MAX_HOPS};
use crate::core::random::RngError;
use crate::core::store::StoreError;
use crate::services::sessions::SessionError;

/// Why link keys may not travel: what the operator can do about it.
pub(crate) const PLAIN_KEYS: &str =
    "relay link keys would cross the network in plain http://; serve the \
     API over HTTPS ([http] certificate) or set [cluster] allow_plain_http_keys = true";

/// Why a relay was not opened, closed or answered.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Name(#[from] BadName),
    #[error("stream {0} is not published on this node")]
    NotPublished(String),
    #[error("targetNode: a node does not relay to itself")]
    ToItself,
    #[error("no node {0:?} in the registry")]
    UnknownTarget(String),
    #[error("relay loop: {node} is already in the hop list {hops:?}")]
    Loop { node: String, hops: Vec<String> },
    #[error("hops: {} ({MAX_HOPS})", HopError::TooLong)]
    HopsTooLong,
    #[error("hops: must end with sourceNode")]
    HopsEnd,
    #[error(
        "ssrcs: at most {} (one per track)",
        switchyard_shared::command::MAX_TRACKS
    )]
    TooManySsrcs,
    #[error("publisherMedia: at most 16 tracks")]
    TooManyTracks,
    /// Link keys would cross the network in the clear (the text says to whom).
    #[error("{0}: {PLAIN_KEYS}")]
    PlainKeys(String),
    #[error("target control plane {url}: {error}")]
    Unreachable { url: String, error: String },
    /// The target refused; a 409 (a loop, a conflict) is one the caller can act on.
    #[error("target control plane answered {status}: {text}")]
    Refused { status: u16, text: String },
    #[error("target's answer: {0}")]
    BadAnswer(String),
    #[error("target answered as node {answered:?}, not {asked:?}")]
    WrongNode {
        answered: String,
        asked: Option<String>,
    },
    /// A concurrent set-up of the same relay failed with this.
    #[error("{0}")]
    Concurrent(String),
    #[error("the concurrent relay set-up was abandoned")]
    Abandoned,
    #[error("no relay of {stream} to {target}")]
    NoSuchRelay { stream: String, target: String },
    #[error("no such relay ingress")]
    NoSuchIngress,
    /// Another source feeds the stream here, or a local publisher publishes it.
    #[error("{0}")]
    Conflict(String),
    #[error("relay session without keys")]
    NoKeys,
    #[error("{0}")]
    Encode(String),
    /// A cascade: the relay came, but WHEP needs a WebRTC publisher.
    #[error("no WebRTC publisher on stream {0}")]
    NoWebrtcPublisher(String),
    #[error("no source answered")]
    NoSourceAnswered,
    /// A cascade's source refused or could not be reached (the text names it).
    #[error("{0}")]
    Source(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Rng(#[from] RngError),
}
