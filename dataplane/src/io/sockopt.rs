//! Socket options both engines need.

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};

use super::{IoConfig, IoError};

/// Buffer sizes (forced past rmem_max/wmem_max when CAP_NET_ADMIN allows), SO_RXQ_OVFL,
/// and the destination address of each datagram (IP_PKTINFO, IPV6_RECVPKTINFO): a socket
/// bound to the wildcard on a host with several addresses must answer from the one the
/// peer sent to, or the peer discards the answer.
pub(crate) fn configure(socket: &UdpSocket, cfg: &IoConfig) -> Result<(), IoError> {
    if cfg.recv_buffer > 0 {
        set_buffer(
            socket,
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            cfg.recv_buffer,
        )?;
    }
    if cfg.send_buffer > 0 {
        set_buffer(
            socket,
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            cfg.send_buffer,
        )?;
    }
    set_int(socket, libc::SO_RXQ_OVFL, 1)
        .map_err(|e| IoError::sys("setsockopt(SO_RXQ_OVFL)", e))?;
    if is_v6(socket)? {
        set_opt(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
            .map_err(|e| IoError::sys("setsockopt(IPV6_RECVPKTINFO)", e))?;
        // IPV6_RECVPKTINFO already reports an IPv4 datagram's destination v4-mapped on a
        // dual-stack socket; IP_PKTINFO as well is belt and braces, and a kernel that
        // refuses it there loses nothing.
        let _ = set_opt(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1);
        Ok(())
    } else {
        set_opt(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
            .map_err(|e| IoError::sys("setsockopt(IP_PKTINFO)", e))
    }
}

fn set_buffer(socket: &UdpSocket, force: i32, plain: i32, bytes: usize) -> Result<(), IoError> {
    let v = i32::try_from(bytes).unwrap_or(i32::MAX);
    // FORCE needs CAP_NET_ADMIN; without it the plain option is capped at the sysctl max.
    if set_int(socket, force, v).is_ok() {
        return Ok(());
    }
    set_int(socket, plain, v).map_err(|e| IoError::sys("setsockopt(SO_RCVBUF/SO_SNDBUF)", e))
}

fn set_int(socket: &UdpSocket, opt: i32, v: i32) -> std::io::Result<()> {
    set_opt(socket, libc::SOL_SOCKET, opt, v)
}

fn set_opt(socket: &UdpSocket, level: i32, opt: i32, v: i32) -> std::io::Result<()> {
    set_raw(socket.as_raw_fd(), level, opt, v)
}

/// An int socket option on a descriptor the caller keeps open for the call.
pub(crate) fn set_raw(fd: RawFd, level: i32, opt: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: the option value points at a local i32 whose size is passed alongside; a
    // descriptor that is not a socket only makes the call fail.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether the socket is IPv6 (decides how destination addresses are written).
pub(crate) fn is_v6(socket: &UdpSocket) -> Result<bool, IoError> {
    socket
        .local_addr()
        .map(|a| a.is_ipv6())
        .map_err(|e| IoError::sys("getsockname", e))
}
