//! UDP I/O engines for one worker: io_uring (multishot recvmsg into a provided buffer ring,
//! sends queued as SQEs and submitted once per loop turn) and a recvmmsg/sendmmsg + epoll
//! fallback. All unsafe code of the data plane lives under this module.
//!
//! # Contract
//!
//! One [`Io`] per worker thread, owning its bound media socket and, optionally, its relay
//! socket ([`Io::with_relay`]); datagrams say which one they came in on ([`Via`]) and sends
//! say which one to leave from ([`Tx::queue_via`]), and optionally which local address
//! ([`Tx::queue_from`], see Addresses). The worker loop is:
//!
//! ```ignore
//! loop {
//!     // drain cross-worker queues, run timers, queue sends on io.tx()
//!     io.poll(timeout, &mut |ev, tx| match ev {
//!         RxEvent::Datagram { data, src, dst, at, via } => { /* the engine, sending on `tx` */ }
//!         RxEvent::Oversize { .. } => { /* count it */ }
//!     })?;
//! }
//! ```
//!
//! (`dataplane/src/worker.rs` is the real loop.)
//!
//! - [`Io::poll`] first submits every send queued on [`Tx`], then waits until a datagram
//!   arrives, the [`Waker`] fires or the timeout passes, then hands every ready datagram to
//!   `on_rx` with one receive [`Instant`](std::time::Instant) per batch. The datagram bytes
//!   are only borrowed for the call: the buffer goes back to the kernel when `on_rx` returns.
//! - Sends go through a fixed pool of `tx_slots` buffers of [`TX_BUF`] bytes ([`Tx`]): `alloc`,
//!   write, `queue`. A slot is busy from `alloc` until the kernel has completed the send, so
//!   `alloc` returning `None` is back-pressure: the caller drops the packet and counts it.
//! - Nothing is allocated per packet: every buffer, header and address of both engines is
//!   allocated in [`Io::new`].
//! - Errors from `poll`/`flush` mean a broken ring or socket; a bad packet or a refused send
//!   never is one (oversize datagrams are reported as [`RxEvent::Oversize`], refused sends are
//!   counted in [`Io::send_errors`]).
//!
//! # Addresses
//!
//! On an IPv6 socket, IPv4-mapped source addresses (`::ffff:a.b.c.d`) are reported as plain
//! IPv4 [`SocketAddr`]s, and IPv4 destinations are mapped back when sending, so a peer has one
//! spelling whatever the socket family.
//!
//! Sockets bound to the wildcard on a host with several addresses must answer from the
//! address the peer sent to (a browser discards a STUN answer from another one). So every
//! socket asks for IP_PKTINFO (and IPV6_RECVPKTINFO on IPv6 sockets), each
//! [`RxEvent::Datagram`] carries the local address it came to as `dst` (IPv4-mapped again
//! reported as IPv4), and [`Tx::queue_from`] sends from a given local address with an
//! IP_PKTINFO or IPV6_PKTINFO control message (an IPv4 source on an IPv6 socket goes
//! v4-mapped, which Linux's IPv4 path of a dual-stack socket accepts). Without a source the
//! datagram carries no control message and the kernel picks, as before. The control buffers
//! on both sides are part of the preallocated slots: nothing is allocated per packet.
//!
//! # Engines
//!
//! - `uring`: one ring per worker, created disabled and enabled by the first `poll`, so the
//!   thread that polls is the ring's single issuer (`IORING_SETUP_SINGLE_ISSUER |
//!   DEFER_TASKRUN` where the kernel has them): call `poll`/`flush` from one thread only.
//! - `mmsg`: `recvmmsg`/`sendmmsg` with `MSG_DONTWAIT`, `epoll_wait` only when the socket
//!   is empty.
//!
//! [`EngineKind::Auto`] tries io_uring and falls back to mmsg when the kernel (or a seccomp
//! policy) refuses it, logging why.

mod addr;
mod batch;
mod framing;
mod gso;
mod mmsg;
mod raw;
mod segment;
mod sockopt;
mod tcp;
mod tx;
mod uring;
mod waker;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

pub use gso::OffloadCounters;
pub use switchyard_shared::config::EngineKind;
pub use tcp::{TcpCounters, TcpLimits};
pub use tx::{Tx, TxBuf};
pub use waker::Waker;

pub use crate::via::Via;

