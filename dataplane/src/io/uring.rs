//! io_uring engine: one ring per worker, multishot recvmsg into a provided buffer ring,
//! one SENDMSG SQE per queued datagram, everything submitted by one `io_uring_enter` per
//! loop turn that also waits (with a timeout) for completions.
//!
//! Lifetimes the kernel relies on:
//! - receive buffers and the buffer ring: allocated in `new`, registered as group 0; a buffer
//!   the kernel filled is ours from its CQE until `recycle` puts it back in the ring;
//! - send headers, iovecs, addresses and data: in the `Tx` slot, which stays InFlight until
//!   the SENDMSG CQE;
//! - on drop, outstanding operations are cancelled and awaited; if that fails the memory is
//!   leaked rather than freed under the kernel's feet.
//!
//! The ring is created disabled (`IORING_SETUP_R_DISABLED`) and enabled by the first
//! `poll`/`flush`, so with `SINGLE_ISSUER` the worker thread (not the thread that built the
//! engine) becomes the ring's only submitter.

use std::alloc::Layout;
use std::mem::ManuallyDrop;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use super::addr::{parse_control, parse_sockaddr, CMSG_LEN, RAW_ADDR_LEN};
use super::batch::{self, MsgHdr};
use super::gso;
use super::raw::RawArray;
use super::segment::MAX_SEGMENTS;
use super::tcp::{Received, Tcp};
use super::tx::{Built, Tx};
use super::waker::Waker;
use super::{sockopt, DropCounter, IoConfig, IoError, RxEvent, MAX_DATAGRAM};
use crate::via::Via;

/// Submission queue entries: room for a loop turn's sends without an extra submit.
const SQ_ENTRIES: u32 = 4096;
/// Receive buffer size: recvmsg header (16) + name (28) + control (88) + a full datagram,
/// rounded up; datagrams between MAX_DATAGRAM and the room left are reported Oversize too.
const BUF_SIZE: usize = 2048;
/// Receive buffers in the provided ring (power of two): 2 MiB per worker, enough to absorb
/// a burst while the worker processes the previous batch.
const BUF_COUNT: u16 = 1024;
const BUF_GROUP: u16 = 0;
/// The relay socket's own buffer group when it coalesces (UDP_GRO): fewer, larger buffers
/// (a coalesced datagram is up to 64 KiB), 32 × ~64 KiB = 2 MiB.
const GRO_BUF_COUNT: u16 = 32;
const GRO_BUF_SIZE: usize = PAYLOAD_OFF + gso::GRO_BUF;
const GRO_BUF_GROUP: u16 = 1;

/// user_data tags (top two bits); sends carry their Tx slot in the low bits, receives the
/// [`Via::index`] of their socket.
const UD_CANCEL: u64 = 0;
const UD_RECV: u64 = 1 << 62;
const UD_WAKER: u64 = 2 << 62;
const UD_SEND: u64 = 3 << 62;
const UD_TAG: u64 = 3 << 62;
/// On a send: the low 16 bits name a segmented message's record, not a Tx slot.
const UD_RECORD: u64 = 1 << 40;
/// On a single-slot send: it left from the relay socket (where it goes again if cancelled).
const UD_VIA_RELAY: u64 = 1 << 41;

