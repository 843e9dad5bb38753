//! Socket options both engines need.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use super::{IoConfig, IoError};

/// Buffer sizes (forced past rmem_max/wmem_max when CAP_NET_ADMIN allows) and SO_RXQ_OVFL.
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
    set_int(socket, libc::SO_RXQ_OVFL, 1).map_err(|e| IoError::sys("setsockopt(SO_RXQ_OVFL)", e))
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
    // SAFETY: the fd is a live socket owned by `socket`; the option value points at a local
    // i32 whose size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
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
