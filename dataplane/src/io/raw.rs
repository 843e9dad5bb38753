//! A fixed array whose elements the kernel may read or write behind our back.
//!
//! The engines hand the kernel pointers to buffers, addresses and headers that stay in use
//! after the call returns (io_uring) or that hold pointers to each other (msghdr → iovec →
//! buffer). Keeping them in a `Box<[T]>` and indexing it would re-borrow the whole slice
//! mutably and, by Rust's aliasing rules, invalidate those outstanding pointers. `RawArray`
//! instead keeps one raw base pointer from which every access is derived, and only ever
//! creates references to single elements.

use std::ptr::NonNull;

pub(crate) struct RawArray<T> {
    base: NonNull<T>,
    len: usize,
}

// SAFETY: RawArray owns its elements like a Box<[T]>; sending it sends them.
unsafe impl<T: Send> Send for RawArray<T> {}

impl<T: Clone> RawArray<T> {
    /// `len` copies of `init`, allocated once.
    pub(crate) fn new(len: usize, init: T) -> Self {
        let boxed: Box<[T]> = vec![init; len].into_boxed_slice();
        let len = boxed.len();
        let raw = Box::into_raw(boxed);
        // A Box pointer is never null; `cast` keeps the element pointer of the slice.
        let base = NonNull::new(raw.cast::<T>()).unwrap_or(NonNull::dangling());
        Self { base, len }
    }
}

impl<T> RawArray<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Pointer to element `i`, stable for the life of the array. Panics if `i` is out of
    /// range: indices come from our own bookkeeping, never from the network.
    pub(crate) fn ptr(&self, i: usize) -> *mut T {
        assert!(i < self.len, "RawArray index {i} out of range {}", self.len);
        // SAFETY: i < len, so the offset stays inside the allocation.
        unsafe { self.base.as_ptr().add(i) }
    }

    /// Exclusive access to element `i`.
    ///
    /// # Safety
    ///
    /// The kernel must not be reading or writing element `i` (no operation using it is in
    /// flight), and no other reference to it may be alive.
    pub(crate) unsafe fn get_mut(&mut self, i: usize) -> &mut T {
        // SAFETY: in range (ptr asserts), initialised in new, and exclusive per the caller.
        unsafe { &mut *self.ptr(i) }
    }

    /// Shared access to element `i`.
    ///
    /// # Safety
    ///
    /// The kernel must not be writing element `i`, and no mutable reference to it may be
    /// alive.
    pub(crate) unsafe fn get(&self, i: usize) -> &T {
        // SAFETY: in range (ptr asserts), initialised in new, not written per the caller.
        unsafe { &*self.ptr(i) }
    }
}

impl<T> Drop for RawArray<T> {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.len);
        // SAFETY: base/len come from Box::into_raw of a boxed slice in new and are freed
        // only here. Engines that cannot prove the kernel is done with the memory leak the
        // array (mem::forget) instead of dropping it.
        drop(unsafe { Box::from_raw(slice) });
    }
}
