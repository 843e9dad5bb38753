//! Relay set-up and tear-down, both ends.
//!
//! Source (the node that has the stream): [`Relays::open`] asks the target's ingress for a
//! relay, then adds a `RelayOut` session on the publisher's worker to the answered address.
//! Target: [`Relays::ingress`] refuses loops, adds (or reuses) the `RelayIn` session with a
//! fresh per-link key and answers where to send and with which key. Key convention (agreed
//! with the data plane): the target's `RelayIn` has `SrtpKeys { remote: K_fwd, local: K_back }`,
//! the source's `RelayOut` `SrtpKeys { remote: K_back, local: K_fwd }`, both
//! `AEAD_AES_128_GCM`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use switchyard_shared::command::{
    Keying, Role, SessionId, SessionSpec, SrtpKeys, SrtpProfile, MAX_TRACKS,
};
use switchyard_shared::names;

use super::book::{check_hops, HopError, InRelay, Join, OutRelay, Outcome};
use super::client::{self, Answer};
use super::error::RelayError;
use super::service::Relays;
use super::trust::check_target;
use crate::core::clock::now_ms;
use crate::core::counters::{self, ClusterCounters};
use crate::core::random;
use crate::core::state::NodeState;
use crate::core::store::Store as _;
use crate::sdp::Negotiated;

/// A relay-in that received nothing for this long makes its source node suspect: a live
/// stream sends audio every 20 ms and video every frame, and the link's RTCP every second.
const QUIET_SOURCE: Duration = Duration::from_millis(500);

/// The per-link SRTP profile.
pub const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
/// One control plane call (the target provisions a session while the source waits).
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(4);

fn metrics() -> &'static ClusterCounters {
    counters::cluster()
}

/// `POST /v1/relays/ingress`: the source's control plane asks this node to receive `stream`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRequest {
    pub stream: String,
    pub source_node: String,
    /// Every node the stream went through, the source last.
    pub hops: Vec<String>,
    /// The publisher's SSRCs in track order (the order of `publisherMedia`'s tracks, WHEP's
    /// m-line order): the target's relay-in starts with them instead of learning them in
    /// arrival order, so audio and video cannot swap. Empty: unknown, learned.
    #[serde(default)]
    pub ssrcs: Vec<u32>,
    /// The publisher's tracks, for WHEP answers on the target.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub publisher_media: Option<Negotiated>,
}

/// The ingress answer: where to send and with which key.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressAnswer {
    /// The target's `RelayIn` session id; `DELETE /v1/relays/ingress/{relayId}` ends it.
    pub relay_id: u64,
    pub node: String,
    pub stream: String,
    /// The target's relay socket: `address`, `port`.
    #[schema(value_type = String, example = "10.0.0.2")]
    pub address: IpAddr,
    pub port: u16,
    pub profile: String,
    /// K_fwd: master key || salt the source protects media with (base64).
    pub key: String,
    /// K_back: what the target protects feedback (NACK, PLI) with (base64).
    pub key_back: String,
    pub hops: Vec<String>,
}

/// Where a relay goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A node in the registry.
    Node(String),
    /// A control plane outside the registry, by base URL.
    Url(String),
}

fn b64(k: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// The publisher's tracks without its ICE and DTLS identity or SDP answer: a WHEP answer
/// on another node needs the codecs and ids only.
fn tracks_only(n: &Negotiated) -> Negotiated {
    Negotiated {
        ice_ufrag_remote: String::new(),
        ice_pwd_remote: String::new(),
        remote_fingerprint: String::new(),
        tracks: n.tracks.clone(),
        answer: String::new(),
        // Data channels end at the publisher's node: a relay carries media only.
        data_channel: None,
    }
}

/// Wait for the set-up in flight under `key`; `Ok` means the book has the result.
pub(super) async fn follow(rx: tokio::sync::oneshot::Receiver<Outcome>) -> Result<(), RelayError> {
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RelayError::Concurrent(e)),
        Err(_) => Err(RelayError::Abandoned),
    }
}

