//! Relay set-up and tear-down, both ends, and the WHEP cascade's pull.
//!
//! Source (the node that has the stream): `open` asks the target's ingress for a relay, then
//! adds a `RelayOut` session on the publisher's worker to the answered address. Target:
//! `ingress` refuses loops, adds (or reuses) the `RelayIn` session with a fresh per-link key
//! and answers where to send and with which key. Key convention (agreed with the data plane):
//! the target's `RelayIn` has `SrtpKeys { remote: K_fwd, local: K_back }`, the source's
//! `RelayOut` `SrtpKeys { remote: K_back, local: K_fwd }`, both `AEAD_AES_128_GCM`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use switchyard_shared::command::{Keying, Role, SessionId, SessionSpec, SrtpKeys, SrtpProfile};

use super::book::{check_hops, HopError, InRelay, Join, OutRelay, MAX_HOPS};
use super::client::{self, Answer};
use super::cluster_token;
use crate::api::{provision, random_bytes, remove, ApiError};
use crate::cluster::{Cluster, Store as _};
use crate::link::Shared;
use crate::sdp::Negotiated;

/// The per-link SRTP profile.
pub const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
/// One control plane call (the target provisions a session while the source waits).
const CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// A cascade's pull: the source's set-up includes its call back to this node.
const PULL_TIMEOUT: Duration = Duration::from_secs(8);

fn metrics() -> &'static crate::metrics::ClusterMetrics {
    crate::metrics::cluster()
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

fn valid_node(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what}: 1 to 128 characters of A-Z a-z 0-9 _ . -"
        )))
    }
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
async fn follow(rx: tokio::sync::oneshot::Receiver<super::book::Outcome>) -> Result<(), ApiError> {
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ApiError::new(StatusCode::BAD_GATEWAY, e)),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "the concurrent relay set-up was abandoned",
        )),
    }
}

/// Runs the leader's set-up and always tells the followers, even when it fails early.
async fn lead<T>(
    shared: &Shared,
    key: &str,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let result = work.await;
    let outcome = result
        .as_ref()
        .map(|_| ())
        .map_err(|e| e.message().to_owned());
    shared.relays.lock().finish(key, &outcome);
    result
}

// ---------------------------------------------------------------------------------------
// Source side.

/// Open (or return) the relay of `stream` to `target`. `Ok((relay, true))` when made now.
pub async fn open(
    shared: &Arc<Shared>,
    cluster: &Cluster,
    stream: &str,
    target: Target,
) -> Result<(OutRelay, bool), ApiError> {
    let me = shared.config.node.id.clone();
    // The stream must be published here, by a publisher or a relay; the relay goes out from
    // the publisher's worker.
    let worker = {
        let g = shared.lock();
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
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("stream {stream} is not published on this node"),
        ));
    };
    let (key, url, node) = match &target {
        Target::Node(id) => {
            valid_node("targetNode", id)?;
            if *id == me {
                return Err(ApiError::bad_request(
                    "targetNode: a node does not relay to itself",
                ));
            }
            let nodes = cluster.store.list_nodes().await?;
            let n = nodes
                .into_iter()
                .find(|n| n.node_id == *id)
                .ok_or_else(|| {
                    metrics().relay_failed("unknown_target");
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no node {id:?} in the registry"),
                    )
                })?;
            (format!("out\n{stream}\n{id}"), n.url, Some(id.clone()))
        }
        Target::Url(url) => (format!("out\n{stream}\n{url}"), url.clone(), None),
    };
    let existing = |shared: &Shared| {
        let book = shared.relays.lock();
        match &node {
            Some(id) => book.out(stream, id).cloned(),
            None => book.out_by_url(stream, &url).cloned(),
        }
    };
    loop {
        if let Some(r) = existing(shared) {
            return Ok((r, false));
        }
        let join = shared.relays.lock().join(&key);
        match join {
            Join::Follow(rx) => follow(rx).await?,
            Join::Lead => break,
        }
    }
    // Lost a race with a set-up that finished between the check and the join.
    if let Some(r) = existing(shared) {
        shared.relays.lock().finish(&key, &Ok(()));
        return Ok((r, false));
    }
    let relay = lead(
        shared,
        &key,
        connect(shared, stream, worker, &url, node.as_deref()),
    )
    .await?;
    Ok((relay, true))
}