/// Largest datagram the worker accepts; anything longer is reported as `RxEvent::Oversize`.
pub use switchyard_shared::packet::MAX_DATAGRAM;

/// Room for a full datagram plus SRTP/SRTCP overhead (16-byte GCM tag + 4-byte SRTCP
/// index) when a packet is re-protected in place.
pub const TX_BUF: usize = 1536;

/// Errors of the I/O layer: a socket or ring that no longer works, or an engine the kernel
/// does not support. Never raised for a single packet.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A system call failed; `call` names it for the log.
    #[error("{call}: {source}")]
    Sys {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The kernel lacks a feature the engine needs (or a policy forbids it).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl IoError {
    /// The error of the last failed system call, named for the log.
    pub(crate) fn last_os(call: &'static str) -> Self {
        Self::Sys {
            call,
            source: std::io::Error::last_os_error(),
        }
    }

    pub(crate) fn sys(call: &'static str, source: std::io::Error) -> Self {
        Self::Sys { call, source }
    }
}

/// Sizes of one worker's engine; everything is allocated once from these in [`Io::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoConfig {
    /// SO_RCVBUF in bytes (0 leaves the system default).
    pub recv_buffer: usize,
    /// SO_SNDBUF in bytes (0 leaves the system default).
    pub send_buffer: usize,
    /// Datagrams per recvmmsg call (mmsg engine); at least 1.
    pub rx_batch: usize,
    /// Send buffers of [`TX_BUF`] bytes, queued or in flight at once; at least 1.
    pub tx_slots: usize,
    /// io_uring engine: send each turn's datagrams with one `sendmmsg` and hand io_uring
    /// only what the socket cannot take at once (true), or one SENDMSG SQE per datagram
    /// (false). See `batch.rs` for the measurement behind the default.
    pub uring_sendmmsg: bool,
    /// Send each destination's queued datagrams as `UDP_SEGMENT` messages where the kernel
    /// allows it (probed per socket at start; `gso.rs`).
    pub gso: bool,
    /// Let the relay socket coalesce received datagrams (`UDP_GRO`); the engine walks the
    /// segments.
    pub relay_gro: bool,
}

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            recv_buffer: 8 << 20,
            send_buffer: 8 << 20,
            rx_batch: 64,
            tx_slots: 1024,
            uring_sendmmsg: true,
            gso: true,
            relay_gro: true,
        }
    }
}

/// What [`Io::poll`] hands the caller per received datagram.
#[derive(Debug)]
pub enum RxEvent<'a> {
    /// A datagram of at most [`MAX_DATAGRAM`] bytes; `data` may be modified in place (e.g.
    /// decrypted) but is only valid during the callback.
    Datagram {
        data: &'a mut [u8],
        src: SocketAddr,
        /// The local address it was sent to (IP_PKTINFO / IPV6_PKTINFO; v4-mapped reported
        /// as IPv4, like `src`): the address a reply must leave from on a socket bound to
        /// the wildcard. `None` only if the kernel did not say.
        dst: Option<IpAddr>,
        at: std::time::Instant,
        /// The socket it came in on.
        via: Via,
    },
    /// Datagram longer than MAX_DATAGRAM (MSG_TRUNC), already discarded.
    Oversize { src: SocketAddr },
}

/// One worker's UDP engine. `Send` (built on one thread, moved into the worker), not `Sync`.
pub struct Io {
    engine: Engine,
}

enum Engine {
    Uring(Box<uring::Uring>),
    Mmsg(Box<mmsg::Mmsg>),
}

// Moving Io across threads must stay possible: the node builds it, the worker runs it.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Io>();
};

impl Io {
    /// Build the engine for `socket` (already bound; Io sets the blocking mode it needs).
    /// `EngineKind::Auto` tries io_uring and falls back to mmsg, logging the choice
    /// (tracing::info!) and the reason io_uring failed. Sets SO_RCVBUF/SO_SNDBUF
    /// (SO_RCVBUFFORCE when permitted, else plain) and SO_RXQ_OVFL.
    pub fn new(kind: EngineKind, socket: UdpSocket, cfg: &IoConfig) -> Result<Io, IoError> {
        Self::with_relay(kind, socket, None, cfg)
    }

