//! Relays between nodes (issue #5): a stream published on one node is sent to another node's
//! relay socket, where it is published again, so subscribers on both nodes watch it.
//!
//! - [`Relays`] (`service`) is the handle the rest of the control plane holds; [`RelayError`]
//!   (`error`) says why a call failed.
//! - [`book`]: the sans-IO bookkeeping (relays both ways, set-ups in flight, hop lists, grace
//!   timers), unit tested without sockets; [`file`](mod@file): the book and the file it is saved in.
//! - [`setup`]: the set-up and tear-down steps, source side ([`Relays::open`],
//!   [`Relays::close`]) and target side ([`Relays::ingress`], [`Relays::close_ingress`]);
//!   [`pull`]: the WHEP cascade.
//! - [`trust`]: who may receive link keys, and the token this node calls others with;
//!   [`client`]: the HTTP client one control plane calls another with.
//! - [`upkeep`]: the relay task (store sync, reconciliation with the data plane, grace timers).
//! - [`rtt`]: round-trip times of the relay links by peer node, measured by the data plane
//!   from RTCP, written to this node's store record for every cascade to read.
//!
//! Durability: the data plane's snapshot holds the relay sessions themselves (with their
//! keys), and the control plane re-provisions them when the data plane restarts, so the
//! source keeps sending to the same port with the same key. What the snapshot cannot say (the
//! other end's node and relay id, the hop list, the publisher's tracks) is kept in a file
//! beside the command ring (`switchyard-<node>.relays`, rewritten on every change), so a
//! control plane restart loses no relay whichever cluster store it runs with. The streams
//! this node publishes (its own and relayed ones, with hop lists) go into the cluster store
//! once a second, where other nodes' cascades look for them.
//!
//! Security: the ingress answer carries the per-link SRTP keys, so they travel over plain
//! HTTP only on loopback: a source asks a remote target over `https://` only, and a target
//! serving plain HTTP answers only a loopback source ([`trust::check_target`],
//! [`trust::check_source`]), unless `[cluster] allow_plain_http_keys` (a network private
//! end to end). Every relay endpoint needs a cluster token.

pub mod book;
pub mod client;
pub mod error;
pub mod file;
pub mod lost;
pub mod pull;
pub mod rtt;
pub mod service;
pub mod setup;
pub mod trust;
pub mod upkeep;

pub use error::RelayError;
pub use pull::PullError;
pub use service::Relays;
pub use setup::{IngressAnswer, IngressRequest, Target};
