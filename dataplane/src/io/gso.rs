//! UDP segmentation offload on the send side (`UDP_SEGMENT`, "GSO") and receive offload on
//! relay sockets (`UDP_GRO`): probing, the message records a segmented send needs, the
//! destinations the kernel refused, and the counters.
//!
//! # Probing and falling back
//!
//! Support is probed once per socket at start: setting `UDP_SEGMENT` succeeds from Linux
//! 4.18 on. The option is cleared again at once, so only messages that carry a
//! `UDP_SEGMENT` control message are segmented (a socket-wide segment size would cut every
//! datagram; quinn#2575). A kernel that has the option can still refuse a segmented message
//! for one route: `EIO` when the output device lacks checksum offload (or the route is
//! IPsec), `EINVAL` on a socket that does not checksum (`SO_NO_CHECK`), `EMSGSIZE` when a
//! segment does not fit the route's MTU. quinn-udp turns GSO off for the whole socket on
//! the first `EIO`/`EINVAL`; a node sends to many routes from one socket, so here the
//! refused message is sent again as single datagrams and its destination is remembered
//! ([`Refused`]) and never segmented again, while every other destination keeps GSO.
//!
//! # Receive offload
//!
//! A relay socket with `UDP_GRO` gets runs of datagrams from one source as one buffer with
//! a `UDP_GRO` control message giving the segment size (a NIC's GRO coalesces them; on
//! loopback a `UDP_SEGMENT` sender's message arrives unsplit). The engines walk it as
//! separate datagrams. Such a buffer can be as large as one IP datagram, so the relay
//! socket's receive buffers are [`GRO_BUF`] bytes instead of one MTU.

use std::os::fd::RawFd;

use super::addr::{cmsg_space, RawAddr, TX_CMSG_LEN};
use super::raw::RawArray;
use super::segment::MAX_SEGMENTS;
use crate::via::Via;
use switchyard_shared::stats::SEGMENT_BUCKETS;

/// Receive buffer for a coalesced datagram: the largest IP datagram's payload, which is
/// what GRO builds with the kernel's default `gro_max_size` (64 KiB). A host that raised
/// it (BIG TCP) could coalesce more; such a buffer comes back truncated and is counted as
/// oversize.
pub(crate) const GRO_BUF: usize = 65_536;

/// Segmented messages in flight at once per engine (each holds an iovec per segment).
/// A `sendmmsg` batch uses them only for its duration; io_uring keeps one per submitted
/// message until its completion. 256 × ~1.4 KiB.
pub(crate) const RECORDS: usize = 256;

/// Destinations remembered as refused, direct-mapped by hash: a collision forgets one,
/// which then costs one more refused message before it is remembered again.
const REFUSED: usize = 256;

/// Send control bytes of a segmented message: the slot's source address (if any) and the
/// `UDP_SEGMENT` segment size (a u16).
const SEG_CMSG_LEN: usize = TX_CMSG_LEN + cmsg_space(2);

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct SegCmsg([u8; SEG_CMSG_LEN]);

/// Everything one segmented message hands the kernel, kept together so it outlives an
/// io_uring submission: header, one iovec per segment, control bytes, and the transmit
/// slots it covers (completed together).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Record {
    hdr: libc::msghdr,
    iovs: [libc::iovec; MAX_SEGMENTS],
    ctrl: SegCmsg,
    slots: [u32; MAX_SEGMENTS],
    count: u16,
    via: Via,
}

// SAFETY: the pointers in a Record point into arrays of the same Tx, which move with it.
unsafe impl Send for Record {}

/// The pool of [`Record`]s, allocated once.
pub(crate) struct Records {
    recs: RawArray<Record>,
    free: Vec<u16>,
}

impl Records {
    pub(crate) fn new() -> Self {
        // SAFETY: msghdr/iovec are plain C structs; all-zero is valid for every field.
        let zero: Record = unsafe { std::mem::zeroed() };
        Self {
            recs: RawArray::new(RECORDS, zero),
            free: (0..RECORDS as u16).rev().collect(),
        }
    }

    pub(crate) fn available(&self) -> bool {
        !self.free.is_empty()
    }