/// The SSRCs of `stream`'s publisher here in track order: a publisher's declared ones, or
/// those a relay-in was given (a chain passes them on). Empty when unknown.
fn publisher_ssrcs(shared: &Shared, stream: &str) -> Vec<u32> {
    let g = shared.lock();
    let ssrcs = g.node.sessions().find_map(|s| match &s.role {
        Role::Publisher { ssrcs, .. } | Role::RelayIn { ssrcs } if s.stream == stream => {
            Some(ssrcs.clone())
        }
        _ => None,
    });
    ssrcs.unwrap_or_default()
}

/// The source's set-up proper: the target's ingress, then the `RelayOut`.
async fn connect(
    shared: &Arc<Shared>,
    stream: &str,
    worker: u16,
    url: &str,
    node: Option<&str>,
) -> Result<OutRelay, ApiError> {
    let me = shared.config.node.id.clone();
    let mut hops = shared
        .relays
        .lock()
        .incoming(stream)
        .map(|r| r.hops.clone())
        .unwrap_or_default();
    hops.push(me.clone());
    if let Some(n) = node {
        if check_hops(n, &hops) == Err(HopError::Loop) {
            metrics().relay_failed("loop");
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("relay loop: {n} is already in the hop list {hops:?}"),
            ));
        }
    }
    let publisher_media = shared
        .lock()
        .node
        .publisher_media(stream)
        .map(|n| tracks_only(&n))
        .or_else(|| {
            shared
                .relays
                .lock()
                .incoming(stream)
                .and_then(|r| r.publisher_media.clone())
        });
    let req = IngressRequest {
        stream: stream.to_owned(),
        source_node: me,
        hops: hops.clone(),
        ssrcs: publisher_ssrcs(shared, stream),
        publisher_media,
    };
    let body = serde_json::to_vec(&req)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // The answer carries the link keys.
    super::check_target(url, shared.config.cluster.allow_plain_http_keys)?;
    let token = cluster_token(&shared.config);
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
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("target control plane {url}: {e}"),
        )
    })?;
    if !(200..300).contains(&answer.status) {
        metrics().relay_failed(if answer.status == 409 {
            "target_conflict"
        } else {
            "target_refused"
        });
        // A refusal the caller can act on (a loop, a conflict) keeps its status.
        let status = match answer.status {
            409 => StatusCode::CONFLICT,
            _ => StatusCode::BAD_GATEWAY,
        };
        return Err(ApiError::new(
            status,
            format!(
                "target control plane answered {}: {}",
                answer.status,
                answer.error_text()
            ),
        ));
    }
    let (a, keys) = parse_answer(&answer).inspect_err(|_| {
        metrics().relay_failed("malformed_answer");
    })?;
    if node.is_some_and(|n| n != a.node) {
        metrics().relay_failed("malformed_answer");
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("target answered as node {:?}, not {:?}", a.node, node),
        ));
    }
    // The same target under its other name (address and node id asked for at once): the
    // target reused its ingress, so reuse the relay too rather than send every packet twice.
    if let Some(r) = shared.relays.lock().out(stream, &a.node) {
        return Ok(r.clone());
    }
    let remote = SocketAddr::new(a.address, a.port);
    let target_node = a.node.clone();
    let provisioned = provision(shared, Some(worker), |id, worker, _| {
        Ok((
            SessionSpec {
                id,
                worker,
                stream: stream.to_owned(),
                role: Role::RelayOut,
                remote: Some(remote),
                keying: Keying::Static(keys),
                ice: None,
                twcc_ext: None,
                created_ms: crate::api::now_ms(),
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
            let path = format!("/v1/relays/ingress/{}", a.relay_id);
            let _ =
                client::request(url, "DELETE", &path, None, token.as_deref(), CALL_TIMEOUT).await;
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
    shared.relays.lock().add_out(relay.clone());
    shared.relays.save();
    tracing::info!(%stream, target = %relay.target_node, %remote, session = spec.id.0, "relay opened");
    Ok(relay)
}

/// The ingress answer, checked, and the source's keys.
fn parse_answer(answer: &Answer) -> Result<(IngressAnswer, SrtpKeys), ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_GATEWAY, format!("target's answer: {m}"));
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

/// End the relay of `stream` to `target`: the local `RelayOut` and the target's ingress.
/// Returns whether the target confirmed.
pub async fn close(shared: &Arc<Shared>, stream: &str, target: &str) -> Result<bool, ApiError> {
    let relay = shared
        .relays
        .lock()
        .out(stream, target)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no relay of {stream} to {target}"),
            )
        })?;
    match remove(shared, relay.session).await {
        Ok(()) => {}
        // Already gone from the data plane: forget it all the same.
        Err(e) if e.status() == StatusCode::NOT_FOUND => {}
        Err(e) => return Err(e),
    }
    shared.relays.lock().remove_out(stream, target);
    shared.relays.save();
    let path = format!("/v1/relays/ingress/{}", relay.remote_relay_id);
    let token = cluster_token(&shared.config);
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

// ---------------------------------------------------------------------------------------
// Target side.

/// Create (or reuse) the relay ingress for `req`. `Ok((answer, true))` when made now.
pub async fn ingress(
    shared: &Arc<Shared>,
    cluster: &Cluster,
    req: IngressRequest,
) -> Result<(IngressAnswer, bool), ApiError> {
    let me = shared.config.node.id.clone();
    crate::api::validate_stream(&req.stream)?;
    valid_node("sourceNode", &req.source_node)?;
    for h in &req.hops {
        valid_node("hops", h)?;
    }
    if req.hops.last() != Some(&req.source_node) {
        return Err(ApiError::bad_request("hops: must end with sourceNode"));
    }
    match check_hops(&me, &req.hops) {
        Ok(()) => {}
        Err(HopError::Loop) => {
            metrics().relay_failed("loop");
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("relay loop: {me} is already in the hop list {:?}", req.hops),
            ));
        }
        Err(e @ HopError::TooLong) => {
            metrics().relay_failed("loop");
            return Err(ApiError::bad_request(format!("hops: {e} ({MAX_HOPS})")));
        }
    }
    if req.ssrcs.len() > switchyard_shared::command::MAX_TRACKS {
        return Err(ApiError::bad_request(format!(
            "ssrcs: at most {} (one per track)",
            switchyard_shared::command::MAX_TRACKS
        )));
    }
    if let Some(n) = &req.publisher_media {
        if n.tracks.len() > 16 {
            return Err(ApiError::bad_request("publisherMedia: at most 16 tracks"));
        }
    }
    let key = format!("in\n{}", req.stream);
    loop {
        if let Some(a) = existing_ingress(shared, &req)? {
            return Ok((a, false));
        }
        let join = shared.relays.lock().join(&key);
        match join {
            Join::Follow(rx) => follow(rx).await?,
            Join::Lead => break,
        }
    }
    let made = lead(shared, &key, async {
        if let Some(a) = existing_ingress(shared, &req)? {
            return Ok((a, false));
        }
        Ok((open_ingress(shared, req).await?, true))
    })
    .await?;
    if made.1 {
        super::sync_streams(shared, cluster).await;
    }
    Ok(made)
}

