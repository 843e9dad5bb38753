//! Switchyard data plane.
//!
//! Layers (quinn's proto / udp / runtime split):
//! - [`engine`]: sans-IO. Sessions, SRTP, fan-out, NACK cache, PLI throttling. Fed datagrams
//!   with their receive time, drained of datagrams to send. No sockets, no clock, no threads.
//! - [`io`]: the UDP engines (io_uring, and recvmmsg/sendmmsg as fallback). All the unsafe
//!   code of this crate lives here.
//! - [`worker`]: the thread that pins itself, owns one socket, one io engine and one engine
//!   state, and runs the loop. [`node`] wires workers, the slow path and the command ring.

pub mod io;

use switchyard_shared::config::Config;

/// Run the data plane until SIGINT/SIGTERM: create the stats file and the command ring,
/// start the workers and the slow path, and serve commands. Blocks the calling thread.
pub fn run(config: Config) -> anyhow::Result<()> {
    let _ = config;
    anyhow::bail!("data plane not built yet")
}
