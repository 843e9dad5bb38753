//! The core layer: what every service stands on. The node's session table as a sans-IO state
//! machine ([`state`]), what the control plane keeps inside session specs ([`kept`]), the
//! ring thread that feeds the table from the data plane ([`link`]), the cluster [`store`],
//! and the control plane's own [`counters`], wall [`clock`] and [`random`]ness.
//!
//! Nothing here knows HTTP or the services above it: no axum, no `crate::http`, no
//! `crate::services` (docs/architecture.md, "Control plane layers").

pub mod clock;
pub mod counters;
pub mod histogram;
pub mod kept;
pub mod link;
pub mod procstat;
pub mod random;
pub mod state;
pub mod store;
pub mod traffic;
