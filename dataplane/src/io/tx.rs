//! The send half shared by both engines: a fixed pool of TX_BUF-byte buffers, each with the
//! `msghdr`, `iovec` and destination address the kernel needs to send it.
//!
//! A slot may also carry the local address to send from ([`Tx::queue_from`]): one IP_PKTINFO
//! or IPV6_PKTINFO control message in the slot's own control buffer, so a socket bound to
//! the wildcard answers from the address the peer talks to.
//!
//! A slot goes Free → Owned (`alloc`) → Queued (`queue`) → InFlight (engine took it) →
//! Free (kernel completed it), or Owned → Free (`release`). The headers live next to the
//! buffer so they stay valid until io_uring's completion, with no allocation per send.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use super::addr::{RawAddr, TxCmsg};
use super::gso::{self, OffloadCounters, Records, Refused};
use super::raw::RawArray;
use super::segment::{Msg, Planner, Queued, MAX_SEGMENTS};
use super::tcp::{Sent, Tcp};
use super::TX_BUF;
use crate::via::Via;

/// Queued datagrams one plan covers (see `segment.rs`): far more than one turn's fan-out of
/// a frame usually queues, and bounded so the planner's scratch stays small whatever
/// `tx_slots` is.
const PLAN_WINDOW: usize = 4096;

/// Upper bound on `tx_slots`: slot indices are packed into io_uring user_data.
pub(crate) const MAX_SLOTS: usize = 1 << 20;

/// A buffer of the pool, from [`Tx::alloc`]; give it back with [`Tx::queue`] or
/// [`Tx::release`] exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxBuf(u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Owned,
    Queued,
    InFlight,
}

/// Raw send header; only ever handed to the kernel (through a pointer cast, hence
/// transparent and never read as a field).
#[derive(Clone, Copy)]
#[repr(transparent)]
#[allow(dead_code)]
pub(crate) struct Hdr(pub(crate) libc::msghdr);

// SAFETY: the pointers in a Hdr point into the same Tx's arrays, which move with it.
unsafe impl Send for Hdr {}

#[derive(Clone, Copy)]
#[repr(transparent)]
#[allow(dead_code)]
struct Iov(libc::iovec);

// SAFETY: as for Hdr, the iovec points into the owning Tx's buffer array.
unsafe impl Send for Iov {}

/// The send half: a fixed pool of `tx_slots` buffers of TX_BUF bytes, allocated once.
pub struct Tx {
    bufs: RawArray<[u8; TX_BUF]>,
    addrs: RawArray<RawAddr>,
    /// Per slot: the source-address control message, when the send has one.
    ctrls: RawArray<TxCmsg>,
    iovs: RawArray<Iov>,
    hdrs: RawArray<Hdr>,
    state: Box<[State]>,
    free: Vec<u32>,
    /// Queued sends per socket ([`Via::index`]); each socket's queue keeps its order.
    queued: [VecDeque<u32>; 2],
    /// Per socket: in-flight sends to go again, in order (`requeue`).
    requeued: [Vec<u32>; 2],
    in_flight: usize,
    v6: bool,
    /// Handed out by `buf_mut` for a buffer the caller no longer owns (a caller bug), so
    /// that bug cannot scribble over a buffer the kernel is sending.
    scratch: Box<[u8; TX_BUF]>,
    /// The worker's ICE-TCP connections: a media send to a connection's peer goes there.
    pub(crate) tcp: Option<Box<Tcp>>,
    /// Segmentation: planner, message records, refused destinations, counters.
    seg: Segmenter,
}

/// What `Tx` keeps for segmented sends (`gso.rs`, `segment.rs`).
struct Segmenter {
    planner: Planner,
    records: Records,
    /// Per socket ([`Via::index`]): segmentation on (configured and probed).
    enabled: [bool; 2],
    /// Per socket: destinations the kernel refused a segmented message for.
    refused: [Refused; 2],
    counters: OffloadCounters,
}

