//! Cross-thread wake-up of a worker blocked in `Io::poll`: an eventfd the engine waits on,
//! plus a flag so that a burst of `wake()` calls costs one `write(2)`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::IoError;

/// Wakes a worker blocked in `Io::poll` from another thread (eventfd). Clone + Send + Sync.
/// `wake()` is cheap and may be called often; the engine coalesces.
///
/// Contract for the waking side: make the work visible (push to the queue) *before*
/// calling `wake()`; the worker looks at its queues after every `poll`.
#[derive(Clone, Debug)]
pub struct Waker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    /// True from the first `wake()` until the engine has consumed the wake-up. While set,
    /// further wakes skip the syscall: the worker is going to return from poll anyway.
    pending: AtomicBool,
}

impl Waker {
    pub(crate) fn new() -> Result<Self, IoError> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(IoError::last_os("eventfd"));
        }
        // SAFETY: fd is a fresh descriptor we own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            inner: Arc::new(Inner {
                fd,
                pending: AtomicBool::new(false),
            }),
        })
    }

    /// Make the worker's current or next `poll` return.
    pub fn wake(&self) {
        // SeqCst pairs with `consume`: either this swap sees `true` and the worker has not
        // yet consumed (it will look at its queues after), or it writes the eventfd.
        if self.inner.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: fd is a live eventfd; we pass a pointer to a local u64 and its size.
        // A failure can only be EAGAIN (counter saturated), which already means "awake".
        let _ = unsafe {
            libc::write(
                self.inner.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }

    /// Called by the engine when it saw the eventfd readable: reset it, then re-enable the
    /// syscall in `wake`. Order matters: clearing the flag first could let a wake's write
    /// be swallowed by our read and leave the flag set with nothing left to wake us.
    pub(crate) fn consume(&self) {
        let mut v: u64 = 0;
        // SAFETY: fd is a live non-blocking eventfd; we read into a local u64. EAGAIN (already
        // drained) is fine.
        let _ = unsafe {
            libc::read(
                self.inner.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        self.inner.pending.swap(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn coalesces_and_rearms() {
        let w = Waker::new().expect("eventfd");
        assert!(!readable(w.fd()));
        w.wake();
        w.clone().wake();
        assert!(readable(w.fd()));
        w.consume();
        assert!(!readable(w.fd()));
        w.wake();
        assert!(readable(w.fd()), "wake after consume writes again");
    }
}
