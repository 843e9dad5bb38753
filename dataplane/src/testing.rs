//! Test support: the origin of the tests' virtual clock.
//!
//! `std::time::Instant` has no constructor but `now()`, so the virtual clock needs one real
//! instant to start from. It is read once per test process and never again: every time a
//! test gives the engine is `t0()` plus a duration the test chose, so nothing a test sees
//! depends on how fast the machine ran it. This is the only clock read behind the engine's
//! tests (`grep -rn "Instant::now" dataplane/src/engine` finds none).

use std::sync::OnceLock;
use std::time::Instant;

/// The virtual clock's origin: the same instant for every call in this process.
pub fn t0() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}
