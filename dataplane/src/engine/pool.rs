//! Refcounted packet buffers that cross worker boundaries without allocating.
//!
//! A publisher's worker decrypts each RTP packet once into a [`Packet`] taken from its
//! [`Pool`], keeps one handle in the NACK cache, and hands one clone to every other worker
//! that has subscribers (one per worker, not one per subscriber). Consumers never drop a
//! handle: they send it back through the owner's return queue, and only the owning worker
//! drops or recycles. That makes `Arc::strong_count(&p) == 1` on the owner a proof that no
//! one else holds the packet, so it can be rewritten in place — no `unsafe`, no allocation
//! per packet, and a buffer that is still in use elsewhere is never reused.

use std::sync::Arc;
use std::time::Instant;

use super::StreamId;

/// Plaintext RTP at most this long (a 1500-byte datagram minus the shortest SRTP tag).
pub const PACKET_CAP: usize = 1500;

/// One decrypted RTP packet and where it belongs.
#[derive(Clone)]
pub struct Packet {
    pub stream: StreamId,
    /// Track index in the publisher's stream.
    pub track: u8,
    pub len: u16,
    /// When the datagram was received (stamped at the socket); `None` until a packet is
    /// written into the buffer (the pool is filled at control time, with no clock to read).
    pub at: Option<Instant>,
    /// A packet of a simulcast layer: which one and what viewers' switching needs to know.
    /// `None` for every other packet, so their path never looks further.
    pub layer: Option<super::layers::LayerTag>,
    /// A packet of a VP9 track of a publisher that sends spatial layers (`svc`): its
    /// layer and frame bits. `None` for every other packet.
    pub svc: Option<super::svc::SvcTag>,
    /// A packet of a video (90 kHz) track: subscribers may get it padded to an equal size
    /// (`padding.rs`).
    pub video: bool,
    /// Its track had a whole group in the publisher's cache when it came (`prime`): a
    /// subscriber being started from that group elsewhere gets it with the replay.
    pub grouped: bool,
    /// The publisher's epoch when the packet came (`session::Publisher::epoch`): a viewer
    /// that sees it change re-bases its numbering (`continuity`).
    pub epoch: u32,
    pub data: [u8; PACKET_CAP],
}

impl Packet {
    fn empty() -> Self {
        Self {
            stream: StreamId(0),
            track: 0,
            len: 0,
            at: None,
            layer: None,
            svc: None,
            video: false,
            grouped: false,
            epoch: 0,
            data: [0; PACKET_CAP],
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len).min(PACKET_CAP)]
    }
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packet")
            .field("stream", &self.stream)
            .field("track", &self.track)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

pub type Handle = Arc<Packet>;

/// The owning worker's free list. Other workers send handles home as `Inbound::Return`.
///
/// Sized by live publishers: each one [`reserve`](Pool::reserve)s its share when added and
/// [`release`](Pool::release)s it when removed. Buffers beyond what live publishers reserve
/// are freed as soon as nobody holds them (at once if free, else when they come home), so a
/// node's memory follows its live sessions, not every publisher it ever had.
#[derive(Default)]
pub struct Pool {
    free: Vec<Handle>,
    /// Buffers that exist (free, cached, or in flight to other workers).
    total: usize,
    /// Buffers live publishers are owed.
    target: usize,
}

impl Pool {
    pub fn new() -> Self {
        Self::default()
    }

    /// Owe `n` more buffers (a publisher was added: control time, never per packet). Buffers
    /// still around from a removed publisher are reused before new ones are made.
    pub fn reserve(&mut self, n: usize) {
        self.target += n;
        let missing = self.target.saturating_sub(self.total);
        self.free.reserve(missing);
        for _ in 0..missing {
            self.free.push(Arc::new(Packet::empty()));
        }
        self.total += missing;
    }

    /// Owe `n` fewer buffers (a publisher was removed). Free surplus buffers are dropped now;
    /// surplus ones still held elsewhere are dropped by [`put`](Pool::put) when they return.
    pub fn release(&mut self, n: usize) {
        self.target = self.target.saturating_sub(n);
        while self.total > self.target {
            let Some(h) = self.free.pop() else { break };
            // A free handle is normally ours alone; if not, its other holder returns it.
            if Arc::strong_count(&h) == 1 {
                self.total -= 1;
            }
        }
        self.free.shrink_to(self.target);
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// A buffer nobody else holds, or `None` when all are in use.
    pub fn take(&mut self) -> Option<Handle> {
        loop {
            let h = self.free.pop()?;
            if Arc::strong_count(&h) == 1 {
                return Some(h);
            }
            // Still held elsewhere (only possible if a handle was recycled while a clone was in
            // flight); dropping ours leaves the other holder's clone to come back later.
        }
    }

    /// Hand a handle back (from the NACK cache, a finished fan-out, or a return queue).
    /// Recycles it when this was the last reference, else just drops this clone.
    pub fn put(&mut self, h: Handle) {
        if Arc::strong_count(&h) == 1 {
            if self.total > self.target {
                // Surplus from a removed publisher: free it instead of keeping it.
                self.total -= 1;
            } else {
                self.free.push(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycles_only_last_reference() {
        let mut pool = Pool::new();
        pool.reserve(2);
        let a = pool.take().expect("a");
        let elsewhere = a.clone();
        pool.put(a);
        assert_eq!(pool.free(), 1, "a is still held elsewhere");
        pool.put(elsewhere);
        assert_eq!(pool.free(), 2);
        let mut b = pool.take().expect("b");
        assert!(
            Arc::get_mut(&mut b).is_some(),
            "a recycled buffer is exclusively ours"
        );
    }

    #[test]
    fn release_frees_surplus_now_or_when_it_comes_home() {
        let mut pool = Pool::new();
        pool.reserve(4);
        let held = pool.take().expect("held");
        let elsewhere = held.clone();
        pool.release(4);
        assert_eq!((pool.free(), pool.total()), (0, 1), "three freed at once");
        pool.put(held);
        assert_eq!(pool.total(), 1, "still held by another worker");
        pool.put(elsewhere);
        assert_eq!(
            (pool.free(), pool.total()),
            (0, 0),
            "freed when it came home"
        );
        pool.reserve(2);
        pool.reserve(1);
        assert_eq!((pool.free(), pool.total()), (3, 3));
    }
}
