//! The WHEP cascade: make a stream published on another node available here through a relay
//! from that node, so a WHEP offer can be served here instead of redirected. The source is
//! the nearest node holding the stream ([`nearest`]): in this node's region first, then by
//! measured relay round-trip time, then by hops.

use std::collections::BTreeMap;
use std::time::Duration;

use super::book::{InRelay, Join};
use super::client;
use super::error::RelayError;
use super::service::Relays;
use super::setup::follow;
use crate::core::clock::now_ms;
use crate::core::counters;
use crate::core::store::{Node, Store as _};
use crate::services::cluster::events::room_of;

/// A cascade's pull: the source's set-up includes its call back to this node.
const PULL_TIMEOUT: Duration = Duration::from_secs(8);

/// The healthy nodes of `sources` (node, hop list) that may relay a stream to node `me`,
/// nearest first, each with its URL: those in `my_region` first (when this node has one),
/// then by the measured round-trip time of relay links between `me` and them (this node's
/// own measurements `my_rtts`, else the ones either node recorded in the store; unmeasured
/// after measured), then by fewest hops from the publisher, then by node id. Never `me`,
/// nor a node whose stream came through `me` (a loop).
pub fn nearest(
    me: &str,
    my_region: Option<&str>,
    sources: Vec<(String, Vec<String>)>,
    nodes: &[Node],
    my_rtts: &BTreeMap<String, f64>,
) -> Vec<(String, String)> {
    let mine = nodes.iter().find(|n| n.node_id == me);
    let rtt = |n: &Node| -> Option<f64> {
        my_rtts
            .get(&n.node_id)
            .or_else(|| mine.and_then(|m| m.relay_rtt_ms.get(&n.node_id)))
            .or_else(|| n.relay_rtt_ms.get(me))
            .copied()
            .filter(|v| v.is_finite())
    };
    let mut ranked: Vec<(bool, f64, usize, String, String)> = sources
        .into_iter()
        .filter(|(node, hops)| node != me && !hops.iter().any(|h| h == me))
        .filter_map(|(node, hops)| {
            let n = nodes.iter().find(|n| n.node_id == node && n.healthy)?;
            let elsewhere = my_region.is_some() && n.region.as_deref() != my_region;
            let ms = rtt(n).unwrap_or(f64::INFINITY);
            Some((elsewhere, ms, hops.len(), node, n.url.clone()))
        })
        .collect();
    ranked.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.total_cmp(&b.1))
            .then_with(|| a.2.cmp(&b.2))
            .then_with(|| a.3.cmp(&b.3))
    });
    ranked.into_iter().map(|(_, _, _, n, u)| (n, u)).collect()
}

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
        let candidates = nearest(
            &me,
            self.cluster.config.region.as_deref(),
            sources,
            &nodes,
            &self.peer_rtts(now_ms()),
        );
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
            for (node, url) in candidates.iter().take(2) {
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
    /// the lost node are passed over (they lost the stream too), then the nearest first
    /// ([`nearest`]: this node's region, then measured RTT, then hops).
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
        // Sources fed through the lost node lost the stream too, but for the node the
        // stream's room is placed on now: its publisher comes back there (a hot standby
        // that holds the stream: `Cluster::ensure_placed`), and its relays onwards follow
        // it when it does, so pulling from it at once is what saves the time.
        let home = match room_of(&r.stream) {
            Some(room) => match self.cluster.store.get_room(room).await {
                Ok(Some(placed)) if !placed.unplaced() => Some(placed.node),
                _ => None,
            },
            None => None,
        };
        let sources: Vec<(String, Vec<String>)> = sources
            .into_iter()
            .filter(|(node, hops)| {
                *node != r.source_node
                    && (!hops.contains(&r.source_node) || home.as_ref() == Some(node))
            })
            .collect();
        // The nearest as for a first pull: this node's region, measured RTT, hops.
        let candidates = nearest(
            me,
            self.cluster.config.region.as_deref(),
            sources,
            nodes,
            &self.peer_rtts(now_ms()),
        );
        let token = self.cluster_token();
        let body = serde_json::json!({ "targetNode": me }).to_string();
        for (node, url) in candidates.iter().take(2) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, region: Option<&str>, rtts: &[(&str, f64)]) -> Node {
        Node {
            node_id: id.into(),
            url: format!("http://{id}"),
            media_address: "127.0.0.1".into(),
            workers: 1,
            capacity: 100,
            reserved: 0,
            healthy: true,
            draining: false,
            overloaded: false,
            load: BTreeMap::new(),
            labels: BTreeMap::new(),
            region: region.map(str::to_owned),
            relay_rtt_ms: rtts.iter().map(|(p, v)| ((*p).to_owned(), *v)).collect(),
            registered_ms: 0,
            heartbeat_ms: 0,
        }
    }

    fn ids(v: &[(String, String)]) -> Vec<&str> {
        v.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn src(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(n, h)| ((*n).to_owned(), h.iter().map(|s| (*s).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn the_same_region_wins_over_fewer_hops() {
        // Published on x1; y1 got it from x1. For y2, y1 is nearer than the publisher.
        let nodes = [
            node("x1", Some("x"), &[]),
            node("y1", Some("y"), &[]),
            node("y2", Some("y"), &[]),
        ];
        let sources = src(&[("x1", &[]), ("y1", &["x1"])]);
        let none = BTreeMap::new();
        let got = nearest("y2", Some("y"), sources.clone(), &nodes, &none);
        assert_eq!(ids(&got), ["y1", "x1"]);
        assert_eq!(got[0].1, "http://y1");
        // Without a region, hops decide as before.
        assert_eq!(
            ids(&nearest("y2", None, sources, &nodes, &none)),
            ["x1", "y1"]
        );
    }

    #[test]
    fn measured_rtt_orders_sources_of_one_region() {
        let nodes = [
            node("me", Some("y"), &[("b", 40.0)]),
            node("a", Some("x"), &[]),
            node("b", Some("x"), &[]),
            node("c", Some("x"), &[("me", 12.0)]),
            node("d", Some("x"), &[]),
            node("sick", Some("y"), &[]),
        ];
        let mut sick = nodes.clone();
        sick[5].healthy = false;
        let sources = src(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["a"]),
            ("d", &["a"]),
            ("sick", &[]),
        ]);
        // c measured 12 ms to me (its record), b 40 ms (mine); a and d unmeasured: hops.
        let got = nearest("me", Some("y"), sources.clone(), &sick, &BTreeMap::new());
        assert_eq!(ids(&got), ["c", "b", "a", "d"]);
        // This node's own fresh measurement beats what the records say.
        let mine = BTreeMap::from([("b".to_owned(), 5.0)]);
        let got = nearest("me", Some("y"), sources, &sick, &mine);
        assert_eq!(ids(&got), ["b", "c", "a", "d"]);
    }

    #[test]
    fn never_itself_nor_a_loop() {
        let nodes = [
            node("a", None, &[]),
            node("b", None, &[]),
            node("c", None, &[]),
        ];
        let sources = src(&[("a", &[]), ("b", &["a", "c"]), ("c", &["a"])]);
        let got = nearest("c", None, sources, &nodes, &BTreeMap::new());
        assert_eq!(ids(&got), ["a"]);
    }
}
