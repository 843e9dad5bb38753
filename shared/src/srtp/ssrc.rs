//! Fixed-capacity SSRC → state map, so no packet ever allocates. A session carries a handful
//! of SSRCs (audio, video, their RTX, simulcast layers), so a linear scan of at most
//! `MAX_SSRCS` contiguous u32s beats hashing; the most recently used slot is tried first
//! because packets of one SSRC arrive in runs.

use super::Error;

/// SSRCs one context tracks per table; beyond this, packets fail with `TooManySsrcs`.
pub const MAX_SSRCS: usize = 16;

// Every table slot has its entry in a journal record.
const _: () = assert!(MAX_SSRCS <= crate::journal::SLOTS);

#[derive(Clone, Debug)]
pub(crate) struct Table<S: Copy + Default> {
    ssrcs: [u32; MAX_SSRCS],
    states: [S; MAX_SSRCS],
    len: usize,
    last: usize,
}

impl<S: Copy + Default> Default for Table<S> {
    fn default() -> Self {
        Table {
            ssrcs: [0; MAX_SSRCS],
            states: [S::default(); MAX_SSRCS],
            len: 0,
            last: 0,
        }
    }
}

impl<S: Copy + Default> Table<S> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slot `ssrc` occupies, if it has one.
    pub(crate) fn find(&mut self, ssrc: u32) -> Option<usize> {
        if self.last < self.len && self.ssrcs[self.last] == ssrc {
            return Some(self.last);
        }
        let slot = self.ssrcs[..self.len].iter().position(|&s| s == ssrc)?;
        self.last = slot;
        Some(slot)
    }

    /// The state of `ssrc`, or a fresh one if it has no slot yet (nothing is inserted:
    /// see [`Table::commit`]). Fails only when the SSRC is new and the table is full.
    pub(crate) fn get(&mut self, ssrc: u32) -> Result<(Option<usize>, S), Error> {
        match self.find(ssrc) {
            Some(slot) => Ok((Some(slot), self.states[slot])),
            None if self.len < MAX_SSRCS => Ok((None, S::default())),
            None => Err(Error::TooManySsrcs),
        }
    }

    /// Stores `state` for `ssrc` in the slot `get` returned (or a new one); returns the slot,
    /// `None` when the table is full.
    pub(crate) fn commit(&mut self, ssrc: u32, slot: Option<usize>, state: S) -> Option<usize> {
        let slot = match slot {
            Some(slot) => slot,
            None => {
                if self.len >= MAX_SSRCS {
                    // `get` already refused this SSRC; nothing to store it in.
                    return None;
                }
                self.ssrcs[self.len] = ssrc;
                self.len += 1;
                self.len - 1
            }
        };
        self.states[slot] = state;
        self.last = slot;
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_up_and_refuses() {
        let mut t = Table::<u32>::default();
        for ssrc in 0..MAX_SSRCS as u32 {
            let (slot, s) = t.get(ssrc * 7).expect("room");
            assert_eq!((slot, s), (None, 0));
            t.commit(ssrc * 7, slot, ssrc + 1);
        }
        assert_eq!(t.len(), MAX_SSRCS);
        assert_eq!(t.get(1000), Err(Error::TooManySsrcs));
        for ssrc in (0..MAX_SSRCS as u32).rev() {
            assert_eq!(t.get(ssrc * 7).expect("present").1, ssrc + 1);
        }
    }
}
