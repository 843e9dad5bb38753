//! Socket addresses and control messages as the kernel lays them out, read and written as
//! bytes so that no network-supplied value is ever trusted as a Rust type.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Room for a `sockaddr_in6` (28 bytes), the largest address a UDP socket reports.
pub(crate) const RAW_ADDR_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();

/// A `sockaddr_in` or `sockaddr_in6`, aligned like one so its address can be given to the
/// kernel as `*const sockaddr`.
#[derive(Clone, Copy)]
#[repr(C, align(4))]
pub(crate) struct RawAddr(pub(crate) [u8; RAW_ADDR_LEN]);

impl RawAddr {
    pub(crate) const ZERO: RawAddr = RawAddr([0; RAW_ADDR_LEN]);

    /// Write `addr` for a socket of family v6 (`v6_socket`) or v4; returns the length to
    /// pass as `msg_namelen`. An IPv4 address on an IPv6 socket is written v4-mapped. An
    /// IPv6 address on an IPv4 socket is written as is and the kernel refuses the send.
    pub(crate) fn write(&mut self, addr: SocketAddr, v6_socket: bool) -> u32 {
        self.0 = [0; RAW_ADDR_LEN];
        match addr {
            SocketAddr::V4(a) if !v6_socket => {
                self.0[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                self.0[2..4].copy_from_slice(&a.port().to_be_bytes());
                self.0[4..8].copy_from_slice(&a.ip().octets());
                std::mem::size_of::<libc::sockaddr_in>() as u32
            }
            SocketAddr::V4(a) => {
                self.write_v6(a.port(), a.ip().to_ipv6_mapped(), 0);
                RAW_ADDR_LEN as u32
            }
            SocketAddr::V6(a) => {
                self.write_v6(a.port(), *a.ip(), a.scope_id());
                RAW_ADDR_LEN as u32
            }
        }
    }

    fn write_v6(&mut self, port: u16, ip: Ipv6Addr, scope_id: u32) {
        self.0[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        self.0[2..4].copy_from_slice(&port.to_be_bytes());
        // 4..8: flowinfo, left 0.
        self.0[8..24].copy_from_slice(&ip.octets());
        self.0[24..28].copy_from_slice(&scope_id.to_ne_bytes());
    }
}

/// Parse a `sockaddr_in`/`sockaddr_in6` the kernel wrote (`len` bytes valid). IPv4-mapped
/// IPv6 addresses come back as IPv4. None for anything else (never on a UDP socket).
pub(crate) fn parse_sockaddr(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(raw.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
    if family == libc::AF_INET as u16 {
        let ip: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    } else if family == libc::AF_INET6 as u16 {
        let ip: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
        let ip = Ipv6Addr::from(ip);
        if let Some(v4) = ip.to_ipv4_mapped() {
            return Some(SocketAddr::V4(SocketAddrV4::new(v4, port)));
        }
        let scope = u32::from_ne_bytes(raw.get(24..28)?.try_into().ok()?);
        Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
    } else {
        None
    }
}

/// Bytes of control buffer for one SO_RXQ_OVFL message: CMSG_SPACE(sizeof(u32)).
pub(crate) const CMSG_LEN: usize = cmsg_align(std::mem::size_of::<libc::cmsghdr>()) + cmsg_align(4);

/// Control buffer, aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct CmsgBuf(pub(crate) [u8; CMSG_LEN]);

const fn cmsg_align(n: usize) -> usize {
    let a = std::mem::size_of::<usize>();
    n.saturating_add(a - 1) & !(a - 1)
}

/// The SO_RXQ_OVFL drop counter in a control buffer the kernel filled (`buf` = the valid
/// `msg_controllen` bytes), if present.
pub(crate) fn parse_rxq_ovfl(buf: &[u8]) -> Option<u32> {
    const W: usize = std::mem::size_of::<usize>();
    let hdr = cmsg_align(std::mem::size_of::<libc::cmsghdr>());
    let mut off = 0usize;
    while let Some(h) = buf.get(off..off.checked_add(hdr)?) {
        let len = usize::from_ne_bytes(h.get(0..W)?.try_into().ok()?);
        let level = i32::from_ne_bytes(h.get(W..W + 4)?.try_into().ok()?);
        let ty = i32::from_ne_bytes(h.get(W + 4..W + 8)?.try_into().ok()?);
        if len < hdr {
            return None;
        }
        if level == libc::SOL_SOCKET && ty == libc::SO_RXQ_OVFL {
            let data = buf.get(off + hdr..off + hdr + 4)?;
            return Some(u32::from_ne_bytes(data.try_into().ok()?));
        }
        // A kernel-written length near usize::MAX saturates and ends the walk.
        off = off.checked_add(cmsg_align(len))?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmsg_len_matches_libc() {
        // SAFETY: CMSG_SPACE is pure arithmetic.
        let space = unsafe { libc::CMSG_SPACE(4) } as usize;
        assert_eq!(CMSG_LEN, space);
    }

    #[test]
    fn roundtrip_v4_on_v4_and_v6_sockets() {
        let a: SocketAddr = "192.0.2.7:5004".parse().expect("addr");
        let mut raw = RawAddr::ZERO;
        assert_eq!(raw.write(a, false), 16);
        assert_eq!(parse_sockaddr(&raw.0[..16]), Some(a));
        assert_eq!(raw.write(a, true), 28);
        assert_eq!(parse_sockaddr(&raw.0), Some(a), "mapped comes back as v4");
    }

    #[test]
    fn roundtrip_v6() {
        let a: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
        let mut raw = RawAddr::ZERO;
        raw.write(a, true);
        assert_eq!(parse_sockaddr(&raw.0), Some(a));
    }

    #[test]
    fn garbage_is_none_not_panic() {
        assert_eq!(parse_sockaddr(&[]), None);
        assert_eq!(parse_sockaddr(&[0xff; 28]), None);
        assert_eq!(parse_rxq_ovfl(&[0xff; 3]), None);
        assert_eq!(parse_rxq_ovfl(&[0x00; 40]), None);
        assert_eq!(parse_rxq_ovfl(&[0xff; 40]), None);
    }

    #[test]
    fn finds_rxq_ovfl() {
        let mut b = [0u8; CMSG_LEN];
        let w = std::mem::size_of::<usize>();
        b[0..w]
            .copy_from_slice(&(cmsg_align(std::mem::size_of::<libc::cmsghdr>()) + 4).to_ne_bytes());
        b[w..w + 4].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        b[w + 4..w + 8].copy_from_slice(&libc::SO_RXQ_OVFL.to_ne_bytes());
        let h = cmsg_align(std::mem::size_of::<libc::cmsghdr>());
        b[h..h + 4].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(parse_rxq_ovfl(&b), Some(77));
    }
}