    /// [`Io::new`] with the worker's relay socket as well: its datagrams arrive as
    /// `RxEvent::Datagram { via: Via::Relay, .. }` and `Tx::queue_via(.., Via::Relay)` sends
    /// from it. Both sockets get the same options. Without one, relay sends are refused and
    /// counted in [`Io::send_errors`].
    pub fn with_relay(
        kind: EngineKind,
        socket: UdpSocket,
        relay: Option<UdpSocket>,
        cfg: &IoConfig,
    ) -> Result<Io, IoError> {
        let cfg = IoConfig {
            rx_batch: cfg.rx_batch.clamp(1, 1024),
            tx_slots: cfg.tx_slots.clamp(1, tx::MAX_SLOTS),
            ..cfg.clone()
        };
        sockopt::configure(&socket, &cfg)?;
        if let Some(r) = &relay {
            sockopt::configure(r, &cfg)?;
        }
        let engine = match kind {
            EngineKind::Uring => Engine::Uring(Box::new(uring::Uring::new(socket, relay, &cfg)?)),
            EngineKind::Mmsg => Engine::Mmsg(Box::new(mmsg::Mmsg::new(socket, relay, &cfg)?)),
            EngineKind::Auto => {
                // The sockets are needed again if io_uring is refused.
                let spare = socket.try_clone().map_err(|e| IoError::sys("dup", e))?;
                let spare_relay = relay
                    .as_ref()
                    .map(|r| r.try_clone())
                    .transpose()
                    .map_err(|e| IoError::sys("dup", e))?;
                match uring::Uring::new(socket, relay, &cfg) {
                    Ok(u) => {
                        drop((spare, spare_relay));
                        tracing::info!("io engine: io_uring");
                        Engine::Uring(Box::new(u))
                    }
                    Err(e) => {
                        tracing::info!(reason = %e, "io engine: mmsg (io_uring unavailable)");
                        Engine::Mmsg(Box::new(mmsg::Mmsg::new(spare, spare_relay, &cfg)?))
                    }
                }
            }
        };
        Ok(Io { engine })
    }

    /// Which engine actually runs (never Auto).
    pub fn kind(&self) -> EngineKind {
        match self.engine {
            Engine::Uring(_) => EngineKind::Uring,
            Engine::Mmsg(_) => EngineKind::Mmsg,
        }
    }

    /// A handle that wakes this engine's `poll` from any thread.
    pub fn waker(&self) -> Waker {
        match &self.engine {
            Engine::Uring(u) => u.waker(),
            Engine::Mmsg(m) => m.waker(),
        }
    }

