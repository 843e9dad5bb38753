//! Switchyard packet generator: paced publishers, subscribers that check every packet, and
//! loss, latency, jitter and the data plane's CPU per packet.
//!
//! Three scenarios, each callable from integration tests:
//! - [`run::run`] with [`run::Target::Node`]: fan-out through a Switchyard node (SRTP),
//!   sessions created over its control API;
//! - [`run::run`] with [`run::Target::Reflector`]: the same load through an in-process plain
//!   recvmmsg/sendmmsg fan-out thread, the physical reference;
//! - [`ramp::ramp`]: growing load until loss or p99 latency crosses a threshold.
//!
//! With `webrtc` on the node target, peers join over WHIP/WHEP, ICE and DTLS ([`webrtc`]).
//!
//! See docs/bench.md for how loss and latency are measured and what each JSON field means.
#![deny(unsafe_code)]

pub mod accounting;
pub mod api;
pub mod cpu;
pub mod crypto;
pub mod hgrm;
pub mod html;
pub mod http;
pub mod offload;
pub mod pacing;
pub mod packet;
pub mod progress;
pub mod ramp;
pub mod reflector;
pub mod report;
pub mod run;
pub mod shape;
pub mod simulcast;
pub mod svg;
pub mod sys;
pub mod timeline;
pub mod webrtc;

pub use ramp::{ramp, RampSpec};
pub use report::{RampReport, Report};
pub use run::{run, LoadSpec, Target};

/// Why a run could not be carried out (as opposed to what it measured).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid options: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("control API: {0}")]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error("WebRTC: {0}")]
    Webrtc(#[from] webrtc::WebrtcError),
    #[error("a bench thread panicked")]
    Thread,
}

impl Error {
    pub(crate) fn io(what: &'static str, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }
}
