//! Where a store draws the entropy [`placement::rank`](super::placement::rank) takes.

use std::sync::atomic::{AtomicU64, Ordering};

use super::placement::mix;
use crate::core::clock::now_ms;

/// Fresh entropy for power-of-two choices: a per-store counter through SplitMix64, seeded
/// from the clock and the address of the store so two stores do not draw the same sequence.
#[derive(Debug)]
pub(crate) struct Entropy(AtomicU64);

impl Entropy {
    pub(crate) fn new(seed: u64) -> Self {
        Self(AtomicU64::new(mix(seed ^ now_ms())))
    }

    /// The sequence `seed` starts, the same every run (simulations).
    pub(crate) fn fixed(seed: u64) -> Self {
        Self(AtomicU64::new(mix(seed)))
    }

    pub(crate) fn next(&self) -> u64 {
        mix(self.0.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
    }
}
