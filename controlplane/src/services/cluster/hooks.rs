//! Room events delivered to a room's `eventNotificationUri`: JSON POSTs that never block the
//! API, and where one hook never holds up another's. Who may set a hook at all:
//! [`super::rooms`].
//!
//! Events go into a bounded queue (full: dropped and counted); [`deliver`] hands each to its
//! hook's own task, which POSTs that hook's events in order, each with [`DELIVERY_TIMEOUT`].
//! At most [`MAX_IN_FLIGHT`] POSTs run at once over every hook; a hook that cannot keep up
//! fills its own queue of [`PER_HOOK_QUEUE`] and loses its own events (counted), nobody
//! else's. Failures are logged and counted.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Semaphore};

use super::probe::http_status;
use crate::core::clock::now_ms;
use crate::core::counters::cluster as metrics;

/// Events waiting to be handed to their hook's task.
const QUEUE: usize = 256;
/// Longest one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// POSTs in flight at once, every hook together: a burst of rooms with dead hooks ties up
/// at most this many sockets for [`DELIVERY_TIMEOUT`].
const MAX_IN_FLIGHT: usize = 32;
/// Events waiting per hook: a room's join/leave burst fits; a dead hook (2 s per event)
/// drops beyond it.
const PER_HOOK_QUEUE: usize = 64;
/// Hooks with a task at once; an event for one more is dropped until some go idle.
const MAX_HOOKS: usize = 1024;
/// A hook's task ends after this long without an event (a later one starts a new task).
const HOOK_IDLE: Duration = Duration::from_secs(30);

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

/// Hand each queued event to its hook's task; runs until every notifier is gone (the hook
/// tasks end with it when it is aborted).
pub async fn deliver(mut rx: mpsc::Receiver<(String, Value)>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut hooks: HashMap<String, mpsc::Sender<Value>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((uri, event)) = rx.recv().await {
        while tasks.try_join_next().is_some() {}
        let event = match hooks.get(&uri) {
            Some(q) => match q.try_send(event) {
                Ok(()) => continue,
                Err(TrySendError::Full(_)) => {
                    dropped(&uri, "this hook's queue is full");
                    continue;
                }
                // Its task went idle: start another.
                Err(TrySendError::Closed(event)) => event,
            },
            None => event,
        };
        if hooks.len() >= MAX_HOOKS {
            hooks.retain(|_, q| !q.is_closed());
        }
        if hooks.len() >= MAX_HOOKS && !hooks.contains_key(&uri) {
            dropped(&uri, "too many hooks busy");
            continue;
        }
        let (q, queue) = mpsc::channel(PER_HOOK_QUEUE);
        // A fresh queue has room.
        let _ = q.try_send(event);
        tasks.spawn(hook(uri.clone(), queue, slots.clone()));
        hooks.insert(uri, q);
    }
}

fn dropped(uri: &str, why: &str) {
    metrics().events_dropped.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%uri, "room event dropped: {why}");
}

/// One hook's events, in order, until it has none for [`HOOK_IDLE`].
async fn hook(uri: String, mut queue: mpsc::Receiver<Value>, slots: Arc<Semaphore>) {
    loop {
        let event = match tokio::time::timeout(HOOK_IDLE, queue.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(_) => {
                // Refuse new events first, so none is left behind in a queue nobody reads.
                queue.close();
                while let Ok(e) = queue.try_recv() {
                    post(&uri, e, &slots).await;
                }
                return;
            }
        };
        post(&uri, event, &slots).await;
    }
}

/// POST one event under a delivery slot.
async fn post(uri: &str, event: Value, slots: &Semaphore) {
    let Ok(_slot) = slots.acquire().await else {
        return;
    };
    let body = event.to_string();
    let (base, path) = split(uri);
    let status = http_status(base, "POST", path, Some(body.as_bytes()), DELIVERY_TIMEOUT).await;
    if status.is_some_and(|s| (200..300).contains(&s)) {
        metrics().events_sent.fetch_add(1, Ordering::Relaxed);
    } else {
        metrics().events_failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%uri, ?status, event = %body, "room event not delivered");
    }
}

/// `http://host:port/a/b?c` → (`http://host:port`, `/a/b?c`).
pub(super) fn split(uri: &str) -> (&str, &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9 item 6: a hook that accepts connections and never answers holds up only its
    /// own room's events, not those of every other room.
    #[tokio::test]
    async fn a_dead_hook_does_not_delay_other_rooms() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let dead_url = format!("http://{}/hook", dead.local_addr().expect("addr"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = dead.accept().await {
                held.push(s);
            }
        });
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let live_url = format!("http://{}/hook", live.local_addr().expect("addr"));
        let (got_tx, mut got) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = live.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = s
                    .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = got_tx.send(buf[..n].to_vec()).await;
            }
        });
        let (n, rx) = Notifier::new();
        tokio::spawn(deliver(rx));
        for _ in 0..5 {
            n.send(&dead_url, event("peer-joined", "dead", "n1"));
        }
        n.send(&live_url, event("room-closed", "live", "n1"));
        let request = tokio::time::timeout(Duration::from_millis(1500), got.recv())
            .await
            .expect("the live hook's event waited behind the dead hook")
            .expect("an event");
        let text = String::from_utf8_lossy(&request);
        assert!(text.starts_with("POST /hook "), "{text}");
        assert!(text.contains("\"roomId\":\"live\""), "{text}");
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
