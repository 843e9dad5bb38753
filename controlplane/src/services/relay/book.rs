//! The relay bookkeeping of one node, sans-IO: which relays it feeds (out, by stream and
//! target node) and which feed it (in, by stream), set-ups in flight (so concurrent requests
//! for the same relay make one), the hop-list loop check, and the grace timers of relays a
//! WHEP cascade opened. Time comes in as Unix milliseconds; nothing here reads the clock,
//! touches the network or the ring.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use switchyard_shared::command::SessionId;
use tokio::sync::oneshot;

use crate::sdp::Negotiated;

/// Longest hop list accepted. A chain of relays longer than this is a misconfiguration (or
/// a loop the list no longer shows), not a topology.
pub const MAX_HOPS: usize = 16;

/// A relay this node feeds: its `RelayOut` session sends `stream` to `target_node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutRelay {
    pub stream: String,
    pub target_node: String,
    /// Base URL of the target's control plane (where its ingress is ended).
    pub target_url: String,
    /// The target's `RelayIn` session id (its relay id).
    pub remote_relay_id: u64,
    /// This node's `RelayOut` session.
    pub session: SessionId,
    /// The target's relay socket.
    pub remote: SocketAddr,
    /// The hop list sent with the relay: the stream's hops here plus this node.
    pub hops: Vec<String>,
    pub created_ms: u64,
}

/// A relay that feeds this node: its `RelayIn` session is `stream`'s publisher here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InRelay {
    pub stream: String,
    pub source_node: String,
    /// The nodes the stream came through, the source last.
    pub hops: Vec<String>,
    pub session: SessionId,
    /// Opened by a WHEP cascade: ends `relay_grace_ms` after its last user left. Relays
    /// opened through the REST API stay until deleted.
    pub auto: bool,
    /// What the stream's publisher negotiated (its tracks), for WHEP answers on this node.
    pub publisher_media: Option<Negotiated>,
    pub created_ms: u64,
}

/// What the book keeps across a control plane restart (the file beside the ring).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    pub outs: Vec<OutRelay>,
    pub ins: Vec<InRelay>,
}

/// Why a hop list is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HopError {
    #[error("relay loop: this node is already in the hop list")]
    Loop,
    #[error("hop list longer than {MAX_HOPS} nodes")]
    TooLong,
}

/// Whether a relay that went through `hops` may come to node `me`.
pub fn check_hops(me: &str, hops: &[String]) -> Result<(), HopError> {
    if hops.iter().any(|h| h == me) {
        Err(HopError::Loop)
    } else if hops.len() > MAX_HOPS {
        Err(HopError::TooLong)
    } else {
        Ok(())
    }
}

/// The outcome a set-up's followers learn: `Ok` means "look in the book now".
pub type Outcome = Result<(), String>;

/// Whether the caller does a set-up or waits for the one in flight.
#[derive(Debug)]
pub enum Join {
    /// Nobody else is setting this up: do it, then call [`Book::finish`].
    Lead,
    /// Another request is: wait for its outcome.
    Follow(oneshot::Receiver<Outcome>),
}

#[derive(Debug, Default)]
pub struct Book {
    outs: BTreeMap<(String, String), OutRelay>,
    ins: BTreeMap<String, InRelay>,
    /// Auto relays without users, and since when (Unix ms).
    idle_since: HashMap<String, u64>,
    /// Set-ups in flight, by key, with their followers.
    pending: HashMap<String, Vec<oneshot::Sender<Outcome>>>,
}

impl Book {
    pub fn restore(saved: Saved) -> Self {
        let mut b = Book::default();
        for o in saved.outs {
            b.outs.insert((o.stream.clone(), o.target_node.clone()), o);
        }
        for i in saved.ins {
            b.ins.insert(i.stream.clone(), i);
        }
        b
    }

    pub fn saved(&self) -> Saved {
        Saved {
            outs: self.outs.values().cloned().collect(),
            ins: self.ins.values().cloned().collect(),
        }
    }

    /// Join the set-up called `key` (e.g. `out/room/cam/node-b`).
    pub fn join(&mut self, key: &str) -> Join {
        match self.pending.get_mut(key) {
            Some(followers) => {
                let (tx, rx) = oneshot::channel();
                followers.push(tx);
                Join::Follow(rx)
            }
            None => {
                self.pending.insert(key.to_owned(), Vec::new());
                Join::Lead
            }
        }
    }

