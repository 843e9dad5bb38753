//! Fallback engine: `recvmmsg`/`sendmmsg` with `MSG_DONTWAIT`, `epoll_wait` only when the
//! socket has nothing ready.
//!
//! `poll` tries a receive batch first, so a loaded worker never pays for epoll; only an
//! empty socket leads to `epoll_wait` on the sockets and the waker's eventfd. Sends the
//! socket cannot take (EAGAIN/ENOBUFS) stay queued and EPOLLOUT is watched until they drain.
//! The relay socket, when there is one, is served the same way with its own token.

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::addr::{parse_control, parse_sockaddr, CmsgBuf, RawAddr, CMSG_LEN, RAW_ADDR_LEN};
use super::batch::{send_queued, MsgHdr};
use super::raw::RawArray;
use super::tcp::{Received, Tcp};
use super::tx::Tx;
use super::waker::Waker;
use super::{gso, sockopt, DropCounter, IoConfig, IoError, RxEvent, MAX_DATAGRAM};
use crate::via::Via;

const TOKEN_SOCKET: u64 = 1;
const TOKEN_WAKER: u64 = 2;
const TOKEN_RELAY: u64 = 3;
const TOKEN_TCP: u64 = 4;

pub(crate) struct Mmsg {
    socket: UdpSocket,
    /// The worker's relay socket, if it has one.
    relay: Option<UdpSocket>,
    epoll: OwnedFd,
    waker: Waker,
    tx: Tx,
    /// Receive batches: the media socket's, and the relay socket's (larger buffers when
    /// it coalesces with UDP_GRO).
    rx: RxSet,
    relay_rx: Option<RxSet>,
    /// Send batch: copies of queued slots' headers.
    tx_hdrs: RawArray<MsgHdr>,
    /// EPOLLOUT is registered per socket ([`Via::index`]): sends wait for socket space.
    want_out: [bool; 2],
    drops: DropCounter,
    send_errors: u64,
    /// Packets read from ICE-TCP connections in one turn (`Tx::tcp`).
    tcp_rx: Received,
}

// SAFETY: the raw iovecs point into the receive sets of the same Mmsg and move with it.
unsafe impl Send for Mmsg {}

/// One recvmmsg batch: per entry a buffer of `stride` bytes, a name and a control buffer,
/// and the header pointing at them.
struct RxSet {
    bufs: RawArray<u8>,
    stride: usize,
    names: RawArray<RawAddr>,
    cmsgs: RawArray<CmsgBuf>,
    iovs: RawArray<libc::iovec>,
    hdrs: RawArray<MsgHdr>,
    /// The socket coalesces (UDP_GRO): walk each buffer's segments.
    gro: bool,
}

impl RxSet {
    fn new(n: usize, stride: usize, gro: bool) -> Self {
        // SAFETY: iovec/mmsghdr are plain C structs; all-zero is valid.
        let zero_iov: libc::iovec = unsafe { std::mem::zeroed() };
        let mut r = Self {
            bufs: RawArray::new(n * stride, 0u8),
            stride,
            names: RawArray::new(n, RawAddr::ZERO),
            cmsgs: RawArray::new(n, CmsgBuf([0; CMSG_LEN])),
            iovs: RawArray::new(n, zero_iov),
            hdrs: RawArray::new(n, MsgHdr::zeroed()),
            gro,
        };
        for i in 0..n {
            let iov = libc::iovec {
                iov_base: r.bufs.ptr(i * stride).cast(),
                iov_len: stride,
            };
            // SAFETY: nothing is in flight yet; single reference.
            unsafe { *r.iovs.get_mut(i) = iov };
            // SAFETY: nothing is in flight yet; single reference.
            let h = unsafe { r.hdrs.get_mut(i) };
            h.0.msg_hdr.msg_iov = r.iovs.ptr(i);
            h.0.msg_hdr.msg_iovlen = 1;
            h.0.msg_hdr.msg_name = r.names.ptr(i).cast();
            h.0.msg_hdr.msg_control = r.cmsgs.ptr(i).cast();
        }
        r
    }

    fn len(&self) -> usize {
        self.hdrs.len()
    }
}

/// Buffers in a relay socket's receive batch when it coalesces: each holds up to
/// [`gso::GRO_BUF`] bytes, so 16 are 1 MiB.
const GRO_BATCH: usize = 16;

