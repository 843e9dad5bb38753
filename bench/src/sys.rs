//! The few Linux calls std does not wrap: the monotonic clock the payload carries, thread
//! pinning, batched UDP I/O (recvmmsg/sendmmsg), epoll and socket buffer sizes.
//!
//! This is the only module of the bench with `unsafe`; everything above it is safe code.
//! IPv4 only: the bench talks to a node and a reflector on loopback.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Most datagrams one recvmmsg/sendmmsg call moves. 32 amortises the syscall well past the
/// point of diminishing returns and keeps the per-thread buffers at 64 KiB.
pub const MAX_BATCH: usize = 32;

/// Size of one receive buffer: larger than any datagram the bench sends (`--size` is capped
/// at 1500) so a truncated datagram means a foreign sender.
pub const RECV_BUF: usize = 2048;

/// CLOCK_MONOTONIC in nanoseconds. Both ends of a latency sample use it, so it is
/// comparable across the bench's threads (and with any process on this host).
pub fn monotonic_ns() -> u64 {
    // SAFETY: zeroed timespec is a valid value; clock_gettime only writes into it.
    let mut ts: libc::timespec = unsafe { zeroed() };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // Monotonic seconds are never negative.
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to `cores` (any of them). An empty list leaves it unpinned.
pub fn pin_current_thread(cores: &[usize]) -> io::Result<()> {
    if cores.is_empty() {
        return Ok(());
    }
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    for &c in cores {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "core index too large",
            ));
        }
        // SAFETY: `c` is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel thread id of the caller (for `/proc/self/task/TID/stat`).
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// CPU time (user + system, ns) of process `pid`, or of thread `tid` of any process when
/// `thread` is set, from the kernel's CPU-time clocks: the same quantity as utime + stime in
/// `/proc/PID/stat` but in ns instead of 10 ms ticks. None if the task is gone.
pub fn cpu_clock_ns(id: i32, thread: bool) -> Option<u64> {
    let clock: libc::clockid_t = if thread {
        // The kernel's encoding of a per-thread CPU clock (include/linux/posix-timers.h:
        // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)), what glibc's pthread_getcpuclockid
        // returns; it is ABI.
        ((!id) << 3) | 4 | 2
    } else {
        let mut c: libc::clockid_t = 0;
        // SAFETY: `c` is a valid out-pointer for one clockid_t.
        if unsafe { libc::clock_getcpuclockid(id, &mut c) } != 0 {
            return None;
        }
        c
    };
    // SAFETY: zeroed timespec is valid; clock_gettime only writes into it.
    let mut ts: libc::timespec = unsafe { zeroed() };
    // SAFETY: `ts` is a valid, writable timespec; a bad clock id only returns an error.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some((ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Clock ticks per second, the unit of utime/stime in `/proc/PID/stat`.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf with a valid name has no memory effects.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// Raises the soft open-file limit to the hard limit: a ramp opens one socket per subscriber.
pub fn raise_nofile_limit() {
    // SAFETY: zeroed rlimit is valid; getrlimit writes into it.
    let mut lim: libc::rlimit = unsafe { zeroed() };
    // SAFETY: `lim` is a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; failure only leaves the old limit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// Asks for `bytes` of receive and send buffer; the kernel caps it at rmem_max/wmem_max.
/// Best effort: a smaller buffer only means earlier drops, which the bench reports as loss.
pub fn set_socket_buffers(sock: &UdpSocket, bytes: i32) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: the fd is a live socket; the option value is an int of the size passed.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const i32).cast(),
                size_of::<i32>() as libc::socklen_t,
            )
        };
    }
}

fn to_sockaddr(addr: &SocketAddr) -> io::Result<libc::sockaddr_in> {
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
    };
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = v4.port().to_be();
    sa.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
    Ok(sa)
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    ))
}

/// Reusable receive buffers for one recvmmsg call.
pub struct RecvBatch {
    bufs: Vec<[u8; RECV_BUF]>,
    lens: [usize; MAX_BATCH],
    addrs: [libc::sockaddr_in; MAX_BATCH],
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![[0u8; RECV_BUF]; MAX_BATCH],
            lens: [0; MAX_BATCH],
            // SAFETY: all-zero is a valid sockaddr_in.
            addrs: [unsafe { zeroed() }; MAX_BATCH],
        }
    }
}

impl RecvBatch {
    /// Datagram `i` of the last receive, mutable so it can be decrypted in place.
    pub fn datagram_mut(&mut self, i: usize) -> &mut [u8] {
        let len = self.lens[i].min(RECV_BUF);
        &mut self.bufs[i][..len]
    }

    /// Datagram `i` of the last receive.
    pub fn datagram(&self, i: usize) -> &[u8] {
        let len = self.lens[i].min(RECV_BUF);
        &self.bufs[i][..len]
    }

    /// Sender of datagram `i` of the last receive.
    pub fn source(&self, i: usize) -> SocketAddr {
        from_sockaddr(&self.addrs[i])
    }