    /// Submit queued sends, then wait until at least one datagram arrives, the waker fires
    /// or `timeout` passes (zero: do not wait); then call `on_rx` for every datagram that
    /// is ready (a batch), stamping each with the receive Instant (taken once per batch).
    /// `on_rx` gets the send half so it can queue replies and fan-out copies; those are
    /// submitted at the next `poll`/`flush`. Returns how many datagrams (oversize ones
    /// included) were handed over. Errors only on a broken ring / socket, never on a packet.
    pub fn poll(
        &mut self,
        timeout: Duration,
        on_rx: &mut dyn FnMut(RxEvent<'_>, &mut Tx),
    ) -> Result<usize, IoError> {
        match &mut self.engine {
            Engine::Uring(u) => u.poll(timeout, on_rx),
            Engine::Mmsg(m) => m.poll(timeout, on_rx),
        }
    }

    /// The send half, for sends outside `poll` (cross-worker packets, timers).
    pub fn tx(&mut self) -> &mut Tx {
        match &mut self.engine {
            Engine::Uring(u) => u.tx(),
            Engine::Mmsg(m) => m.tx(),
        }
    }

    /// Submit everything queued now (poll also does it first thing). Never blocks: the
    /// mmsg engine keeps what the socket cannot take yet for the next flush.
    pub fn flush(&mut self) -> Result<(), IoError> {
        match &mut self.engine {
            Engine::Uring(u) => u.flush(),
            Engine::Mmsg(m) => m.flush(),
        }
    }

    /// Cumulative kernel receive-queue drops (SO_RXQ_OVFL) seen so far. The kernel reports
    /// the count with the next datagram it does queue, so it lags until one arrives.
    pub fn kernel_drops(&self) -> u64 {
        match &self.engine {
            Engine::Uring(u) => u.kernel_drops(),
            Engine::Mmsg(m) => m.kernel_drops(),
        }
    }

    /// Serve ICE-TCP on `listener` (bound and listening, on the worker's media port): its
    /// connections' packets arrive as media datagrams from the connection's peer, and media
    /// sends to such a peer go out on its connection (`io/tcp.rs`).
    pub fn add_tcp(
        &mut self,
        listener: std::net::TcpListener,
        limits: TcpLimits,
    ) -> Result<(), IoError> {
        let tcp = Box::new(tcp::Tcp::new(listener, limits)?);
        match &mut self.engine {
            Engine::Uring(u) => u.add_tcp(tcp),
            Engine::Mmsg(m) => m.add_tcp(tcp),
        }
    }

    /// The ICE-TCP side's counters and open connections (zero without one).
    pub fn tcp_counters(&mut self) -> (TcpCounters, usize) {
        self.tx()
            .tcp
            .as_ref()
            .map_or((TcpCounters::default(), 0), |t| {
                (t.counters(), t.connections())
            })
    }

    /// Whether sends from the socket `via` names are segmented (configured, and the kernel
    /// passed the probe).
    pub fn gso(&mut self, via: Via) -> bool {
        self.tx().gso_enabled(via)
    }

    /// What segmentation and receive offload did so far.
    pub fn offload(&mut self) -> OffloadCounters {
        self.tx().offload()
    }

    /// Sends the kernel refused so far (counted, never retried).
    pub fn send_errors(&self) -> u64 {
        match &self.engine {
            Engine::Uring(u) => u.send_errors(),
            Engine::Mmsg(m) => m.send_errors(),
        }
    }
}

/// Turn segmentation on for each socket whose kernel accepts `UDP_SEGMENT` (when `cfg.gso`),
/// logging a refusal once.
pub(crate) fn probe_gso(tx: &mut Tx, media: &UdpSocket, relay: Option<&UdpSocket>, cfg: &IoConfig) {
    use std::os::fd::AsRawFd;
    for (via, s) in [(Via::Media, Some(media)), (Via::Relay, relay)] {
        let Some(s) = s else { continue };
        let on = cfg.gso
            && match gso::probe_segment(s.as_raw_fd()) {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(socket = ?via, error = %e, "UDP_SEGMENT unavailable: one datagram per message");
                    false
                }
            };
        tx.set_gso(via, on);
    }
}

/// Whether this kernel (and its seccomp policy) lets the io_uring engine start; the error
/// says what is missing. Builds and tears down a throwaway engine on a loopback socket.
pub fn probe_uring() -> Result<(), IoError> {
    uring::probe()
}

/// Take what the worker's ICE-TCP connections have ready (if it has any) and hand each
/// packet to `on_rx` as a datagram on the media socket, from the connection's peer to its
/// local address. Returns how many were handed over and whether more may be ready.
pub(crate) fn recv_tcp(
    tx: &mut Tx,
    rx: &mut tcp::Received,
    on_rx: &mut dyn FnMut(RxEvent<'_>, &mut Tx),
) -> (usize, bool) {
    let at = std::time::Instant::now();
    let Some(tcp) = tx.tcp.as_mut() else {
        return (0, false);
    };
    let more = tcp.poll(at, rx);
    let n = rx.len();
    for i in 0..n {
        if let Some((data, src, local)) = rx.get_mut(i) {
            on_rx(
                RxEvent::Datagram {
                    data,
                    src,
                    dst: Some(local.ip()),
                    at,
                    via: Via::Media,
                },
                tx,
            );
        }
    }
    (n, more)
}

/// Tracks the kernel's cumulative u32 drop counter (SO_RXQ_OVFL) as a u64 that survives
/// wrap-around.
#[derive(Debug, Default)]
pub(crate) struct DropCounter {
    last: u32,
    total: u64,
}

impl DropCounter {
    pub(crate) fn observe(&mut self, cumulative: u32) {
        let delta = cumulative.wrapping_sub(self.last);
        // The counter only grows; a "negative" delta is a reordered older report.
        if delta < u32::MAX / 2 {
            self.total += u64::from(delta);
            self.last = cumulative;
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counter_wraps_and_ignores_stale() {
        let mut d = DropCounter::default();
        d.observe(5);
        d.observe(3);
        assert_eq!(d.total(), 5);
        d.observe(2_000_000_000);
        d.observe(4_000_000_000);
        d.observe(2);
        assert_eq!(d.total(), (1u64 << 32) + 2);
    }
}
