//! The single-producer single-consumer index protocol, independent of where the indices and
//! slots live (a shared mapping in production, loom cells in the model checker).
//!
//! `head` (next index to read) is written only by the consumer, `tail` (next index to write)
//! only by the producer. Both are monotonically increasing `u64`s starting at 0 (they never
//! wrap: 2^64 messages), the slot of index `i` is `i % count`, and the ring holds
//! `tail - head` messages, at most `count`.
//!
//! Publication: the producer writes the whole slot, then stores `tail + 1` with `Release`;
//! the consumer loads `tail` with `Acquire` before reading the slot. A producer that dies
//! mid-write therefore never published a half message. Symmetrically the consumer releases a
//! slot by storing `head + 1` (`Release`) after it copied the message out, and the producer
//! loads `head` with `Acquire` before overwriting it.
//!
//! Sleeping: the consumer sets `waiting` to 1, then re-checks `tail`; the producer stores
//! `tail`, then checks `waiting`. A `SeqCst` fence on each side between the store and the load
//! (Dekker's pattern) guarantees at least one of them sees the other's store, so a consumer
//! never sleeps through a publish. The producer only makes the wake syscall when `waiting`
//! is set, so a push normally costs no syscall.
//!
//! Indices come from a file another process can scribble on, so every difference is checked:
//! `head > tail` or `tail - head > count` is corruption, reported as an error to either
//! side, never an out-of-bounds slot or an overwrite.

use super::sync::{fence, AtomicU32, AtomicU64, Ordering};
use super::PushError;

/// The three shared words of one ring.
pub(crate) struct Indices<'a> {
    pub head: &'a AtomicU64,
    pub tail: &'a AtomicU64,
    /// Futex word: 1 while the consumer is (about to be) asleep.
    pub waiting: &'a AtomicU32,
}

/// A slot's length prefix was larger than a slot; the slot was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadLength(pub u32);

/// Why a pop failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PopError {
    /// `tail - head` exceeds the capacity: the indices are corrupt; nothing was consumed.
    Indices { head: u64, tail: u64 },
    /// The slot at `index` had an impossible length; it was consumed (skipped).
    Length { index: u64, len: u32 },
}

/// Storage for the slots of one ring.
pub(crate) trait Slots {
    /// Number of slots (> 0).
    fn count(&self) -> u64;
    /// Largest message a slot holds.
    fn max_len(&self) -> usize;
    /// Write `msg` (at most `max_len` bytes) and its length into the slot of `index`.
    ///
    /// # Safety
    /// The caller is the only producer and `index` is not visible to the consumer: `index`
    /// equals the current `tail` and `tail - head < count` with `head` loaded `Acquire`.
    unsafe fn write(&self, index: u64, msg: &[u8]);
    /// Copy the message in the slot of `index` into `buf` (cleared first).
    ///
    /// # Safety
    /// The caller is the only consumer and `index` is published: `head <= index < tail` with
    /// `tail` loaded `Acquire`.
    unsafe fn read(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), BadLength>;
}

/// Append `msg` at `*tail`. Returns whether the consumer asked to be woken (the caller then
/// issues the wake; it is not done here so the protocol stays free of syscalls).
pub(crate) fn push<S: Slots>(
    idx: &Indices<'_>,
    slots: &S,
    tail: &mut u64,
    msg: &[u8],
) -> Result<bool, PushError> {
    if msg.len() > slots.max_len() {
        return Err(PushError::TooLarge);
    }
    let t = *tail;
    let head = idx.head.load(Ordering::Acquire);
    // The consumer never gets ahead of what was published, nor more than `count` behind
    // it: a head outside that range is corruption, reported as such rather than as a full
    // ring (which the caller would retry forever), and never an overwrite.
    match t.checked_sub(head) {
        Some(n) if n < slots.count() => {}
        Some(n) if n == slots.count() => return Err(PushError::Full),
        _ => return Err(PushError::Corrupt),
    }
    // SAFETY: we are the only producer (the side lock), `t` is our tail and
    // `t - head < count`, so the consumer does not read this slot until we publish it below.
    unsafe { slots.write(t, msg) };
    let next = t.wrapping_add(1);
    idx.tail.store(next, Ordering::Release);
    *tail = next;
    // Dekker: the tail store above and the `waiting` load below must not be reordered.
    fence(Ordering::SeqCst);
    Ok(idx.waiting.load(Ordering::Relaxed) != 0)
}