    /// Receives up to [`MAX_BATCH`] datagrams. With `wait_for_one` the call blocks (up to the
    /// socket's read timeout) for the first one; otherwise it never blocks. Returns 0 when
    /// nothing is queued (EAGAIN, EINTR or a timeout).
    pub fn recv(&mut self, sock: &UdpSocket, wait_for_one: bool) -> io::Result<usize> {
        // SAFETY: all-zero iovec/mmsghdr are valid; they are filled below.
        let mut iov: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        for i in 0..MAX_BATCH {
            iov[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iov[i].iov_len = RECV_BUF;
            hdrs[i].msg_hdr.msg_iov = &mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        let flags = if wait_for_one {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        // SAFETY: every header points at a live buffer of RECV_BUF bytes and a live
        // sockaddr_in owned by `self`/this frame, which outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                MAX_BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::Interrupted
                | io::ErrorKind::TimedOut => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (len, h) in self.lens.iter_mut().zip(&hdrs[..n]) {
            *len = h.msg_len as usize;
        }
        Ok(n)
    }
}

/// Sends each `(datagram, destination)` pair, [`MAX_BATCH`] per sendmmsg call, on a blocking
/// socket. Returns how many were sent; a send error stops the batch and is returned only if
/// nothing was sent.
pub fn send_batch(sock: &UdpSocket, msgs: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
    let mut sent = 0;
    for chunk in msgs.chunks(MAX_BATCH) {
        // SAFETY: all-zero iovec/mmsghdr/sockaddr_in are valid; they are filled below.
        let mut iov: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut names: [libc::sockaddr_in; MAX_BATCH] = unsafe { zeroed() };
        for (i, (data, dest)) in chunk.iter().enumerate() {
            names[i] = to_sockaddr(dest)?;
            // sendmmsg never writes through iov_base; the cast to *mut is what the C API wants.
            iov[i].iov_base = data.as_ptr() as *mut libc::c_void;
            iov[i].iov_len = data.len();
            hdrs[i].msg_hdr.msg_iov = &mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        let mut off = 0;
        while off < chunk.len() {
            // SAFETY: headers off..len point at the datagrams in `msgs` and the names in this
            // frame, all alive for the call.
            let n = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    hdrs.as_mut_ptr().add(off),
                    (chunk.len() - off) as libc::c_uint,
                    0,
                )
            };
            if n <= 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return if sent > 0 { Ok(sent) } else { Err(e) };
            }
            off += n as usize;
            sent += n as usize;
        }
    }
    Ok(sent)
}

/// Sends one datagram to every address in `dests` (the reflector's fan-out), with
/// [`MAX_BATCH`] destinations per sendmmsg call. Returns how many were sent.
pub fn send_to_all(sock: &UdpSocket, data: &[u8], dests: &[SocketAddr]) -> io::Result<usize> {
    let mut sent = 0;
    let mut msgs: [(&[u8], SocketAddr); MAX_BATCH] =
        [(data, SocketAddr::from(([0, 0, 0, 0], 0))); MAX_BATCH];
    for chunk in dests.chunks(MAX_BATCH) {
        for (m, d) in msgs.iter_mut().zip(chunk) {
            m.1 = *d;
        }
        sent += send_batch(sock, &msgs[..chunk.len()])?;
    }
    Ok(sent)
}

/// A level-triggered epoll set; tokens are caller-chosen indices.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` for readability, reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both descriptors are live; `ev` is a valid epoll_event.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits up to `timeout_ms` and appends ready tokens to `out` (cleared first).
    pub fn wait(&self, out: &mut Vec<u64>, timeout_ms: i32) -> io::Result<()> {
        out.clear();
        // SAFETY: all-zero epoll_event is valid.
        let mut evs: [libc::epoll_event; 64] = unsafe { zeroed() };
        // SAFETY: `evs` has room for the 64 events announced.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), evs.as_mut_ptr(), 64, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(evs[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_on_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind b");
        let dest = b.local_addr().expect("addr");
        let data = [[1u8; 10], [2u8; 10], [3u8; 10]];
        let msgs: Vec<(&[u8], SocketAddr)> = data.iter().map(|d| (&d[..], dest)).collect();
        assert_eq!(send_batch(&a, &msgs).expect("send"), 3);
        b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        let mut batch = RecvBatch::default();
        let mut got = 0;
        while got < 3 {
            let n = batch.recv(&b, true).expect("recv");
            for i in 0..n {
                assert_eq!(batch.source(i), a.local_addr().expect("addr"));
                assert_eq!(batch.datagram_mut(i).len(), 10);
            }
            got += n;
        }
    }

    #[test]
    fn cpu_clocks_read() {
        // Spin until this thread has used 4 ms of CPU (however long a loaded machine takes
        // to give it that), bounded by 30 s of wall time: the clock must read and advance.
        let start = cpu_clock_ns(gettid(), true).expect("own thread clock");
        let give_up = monotonic_ns() + 30_000_000_000;
        let mut me = start;
        while me < start + 4_000_000 && monotonic_ns() < give_up {
            me = cpu_clock_ns(gettid(), true).expect("own thread clock");
        }
        assert!(me >= start + 4_000_000, "thread CPU clock stuck at {me}");
        let proc_ = cpu_clock_ns(std::process::id() as i32, false).expect("own process clock");
        assert!(proc_ >= me);
    }

    #[test]
    fn clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}
