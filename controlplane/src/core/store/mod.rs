//! The cluster store: where the cluster's nodes, rooms, published streams and saved forwards
//! live. [`MemoryStore`] for a single node (the default); [`RedisStore`] when several control
//! planes share one cluster; [`AnyStore`] is the one `[cluster] redis` picks at start.
//!
//! - [`records`]: what is stored (nodes, rooms, placements).
//! - [`contract`]: the [`Store`] trait every store implements, and [`StoreError`].
//! - [`placement`]: the pure choice of a node for a room (no I/O, unit tested), which every
//!   store runs against its own nodes; [`entropy`] feeds its power of two choices.
//! - [`sim`]: placement at scale on virtual time, against the real placement code and the
//!   memory store (`examples/placement_sim.rs`).
//!
//! This module only declares and re-exports; the files above define.

pub mod any;
pub mod contract;
pub mod entropy;
pub mod memory;
pub mod placement;
pub mod records;
pub mod redis;
pub mod redis_target;
pub mod sim;

pub use any::AnyStore;
pub use contract::{Store, StoreError};
pub use memory::MemoryStore;
pub use placement::{consumers_for, PoolFilter, RoomSpec, Strategy};
pub use records::{Death, Incarnation, Node, Placement, Registration, Removal, Replacement, Room};
pub use redis::RedisStore;