type OnRx<'a> = &'a mut dyn FnMut(RxEvent<'_>, &mut Tx);

/// `io_uring_recvmsg_out`: the header the kernel writes before name, control and payload.
const RECVMSG_OUT: usize = 16;
const PAYLOAD_OFF: usize = RECVMSG_OUT + RAW_ADDR_LEN + CMSG_LEN;
// A larger control buffer must not eat into the room for a full datagram.
const _: () = assert!(PAYLOAD_OFF + MAX_DATAGRAM <= BUF_SIZE);

/// The buffer ring shared with the kernel: BUF_COUNT `io_uring_buf` entries, page aligned.
/// The ring's tail is the `resv` field of entry 0, so entries are written field by field.
struct BufRing {
    base: NonNull<u8>,
    layout: Layout,
    /// Entries (a power of two) and the length of each buffer.
    count: u16,
    size: usize,
    /// Our copy of the tail; published with a release store.
    tail: u16,
}

#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const BUF_ENTRY_TAIL_OFF: usize = 14;

impl BufRing {
    fn new(count: u16, buf_size: usize) -> Result<Self, IoError> {
        let size = std::mem::size_of::<BufEntry>() * usize::from(count);
        let layout = Layout::from_size_align(size, 4096)
            .map_err(|e| IoError::Unsupported(format!("buffer ring layout: {e}")))?;
        // SAFETY: layout has non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(p)
            .ok_or_else(|| IoError::Io(std::io::Error::from(std::io::ErrorKind::OutOfMemory)))?;
        Ok(Self {
            base,
            layout,
            count,
            size: buf_size,
            tail: 0,
        })
    }

    /// Append buffer `bid` at `addr` (not yet visible to the kernel: see `publish`).
    fn push(&mut self, bid: u16, addr: *mut u8) {
        let idx = usize::from(self.tail & (self.count - 1));
        // SAFETY: idx < count, inside the allocation; we write only addr/len/bid, never
        // the tail aliasing entry 0's resv, and the kernel does not read entries past the
        // published tail, so nothing reads these fields concurrently.
        unsafe {
            let e = self.base.as_ptr().cast::<BufEntry>().add(idx);
            std::ptr::addr_of_mut!((*e).addr).write(addr as u64);
            std::ptr::addr_of_mut!((*e).len).write(self.size as u32);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make every pushed entry visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail is a u16 at offset 14 of the page-aligned allocation (so aligned
        // for AtomicU16); the kernel reads it concurrently, which is why it is only accessed
        // atomically. Release orders the entry writes before it.
        let tail = unsafe {
            AtomicU16::from_ptr(self.base.as_ptr().add(BUF_ENTRY_TAIL_OFF).cast::<u16>())
        };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in new with this layout, freed only here.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// A provided-buffer group: the buffers (`count` × `size` bytes, one allocation) and the
/// ring that hands them to the kernel.
struct Pool {
    bufs: RawArray<u8>,
    ring: BufRing,
    group: u16,
}

impl Pool {
    fn new(count: u16, size: usize, group: u16) -> Result<Self, IoError> {
        let bufs = RawArray::new(usize::from(count) * size, 0u8);
        let mut ring = BufRing::new(count, size)?;
        for bid in 0..count {
            ring.push(bid, bufs.ptr(usize::from(bid) * size));
        }
        ring.publish();
        Ok(Self { bufs, ring, group })
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        self.bufs.ptr(usize::from(bid) * self.ring.size)
    }

    /// Put buffer `bid` back in the ring (visible at the next `publish`).
    fn recycle(&mut self, bid: u16) {
        let p = self.buf_ptr(bid);
        self.ring.push(bid, p);
    }

    /// Register the ring with `ring`'s kernel side.
    fn register(&self, ring: &IoUring) -> Result<(), IoError> {
        // SAFETY: the ring memory is page aligned, `count` entries long and lives (in
        // ManuallyDrop, only freed after the kernel is done or leaked) until we unregister
        // or the ring is closed; the buffers it points at likewise.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring.base.as_ptr() as u64,
                self.ring.count,
                self.group,
                0,
            )
        }
        .map_err(|e| unsupported("IORING_REGISTER_PBUF_RING", e))
    }
}

/// The msghdr given to the multishot recvmsg: only its name/control lengths matter.
struct RecvTemplate(libc::msghdr);

// SAFETY: holds no pointers (all null); only lengths.
unsafe impl Send for RecvTemplate {}

pub(crate) struct Uring {
    ring: IoUring,
    socket: UdpSocket,
    /// The worker's relay socket, if it has one; it shares the provided buffer ring.
    relay: Option<UdpSocket>,
    waker: Waker,
    /// Ring created with R_DISABLED and not yet enabled by the polling thread.
    disabled: bool,
    /// Multishot recvmsg armed, per socket ([`Via::index`]).
    recv_armed: [bool; 2],
    waker_armed: bool,
    msghdr: Box<RecvTemplate>,
    /// Receive buffers: the media socket's (and the relay socket's, unless it coalesces
    /// and has its own).
    pool: ManuallyDrop<Pool>,
    gro_pool: Option<ManuallyDrop<Pool>>,
    tx: ManuallyDrop<Tx>,
    /// Scratch headers for the sendmmsg fast path; `None` when sends go as SQEs only.
    tx_hdrs: Option<RawArray<MsgHdr>>,
    drops: DropCounter,
    send_errors: u64,
    /// One-shot POLL_ADD on the ICE-TCP side's epoll descriptor in flight (`Tx::tcp`).
    tcp_armed: bool,
    /// That poll completed, or the last read left work: read ICE-TCP this turn.
    tcp_ready: bool,
    tcp_rx: Received,
}

// SAFETY: the raw pointers (buffer ring, buffers) are owned by this value and move with it;
// the ring fd may be used from any thread (SINGLE_ISSUER is bound at enable time, in the
// thread that polls).
unsafe impl Send for Uring {}

fn unsupported(what: &str, e: std::io::Error) -> IoError {
    IoError::Unsupported(format!("{what}: {e}"))
}

fn build_ring(cq_entries: u32) -> Result<(IoUring, bool), IoError> {
    // Newest first: single issuer + deferred task work (6.1) keep completions on the worker
    // thread; coop taskrun (5.19) avoids IPIs; plain works from 5.1.
    let mut b = IoUring::builder();
    b.setup_cqsize(cq_entries)
        .setup_r_disabled()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun();
    if let Ok(r) = b.build(SQ_ENTRIES) {
        return Ok((r, true));
    }
    let mut b = IoUring::builder();
    b.setup_cqsize(cq_entries).setup_coop_taskrun();
    if let Ok(r) = b.build(SQ_ENTRIES) {
        return Ok((r, false));
    }
    let mut b = IoUring::builder();
    b.setup_cqsize(cq_entries);
    b.build(SQ_ENTRIES)
        .map(|r| (r, false))
        .map_err(|e| unsupported("io_uring_setup", e))
}

impl Uring {
    pub(crate) fn new(
        socket: UdpSocket,
        relay: Option<UdpSocket>,
        cfg: &IoConfig,
    ) -> Result<Self, IoError> {
        // io_uring waits on the socket internally; a blocking socket keeps the kernel from
        // failing ops with EAGAIN instead of arming its poll.
        for s in std::iter::once(&socket).chain(relay.as_ref()) {
            s.set_nonblocking(false)
                .map_err(|e| IoError::sys("fcntl(O_NONBLOCK)", e))?;
        }
        let v6 = sockopt::is_v6(&socket)?;
        let waker = Waker::new()?;
        let cq = (usize::from(BUF_COUNT) + cfg.tx_slots + 16)
            .next_power_of_two()
            .max(2 * SQ_ENTRIES as usize);
        let (ring, disabled) = build_ring(u32::try_from(cq).unwrap_or(1 << 20))?;

        if !ring.params().is_feature_ext_arg() {
            return Err(IoError::Unsupported(
                "IORING_FEAT_EXT_ARG (5.11) missing".into(),
            ));
        }
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| unsupported("IORING_REGISTER_PROBE", e))?;
        for (code, name) in [
            (opcode::RecvMsgMulti::CODE, "RECVMSG"),
            (opcode::SendMsg::CODE, "SENDMSG"),
            (opcode::PollAdd::CODE, "POLL_ADD"),
            (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
            // SEND_ZC arrived in 6.0 together with multishot recvmsg, which has no opcode
            // of its own to probe; without this check the first recv would fail with EINVAL.
            (
                opcode::SendZc::CODE,
                "SEND_ZC (proxy for multishot recvmsg, 6.0)",
            ),
        ] {
            if !probe.is_supported(code) {
                return Err(IoError::Unsupported(format!("opcode {name} not supported")));
            }
        }

        let pool = Pool::new(BUF_COUNT, BUF_SIZE, BUF_GROUP)?;
        let gro_pool = match &relay {
            Some(_) if cfg.relay_gro => {
                Some(Pool::new(GRO_BUF_COUNT, GRO_BUF_SIZE, GRO_BUF_GROUP)?)
            }
            _ => None,
        };
        // Nothing fallible after a registration but the next registration, which leaves the
        // earlier one for the ring's close to undo (no operation was ever submitted).
        pool.register(&ring)?;
        let gro_pool = match (gro_pool, &relay) {
            (Some(p), Some(r)) => match p
                .register(&ring)
                .and_then(|()| gso::enable_gro(r.as_raw_fd()).map_err(IoError::from))
            {
                Ok(()) => Some(ManuallyDrop::new(p)),
                Err(e) => {
                    tracing::info!(error = %e, "relay socket: UDP_GRO unavailable");
                    // Registered but never used: the ring's close unregisters it, so the
                    // memory must outlive the ring.
                    std::mem::forget(p);
                    None
                }
            },
            _ => None,
        };
        let mut tx = Tx::new(cfg.tx_slots, v6);
        super::probe_gso(&mut tx, &socket, relay.as_ref(), cfg);

        // SAFETY: msghdr is a plain C struct; all-zero is valid.
        let mut tpl: libc::msghdr = unsafe { std::mem::zeroed() };
        tpl.msg_namelen = RAW_ADDR_LEN as u32;
        tpl.msg_controllen = CMSG_LEN as _;

        Ok(Self {
            ring,
            socket,
            relay,
            waker,
            disabled,
            recv_armed: [false; 2],
            waker_armed: false,
            msghdr: Box::new(RecvTemplate(tpl)),
            pool: ManuallyDrop::new(pool),
            gro_pool,
            tx: ManuallyDrop::new(tx),
            tx_hdrs: cfg.uring_sendmmsg.then(|| batch::headers(cfg.tx_slots)),
            drops: DropCounter::default(),
            send_errors: 0,
            tcp_armed: false,
            tcp_ready: false,
            tcp_rx: Received::default(),
        })
    }

    pub(crate) fn waker(&self) -> Waker {
        self.waker.clone()
    }

    pub(crate) fn tx(&mut self) -> &mut Tx {
        &mut self.tx
    }

    /// Serve ICE-TCP: its epoll descriptor is polled from the ring.
    pub(crate) fn add_tcp(&mut self, tcp: Box<Tcp>) -> Result<(), IoError> {
        self.tcp_rx = Received::with_capacity(64 * 1024);
        self.tx.tcp = Some(tcp);
        Ok(())
    }

    pub(crate) fn kernel_drops(&self) -> u64 {
        self.drops.total()
    }

    pub(crate) fn send_errors(&self) -> u64 {
        self.send_errors
    }

    fn enable(&mut self) -> Result<(), IoError> {
        if self.disabled {
            self.ring
                .submitter()
                .register_enable_rings()
                .map_err(|e| IoError::sys("IORING_REGISTER_ENABLE_RINGS", e))?;
            self.disabled = false;
        }
        Ok(())
    }

    /// Push one SQE, submitting first if the queue is full. False if it stays full.
    fn push(&mut self, e: &squeue::Entry) -> Result<bool, IoError> {
        for _ in 0..2 {
            // SAFETY: every SQE we build references memory that outlives its completion:
            // the recv template (boxed, lives with self), Tx slots (InFlight until CQE),
            // the eventfd and socket (owned by self, closed after the ring on drop).
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return Ok(true);
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if transient(&e) => return Ok(false),
                Err(e) => return Err(IoError::sys("io_uring_enter", e)),
            }
        }
        Ok(false)
    }

    /// The descriptor of the socket `via` names; `None` for a relay socket we lack.
    fn fd(&self, via: Via) -> Option<i32> {
        match via {
            Via::Media => Some(self.socket.as_raw_fd()),
            Via::Relay => self.relay.as_ref().map(|r| r.as_raw_fd()),
        }
    }

    /// Re-arm the multishot ops if they ended and queue every pending send.
    fn prepare(&mut self) -> Result<(), IoError> {
        self.enable()?;
        for via in Via::ALL {
            let Some(fd) = self.fd(via) else { continue };
            if !self.recv_armed[via.index()] {
                let group = match (via, &self.gro_pool) {
                    (Via::Relay, Some(p)) => p.group,
                    _ => BUF_GROUP,
                };
                let e =
                    opcode::RecvMsgMulti::new(Fd(fd), &self.msghdr.0 as *const libc::msghdr, group)
                        .build()
                        .user_data(UD_RECV | via.index() as u64);
                self.recv_armed[via.index()] = self.push(&e)?;
            }
        }
        if !self.waker_armed {
            let e = opcode::PollAdd::new(Fd(self.waker.fd()), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(UD_WAKER);
            self.waker_armed = self.push(&e)?;
        }
        if let Some(tcp) = self.tx.tcp.as_mut() {
            tcp.flush();
            if !self.tcp_armed {
                // One-shot, re-armed each turn: level-triggered, so it completes at once
                // while connections still have something to read.
                let e = opcode::PollAdd::new(Fd(tcp.fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(UD_WAKER | 1);
                self.tcp_armed = self.push(&e)?;
            }
        }
        if self.relay.is_none() {
            batch::refuse_queued(Via::Relay, &mut self.tx, &mut self.send_errors);
        }
        // Fast path: one sendmmsg per socket for the turn. Only while no SQE send is in
        // flight, so a datagram never overtakes an earlier one still waiting in io_uring for
        // socket space.
        if let Some(hdrs) = self.tx_hdrs.as_mut() {
            if self.tx.in_flight() == 0 {
                for via in Via::ALL {
                    let fd = match via {
                        Via::Media => self.socket.as_raw_fd(),
                        Via::Relay => match &self.relay {
                            Some(r) => r.as_raw_fd(),
                            None => continue,
                        },
                    };
                    batch::send_queued(fd, via, &mut self.tx, hdrs, &mut self.send_errors)?;
                }
            }
        }
        for via in Via::ALL {
            let Some(fd) = self.fd(via) else { continue };
            self.submit_sends(via, Fd(fd))?;
        }
        Ok(())
    }

    /// One SENDMSG SQE per planned message queued on `via` (a `UDP_SEGMENT` message per
    /// destination run where the socket segments, `segment.rs`), as far as the submission
    /// queue allows. A destination's SQEs are linked (`IOSQE_IO_LINK`): if one fails (a
    /// segmented message the route refuses), the kernel cancels the ones behind it, and all
    /// of them go again in their order (`finish`), so nothing overtakes a refused message.
    fn submit_sends(&mut self, via: Via, fd: Fd) -> Result<(), IoError> {
        while self.tx.queued_len(via) > 0 {
            let msgs = self.tx.plan(via);
            for k in 0..msgs {
                let Some(msg) = self.tx.planned(k) else {
                    return Ok(());
                };
                // A destination's chain is submitted whole: room for its worst case (one
                // SQE per datagram) before its first message.
                if msg.batch > 0 && !self.sq_room(usize::from(msg.batch))? {
                    return Ok(());
                }
                self.tx.offload_mut().batch(msg.batch);
                let more = self.tx.planned(k + 1).is_some_and(|m| m.batch == 0);
                if msg.count > 1 && self.tx.record_available() {
                    let Some(Built {
                        hdr,
                        record: Some(r),
                        ..
                    }) = self.tx.build(via, 0, msg)
                    else {
                        return Ok(());
                    };
                    for _ in 0..msg.count {
                        let _ = self.tx.pop_queued(via);
                    }
                    let e = opcode::SendMsg::new(fd, hdr)
                        .build()
                        .flags(link(more))
                        .user_data(UD_SEND | UD_RECORD | u64::from(r));
                    // SAFETY: the record and its slots stay untouched until the CQE (the
                    // slots are InFlight, the record is freed only by its completion); the
                    // queue has room (checked for the whole chain).
                    if unsafe { self.ring.submission().push(&e) }.is_err() {
                        // Not reachable (room checked): queue them again rather than leak.
                        finish(
                            &mut self.tx,
                            &mut self.send_errors,
                            Sent::Record(r),
                            -libc::ECANCELED,
                        );
                    }
                    continue;
                }
                // One datagram (or a run with no record free): an SQE per slot.
                for j in 0..msg.count {
                    let Some(i) = self.tx.pop_queued(via) else {
                        return Ok(());
                    };
                    let e = opcode::SendMsg::new(fd, self.tx.hdr_ptr(i))
                        .build()
                        .flags(link(more || j + 1 < msg.count))
                        .user_data(UD_SEND | via_bit(via) | u64::from(i));
                    // SAFETY: slot i is InFlight until its CQE, so its header, iovec,
                    // address and data stay valid and untouched; the queue has room.
                    if unsafe { self.ring.submission().push(&e) }.is_err() {
                        finish(
                            &mut self.tx,
                            &mut self.send_errors,
                            Sent::Slot(i, via),
                            -libc::ECANCELED,
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Room for `n` more SQEs, submitting what is queued if needed. False: the ring takes
    /// no more this turn.
    fn sq_room(&mut self, n: usize) -> Result<bool, IoError> {
        let free = |r: &mut IoUring| {
            let sq = r.submission();
            sq.capacity() - sq.len()
        };
        let n = n.min(SQ_ENTRIES as usize);
        if free(&mut self.ring) >= n {
            return Ok(true);
        }
        match self.ring.submit() {
            Ok(_) => Ok(free(&mut self.ring) >= n),
            Err(e) if transient(&e) => Ok(false),
            Err(e) => Err(IoError::sys("io_uring_enter", e)),
        }
    }

    pub(crate) fn flush(&mut self) -> Result<(), IoError> {
        self.prepare()?;
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(IoError::sys("io_uring_enter", e)),
        }
    }

    pub(crate) fn poll(
        &mut self,
        timeout: Duration,
        on_rx: &mut dyn FnMut(RxEvent<'_>, &mut Tx),
    ) -> Result<usize, IoError> {
        self.prepare()?;
        let timeout = if self.tcp_ready {
            Duration::ZERO
        } else {
            timeout
        };
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if transient(&e) || e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) => return Err(IoError::sys("io_uring_enter", e)),
        }
        let mut got = self.drain(Some(on_rx))?;
        if self.tcp_ready {
            let (n, more) = super::recv_tcp(&mut self.tx, &mut self.tcp_rx, on_rx);
            got += n;
            self.tcp_ready = more;
        }
        Ok(got)
    }

    /// Handle every completion ready now. With `on_rx` None (shutdown) datagrams are
    /// dropped and their buffers recycled.
    fn drain(&mut self, mut on_rx: Option<OnRx<'_>>) -> Result<usize, IoError> {
        let at = Instant::now();
        let mut handed = 0usize;
        let mut fatal = None;
        let mut cq = self.ring.completion();
        for cqe in &mut cq {
            let ud = cqe.user_data();
            let res = cqe.result();
            let flags = cqe.flags();
            match ud & UD_TAG {
                UD_RECV => {
                    let via = if ud & 1 == 1 { Via::Relay } else { Via::Media };
                    if !cqueue::more(flags) {
                        self.recv_armed[via.index()] = false;
                    }
                    if res < 0 {
                        // ENOBUFS: ring ran dry, re-armed next turn once buffers are back.
                        // ECANCELED at shutdown. ICMP errors are not the socket breaking.
                        if matches!(
                            -res,
                            libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EFAULT
                        ) {
                            fatal = Some(std::io::Error::from_raw_os_error(-res));
                        }
                        continue;
                    }
                    let Some(bid) = cqueue::buffer_select(flags) else {
                        continue;
                    };
                    let pool: &mut Pool = match (via, self.gro_pool.as_mut()) {
                        (Via::Relay, Some(p)) => p,
                        _ => &mut self.pool,
                    };
                    if bid >= pool.ring.count {
                        continue; // not a buffer we registered: cannot happen, never panic
                    }
                    let len = (res as usize).min(pool.ring.size);
                    if let Some(f) = on_rx.as_mut() {
                        handed += deliver(
                            pool,
                            &mut self.tx,
                            &mut self.drops,
                            &self.msghdr.0,
                            bid,
                            len,
                            (at, via),
                            f,
                        );
                    }
                    pool.recycle(bid);
                }
                UD_WAKER if ud & 1 == 1 => {
                    self.tcp_armed = false;
                    if res > 0 {
                        self.tcp_ready = true;
                    }
                }
                UD_WAKER => {
                    if !cqueue::more(flags) {
                        self.waker_armed = false;
                    }
                    if res > 0 {
                        self.waker.consume();
                    }
                }
                UD_SEND => {
                    let sent = if ud & UD_RECORD != 0 {
                        Sent::Record((ud & 0xffff) as u16)
                    } else {
                        let via = if ud & UD_VIA_RELAY != 0 {
                            Via::Relay
                        } else {
                            Via::Media
                        };
                        Sent::Slot((ud & 0xf_ffff) as u32, via)
                    };
                    finish(&mut self.tx, &mut self.send_errors, sent, res);
                }
                _ => {} // UD_CANCEL
            }
        }
        drop(cq);
        self.tx.restore_requeued();
        self.pool.ring.publish();
        if let Some(p) = &self.gro_pool {
            p.ring.publish();
        }
        match fatal {
            Some(e) => Err(IoError::sys("recvmsg (io_uring)", e)),
            None => Ok(handed),
        }
    }

    /// Cancel the multishot ops and wait for everything in flight. True when the kernel no
    /// longer references any of our memory.
    fn quiesce(&mut self) -> bool {
        if self.disabled {
            return true; // never enabled: nothing was ever submitted
        }
        for ud in [UD_RECV, UD_RECV | 1, UD_WAKER, UD_WAKER | 1] {
            let armed = match ud {
                UD_RECV => self.recv_armed[0],
                UD_WAKER => self.waker_armed,
                x if x == UD_WAKER | 1 => self.tcp_armed,
                _ => self.recv_armed[1],
            };
            if armed {
                let e = opcode::AsyncCancel::new(ud).build().user_data(UD_CANCEL);
                if !matches!(self.push(&e), Ok(true)) {
                    return false;
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.recv_armed.contains(&true)
            || self.waker_armed
            || self.tcp_armed
            || self.tx.in_flight() > 0
        {
            let ts = Timespec::from(Duration::from_millis(50));
            let args = SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if transient(&e) || e.raw_os_error() == Some(libc::ETIME) => {}
                Err(_) => return false, // e.g. EEXIST: dropped on a thread that is not the issuer
            }
            let _ = self.drain(None);
            if Instant::now() > deadline {
                return false;
            }
        }
        let gro = match &self.gro_pool {
            Some(p) => self.ring.submitter().unregister_buf_ring(p.group).is_ok(),
            None => true,
        };
        self.ring.submitter().unregister_buf_ring(BUF_GROUP).is_ok() && gro
    }
}

/// What a send CQE completes: one transmit slot, or a segmented message's record.
#[derive(Clone, Copy, Debug)]
enum Sent {
    Slot(u32, Via),
    Record(u16),
}

fn via_bit(via: Via) -> u64 {
    match via {
        Via::Media => 0,
        Via::Relay => UD_VIA_RELAY,
    }
}

/// `IOSQE_IO_LINK` when another SQE of the same destination follows.
fn link(more: bool) -> squeue::Flags {
    if more {
        squeue::Flags::IO_LINK
    } else {
        squeue::Flags::empty()
    }
}

/// A send completed with `res`. Sent (or refused for good): its slots are free. A
/// segmented message the route refused: the destination is no longer segmented and its
/// datagrams go again one by one; cancelled behind a failed link: they go again too. Both
/// are put back at the front of the queue, in completion order, which is their order.
fn finish(tx: &mut Tx, send_errors: &mut u64, sent: Sent, res: i32) {
    let mut slots = [0u32; MAX_SEGMENTS];
    let (n, via) = match sent {
        Sent::Slot(i, via) => {
            slots[0] = i;
            (1, via)
        }
        Sent::Record(r) => {
            let (s, via) = tx.record_slots(r);
            let n = s.len().min(MAX_SEGMENTS);
            slots[..n].copy_from_slice(&s[..n]);
            (n, via)
        }
    };
    let again = match (sent, res) {
        (_, r) if r == -libc::ECANCELED => true,
        (Sent::Record(r), e) if e < 0 && gso::is_refusal(-e) => {
            tx.refuse_record(r);
            true
        }
        _ => false,
    };
    for &i in &slots[..n] {
        if again {
            tx.requeue(i, via);
        } else {
            tx.complete(i);
        }
    }
    if !again {
        if res < 0 {
            *send_errors += n as u64;
        } else {
            tx.offload_mut().sent(n);
        }
    }
    if let Sent::Record(r) = sent {
        tx.free_record(r);
    }
}

/// Hand the datagram in buffer `bid` of `pool` (`len` bytes filled) to `on_rx`; a buffer
/// the relay socket coalesced (UDP_GRO) as its segments. Returns the datagrams handed over.
#[allow(clippy::too_many_arguments)]
fn deliver(
    pool: &mut Pool,
    tx: &mut Tx,
    drops: &mut DropCounter,
    tpl: &libc::msghdr,
    bid: u16,
    len: usize,
    (at, via): (Instant, Via),
    on_rx: &mut dyn FnMut(RxEvent<'_>, &mut Tx),
) -> usize {
    let size = pool.ring.size;
    let base = pool.buf_ptr(bid);
    let (src, dst, segment, oversize, payload_len) = {
        // SAFETY: the CQE handed buffer bid (`size` bytes at `base`) to us; the kernel will
        // not write it until we recycle it, and no mutable reference exists in this block.
        let buf = unsafe { std::slice::from_raw_parts(base, size) };
        let Ok(out) = RecvMsgOut::parse(&buf[..len.min(size)], tpl) else {
            return 0;
        };
        let control = parse_control(out.control_data());
        if let Some(d) = control.drops {
            drops.observe(d);
        }
        let Some(src) = parse_sockaddr(out.name_data()) else {
            return 0;
        };
        // Only the relay's own pool coalesces; a segment size elsewhere is not trusted.
        let segment = if pool.group == GRO_BUF_GROUP {
            control.segment
        } else {
            0
        };
        let incoming = out.incoming_payload_len() as usize;
        let oversize = out.is_payload_truncated()
            || segment > MAX_DATAGRAM
            || (segment == 0 && incoming > MAX_DATAGRAM);
        (
            src,
            control.dst,
            segment,
            oversize,
            out.payload_data().len(),
        )
    };
    if oversize {
        on_rx(RxEvent::Oversize { src }, tx);
        return 1;
    }
    let end = (PAYLOAD_OFF + payload_len).min(size);
    let start = PAYLOAD_OFF.min(end);
    // SAFETY: as above; the shared borrow ended, this is the only reference until the walk
    // returns, and the buffer is recycled only after that.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(start), end - start) };
    let n = gso::walk_segments(data, segment, |data| {
        on_rx(
            RxEvent::Datagram {
                data,
                src,
                dst,
                at,
                via,
            },
            tx,
        );
    });
    tx.offload_mut().received(n);
    n
}

/// Errors of io_uring_enter that mean "try again next turn", not a broken ring.
fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

impl Drop for Uring {
    fn drop(&mut self) {
        if self.quiesce() {
            // SAFETY: quiesce confirmed no operation is in flight and the buffer ring is
            // unregistered; these fields are dropped exactly once, here.
            unsafe {
                ManuallyDrop::drop(&mut self.tx);
                ManuallyDrop::drop(&mut self.pool);
                if let Some(p) = self.gro_pool.as_mut() {
                    ManuallyDrop::drop(p);
                }
            }
        } else {
            tracing::warn!("io_uring: could not quiesce the ring on drop; leaking its buffers");
        }
    }
}

/// Whether this kernel (and seccomp policy) lets us build the io_uring engine; for tests
/// and diagnostics.
pub fn probe() -> Result<(), IoError> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| IoError::sys("bind", e))?;
    Uring::new(
        s,
        None,
        &IoConfig {
            tx_slots: 1,
            ..IoConfig::default()
        },
    )
    .map(drop)
}