impl Relays {
    /// Runs the leader's set-up and always tells the followers, even when it fails early.
    pub(super) async fn lead<T>(
        &self,
        key: &str,
        work: impl std::future::Future<Output = Result<T, RelayError>>,
    ) -> Result<T, RelayError> {
        let result = work.await;
        let outcome = result.as_ref().map(|_| ()).map_err(ToString::to_string);
        self.book.lock().finish(key, &outcome);
        result
    }

    // -----------------------------------------------------------------------------------
    // Source side.

    /// Open (or return) the relay of `stream` to `target`. `Ok((relay, true))` when made now.
    pub async fn open(&self, stream: &str, target: Target) -> Result<(OutRelay, bool), RelayError> {
        let me = self.node_id.clone();
        // The stream must be published here, by a publisher or a relay; the relay goes out
        // from the publisher's worker.
        let worker = {
            let g = self.sessions.lock();
            let w = g
                .node
                .sessions()
                .find(|s| {
                    s.stream == stream
                        && matches!(s.role, Role::Publisher { .. } | Role::RelayIn { .. })
                })
                .map(|s| s.worker);
            w
        };
        let Some(worker) = worker else {
            metrics().relay_failed("no_stream");
            return Err(RelayError::NotPublished(stream.to_owned()));
        };
        let (key, url, node) = match &target {
            Target::Node(id) => {
                names::id("targetNode", id)?;
                if *id == me {
                    return Err(RelayError::ToItself);
                }
                let nodes = self.cluster.store.list_nodes().await?;
                let n = nodes
                    .into_iter()
                    .find(|n| n.node_id == *id)
                    .ok_or_else(|| {
                        metrics().relay_failed("unknown_target");
                        RelayError::UnknownTarget(id.clone())
                    })?;
                (format!("out\n{stream}\n{id}"), n.url, Some(id.clone()))
            }
            Target::Url(url) => (format!("out\n{stream}\n{url}"), url.clone(), None),
        };
        let existing = || {
            let book = self.book.lock();
            match &node {
                Some(id) => book.out(stream, id).cloned(),
                None => book.out_by_url(stream, &url).cloned(),
            }
        };
        loop {
            if let Some(r) = existing() {
                return Ok((r, false));
            }
            let join = self.book.lock().join(&key);
            match join {
                Join::Follow(rx) => follow(rx).await?,
                Join::Lead => break,
            }
        }
        // Lost a race with a set-up that finished between the check and the join.
        if let Some(r) = existing() {
            self.book.lock().finish(&key, &Ok(()));
            return Ok((r, false));
        }
        let relay = self
            .lead(&key, self.connect(stream, worker, &url, node.as_deref()))
            .await?;
        Ok((relay, true))
    }

    /// The SSRCs of `stream`'s publisher here in track order: a publisher's declared ones,
    /// or those a relay-in was given (a chain passes them on). Empty when unknown.
    fn publisher_ssrcs(&self, stream: &str) -> Vec<u32> {
        let g = self.sessions.lock();
        let ssrcs = g.node.sessions().find_map(|s| match &s.role {
            Role::Publisher { ssrcs, .. } | Role::RelayIn { ssrcs, .. } if s.stream == stream => {
                Some(ssrcs.clone())
            }
            _ => None,
        });
        ssrcs.unwrap_or_default()
    }

