//! UDP offloads on the bench's own sockets: subscribers that coalesce what they receive
//! (`--gro`: `UDP_GRO`, as a NIC's receive offload hands a host runs of datagrams), and the
//! reflector's segmented fan-out (`reflector --gso`: `UDP_SEGMENT` per subscriber, the
//! same message shape the node's segmented egress sends).
//!
//! With `sys`, the only module of the bench with `unsafe`: these are raw recvmmsg/sendmmsg
//! calls with control messages.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// A coalesced read holds up to one IP datagram's payload.
pub const GRO_BUF: usize = 65_536;
/// Buffers per GRO receive call: 8 × 64 KiB per receive thread.
pub const GRO_BATCH: usize = 8;
/// Control bytes: one `UDP_GRO` int (CMSG_SPACE(4) = 24) with room to spare.
const CTRL: usize = 64;

/// `UDP_MAX_SEGMENTS` before Linux 6.9 and the largest UDP payload in one IPv4 datagram: a
/// segmented message's bounds (dataplane/src/io/segment.rs explains both).
const MAX_SEGMENTS: usize = 64;
const MAX_BYTES: usize = 65_507;

fn set_int(sock: &UdpSocket, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: a live socket; the value is an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&v as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Let `sock` receive coalesced runs of datagrams (`UDP_GRO`, Linux ≥ 5.0).
pub fn enable_gro(sock: &UdpSocket) -> io::Result<()> {
    set_int(sock, libc::SOL_UDP, libc::UDP_GRO, 1)
}

#[repr(C, align(8))]
struct Ctrl([u8; CTRL]);

/// Reusable buffers for one recvmmsg call on a coalescing socket.
pub struct GroBatch {
    bufs: Vec<u8>,
    ctrl: Vec<Ctrl>,
    lens: [usize; GRO_BATCH],
    segs: [usize; GRO_BATCH],
}

impl Default for GroBatch {
    fn default() -> Self {
        GroBatch {
            bufs: vec![0; GRO_BUF * GRO_BATCH],
            ctrl: (0..GRO_BATCH).map(|_| Ctrl([0; CTRL])).collect(),
            lens: [0; GRO_BATCH],
            segs: [0; GRO_BATCH],
        }
    }
}

impl GroBatch {
    /// Reads what is queued (never blocks); returns how many reads (each one or more
    /// datagrams) there are, 0 when nothing was.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        // SAFETY: all-zero iovec/mmsghdr are valid; filled below.
        let mut iov: [libc::iovec; GRO_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; GRO_BATCH] = unsafe { zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..GRO_BATCH {
            // SAFETY: i * GRO_BUF + GRO_BUF <= bufs.len().
            iov[i].iov_base = unsafe { base.add(i * GRO_BUF) }.cast();
            iov[i].iov_len = GRO_BUF;
            hdrs[i].msg_hdr.msg_iov = &mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_control = self.ctrl[i].0.as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_controllen = CTRL as _;
        }
        // SAFETY: every header points at a live buffer and control area of the lengths
        // given, owned by `self` and alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                GRO_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (i, m) in hdrs.iter().enumerate().take(n) {
            self.lens[i] = (m.msg_len as usize).min(GRO_BUF);
            self.segs[i] = 0;
            let h = &m.msg_hdr;
            // SAFETY: the kernel filled msg_controllen bytes of `ctrl[i]` with control
            // messages; the CMSG macros stay inside them.
            let mut c = unsafe { libc::CMSG_FIRSTHDR(h) };
            while !c.is_null() {
                // SAFETY: c points at a complete control message header.
                let (level, ty) = unsafe { ((*c).cmsg_level, (*c).cmsg_type) };
                if level == libc::SOL_UDP && ty == libc::UDP_GRO {
                    // SAFETY: UDP_GRO carries an int, possibly unaligned in the buffer.
                    let v = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()) };
                    self.segs[i] = usize::try_from(v).unwrap_or(0);
                }
                // SAFETY: as above.
                c = unsafe { libc::CMSG_NXTHDR(h, c) };
            }
        }
        Ok(n)
    }

    /// Read `i` of the last call and the segment size it was coalesced at (0: one
    /// datagram), mutable so its datagrams can be decrypted in place.
    pub fn read_mut(&mut self, i: usize) -> (&mut [u8], usize) {
        let len = self.lens[i];
        (&mut self.bufs[i * GRO_BUF..i * GRO_BUF + len], self.segs[i])
    }
}

