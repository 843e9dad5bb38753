//! Relays between nodes (issue #5): a stream published on one node is sent to another node's
//! relay socket, where it is published again, so subscribers on both nodes watch it.
//!
//! - [`book`]: the sans-IO bookkeeping (relays both ways, set-ups in flight, hop lists, grace
//!   timers), unit tested without sockets.
//! - `setup`: the set-up and tear-down steps, source side (`POST /v1/streams/{room}/{stream}/relays`)
//!   and target side (`POST /v1/relays/ingress`), and the WHEP cascade's `pull`.
//! - `http`: the routes; `client`: the HTTP client one control plane calls another with.
//!
//! Durability: the data plane's snapshot holds the relay sessions themselves (with their
//! keys), and the control plane re-provisions them when the data plane restarts, so the
//! source keeps sending to the same port with the same key. What the snapshot cannot say (the
//! other end's node and relay id, the hop list, the publisher's tracks) is kept in a file
//! beside the command ring (`switchyard-<node>.relays`, rewritten on every change), so a
//! control plane restart loses no relay whichever cluster store it runs with. The streams
//! this node publishes (its own and relayed ones, with hop lists) go into the cluster store
//! once a second, where other nodes' cascades look for them.
//!
//! Security: the ingress answer carries the per-link SRTP keys, so they travel over plain
//! HTTP only on loopback: a source asks a remote target over `https://` only, and a target
//! serving plain HTTP answers only a loopback source ([`check_target`], [`check_source`]),
//! unless `[cluster] allow_plain_http_keys` (a network private end to end). Every relay
//! endpoint needs a cluster token.

pub mod book;
pub(crate) mod client;
pub(crate) mod http;
pub(crate) mod setup;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::StatusCode;
use switchyard_shared::command::Role;
use switchyard_shared::config::Config;

use crate::api::ApiError;

use crate::cluster::{Cluster, Store as _};
use crate::link::Shared;
pub(crate) use setup::{pull, PullError};

use book::Book;

/// How often the relay task syncs the store, reconciles the book and runs grace timers.
const TICK: Duration = Duration::from_secs(1);
/// Ticks a relay's session must be missing from the data plane before its record goes.
const FORGET_AFTER_TICKS: u32 = 5;
/// The store entry of this node's streams is rewritten at least this often, so a store that
/// lost it (a Redis restart) has it back soon.
const STORE_REFRESH: Duration = Duration::from_secs(30);

/// The relay book of this node and where it is saved.
pub struct Relays {
    book: Mutex<Book>,
    path: PathBuf,
}

impl Relays {
    /// The book saved for `config`'s node, or an empty one.
    pub fn load(config: &Config) -> Self {
        let path = config.relays_path();
        let book = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(saved) => {
                    let b = Book::restore(saved);
                    tracing::info!(file = %path.display(), outgoing = b.outs().count(), incoming = b.ins().count(), "relays restored");
                    b
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "relay file unreadable; starting without relays");
                    Book::default()
                }
            },
            Err(_) => Book::default(),
        };
        Self {
            book: Mutex::new(book),
            path,
        }
    }

    /// Never held across an await; a poisoned lock still holds a consistent book (every
    /// change is one map operation).
    pub fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the book to its file (a temporary file renamed over it, so a crash leaves the
    /// old or the new one).
    pub fn save(&self) {
        let json = match serde_json::to_vec_pretty(&self.lock().saved()) {
            Ok(j) => j,
            Err(e) => return tracing::error!(error = %e, "relay book does not encode"),
        };
        let tmp = self.path.with_extension("relays.tmp");
        let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::error!(file = %self.path.display(), error = %e, "cannot save the relays");
        }
    }
}

/// Whether the host of a control plane URL is this machine: a loopback IP literal, or
/// `localhost`. Any other name counts as remote (what it resolves to can change).
fn url_is_loopback(url: &str) -> bool {
    let Some((_, authority)) = crate::cluster::health::authority(url) else {
        return false;
    };
    let host = match authority.rfind(':') {
        Some(colon) => &authority[..colon],
        None => authority.as_str(),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

const PLAIN_KEYS: &str = "relay link keys would cross the network in plain http://; serve the \
     API over HTTPS ([http] certificate) or set [cluster] allow_plain_http_keys = true";

/// Source side: may this node ask the target control plane at `url` for a relay (whose
/// answer carries the link keys)? `https://`, loopback, or `allow_plain_http_keys`.
pub(crate) fn check_target(url: &str, allow_plain: bool) -> Result<(), ApiError> {
    if allow_plain || url.starts_with("https://") || url_is_loopback(url) {
        return Ok(());
    }
    crate::metrics::cluster().relay_failed("plain_http");
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!("target {url}: {PLAIN_KEYS}"),
    ))
}

/// Target side: may this node answer an ingress (the link keys) to the source that asked
/// from `peer`? Over HTTPS (`tls`), from loopback, or with `allow_plain_http_keys`.
pub(crate) fn check_source(
    peer: Option<SocketAddr>,
    tls: bool,
    allow_plain: bool,
) -> Result<(), ApiError> {
    if tls || allow_plain || peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) {
        return Ok(());
    }
    crate::metrics::cluster().relay_failed("plain_http");
    let from = peer.map_or_else(|| "an unknown address".to_owned(), |p| p.ip().to_string());
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!("source at {from}: {PLAIN_KEYS}"),
    ))
}

