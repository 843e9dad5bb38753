//! The WHEP cascade: make a stream published on another node available here through a relay
//! from that node, so a WHEP offer can be served here instead of redirected.

use std::time::Duration;

use super::book::{InRelay, Join};
use super::client;
use super::error::RelayError;
use super::service::Relays;
use super::setup::follow;
use crate::core::counters;
use crate::core::store::{Node, Store as _};

/// A cascade's pull: the source's set-up includes its call back to this node.
const PULL_TIMEOUT: Duration = Duration::from_secs(8);

/// Why a cascade did not happen.
#[derive(Debug)]
pub enum PullError {
    /// No other healthy node publishes the stream (or cascading is off, or this node is not
    /// fit to serve): the caller falls back to the redirect.
    NoSource,
    /// Sources exist but none would relay.
    Failed(RelayError),
}

impl Relays {
    /// Make `stream` available here through a relay from a node that publishes it.
    /// Concurrent pulls of one stream make one relay.
    pub async fn pull(&self, stream: &str) -> Result<(), PullError> {
        let me = self.node_id.clone();
        if !self.cluster.config.cascade || !self.fit() {
            return Err(PullError::NoSource);
        }
        let have = || self.sessions.lock().node.publisher_media(stream).is_some();
        if have() {
            return Ok(());
        }
        let sources = self
            .cluster
            .store
            .stream_sources(stream)
            .await
            .map_err(|_| PullError::NoSource)?;
        let nodes = self
            .cluster
            .store
            .list_nodes()
            .await
            .map_err(|_| PullError::NoSource)?;
        // Nearest first: the fewest hops from the publisher, then node id.
        let mut candidates: Vec<(usize, String, String)> = sources
            .into_iter()
            .filter(|(node, hops)| *node != me && !hops.contains(&me))
            .filter_map(|(node, hops)| {
                let n = nodes.iter().find(|n| n.node_id == node && n.healthy)?;
                Some((hops.len(), node, n.url.clone()))
            })
            .collect();
        candidates.sort();
        if candidates.is_empty() {
            return Err(PullError::NoSource);
        }
        let key = format!("pull\n{stream}");
        loop {
            if have() {
                return Ok(());
            }
            let join = self.book.lock().join(&key);
            match join {
                Join::Follow(rx) => follow(rx).await.map_err(PullError::Failed)?,
                Join::Lead => break,
            }
        }
        self.lead(&key, async {
            if have() {
                return Ok(());
            }
            let token = self.cluster_token();
            let body = serde_json::json!({ "targetNode": me }).to_string();
            let mut last = RelayError::NoSourceAnswered;
            for (_, node, url) in candidates.iter().take(2) {
                let path = client::stream_path(stream);
                match client::request(url, "POST", &path, Some(body.as_bytes()), token.as_deref(), PULL_TIMEOUT).await {
                    Ok(a) if (200..300).contains(&a.status) => {
                        // Auto either way: unused, it ends after the grace period.
                        self.book.lock().set_auto(stream);
                        self.book.save();
                        if have() {
                            tracing::info!(%stream, source = %node, "cascade: relayed from the publishing node");
                            return Ok(());
                        }
                        // A plain RTP publisher: relayed, but WHEP needs a WebRTC one.
                        return Err(RelayError::NoWebrtcPublisher(stream.to_owned()));
                    }
                    Ok(a) => {
                        counters::cluster().relay_failed("cascade");
                        last = RelayError::Source(format!("{node} answered {}: {}", a.status, a.error_text()));
                    }
                    Err(e) => {
                        counters::cluster().relay_failed("cascade");
                        last = RelayError::Source(format!("{node}: {e}"));
                    }
                }
                tracing::warn!(%stream, source = %node, error = %last, "cascade: relay set-up failed");
            }
            Err(last)
        })
        .await
        .map_err(PullError::Failed)
    }

    /// Relays feeding this node whose source is lost (the node died, or the stream left
    /// it) are pulled again from a node that publishes the stream now, into the same
    /// relay-in: the source's set-up calls this node's ingress, which hands the session over
    /// to it (`retarget_ingress`), so the viewers here keep their sessions. Sources fed by
    /// the lost node are passed over (they lost the stream too), then the nearest first.
    /// Called every relay tick, and more often while a relay is lost; returns whether one
    /// still is (nobody publishes its stream yet, or the new source refused).
    pub(super) async fn repull_lost(&self) -> bool {
        self.reopen_onwards().await;
        let ins: Vec<InRelay> = self.book.lock().ins().cloned().collect();
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| ins.iter().any(|r| r.stream == s));
        if ins.is_empty() {
            return false;
        }
        let Ok(nodes) = self.cluster.store.list_nodes().await else {
            return false;
        };
        let mut lost = false;
        for r in ins {
            if self.source_lost(&r, &nodes).await && !self.repull(&r, &nodes).await {
                lost = true;
            }
        }
        lost
    }

    /// Whether `r` was pulled again from a new source.
    async fn repull(&self, r: &InRelay, nodes: &[Node]) -> bool {
        let me = &self.node_id;
        let Ok(sources) = self.cluster.store.stream_sources(&r.stream).await else {
            return false;
        };
        let mut candidates: Vec<(usize, String, String)> = sources
            .into_iter()
            .filter(|(node, hops)| {
                node != me
                    && *node != r.source_node
                    && !hops.contains(me)
                    && !hops.contains(&r.source_node)
            })
            .filter_map(|(node, hops)| {
                let n = nodes.iter().find(|n| n.node_id == node && n.healthy)?;
                Some((hops.len(), node, n.url.clone()))
            })
            .collect();
        candidates.sort();
        let token = self.cluster_token();
        let body = serde_json::json!({ "targetNode": me }).to_string();
        for (_, node, url) in candidates.iter().take(2) {
            let path = client::stream_path(&r.stream);
            let answer = client::request(
                url,
                "POST",
                &path,
                Some(body.as_bytes()),
                token.as_deref(),
                PULL_TIMEOUT,
            )
            .await;
            match answer {
                Ok(a) if (200..300).contains(&a.status) => {
                    tracing::info!(stream = %r.stream, lost = %r.source_node, source = %node, "relay pulled again from a new source");
                    return true;
                }
                Ok(a) => {
                    counters::cluster().relay_failed("repull");
                    tracing::warn!(stream = %r.stream, source = %node, status = a.status, error = %a.error_text(), "relay not pulled again");
                }
                Err(e) => {
                    counters::cluster().relay_failed("repull");
                    tracing::warn!(stream = %r.stream, source = %node, error = %e, "relay not pulled again");
                }
            }
        }
        false
    }

    /// Whether this node may serve a cascaded subscriber: in sync with its data plane and not
    /// overloaded.
    fn fit(&self) -> bool {
        let overloaded = self.load.get().is_some_and(|l| l.reason.is_some());
        !overloaded && self.sessions.lock().node.ready().is_ok()
    }
}
