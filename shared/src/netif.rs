//! The host's interface addresses, and which of them a node announces to peers when the
//! operator named none (`media.announce` unset, media bound to 0.0.0.0 or `::`).
//!
//! Bare-metal servers have public and private addresses as a rule, and a browser on another
//! machine can only use the ones it can route to; announcing 127.0.0.1 (what a node did before)
//! reaches nobody but the host itself. So every usable address is offered as a host
//! candidate and the peer's ICE picks one; the data plane answers from the address each
//! check came to (IP_PKTINFO), so every candidate works, not only the kernel's favourite.
//!
//! The interfaces are read once per process ([`interfaces`]): a node's candidates stay the
//! same for its lifetime, and an address that comes and goes needs `media.announce`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

/// One address of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub name: String,
    pub ip: IpAddr,
    /// `IFF_UP`: the interface is administratively up.
    pub up: bool,
    /// `IFF_LOOPBACK`.
    pub loopback: bool,
}

/// The host's interface addresses, read with `getifaddrs(3)` on first use and kept for the
/// process's lifetime. Empty (and logged by the caller's fallback) when the call fails.
pub fn interfaces() -> &'static [IfAddr] {
    static CACHE: OnceLock<Vec<IfAddr>> = OnceLock::new();
    CACHE.get_or_init(|| read_interfaces().unwrap_or_default())
}

/// `getifaddrs(3)`, IPv4 and IPv6 entries only.
pub fn read_interfaces() -> std::io::Result<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; the list is freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose family says its size.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let ip = match family {
            libc::AF_INET => {
                // SAFETY: AF_INET entries point at a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: AF_INET6 entries point at a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        let name = if ifa.ifa_name.is_null() {
            String::new()
        } else {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned()
        };
        let flags = ifa.ifa_flags;
        out.push(IfAddr {
            name,
            ip,
            up: flags & libc::IFF_UP as u32 != 0,
            loopback: flags & libc::IFF_LOOPBACK as u32 != 0,
        });
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// How far a peer elsewhere can reach an address; candidates are announced in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Reach {
    /// Globally routed.
    Public,
    /// RFC 1918, RFC 6598 shared (carrier-grade NAT) space, IPv6 unique local.
    Private,
}

fn reach(ip: IpAddr) -> Option<Reach> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
            {
                None
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                Some(Reach::Private)
            } else {
                Some(Reach::Public)
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some()
            {
                // Link-local addresses need a scope id no SDP candidate carries.
                None
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some(Reach::Private)
            } else {
                Some(Reach::Public)
            }
        }
    }
}

/// The addresses to announce from `ifs`: every up, non-loopback, non-link-local address of
/// the families the media socket receives (IPv6 too when `v6` — a dual-stack `::` bind),
/// public before private, IPv4 before IPv6 within each, first-seen order otherwise, no
/// duplicates. When nothing qualifies (a host with loopback only, or a namespace without
/// addresses), 127.0.0.1: the node still works for clients on the host itself.
pub fn pick_announce(ifs: &[IfAddr], v6: bool) -> Vec<IpAddr> {
    let mut picked: Vec<(Reach, bool, IpAddr)> = Vec::new();
    for a in ifs {
        if !a.up || a.loopback || (a.ip.is_ipv6() && !v6) {
            continue;
        }
        let Some(r) = reach(a.ip) else { continue };
        if !picked.iter().any(|&(_, _, ip)| ip == a.ip) {
            picked.push((r, a.ip.is_ipv6(), a.ip));
        }
    }
    // Stable: keeps interface order within one class.
    picked.sort_by_key(|&(r, is6, _)| (r, is6));
    let ips: Vec<IpAddr> = picked.into_iter().map(|(_, _, ip)| ip).collect();
    if ips.is_empty() {
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    } else {
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifa(name: &str, ip: &str, up: bool, loopback: bool) -> IfAddr {
        IfAddr {
            name: name.into(),
            ip: ip.parse().expect("ip"),
            up,
            loopback,
        }
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn public_first_then_private_without_loopback_or_link_local() {
        let ifs = [
            ifa("lo", "127.0.0.1", true, true),
            ifa("lo", "::1", true, true),
            ifa("eth1", "10.0.0.5", true, false),
            ifa("eth0", "203.0.113.7", true, false),
            ifa("eth0", "fe80::1", true, false),
            ifa("eth0", "2001:db8::7", true, false),
            ifa("eth2", "169.254.3.3", true, false),
            ifa("wg0", "100.64.0.9", true, false),
            ifa("eth3", "fd00::5", true, false),
            ifa("down0", "192.168.9.9", false, false),
        ];
        assert_eq!(
            pick_announce(&ifs, false),
            ips(&["203.0.113.7", "10.0.0.5", "100.64.0.9"])
        );
        assert_eq!(
            pick_announce(&ifs, true),
            ips(&[
                "203.0.113.7",
                "2001:db8::7",
                "10.0.0.5",
                "100.64.0.9",
                "fd00::5"
            ])
        );
    }

    #[test]
    fn loopback_only_host_announces_loopback() {
        let ifs = [ifa("lo", "127.0.0.1", true, true)];
        assert_eq!(pick_announce(&ifs, true), ips(&["127.0.0.1"]));
        assert_eq!(pick_announce(&[], false), ips(&["127.0.0.1"]));
    }

    #[test]
    fn one_address_on_two_interfaces_is_announced_once() {
        let ifs = [
            ifa("br0", "192.168.1.2", true, false),
            ifa("br0:1", "192.168.1.2", true, false),
        ];
        assert_eq!(pick_announce(&ifs, false), ips(&["192.168.1.2"]));
    }

    #[test]
    fn this_host_has_loopback() {
        let all = read_interfaces().expect("getifaddrs");
        assert!(
            all.iter().any(|a| a.loopback && a.ip.is_loopback()),
            "{all:?}"
        );
    }
}
