//! Switchyard data plane.
//!
//! Layers (quinn's proto / udp / runtime split):
//! - [`engine`]: sans-IO. Sessions, SRTP, fan-out, NACK cache, PLI throttling. Fed datagrams
//!   with their receive time, drained of datagrams to send. No sockets, no clock, no threads.
//! - [`io`]: the UDP engines (io_uring, and recvmmsg/sendmmsg as fallback). All the unsafe
//!   code of this crate lives here.
//! - [`worker`]: the thread that pins itself, owns one socket, one io engine and one engine
//!   state, and runs the loop (on two sockets: media and relay, see [`via`]). [`node`] wires workers, the slow path and the command ring.

pub mod datachan;
pub mod dtls;
pub mod engine;
pub mod handshakes;
pub mod io;
pub mod node;
pub mod slowpath;
pub mod via;
pub mod worker;

pub use node::{run, run_until};
