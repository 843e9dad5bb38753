//! The forward driver: runs [`Manager::plan`](super::Manager::plan) every [`PLAN_INTERVAL`]
//! against the node's session table and carries out its actions through the same
//! provisioning path as the sessions API, one at a time, reporting each outcome back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_shared::command::{Keying, Role, SessionSpec, MAX_TRACKS};

use super::{Action, EgressKey, Forward, View};
use crate::cluster::store::Store as _;
use crate::cluster::Cluster;
use crate::link::Shared;

/// How often the driver compares forwards with the session table (and how long a new
/// publisher waits at most for its egresses).
pub const PLAN_INTERVAL: Duration = Duration::from_millis(200);

/// Run until the task is aborted. First (retried each turn until the store answers) the
/// forwards made through the API before this control plane started come back from the
/// cluster store.
pub async fn run(shared: Arc<Shared>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(PLAN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut restored = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.forward_wake.notified() => {}
        }
        if !restored {
            restored = restore(&shared, &cluster).await;
        }
        let view = View::of(shared.lock().node.sessions());
        let actions = {
            let mut m = shared.forwards();
            m.keep_unclaimed = !restored;
            m.plan(Instant::now(), &view)
        };
        for action in actions {
            match action {
                Action::Add(key) => {
                    let result = add(&shared, &key).await;
                    if let Err(e) = &result {
                        tracing::warn!(forward = %key.forward, stream = %key.stream, track = key.track, destination = %key.destination, error = %e, "forward egress not set up; retrying with backoff");
                    }
                    let stale = shared.forwards().added(&key, result, Instant::now());
                    if let Some(id) = stale {
                        remove(&shared, id).await;
                    }
                }
                Action::Remove(id) => remove(&shared, id).await,
            }
        }
    }
}

/// Add the saved forwards of this node; false when the store cannot be read yet.
async fn restore(shared: &Shared, cluster: &Cluster) -> bool {
    let saved = match cluster.store.list_forwards(&shared.config.node.id).await {
        Ok(saved) => saved,
        Err(e) => {
            tracing::warn!(error = %e, "saved forwards not read yet; retrying");
            return false;
        }
    };
    let mut m = shared.forwards();
    for (id, body) in saved {
        match Forward::from_saved(&id, &body) {
            // A config forward of the same id wins (the config is the operator's word).
            Ok(f) => match m.add(f) {
                Ok(()) => tracing::info!(forward = %id, "forward restored"),
                Err(e) => tracing::warn!(forward = %id, error = %e, "saved forward not restored"),
            },
            Err(e) => {
                tracing::warn!(forward = %id, error = %e, "saved forward unreadable; skipped")
            }
        }
    }
    true
}

/// Provision the plain egress session of `key`.
async fn add(
    shared: &Arc<Shared>,
    key: &EgressKey,
) -> Result<switchyard_shared::command::SessionId, String> {
    let remote = key
        .remote()
        .ok_or_else(|| "the destination has no port for this track".to_owned())?;
    let mut ssrcs = Vec::with_capacity(MAX_TRACKS);
    while ssrcs.len() < MAX_TRACKS {
        let mut b = [0u8; 4];
        crate::api::random_bytes(&mut b).map_err(|e| e.message().to_owned())?;
        let s = u32::from_be_bytes(b);
        if s != 0 && !ssrcs.contains(&s) {
            ssrcs.push(s);
        }
    }
    let stream = key.stream.clone();
    let track = key.track;
    let provisioned = crate::api::provision(shared, None, |id, worker, _| {
        Ok((
            SessionSpec {
                id,
                worker,
                stream,
                role: Role::Subscriber {
                    ssrcs,
                    // The publisher's payload types and extensions pass through: the SDP
                    // file describes them as the publisher numbered them.
                    payload_types: Vec::new(),
                    extensions: None,
                    rtx: Vec::new(),
                    tracks: 1 << track,
                },
                remote: Some(remote),
                keying: Keying::Plain,
                ice: None,
                twcc_ext: None,
                created_ms: crate::api::now_ms(),
            },
            (),
        ))
    })
    .await;
    match provisioned {
        Ok((spec, ())) => {
            tracing::info!(forward = %key.forward, stream = %key.stream, track, %remote, id = spec.id.0, "forward egress running");
            Ok(spec.id)
        }
        Err(e) => Err(e.message().to_owned()),
    }
}

async fn remove(shared: &Arc<Shared>, id: switchyard_shared::command::SessionId) {
    // A failure leaves the session in the table: the next plan asks again.
    if let Err(e) = crate::api::remove(shared, id).await {
        tracing::warn!(
            id = id.0,
            error = e.message(),
            "forward egress not removed yet"
        );
    }
}
