//! Room lifecycle: JSON events to a room's `eventNotificationUri`, and closing a room created
//! through `/v1/rooms` once its last session has ended and a grace period has passed.
//!
//! - `peer-joined` / `peer-left`: a session whose stream is `room/stream` started or ended on
//!   this node (WHIP, WHEP or the raw sessions API), from the session table's changes.
//! - `room-closed`: `DELETE /v1/rooms/{room}`, or the room stayed empty for
//!   `room_close_grace_ms`; its reservation is released (capacity given back).
//!
//! Delivery never blocks the API: events go into a small bounded queue (full: dropped and
//! counted), one task POSTs them with a short timeout; failures are logged and counted.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::store::{Store as _, StoreError};
use super::{now_ms, Cluster};
use crate::link::Shared;
use crate::metrics::cluster as metrics;

/// Events waiting for delivery.
const QUEUE: usize = 256;
/// Longest one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Where events are queued; cheap to clone.
#[derive(Clone, Debug)]
pub struct Notifier(mpsc::Sender<(String, Value)>);

impl Notifier {
    /// The notifier and the queue [`deliver`] drains.
    pub fn new() -> (Self, mpsc::Receiver<(String, Value)>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self(tx), rx)
    }

    /// Queue `event` for `uri`; never waits.
    pub fn send(&self, uri: &str, event: Value) {
        if self.0.try_send((uri.to_owned(), event)).is_err() {
            metrics().events_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%uri, "room event queue full; event dropped");
        }
    }
}

/// POST each queued event; runs until every notifier is gone.
pub async fn deliver(mut rx: mpsc::Receiver<(String, Value)>) {
    while let Some((uri, event)) = rx.recv().await {
        let body = event.to_string();
        let (base, path) = split(&uri);
        let status =
            super::health::http_status(base, "POST", path, Some(body.as_bytes()), DELIVERY_TIMEOUT)
                .await;
        if status.is_some_and(|s| (200..300).contains(&s)) {
            metrics().events_sent.fetch_add(1, Ordering::Relaxed);
        } else {
            metrics().events_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%uri, ?status, event = %body, "room event not delivered");
        }
    }
}

/// `http://host:port/a/b?c` → (`http://host:port`, `/a/b?c`).
fn split(uri: &str) -> (&str, &str) {
    let start = uri.find("://").map_or(0, |i| i + 3);
    match uri[start..].find('/') {
        Some(i) => uri.split_at(start + i),
        None => (uri, "/"),
    }
}

/// The event a room's hook gets.
pub fn event(kind: &str, room: &str, node: &str) -> Value {
    json!({ "event": kind, "roomId": room, "node": node, "timeMs": now_ms() })
}

/// The room a stream belongs to: `room/stream` → `room`.
fn room_of(stream: &str) -> Option<&str> {
    stream
        .split_once('/')
        .map(|(r, _)| r)
        .filter(|r| !r.is_empty())
}

fn live_sessions(shared: &Shared, room: &str) -> usize {
    let prefix = format!("{room}/");
    shared
        .lock()
        .node
        .sessions()
        .filter(|s| s.stream.starts_with(&prefix))
        .count()
}

/// Turn session changes into events and idle rooms into closed ones; runs until aborted.
pub async fn run(cluster: Arc<Cluster>, shared: Arc<Shared>) {
    let Some(mut changes) = shared
        .changes_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    let me = shared.config.node.id.clone();
    let grace = Duration::from_millis(cluster.config.room_close_grace_ms);
    // Close timers: a newer join or leave bumps the room's generation, so only the timer of
    // the last leave may close it.
    let mut generation: HashMap<String, u64> = HashMap::new();
    let (timer_tx, mut timers) = mpsc::unbounded_channel::<(String, u64)>();
    loop {
        tokio::select! {
            c = changes.recv() => {
                let Some(c) = c else { return };
                let Some(room) = room_of(&c.stream).map(str::to_owned) else { continue };
                let g = generation.entry(room.clone()).or_default();
                *g += 1;
                let gen = *g;
                let r = match cluster.store.get_room(&room).await {
                    Ok(Some(r)) if r.node == me => r,
                    Ok(_) => {
                        generation.remove(&room);
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
                if !c.joined && live_sessions(&shared, &room) == 0 {
                    let tx = timer_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        let _ = tx.send((room, gen));
                    });
                }
            }
            Some((room, gen)) = timers.recv() => {
                if generation.get(&room) != Some(&gen) || live_sessions(&shared, &room) > 0 {
                    continue;
                }
                generation.remove(&room);
                match cluster.store.release_room(&room).await {
                    Ok(r) => {
                        metrics().rooms_closed_idle.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(room = %r.room_id, node = %r.node, consumers = r.consumers, "idle room closed");
                        if let Some(uri) = &r.event_notification_uri {
                            cluster.events.send(uri, event("room-closed", &room, &r.node));
                        }
                    }
                    Err(StoreError::NoSuchRoom(_)) => {}
                    Err(e) => tracing::warn!(%room, error = %e, "cannot close an idle room"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn full_queue_drops_and_counts() {
        let (n, _rx) = Notifier::new();
        let before = metrics().events_dropped.load(Ordering::Relaxed);
        for _ in 0..QUEUE + 3 {
            n.send("http://x", json!({}));
        }
        assert!(metrics().events_dropped.load(Ordering::Relaxed) >= before + 3);
    }
}
