//! Proves protect/unprotect never allocate after `Context::new`: a counting global allocator
//! wraps the system one, and the packet loop must leave the count untouched.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_shared::srtp::{Context, Profile, MAX_OVERHEAD};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Only the test's own thread counts: the harness's threads may allocate meanwhile
    // (seen as a flaky failure on a loaded machine).
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(|c| c.get()).unwrap_or(false)
}

// SAFETY: forwards every call unchanged to `System`, which upholds GlobalAlloc's contract;
// the counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same layout the caller gave us, which GlobalAlloc requires be non-zero-sized.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; the caller upholds realloc's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn no_allocation_per_packet() {
    for p in [Profile::AesCm128HmacSha1_80, Profile::AeadAes128Gcm] {
        let master: Vec<u8> = (0..p.master_len() as u8).collect();
        let mut tx = Context::new(p, &master).expect("tx");
        let mut rx = Context::new(p, &master).expect("rx");
        let mut buf = [0u8; 1200 + MAX_OVERHEAD];
        let mut bad = [0u8; 1200 + MAX_OVERHEAD];

        let before = ALLOCS.load(Ordering::Relaxed);
        COUNTING.with(|c| c.set(true));
        for i in 0..5000u32 {
            let seq = (65_000 + i) as u16;
            let ssrc = i % 8;
            buf[..12].copy_from_slice(&[0x80, 96, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
            let n = tx.protect_rtp(&mut buf, 1200).expect("protect");
            bad[..n].copy_from_slice(&buf[..n]);
            bad[n / 2] ^= 1;
            assert!(rx.unprotect_rtp(&mut bad[..n]).is_err());
            assert_eq!(rx.unprotect_rtp(&mut buf[..n]), Ok(1200));
            assert!(rx.unprotect_rtp(&mut buf[..n]).is_err(), "replay");

            buf[..8].copy_from_slice(&[0x80, 200, 0, 6, 0, 0, 0, 0]);
            buf[4..8].copy_from_slice(&ssrc.to_be_bytes());
            let n = tx.protect_rtcp(&mut buf, 100).expect("protect rtcp");
            assert_eq!(rx.unprotect_rtcp(&mut buf[..n]), Ok(100));
        }
        COUNTING.with(|c| c.set(false));
        let after = ALLOCS.load(Ordering::Relaxed);
        assert_eq!(after - before, 0, "{p:?} allocated on the packet path");
    }
}
