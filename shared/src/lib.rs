//! Pieces both planes (and the bench) share.
//!
//! - [`packet`]: zero-copy views over RTP, RTCP and STUN, and the RFC 7983 demultiplexer.
//!   Every parser here faces the network: it returns an error on any input, never panics.
//! - [`srtp`]: SRTP/SRTCP protect and unprotect in place (AES_CM_128_HMAC_SHA1_80,
//!   AEAD_AES_128_GCM) with replay protection.
//! - [`ring`]: the shared-memory command/event rings between the control and data planes.
//! - [`journal`]: the SRTP index journal that keeps static keys from reusing an index across
//!   data-plane restarts.
//! - [`stats`]: per-worker counters in shared memory, written by workers, read by `/metrics`.
//! - [`command`]: the typed commands and events that travel over the rings.
//! - [`config`]: the node configuration (TOML, env, flags).
//! - [`names`]: the one rule for stream names, room and node ids, forward ids.
//! - [`netif`]: the host's interface addresses and which of them a node announces.

pub mod command;
pub mod config;
pub mod depay;
pub mod journal;
pub mod names;
pub mod netif;
pub mod packet;
pub mod ring;
pub mod sizes;
pub mod srtp;
pub mod stats;
