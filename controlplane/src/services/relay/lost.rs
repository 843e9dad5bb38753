//! When a relay that feeds this node has lost its source (viewer continuity, docs/cluster.md).
//!
//! Sans-IO: told, for a relay of a stream from a source node, whether that node is still in
//! the registry and whether its store entry lists the stream, with the time. A source gone
//! from the registry was removed as dead: lost at once. A live source that does not list
//! the stream is lost only after [`UNLISTED_GRACE_MS`] of not listing it: a node writes its
//! streams within a relay tick (1 s) of a change, so a relay opened just after its
//! publisher (before the listing) is never taken for lost, while one whose publisher left
//! or moved is, a few seconds later.

use std::collections::{BTreeSet, HashMap};

/// How long a live source may go without listing a stream it relays here.
pub const UNLISTED_GRACE_MS: u64 = 3_000;

/// Since when each relayed stream's source has not listed it.
#[derive(Debug, Default)]
pub struct Lost {
    /// stream → (source, first seen unlisted, Unix ms).
    unlisted: HashMap<String, (String, u64)>,
    /// Streams whose relay-in here was taken over: their relays onwards are to be opened
    /// again (they carried the old publisher's SSRCs).
    reopen: BTreeSet<String>,
}

impl Lost {
    /// Whether the relay of `stream` from `source` has lost it at `now_ms`: `registered`,
    /// the source is in the registry; `listed`, its store entry lists the stream.
    pub fn judge(
        &mut self,
        stream: &str,
        source: &str,
        (registered, listed): (bool, bool),
        now_ms: u64,
    ) -> bool {
        if !registered || listed {
            self.unlisted.remove(stream);
            return !registered;
        }
        let e = self
            .unlisted
            .entry(stream.to_owned())
            .or_insert_with(|| (source.to_owned(), now_ms));
        if e.0 != source {
            *e = (source.to_owned(), now_ms);
        }
        now_ms.saturating_sub(e.1) >= UNLISTED_GRACE_MS
    }

    /// The relays onwards of `stream` are to be opened again.
    pub fn reopen(&mut self, stream: &str) {
        self.reopen.insert(stream.to_owned());
    }

    /// The streams whose relays onwards are to be opened again, once.
    pub fn take_reopen(&mut self) -> Vec<String> {
        std::mem::take(&mut self.reopen).into_iter().collect()
    }

    /// Forget streams no relay here carries any more.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.unlisted.retain(|s, _| keep(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_source_is_lost_at_once() {
        let mut l = Lost::default();
        assert!(l.judge("r/s", "a", (false, false), 0));
        assert!(
            l.judge("r/s", "a", (false, true), 0),
            "a stale listing of a removed node"
        );
    }

    #[test]
    fn a_live_source_not_listing_the_stream_is_lost_after_the_grace() {
        let mut l = Lost::default();
        assert!(
            !l.judge("r/s", "a", (true, false), 1_000),
            "not yet listed: just opened"
        );
        assert!(!l.judge("r/s", "a", (true, false), 1_000 + UNLISTED_GRACE_MS - 1));
        assert!(l.judge("r/s", "a", (true, false), 1_000 + UNLISTED_GRACE_MS));
        // Listed again: the clock starts over.
        assert!(!l.judge("r/s", "a", (true, true), 10_000));
        assert!(!l.judge("r/s", "a", (true, false), 10_001));
        // Another source (the relay was taken over) starts its own grace.
        assert!(!l.judge("r/s", "b", (true, false), 10_001 + UNLISTED_GRACE_MS));
        l.retain(|s| s != "r/s");
        assert!(
            !l.judge("r/s", "a", (true, false), 99_999),
            "forgotten, starts over"
        );
    }
}
