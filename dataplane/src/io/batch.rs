//! Sending the transmit queue with `sendmmsg(2)`: both engines use it. The uring engine
//! takes this path first and hands io_uring only what the socket could not take at once.
//!
//! Why not one SENDMSG SQE per datagram: a fan-out turns one received packet into hundreds
//! of sends. Measured on the development VM (docs/performance.md), per-SQE SENDMSG cost
//! ~10 % more CPU per forwarded packet than sendmmsg batches of the same datagrams, and one
//! worker lost packets at 200k packets/s where sendmmsg kept up.

use std::os::fd::RawFd;

use super::gso;
use super::raw::RawArray;
use super::tx::{Built, Tx};
use super::IoError;
use crate::via::Via;

/// `mmsghdr` holding pointers into a [`Tx`]'s arrays.
#[derive(Clone, Copy)]
pub(crate) struct MsgHdr(pub(crate) libc::mmsghdr);

// SAFETY: the pointers point into arrays owned by the same engine, which move with it.
unsafe impl Send for MsgHdr {}

impl MsgHdr {
    pub(crate) fn zeroed() -> Self {
        // SAFETY: mmsghdr is a plain C struct; all-zero is valid.
        MsgHdr(unsafe { std::mem::zeroed() })
    }
}

/// Scratch headers for one `sendmmsg` call.
pub(crate) fn headers(tx_slots: usize) -> RawArray<MsgHdr> {
    RawArray::new(tx_slots.clamp(1, 1024), MsgHdr::zeroed())
}

/// How a [`send_queued`] call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Everything queued went out (or was refused and counted).
    Drained,
    /// The socket buffer is full; the rest stays queued.
    Blocked,
}

/// Send the datagrams queued on `via` from socket `fd` with `sendmmsg(MSG_DONTWAIT)` until
/// that queue is empty or the socket is full. The queue is planned first (`segment.rs`):
/// each destination's datagrams go as `UDP_SEGMENT` messages where the socket allows it,
/// many destinations per call. A datagram the kernel refuses (unreachable, bad address) is
/// dropped and counted in `send_errors`; it never blocks the ones behind it. A segmented
/// message the kernel refuses goes again one datagram per message, and its destination is
/// never segmented again (`gso.rs`).
pub(crate) fn send_queued(
    fd: RawFd,
    via: Via,
    tx: &mut Tx,
    hdrs: &mut RawArray<MsgHdr>,
    send_errors: &mut u64,
) -> Result<Sent, IoError> {
    // Per header of the current call: the message it carries (records to free, slots to
    // pop). Bounded by the header array; on the stack to stay allocation-free.
    let cap = hdrs.len().min(MAX_CALL);
    let mut built: [Option<Built>; MAX_CALL] = [None; MAX_CALL];
    'plan: while tx.queued_len(via) > 0 {
        let msgs = tx.plan(via);
        let mut next = 0usize; // next message of the plan; its slots start the queue
        while next < msgs {
            // Build headers for messages next.. while there is room and records last.
            let mut n = 0usize;
            let mut at = 0usize;
            while n < cap && next + n < msgs {
                let Some(msg) = tx.planned(next + n) else {
                    break;
                };
                let Some(b) = tx.build(via, at, msg) else {
                    break; // records used up: send what is built, the rest next call
                };
                // SAFETY: b.hdr points at a valid msghdr (the slot's own or its record's)
                // that stays untouched until this call ends; hdrs is ours alone here.
                unsafe {
                    *hdrs.get_mut(n) = MsgHdr(libc::mmsghdr {
                        msg_hdr: *b.hdr,
                        msg_len: 0,
                    })
                };
                built[n] = Some(b);
                at += usize::from(msg.count);
                n += 1;
            }
            if n == 0 {
                break 'plan; // cannot happen (a message of one needs no record); never spin
            }
            // SAFETY: hdrs[0..n] are valid mmsghdrs whose pointers reference queued Tx slots
            // and their records, which stay untouched for the duration of the call.
            let rc =
                unsafe { libc::sendmmsg(fd, hdrs.ptr(0).cast(), n as u32, libc::MSG_DONTWAIT) };
            let err = (rc < 0).then(std::io::Error::last_os_error);
            let sent = if rc > 0 { rc as usize } else { 0 };
            for b in built.iter_mut().take(n) {
                if let Some(r) = b.and_then(|b| b.record) {
                    tx.free_record(r);
                }
            }
            for b in built.iter_mut().take(sent) {
                if let Some(b) = b.take() {
                    tx.offload_mut().sent(usize::from(b.msg.count));
                    tx.offload_mut().batch(b.msg.batch);
                    complete_front(tx, via, b.msg.count);
                }
            }
            built.iter_mut().take(n).for_each(|b| *b = None);
            next += sent;
            let Some(err) = err else {
                continue;
            };
            let Some(msg) = tx.planned(next) else {
                break;
            };
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // The socket is full: keep the rest for later, never block.
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => return Ok(Sent::Blocked),
                Some(libc::EBADF) | Some(libc::ENOTSOCK) | Some(libc::EFAULT) => {
                    return Err(IoError::sys("sendmmsg", err))
                }
                Some(e) if msg.count > 1 && gso::is_refusal(e) => {
                    // Not segmented to this destination: plan again, one datagram each.
                    tx.refuse_front(via);
                    continue 'plan;
                }
                // The first message was refused (unreachable, bad address, ...): drop it.
                _ => {
                    *send_errors += u64::from(msg.count);
                    complete_front(tx, via, msg.count);
                    next += 1;
                }
            }
        }
    }
    Ok(Sent::Drained)
}

/// Most messages one `sendmmsg` call of [`send_queued`] carries: the kernel's own cap
/// (`UIO_MAXIOV`) is 1024.
const MAX_CALL: usize = 1024;

/// The first `count` slots queued on `via` were sent (or dropped): free them.
fn complete_front(tx: &mut Tx, via: Via, count: u16) {
    for _ in 0..count {
        if let Some(i) = tx.pop_queued(via) {
            tx.complete(i);
        }
    }
}

/// Drop everything queued on `via` (an engine without that socket), counting each as a
/// refused send so a misrouted datagram is visible in `send_errors` and never leaks a slot.
pub(crate) fn refuse_queued(via: Via, tx: &mut Tx, send_errors: &mut u64) {
    while let Some(i) = tx.pop_queued(via) {
        *send_errors += 1;
        tx.complete(i);
    }
}