/// The answer for the relay already feeding `req.stream` from the same source; a conflict
/// when another source feeds it or a local publisher publishes it.
fn existing_ingress(
    shared: &Shared,
    req: &IngressRequest,
) -> Result<Option<IngressAnswer>, ApiError> {
    let g = shared.lock();
    let relay = shared.relays.lock().incoming(&req.stream).cloned();
    let conflict = |m: String| {
        metrics().relay_failed("conflict");
        ApiError::new(StatusCode::CONFLICT, m)
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
        return Ok(answer_for(shared, &g.node, spec, &r.hops));
    }
    if g.node.sessions().any(|s| {
        s.stream == req.stream && matches!(s.role, Role::Publisher { .. } | Role::RelayIn { .. })
    }) {
        return Err(conflict(format!(
            "stream {} is already published on this node",
            req.stream
        )));
    }
    Ok(None)
}

fn answer_for(
    shared: &Shared,
    node: &crate::state::NodeState,
    spec: &SessionSpec,
    hops: &[String],
) -> Option<IngressAnswer> {
    let keys = spec.keying.keys()?;
    Some(IngressAnswer {
        relay_id: spec.id.0,
        node: shared.config.node.id.clone(),
        stream: spec.stream.clone(),
        address: shared.config.media.announce_ip(),
        port: crate::api::relay_base(shared, node).saturating_add(spec.worker),
        profile: keys.profile.name().to_owned(),
        key: b64(&keys.remote),
        key_back: b64(&keys.local),
        hops: hops.to_vec(),
    })
}