/// The queued slots as the planner sees them.
struct SlotView<'a> {
    addrs: &'a RawArray<RawAddr>,
    ctrls: &'a RawArray<TxCmsg>,
    iovs: &'a RawArray<Iov>,
    hdrs: &'a RawArray<Hdr>,
    enabled: bool,
    refused: &'a Refused,
}

// Every method reads slots that are Queued: written by `queue_from`, not handed to the
// kernel yet, and not written again until sent.
impl Queued for SlotView<'_> {
    fn len(&self, slot: u32) -> usize {
        // SAFETY: see above.
        unsafe { self.iovs.get(slot as usize) }.0.iov_len
    }

    fn route_hash(&self, slot: u32) -> u64 {
        // SAFETY: see above.
        gso::hash_addr(unsafe { self.addrs.get(slot as usize) })
    }

    fn same_route(&self, a: u32, b: u32) -> bool {
        let (a, b) = (a as usize, b as usize);
        // SAFETY: see above.
        let (ha, hb) = unsafe { (&self.hdrs.get(a).0, &self.hdrs.get(b).0) };
        // SAFETY: see above.
        let (aa, ab) = unsafe { (self.addrs.get(a), self.addrs.get(b)) };
        if ha.msg_namelen != hb.msg_namelen || aa.0 != ab.0 {
            return false;
        }
        if ha.msg_controllen != hb.msg_controllen {
            return false;
        }
        // SAFETY: see above.
        ha.msg_controllen == 0 || unsafe { self.ctrls.get(a).0 == self.ctrls.get(b).0 }
    }

    fn may_segment(&self, slot: u32) -> bool {
        // SAFETY: see above.
        self.enabled
            && !self
                .refused
                .contains(unsafe { self.addrs.get(slot as usize) })
    }
}