    /// The leader of `key` is done: tell its followers.
    pub fn finish(&mut self, key: &str, outcome: &Outcome) {
        for tx in self.pending.remove(key).unwrap_or_default() {
            let _ = tx.send(outcome.clone());
        }
    }

    pub fn out(&self, stream: &str, target: &str) -> Option<&OutRelay> {
        self.outs.get(&(stream.to_owned(), target.to_owned()))
    }

    /// The relay of `stream` to the target at `url`, for targets named by address.
    pub fn out_by_url(&self, stream: &str, url: &str) -> Option<&OutRelay> {
        self.outs
            .values()
            .find(|o| o.stream == stream && o.target_url == url)
    }

    pub fn outs(&self) -> impl Iterator<Item = &OutRelay> {
        self.outs.values()
    }

    pub fn add_out(&mut self, relay: OutRelay) {
        self.outs
            .insert((relay.stream.clone(), relay.target_node.clone()), relay);
    }

    pub fn remove_out(&mut self, stream: &str, target: &str) -> Option<OutRelay> {
        self.outs.remove(&(stream.to_owned(), target.to_owned()))
    }

    pub fn incoming(&self, stream: &str) -> Option<&InRelay> {
        self.ins.get(stream)
    }

    pub fn ins(&self) -> impl Iterator<Item = &InRelay> {
        self.ins.values()
    }

    pub fn add_in(&mut self, relay: InRelay) {
        self.idle_since.remove(&relay.stream);
        self.ins.insert(relay.stream.clone(), relay);
    }

    /// Mark the relay feeding `stream` as opened by a cascade (it then ends when unused).
    pub fn set_auto(&mut self, stream: &str) {
        if let Some(r) = self.ins.get_mut(stream) {
            r.auto = true;
        }
    }

    pub fn remove_in_by_session(&mut self, id: SessionId) -> Option<InRelay> {
        let stream = self.ins.values().find(|r| r.session == id)?.stream.clone();
        self.idle_since.remove(&stream);
        self.ins.remove(&stream)
    }

    /// How many sessions use `stream` here (local subscribers and relays onwards), at `now`.
    /// An auto relay without users starts its grace timer; a user stops it.
    pub fn note_users(&mut self, stream: &str, users: usize, now: u64) {
        if users > 0 || !self.ins.get(stream).is_some_and(|r| r.auto) {
            self.idle_since.remove(stream);
        } else {
            self.idle_since.entry(stream.to_owned()).or_insert(now);
        }
    }

    /// Auto relays idle for at least `grace` ms at `now`: the caller ends them.
    pub fn expired(&self, now: u64, grace: u64) -> Vec<InRelay> {
        self.idle_since
            .iter()
            .filter(|(_, &since)| now.saturating_sub(since) >= grace)
            .filter_map(|(s, _)| self.ins.get(s).cloned())
            .collect()
    }