    /// The source's set-up proper: the target's ingress, then the `RelayOut`.
    async fn connect(
        &self,
        stream: &str,
        worker: u16,
        url: &str,
        node: Option<&str>,
    ) -> Result<OutRelay, RelayError> {
        let me = self.node_id.clone();
        let mut hops = self
            .book
            .lock()
            .incoming(stream)
            .map(|r| r.hops.clone())
            .unwrap_or_default();
        hops.push(me.clone());
        if let Some(n) = node {
            if check_hops(n, &hops) == Err(HopError::Loop) {
                metrics().relay_failed("loop");
                return Err(RelayError::Loop {
                    node: n.to_owned(),
                    hops,
                });
            }
        }
        let publisher_media = self
            .sessions
            .lock()
            .node
            .publisher_media(stream)
            .map(|n| tracks_only(&n))
            .or_else(|| {
                self.book
                    .lock()
                    .incoming(stream)
                    .and_then(|r| r.publisher_media.clone())
            });
        let req = IngressRequest {
            stream: stream.to_owned(),
            source_node: me,
            hops: hops.clone(),
            ssrcs: self.publisher_ssrcs(stream),
            publisher_media,
        };
        let body = serde_json::to_vec(&req).map_err(|e| RelayError::Encode(e.to_string()))?;
        // The answer carries the link keys.
        check_target(url, self.cluster.config.allow_plain_http_keys)?;
        let token = self.cluster_token();
        let answer = client::request(
            url,
            "POST",
            "/v1/relays/ingress",
            Some(&body),
            token.as_deref(),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| {
            metrics().relay_failed("target_unreachable");
            RelayError::Unreachable {
                url: url.to_owned(),
                error: e.to_string(),
            }
        })?;
        if !(200..300).contains(&answer.status) {
            metrics().relay_failed(if answer.status == 409 {
                "target_conflict"
            } else {
                "target_refused"
            });
            return Err(RelayError::Refused {
                status: answer.status,
                text: answer.error_text(),
            });
        }
        let (a, keys) = parse_answer(&answer).inspect_err(|_| {
            metrics().relay_failed("malformed_answer");
        })?;
        if node.is_some_and(|n| n != a.node) {
            metrics().relay_failed("malformed_answer");
            return Err(RelayError::WrongNode {
                answered: a.node,
                asked: node.map(str::to_owned),
            });
        }
        // The same target under its other name (address and node id asked for at once): the
        // target reused its ingress, so reuse the relay too rather than send every packet
        // twice.
        if let Some(r) = self.book.lock().out(stream, &a.node) {
            return Ok(r.clone());
        }
        let remote = SocketAddr::new(a.address, a.port);
        let target_node = a.node.clone();
        let provisioned = self
            .sessions
            .provision(Some(worker), |id, worker, _| {
                Ok::<_, RelayError>((
                    SessionSpec {
                        id,
                        worker,
                        stream: stream.to_owned(),
                        role: Role::RelayOut,
                        remote: Some(remote),
                        keying: Keying::Static(keys),
                        ice: None,
                        twcc_ext: None,
                        created_ms: now_ms(),
                        control: Default::default(),
                    },
                    (),
                ))
            })
            .await;
        let (spec, ()) = match provisioned {
            Ok(p) => p,
            Err(e) => {
                metrics().relay_failed("dataplane");
                // Do not leave the target waiting for media that will not come.
                let path = format!(
                    "/v1/relays/ingress/{}?sourceNode={}",
                    a.relay_id, self.node_id
                );
                let _ = client::request(url, "DELETE", &path, None, token.as_deref(), CALL_TIMEOUT)
                    .await;
                return Err(e);
            }
        };
        let relay = OutRelay {
            stream: stream.to_owned(),
            target_node,
            target_url: url.to_owned(),
            remote_relay_id: a.relay_id,
            session: spec.id,
            remote,
            hops,
            created_ms: spec.created_ms,
        };
        self.book.lock().add_out(relay.clone());
        self.book.save();
        tracing::info!(%stream, target = %relay.target_node, %remote, session = spec.id.0, "relay opened");
        Ok(relay)
    }