/// One message of a plan, ready for the kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Built {
    pub(crate) hdr: *const libc::msghdr,
    /// The segmented message's record (free it, or let its completion free it).
    pub(crate) record: Option<u16>,
    pub(crate) msg: Msg,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("slots", &self.state.len())
            .field("free", &self.free.len())
            .field("queued", &self.queued_total())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Tx {
    pub(crate) fn new(slots: usize, v6: bool) -> Self {
        let slots = slots.clamp(1, MAX_SLOTS);
        // SAFETY: msghdr/iovec are plain C structs for which all-zero is a valid value.
        let zero_hdr = Hdr(unsafe { std::mem::zeroed() });
        // SAFETY: as above.
        let zero_iov = Iov(unsafe { std::mem::zeroed() });
        Self {
            bufs: RawArray::new(slots, [0; TX_BUF]),
            addrs: RawArray::new(slots, RawAddr::ZERO),
            ctrls: RawArray::new(slots, TxCmsg::ZERO),
            iovs: RawArray::new(slots, zero_iov),
            hdrs: RawArray::new(slots, zero_hdr),
            state: vec![State::Free; slots].into_boxed_slice(),
            // Pop from the end: hand out low indices first (warmer cache lines).
            free: (0..slots as u32).rev().collect(),
            queued: [
                VecDeque::with_capacity(slots),
                VecDeque::with_capacity(slots),
            ],
            requeued: [Vec::with_capacity(slots), Vec::with_capacity(slots)],
            in_flight: 0,
            v6,
            scratch: Box::new([0; TX_BUF]),
            tcp: None,
            seg: Segmenter {
                planner: Planner::new(slots.min(PLAN_WINDOW)),
                records: Records::new(),
                enabled: [false; 2],
                refused: [Refused::new(), Refused::new()],
                counters: OffloadCounters::default(),
            },
        }
    }

    /// A free buffer, or None when every slot is queued or in flight (the caller counts
    /// a QueueFull drop).
    pub fn alloc(&mut self) -> Option<TxBuf> {
        let i = self.free.pop()?;
        self.state[i as usize] = State::Owned;
        Some(TxBuf(i))
    }

    fn owned(&self, b: TxBuf) -> bool {
        self.state.get(b.0 as usize) == Some(&State::Owned)
    }

    /// The bytes of an owned buffer. A buffer already queued or released gets a scratch
    /// buffer instead (a caller bug, caught by a debug assertion).
    pub fn buf_mut(&mut self, b: TxBuf) -> &mut [u8; TX_BUF] {
        if !self.owned(b) {
            debug_assert!(false, "buf_mut on a TxBuf not owned by the caller: {b:?}");
            return &mut self.scratch;
        }
        // SAFETY: the slot is Owned, so no send of it is queued or in flight (the kernel does
        // not touch it) and the &mut self borrow makes this the only reference.
        unsafe { self.bufs.get_mut(b.0 as usize) }
    }

    /// Queue `len` bytes of `b` for `dst` from the media socket; sent at the next
    /// flush/poll. `len` is clamped to TX_BUF.
    pub fn queue(&mut self, b: TxBuf, len: usize, dst: SocketAddr) {
        self.queue_via(b, len, dst, Via::Media);
    }

    /// [`Tx::queue`] from the socket `via` names. An engine without a relay socket
    /// refuses relay sends when it submits them (counted as send errors).
    pub fn queue_via(&mut self, b: TxBuf, len: usize, dst: SocketAddr, via: Via) {
        self.queue_from(b, len, dst, via, None);
    }

    /// [`Tx::queue_via`] from local address `src` (IP_PKTINFO / IPV6_PKTINFO), or from
    /// whatever address the kernel picks when `None`. Give it the `dst` the peer's datagram
    /// came to: a peer that sent to one of the host's addresses discards an answer from
    /// another. An IPv4 source on an IPv6 socket goes v4-mapped; an IPv6 source on an IPv4
    /// socket cannot be expressed and the datagram goes without one. The kernel refuses
    /// (counted in send errors) a source that is not a local address.
    pub fn queue_from(
        &mut self,
        b: TxBuf,
        len: usize,
        dst: SocketAddr,
        via: Via,
        src: Option<IpAddr>,
    ) {
        if !self.owned(b) {
            debug_assert!(false, "queue of a TxBuf not owned by the caller: {b:?}");
            return;
        }
        debug_assert!(len <= TX_BUF, "queue len {len} > TX_BUF");
        let i = b.0 as usize;
        let len = len.min(TX_BUF);
        if via == Via::Media {
            if let Some(tcp) = self.tcp.as_mut() {
                // SAFETY: the slot is Owned (checked above): the kernel does not touch it.
                let data = unsafe { self.bufs.get(i) };
                if tcp.send(dst, &data[..len]) != Sent::NotTcp {
                    // Framed into the connection's buffer (or dropped and counted there).
                    self.state[i] = State::Free;
                    self.free.push(b.0);
                    return;
                }
            }
        }
        // SAFETY: the slot is Owned: neither its address, iovec nor header is in use by the
        // kernel, and &mut self makes these the only references.
        let namelen = unsafe { self.addrs.get_mut(i) }.write(dst, self.v6);
        let iov = libc::iovec {
            iov_base: self.bufs.ptr(i).cast(),
            iov_len: len,
        };
        // SAFETY: as above.
        unsafe { *self.iovs.get_mut(i) = Iov(iov) };
        // SAFETY: msghdr is a plain C struct; all-zero is valid (no control data, flags 0).
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = self.addrs.ptr(i).cast();
        h.msg_namelen = namelen;
        h.msg_iov = self.iovs.ptr(i).cast();
        h.msg_iovlen = 1;
        if let Some(src) = src {
            // SAFETY: as above.
            if let Some(n) = unsafe { self.ctrls.get_mut(i) }.write(src, self.v6) {
                h.msg_control = self.ctrls.ptr(i).cast();
                h.msg_controllen = n as _;
            }
        }
        // SAFETY: as above.
        unsafe { *self.hdrs.get_mut(i) = Hdr(h) };
        self.state[i] = State::Queued;
        // Cannot reallocate: at most `slots` indices are ever queued (per queue).
        self.queued[via.index()].push_back(b.0);
    }

    /// Give back a buffer that will not be sent.
    pub fn release(&mut self, b: TxBuf) {
        if !self.owned(b) {
            debug_assert!(false, "release of a TxBuf not owned by the caller: {b:?}");
            return;
        }
        self.state[b.0 as usize] = State::Free;
        self.free.push(b.0);
    }

    /// Convenience: alloc + copy + queue; false when no slot was free (or `data` is longer
    /// than TX_BUF).
    pub fn send_copy(&mut self, data: &[u8], dst: SocketAddr) -> bool {
        if data.len() > TX_BUF {
            return false;
        }
        let Some(b) = self.alloc() else {
            return false;
        };
        self.buf_mut(b)[..data.len()].copy_from_slice(data);
        self.queue(b, data.len(), dst);
        true
    }

    // ---- engine side ----

    /// Sends queued on either socket.
    pub(crate) fn queued_total(&self) -> usize {
        self.queued[0].len() + self.queued[1].len()
    }

    pub(crate) fn queued_len(&self, via: Via) -> usize {
        self.queued[via.index()].len()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Take the oldest send queued on `via`; the engine now owns it until `complete`.
    pub(crate) fn pop_queued(&mut self, via: Via) -> Option<u32> {
        let i = self.queued[via.index()].pop_front()?;
        self.state[i as usize] = State::InFlight;
        self.in_flight += 1;
        Some(i)
    }

    /// The `n`-th send queued on `via` (not taken).
    #[cfg(test)]
    pub(crate) fn peek_queued(&self, via: Via, n: usize) -> Option<u32> {
        self.queued[via.index()].get(n).copied()
    }

    /// Pointer to slot `i`'s send header, valid while the slot is Queued or InFlight.
    pub(crate) fn hdr_ptr(&self, i: u32) -> *const libc::msghdr {
        self.hdrs.ptr(i as usize).cast()
    }

    /// Segment sends on the socket `via` names (its kernel passed the probe).
    pub(crate) fn set_gso(&mut self, via: Via, on: bool) {
        self.seg.enabled[via.index()] = on;
    }

    pub(crate) fn gso_enabled(&self, via: Via) -> bool {
        self.seg.enabled[via.index()]
    }

    pub(crate) fn offload(&self) -> OffloadCounters {
        self.seg.counters
    }

    pub(crate) fn offload_mut(&mut self) -> &mut OffloadCounters {
        &mut self.seg.counters
    }

    /// Plan the front of the queue on `via` into messages (`segment.rs`): the queue's first
    /// slots are reordered by destination in place. Returns the number of messages;
    /// [`Tx::planned`] gives each. Sends queued later are not covered until the next plan.
    pub(crate) fn plan(&mut self, via: Via) -> usize {
        let v = via.index();
        let view = SlotView {
            addrs: &self.addrs,
            ctrls: &self.ctrls,
            iovs: &self.iovs,
            hdrs: &self.hdrs,
            enabled: self.seg.enabled[v],
            refused: &self.seg.refused[v],
        };
        self.seg.planner.plan(self.queued[v].iter().copied(), &view);
        for (q, &slot) in self.queued[v].iter_mut().zip(self.seg.planner.order()) {
            *q = slot;
        }
        self.seg.planner.msgs().len()
    }

    /// Message `k` of the last plan.
    pub(crate) fn planned(&self, k: usize) -> Option<Msg> {
        self.seg.planner.msgs().get(k).copied()
    }

    /// The header for message `msg`, whose slots are the queue's (on `via`) from position
    /// `at`: the slot's own for a single datagram, a filled record for a segmented one.
    /// `None` when no record is free (send it later, or one by one).
    pub(crate) fn build(&mut self, via: Via, at: usize, msg: Msg) -> Option<Built> {
        let q = &self.queued[via.index()];
        let first = *q.get(at)?;
        if msg.count <= 1 {
            return Some(Built {
                hdr: self.hdr_ptr(first),
                record: None,
                msg,
            });
        }
        let n = usize::from(msg.count).min(MAX_SEGMENTS);
        let mut slots = [0u32; MAX_SEGMENTS];
        for (k, s) in slots.iter_mut().enumerate().take(n) {
            *s = *q.get(at + k)?;
        }
        let iovs = &self.iovs;
        // SAFETY: every slot is Queued: its header, address, control bytes, iovec and
        // buffer are initialised and stay untouched until it completes (the record is freed
        // before or at that point).
        let r = unsafe {
            self.seg.records.fill(
                self.hdr_ptr(first),
                slots[..n].iter().map(|&s| iovs.get(s as usize).0),
                &slots[..n],
                msg.segment,
                via,
            )
        }?;
        Some(Built {
            hdr: self.seg.records.hdr_ptr(r),
            record: Some(r),
            msg,
        })
    }

    /// Whether a segmented message could be built now.
    pub(crate) fn record_available(&self) -> bool {
        self.seg.records.available()
    }

    /// A record's message is done with (sent, or dropped before sending).
    pub(crate) fn free_record(&mut self, r: u16) {
        self.seg.records.free(r);
    }

    /// The slots of record `r` and its socket.
    pub(crate) fn record_slots(&self, r: u16) -> (&[u32], Via) {
        self.seg.records.slots(r)
    }

    /// The kernel refused record `r`'s segmented message: never segment to its destination
    /// again on that socket.
    pub(crate) fn refuse_record(&mut self, r: u16) {
        let (_, via) = self.seg.records.slots(r);
        if let Some(a) = self.seg.records.name(r) {
            self.seg.refused[via.index()].insert(a);
        }
        self.seg.counters.gso_refused += 1;
    }

    /// The message at the queue's front on `via` was refused as a segmented message: never
    /// segment to its destination again on that socket (the next plan sends it one datagram
    /// per message).
    pub(crate) fn refuse_front(&mut self, via: Via) {
        let Some(&i) = self.queued[via.index()].front() else {
            return;
        };
        // SAFETY: the slot is Queued: written, and not in the kernel's hands.
        let a = *unsafe { self.addrs.get(i as usize) };
        self.seg.refused[via.index()].insert(a);
        self.seg.counters.gso_refused += 1;
    }

    /// In-flight slot `i` goes again (its segmented message was refused, or its send was
    /// cancelled behind one): collected in call order, and put back at the front of the
    /// queue on `via` by [`Tx::restore_requeued`], ahead of anything queued since it was
    /// taken.
    pub(crate) fn requeue(&mut self, i: u32, via: Via) {
        if self.state.get(i as usize) != Some(&State::InFlight) {
            debug_assert!(false, "requeue of slot {i} not in flight");
            return;
        }
        self.state[i as usize] = State::Queued;
        self.in_flight -= 1;
        // Cannot reallocate: a slot is in one of the queue and this list, never both.
        self.requeued[via.index()].push(i);
    }

    /// Put the slots given to [`Tx::requeue`] back at the front of their queues, in the
    /// order they were given.
    pub(crate) fn restore_requeued(&mut self) {
        for v in 0..2 {
            while let Some(i) = self.requeued[v].pop() {
                self.queued[v].push_front(i);
            }
        }
    }

    /// The kernel is done with slot `i` (sent or refused): free it.
    pub(crate) fn complete(&mut self, i: u32) {
        if self.state.get(i as usize) != Some(&State::InFlight) {
            debug_assert!(false, "completion for slot {i} not in flight");
            return;
        }
        self.state[i as usize] = State::Free;
        self.in_flight -= 1;
        self.free.push(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst() -> SocketAddr {
        "127.0.0.1:9".parse().expect("addr")
    }

    #[test]
    fn pool_exhausts_and_recovers() {
        let mut tx = Tx::new(2, false);
        let a = tx.alloc().expect("a");
        let b = tx.alloc().expect("b");
        assert_eq!(tx.alloc(), None);
        tx.release(a);
        tx.buf_mut(b)[0] = 7;
        tx.queue(b, 1, dst());
        let c = tx.alloc().expect("released slot comes back");
        assert_eq!(tx.alloc(), None);
        let i = tx.pop_queued(Via::Media).expect("queued");
        assert_eq!(i, b.0);
        assert_eq!(tx.in_flight(), 1);
        tx.complete(i);
        assert!(tx.alloc().is_some());
        tx.release(c);
    }

    #[test]
    fn header_points_at_slot() {
        let mut tx = Tx::new(4, false);
        assert!(tx.send_copy(b"hello", dst()));
        let i = tx.peek_queued(Via::Media, 0).expect("queued");
        // SAFETY: the slot is queued and we only read the header we just wrote.
        let h = unsafe { &*tx.hdr_ptr(i) };
        assert_eq!(h.msg_iovlen, 1);
        assert_eq!(h.msg_namelen, 16);
        // SAFETY: msg_iov points at the slot's iovec, initialised by queue.
        let iov = unsafe { &*h.msg_iov };
        assert_eq!(iov.iov_len, 5);
        // SAFETY: iov_base points at the slot's buffer with at least iov_len bytes.
        let data = unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len) };
        assert_eq!(data, b"hello");
    }

    #[test]
    fn sockets_queue_separately_in_order() {
        let mut tx = Tx::new(4, false);
        for (k, via) in [Via::Relay, Via::Media, Via::Relay].into_iter().enumerate() {
            let b = tx.alloc().expect("slot");
            tx.buf_mut(b)[0] = k as u8;
            tx.queue_via(b, 1, dst(), via);
        }
        assert_eq!(tx.queued_len(Via::Relay), 2);
        assert_eq!(tx.queued_len(Via::Media), 1);
        assert_eq!(tx.queued_total(), 3);
        let first = tx.pop_queued(Via::Relay).expect("relay");
        let second = tx.pop_queued(Via::Relay).expect("relay");
        assert!(first < second, "relay sends keep their order");
        assert_eq!(tx.pop_queued(Via::Relay), None);
        for i in [first, second] {
            tx.complete(i);
        }
    }

    #[test]
    fn source_address_rides_in_the_slot() {
        let mut tx = Tx::new(2, false);
        let b = tx.alloc().expect("slot");
        tx.queue_from(
            b,
            1,
            dst(),
            Via::Media,
            Some("127.0.0.2".parse().expect("ip")),
        );
        let i = tx.pop_queued(Via::Media).expect("queued");
        // SAFETY: the slot is in flight and only read here.
        let h = unsafe { &*tx.hdr_ptr(i) };
        assert!(!h.msg_control.is_null());
        // CMSG_SPACE(sizeof(in_pktinfo)) on a v4 socket.
        #[allow(clippy::unnecessary_cast)] // size_t on glibc, u32 on musl
        let clen = h.msg_controllen as usize;
        assert_eq!(clen, super::super::addr::cmsg_space(12));
        tx.complete(i);
        // The slot is reused without a source: no control message left over.
        let b = tx.alloc().expect("slot");
        tx.queue(b, 1, dst());
        let i = tx.pop_queued(Via::Media).expect("queued");
        // SAFETY: as above.
        let h = unsafe { &*tx.hdr_ptr(i) };
        assert!(h.msg_control.is_null());
        assert_eq!(h.msg_controllen, 0);
        tx.complete(i);
    }

    #[test]
    fn oversized_send_copy_is_refused() {
        let mut tx = Tx::new(1, false);
        assert!(!tx.send_copy(&[0; TX_BUF + 1], dst()));
        assert!(tx.alloc().is_some(), "slot not leaked");
    }
}