/// The bearer token this control plane sends to the others: `[cluster] token`, or a
/// five-minute cluster token signed with `[auth] key`; None when neither is set (auth off).
pub(crate) fn cluster_token(config: &Config) -> Option<String> {
    if let Some(t) = &config.cluster.token {
        return Some(t.clone());
    }
    let key = config.auth.key.as_deref()?;
    let now = crate::auth::now_s();
    let claims = crate::auth::Claims {
        cluster: true,
        exp: Some(now + 300),
        iat: Some(now),
        ..crate::auth::Claims::default()
    };
    match crate::auth::sign_hs256(key, &claims) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, "cannot sign a cluster token");
            None
        }
    }
}

/// The streams this node publishes, with their hop lists: local publishers (no hops) and
/// relays that feed it.
fn published(shared: &Shared) -> BTreeMap<String, Vec<String>> {
    let g = shared.lock();
    let relays = shared.relays.lock();
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
fn users(shared: &Shared) -> BTreeMap<String, usize> {
    let g = shared.lock();
    let mut out = BTreeMap::new();
    for s in g.node.sessions() {
        if matches!(s.role, Role::Subscriber { .. } | Role::RelayOut) {
            *out.entry(s.stream.clone()).or_default() += 1;
        }
    }
    out
}

/// Write this node's streams to the store now.
pub(crate) async fn sync_streams(shared: &Shared, cluster: &Cluster) {
    let streams = published(shared);
    if let Err(e) = cluster
        .store
        .set_node_streams(&shared.config.node.id, streams)
        .await
    {
        tracing::warn!(error = %e, "cannot record this node's streams in the cluster store");
    }
}

/// The relay task: store sync, reconciliation with the data plane, grace timers. Runs until
/// aborted.
pub(crate) async fn run(shared: Arc<Shared>, cluster: Arc<Cluster>) {
    let grace = cluster.config.relay_grace_ms;
    let mut written: Option<(BTreeMap<String, Vec<String>>, std::time::Instant)> = None;
    // Ticks each relay's session has been missing from the data plane's table in a row.
    let mut missing: std::collections::HashMap<switchyard_shared::command::SessionId, u32> =
        Default::default();
    loop {
        tokio::time::sleep(TICK).await;
        let ready = shared.lock().node.ready().is_ok();
        if ready {
            let live: std::collections::HashSet<_> =
                shared.lock().node.sessions().map(|s| s.id).collect();
            let recorded: Vec<_> = {
                let book = shared.relays.lock();
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
            if shared.relays.lock().retain_live(|id| !gone(id)) {
                tracing::warn!("relays whose session the data plane no longer has were forgotten");
                shared.relays.save();
            }
        }
        let streams = published(&shared);
        let due = written
            .as_ref()
            .is_none_or(|(w, at)| *w != streams || at.elapsed() >= STORE_REFRESH);
        if due {
            match cluster
                .store
                .set_node_streams(&shared.config.node.id, streams.clone())
                .await
            {
                Ok(()) => written = Some((streams, std::time::Instant::now())),
                Err(e) => tracing::warn!(error = %e, "cannot record this node's streams"),
            }
        }
        if !ready {
            continue;
        }
        let now = crate::api::now_ms();
        let users = users(&shared);
        let expired = {
            let mut book = shared.relays.lock();
            let streams: Vec<String> = book.ins().map(|r| r.stream.clone()).collect();
            for s in streams {
                book.note_users(&s, users.get(&s).copied().unwrap_or(0), now);
            }
            book.expired(now, grace)
        };
        for r in expired {
            tracing::info!(stream = %r.stream, source = %r.source_node, "relay unused for the grace period; ending it");
            setup::end_incoming(&shared, &cluster, &r).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_keys_go_over_plain_http_on_loopback_only() {
        for (url, ok) in [
            ("http://127.0.0.1:8080", true),
            ("http://127.0.0.2:8080", true),
            ("http://[::1]:8080", true),
            ("http://localhost:8080", true),
            ("https://10.0.0.2:8443", true),
            ("https://b.example", true),
            ("http://10.0.0.2:8080", false),
            ("http://[::ffff:10.0.0.2]:8080", false),
            ("http://b.example:8080", false),
            ("http://localhost.evil.test:8080", false),
        ] {
            assert_eq!(check_target(url, false).is_ok(), ok, "{url}");
            assert!(check_target(url, true).is_ok(), "{url} allowed");
        }
        let e = check_target("http://10.0.0.2:8080", false).expect_err("remote");
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(
            e.message().contains("allow_plain_http_keys"),
            "{}",
            e.message()
        );

        let peer = |s: &str| Some(s.parse::<SocketAddr>().expect("addr"));
        assert!(check_source(peer("127.0.0.1:40000"), false, false).is_ok());
        assert!(check_source(peer("[::ffff:127.0.0.1]:40000"), false, false).is_ok());
        assert!(check_source(peer("[::1]:40000"), false, false).is_ok());
        assert!(check_source(peer("10.0.0.3:40000"), false, false).is_err());
        assert!(check_source(None, false, false).is_err());
        assert!(
            check_source(peer("10.0.0.3:40000"), true, false).is_ok(),
            "HTTPS"
        );
        assert!(
            check_source(peer("10.0.0.3:40000"), false, true).is_ok(),
            "allowed"
        );
    }
}
