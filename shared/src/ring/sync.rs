//! Atomics the SPSC protocol uses: std's in a normal build, loom's under `--cfg switchyard_loom` so
//! the model checker can explore every interleaving of [`super::spsc`].

#[cfg(switchyard_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(switchyard_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
