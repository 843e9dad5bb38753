//! UDP I/O engines for one worker: io_uring (multishot recvmsg into a provided buffer ring,
//! sends queued as SQEs and submitted once per loop turn) and a recvmmsg/sendmmsg + epoll
//! fallback. All unsafe code of the data plane lives under this module.
//!
//! CONTRACT (implemented by the io helper; the worker loop codes against exactly this):
//!
//! ```ignore
//! pub use switchyard_shared::config::EngineKind;
//!
//! /// Largest datagram the worker accepts; anything longer is dropped (and counted by the
//! /// caller through `RxEvent::Oversize`). 1500 = Ethernet MTU.
//! pub const MAX_DATAGRAM: usize = 1500;
//! /// Room for a full datagram plus SRTP/SRTCP overhead (16-byte GCM tag + 4-byte SRTCP
//! /// index) when a packet is re-protected in place.
//! pub const TX_BUF: usize = 1536;
//!
//! #[derive(Debug, thiserror::Error)] pub enum IoError { ... io::Error wrapping, Unsupported(String) }
//!
//! pub struct IoConfig { pub recv_buffer: usize, pub send_buffer: usize,
//!                       pub rx_batch: usize /* e.g. 64 */, pub tx_slots: usize /* e.g. 1024 */ }
//!
//! /// What `Io::poll` hands the caller per received datagram.
//! pub enum RxEvent<'a> {
//!     Datagram { data: &'a mut [u8], src: std::net::SocketAddr, at: std::time::Instant },
//!     /// Datagram longer than MAX_DATAGRAM (MSG_TRUNC), already discarded.
//!     Oversize { src: std::net::SocketAddr },
//! }
//!
//! /// Wakes a worker blocked in `Io::poll` from another thread (eventfd). Clone + Send + Sync.
//! /// `wake()` is cheap and may be called often; the engine coalesces.
//! #[derive(Clone)] pub struct Waker { .. }
//! impl Waker { pub fn wake(&self); }
//!
//! pub struct Io { .. }   // Send (moved into the worker thread), not Sync
//! impl Io {
//!     /// Build the engine for `socket` (already bound, non-blocking set by Io).
//!     /// `EngineKind::Auto` tries io_uring and falls back to mmsg, logging the choice
//!     /// (tracing::info!) and the reason io_uring failed. Sets SO_RCVBUF/SO_SNDBUF
//!     /// (SO_RCVBUFFORCE when root, else plain) and SO_RXQ_OVFL.
//!     pub fn new(kind: EngineKind, socket: std::net::UdpSocket, cfg: &IoConfig) -> Result<Io, IoError>;
//!     /// Which engine actually runs (never Auto).
//!     pub fn kind(&self) -> EngineKind;
//!     pub fn waker(&self) -> Waker;
//!     /// Submit queued sends, then wait until at least one datagram arrives, the waker fires
//!     /// or `timeout` passes; then call `on_rx` for every datagram that is ready (a batch),
//!     /// stamping each with the receive Instant (taken once per batch). `on_rx` gets the
//!     /// send half so it can queue replies and fan-out copies. Returns how many datagrams
//!     /// were handed over. Errors only on a broken ring / socket, never on a packet.
//!     pub fn poll(&mut self, timeout: std::time::Duration,
//!                 on_rx: &mut dyn FnMut(RxEvent<'_>, &mut Tx)) -> Result<usize, IoError>;
//!     /// The send half, for sends outside `poll` (cross-worker packets, timers).
//!     pub fn tx(&mut self) -> &mut Tx;
//!     /// Submit everything queued now (poll also does it first thing).
//!     pub fn flush(&mut self) -> Result<(), IoError>;
//!     /// Cumulative kernel receive-queue drops (SO_RXQ_OVFL) seen so far.
//!     pub fn kernel_drops(&self) -> u64;
//!     /// Sends the kernel refused so far (counted, never retried).
//!     pub fn send_errors(&self) -> u64;
//! }
//!
//! /// The send half: a fixed pool of `tx_slots` buffers of TX_BUF bytes, allocated once.
//! pub struct Tx { .. }
//! impl Tx {
//!     /// A free buffer, or None when every slot is queued or in flight (the caller counts
//!     /// a QueueFull drop).
//!     pub fn alloc(&mut self) -> Option<TxBuf>;
//!     pub fn buf_mut(&mut self, b: TxBuf) -> &mut [u8; TX_BUF];
//!     /// Queue `len` bytes of `b` for `dst`; sent at the next flush/poll.
//!     pub fn queue(&mut self, b: TxBuf, len: usize, dst: std::net::SocketAddr);
//!     /// Give back a buffer that will not be sent.
//!     pub fn release(&mut self, b: TxBuf);
//!     /// Convenience: alloc + copy + queue; false when no slot was free.
//!     pub fn send_copy(&mut self, data: &[u8], dst: std::net::SocketAddr) -> bool;
//! }
//! #[derive(Clone, Copy, Debug, PartialEq, Eq)]
//! pub struct TxBuf(u32); // index into the engine's fixed TX buffer pool
//! ```
