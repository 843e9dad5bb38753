//! Reading what crosses loopback without touching it: a packet socket (AF_PACKET on `lo`,
//! which needs root or CAP_NET_RAW) that keeps, for every UDP datagram delivered to one
//! port, its source, its length and its first bytes (an SRTP packet's RTP header is in the
//! clear). Used to see the packet sizes a real browser sends; nothing is delayed or
//! changed on the way, unlike a proxy.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One datagram seen going to the watched port.
#[derive(Clone, Debug)]
pub struct Seen {
    pub src: SocketAddrV4,
    /// UDP payload bytes.
    pub len: usize,
    /// Its first (up to) 12 bytes.
    pub head: [u8; 12],
}

pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Seen>>>,
}

impl Capture {
    /// Watch UDP datagrams to `port` on loopback; `Err` says why it cannot (not root).
    pub fn start(port: u16) -> Result<Capture, String> {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
        if fd < 0 {
            return Err(format!(
                "AF_PACKET socket: {} (needs root or CAP_NET_RAW)",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a NUL-terminated name.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = lo as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(format!("bind to lo: {}", std::io::Error::last_os_error()));
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        let size: i32 = 16 << 20;
        // SAFETY: valid option values of the sizes passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const i32).cast(),
                4,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 70_000];
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: all-zero is a valid sockaddr_ll.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut flen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: buf and from are live buffers of the lengths passed.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_ll).cast(),
                        &mut flen,
                    )
                };
                // Loopback shows each packet leaving and arriving: keep the arrival only.
                if n <= 0 || from.sll_pkttype != libc::PACKET_HOST {
                    continue;
                }
                if let Some(s) = parse(&buf[..n as usize], port) {
                    seen.push(s);
                }
            }
            seen
        });
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop and return what was seen, in arrival order.
    pub fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An IPv4 UDP packet to `port`.
fn parse(p: &[u8], port: u16) -> Option<Seen> {
    let ihl = usize::from(p.first()? & 0x0f) * 4;
    if p.first()? >> 4 != 4 || *p.get(9)? != 17 {
        return None;
    }
    let src = Ipv4Addr::new(*p.get(12)?, p[13], p[14], p[15]);
    let udp = p.get(ihl..ihl + 8)?;
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    if dport != port {
        return None;
    }
    let payload = p.get(ihl + 8..)?;
    let mut head = [0u8; 12];
    let k = payload.len().min(12);
    head[..k].copy_from_slice(&payload[..k]);
    Some(Seen {
        src: SocketAddrV4::new(src, sport),
        len: payload.len(),
        head,
    })
}
