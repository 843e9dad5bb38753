//! Room lifecycle on this node: the `peer-joined` / `peer-left` events of the session
//! table's changes, and closing a room created through `/v1/rooms` once its last session has
//! ended and a grace period has passed. The events are delivered by [`super::hooks`].
//!
//! - `peer-joined` / `peer-left`: a session whose stream is `room/stream` started or ended on
//!   this node (WHIP, WHEP or the raw sessions API), from the session table's changes.
//! - `room-closed`: `DELETE /v1/rooms/{room}`, or the room stayed empty for
//!   `room_close_grace_ms`, or no session joined it for `room_idle_timeout_ms` after its
//!   creation (`closer` decides when); its reservation is released (capacity given back).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::closer::Closer;
use super::hooks::event;
use super::service::Cluster;
use crate::core::clock::now_ms;
use crate::core::counters::cluster as metrics;
use crate::core::link::Link;
use crate::core::state::SessionChange;
use crate::core::store::{Store as _, StoreError};

/// The room a stream belongs to: `room/stream` → `room`.
pub fn room_of(stream: &str) -> Option<&str> {
    stream
        .split_once('/')
        .map(|(r, _)| r)
        .filter(|r| !r.is_empty())
}

fn live_sessions(link: &Link, room: &str) -> usize {
    let prefix = format!("{room}/");
    link.lock()
        .node
        .sessions()
        .filter(|s| s.stream.starts_with(&prefix))
        .count()
}

/// Turn session changes into events and idle rooms into closed ones; runs until aborted.
/// `changes` is the link's (`Link::new`); `me` this node's id.
pub async fn run(
    cluster: Arc<Cluster>,
    link: Arc<Link>,
    mut changes: mpsc::Receiver<SessionChange>,
    me: String,
) {
    let mut closer = Closer::new(
        cluster.config.room_close_grace_ms,
        cluster.config.room_idle_timeout_ms,
    );
    // Rooms may be created by any control plane: this node learns its own from the store.
    // The idle deadline runs from each room's creation time, so the listing only has to come
    // well within the timeout; a tenth of it (at least the health interval) keeps the reads
    // of a large room table rare.
    let every = (cluster.config.room_idle_timeout_ms / 10).max(cluster.config.health_interval_ms);
    let mut sweep = tokio::time::interval(Duration::from_millis(every));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wait = closer
            .next_deadline()
            .map(|t| Duration::from_millis(t.saturating_sub(now_ms())));
        tokio::select! {
            c = changes.recv() => {
                let Some(c) = c else { return };
                let Some(room) = room_of(&c.stream).map(str::to_owned) else { continue };
                let r = match cluster.store.get_room(&room).await {
                    Ok(Some(r)) if r.node == me => r,
                    Ok(_) => {
                        closer.forget(&room);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(%room, error = %e, "room events: cannot read the room");
                        continue;
                    }
                };
                if let Some(uri) = &r.event_notification_uri {
                    let mut ev = event(if c.joined { "peer-joined" } else { "peer-left" }, &room, &me);
                    ev["stream"] = json!(c.stream);
                    ev["sessionId"] = json!(c.id.0);
                    ev["role"] = json!(if c.publisher { "publisher" } else { "subscriber" });
                    cluster.events.send(uri, ev);
                }
                if c.joined {
                    closer.joined(&room);
                } else if live_sessions(&link, &room) == 0 {
                    closer.emptied(&room, now_ms());
                }
            }
            _ = sweep.tick() => match cluster.store.list_rooms().await {
                Ok(rooms) => closer.sync(
                    rooms
                        .iter()
                        .filter(|r| r.node == me)
                        .map(|r| (r.room_id.as_str(), r.placed_ms)),
                ),
                Err(e) => tracing::warn!(error = %e, "room events: cannot list the rooms"),
            },
            () = sleep_for(wait) => {
                for room in closer.due(now_ms(), |r| live_sessions(&link, r)) {
                    close_idle(&cluster, &room).await;
                }
            }
        }
    }
}

/// Sleep `wait`, or forever when there is nothing to wait for.
async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Release a room no one is in (capacity back) and tell its hook.
async fn close_idle(cluster: &Cluster, room: &str) {
    match cluster.store.release_room(room).await {
        Ok(r) => {
            metrics().rooms_closed_idle.fetch_add(1, Ordering::Relaxed);
            tracing::info!(room = %r.room_id, node = %r.node, consumers = r.consumers, "idle room closed");
            if let Some(uri) = &r.event_notification_uri {
                cluster
                    .events
                    .send(uri, event("room-closed", room, &r.node));
            }
        }
        // Deleted meanwhile (DELETE, or another path closed it).
        Err(StoreError::NoSuchRoom(_)) => {}
        Err(e) => tracing::warn!(%room, error = %e, "cannot close an idle room"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::cluster::hooks::{event, split};

    #[test]
    fn uris_and_rooms() {
        assert_eq!(split("http://h:1/a/b?c=1"), ("http://h:1", "/a/b?c=1"));
        assert_eq!(split("https://h"), ("https://h", "/"));
        assert_eq!(room_of("meet/alice"), Some("meet"));
        assert_eq!(room_of("plain"), None);
        assert_eq!(room_of("/x"), None);
        let e = event("room-closed", "meet", "n1");
        assert_eq!(e["event"], "room-closed");
        assert_eq!(e["roomId"], "meet");
    }
}
