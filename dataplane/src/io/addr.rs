//! Socket addresses and control messages as the kernel lays them out, read and written as
//! bytes so that no network-supplied value is ever trusted as a Rust type.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

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

const fn cmsg_align(n: usize) -> usize {
    let a = std::mem::size_of::<usize>();
    n.saturating_add(a - 1) & !(a - 1)
}

/// CMSG_SPACE: a control message header plus `data` bytes, both padded to alignment.
pub(crate) const fn cmsg_space(data: usize) -> usize {
    cmsg_align(std::mem::size_of::<libc::cmsghdr>()) + cmsg_align(data)
}

const IN_PKTINFO: usize = std::mem::size_of::<libc::in_pktinfo>();
const IN6_PKTINFO: usize = std::mem::size_of::<libc::in6_pktinfo>();

/// Bytes of receive control buffer: the SO_RXQ_OVFL counter, the destination address both
/// as IPV6_PKTINFO and IP_PKTINFO, since a dual-stack socket that enabled both gets both
/// for an IPv4 datagram, and a UDP_GRO segment size (relay sockets). Too small and the
/// kernel drops the ones that do not fit (MSG_CTRUNC), which would cost the drop counter,
/// the destination or the segment boundaries.
pub(crate) const CMSG_LEN: usize =
    cmsg_space(4) + cmsg_space(IN6_PKTINFO) + cmsg_space(IN_PKTINFO) + cmsg_space(4);

/// Receive control buffer, aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct CmsgBuf(pub(crate) [u8; CMSG_LEN]);

/// Bytes of send control buffer: one IP_PKTINFO or IPV6_PKTINFO, the larger of the two.
pub(crate) const TX_CMSG_LEN: usize = cmsg_space(IN6_PKTINFO);

/// Send control buffer of one transmit slot, aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct TxCmsg(pub(crate) [u8; TX_CMSG_LEN]);

impl TxCmsg {
    pub(crate) const ZERO: TxCmsg = TxCmsg([0; TX_CMSG_LEN]);

    /// Write the control message that makes the kernel send from local address `src` on a
    /// socket of family v6 (`v6_socket`) or v4; returns the length to pass as
    /// `msg_controllen`, or None when the pair cannot be expressed (an IPv6 source on an
    /// IPv4 socket). The interface index is left 0: the route to the destination picks it,
    /// only the source address is pinned.
    pub(crate) fn write(&mut self, src: IpAddr, v6_socket: bool) -> Option<usize> {
        self.0 = [0; TX_CMSG_LEN];
        let (level, ty, data_len) = match src {
            IpAddr::V4(a) if !v6_socket => {
                // in_pktinfo: ipi_ifindex (4), ipi_spec_dst (4), ipi_addr (4). The kernel
                // takes the source from ipi_spec_dst.
                self.data_mut(4..8)?.copy_from_slice(&a.octets());
                (libc::IPPROTO_IP, libc::IP_PKTINFO, IN_PKTINFO)
            }
            // Linux's IPv4 path of a v6 socket (udp_sendmsg with a mapped destination)
            // accepts IPV6_PKTINFO only with a v4-mapped source and uses its low 32 bits.
            IpAddr::V4(a) => self.write_v6(a.to_ipv6_mapped())?,
            IpAddr::V6(a) if v6_socket => self.write_v6(a)?,
            IpAddr::V6(_) => return None,
        };
        let w = std::mem::size_of::<usize>();
        let len = cmsg_align(std::mem::size_of::<libc::cmsghdr>()) + data_len;
        self.0.get_mut(0..w)?.copy_from_slice(&len.to_ne_bytes());
        self.0
            .get_mut(w..w + 4)?
            .copy_from_slice(&level.to_ne_bytes());
        self.0
            .get_mut(w + 4..w + 8)?
            .copy_from_slice(&ty.to_ne_bytes());
        Some(cmsg_space(data_len))
    }

    fn write_v6(&mut self, a: Ipv6Addr) -> Option<(i32, i32, usize)> {
        // in6_pktinfo: ipi6_addr (16), ipi6_ifindex (4).
        self.data_mut(0..16)?.copy_from_slice(&a.octets());
        Some((libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, IN6_PKTINFO))
    }

    fn data_mut(&mut self, r: std::ops::Range<usize>) -> Option<&mut [u8]> {
        let h = cmsg_align(std::mem::size_of::<libc::cmsghdr>());
        self.0.get_mut(r.start + h..r.end + h)
    }
}

/// What the receive control messages of one datagram said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RxControl {
    /// The SO_RXQ_OVFL drop counter.
    pub(crate) drops: Option<u32>,
    /// The local address the datagram was sent to (IP_PKTINFO `ipi_addr`, IPV6_PKTINFO
    /// `ipi6_addr`; v4-mapped reported as IPv4).
    pub(crate) dst: Option<IpAddr>,
    /// UDP_GRO: the buffer holds datagrams of this many bytes back to back (the last may
    /// be shorter). 0 or absent: one datagram.
    pub(crate) segment: usize,
}

/// Walk a control buffer the kernel filled (`buf` = the valid `msg_controllen` bytes). A
/// message cut short or of an unknown kind is skipped, never trusted past its bytes.
pub(crate) fn parse_control(buf: &[u8]) -> RxControl {
    let mut c = RxControl::default();
    let _ = walk(buf, &mut c);
    c
}