/// Clear the waiting flag after [`push`] reported it set. Returns true when this call
/// cleared it, i.e. a wake syscall is due.
pub(crate) fn take_waiter(idx: &Indices<'_>) -> bool {
    idx.waiting.swap(0, Ordering::Relaxed) != 0
}

/// Copy the message at `*head` into `buf`. `Ok(false)` when the ring is empty.
pub(crate) fn pop<S: Slots>(
    idx: &Indices<'_>,
    slots: &S,
    head: &mut u64,
    buf: &mut Vec<u8>,
) -> Result<bool, PopError> {
    let h = *head;
    let tail = idx.tail.load(Ordering::Acquire);
    match tail.checked_sub(h) {
        Some(0) => {
            buf.clear();
            return Ok(false);
        }
        Some(n) if n <= slots.count() => {}
        _ => return Err(PopError::Indices { head: h, tail }),
    }
    // SAFETY: we are the only consumer, `h < tail` was published with Release and loaded
    // with Acquire above, and the producer does not reuse the slot until we advance `head`.
    let read = unsafe { slots.read(h, buf) };
    let next = h.wrapping_add(1);
    idx.head.store(next, Ordering::Release);
    *head = next;
    match read {
        Ok(()) => Ok(true),
        Err(BadLength(len)) => Err(PopError::Length { index: h, len }),
    }
}

/// Messages readable from the consumer's point of view; a corrupt difference reads as
/// `count` so callers never size anything by it.
pub(crate) fn available(idx: &Indices<'_>, head: u64, count: u64) -> u64 {
    idx.tail
        .load(Ordering::Acquire)
        .checked_sub(head)
        .map_or(count, |n| n.min(count))
}

/// Messages in the ring from the producer's point of view (see [`available`]).
pub(crate) fn occupied(idx: &Indices<'_>, tail: u64, count: u64) -> u64 {
    tail.checked_sub(idx.head.load(Ordering::Acquire))
        .map_or(count, |n| n.min(count))
}

/// Announce that the consumer is about to sleep. Returns false (and withdraws the
/// announcement) when a message is already there; true means the caller may sleep on
/// `waiting` while it still reads 1.
pub(crate) fn prepare_wait(idx: &Indices<'_>, head: u64) -> bool {
    idx.waiting.store(1, Ordering::Relaxed);
    // Dekker: the `waiting` store above and the tail load below must not be reordered.
    fence(Ordering::SeqCst);
    if idx.tail.load(Ordering::Acquire) != head {
        idx.waiting.store(0, Ordering::Relaxed);
        return false;
    }
    true
}

/// After a sleep (woken or timed out), withdraw the announcement.
pub(crate) fn finish_wait(idx: &Indices<'_>) {
    idx.waiting.store(0, Ordering::Relaxed);
}

#[cfg(all(test, switchyard_loom))]
mod loom_tests {
    //! Model-checks the index protocol: order, content, no overwrite of unread slots (loom's
    //! `UnsafeCell` flags a slot write racing its read) and no lost wake-up.

    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    const MAX: usize = 4;

    struct Ring {
        head: AtomicU64,
        tail: AtomicU64,
        waiting: AtomicU32,
        slots: Vec<UnsafeCell<(u32, [u8; MAX])>>,
    }

    impl Ring {
        fn new(count: usize) -> Self {
            Ring {
                head: AtomicU64::new(0),
                tail: AtomicU64::new(0),
                waiting: AtomicU32::new(0),
                slots: (0..count).map(|_| UnsafeCell::new((0, [0; MAX]))).collect(),
            }
        }

        fn indices(&self) -> Indices<'_> {
            Indices {
                head: &self.head,
                tail: &self.tail,
                waiting: &self.waiting,
            }
        }