    /// End the relay of `stream` to `target`: the local `RelayOut` and the target's ingress.
    /// Returns whether the target confirmed.
    pub async fn close(&self, stream: &str, target: &str) -> Result<bool, RelayError> {
        let relay = self
            .book
            .lock()
            .out(stream, target)
            .cloned()
            .ok_or_else(|| RelayError::NoSuchRelay {
                stream: stream.to_owned(),
                target: target.to_owned(),
            })?;
        match self.sessions.remove(relay.session).await {
            Ok(()) => {}
            // Already gone from the data plane: forget it all the same.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        self.book.lock().remove_out(stream, target);
        self.book.save();
        // Named as the source: a target whose relay-in a new source has taken over since
        // keeps it.
        let path = format!(
            "/v1/relays/ingress/{}?sourceNode={}",
            relay.remote_relay_id, self.node_id
        );
        let token = self.cluster_token();
        let answer = client::request(
            &relay.target_url,
            "DELETE",
            &path,
            None,
            token.as_deref(),
            CALL_TIMEOUT,
        )
        .await;
        let confirmed = matches!(&answer, Ok(a) if a.status == 204 || a.status == 404);
        if !confirmed {
            tracing::warn!(%stream, %target, answer = ?answer.map(|a| a.status), "the target did not confirm the end of the relay");
        }
        tracing::info!(%stream, %target, "relay closed");
        Ok(confirmed)
    }

    // -----------------------------------------------------------------------------------
    // Target side.

    /// Create (or reuse) the relay ingress for `req`. `Ok((answer, true))` when made now.
    pub async fn ingress(&self, req: IngressRequest) -> Result<(IngressAnswer, bool), RelayError> {
        let me = self.node_id.clone();
        names::stream("stream", &req.stream)?;
        names::id("sourceNode", &req.source_node)?;
        for h in &req.hops {
            names::id("hops", h)?;
        }
        if req.hops.last() != Some(&req.source_node) {
            return Err(RelayError::HopsEnd);
        }
        match check_hops(&me, &req.hops) {
            Ok(()) => {}
            Err(HopError::Loop) => {
                metrics().relay_failed("loop");
                return Err(RelayError::Loop {
                    node: me,
                    hops: req.hops,
                });
            }
            Err(HopError::TooLong) => {
                metrics().relay_failed("loop");
                return Err(RelayError::HopsTooLong);
            }
        }
        if req.ssrcs.len() > MAX_TRACKS {
            return Err(RelayError::TooManySsrcs);
        }
        if let Some(n) = &req.publisher_media {
            if n.tracks.len() > 16 {
                return Err(RelayError::TooManyTracks);
            }
        }
        let key = format!("in\n{}", req.stream);
        // The relay feeding the stream here lost its source: the new source takes the same
        // relay-in over, so the viewers here keep their sessions.
        if self.lost_ingress(&req).await.is_some() {
            let lead = matches!(self.book.lock().join(&key), Join::Lead);
            if lead {
                let answer = self
                    .lead(&key, async {
                        let old = self.lost_ingress(&req).await.ok_or_else(|| {
                            RelayError::Conflict(format!(
                                "stream {} is relayed to this node from another source",
                                req.stream
                            ))
                        })?;
                        self.retarget_ingress(old, &req).await
                    })
                    .await?;
                self.sync_streams().await;
                return Ok((answer, true));
            }
            // Another set-up or take-over is in flight: answered below from the book.
        }
        loop {
            if let Some(a) = self.existing_ingress(&req)? {
                return Ok((a, false));
            }
            let join = self.book.lock().join(&key);
            match join {
                Join::Follow(rx) => follow(rx).await?,
                Join::Lead => break,
            }
        }
        let made = self
            .lead(&key, async {
                if let Some(a) = self.existing_ingress(&req)? {
                    return Ok((a, false));
                }
                Ok((self.open_ingress(req).await?, true))
            })
            .await?;
        if made.1 {
            self.sync_streams().await;
        }
        Ok(made)
    }

    /// The relay feeding `req.stream` here that `req`'s source may take over: one from
    /// another source that is lost, or one from the same source whose publisher changed
    /// under it (its SSRCs differ: the source's own relay was taken over, and it opens its
    /// relays onwards again, so a chain follows).
    async fn lost_ingress(&self, req: &IngressRequest) -> Option<InRelay> {
        let r = self.book.lock().incoming(&req.stream).cloned()?;
        if r.source_node == req.source_node {
            let g = self.sessions.lock();
            let changed = matches!(
                g.node.session(r.session).map(|s| &s.role),
                Some(Role::RelayIn { ssrcs, .. }) if !req.ssrcs.is_empty() && *ssrcs != req.ssrcs
            );
            return changed.then_some(r);
        }
        let nodes = self.cluster.store.list_nodes().await.ok()?;
        self.source_lost(&r, &nodes).await.then_some(r)
    }

    /// Whether a relay feeding this node went quiet lately: it has received nothing for
    /// [`QUIET_SOURCE`], and not yet for a second more. Its source is worth a look
    /// ([`Self::source_lost`]) before the next full relay tick; one that stays quiet (a
    /// paused publisher) is looked at once a full tick after that, as before, so a live
    /// but silent source costs a few probes, not five a second.
    pub(super) fn any_newly_quiet(&self) -> bool {
        let ins: Vec<SessionId> = self.book.lock().ins().map(|r| r.session).collect();
        let lately = QUIET_SOURCE..QUIET_SOURCE + Duration::from_secs(1);
        ins.into_iter().any(|s| {
            self.sessions
                .quiet_for(s)
                .is_some_and(|q| lately.contains(&q))
        })
    }

    /// Whether relay `r`'s source is gone: removed from the registry (dead), or no longer
    /// listing the stream for a while (its publisher left, or re-published elsewhere; see
    /// `lost`). A store that cannot answer proves nothing: not lost.
    pub(super) async fn source_lost(
        &self,
        r: &InRelay,
        nodes: &[crate::core::store::Node],
    ) -> bool {
        let mut registered = nodes.iter().any(|n| n.node_id == r.source_node);
        // A relay that went quiet makes its source suspect: a source whose host refuses
        // connections is dead and removed now, not three health rounds from now.
        if let Some(source) = nodes.iter().find(|n| n.node_id == r.source_node) {
            let quiet = self
                .sessions
                .quiet_for(r.session)
                .is_some_and(|q| q >= QUIET_SOURCE);
            if quiet && self.cluster.confirm_dead(source, &self.node_id).await {
                registered = false;
            }
        }
        let listed = if registered {
            match self.cluster.store.stream_sources(&r.stream).await {
                Ok(sources) => sources.iter().any(|(n, _)| *n == r.source_node),
                Err(_) => return false,
            }
        } else {
            false
        };
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).judge(
            &r.stream,
            &r.source_node,
            (registered, listed),
            now_ms(),
        )
    }

