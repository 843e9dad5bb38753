//! Switchyard data plane.
//!
//! Layers (quinn's proto / udp / runtime split):
//! - [`engine`]: sans-IO. Sessions, SRTP, fan-out, NACK cache, PLI throttling. Fed datagrams
//!   with their receive time and every other input with `now`, drained of datagrams to send,
//!   asked when it next needs time to pass (`poll_timeout`). No sockets, no clock, no threads.
//! - [`io`]: the UDP engines (io_uring, and recvmmsg/sendmmsg as fallback). All the unsafe
//!   code of this crate lives here.
//! - [`worker`]: the thread that pins itself, owns one socket, one io engine and one engine
//!   state, and runs the loop (on two sockets: media and relay, see [`via`]), sleeping until
//!   the engine's next deadline. [`node`] wires workers, the slow path and the command ring.
//! - [`worker_set`]: sets of workers (who has subscribers of a stream), correct for every
//!   worker count a config accepts.

pub mod bwe;
pub mod datachan;
pub mod dtls;
pub mod engine;
pub mod handshakes;
pub mod io;
pub mod node;
pub mod slowpath;
#[cfg(test)]
mod testing;
pub mod via;
pub mod worker;
pub mod worker_set;

pub use node::{run, run_until};
