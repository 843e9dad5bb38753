//! The relay task: it writes this node's streams to the cluster store when they change
//! (where other nodes' cascades look for them), looks for a new source of relays that lost
//! theirs or went quiet, and every [`TICK`] forgets relays whose session the data plane no
//! longer has, ends cascade relays nobody has used for the grace period, and reads its relay
//! links' round-trip times (written to its store record when they move).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_shared::command::{Role, SessionId};

use super::rtt;
use super::service::Relays;
use crate::core::clock::now_ms;
use crate::core::counters;
use crate::core::store::Store as _;

/// How often the relay task syncs the store, reconciles the book and runs grace timers.
const TICK: Duration = Duration::from_secs(1);
/// The short tick: how often this node's streams are written when they changed, and, while
/// a relay here has lost its source or gone quiet, how often the store is asked for a new
/// one (the time a viewer waits after the stream is published again somewhere is at most
/// this). Both are local checks until something changed.
const REPULL_TICK: Duration = Duration::from_millis(200);
/// Ticks a relay's session must be missing from the data plane before its record goes.
const FORGET_AFTER_TICKS: u32 = 5;
/// The store entry of this node's streams is rewritten at least this often, so a store that
/// lost it (a Redis restart) has it back soon.
const STORE_REFRESH: Duration = Duration::from_secs(30);

impl Relays {
    /// The streams this node publishes, with their hop lists: local publishers (no hops) and
    /// relays that feed it.
    fn published(&self) -> BTreeMap<String, Vec<String>> {
        let g = self.sessions.lock();
        let relays = self.book.lock();
        let mut out = BTreeMap::new();
        for s in g.node.sessions() {
            match s.role {
                Role::Publisher { .. } => {
                    out.insert(s.stream.clone(), Vec::new());
                }
                Role::RelayIn { .. } => {
                    let hops = relays
                        .incoming(&s.stream)
                        .map(|r| r.hops.clone())
                        .unwrap_or_default();
                    out.insert(s.stream.clone(), hops);
                }
                _ => {}
            }
        }
        out
    }

    /// Sessions using each stream here: subscribers and relays onwards.
    fn users(&self) -> BTreeMap<String, usize> {
        let g = self.sessions.lock();
        let mut out = BTreeMap::new();
        for s in g.node.sessions() {
            if matches!(s.role, Role::Subscriber { .. } | Role::RelayOut) {
                *out.entry(s.stream.clone()).or_default() += 1;
            }
        }
        out
    }

    /// Write this node's streams to the store now.
    pub async fn sync_streams(&self) {
        let streams = self.published();
        if let Err(e) = self
            .cluster
            .store
            .set_node_streams(&self.node_id, streams)
            .await
        {
            tracing::warn!(error = %e, "cannot record this node's streams in the cluster store");
        }
    }
}

/// Measure the relay links' RTTs; write them to this node's store record when they moved
/// ([`rtt::changed`]) or [`STORE_REFRESH`] passed, and to the metrics each tick.
async fn sync_rtts(
    relays: &Relays,
    now: u64,
    written: &mut Option<(BTreeMap<String, f64>, Instant)>,
) {
    let rtts = relays.measure_rtts(now);
    counters::cluster().set_relay_rtts(&rtts);
    let due = match written {
        None => !rtts.is_empty(),
        Some((w, at)) => rtt::changed(&rtts, w) || at.elapsed() >= STORE_REFRESH,
    };
    if !due {
        return;
    }
    match relays
        .cluster
        .store
        .set_relay_rtt(&relays.node_id, &rtts)
        .await
    {
        Ok(()) => *written = Some((rtts, Instant::now())),
        Err(e) => tracing::warn!(error = %e, "cannot record this node's relay RTTs"),
    }
}

/// Write this node's streams to the store when they changed since `written` (or
/// [`STORE_REFRESH`] passed).
async fn write_streams(
    relays: &Relays,
    written: &mut Option<(BTreeMap<String, Vec<String>>, Instant)>,
) {
    let streams = relays.published();
    let due = written
        .as_ref()
        .is_none_or(|(w, at)| *w != streams || at.elapsed() >= STORE_REFRESH);
    if !due {
        return;
    }
    match relays
        .cluster
        .store
        .set_node_streams(&relays.node_id, streams.clone())
        .await
    {
        Ok(()) => *written = Some((streams, Instant::now())),
        Err(e) => tracing::warn!(error = %e, "cannot record this node's streams"),
    }
}

/// The relay task: store sync, reconciliation with the data plane, grace timers. Runs until
/// aborted.
pub async fn run(relays: Arc<Relays>) {
    let grace = relays.cluster.config.relay_grace_ms;
    let mut written: Option<(BTreeMap<String, Vec<String>>, Instant)> = None;
    let mut rtt_written: Option<(BTreeMap<String, f64>, Instant)> = None;
    // Ticks each relay's session has been missing from the data plane's table in a row.
    let mut missing: HashMap<SessionId, u32> = HashMap::new();
    // Whether a relay here lost its source and found no new one at the last look.
    let mut lost = false;
    let mut last_tick = Instant::now();
    loop {
        // A dead node removed here wakes the task early: relays it fed look for their
        // stream's new home now (the room was placed again in the same step).
        let removed = tokio::select! {
            () = tokio::time::sleep(REPULL_TICK) => false,
            () = relays.cluster.removed.notified() => true,
        };
        // Every short tick: this node's streams when they changed (a publisher that just
        // arrived is found by the others' cascades within one), and the search for a new
        // source while a relay here is lost or has gone quiet (a dead source is suspected
        // half a second after its last packet, not at the next full tick).
        write_streams(&relays, &mut written).await;
        if last_tick.elapsed() < TICK {
            if (lost || removed || relays.any_newly_quiet())
                && relays.sessions.lock().node.ready().is_ok()
            {
                lost = relays.repull_lost().await;
            }
            continue;
        }
        last_tick = Instant::now();
        let ready = relays.sessions.lock().node.ready().is_ok();
        if ready {
            let live: HashSet<_> = relays
                .sessions
                .lock()
                .node
                .sessions()
                .map(|s| s.id)
                .collect();
            let recorded: Vec<_> = {
                let book = relays.book.lock();
                book.outs()
                    .map(|r| r.session)
                    .chain(book.ins().map(|r| r.session))
                    .collect()
            };
            missing.retain(|id, _| recorded.contains(id) && !live.contains(id));
            for id in recorded.into_iter().filter(|id| !live.contains(id)) {
                *missing.entry(id).or_default() += 1;
            }
            // Missing for a few seconds, not one glimpse: while a restarted data plane is
            // re-provisioned, the table may briefly lack sessions that come back.
            let gone = |id| missing.get(&id).is_some_and(|&n| n >= FORGET_AFTER_TICKS);
            if relays.book.lock().retain_live(|id| !gone(id)) {
                tracing::warn!("relays whose session the data plane no longer has were forgotten");
                relays.book.save();
            }
        }
        if !ready {
            continue;
        }
        lost = relays.repull_lost().await;
        let now = now_ms();
        sync_rtts(&relays, now, &mut rtt_written).await;
        let users = relays.users();
        let expired = {
            let mut book = relays.book.lock();
            let streams: Vec<String> = book.ins().map(|r| r.stream.clone()).collect();
            for s in streams {
                book.note_users(&s, users.get(&s).copied().unwrap_or(0), now);
            }
            book.expired(now, grace)
        };
        for r in expired {
            tracing::info!(stream = %r.stream, source = %r.source_node, "relay unused for the grace period; ending it");
            relays.end_incoming(&r).await;
        }
    }
}
