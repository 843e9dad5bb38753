//! Round-trip times of this node's relay links, by peer node: what the data plane's
//! relay-outs measured from RTCP (the sender reports they pass on and the far node's
//! receiver reports, RFC 3550 §6.4.1; `dataplane::engine::rtt`), read from the stats file
//! each relay tick. Kept per peer after the last link to it ends, for [`KEEP_MS`], so the
//! next cascade still knows which source was near. The upkeep task writes the table to
//! this node's record in the store (`relayRttMs`), where every node's cascade reads it.

use std::collections::BTreeMap;
use std::time::Duration;

/// A peer's RTT is forgotten this long after it was last measured: paths change.
pub const KEEP_MS: u64 = 10 * 60_000;

/// Smoothed RTTs by peer node, sans-IO: fed measurements with the time, asked for what is
/// still fresh.
#[derive(Debug, Default)]
pub struct PeerRtts {
    /// Peer → (RTT in ms, when measured, Unix ms).
    peers: BTreeMap<String, (f64, u64)>,
}

impl PeerRtts {
    /// The links to `peer` measure `rtts` at `now_ms` (their mean is the peer's RTT).
    pub fn observe(&mut self, peer: &str, rtts: &[Duration], now_ms: u64) {
        if rtts.is_empty() {
            return;
        }
        let ms = rtts.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / rtts.len() as f64;
        self.peers.insert(peer.to_owned(), (ms, now_ms));
    }

    /// Every peer measured within [`KEEP_MS`] of `now_ms`, RTT in milliseconds (rounded
    /// to µs); older ones are forgotten.
    pub fn current(&mut self, now_ms: u64) -> BTreeMap<String, f64> {
        self.peers
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) < KEEP_MS);
        self.peers
            .iter()
            .map(|(p, (ms, _))| (p.clone(), (ms * 1000.0).round() / 1000.0))
            .collect()
    }
}

/// Whether the table moved enough since `written` to be written to the store again: a peer
/// came or went, or an RTT changed by more than a tenth (and a millisecond). Small wobbles
/// wait for the periodic rewrite.
pub fn changed(now: &BTreeMap<String, f64>, written: &BTreeMap<String, f64>) -> bool {
    now.len() != written.len()
        || now.iter().any(|(peer, &ms)| {
            written
                .get(peer)
                .is_none_or(|&w| (ms - w).abs() > (w * 0.1).max(1.0))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn peers_average_their_links_and_age_out() {
        let mut t = PeerRtts::default();
        t.observe("b", &[ms(20), ms(30)], 1000);
        t.observe("c", &[], 1000);
        assert_eq!(t.current(1000), BTreeMap::from([("b".to_owned(), 25.0)]));
        t.observe("c", &[ms(80)], 5000);
        assert_eq!(t.current(5000).len(), 2);
        // b's links ended: its value stays until KEEP_MS after its last measurement.
        assert_eq!(t.current(1000 + KEEP_MS - 1).len(), 2);
        assert_eq!(
            t.current(1000 + KEEP_MS),
            BTreeMap::from([("c".to_owned(), 80.0)])
        );
    }

    #[test]
    fn only_real_changes_are_written() {
        let w = BTreeMap::from([("b".to_owned(), 20.0), ("c".to_owned(), 0.3)]);
        let with = |b: f64, c: f64| BTreeMap::from([("b".to_owned(), b), ("c".to_owned(), c)]);
        assert!(!changed(&with(21.5, 0.3), &w), "within a tenth");
        assert!(!changed(&with(20.0, 1.2), &w), "within a millisecond");
        assert!(changed(&with(22.5, 0.3), &w));
        assert!(changed(&with(20.0, 1.5), &w));
        assert!(changed(&BTreeMap::from([("b".to_owned(), 20.0)]), &w));
        assert!(changed(&w, &BTreeMap::new()));
    }
}