async fn open_ingress(
    shared: &Arc<Shared>,
    req: IngressRequest,
) -> Result<IngressAnswer, ApiError> {
    let mut forward = vec![0u8; PROFILE.master_len()];
    let mut back = vec![0u8; PROFILE.master_len()];
    random_bytes(&mut forward)?;
    random_bytes(&mut back)?;
    let (spec, ()) = provision(shared, None, |id, worker, _| {
        Ok((
            SessionSpec {
                id,
                worker,
                stream: req.stream.clone(),
                role: Role::RelayIn {
                    ssrcs: req.ssrcs.clone(),
                },
                remote: None,
                keying: Keying::Static(SrtpKeys {
                    profile: PROFILE,
                    remote: forward,
                    local: back,
                }),
                ice: None,
                twcc_ext: None,
                created_ms: crate::api::now_ms(),
                control: Default::default(),
            },
            (),
        ))
    })
    .await
    .inspect_err(|_| metrics().relay_failed("dataplane"))?;
    if let Some(n) = &req.publisher_media {
        shared
            .lock()
            .node
            .set_publisher_media(&req.stream, spec.id, Arc::new(n.clone()));
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
    shared.relays.lock().add_in(relay);
    shared.relays.save();
    tracing::info!(stream = %req.stream, source = %req.source_node, session = spec.id.0, worker = spec.worker, "relay ingress opened");
    let g = shared.lock();
    answer_for(shared, &g.node, &spec, &req.hops).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "relay session without keys",
        )
    })
}

/// End the ingress `id` (its `RelayIn` session) here.
pub async fn close_ingress(
    shared: &Arc<Shared>,
    cluster: &Cluster,
    id: SessionId,
) -> Result<(), ApiError> {
    let known = shared.relays.lock().ins().any(|r| r.session == id);
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such relay ingress",
        ));
    }
    match remove(shared, id).await {
        Ok(()) => {}
        Err(e) if e.status() == StatusCode::NOT_FOUND => {}
        Err(e) => return Err(e),
    }
    if let Some(r) = shared.relays.lock().remove_in_by_session(id) {
        tracing::info!(stream = %r.stream, source = %r.source_node, "relay ingress closed");
    }
    shared.relays.save();
    super::sync_streams(shared, cluster).await;
    Ok(())
}

