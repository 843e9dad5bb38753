//! The cluster service: this node's membership of the cluster and the rooms placed on it.
//! The store it all lives in is `core::store`; the routes are `http::cluster`'s.
//!
//! - [`Cluster`] (`service`) is the handle the rest of the control plane holds, with
//!   [`ClusterError`].
//! - [`nodes`]: registration and load heartbeats, checked; [`rooms`]: room placement,
//!   lookup and closing, checked and counted.
//! - [`health`]: the task that registers this node and checks every node's `GET /health`;
//!   [`load`]: this node's own load, measured for the heartbeat and `/health`.
//! - [`hooks`]: room events delivered to a room's hook; [`events`]: which events a session
//!   change makes, and closing idle rooms ([`closer`] decides when, sans-IO).
//! - [`liveness`]: when a node is dead (lease lapsed, or silent checks), its removal and
//!   its rooms moving to live nodes.
//! - [`probe`]: one HTTP request to another node or a hook, for its status.
//! - [`regions`]: where a client is (trusted header or address map), and which node of a
//!   region serves a room's viewers.
//!
//! Security: `http::auth` decides who reaches each route (docs/api.md, "Auth"). A room's
//! `eventNotificationUri` is a URL the node will POST to from inside the cluster's network,
//! so beyond that only a trusted caller (cluster token, or auth off) sets an arbitrary one;
//! others only one under `[cluster] hook_allow` ([`rooms`]).

pub mod closer;
pub mod events;
pub mod health;
pub mod hooks;
pub mod liveness;
pub mod load;
pub mod nodes;
pub mod probe;
pub mod regions;
pub mod rooms;
pub mod service;

pub use service::{Cluster, ClusterError, ShutdownRequest};
