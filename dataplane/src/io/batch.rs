//! Sending the transmit queue with `sendmmsg(2)`: both engines use it. The uring engine
//! takes this path first and hands io_uring only what the socket could not take at once.
//!
//! Why not one SENDMSG SQE per datagram: a fan-out turns one received packet into hundreds
//! of sends. Measured on the development VM (docs/performance.md), per-SQE SENDMSG cost
//! ~10 % more CPU per forwarded packet than sendmmsg batches of the same datagrams, and one
//! worker lost packets at 200k packets/s where sendmmsg kept up.

use std::os::fd::RawFd;

use super::raw::RawArray;
use super::tx::Tx;
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
/// that queue is empty or the socket is full. A datagram the kernel refuses (unreachable,
/// bad address) is dropped and counted in `send_errors`; it never blocks the ones behind it.
pub(crate) fn send_queued(
    fd: RawFd,
    via: Via,
    tx: &mut Tx,
    hdrs: &mut RawArray<MsgHdr>,
    send_errors: &mut u64,
) -> Result<Sent, IoError> {
    while tx.queued_len(via) > 0 {
        let n = tx.queued_len(via).min(hdrs.len());
        for k in 0..n {
            let Some(i) = tx.peek_queued(via, k) else {
                break;
            };
            // SAFETY: slot i is Queued, so its header is initialised and not written; the
            // copy keeps pointing at the slot's iovec and address.
            let h = unsafe { *tx.hdr_ptr(i) };
            // SAFETY: hdrs is only used inside this function, synchronously.
            unsafe {
                *hdrs.get_mut(k) = MsgHdr(libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                })
            };
        }
        // SAFETY: hdrs[0..n] are valid mmsghdrs whose pointers reference queued Tx slots,
        // which stay untouched for the duration of the call.
        let rc = unsafe { libc::sendmmsg(fd, hdrs.ptr(0).cast(), n as u32, libc::MSG_DONTWAIT) };
        if rc >= 0 {
            for _ in 0..rc {
                if let Some(i) = tx.pop_queued(via) {
                    tx.complete(i);
                }
            }
            continue;
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // The socket is full: keep the rest for later, never block.
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) => return Ok(Sent::Blocked),
            Some(libc::EBADF) | Some(libc::ENOTSOCK) | Some(libc::EFAULT) => {
                return Err(IoError::sys("sendmmsg", err))
            }
            // The first message was refused (unreachable, bad address, ...): drop it.
            _ => {
                *send_errors += 1;
                if let Some(i) = tx.pop_queued(via) {
                    tx.complete(i);
                }
            }
        }
    }
    Ok(Sent::Drained)
}

/// Drop everything queued on `via` (an engine without that socket), counting each as a
/// refused send so a misrouted datagram is visible in `send_errors` and never leaks a slot.
pub(crate) fn refuse_queued(via: Via, tx: &mut Tx, send_errors: &mut u64) {
    while let Some(i) = tx.pop_queued(via) {
        *send_errors += 1;
        tx.complete(i);
    }
}