    /// Forget relays whose session the data plane no longer has (ended while this control
    /// plane was away, or refused on re-provisioning). Returns whether anything changed.
    pub fn retain_live(&mut self, live: impl Fn(SessionId) -> bool) -> bool {
        let (outs, ins) = (self.outs.len(), self.ins.len());
        self.outs.retain(|_, r| live(r.session));
        self.ins.retain(|_, r| live(r.session));
        let ins_left = &self.ins;
        self.idle_since.retain(|s, _| ins_left.contains_key(s));
        outs != self.outs.len() || ins != self.ins.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(stream: &str, id: u64, auto: bool) -> InRelay {
        InRelay {
            stream: stream.into(),
            source_node: "a".into(),
            hops: vec!["a".into()],
            session: SessionId(id),
            auto,
            publisher_media: None,
            created_ms: 1,
        }
    }

    fn outgoing(stream: &str, target: &str, id: u64) -> OutRelay {
        OutRelay {
            stream: stream.into(),
            target_node: target.into(),
            target_url: format!("http://{target}"),
            remote_relay_id: 9,
            session: SessionId(id),
            remote: "127.0.0.1:9443".parse().expect("literal"),
            hops: vec!["a".into()],
            created_ms: 1,
        }
    }

    #[test]
    fn hop_lists_refuse_loops_and_long_chains() {
        let hops = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(check_hops("b", &hops(&["a"])), Ok(()));
        assert_eq!(check_hops("a", &hops(&["a", "b"])), Err(HopError::Loop));
        assert_eq!(
            check_hops("b", &hops(&["a", "b", "c"])),
            Err(HopError::Loop)
        );
        assert_eq!(check_hops("a", &[]), Ok(()));
        let long: Vec<String> = (0..=MAX_HOPS).map(|i| format!("n{i}")).collect();
        assert_eq!(check_hops("x", &long), Err(HopError::TooLong));
        assert_eq!(check_hops("x", &long[..MAX_HOPS]), Ok(()));
    }

    #[test]
    fn one_leader_per_key_and_followers_hear_the_outcome() {
        let mut b = Book::default();
        assert!(matches!(b.join("out/r/s/b"), Join::Lead));
        let Join::Follow(mut f1) = b.join("out/r/s/b") else {
            panic!("second join must follow");
        };
        let Join::Follow(mut f2) = b.join("out/r/s/b") else {
            panic!("third join must follow");
        };
        assert!(matches!(b.join("out/r/s/c"), Join::Lead), "other key");
        assert!(f1.try_recv().is_err(), "nothing yet");
        b.finish("out/r/s/b", &Err("target unreachable".into()));
        assert_eq!(f1.try_recv(), Ok(Err("target unreachable".into())));
        assert_eq!(f2.try_recv(), Ok(Err("target unreachable".into())));
        // Finished: the next request leads a fresh attempt.
        assert!(matches!(b.join("out/r/s/b"), Join::Lead));
        b.finish("out/r/s/b", &Ok(()));
    }

    #[test]
    fn relays_are_one_per_stream_and_target() {
        let mut b = Book::default();
        b.add_out(outgoing("r/s", "b", 1));
        b.add_out(outgoing("r/s", "b", 2));
        b.add_out(outgoing("r/s", "c", 3));
        assert_eq!(b.outs().count(), 2);
        assert_eq!(b.out("r/s", "b").map(|o| o.session), Some(SessionId(2)));
        assert_eq!(
            b.out_by_url("r/s", "http://c").map(|o| o.session),
            Some(SessionId(3))
        );
        assert!(b.remove_out("r/s", "b").is_some());
        assert!(b.out("r/s", "b").is_none());
    }

    #[test]
    fn auto_relays_end_after_the_grace_period_without_users() {
        let mut b = Book::default();
        b.add_in(incoming("r/auto", 1, true));
        b.add_in(incoming("r/manual", 2, false));
        b.note_users("r/auto", 3, 1_000);
        b.note_users("r/manual", 0, 1_000);
        assert!(b.expired(100_000, 30_000).is_empty(), "in use / manual");
        // The last user leaves at t = 2 s.
        b.note_users("r/auto", 0, 2_000);
        b.note_users("r/auto", 0, 5_000);
        assert!(
            b.expired(31_999, 30_000).is_empty(),
            "grace counts from 2 s"
        );
        // A user comes back inside the grace period: the timer stops.
        b.note_users("r/auto", 1, 20_000);
        assert!(b.expired(40_000, 30_000).is_empty());
        b.note_users("r/auto", 0, 41_000);
        let gone = b.expired(71_000, 30_000);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].stream, "r/auto");
        assert!(b.remove_in_by_session(SessionId(1)).is_some());
        assert!(b.expired(1_000_000, 30_000).is_empty());
    }

    #[test]
    fn a_cascade_marks_an_existing_relay_auto() {
        let mut b = Book::default();
        b.add_in(incoming("r/s", 1, false));
        b.note_users("r/s", 0, 0);
        assert!(b.expired(60_000, 30_000).is_empty());
        b.set_auto("r/s");
        b.note_users("r/s", 0, 60_000);
        assert_eq!(b.expired(90_000, 30_000).len(), 1);
    }

    #[test]
    fn saved_and_restored_and_reconciled() {
        let mut b = Book::default();
        b.add_out(outgoing("r/s", "b", 1));
        b.add_in(incoming("r/t", 2, true));
        let json = serde_json::to_string(&b.saved()).expect("encode");
        let back: Saved = serde_json::from_str(&json).expect("decode");
        let mut b2 = Book::restore(back);
        assert_eq!(b2.out("r/s", "b"), b.out("r/s", "b"));
        assert_eq!(b2.incoming("r/t"), b.incoming("r/t"));
        assert!(!b2.retain_live(|_| true));
        assert!(b2.retain_live(|id| id == SessionId(2)));
        assert!(b2.out("r/s", "b").is_none());
        assert!(b2.incoming("r/t").is_some());
    }
}