/// End a relay that feeds this node (its grace period ran out): ask the source to close it
/// (which ends the ingress here too); when the source cannot be reached, end it here alone.
pub async fn end_incoming(shared: &Arc<Shared>, cluster: &Cluster, r: &InRelay) {
    let me = &shared.config.node.id;
    let url = cluster.store.list_nodes().await.ok().and_then(|nodes| {
        nodes
            .into_iter()
            .find(|n| n.node_id == r.source_node)
            .map(|n| n.url)
    });
    if let Some(url) = url {
        let path = format!("{}/{me}", super::http::stream_path(&r.stream));
        let token = cluster_token(&shared.config);
        match client::request(&url, "DELETE", &path, None, token.as_deref(), CALL_TIMEOUT).await {
            Ok(a) if a.status < 300 => {}
            other => {
                tracing::warn!(stream = %r.stream, source = %r.source_node, answer = ?other.map(|a| a.status), "the source did not close the relay; ending it here")
            }
        }
    }
    // The source's close has ended it here already when it answered; otherwise end it now.
    if shared.relays.lock().ins().any(|i| i.session == r.session) {
        if let Err(e) = close_ingress(shared, cluster, r.session).await {
            tracing::warn!(stream = %r.stream, error = %e.message(), "cannot end the relay ingress");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Cascade.

/// Why a cascade did not happen.
#[derive(Debug)]
pub enum PullError {
    /// No other healthy node publishes the stream (or cascading is off, or this node is not
    /// fit to serve): the caller falls back to the redirect.
    NoSource,
    /// Sources exist but none would relay.
    Failed(ApiError),
}

/// Make `stream` available here through a relay from a node that publishes it. Concurrent
/// pulls of one stream make one relay.
pub async fn pull(shared: &Arc<Shared>, cluster: &Cluster, stream: &str) -> Result<(), PullError> {
    let me = shared.config.node.id.clone();
    if !cluster.config.cascade || !fit(shared) {
        return Err(PullError::NoSource);
    }
    let have = |shared: &Shared| shared.lock().node.publisher_media(stream).is_some();
    if have(shared) {
        return Ok(());
    }
    let sources = cluster
        .store
        .stream_sources(stream)
        .await
        .map_err(|_| PullError::NoSource)?;
    let nodes = cluster
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
        if have(shared) {
            return Ok(());
        }
        let join = shared.relays.lock().join(&key);
        match join {
            Join::Follow(rx) => follow(rx).await.map_err(PullError::Failed)?,
            Join::Lead => break,
        }
    }
    lead(shared, &key, async {
        if have(shared) {
            return Ok(());
        }
        let token = cluster_token(&shared.config);
        let body = serde_json::json!({ "targetNode": me }).to_string();
        let mut last = ApiError::new(StatusCode::BAD_GATEWAY, "no source answered");
        for (_, node, url) in candidates.iter().take(2) {
            let path = super::http::stream_path(stream);
            match client::request(url, "POST", &path, Some(body.as_bytes()), token.as_deref(), PULL_TIMEOUT).await {
                Ok(a) if (200..300).contains(&a.status) => {
                    // Auto either way: unused, it ends after the grace period.
                    shared.relays.lock().set_auto(stream);
                    shared.relays.save();
                    if have(shared) {
                        tracing::info!(%stream, source = %node, "cascade: relayed from the publishing node");
                        return Ok(());
                    }
                    // A plain RTP publisher: relayed, but WHEP needs a WebRTC one.
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no WebRTC publisher on stream {stream}"),
                    ));
                }
                Ok(a) => {
                    metrics().relay_failed("cascade");
                    last = ApiError::new(StatusCode::BAD_GATEWAY, format!("{node} answered {}: {}", a.status, a.error_text()));
                }
                Err(e) => {
                    metrics().relay_failed("cascade");
                    last = ApiError::new(StatusCode::BAD_GATEWAY, format!("{node}: {e}"));
                }
            }
            tracing::warn!(%stream, source = %node, error = %last.message(), "cascade: relay set-up failed");
        }
        Err(last)
    })
    .await
    .map_err(PullError::Failed)
}

/// Whether this node may serve a cascaded subscriber: in sync with its data plane and not
/// overloaded.
fn fit(shared: &Shared) -> bool {
    let overloaded = shared
        .load
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|l| l.reason.is_some());
    !overloaded && shared.lock().node.ready().is_ok()
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
    fn bad_answers_are_refused() {
        let k = b64(&[1; 28]);
        let short = b64(&[1; 16]);
        for a in [
            answer(&k, &k, "AES_CM_128_HMAC_SHA1_80", 9443),
            answer(&k, &short, "AEAD_AES_128_GCM", 9443),
            answer("not base64!", &k, "AEAD_AES_128_GCM", 9443),
            answer(&k, &k, "AEAD_AES_128_GCM", 0),
            Answer {
                status: 201,
                body: b"{}".to_vec(),
            },
        ] {
            let e = parse_answer(&a).expect_err("refused");
            assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        }
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
