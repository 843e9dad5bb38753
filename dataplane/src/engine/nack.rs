//! The retransmission cache of one published track: the last N packets by sequence number.

use super::pool::{Handle, Pool};

/// Ring of the last `N` packets (N a power of two), indexed by `seq % N`.
pub struct Cache {
    slots: Vec<Option<(u16, Handle)>>,
    mask: usize,
}

impl Cache {
    /// `len` must be a power of two (config validation guarantees it).
    pub fn new(len: usize) -> Self {
        let len = len.next_power_of_two().max(1);
        Self {
            slots: (0..len).map(|_| None).collect(),
            mask: len - 1,
        }
    }

    /// Keep `h` as packet `seq`; the packet it displaces goes back to the pool.
    pub fn insert(&mut self, seq: u16, h: Handle, pool: &mut Pool) {
        let slot = &mut self.slots[usize::from(seq) & self.mask];
        if let Some((_, old)) = slot.replace((seq, h)) {
            pool.put(old);
        }
    }

    /// The cached packet with exactly this sequence number.
    pub fn get(&self, seq: u16) -> Option<&Handle> {
        match &self.slots[usize::from(seq) & self.mask] {
            Some((s, h)) if *s == seq => Some(h),
            _ => None,
        }
    }

    /// How many packets it holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Give every cached packet back (the track ended).
    pub fn clear(&mut self, pool: &mut Pool) {
        for slot in &mut self.slots {
            if let Some((_, h)) = slot.take() {
                pool.put(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_last_n_and_recycles_displaced() {
        let mut pool = Pool::new();
        pool.reserve(8);
        let mut c = Cache::new(4);
        for seq in 0..6u16 {
            let h = pool.take().expect("buffer");
            c.insert(seq, h, &mut pool);
        }
        assert!(c.get(0).is_none() && c.get(1).is_none());
        assert!(c.get(5).is_some() && c.get(2).is_some());
        assert_eq!(pool.free(), 4);
        c.clear(&mut pool);
        assert_eq!(pool.free(), 8);
    }
}
