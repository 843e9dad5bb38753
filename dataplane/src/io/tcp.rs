//! ICE-TCP for one worker (RFC 6544 passive host candidates, RFC 4571 framing): a listener
//! on the worker's media port and the connections peers whose UDP is blocked open to it.
//!
//! The engine above does not know TCP exists. A packet that arrives on a connection is
//! handed up as a datagram from the connection's peer address, to its local address; a
//! packet the engine sends to an address that is a live connection's peer goes out on that
//! connection ([`Tcp::send`]) instead of the UDP socket. ICE-lite, DTLS and SRTP run as they
//! do for UDP, including the rule that media only goes to an address that answered the
//! node's own check: an ICE-TCP candidate pair is verified like any other.
//!
//! A connection must never stall the worker:
//!
//! - every socket is non-blocking, and [`Tcp::poll`] reads at most [`READ_BUDGET`] bytes per
//!   call over all connections (level-triggered epoll reports the rest next time);
//! - each connection has an output buffer of `out_buffer` bytes, allocated at accept; a
//!   packet that does not fit is dropped and counted (`out_dropped`), which is what UDP
//!   would do to a peer that cannot keep up, and TCP's own retransmission is not repeated;
//! - at most `max_connections` connections per worker and [`MAX_PER_IP`] per peer address;
//!   more are accepted and closed at once (`refused`), and a connection that has delivered
//!   no packet for `idle` is closed (the consent timeout of RFC 7675 for UDP).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::framing::{frame, Deframer};
use super::IoError;

/// Bytes read from all connections per [`Tcp::poll`], so a fast sender cannot keep the
/// worker from its UDP socket.
pub(crate) const READ_BUDGET: usize = 256 * 1024;

/// Connections from one peer IP address at once, so one host cannot take every slot. A
/// browser opens one per candidate pair, but the networks that need ICE-TCP put a whole
/// office behind one NAT address, so this is a quarter of the default cap, not a handful.
pub(crate) const MAX_PER_IP: usize = 256;

/// Epoll events taken per wait.
const EVENTS: usize = 64;

/// Token of the listener; connection slot `i` has token `i + 1`.
const LISTENER: u64 = 0;

/// Limits of one worker's ICE-TCP side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Output buffer per connection, bytes.
    pub out_buffer: usize,
    /// A connection that delivers no packet for this long is closed.
    pub idle: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            out_buffer: 256 * 1024,
            idle: Duration::from_secs(30),
        }
    }
}

/// What the TCP side counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    pub accepted: u64,
    /// Accepted and closed at once: over `max_connections` or [`MAX_PER_IP`].
    pub refused: u64,
    /// Closed by the peer, by an error, or for being idle.
    pub closed: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    /// Packets dropped because the connection's output buffer was full.
    pub out_dropped: u64,
    /// Frames longer than the worker accepts, skipped.
    pub oversize: u64,
}

/// What [`Tcp::send`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Queued on the connection to that peer.
    Queued,
    /// That peer has a connection, but its output buffer is full: dropped and counted.
    Dropped,
    /// No connection to that peer: the caller sends over UDP.
    NotTcp,
}

/// Packets read by one [`Tcp::poll`]: their bytes back to back, and who sent each to where.
/// Reused across polls; its buffers only grow past their first size on a burst of tiny
/// frames.
#[derive(Debug, Default)]
pub(crate) struct Received {
    data: Vec<u8>,
    meta: Vec<(SocketAddr, SocketAddr, usize, usize)>,
}

impl Received {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            meta: Vec::with_capacity(bytes / 64),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.meta.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.meta.len()
    }

    /// Packet `i`: its bytes, its sender (the connection's peer) and the local address it
    /// came to.
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<(&mut [u8], SocketAddr, SocketAddr)> {
        let &(src, local, start, len) = self.meta.get(i)?;
        let data = self.data.get_mut(start..start + len)?;
        Some((data, src, local))
    }
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    rx: Deframer,
    /// Framed packets not yet written; `out[sent..]` is pending.
    out: Vec<u8>,
    sent: usize,
    /// In [`Tcp::dirty`]: has bytes to write at the next flush.
    dirty: bool,
    /// EPOLLOUT is registered: the socket was full.
    want_out: bool,
    last_rx: Instant,
}

/// One worker's ICE-TCP listener and connections. Its epoll descriptor ([`Tcp::fd`]) is
/// readable when a connection is waiting to be accepted, has data, or can take more.
pub(crate) struct Tcp {
    listener: TcpListener,
    epoll: OwnedFd,
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    /// Slots closed during this poll, reused only after it: an event for the old connection
    /// later in the same batch must not reach a new one.
    closed: Vec<u32>,
    by_peer: HashMap<SocketAddr, u32>,
    per_ip: HashMap<IpAddr, usize>,
    dirty: Vec<u32>,
    read_buf: Box<[u8; 16 * 1024]>,
    limits: TcpLimits,
    counters: TcpCounters,
    next_sweep: Option<Instant>,
}