impl Mmsg {
    pub(crate) fn new(
        socket: UdpSocket,
        relay: Option<UdpSocket>,
        cfg: &IoConfig,
    ) -> Result<Self, IoError> {
        for s in std::iter::once(&socket).chain(relay.as_ref()) {
            s.set_nonblocking(true)
                .map_err(|e| IoError::sys("fcntl(O_NONBLOCK)", e))?;
        }
        let v6 = sockopt::is_v6(&socket)?;
        let waker = Waker::new()?;
        // SAFETY: no pointers; result checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(IoError::last_os("epoll_create1"));
        }
        // SAFETY: a fresh descriptor we own exclusively.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        epoll_ctl(
            &epoll,
            libc::EPOLL_CTL_ADD,
            socket.as_raw_fd(),
            libc::EPOLLIN as u32,
            TOKEN_SOCKET,
        )?;
        if let Some(r) = &relay {
            epoll_ctl(
                &epoll,
                libc::EPOLL_CTL_ADD,
                r.as_raw_fd(),
                libc::EPOLLIN as u32,
                TOKEN_RELAY,
            )?;
        }
        epoll_ctl(
            &epoll,
            libc::EPOLL_CTL_ADD,
            waker.fd(),
            libc::EPOLLIN as u32,
            TOKEN_WAKER,
        )?;

        let n = cfg.rx_batch.max(1);
        let relay_gro = match &relay {
            Some(r) if cfg.relay_gro => match gso::enable_gro(r.as_raw_fd()) {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(error = %e, "relay socket: UDP_GRO unavailable");
                    false
                }
            },
            _ => false,
        };
        let relay_rx = relay.as_ref().map(|_| match relay_gro {
            true => RxSet::new(GRO_BATCH, gso::GRO_BUF, true),
            false => RxSet::new(n, MAX_DATAGRAM, false),
        });
        let mut tx = Tx::new(cfg.tx_slots, v6);
        super::probe_gso(&mut tx, &socket, relay.as_ref(), cfg);
        let m = Self {
            socket,
            relay,
            epoll,
            waker,
            tx,
            rx: RxSet::new(n, MAX_DATAGRAM, false),
            relay_rx,
            tx_hdrs: super::batch::headers(cfg.tx_slots),
            want_out: [false; 2],
            drops: DropCounter::default(),
            send_errors: 0,
            tcp_rx: Received::default(),
        };
        Ok(m)
    }

    pub(crate) fn waker(&self) -> Waker {
        self.waker.clone()
    }

    pub(crate) fn tx(&mut self) -> &mut Tx {
        &mut self.tx
    }

    pub(crate) fn kernel_drops(&self) -> u64 {
        self.drops.total()
    }

    pub(crate) fn send_errors(&self) -> u64 {
        self.send_errors
    }

    /// The socket `via` names and its epoll token; `None` for a relay socket we lack.
    fn socket(&self, via: Via) -> Option<(i32, u64)> {
        match via {
            Via::Media => Some((self.socket.as_raw_fd(), TOKEN_SOCKET)),
            Via::Relay => self.relay.as_ref().map(|r| (r.as_raw_fd(), TOKEN_RELAY)),
        }
    }

    /// Serve ICE-TCP: its epoll descriptor joins ours.
    pub(crate) fn add_tcp(&mut self, tcp: Box<Tcp>) -> Result<(), IoError> {
        epoll_ctl(
            &self.epoll,
            libc::EPOLL_CTL_ADD,
            tcp.fd(),
            libc::EPOLLIN as u32,
            TOKEN_TCP,
        )?;
        self.tcp_rx = Received::with_capacity(64 * 1024);
        self.tx.tcp = Some(tcp);
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<(), IoError> {
        if let Some(t) = self.tx.tcp.as_mut() {
            t.flush();
        }
        for via in Via::ALL {
            let Some((fd, token)) = self.socket(via) else {
                super::batch::refuse_queued(via, &mut self.tx, &mut self.send_errors);
                continue;
            };
            send_queued(
                fd,
                via,
                &mut self.tx,
                &mut self.tx_hdrs,
                &mut self.send_errors,
            )?;
            let want_out = self.tx.queued_len(via) > 0;
            if want_out != self.want_out[via.index()] {
                let ev = if want_out {
                    libc::EPOLLIN | libc::EPOLLOUT
                } else {
                    libc::EPOLLIN
                };
                epoll_ctl(&self.epoll, libc::EPOLL_CTL_MOD, fd, ev as u32, token)?;
                self.want_out[via.index()] = want_out;
            }
        }
        Ok(())
    }

    pub(crate) fn poll(
        &mut self,
        timeout: Duration,
        on_rx: &mut dyn FnMut(RxEvent<'_>, &mut Tx),
    ) -> Result<usize, IoError> {
        self.flush()?;
        let mut got = self.recv_batch(Via::Media, on_rx)?;
        if self.relay.is_some() {
            got += self.recv_batch(Via::Relay, on_rx)?;
        }
        // A busy UDP socket never lets this engine reach epoll_wait, so ICE-TCP gets a look
        // every turn (one epoll_wait of its own, with nothing to wait for).
        let mut tcp_more = false;
        if self.tx.tcp.is_some() {
            let (n, more) = super::recv_tcp(&mut self.tx, &mut self.tcp_rx, on_rx);
            got += n;
            tcp_more = more;
        }
        if got > 0 || timeout.is_zero() || tcp_more {
            return Ok(got);
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: events is a live array of 4 entries and we pass its length.
        let rc = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                4,
                timeout_ms(timeout),
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                return Ok(0);
            }
            return Err(IoError::sys("epoll_wait", err));
        }
        let mut ready = [false; 2];
        let mut tcp_ready = false;
        for ev in events.iter().take(rc as usize) {
            match ev.u64 {
                TOKEN_WAKER => self.waker.consume(),
                TOKEN_RELAY => ready[Via::Relay.index()] = true,
                TOKEN_TCP => tcp_ready = true,
                _ => ready[Via::Media.index()] = true,
            }
        }
        let mut got = 0;
        if tcp_ready {
            got += super::recv_tcp(&mut self.tx, &mut self.tcp_rx, on_rx).0;
        }
        if ready == [false; 2] {
            return Ok(got);
        }
        if self.want_out.contains(&true) {
            self.flush()?;
        }
        for via in Via::ALL {
            if ready[via.index()] {
                got += self.recv_batch(via, on_rx)?;
            }
        }
        Ok(got)
    }

    /// One recvmmsg of up to a batch of datagrams from the socket `via` names, handed to
    /// `on_rx` (a coalesced buffer as its segments). Returns the datagrams handed over.
    fn recv_batch(
        &mut self,
        via: Via,
        on_rx: &mut dyn FnMut(RxEvent<'_>, &mut Tx),
    ) -> Result<usize, IoError> {
        let Some((fd, _)) = self.socket(via) else {
            return Ok(0);
        };
        let set = match via {
            Via::Media => &mut self.rx,
            Via::Relay => match self.relay_rx.as_mut() {
                Some(r) => r,
                None => return Ok(0),
            },
        };
        let n = set.len();
        for i in 0..n {
            // SAFETY: no receive is in flight outside recvmmsg below; single reference.
            let h = unsafe { set.hdrs.get_mut(i) };
            h.0.msg_hdr.msg_namelen = RAW_ADDR_LEN as u32;
            h.0.msg_hdr.msg_controllen = CMSG_LEN as _;
            h.0.msg_hdr.msg_flags = 0;
            h.0.msg_len = 0;
        }
        let rc = loop {
            // SAFETY: the headers point at this set's buffers, names and control buffers
            // with the lengths set above; all live and unborrowed during the call.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    set.hdrs.ptr(0).cast(),
                    n as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(0),
                // Errors queued by ICMP on the socket are not ours to fail on.
                Some(libc::ECONNREFUSED) | Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => {
                    return Ok(0)
                }
                _ => return Err(IoError::sys("recvmmsg", err)),
            }
        };
        let at = Instant::now();
        let mut handed = 0;
        for i in 0..rc {
            // SAFETY: recvmmsg returned; the kernel no longer writes entry i.
            let h = unsafe { *set.hdrs.get(i) }.0;
            // SAFETY: as above.
            let cmsg = unsafe { set.cmsgs.get(i) };
            #[allow(clippy::unnecessary_cast)] // size_t on glibc, u32 on musl
            let clen = (h.msg_hdr.msg_controllen as usize).min(CMSG_LEN);
            let control = parse_control(&cmsg.0[..clen]);
            if let Some(d) = control.drops {
                self.drops.observe(d);
            }
            // SAFETY: as above.
            let name = unsafe { set.names.get(i) };
            let nlen = (h.msg_hdr.msg_namelen as usize).min(RAW_ADDR_LEN);
            let Some(src) = parse_sockaddr(&name.0[..nlen]) else {
                continue;
            };
            let len = (h.msg_len as usize).min(set.stride);
            let segment = if set.gro { control.segment } else { 0 };
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0
                || segment > MAX_DATAGRAM
                || (segment == 0 && len > MAX_DATAGRAM)
            {
                on_rx(RxEvent::Oversize { src }, &mut self.tx);
                handed += 1;
                continue;
            }
            let base = set.bufs.ptr(i * set.stride);
            // SAFETY: the kernel is done with entry i's `stride` bytes at `base`, inside the
            // allocation; no other reference to them exists while this slice lives (it ends
            // with the walk below).
            let buf = unsafe { std::slice::from_raw_parts_mut(base, len) };
            let tx = &mut self.tx;
            let segments = gso::walk_segments(buf, segment, |data| {
                on_rx(
                    RxEvent::Datagram {
                        data,
                        src,
                        dst: control.dst,
                        at,
                        via,
                    },
                    tx,
                );
            });
            self.tx.offload_mut().received(segments);
            handed += segments;
        }
        Ok(handed)
    }
}

/// epoll wants milliseconds; round up so a 0.3 ms timer does not spin, cap at i32::MAX.
fn timeout_ms(t: Duration) -> i32 {
    let ms = t.as_nanos().div_ceil(1_000_000);
    i32::try_from(ms).unwrap_or(i32::MAX)
}

fn epoll_ctl(ep: &OwnedFd, op: i32, fd: i32, events: u32, token: u64) -> Result<(), IoError> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: both fds are live; ev is a local the kernel only reads during the call.
    let rc = unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) };
    if rc < 0 {
        return Err(IoError::last_os("epoll_ctl"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_rounds_up() {
        assert_eq!(timeout_ms(Duration::ZERO), 0);
        assert_eq!(timeout_ms(Duration::from_micros(300)), 1);
        assert_eq!(timeout_ms(Duration::from_millis(5)), 5);
        assert_eq!(timeout_ms(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