    /// Fill a free record with a message of `iovs` (each one datagram, all `segment` bytes
    /// but the last), to the address and source of `leader`'s header, for `slots`.
    /// `None` when every record is in use.
    ///
    /// # Safety
    ///
    /// `leader` must point at a valid, initialised msghdr of a Queued or InFlight transmit
    /// slot (its name and control pointers valid until the record is freed), and every
    /// iovec must describe such a slot's buffer.
    pub(crate) unsafe fn fill(
        &mut self,
        leader: *const libc::msghdr,
        iovs: impl ExactSizeIterator<Item = libc::iovec>,
        slots: &[u32],
        segment: u16,
        via: Via,
    ) -> Option<u16> {
        let n = iovs.len().min(MAX_SEGMENTS).min(slots.len());
        let r = self.free.pop()?;
        // SAFETY: the record is free: neither the kernel nor anyone else uses it.
        let rec = unsafe { self.recs.get_mut(usize::from(r)) };
        for (dst, iov) in rec.iovs.iter_mut().zip(iovs).take(n) {
            *dst = iov;
        }
        rec.slots[..n].copy_from_slice(&slots[..n]);
        rec.count = n as u16;
        rec.via = via;
        // SAFETY: the caller guarantees `leader` is a valid msghdr.
        let l = unsafe { *leader };
        #[allow(clippy::unnecessary_cast)] // size_t on glibc, u32 on musl
        let src_len = (l.msg_controllen as usize).min(TX_CMSG_LEN);
        rec.ctrl = SegCmsg([0; SEG_CMSG_LEN]);
        if src_len > 0 && !l.msg_control.is_null() {
            // SAFETY: the slot's control buffer holds at least msg_controllen valid bytes.
            let src = unsafe { std::slice::from_raw_parts(l.msg_control.cast::<u8>(), src_len) };
            rec.ctrl.0[..src_len].copy_from_slice(src);
        }
        let seg_len = write_segment_cmsg(&mut rec.ctrl.0[src_len..], segment);
        // SAFETY: msghdr is a plain C struct; all-zero is valid.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = l.msg_name;
        h.msg_namelen = l.msg_namelen;
        h.msg_iovlen = n as _;
        h.msg_controllen = (src_len + seg_len) as _;
        rec.hdr = h;
        // The pointers the kernel follows are derived from the array's base pointer, not
        // from the `&mut` above, so they stay valid while other code reads the record.
        let p = self.recs.ptr(usize::from(r));
        // SAFETY: p points at the record just filled; addr_of_mut creates no reference.
        unsafe {
            (*p).hdr.msg_iov = std::ptr::addr_of_mut!((*p).iovs).cast();
            (*p).hdr.msg_control = std::ptr::addr_of_mut!((*p).ctrl).cast();
        }
        Some(r)
    }

    /// The message header of record `r` (filled, not yet freed).
    pub(crate) fn hdr_ptr(&self, r: u16) -> *const libc::msghdr {
        // The header is the record's first field (repr(C)).
        self.recs.ptr(usize::from(r)).cast()
    }

    /// The slots record `r` covers and the socket it went out on.
    pub(crate) fn slots(&self, r: u16) -> (&[u32], Via) {
        if usize::from(r) >= self.recs.len() {
            return (&[], Via::Media);
        }
        // SAFETY: only the header, iovecs and control bytes are handed to the kernel, which
        // reads them; the slot list is ours alone.
        let rec = unsafe { &*self.recs.ptr(usize::from(r)) };
        (&rec.slots[..usize::from(rec.count)], rec.via)
    }

    /// The destination of record `r`'s message.
    pub(crate) fn name(&self, r: u16) -> Option<RawAddr> {
        let (slots, _) = self.slots(r);
        slots.first()?;
        // SAFETY: as in `slots`: the kernel only reads the name.
        let rec = unsafe { &*self.recs.ptr(usize::from(r)) };
        let len = (rec.hdr.msg_namelen as usize).min(std::mem::size_of::<RawAddr>());
        if rec.hdr.msg_name.is_null() {
            return None;
        }
        let mut a = RawAddr::ZERO;
        // SAFETY: msg_name points at the leader slot's address, valid until the record is
        // freed, with msg_namelen bytes.
        let src = unsafe { std::slice::from_raw_parts(rec.hdr.msg_name.cast::<u8>(), len) };
        a.0[..len].copy_from_slice(src);
        Some(a)
    }