fn walk(buf: &[u8], c: &mut RxControl) -> Option<()> {
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
        let data = buf.get(off + hdr..off.checked_add(len)?);
        match (level, ty, data) {
            (libc::SOL_SOCKET, libc::SO_RXQ_OVFL, Some(d)) => {
                c.drops = Some(u32::from_ne_bytes(d.get(0..4)?.try_into().ok()?));
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO, Some(d)) => {
                let ip: [u8; 4] = d.get(8..12)?.try_into().ok()?;
                c.dst = Some(IpAddr::V4(Ipv4Addr::from(ip)));
            }
            (libc::SOL_UDP, libc::UDP_GRO, Some(d)) => {
                let v = i32::from_ne_bytes(d.get(0..4)?.try_into().ok()?);
                c.segment = usize::try_from(v).unwrap_or(0);
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, Some(d)) => {
                let ip: [u8; 16] = d.get(0..16)?.try_into().ok()?;
                c.dst = Some(IpAddr::V6(Ipv6Addr::from(ip)).to_canonical());
            }
            _ => {}
        }
        // A kernel-written length near usize::MAX saturates and ends the walk.
        off = off.checked_add(cmsg_align(len))?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmsg_lens_match_libc() {
        // SAFETY: CMSG_SPACE is pure arithmetic.
        let space = |n: usize| unsafe { libc::CMSG_SPACE(n as u32) } as usize;
        assert_eq!(CMSG_LEN, space(4) + space(20) + space(12) + space(4));
        assert_eq!(TX_CMSG_LEN, space(20));
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

    /// One control message as the kernel lays it out, appended to `b`.
    fn push_cmsg(b: &mut Vec<u8>, level: i32, ty: i32, data: &[u8]) {
        let w = std::mem::size_of::<usize>();
        let h = cmsg_align(std::mem::size_of::<libc::cmsghdr>());
        let start = b.len();
        b.resize(start + cmsg_space(data.len()), 0);
        b[start..start + w].copy_from_slice(&(h + data.len()).to_ne_bytes());
        b[start + w..start + w + 4].copy_from_slice(&level.to_ne_bytes());
        b[start + w + 4..start + w + 8].copy_from_slice(&ty.to_ne_bytes());
        b[start + h..start + h + data.len()].copy_from_slice(data);
    }

    #[test]
    fn garbage_is_none_not_panic() {
        assert_eq!(parse_sockaddr(&[]), None);
        assert_eq!(parse_sockaddr(&[0xff; 28]), None);
        for junk in [&[0xff; 3][..], &[0x00; 40], &[0xff; 40], &[0xff; CMSG_LEN]] {
            assert_eq!(parse_control(junk), RxControl::default());
        }
        // A message whose length runs past the buffer is not read.
        let mut b = Vec::new();
        push_cmsg(&mut b, libc::IPPROTO_IP, libc::IP_PKTINFO, &[1; 12]);
        b.truncate(b.len() - 8);
        assert_eq!(parse_control(&b), RxControl::default());
    }

    #[test]
    fn finds_rxq_ovfl_and_pktinfo() {
        let mut b = Vec::new();
        push_cmsg(
            &mut b,
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            &77u32.to_ne_bytes(),
        );
        // in_pktinfo: ifindex 1, spec_dst 10.0.0.9, addr 10.0.0.1 (the header's).
        push_cmsg(
            &mut b,
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            &[1, 0, 0, 0, 10, 0, 0, 9, 10, 0, 0, 1],
        );
        assert!(b.len() <= CMSG_LEN);
        let c = parse_control(&b);
        assert_eq!(c.drops, Some(77));
        assert_eq!(c.dst, Some("10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn finds_the_gro_segment_size() {
        let mut b = Vec::new();
        push_cmsg(&mut b, libc::SOL_UDP, libc::UDP_GRO, &1200i32.to_ne_bytes());
        assert_eq!(parse_control(&b).segment, 1200);
        let mut b = Vec::new();
        push_cmsg(&mut b, libc::SOL_UDP, libc::UDP_GRO, &(-5i32).to_ne_bytes());
        assert_eq!(parse_control(&b).segment, 0, "nonsense is one datagram");
    }

    #[test]
    fn ipv6_pktinfo_mapped_is_ipv4() {
        for (ip, want) in [
            ("::ffff:127.0.0.2", "127.0.0.2"),
            ("2001:db8::5", "2001:db8::5"),
        ] {
            let ip: Ipv6Addr = ip.parse().expect("ip");
            let mut data = [0u8; 20];
            data[..16].copy_from_slice(&ip.octets());
            let mut b = Vec::new();
            push_cmsg(&mut b, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &data);
            assert_eq!(parse_control(&b).dst, Some(want.parse().expect("ip")));
        }
    }

    #[test]
    fn tx_pktinfo_per_family() {
        let mut c = TxCmsg::ZERO;
        let v4: IpAddr = "10.0.0.7".parse().expect("ip");
        let h = cmsg_align(std::mem::size_of::<libc::cmsghdr>());
        assert_eq!(c.write(v4, false), Some(cmsg_space(12)));
        let w = std::mem::size_of::<usize>();
        assert_eq!(c.0[..w], (h + 12).to_ne_bytes());
        assert_eq!(c.0[h + 4..h + 8], [10, 0, 0, 7], "ipi_spec_dst");
        // On a v6 socket, v4-mapped in IPV6_PKTINFO; read back it is the same address.
        assert_eq!(c.write(v4, true), Some(cmsg_space(20)));
        assert_eq!(parse_control(&c.0).dst, Some(v4));
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(c.write(v6, true), Some(cmsg_space(20)));
        assert_eq!(parse_control(&c.0).dst, Some(v6));
        assert_eq!(c.write(v6, false), None, "no IPv6 source on an IPv4 socket");
    }
}