    /// Point relay-in `old` at `req`'s source: a fresh link key, the new source's SSRCs and
    /// layers, the same session (its viewers keep theirs; the data plane re-bases their
    /// numbering and asks the new source for a keyframe).
    async fn retarget_ingress(
        &self,
        old: InRelay,
        req: &IngressRequest,
    ) -> Result<IngressAnswer, RelayError> {
        let mut forward = vec![0u8; PROFILE.master_len()];
        let mut back = vec![0u8; PROFILE.master_len()];
        random::fill(&mut forward)?;
        random::fill(&mut back)?;
        let simulcast = req
            .publisher_media
            .as_ref()
            .and_then(crate::services::webrtc::simulcast_map);
        self.sessions.retarget_relay_in(
            old.session,
            SrtpKeys {
                profile: PROFILE,
                remote: forward,
                local: back,
            },
            req.ssrcs.clone(),
            simulcast,
            req.publisher_media
                .as_ref()
                .map(crate::services::webrtc::video_codecs)
                .unwrap_or_default(),
        )?;
        if let Some(n) = &req.publisher_media {
            self.sessions.lock().node.set_publisher_media(
                &req.stream,
                old.session,
                Arc::new(n.clone()),
            );
        }
        let relay = InRelay {
            source_node: req.source_node.clone(),
            hops: req.hops.clone(),
            publisher_media: req.publisher_media.clone(),
            ..old.clone()
        };
        self.book.lock().add_in(relay);
        self.book.save();
        // Relays of the stream onwards carry the new publisher's SSRCs from now on: their
        // targets are told (the relay task opens them again, into the same relay-ins).
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reopen(&req.stream);
        counters::cluster().relay_retargeted();
        tracing::info!(stream = %req.stream, from = %old.source_node, to = %req.source_node, session = old.session.0, "relay ingress taken over by a new source");
        let g = self.sessions.lock();
        let spec = g.node.session(old.session).ok_or(RelayError::NoKeys)?;
        self.answer_for(&g.node, spec, &req.hops)
            .ok_or(RelayError::NoKeys)
    }