impl std::fmt::Debug for Tcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tcp")
            .field("connections", &self.by_peer.len())
            .field("counters", &self.counters)
            .finish()
    }
}

/// IPv4-mapped IPv6 addresses as plain IPv4, as the UDP engines report them.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

impl Tcp {
    /// Serve `listener` (already bound and listening).
    pub(crate) fn new(listener: TcpListener, limits: TcpLimits) -> Result<Self, IoError> {
        listener
            .set_nonblocking(true)
            .map_err(|e| IoError::sys("fcntl(O_NONBLOCK)", e))?;
        // SAFETY: no pointers; result checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(IoError::last_os("epoll_create1"));
        }
        // SAFETY: a fresh descriptor we own exclusively.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        let tcp = Self {
            listener,
            epoll,
            slots: Vec::new(),
            free: Vec::new(),
            closed: Vec::new(),
            by_peer: HashMap::new(),
            per_ip: HashMap::new(),
            dirty: Vec::new(),
            read_buf: Box::new([0; 16 * 1024]),
            limits: TcpLimits {
                max_connections: limits.max_connections.max(1),
                out_buffer: limits.out_buffer.max(4096),
                ..limits
            },
            counters: TcpCounters::default(),
            next_sweep: None,
        };
        tcp.ctl(
            libc::EPOLL_CTL_ADD,
            tcp.listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER,
        )?;
        Ok(tcp)
    }

    /// The descriptor to wait on (epoll, readable when there is work).
    pub(crate) fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub(crate) fn counters(&self) -> TcpCounters {
        self.counters
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.by_peer.len()
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> Result<(), IoError> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(IoError::last_os("epoll_ctl"));
        }
        Ok(())
    }

    /// Queue `packet` for `to` if `to` is the peer of a connection. Written at the next
    /// [`Tcp::flush`] (or [`Tcp::poll`]).
    pub(crate) fn send(&mut self, to: SocketAddr, packet: &[u8]) -> Sent {
        if self.by_peer.is_empty() {
            return Sent::NotTcp;
        }
        let Some(&i) = self.by_peer.get(&to) else {
            return Sent::NotTcp;
        };
        let cap = self.limits.out_buffer;
        let Some(c) = self.slots.get_mut(i as usize).and_then(Option::as_mut) else {
            return Sent::NotTcp;
        };
        let need = packet.len() + 2;
        if c.out.len() + need > cap && c.sent > 0 {
            c.out.drain(..c.sent);
            c.sent = 0;
        }
        if c.out.len() + need > cap || frame(packet, &mut c.out).is_none() {
            self.counters.out_dropped += 1;
            return Sent::Dropped;
        }
        self.counters.packets_out += 1;
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(i);
        }
        Sent::Queued
    }

    /// Write what [`Tcp::send`] queued, as far as each socket takes it now; the rest waits
    /// for EPOLLOUT.
    pub(crate) fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            if let Some(c) = self.slots.get_mut(i as usize).and_then(Option::as_mut) {
                c.dirty = false;
            }
            self.write_out(i);
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            // Keep the allocation.
            self.dirty = dirty;
        }
        self.reuse_closed();
    }

    fn write_out(&mut self, i: u32) {
        let Some(c) = self.slots.get_mut(i as usize).and_then(Option::as_mut) else {
            return;
        };
        let mut failed = false;
        while c.sent < c.out.len() {
            match c.stream.write(&c.out[c.sent..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            return self.close(i);
        }
        if c.sent == c.out.len() {
            c.out.clear();
            c.sent = 0;
        }
        let want_out = c.sent < c.out.len() || !c.out.is_empty();
        if want_out != c.want_out {
            c.want_out = want_out;
            let events = libc::EPOLLIN as u32 | if want_out { libc::EPOLLOUT as u32 } else { 0 };
            let fd = c.stream.as_raw_fd();
            if self
                .ctl(libc::EPOLL_CTL_MOD, fd, events, u64::from(i) + 1)
                .is_err()
            {
                self.close(i);
            }
        }
    }

    /// Accept, read and write whatever is ready, without waiting: packets read go to `rx`
    /// (cleared first). Closes idle connections once a second. True when more may be ready
    /// than this call took (a full batch of events, or the read budget spent): call again
    /// without waiting for the descriptor.
    pub(crate) fn poll(&mut self, now: Instant, rx: &mut Received) -> bool {
        rx.clear();
        // SAFETY: epoll_event is a plain C struct; all-zero is valid.
        let mut events: [libc::epoll_event; EVENTS] = unsafe { std::mem::zeroed() };
        // SAFETY: `events` has room for EVENTS entries; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as i32,
                0,
            )
        };
        let mut budget = READ_BUDGET;
        for ev in events.iter().take(usize::try_from(n).unwrap_or(0)) {
            let (token, flags) = (ev.u64, ev.events);
            if token == LISTENER {
                self.accept(now);
                continue;
            }
            let i = (token - 1) as u32;
            if flags & libc::EPOLLOUT as u32 != 0 {
                self.write_out(i);
            }
            if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32
                != 0
            {
                self.read(i, now, rx, &mut budget);
            }
        }
        if self.next_sweep.is_none_or(|t| now >= t) {
            self.next_sweep = Some(now + Duration::from_secs(1));
            self.sweep(now);
        }
        self.reuse_closed();
        n == EVENTS as i32 || budget == 0
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // WouldBlock, or out of descriptors/memory: try again at the next event.
                Err(_) => return,
            };
            let peer = unmapped(peer);
            let from_ip = self.per_ip.get(&peer.ip()).copied().unwrap_or(0);
            if self.by_peer.len() >= self.limits.max_connections
                || from_ip >= MAX_PER_IP
                || self.by_peer.contains_key(&peer)
            {
                self.counters.refused += 1;
                continue;
            }
            let Ok(local) = stream.local_addr() else {
                self.counters.refused += 1;
                continue;
            };
            if stream.set_nonblocking(true).is_err() {
                self.counters.refused += 1;
                continue;
            }
            // Small packets, latency-bound: no Nagle delay.
            let _ = stream.set_nodelay(true);
            let i = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.slots.push(None);
                    (self.slots.len() - 1) as u32
                }
            };
            if self
                .ctl(
                    libc::EPOLL_CTL_ADD,
                    stream.as_raw_fd(),
                    (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                    u64::from(i) + 1,
                )
                .is_err()
            {
                self.free.push(i);
                self.counters.refused += 1;
                continue;
            }
            self.slots[i as usize] = Some(Conn {
                stream,
                peer,
                local: unmapped(local),
                rx: Deframer::default(),
                out: Vec::with_capacity(self.limits.out_buffer),
                sent: 0,
                dirty: false,
                want_out: false,
                last_rx: now,
            });
            self.by_peer.insert(peer, i);
            *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
            self.counters.accepted += 1;
        }
    }

    fn read(&mut self, i: u32, now: Instant, rx: &mut Received, budget: &mut usize) {
        let mut eof = false;
        let Some(c) = self.slots.get_mut(i as usize).and_then(Option::as_mut) else {
            return;
        };
        let mut got = 0u64;
        while *budget > 0 {
            let want = self.read_buf.len().min(*budget);
            match c.stream.read(&mut self.read_buf[..want]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    *budget -= n;
                    let (peer, local) = (c.peer, c.local);
                    got += c.rx.push(&self.read_buf[..n], &mut |p| {
                        let start = rx.data.len();
                        rx.data.extend_from_slice(p);
                        rx.meta.push((peer, local, start, p.len()));
                    }) as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if got > 0 {
            c.last_rx = now;
        }
        self.counters.packets_in += got;
        self.counters.oversize += std::mem::take(&mut c.rx.oversize);
        if eof {
            self.close(i);
        }
    }

    fn sweep(&mut self, now: Instant) {
        let idle = self.limits.idle;
        let stale: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.as_ref()
                    .filter(|c| now.saturating_duration_since(c.last_rx) >= idle)
                    .map(|_| i as u32)
            })
            .collect();
        for i in stale {
            self.close(i);
        }
    }

    /// Drop connection `i` (closing its socket takes it out of epoll).
    fn close(&mut self, i: u32) {
        let Some(c) = self.slots.get_mut(i as usize).and_then(Option::take) else {
            return;
        };
        self.by_peer.remove(&c.peer);
        if let Some(n) = self.per_ip.get_mut(&c.peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&c.peer.ip());
            }
        }
        self.counters.closed += 1;
        self.closed.push(i);
    }

    fn reuse_closed(&mut self) {
        self.free.append(&mut self.closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = l.local_addr().expect("addr");
        (l, a)
    }

    fn framed(p: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        frame(p, &mut v).expect("fits");
        v
    }

    /// Poll until `pred` holds for what was received (at most 2 s).
    fn poll_until(tcp: &mut Tcp, rx: &mut Received, pred: impl Fn(&Tcp, &Received) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            tcp.poll(Instant::now(), rx);
            if pred(tcp, rx) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out: {:?}", tcp.counters());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn packets_cross_both_ways_framed() {
        let (l, addr) = listener();
        let mut tcp = Tcp::new(l, TcpLimits::default()).expect("tcp");
        let mut client = TcpStream::connect(addr).expect("connect");
        let me = client.local_addr().expect("addr");
        let mut wire = framed(b"hello");
        wire.extend(framed(b"second packet"));
        client.write_all(&wire).expect("write");
        let mut rx = Received::with_capacity(4096);
        poll_until(&mut tcp, &mut rx, |_, rx| rx.len() == 2);
        let (data, src, local) = rx.get_mut(0).expect("first");
        assert_eq!(&data[..], b"hello");
        assert_eq!((src, local), (me, addr));
        assert_eq!(&rx.get_mut(1).expect("second").0[..], b"second packet");

        assert_eq!(tcp.send(me, b"reply"), Sent::Queued);
        assert_eq!(
            tcp.send("127.0.0.1:9".parse().expect("addr"), b"x"),
            Sent::NotTcp
        );
        tcp.flush();
        let mut got = [0u8; 7];
        client.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"\x00\x05reply");
        assert_eq!(tcp.counters().packets_in, 2);
        assert_eq!(tcp.counters().packets_out, 1);
    }

    #[test]
    fn a_peer_that_does_not_read_costs_a_bounded_buffer_and_counted_drops() {
        let (l, addr) = listener();
        let limits = TcpLimits {
            out_buffer: 64 * 1024,
            ..TcpLimits::default()
        };
        let mut tcp = Tcp::new(l, limits).expect("tcp");
        let mut client = TcpStream::connect(addr).expect("connect");
        let me = client.local_addr().expect("addr");
        client.write_all(&framed(b"hi")).expect("write");
        let mut rx = Received::with_capacity(4096);
        poll_until(&mut tcp, &mut rx, |_, rx| rx.len() == 1);
        // The client never reads: the kernel buffers fill, then ours, then packets drop.
        let packet = [0x55u8; 1200];
        let start = Instant::now();
        for _ in 0..20_000 {
            tcp.send(me, &packet);
            tcp.flush();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "sending must not block"
        );
        let c = tcp.counters();
        assert!(c.out_dropped > 0, "{c:?}");
        assert_eq!(c.packets_out + c.out_dropped, 20_000);
        assert_eq!(tcp.connections(), 1, "still open");
        // Once the peer reads, what was queued arrives whole and in order.
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut d = Deframer::default();
        let mut n = 0u64;
        let mut buf = vec![0u8; 65536];
        while n < c.packets_out {
            tcp.poll(Instant::now(), &mut rx);
            tcp.flush();
            let k = client.read(&mut buf).expect("read");
            d.push(&buf[..k], &mut |p| {
                assert_eq!(p, &packet[..]);
                n += 1;
            });
        }
        assert_eq!(n, c.packets_out);
    }

    #[test]
    fn connections_over_the_limit_are_refused_and_idle_ones_closed() {
        let (l, addr) = listener();
        let limits = TcpLimits {
            max_connections: 2,
            idle: Duration::from_secs(10),
            ..TcpLimits::default()
        };
        let mut tcp = Tcp::new(l, limits).expect("tcp");
        let clients: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        let mut rx = Received::with_capacity(4096);
        poll_until(&mut tcp, &mut rx, |t, _| {
            t.counters().accepted + t.counters().refused == 3
        });
        assert_eq!(tcp.counters().accepted, 2);
        assert_eq!(tcp.counters().refused, 1);
        assert_eq!(tcp.connections(), 2);
        // Nothing arrives on them: after `idle` they are closed and the slots come back.
        tcp.poll(Instant::now() + Duration::from_secs(11), &mut rx);
        assert_eq!(tcp.connections(), 0);
        assert_eq!(tcp.counters().closed, 2);
        drop(clients);
        let mut again = TcpStream::connect(addr).expect("connect");
        again.write_all(&framed(b"x")).expect("write");
        poll_until(&mut tcp, &mut rx, |_, rx| rx.len() == 1);
        assert_eq!(tcp.connections(), 1);
    }

    #[test]
    fn a_closed_connection_is_forgotten_and_garbage_lengths_do_not_desync() {
        let (l, addr) = listener();
        let mut tcp = Tcp::new(l, TcpLimits::default()).expect("tcp");
        let mut client = TcpStream::connect(addr).expect("connect");
        let me = client.local_addr().expect("addr");
        let mut wire = vec![0xff, 0xff];
        wire.extend(std::iter::repeat_n(0u8, 0xffff));
        wire.extend(framed(b"after"));
        client.write_all(&wire).expect("write");
        let mut rx = Received::with_capacity(4096);
        poll_until(&mut tcp, &mut rx, |_, rx| rx.len() == 1);
        assert_eq!(&rx.get_mut(0).expect("packet").0[..], b"after");
        assert_eq!(tcp.counters().oversize, 1);
        drop(client);
        poll_until(&mut tcp, &mut rx, |t, _| t.connections() == 0);
        assert_eq!(tcp.send(me, b"late"), Sent::NotTcp);
    }
}
