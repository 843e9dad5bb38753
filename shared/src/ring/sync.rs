//! Atomics the SPSC protocol uses: std's in a normal build, loom's under `--cfg loom` so
//! the model checker can explore every interleaving of [`super::spsc`].

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