    /// A publisher is about to publish `stream` here: a relay feeding it here ends first
    /// (the node's viewers of it stay, and follow the new publisher). Asks a live source
    /// to close its end; a lost one is not waited for.
    pub async fn yield_to_publisher(&self, stream: &str) {
        let Some(r) = self.book.lock().incoming(stream).cloned() else {
            return;
        };
        let lost = match self.cluster.store.list_nodes().await {
            Ok(nodes) => self.source_lost(&r, &nodes).await,
            Err(_) => true,
        };
        tracing::info!(%stream, source = %r.source_node, lost, "a publisher here replaces the relay that fed the stream");
        if lost {
            if let Err(e) = self.close_ingress(r.session).await {
                tracing::warn!(%stream, error = %e, "cannot end the relay ingress");
            }
        } else {
            self.end_incoming(&r).await;
        }
    }

    /// The answer for the relay already feeding `req.stream` from the same source; a
    /// conflict when another source feeds it or a local publisher publishes it.
    fn existing_ingress(&self, req: &IngressRequest) -> Result<Option<IngressAnswer>, RelayError> {
        let g = self.sessions.lock();
        let relay = self.book.lock().incoming(&req.stream).cloned();
        let conflict = |m: String| {
            metrics().relay_failed("conflict");
            RelayError::Conflict(m)
        };
        if let Some(r) = relay {
            if r.source_node != req.source_node {
                return Err(conflict(format!(
                    "stream {} is already relayed to this node from {}",
                    req.stream, r.source_node
                )));
            }
            let Some(spec) = g.node.session(r.session) else {
                return Ok(None);
            };
            return Ok(self.answer_for(&g.node, spec, &r.hops));
        }
        if g.node.sessions().any(|s| {
            s.stream == req.stream
                && matches!(s.role, Role::Publisher { .. } | Role::RelayIn { .. })
        }) {
            return Err(conflict(format!(
                "stream {} is already published on this node",
                req.stream
            )));
        }
        Ok(None)
    }

    fn answer_for(
        &self,
        node: &NodeState,
        spec: &SessionSpec,
        hops: &[String],
    ) -> Option<IngressAnswer> {
        let keys = spec.keying.keys()?;
        Some(IngressAnswer {
            relay_id: spec.id.0,
            node: self.node_id.clone(),
            stream: spec.stream.clone(),
            address: self.announce_ip,
            port: self.sessions.relay_base(node).saturating_add(spec.worker),
            profile: keys.profile.name().to_owned(),
            key: b64(&keys.remote),
            key_back: b64(&keys.local),
            hops: hops.to_vec(),
        })
    }