        fn cell(&self, index: u64) -> &UnsafeCell<(u32, [u8; MAX])> {
            let count = self.slots.len() as u64;
            &self.slots[(index % count) as usize]
        }
    }

    impl Slots for Ring {
        fn count(&self) -> u64 {
            self.slots.len() as u64
        }

        fn max_len(&self) -> usize {
            MAX
        }

        unsafe fn write(&self, index: u64, msg: &[u8]) {
            self.cell(index).with_mut(|p| {
                // SAFETY: loom checks the exclusivity this relies on.
                let slot = unsafe { &mut *p };
                slot.0 = msg.len() as u32;
                slot.1[..msg.len()].copy_from_slice(msg);
            });
        }

        unsafe fn read(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), BadLength> {
            self.cell(index).with(|p| {
                // SAFETY: loom checks the exclusivity this relies on.
                let slot = unsafe { &*p };
                buf.clear();
                let len = slot.0 as usize;
                if len > MAX {
                    return Err(BadLength(slot.0));
                }
                buf.extend_from_slice(&slot.1[..len]);
                Ok(())
            })
        }
    }

    fn message(i: u8) -> Vec<u8> {
        vec![i; usize::from(i % 3) + 1]
    }

    #[test]
    fn order_and_content_through_a_tiny_ring() {
        const N: u8 = 3;
        loom::model(|| {
            let ring = Arc::new(Ring::new(2));
            let producer = {
                let ring = ring.clone();
                thread::spawn(move || {
                    let mut tail = 0;
                    for i in 0..N {
                        loop {
                            match push(&ring.indices(), &*ring, &mut tail, &message(i)) {
                                Ok(_) => break,
                                Err(PushError::Full) => thread::yield_now(),
                                Err(e) => panic!("unexpected {e:?}"),
                            }
                        }
                    }
                })
            };
            let mut head = 0;
            let mut buf = Vec::new();
            for i in 0..N {
                loop {
                    match pop(&ring.indices(), &*ring, &mut head, &mut buf) {
                        Ok(true) => break,
                        Ok(false) => thread::yield_now(),
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
                assert_eq!(buf, message(i));
            }
            producer.join().expect("producer");
            assert_eq!(pop(&ring.indices(), &*ring, &mut head, &mut buf), Ok(false));
        });
    }

    #[test]
    fn full_ring_never_overwrites() {
        loom::model(|| {
            let ring = Arc::new(Ring::new(1));
            let producer = {
                let ring = ring.clone();
                thread::spawn(move || {
                    let mut tail = 0;
                    let mut pushed = 0u8;
                    // Two attempts each: whatever interleaving, only accepted pushes count.
                    for i in 0..2 {
                        for _ in 0..2 {
                            if push(&ring.indices(), &*ring, &mut tail, &message(i)).is_ok() {
                                pushed += 1;
                                break;
                            }
                            thread::yield_now();
                        }
                    }
                    pushed
                })
            };
            let mut head = 0;
            let mut buf = Vec::new();
            let mut got = Vec::new();
            for _ in 0..2 {
                if pop(&ring.indices(), &*ring, &mut head, &mut buf) == Ok(true) {
                    got.push(buf.clone());
                }
            }
            let pushed = producer.join().expect("producer");
            while pop(&ring.indices(), &*ring, &mut head, &mut buf) == Ok(true) {
                got.push(buf.clone());
            }
            let want: Vec<_> = (0..pushed).map(message).collect();
            assert_eq!(got, want);
        });
    }

    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            let ring = Arc::new(Ring::new(2));
            let producer = {
                let ring = ring.clone();
                thread::spawn(move || {
                    let mut tail = 0;
                    let flagged = push(&ring.indices(), &*ring, &mut tail, b"x").expect("room");
                    flagged && take_waiter(&ring.indices())
                })
            };
            // The consumer decides to sleep only if it saw the ring empty with its flag up;
            // a real FUTEX_WAIT then blocks only while the flag still reads 1.
            let sleeps = prepare_wait(&ring.indices(), 0);
            let woke = producer.join().expect("producer");
            // A consumer that saw the ring empty with its flag up goes to FUTEX_WAIT; the
            // producer must then have seen the flag and owe it a wake, else the message
            // would sit unnoticed until the timeout.
            if sleeps {
                assert!(woke, "consumer slept through a publish");
            }
        });
    }
}