    /// Give record `r` back (its message completed or was never sent).
    pub(crate) fn free(&mut self, r: u16) {
        debug_assert!(!self.free.contains(&r), "record {r} freed twice");
        if usize::from(r) < RECORDS {
            self.free.push(r);
        }
    }
}

/// Write the `UDP_SEGMENT` control message (segment size `segment`) at the start of `buf`;
/// returns the bytes used (`CMSG_SPACE(2)`).
fn write_segment_cmsg(buf: &mut [u8], segment: u16) -> usize {
    let w = std::mem::size_of::<usize>();
    let h = cmsg_space(0);
    let Some(b) = buf.get_mut(..cmsg_space(2)) else {
        return 0;
    };
    b.fill(0);
    b[..w].copy_from_slice(&(h + 2).to_ne_bytes());
    b[w..w + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    b[w + 4..w + 8].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    b[h..h + 2].copy_from_slice(&segment.to_ne_bytes());
    cmsg_space(2)
}

/// Whether a send error on a segmented message means "not this way to this destination"
/// (send its datagrams one by one and remember it) rather than a datagram that cannot go
/// at all.
pub(crate) fn is_refusal(errno: i32) -> bool {
    matches!(errno, libc::EIO | libc::EINVAL | libc::EMSGSIZE)
}

/// Destinations a segmented message was refused for, remembered by address.
pub(crate) struct Refused {
    entries: Box<[Option<RawAddr>]>,
}

impl Refused {
    pub(crate) fn new() -> Self {
        Self {
            entries: vec![None; REFUSED].into_boxed_slice(),
        }
    }

    fn index(a: &RawAddr) -> usize {
        (hash_addr(a) as usize) % REFUSED
    }

    pub(crate) fn insert(&mut self, a: RawAddr) {
        let i = Self::index(&a);
        self.entries[i] = Some(a);
    }

    pub(crate) fn contains(&self, a: &RawAddr) -> bool {
        self.entries[Self::index(a)].is_some_and(|e| e.0 == a.0)
    }
}

/// A fast hash of a socket address as the kernel lays it out (FxHash's multiply-rotate over
/// its 8-byte words); destinations are not attacker-chosen keys of anything but a send
/// grouping, so a keyed hash buys nothing here.
pub(crate) fn hash_addr(a: &RawAddr) -> u64 {
    let mut h = 0u64;
    for c in a.0.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_ne_bytes(w)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    h
}

/// The histogram bucket of `n` datagrams: powers of two up to a message's 64 segments, then
/// "more" (a destination batch can be larger).
fn bucket(n: u64) -> usize {
    SEGMENT_BUCKETS
        .iter()
        .position(|&b| n <= b)
        .unwrap_or(SEGMENT_BUCKETS.len())
}

/// What segmentation did, cumulative since the engine started (both sockets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadCounters {
    /// `UDP_SEGMENT` messages sent (two datagrams or more each).
    pub gso_messages: u64,
    /// Datagrams sent inside them.
    pub gso_segments: u64,
    /// Segmented messages the kernel refused and that went again one datagram each.
    pub gso_refused: u64,
    /// Messages sent (segmented or not) by datagrams they carried, bucketed by
    /// `stats::SEGMENT_BUCKETS` (the last entry: more than 64, never for messages).
    pub segments_per_message: [u64; 8],
    /// Datagrams sent on the UDP sockets (the sum of the above).
    pub datagrams: u64,
    /// Datagrams one destination had queued when a send was planned, bucketed the same
    /// way: how much segmentation could at best have joined.
    pub datagrams_per_destination: [u64; 8],
    /// The sum of the above.
    pub batched: u64,
    /// Coalesced buffers received on the relay socket (`UDP_GRO`, two segments or more).
    pub gro_buffers: u64,
    /// Datagrams walked out of them.
    pub gro_segments: u64,
}

impl OffloadCounters {
    /// A message of `count` datagrams went out.
    pub(crate) fn sent(&mut self, count: usize) {
        let c = count as u64;
        self.segments_per_message[bucket(c)] += 1;
        self.datagrams += c;
        if c > 1 {
            self.gso_messages += 1;
            self.gso_segments += c;
        }
    }