    async fn open_ingress(&self, req: IngressRequest) -> Result<IngressAnswer, RelayError> {
        let mut forward = vec![0u8; PROFILE.master_len()];
        let mut back = vec![0u8; PROFILE.master_len()];
        random::fill(&mut forward)?;
        random::fill(&mut back)?;
        let (spec, ()) = self
            .sessions
            .provision(None, |id, worker, _| {
                Ok::<_, RelayError>((
                    SessionSpec {
                        id,
                        worker,
                        stream: req.stream.clone(),
                        role: Role::RelayIn {
                            ssrcs: req.ssrcs.clone(),
                            // The publisher's layers cross the link unchanged; this node
                            // tells them apart for its own viewers.
                            simulcast: req
                                .publisher_media
                                .as_ref()
                                .and_then(crate::services::webrtc::simulcast_map),
                            // And its VP9 spatial layers, likewise.
                            video: req
                                .publisher_media
                                .as_ref()
                                .map(crate::services::webrtc::video_codecs)
                                .unwrap_or_default(),
                        },
                        remote: None,
                        keying: Keying::Static(SrtpKeys {
                            profile: PROFILE,
                            remote: forward,
                            local: back,
                        }),
                        ice: None,
                        twcc_ext: None,
                        created_ms: now_ms(),
                        control: Default::default(),
                    },
                    (),
                ))
            })
            .await
            .inspect_err(|_| metrics().relay_failed("dataplane"))?;
        if let Some(n) = &req.publisher_media {
            self.sessions.lock().node.set_publisher_media(
                &req.stream,
                spec.id,
                Arc::new(n.clone()),
            );
        }
        let relay = InRelay {
            stream: req.stream.clone(),
            source_node: req.source_node.clone(),
            hops: req.hops.clone(),
            session: spec.id,
            auto: false,
            publisher_media: req.publisher_media,
            created_ms: spec.created_ms,
        };
        self.book.lock().add_in(relay);
        self.book.save();
        tracing::info!(stream = %req.stream, source = %req.source_node, session = spec.id.0, worker = spec.worker, "relay ingress opened");
        let g = self.sessions.lock();
        self.answer_for(&g.node, &spec, &req.hops)
            .ok_or(RelayError::NoKeys)
    }

    /// Open again the relays onwards of streams whose relay-in here was taken over by a new
    /// source: the local relay-out goes (without ending the target's relay-in) and the
    /// set-up runs again, which the target takes as a change of publisher under the same
    /// source (`lost_ingress`) and answers with a fresh key into the same relay-in.
    pub(super) async fn reopen_onwards(&self) {
        let streams = self
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_reopen();
        for stream in streams {
            let outs: Vec<OutRelay> = self
                .book
                .lock()
                .outs()
                .filter(|o| o.stream == stream)
                .cloned()
                .collect();
            for o in outs {
                match self.sessions.remove(o.session).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        tracing::warn!(%stream, target = %o.target_node, error = %e, "relay onwards not reopened");
                        continue;
                    }
                }
                self.book.lock().remove_out(&stream, &o.target_node);
                self.book.save();
                let target = if self
                    .cluster
                    .store
                    .list_nodes()
                    .await
                    .is_ok_and(|n| n.iter().any(|n| n.node_id == o.target_node))
                {
                    Target::Node(o.target_node.clone())
                } else {
                    Target::Url(o.target_url.clone())
                };
                match self.open(&stream, target).await {
                    Ok(_) => {
                        tracing::info!(%stream, target = %o.target_node, "relay onwards reopened for the new source")
                    }
                    Err(e) => {
                        tracing::warn!(%stream, target = %o.target_node, error = %e, "relay onwards not reopened")
                    }
                }
            }
        }
    }

    /// A new publisher of `stream` here: relays of the stream onwards (left from a relay
    /// it replaced) are opened again, so their targets take its SSRCs.
    pub async fn publisher_changed(&self, stream: &str) {
        if !self.book.lock().outs().any(|o| o.stream == stream) {
            return;
        }
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reopen(stream);
        self.reopen_onwards().await;
    }

    /// Whether relay-in `id` here is fed from `source` now.
    pub fn fed_from(&self, id: SessionId, source: &str) -> bool {
        self.book
            .lock()
            .ins()
            .any(|r| r.session == id && r.source_node == source)
    }

    /// End the ingress `id` (its `RelayIn` session) here.
    pub async fn close_ingress(&self, id: SessionId) -> Result<(), RelayError> {
        let known = self.book.lock().ins().any(|r| r.session == id);
        if !known {
            return Err(RelayError::NoSuchIngress);
        }
        match self.sessions.remove(id).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(r) = self.book.lock().remove_in_by_session(id) {
            tracing::info!(stream = %r.stream, source = %r.source_node, "relay ingress closed");
        }
        self.book.save();
        self.sync_streams().await;
        Ok(())
    }

    /// End a relay that feeds this node (its grace period ran out): ask the source to close
    /// it (which ends the ingress here too); when the source cannot be reached, end it here
    /// alone.
    pub async fn end_incoming(&self, r: &InRelay) {
        let me = &self.node_id;
        let url = self
            .cluster
            .store
            .list_nodes()
            .await
            .ok()
            .and_then(|nodes| {
                nodes
                    .into_iter()
                    .find(|n| n.node_id == r.source_node)
                    .map(|n| n.url)
            });
        if let Some(url) = url {
            let path = format!("{}/{me}", client::stream_path(&r.stream));
            let token = self.cluster_token();
            match client::request(&url, "DELETE", &path, None, token.as_deref(), CALL_TIMEOUT).await
            {
                Ok(a) if a.status < 300 => {}
                other => {
                    tracing::warn!(stream = %r.stream, source = %r.source_node, answer = ?other.map(|a| a.status), "the source did not close the relay; ending it here")
                }
            }
        }
        // The source's close has ended it here already when it answered; otherwise end it now.
        if self.book.lock().ins().any(|i| i.session == r.session) {
            if let Err(e) = self.close_ingress(r.session).await {
                tracing::warn!(stream = %r.stream, error = %e, "cannot end the relay ingress");
            }
        }
    }
}

