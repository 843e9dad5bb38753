//! One process per side: an exclusive open-file-description byte-range lock on byte 0
//! (data side) or byte 1 (control side) of the ring file. OFD locks belong to the open file,
//! not the process, so they conflict even within one process and vanish when the holder
//! dies (even by `kill -9`), which is what lets a restarted process re-attach.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Take the lock on `byte` without waiting. `Ok(false)` when someone else holds it.
pub(crate) fn try_lock(file: &File, byte: i64) -> io::Result<bool> {
    // SAFETY: an all-zero `flock` is a valid value (plain integers).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    // l_pid must be 0 for OFD locks.
    // SAFETY: the fd is open for the call's duration and `fl` is a valid, live flock.
    let rc = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_OFD_SETLK,
            &fl as *const libc::flock,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}
