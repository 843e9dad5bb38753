//! Bitrates and per-stream totals from the data plane's per-session slots
//! (`switchyard_shared::stats::SessionSlot`).
//!
//! The slots hold counters only; a bitrate is the difference of two reads. A task spawned by
//! `start.rs` calls [`Traffic::sample`] once a second, so every reader (the API, `/metrics`)
//! sees the same rate over the same one-second window, whoever asks and how often.
//!
//! A slot resets when its session ends, so a stream's total as the sum of its live sessions
//! would fall whenever a subscriber leaves (a Prometheus counter must not). Sessions that
//! ended are added, with their last sampled counters, to their stream's `retired` total; a
//! stream's totals are retired + live. What a session did between its last sample and its
//! end (under a second) is lost. When a stream has no session left its totals go too (a
//! new publisher starts from zero: a counter reset to Prometheus).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchyard_shared::command::{Role, SessionId};
use switchyard_shared::stats::{SessionCounters, Stats};

use super::state::NodeState;

/// How often sessions are sampled: the window of every bitrate.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// One stream's counters: media in from its publisher (or relay-in), out to its subscribers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamTotals {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

impl StreamTotals {
    fn add(&mut self, c: &SessionCounters, publisher: bool) {
        if publisher {
            self.packets_in += c.rx_packets;
            self.bytes_in += c.rx_bytes;
        } else {
            self.packets_out += c.tx_packets;
            self.bytes_out += c.tx_bytes;
        }
    }

    fn plus(mut self, o: &StreamTotals) -> StreamTotals {
        self.packets_in += o.packets_in;
        self.bytes_in += o.bytes_in;
        self.packets_out += o.packets_out;
        self.bytes_out += o.bytes_out;
        self
    }
}

#[derive(Debug)]
struct Seen {
    stream: String,
    publisher: bool,
    last: SessionCounters,
    at: Instant,
    /// Bits per second in and out over the last sample interval.
    rate: (u64, u64),
}

/// Bitrates per session and retired totals per stream; bounded by the live sessions and
/// their streams.
#[derive(Debug, Default)]
pub struct Traffic {
    seen: HashMap<SessionId, Seen>,
    retired: HashMap<String, StreamTotals>,
}

/// Whether a role's traffic is the stream's "in" side.
pub fn is_publisher(role: &Role) -> bool {
    matches!(role, Role::Publisher { .. } | Role::RelayIn { .. })
}

/// Every live slot in one pass over the file (a lookup per session would scan a worker's
/// slots each time).
pub fn read_all(stats: &Stats) -> HashMap<SessionId, SessionCounters> {
    stats.live().map(|(_, id, c)| (SessionId(id), c)).collect()
}

fn bps(now: u64, before: u64, secs: f64) -> u64 {
    if secs <= 0.0 {
        return 0;
    }
    (now.saturating_sub(before) as f64 * 8.0 / secs) as u64
}

impl Traffic {
    /// Read every session's slot at `now`: new rates, and the last counters of sessions
    /// that ended go to their stream's retired total.
    pub fn sample(&mut self, now: Instant, node: &NodeState, stats: &Stats) {
        let read = read_all(stats);
        let mut live = HashMap::with_capacity(self.seen.len());
        for s in node.sessions() {
            if let Some(&c) = read.get(&s.id) {
                live.insert(s.id, (s, c));
            }
        }
        let ended: Vec<SessionId> = self
            .seen
            .keys()
            .filter(|id| !live.contains_key(id))
            .copied()
            .collect();
        for id in ended {
            if let Some(gone) = self.seen.remove(&id) {
                self.retired
                    .entry(gone.stream)
                    .or_default()
                    .add(&gone.last, gone.publisher);
            }
        }
        for (id, (spec, c)) in live {
            let rate = match self.seen.get(&id) {
                Some(prev) => {
                    let secs = now.saturating_duration_since(prev.at).as_secs_f64();
                    (
                        bps(c.rx_bytes, prev.last.rx_bytes, secs),
                        bps(c.tx_bytes, prev.last.tx_bytes, secs),
                    )
                }
                None => (0, 0),
            };
            self.seen.insert(
                id,
                Seen {
                    stream: spec.stream.clone(),
                    publisher: is_publisher(&spec.role),
                    last: c,
                    at: now,
                    rate,
                },
            );
        }
        let streams: std::collections::HashSet<&str> =
            self.seen.values().map(|s| s.stream.as_str()).collect();
        self.retired.retain(|k, _| streams.contains(k.as_str()));
    }

    /// Session `id`'s bits per second (in, out) over the last sample interval; `None`
    /// until it has been sampled.
    pub fn bitrate(&self, id: SessionId) -> Option<(u64, u64)> {
        self.seen.get(&id).map(|s| s.rate)
    }

    /// Totals of every stream with a live session: retired plus `live` (the sessions'
    /// counters read now, so the totals are current, not a second old).
    pub fn streams(&self, node: &NodeState, stats: &Stats) -> HashMap<String, StreamTotals> {
        let read = read_all(stats);
        let mut out: HashMap<String, StreamTotals> = HashMap::new();
        for s in node.sessions() {
            let e = out.entry(s.stream.clone()).or_default();
            if let Some(c) = read.get(&s.id) {
                e.add(c, is_publisher(&s.role));
            }
        }
        for (stream, t) in out.iter_mut() {
            if let Some(r) = self.retired.get(stream) {
                *t = t.plus(r);
            }
        }
        out
    }
}
