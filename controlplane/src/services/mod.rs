//! The services layer: what the control plane does, in typed calls with typed errors.
//! [`sessions`] makes and ends sessions (every other service goes through it), [`webrtc`]
//! answers WHIP/WHEP offers, [`relay`] links nodes, [`forward`] copies streams out,
//! [`cluster`] is this node's part of the cluster, and [`token`] signs the bearer tokens.
//!
//! Services stand on `core` and never on `http`: no axum, no status codes. The HTTP layer
//! turns their errors into answers (`http::error`). Each service is built once at start
//! (`crate::start`) and shared as an `Arc`.

pub mod cluster;
pub mod forward;
pub mod relay;
pub mod sessions;
pub mod token;
pub mod webrtc;
