//! The forward driver: runs [`Manager::plan`](super::Manager::plan) every [`PLAN_INTERVAL`]
//! against the node's session table and carries out its actions through the same
//! provisioning path as the sessions API, one at a time, reporting each outcome back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_shared::command::{Keying, Role, SessionId, SessionSpec, MAX_TRACKS};
use switchyard_shared::config::{Destination, NodeRef};

use super::model::{node_url, Action, EgressKey, Forward, RelaySession, View};
use super::service::Forwards;
use crate::core::clock::now_ms;
use crate::core::random;
use crate::core::store::Store as _;
use crate::services::relay::Target;
use crate::services::sessions::SessionError;

/// How often the driver compares forwards with the session table (and how long a new
/// publisher waits at most for its egresses).
pub const PLAN_INTERVAL: Duration = Duration::from_millis(200);

/// Run until the task is aborted. First (retried each turn until the store answers) the
/// forwards made through the API before this control plane started come back from the
/// cluster store.
pub async fn run(forwards: Arc<Forwards>) {
    let mut tick = tokio::time::interval(PLAN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut restored = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = forwards.wake.notified() => {}
        }
        if !restored {
            restored = restore(&forwards).await;
        }
        let mut view = View::of(forwards.sessions.lock().node.sessions());
        view.relays = forwards
            .relays
            .book()
            .outs()
            .map(|r| RelaySession {
                id: r.session,
                stream: r.stream.clone(),
                target_node: r.target_node.clone(),
                target_url: r.target_url.clone(),
            })
            .collect();
        let actions = {
            let mut m = forwards.manager();
            m.keep_unclaimed = !restored;
            m.plan(Instant::now(), &view)
        };
        for action in actions {
            match action {
                Action::Add(key) => {
                    let result = if key.destination.is_node() {
                        open_relay(&forwards, &key).await
                    } else {
                        add(&forwards, &key).await
                    };
                    if let Err(e) = &result {
                        tracing::warn!(forward = %key.forward, stream = %key.stream, track = key.track, destination = %key.destination, error = %e, "forward egress not set up; retrying with backoff");
                    }
                    let stale = forwards.manager().added(&key, result, Instant::now());
                    if let Some(id) = stale {
                        if key.destination.is_node() {
                            close_relay(&forwards, id).await;
                        } else {
                            remove(&forwards, id).await;
                        }
                    }
                }
                Action::Remove(id) => remove(&forwards, id).await,
                Action::CloseRelay(id) => close_relay(&forwards, id).await,
            }
        }
    }
}

/// Add the saved forwards of this node; false when the store cannot be read yet.
async fn restore(forwards: &Forwards) -> bool {
    let saved = match forwards
        .cluster
        .store
        .list_forwards(&forwards.node_id)
        .await
    {
        Ok(saved) => saved,
        Err(e) => {
            tracing::warn!(error = %e, "saved forwards not read yet; retrying");
            return false;
        }
    };
    let mut m = forwards.manager();
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
async fn add(forwards: &Forwards, key: &EgressKey) -> Result<SessionId, String> {
    let remote = key
        .remote()
        .ok_or_else(|| "the destination has no port for this track".to_owned())?;
    let mut ssrcs = Vec::with_capacity(MAX_TRACKS);
    random::fill_ssrcs(&mut ssrcs, MAX_TRACKS).map_err(|e| e.to_string())?;
    let stream = key.stream.clone();
    let track = key.track;
    let provisioned = forwards
        .sessions
        .provision(None, |id, worker, _| {
            Ok::<_, SessionError>((
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
                    created_ms: now_ms(),
                    control: Default::default(),
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
        Err(e) => Err(e.to_string()),
    }
}

async fn remove(forwards: &Forwards, id: SessionId) {
    // A failure leaves the session in the table: the next plan asks again.
    if let Err(e) = forwards.sessions.remove(id).await {
        tracing::warn!(id = id.0, error = %e, "forward egress not removed yet");
    }
}

/// Open (or find: `open` is idempotent per stream and target) the relay of a node egress;
/// its `RelayOut` session.
async fn open_relay(forwards: &Forwards, key: &EgressKey) -> Result<SessionId, String> {
    let target = match &key.destination {
        Destination::Node(NodeRef::Id(id)) => Target::Node(id.clone()),
        Destination::Node(NodeRef::Addr(a)) => Target::Url(node_url(a)),
        Destination::Rtp(_) => return Err("not a node destination".into()),
    };
    match forwards.relays.open(&key.stream, target).await {
        Ok((relay, opened)) => {
            tracing::info!(forward = %key.forward, stream = %key.stream, destination = %key.destination, target = %relay.target_node, session = relay.session.0, opened, "forward relay running");
            Ok(relay.session)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Close the relay whose `RelayOut` is `id` (and the target's ingress).
async fn close_relay(forwards: &Forwards, id: SessionId) {
    let relay = forwards
        .relays
        .book()
        .outs()
        .find(|r| r.session == id)
        .map(|r| (r.stream.clone(), r.target_node.clone()));
    let Some((stream, target)) = relay else {
        return;
    };
    match forwards.relays.close(&stream, &target).await {
        Ok(confirmed) => {
            tracing::info!(%stream, %target, confirmed, "forward relay closed")
        }
        // A failure leaves the relay in the book: the next plan asks again.
        Err(e) => {
            tracing::warn!(%stream, %target, error = %e, "forward relay not closed yet")
        }
    }
}