/// The ingress answer, checked, and the source's keys.
pub(crate) fn parse_answer(answer: &Answer) -> Result<(IngressAnswer, SrtpKeys), RelayError> {
    let bad = |m: String| RelayError::BadAnswer(m);
    let a: IngressAnswer = serde_json::from_slice(&answer.body).map_err(|e| bad(e.to_string()))?;
    if a.profile != PROFILE.name() {
        return Err(bad(format!(
            "profile {} is not {}",
            a.profile,
            PROFILE.name()
        )));
    }
    if a.port == 0 || a.address.is_unspecified() || a.address.is_multicast() {
        return Err(bad("no usable relay address".into()));
    }
    let key = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(k)
            .ok()
            .filter(|k| k.len() == PROFILE.master_len())
            .ok_or_else(|| bad("keys must be base64 of master key || salt".into()))
    };
    let keys = SrtpKeys {
        profile: PROFILE,
        remote: key(&a.key_back)?,
        local: key(&a.key)?,
    };
    Ok((a, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(key: &str, key_back: &str, profile: &str, port: u16) -> Answer {
        let body = serde_json::json!({
            "relayId": 7, "node": "b", "stream": "r/s", "address": "10.0.0.2",
            "port": port, "profile": profile, "key": key, "keyBack": key_back, "hops": ["a"],
        });
        Answer {
            status: 201,
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn the_source_protects_with_the_forward_key_and_opens_with_the_back_key() {
        let fwd = b64(&[1; 28]);
        let back = b64(&[2; 28]);
        let (a, keys) = parse_answer(&answer(&fwd, &back, "AEAD_AES_128_GCM", 9443)).unwrap();
        assert_eq!((a.relay_id, a.port), (7, 9443));
        // Target's RelayIn: { remote: K_fwd, local: K_back }; source's RelayOut the mirror.
        assert_eq!(keys.local, vec![1; 28], "RelayOut protects with K_fwd");
        assert_eq!(
            keys.remote,
            vec![2; 28],
            "and unprotects feedback with K_back"
        );
        assert_eq!(keys.profile, PROFILE);
    }

    #[test]
    fn the_publishers_identity_stays_home() {
        let n = Negotiated {
            ice_ufrag_remote: "u".into(),
            ice_pwd_remote: "secret".into(),
            remote_fingerprint: "sha-256 AA".into(),
            tracks: Vec::new(),
            answer: "v=0".into(),
            data_channel: None,
        };
        let t = tracks_only(&n);
        assert!(t.ice_pwd_remote.is_empty() && t.answer.is_empty());
        assert!(t.remote_fingerprint.is_empty() && t.ice_ufrag_remote.is_empty());
    }
}