    /// A destination's `batch` datagrams were planned (the first message of its group went
    /// out). 0 is not a batch.
    pub(crate) fn batch(&mut self, batch: u16) {
        if batch > 0 {
            self.datagrams_per_destination[bucket(u64::from(batch))] += 1;
            self.batched += u64::from(batch);
        }
    }

    /// A relay-socket receive carried `segments` datagrams.
    pub(crate) fn received(&mut self, segments: usize) {
        if segments > 1 {
            self.gro_buffers += 1;
            self.gro_segments += segments as u64;
        }
    }
}

/// Whether the kernel lets `fd` segment sends: sets `UDP_SEGMENT` and clears it again.
pub(crate) fn probe_segment(fd: RawFd) -> Result<(), std::io::Error> {
    super::sockopt::set_raw(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 1200)?;
    super::sockopt::set_raw(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0)
}

/// Turn on receive offload on `fd`.
pub(crate) fn enable_gro(fd: RawFd) -> Result<(), std::io::Error> {
    super::sockopt::set_raw(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Call `each` with every segment of a received buffer `data` whose `UDP_GRO` control
/// message said `segment` bytes (the last may be shorter); the whole buffer when there was
/// none (`segment` 0). Returns the number of segments.
pub(crate) fn walk_segments(
    data: &mut [u8],
    segment: usize,
    mut each: impl FnMut(&mut [u8]),
) -> usize {
    if segment == 0 || segment >= data.len() {
        each(data);
        return 1;
    }
    let mut n = 0;
    for chunk in data.chunks_mut(segment) {
        each(chunk);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_cmsg_layout_matches_libc() {
        let mut b = [0xffu8; 32];
        let n = write_segment_cmsg(&mut b, 1200);
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space, len) = unsafe { (libc::CMSG_SPACE(2) as usize, libc::CMSG_LEN(2) as usize) };
        assert_eq!(n, space);
        let w = std::mem::size_of::<usize>();
        assert_eq!(usize::from_ne_bytes(b[..w].try_into().expect("len")), len);
        assert_eq!(
            i32::from_ne_bytes(b[w..w + 4].try_into().expect("level")),
            17
        );
        assert_eq!(
            i32::from_ne_bytes(b[w + 4..w + 8].try_into().expect("type")),
            103
        );
        assert_eq!(u16::from_ne_bytes([b[len - 2], b[len - 1]]), 1200);
        assert!(SEG_CMSG_LEN >= TX_CMSG_LEN + space);
    }

    #[test]
    fn refused_remembers_by_address() {
        let mut r = Refused::new();
        let mut a = RawAddr::ZERO;
        a.write("10.0.0.1:5000".parse().expect("addr"), false);
        let mut b = RawAddr::ZERO;
        b.write("10.0.0.1:5002".parse().expect("addr"), false);
        assert!(!r.contains(&a));
        r.insert(a);
        assert!(r.contains(&a));
        assert!(!r.contains(&b));
    }

    #[test]
    fn segments_walk_with_a_short_tail() {
        let mut data: Vec<u8> = (0..25).collect();
        let mut seen = Vec::new();
        assert_eq!(walk_segments(&mut data, 10, |s| seen.push(s.to_vec())), 3);
        assert_eq!(seen[0], (0..10).collect::<Vec<u8>>());
        assert_eq!(seen[2], (20..25).collect::<Vec<u8>>());
        seen.clear();
        assert_eq!(walk_segments(&mut data, 0, |s| seen.push(s.to_vec())), 1);
        assert_eq!(seen[0].len(), 25);
    }

    #[test]
    fn counters_bucket_by_powers_of_two() {
        let mut c = OffloadCounters::default();
        for (n, b) in [(1, 1), (9, 9), (64, 130)] {
            c.sent(n);
            c.batch(b);
        }
        assert_eq!(c.segments_per_message, [1, 0, 0, 0, 1, 0, 1, 0]);
        assert_eq!(c.datagrams_per_destination, [1, 0, 0, 0, 1, 0, 0, 1]);
        assert_eq!((c.gso_messages, c.gso_segments), (2, 73));
    }
}
