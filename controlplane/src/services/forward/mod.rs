//! Forwards (SRS `forward`): copy every published stream, or those under a prefix, to a list
//! of destinations: plain RTP to a recorder or transcoder (`rtp://ip:port`), or another
//! Switchyard node as hot standby (`node://<node-id>`, `node://host:port`).
//!
//! [`Manager`] (`manager`) is the sans-IO core, in the words of `model`. It holds the forwards and, per destination, stream and
//! publisher track, one *egress*: a `Keying::Plain` subscriber session sending that track to
//! the destination's port for it (see `Destination::track_address`). It is level-triggered:
//! [`Manager::plan`] compares what should exist (forwards × published streams) with what the
//! node's session table holds and answers the commands to close the gap; the driver
//! (`driver`) runs them through the same provisioning path as the API and reports back with
//! [`Manager::added`]. So a publisher appearing or leaving, a forward created or deleted, a
//! data plane restart and a control plane restart (egresses found in the snapshot are adopted,
//! not duplicated) all take the same path, and every one of them is tested without I/O
//! (`tests`). [`Forwards`] (`service`) is what the rest of the control plane holds: the
//! manager, the forwards' copies in the cluster store, the driver's wake-up; `sdp` writes the
//! SDP file of what a plain-RTP destination receives.
//!
//! A `node://` destination has one egress per (forward, destination, stream), not per track:
//! a relay link ([`Relays::open`](crate::services::relay::Relays::open)) carries every track of the stream, and the
//! target's relay-in is a publisher there. Its `Active` session is the `RelayOut` here; it is
//! closed ([`Relays::close`](crate::services::relay::Relays::close), which also ends the target's ingress) when the
//! publisher leaves or the forward is deleted. Relays no forward claims (made through the
//! relay API, or by cascading) are left alone.
//!
//! An egress that cannot be set up (data plane down or restarting, command refused, target
//! node down or refusing, a relay loop) is retried with exponential backoff, [`BACKOFF_MIN`]
//! doubling to [`BACKOFF_MAX`].
//!
//! `Keying::Plain` sessions belong to forwards: one that no forward wants (its forward was
//! deleted, or it was left by a control plane that was restarted without it) is removed.

pub mod driver;
pub mod manager;
pub mod model;
pub mod sdp;
pub mod service;

#[cfg(test)]
mod tests;

pub use manager::Manager;
pub use model::*;
pub use service::Forwards;