/// Send each of `datagrams` to every address in `dests`: per destination, runs of equal
/// size (a shorter last one allowed) go as one `UDP_SEGMENT` message, many messages per
/// sendmmsg call. Returns the datagrams sent. IPv4 destinations only, like the bench.
pub fn send_segmented(
    sock: &UdpSocket,
    datagrams: &[&[u8]],
    dests: &[SocketAddr],
) -> io::Result<usize> {
    // The runs are the same for every destination.
    let mut runs: Vec<(usize, usize)> = Vec::new(); // (first, count)
    let mut i = 0;
    while i < datagrams.len() {
        let seg = datagrams[i].len();
        let (mut n, mut bytes) = (1, seg);
        while i + n < datagrams.len() && n < MAX_SEGMENTS {
            let l = datagrams[i + n].len();
            if l > seg || l == 0 || bytes + l > MAX_BYTES {
                break;
            }
            n += 1;
            bytes += l;
            if l < seg {
                break;
            }
        }
        runs.push((i, n));
        i += n;
    }
    let iovs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec {
            // sendmsg never writes through iov_base.
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut names: Vec<libc::sockaddr_in> = Vec::with_capacity(dests.len());
    for d in dests {
        let SocketAddr::V4(v4) = d else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
        };
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut sa: libc::sockaddr_in = unsafe { zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = v4.port().to_be();
        sa.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
        names.push(sa);
    }
    // One control message per run: UDP_SEGMENT with its segment size.
    let mut ctrls: Vec<Ctrl> = runs
        .iter()
        .map(|&(first, n)| {
            let mut c = Ctrl([0; CTRL]);
            if n > 1 {
                write_segment(&mut c, datagrams[first].len() as u16);
            }
            c
        })
        .collect();
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(2) } as usize;
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(runs.len() * dests.len());
    let mut counts: Vec<usize> = Vec::with_capacity(hdrs.capacity());
    for name in &mut names {
        for (r, &(first, n)) in runs.iter().enumerate() {
            // SAFETY: all-zero is a valid mmsghdr.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (name as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // The kernel only reads the iovecs.
            h.msg_hdr.msg_iov = iovs[first..].as_ptr() as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = n as _;
            if n > 1 {
                h.msg_hdr.msg_control = ctrls[r].0.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = space as _;
            }
            hdrs.push(h);
            counts.push(n);
        }
    }
    let mut sent = 0;
    let mut off = 0;
    while off < hdrs.len() {
        let chunk = (hdrs.len() - off).min(1024);
        // SAFETY: headers off..off+chunk point at names, iovecs, control bytes and the
        // datagrams, all alive for the call.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr().add(off),
                chunk as u32,
                0,
            )
        };
        if n <= 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The message that failed is lost (a closed subscriber): skip it, go on.
            if sent == 0 && off == 0 && e.raw_os_error() != Some(libc::ECONNREFUSED) {
                return Err(e);
            }
            off += 1;
            continue;
        }
        sent += counts[off..off + n as usize].iter().sum::<usize>();
        off += n as usize;
    }
    // Keep the control buffers alive past the last call (pointers into them were used).
    ctrls.clear();
    Ok(sent)
}

fn write_segment(c: &mut Ctrl, segment: u16) {
    let w = size_of::<usize>();
    // SAFETY: CMSG_LEN is arithmetic.
    let len = unsafe { libc::CMSG_LEN(2) } as usize;
    c.0[..w].copy_from_slice(&len.to_ne_bytes());
    c.0[w..w + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    c.0[w + 4..w + 8].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    let data = len - 2;
    c.0[data..data + 2].copy_from_slice(&segment.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segmented sends reach a plain socket datagram by datagram and a coalescing one as
    /// runs that split back into the same datagrams.
    #[test]
    fn segmented_send_and_gro_receive_round_trip() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let plain = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let gro = UdpSocket::bind("127.0.0.1:0").expect("bind");
        enable_gro(&gro).expect("UDP_GRO");
        let data: Vec<Vec<u8>> = (0..10u8)
            .map(|i| vec![i; if i == 9 { 300 } else { 1000 }])
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let dests = [
            plain.local_addr().expect("addr"),
            gro.local_addr().expect("addr"),
        ];
        assert_eq!(send_segmented(&tx, &refs, &dests).expect("send"), 20);
        plain
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        for d in &data {
            let n = plain.recv(&mut buf).expect("recv");
            assert_eq!(&buf[..n], &d[..]);
        }
        let mut batch = GroBatch::default();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < 10 && std::time::Instant::now() < deadline {
            let n = batch.recv(&gro).expect("recv");
            for i in 0..n {
                let (b, seg) = batch.read_mut(i);
                if seg == 0 {
                    got.push(b.to_vec());
                } else {
                    got.extend(b.chunks(seg).map(<[u8]>::to_vec));
                }
            }
        }
        assert_eq!(got, data);
    }
}
