//! A set of workers of one node: who has subscribers of a stream, whom a turn's messages
//! went to.
//!
//! One bit per worker in a fixed array sized for [`MAX_WORKERS`], the most workers a
//! validated config starts, so every worker index a node has is its own bit. (Before this
//! type the sets were `u64` masks taken `% 64`: on a host with more than 64 cores worker 64
//! was worker 0, and cross-worker media went to the wrong thread.) The set is `Copy` and
//! never allocates, so it can travel in commands and be walked per packet.

use switchyard_shared::config::MAX_WORKERS;

const WORDS: usize = (MAX_WORKERS as usize).div_ceil(64);

/// Workers `0..MAX_WORKERS`, as bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct WorkerSet {
    words: [u64; WORDS],
}

impl WorkerSet {
    /// No worker.
    pub const fn new() -> Self {
        Self { words: [0; WORDS] }
    }

    /// Add worker `w`. Returns false, and changes nothing, for an index no node can have
    /// (`w >= MAX_WORKERS`): such a worker is never aliased onto another one.
    pub fn insert(&mut self, w: u16) -> bool {
        let Some((word, bit)) = Self::slot(w) else {
            return false;
        };
        self.words[word] |= bit;
        true
    }

    pub fn remove(&mut self, w: u16) {
        if let Some((word, bit)) = Self::slot(w) {
            self.words[word] &= !bit;
        }
    }

    pub fn contains(&self, w: u16) -> bool {
        Self::slot(w).is_some_and(|(word, bit)| self.words[word] & bit != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Empty the set, handing back what it held.
    pub fn take(&mut self) -> Self {
        std::mem::take(self)
    }

    /// The workers in the set, lowest first.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            words: &self.words,
            word: 0,
            bits: self.words[0],
        }
    }

    fn slot(w: u16) -> Option<(usize, u64)> {
        (w < MAX_WORKERS).then(|| (usize::from(w) / 64, 1u64 << (w % 64)))
    }
}

impl FromIterator<u16> for WorkerSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut s = Self::new();
        for w in iter {
            s.insert(w);
        }
        s
    }
}

impl std::fmt::Debug for WorkerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// [`WorkerSet::iter`]: walks the words, clearing a copy of the current one's bits as they
/// are returned (no copy of the whole set: it is walked per packet on fan-out).
pub struct Iter<'a> {
    words: &'a [u64; WORDS],
    word: usize,
    bits: u64,
}

impl Iterator for Iter<'_> {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        loop {
            if self.bits != 0 {
                let b = self.bits.trailing_zeros();
                self.bits &= self.bits - 1;
                // `word < WORDS` and `b < 64`, so this is below MAX_WORKERS.
                return Some((self.word * 64) as u16 + b as u16);
            }
            self.word += 1;
            self.bits = *self.words.get(self.word)?;
        }
    }
}

impl<'a> IntoIterator for &'a WorkerSet {
    type Item = u16;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: with more than 64 workers, worker 64 is not worker 0.
    #[test]
    fn workers_beyond_64_are_distinct() {
        let mut s = WorkerSet::new();
        assert!(s.insert(64));
        assert!(!s.contains(0), "64 does not alias 0");
        assert!(s.insert(0));
        assert!(s.insert(99));
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 64, 99]);
        assert_eq!(s.len(), 3);
        s.remove(0);
        assert!(s.contains(64) && !s.contains(0));
    }

    #[test]
    fn every_index_up_to_the_maximum_is_its_own_member() {
        let all: WorkerSet = (0..MAX_WORKERS).collect();
        assert_eq!(all.len(), usize::from(MAX_WORKERS));
        assert!(all.iter().eq(0..MAX_WORKERS));
        for w in [0, 63, 64, 127, 128, MAX_WORKERS - 1] {
            let one: WorkerSet = [w].into_iter().collect();
            assert_eq!(one.iter().collect::<Vec<_>>(), [w]);
        }
    }

    #[test]
    fn an_index_past_the_maximum_is_refused_not_aliased() {
        let mut s = WorkerSet::new();
        assert!(!s.insert(MAX_WORKERS));
        assert!(!s.insert(u16::MAX));
        assert!(s.is_empty());
        assert!(!s.contains(MAX_WORKERS));
    }

    #[test]
    fn take_empties_the_set() {
        let mut s: WorkerSet = [3, 200].into_iter().collect();
        let t = s.take();
        assert!(s.is_empty());
        assert_eq!(t.iter().collect::<Vec<_>>(), [3, 200]);
    }
}
