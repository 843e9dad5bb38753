//! [`Relays`]: the relay service of this node, the handle the rest of the control plane
//! holds. Its calls are in `setup` (both ends), `pull` (the cascade), `trust` and `upkeep`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use switchyard_shared::command::SessionId;
use switchyard_shared::config::Config;

use super::book::Book;
use super::file::BookFile;
use super::rtt::PeerRtts;
use crate::services::cluster::load::Latest;
use crate::services::cluster::Cluster;
use crate::services::sessions::Sessions;

/// The relay service of this node: its book, and what it sets relays up with.
pub struct Relays {
    pub(super) sessions: Arc<Sessions>,
    pub(super) cluster: Arc<Cluster>,
    pub(super) book: BookFile,
    pub(super) load: Arc<Latest>,
    pub(super) node_id: String,
    pub(super) announce_ip: IpAddr,
    /// `[auth] key`, to sign cluster tokens when `[cluster] token` is not set.
    pub(super) auth_key: Option<String>,
    /// This node serves its API over HTTPS.
    pub(super) tls: bool,
    /// Round-trip times of its relay links, by peer.
    pub(super) rtts: Mutex<PeerRtts>,
    /// Which relays feeding this node have lost their source (viewer continuity).
    pub(super) lost: Mutex<super::lost::Lost>,
}

impl Relays {
    /// The relays of `config`'s node, as its relay file left them. The publishers relayed
    /// to this node are told to the session table, for WHEP answers here.
    pub fn new(
        config: &Config,
        sessions: Arc<Sessions>,
        cluster: Arc<Cluster>,
        load: Arc<Latest>,
    ) -> Self {
        let book = BookFile::load(config.relays_path());
        {
            let mut g = sessions.lock();
            for r in book.lock().ins() {
                if let Some(n) = &r.publisher_media {
                    g.node
                        .set_publisher_media(&r.stream, r.session, Arc::new(n.clone()));
                }
            }
        }
        Self {
            sessions,
            cluster,
            book,
            load,
            node_id: config.node.id.clone(),
            announce_ip: config.media.announce_ip(),
            auth_key: config.auth.key.clone(),
            tls: config.http.tls().is_some(),
            rtts: Mutex::default(),
            lost: Mutex::default(),
        }
    }

    /// The relay book, for reading (never held across an await).
    pub fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock()
    }

    /// Whether WHEP offers for streams on other nodes are served here (`[cluster] cascade`).
    pub fn cascades(&self) -> bool {
        self.cluster.config.cascade
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

/// Round-trip times of this node's relay links (the per-peer table is `rtt::PeerRtts`).
impl Relays {
    /// The smoothed RTT of the relay-out `session`, as its worker measured it last; None
    /// before the far node echoed a sender report (or without the stats file).
    pub fn link_rtt(&self, session: SessionId) -> Option<Duration> {
        let g = self.sessions.lock();
        let worker = g.node.session(session)?.worker;
        g.stats.as_ref()?.find(usize::from(worker), session.0)?.rtt
    }

    /// Read every relay-out's RTT into the per-peer table; the table as of `now_ms`.
    pub fn measure_rtts(&self, now_ms: u64) -> BTreeMap<String, f64> {
        let links: Vec<(String, SessionId)> = self
            .book
            .lock()
            .outs()
            .map(|r| (r.target_node.clone(), r.session))
            .collect();
        let mut by_peer: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        for (peer, session) in links {
            if let Some(rtt) = self.link_rtt(session) {
                by_peer.entry(peer).or_default().push(rtt);
            }
        }
        let mut table = self.rtts.lock().unwrap_or_else(|p| p.into_inner());
        for (peer, rtts) in &by_peer {
            table.observe(peer, rtts, now_ms);
        }
        table.current(now_ms)
    }

    /// RTTs to peers as this node measured them (ms), without reading the data plane.
    pub fn peer_rtts(&self, now_ms: u64) -> BTreeMap<String, f64> {
        self.rtts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current(now_ms)
    }
}
