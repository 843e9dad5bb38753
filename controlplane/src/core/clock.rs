//! The wall clock as the control plane stamps its records with it: session creation, rooms,
//! relays, forwards, room events. Unix milliseconds, because these travel (JSON, the cluster
//! store, the data plane's snapshot) and are compared across processes and nodes.
//!
//! Deadlines inside one process use `Instant`, never this.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is set before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
