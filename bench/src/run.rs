//! One fan-out run: set up endpoints (node sessions or an in-process reflector), pace the
//! publishers from one sender thread, receive on `sockets` threads, then account.
//!
//! Timeline (CLOCK_MONOTONIC): `start` (setup + 100 ms) → warm-up → `warm` → measured
//! window → `end` → senders stop → drain → receivers stop. The measured window's publisher
//! sequences are computed up front from the pacing schedule (see [`crate::pacing`]).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::accounting::{Arrival, Jitter, SeqTracker};
use crate::api::{Node, SessionRequest};
use crate::cpu::CpuProbe;
use crate::crypto::{tag_len, Cipher, Profile};
use crate::pacing::{Pacer, Schedule};
use crate::packet::{self, Payload, PAYLOAD_HEADER, RTP_HEADER};
use crate::reflector::Reflector;
use crate::report::{Errors, GroupReport, JoinTimes, Latency, Report};
use crate::sys::{self, RecvBatch, MAX_BATCH};
use crate::webrtc::{self, sdp, Agent, Consent, LocalIce, WebrtcError};
use crate::Error;

/// Largest datagram the bench sends: a typical Ethernet MTU.
pub const MAX_SIZE: usize = 1500;
/// Socket buffer the bench asks for per socket; bursts of keyframes must fit.
const SOCKET_BUFFER: i32 = 1 << 20;
/// Time between setup and the first deadline, so all threads are running first.
const START_DELAY: Duration = Duration::from_millis(100);
/// Shortest sleep of the send thread. With many staggered publishers every packet would
/// otherwise get its own wake-up; sending what is due every 100 µs keeps the bench's CPU
/// modest. Latency is unaffected: the send time is stamped when the packet is built.
const MIN_SLEEP_NS: u64 = 100_000;
/// Upper bound of the latency histogram, µs; slower packets are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

/// The offered load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub publishers: usize,
    /// Subscribers per publisher.
    pub subscribers: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Packets per second per publisher.
    pub rate: u64,
    /// Datagram size, RTP header and SRTP tag included.
    pub size: usize,
    /// Keyframe burst interval (zero: no bursts).
    pub keyframe_every: Duration,
    /// Extra packets per keyframe burst.
    pub keyframe_packets: u64,
    /// Receive threads; subscriber sockets are spread over them round robin.
    pub sockets: usize,
    /// Cores the bench's own threads may run on (empty: unpinned).
    pub bench_cores: Vec<usize>,
    /// How long receivers keep listening after the senders stop.
    pub drain: Duration,
    /// Node target over `POST /v1/sessions`: each subscriber is a relay-out instead (the
    /// node sends the stream unchanged, under that link's key, from its relay socket), so
    /// the run measures relay egress against subscriber egress.
    pub relay_out: bool,
    /// How the node's API is spoken to: token, HTTPS verification.
    pub http: crate::http::HttpOptions,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            publishers: 1,
            subscribers: 10,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            rate: 1000,
            size: 1200,
            keyframe_every: Duration::ZERO,
            keyframe_packets: 0,
            sockets: 1,
            bench_cores: vec![0],
            drain: Duration::from_millis(500),
            relay_out: false,
            http: crate::http::HttpOptions::default(),
        }
    }
}

/// What the load is sent to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A Switchyard node's control API; SRTP with `profile`.
    Node {
        api: String,
        profile: Profile,
        /// Process whose CPU is measured (default: `dataplanePid` from /health).
        cpu_pid: Option<i32>,
        /// Pin sessions to this worker (default: the node places them).
        worker: Option<u32>,
        /// Join over WHIP/WHEP, ICE and DTLS instead of `POST /v1/sessions` with keys.
        webrtc: Option<WebrtcJoin>,
    },
    /// The in-process plain fan-out reference, its thread pinned to `core`.
    Reflector { core: Option<usize> },
    /// Relays between nodes: the publishers and `subscribers` on `api` (hop 0); each stream
    /// relayed to every node of `via` (from `api`, or with `chain` from the node before it,
    /// so node `i` is `i + 1` hops away) and `subscribers` more on each. The relays are
    /// built with `POST /v1/sessions` (`relay-in` on the target, then `relay-out` on the
    /// source with the mirrored link keys).
    Relay {
        api: String,
        via: Vec<String>,
        chain: bool,
        profile: Profile,
        /// Process whose CPU is measured (default: the source node's `dataplanePid`).
        cpu_pid: Option<i32>,
    },
}

/// How WebRTC subscribers join (`--webrtc`).
#[derive(Debug, Clone, Copy)]
pub struct WebrtcJoin {
    /// Subscribers joining at once (join threads). Publishers join one after another first.
    pub parallel: usize,
}

/// WHIP room of the bench's streams (`bench/s<P>`, as in the REST path).
const ROOM: &str = "bench";

struct PubEnd {
    sock: UdpSocket,
    dest: SocketAddr,
    ssrc: u32,
    cipher: Cipher,
}

struct SubEnd {
    sock: UdpSocket,
    publisher: usize,
    /// Index into `Setup::groups` (0 unless the run has several, as a relay run does).
    group: usize,
    ssrc: u32,
    cipher: Cipher,
    /// WebRTC: the first media packet, already decrypted while joining, and its receive
    /// time; accounted like any other when the receive loop starts.
    first: Option<(Vec<u8>, u64)>,
}

/// Keeps the system under test set up for the run; deletes sessions or stops the
/// reflector on drop.
enum Guard {
    // Held only for its Drop, which deletes the sessions.
    Node(#[allow(dead_code)] NodeGuard),
    // Held only for its Drop, which stops the reflector thread.
    Reflector(#[allow(dead_code)] Reflector),
    // Several nodes' sessions (a relay run), deleted in order: sources first, so no relay
    // sends into a removed relay-in.
    Nodes(#[allow(dead_code)] Vec<NodeGuard>),
}

/// A node's sessions: REST ids and WHIP/WHEP Locations, the consent thread and the WebRTC
/// runtime of their peers.
struct NodeGuard {
    node: Node,
    ids: Vec<u64>,
    locations: Arc<Mutex<Vec<String>>>,
    consent: Option<Arc<Consent>>,
    agent: Option<Arc<Agent>>,
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        // Checks stop first, so a session is never refreshed after its DELETE.
        drop(self.consent.take());
        for id in self.ids.drain(..) {
            if let Err(e) = self.node.delete_session(id) {
                eprintln!("warning: deleting session {id}: {e}");
            }
        }
        let locations =
            std::mem::take(&mut *self.locations.lock().unwrap_or_else(|e| e.into_inner()));
        for url in locations {
            if let Err(e) = self.node.delete_url(&url) {
                eprintln!("warning: deleting {url}: {e}");
            }
        }
        drop(self.agent.take());
    }
}

/// WebRTC subscribers join while the publishers already send: this runs after the send
/// thread has started and returns the subscribers with their join times (ns).
type Joiner = Box<dyn FnOnce() -> Result<(Vec<SubEnd>, Vec<u64>), Error>>;

struct Setup {
    pubs: Vec<PubEnd>,
    subs: Vec<SubEnd>,
    /// The subscriber groups a relay run reports apart (empty otherwise).
    groups: Vec<GroupInfo>,
    /// Nodes whose relay-out packets are the relay links' traffic.
    link_sources: Vec<Node>,
    joiner: Option<Joiner>,
    probe: Option<CpuProbe>,
    pid: Option<i32>,
    profile: String,
    _guard: Guard,
}

fn bind() -> Result<UdpSocket, Error> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| Error::io("binding a bench socket", e))?;
    sys::set_socket_buffers(&s, SOCKET_BUFFER);
    Ok(s)
}

fn local(s: &UdpSocket) -> Result<SocketAddr, Error> {
    s.local_addr().map_err(|e| Error::io("local address", e))
}

fn setup_node(
    spec: &LoadSpec,
    api: &str,
    profile: Profile,
    cpu_pid: Option<i32>,
    worker: Option<u32>,
) -> Result<Setup, Error> {
    let node = Node::new(api, &spec.http)?;
    let health = node.health()?;
    let pid = cpu_pid.or(health.dataplane_pid);
    let mut guard = NodeGuard {
        node: node.clone(),
        ids: Vec::new(),
        locations: Arc::default(),
        consent: None,
        agent: None,
    };
    let mut track = |id: u64| guard.ids.push(id);
    let mut pubs = Vec::new();
    let mut subs = Vec::new();
    for p in 0..spec.publishers {
        let stream = format!("bench/s{p}");
        let sock = bind()?;
        let s = node.create_session(&SessionRequest {
            role: "publisher",
            stream: stream.clone(),
            remote: Some(local(&sock)?),
            profile,
            worker,
            remote_key: None,
            local_key: None,
        })?;
        track(s.id);
        pubs.push(PubEnd {
            sock,
            dest: s.media_address,
            ssrc: s.ssrc(),
            cipher: Cipher::srtp(profile, &s.remote_key_bytes()?)?,
        });
        // A relay-out passes the publisher's SSRC through; a subscriber gets its own.
        let (role, pub_ssrc) = match spec.relay_out {
            true => ("relay-out", pubs.last().map(|e: &PubEnd| e.ssrc)),
            false => ("subscriber", None),
        };
        for _ in 0..spec.subscribers {
            let sock = bind()?;
            let s = node.create_session(&SessionRequest {
                role,
                stream: stream.clone(),
                remote: Some(local(&sock)?),
                profile,
                worker,
                remote_key: None,
                local_key: None,
            })?;
            track(s.id);
            subs.push(SubEnd {
                sock,
                publisher: p,
                group: 0,
                ssrc: pub_ssrc.unwrap_or(s.ssrc()),
                cipher: Cipher::srtp(profile, &s.local_key_bytes()?)?,
                first: None,
            });
        }
    }
    Ok(Setup {
        pubs,
        subs,
        groups: Vec::new(),
        link_sources: Vec::new(),
        joiner: None,
        probe: pid.map(CpuProbe::process),
        pid,
        profile: profile.name().to_owned(),
        _guard: Guard::Node(guard),
    })
}

/// One group of subscribers reported apart: those on one node, `hops` relays away from the
/// publishers.
#[derive(Debug, Clone)]
struct GroupInfo {
    api: String,
    hops: u32,
}

fn new_guard(node: &Node) -> NodeGuard {
    NodeGuard {
        node: node.clone(),
        ids: Vec::new(),
        locations: Arc::default(),
        consent: None,
        agent: None,
    }
}

/// `n` REST subscribers of publisher `p`'s `stream` on `node`, in `group`.
#[allow(clippy::too_many_arguments)]
fn rest_subscribers(
    node: &Node,
    guard: &mut NodeGuard,
    stream: &str,
    p: usize,
    group: usize,
    n: usize,
    profile: Profile,
    subs: &mut Vec<SubEnd>,
) -> Result<(), Error> {
    for _ in 0..n {
        let sock = bind()?;
        let s = node.create_session(&SessionRequest {
            role: "subscriber",
            stream: stream.to_owned(),
            remote: Some(local(&sock)?),
            profile,
            worker: None,
            remote_key: None,
            local_key: None,
        })?;
        guard.ids.push(s.id);
        subs.push(SubEnd {
            sock,
            publisher: p,
            group,
            ssrc: s.ssrc(),
            cipher: Cipher::srtp(profile, &s.local_key_bytes()?)?,
            first: None,
        });
    }
    Ok(())
}

fn setup_relay(
    spec: &LoadSpec,
    api: &str,
    via: &[String],
    chain: bool,
    profile: Profile,
    cpu_pid: Option<i32>,
) -> Result<Setup, Error> {
    if via.is_empty() {
        return Err(Error::Config("relay: --via needs at least one node".into()));
    }
    let b64 = |k: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(k)
    };
    let first = Node::new(api, &spec.http)?;
    let mut nodes: Vec<Node> = via.iter().map(|v| first.sibling(v)).collect();
    nodes.insert(0, first);
    let pid = cpu_pid.or(nodes[0].health()?.dataplane_pid);
    for n in &nodes[1..] {
        n.health()?;
    }
    let mut guards: Vec<NodeGuard> = nodes.iter().map(new_guard).collect();
    let groups: Vec<GroupInfo> = std::iter::once(GroupInfo {
        api: api.to_owned(),
        hops: 0,
    })
    .chain(via.iter().enumerate().map(|(i, v)| GroupInfo {
        api: v.clone(),
        hops: if chain { i as u32 + 1 } else { 1 },
    }))
    .collect();
    let mut pubs = Vec::new();
    let mut subs = Vec::new();
    for p in 0..spec.publishers {
        let stream = format!("bench/s{p}");
        let sock = bind()?;
        let s = nodes[0].create_session(&SessionRequest {
            role: "publisher",
            stream: stream.clone(),
            remote: Some(local(&sock)?),
            profile,
            worker: None,
            remote_key: None,
            local_key: None,
        })?;
        guards[0].ids.push(s.id);
        pubs.push(PubEnd {
            sock,
            dest: s.media_address,
            ssrc: s.ssrc(),
            cipher: Cipher::srtp(profile, &s.remote_key_bytes()?)?,
        });
        rest_subscribers(
            &nodes[0],
            &mut guards[0],
            &stream,
            p,
            0,
            spec.subscribers,
            profile,
            &mut subs,
        )?;
        for t in 1..nodes.len() {
            let src = if chain { t - 1 } else { 0 };
            // The target opens its end first: it latches the source's relay socket from
            // the first packet that authenticates, so it needs no address.
            let ingress = nodes[t].create_session(&SessionRequest {
                role: "relay-in",
                stream: stream.clone(),
                remote: None,
                profile,
                worker: None,
                remote_key: None,
                local_key: None,
            })?;
            guards[t].ids.push(ingress.id);
            let egress = nodes[src].create_session(&SessionRequest {
                role: "relay-out",
                stream: stream.clone(),
                remote: Some(ingress.media_address),
                profile,
                worker: None,
                // Mirrored: what the target protects with, the source unprotects with.
                remote_key: Some(b64(&ingress.local_key_bytes()?)),
                local_key: Some(b64(&ingress.remote_key_bytes()?)),
            })?;
            guards[src].ids.push(egress.id);
            rest_subscribers(
                &nodes[t],
                &mut guards[t],
                &stream,
                p,
                t,
                spec.subscribers,
                profile,
                &mut subs,
            )?;
        }
    }
    let mut link_sources = vec![nodes[0].clone()];
    if chain {
        link_sources.extend(nodes[1..nodes.len() - 1].iter().cloned());
    }
    Ok(Setup {
        pubs,
        subs,
        groups,
        link_sources,
        joiner: None,
        probe: pid.map(CpuProbe::process),
        pid,
        profile: profile.name().to_owned(),
        _guard: Guard::Nodes(guards),
    })
}

/// The shared state of a WebRTC setup, for the publishers and the join threads.
struct Rtc {
    node: Node,
    agent: Arc<Agent>,
    consent: Arc<Consent>,
    locations: Arc<Mutex<Vec<String>>>,
}

impl Rtc {
    /// Offer, POST, record the Location, parse the answer.
    fn signal(
        &self,
        kind: &'static str,
        p: usize,
        role: sdp::Role,
        local: &LocalIce,
    ) -> Result<sdp::Answer, Error> {
        let session_id = u64::from_be_bytes(webrtc::random()?) >> 1;
        let offer = sdp::offer(
            role,
            &sdp::Local {
                ufrag: &local.ufrag,
                pwd: &local.pwd,
                fingerprint: self.agent.fingerprint(),
            },
            session_id,
        );
        let s = self
            .node
            .webrtc_session(kind, ROOM, &format!("s{p}"), &offer)?;
        self.locations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s.location);
        Ok(sdp::parse_answer(&s.answer).map_err(WebrtcError::from)?)
    }

    fn publisher(&self, p: usize) -> Result<PubEnd, Error> {
        let sock = bind()?;
        // Nonzero and distinct per publisher; the node learns it from the offer.
        let ssrc = 0x5357_0000 + p as u32;
        let local = LocalIce::generate()?;
        let answer = self.signal("whip", p, sdp::Role::Publisher { ssrc }, &local)?;
        let c = self.agent.connect(&sock, &local, &answer)?;
        self.consent.add(&sock, &c)?;
        Ok(PubEnd {
            sock,
            dest: c.candidate,
            ssrc,
            cipher: Cipher::srtp(c.keys.profile, &c.keys.local)?,
        })
    }

    /// One WHEP subscriber of publisher `p`; its join time runs from just before the POST
    /// to its first decrypted media packet.
    fn subscriber(&self, p: usize) -> Result<(SubEnd, u64), Error> {
        let sock = bind()?;
        let local = LocalIce::generate()?;
        let t0 = sys::monotonic_ns();
        let answer = self.signal("whep", p, sdp::Role::Subscriber, &local)?;
        let ssrc = answer
            .ssrc
            .ok_or(WebrtcError::Sdp(sdp::SdpError::Missing("a=ssrc")))?;
        let c = self.agent.connect(&sock, &local, &answer)?;
        self.consent.add(&sock, &c)?;
        let mut cipher = Cipher::srtp(c.keys.profile, &c.keys.remote)?;
        let (rtp, recv_ns) = self
            .agent
            .first_rtp(&sock, c.candidate, &mut cipher, ssrc)?;
        Ok((
            SubEnd {
                sock,
                publisher: p,
                group: 0,
                ssrc,
                cipher,
                first: Some((rtp, recv_ns)),
            },
            recv_ns.saturating_sub(t0),
        ))
    }

    /// `subscribers` per publisher, `parallel` joining at once; stops at the first error.
    fn join_all(
        &self,
        publishers: usize,
        subscribers: usize,
        parallel: usize,
    ) -> Result<(Vec<SubEnd>, Vec<u64>), Error> {
        let total = publishers * subscribers;
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let slots: Vec<Mutex<Option<(SubEnd, u64)>>> =
            (0..total).map(|_| Mutex::new(None)).collect();
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|sc| {
            for _ in 0..parallel.clamp(1, total.max(1)) {
                sc.spawn(|| {
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        match self.subscriber(i / subscribers) {
                            Ok(v) => *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(v),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                first_error
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        let mut subs = Vec::with_capacity(total);
        let mut joins = Vec::with_capacity(total);
        for slot in slots {
            // Without an error every index was taken and filled.
            let Some((s, t)) = slot.into_inner().unwrap_or_else(|e| e.into_inner()) else {
                return Err(Error::Thread);
            };
            subs.push(s);
            joins.push(t);
        }
        Ok((subs, joins))
    }
}

/// WebRTC setup: publishers join (WHIP, ICE, DTLS) one after another; subscribers join
/// (WHEP …) from the returned [`Joiner`] once the publishers send.
fn setup_node_webrtc(
    spec: &LoadSpec,
    api: &str,
    profile: Profile,
    cpu_pid: Option<i32>,
    join: WebrtcJoin,
) -> Result<Setup, Error> {
    let node = Node::new(api, &spec.http)?;
    let health = node.health()?;
    let pid = cpu_pid.or(health.dataplane_pid);
    let rtc = Rtc {
        node: node.clone(),
        agent: Arc::new(Agent::new(profile)?),
        consent: Arc::new(Consent::start()?),
        locations: Arc::default(),
    };
    let guard = NodeGuard {
        node,
        ids: Vec::new(),
        locations: rtc.locations.clone(),
        consent: Some(rtc.consent.clone()),
        agent: Some(rtc.agent.clone()),
    };
    let pubs = (0..spec.publishers)
        .map(|p| rtc.publisher(p))
        .collect::<Result<Vec<_>, _>>()?;
    let profile_name = match pubs.first().map(|p| &p.cipher) {
        Some(Cipher::Srtp { profile, .. }) => profile.name(),
        _ => profile.name(),
    };
    let (np, ns) = (spec.publishers, spec.subscribers);
    Ok(Setup {
        pubs,
        subs: Vec::new(),
        groups: Vec::new(),
        link_sources: Vec::new(),
        joiner: Some(Box::new(move || rtc.join_all(np, ns, join.parallel))),
        probe: pid.map(CpuProbe::process),
        pid,
        profile: profile_name.to_owned(),
        _guard: Guard::Node(guard),
    })
}

fn setup_reflector(spec: &LoadSpec, core: Option<usize>) -> Result<Setup, Error> {
    let mut pubs = Vec::new();
    let mut subs = Vec::new();
    let mut routes = HashMap::new();
    for p in 0..spec.publishers {
        // Any fixed value works: the reflector does not rewrite SSRCs.
        let ssrc = 0x5357_0000 + p as u32;
        let sock = bind()?;
        let mut dests = Vec::new();
        for _ in 0..spec.subscribers {
            let s = bind()?;
            dests.push(local(&s)?);
            subs.push(SubEnd {
                sock: s,
                publisher: p,
                group: 0,
                ssrc,
                cipher: Cipher::Plain,
                first: None,
            });
        }
        routes.insert(local(&sock)?, dests);
        pubs.push(PubEnd {
            sock,
            dest: SocketAddr::from(([127, 0, 0, 1], 0)), // set below
            ssrc,
            cipher: Cipher::Plain,
        });
    }
    let reflector =
        Reflector::start(routes, core).map_err(|e| Error::io("starting the reflector", e))?;
    for p in &mut pubs {
        p.dest = reflector.addr();
    }
    Ok(Setup {
        pubs,
        subs,
        groups: Vec::new(),
        link_sources: Vec::new(),
        joiner: None,
        probe: Some(CpuProbe::own_thread(reflector.tid())),
        pid: Some(std::process::id() as i32),
        profile: "plain".into(),
        _guard: Guard::Reflector(reflector),
    })
}

fn validate(spec: &LoadSpec, overhead: usize) -> Result<(), Error> {
    let min = RTP_HEADER + PAYLOAD_HEADER + overhead;
    if spec.size < min || spec.size > MAX_SIZE {
        return Err(Error::Config(format!(
            "--size must be in {min}..={MAX_SIZE} for this profile"
        )));
    }
    if spec.publishers == 0 || spec.subscribers == 0 || spec.rate == 0 {
        return Err(Error::Config(
            "publishers, subscribers and rate must be > 0".into(),
        ));
    }
    if spec.duration.is_zero() {
        return Err(Error::Config("duration must be > 0".into()));
    }
    Ok(())
}

/// Runs one fan-out measurement against `target`.
pub fn run(spec: &LoadSpec, target: &Target) -> Result<Report, Error> {
    sys::raise_nofile_limit();
    let (scenario, overhead) = match target {
        Target::Node { profile, .. } => ("fanout", tag_len(*profile)),
        Target::Relay { profile, .. } => ("relay", tag_len(*profile)),
        Target::Reflector { .. } => ("reflector", 0),
    };
    validate(spec, overhead)?;
    if spec.relay_out && !matches!(target, Target::Node { webrtc: None, .. }) {
        return Err(Error::Config(
            "--relay-out needs a node over /v1/sessions (not --webrtc, not the reflector)".into(),
        ));
    }
    let setup = match target {
        Target::Node {
            api,
            profile,
            cpu_pid,
            worker,
            webrtc,
        } => match webrtc {
            // The node places WebRTC sessions itself (least-loaded worker).
            Some(join) if worker.is_none() => {
                setup_node_webrtc(spec, api, *profile, *cpu_pid, *join)?
            }
            Some(_) => {
                return Err(Error::Config(
                    "--worker cannot be combined with --webrtc (WHIP/WHEP place sessions)".into(),
                ))
            }
            None => setup_node(spec, api, *profile, *cpu_pid, *worker)?,
        },
        Target::Reflector { core } => setup_reflector(spec, *core)?,
        Target::Relay {
            api,
            via,
            chain,
            profile,
            cpu_pid,
        } => setup_relay(spec, api, via, *chain, *profile, *cpu_pid)?,
    };
    drive(spec, setup, scenario)
}

/// Per-subscriber receive state.
struct SubState {
    end: SubEnd,
    tracker: SeqTracker,
    jitter: Jitter,
    /// RTP sequence minus the publisher's, fixed by the first packet: a subscriber's
    /// numbering must follow the publisher's exactly, whatever its starting point.
    seq_offset: Option<u16>,
}

struct RecvOut {
    /// Per subscriber: its group, sequence tracker and jitter.
    subs: Vec<(usize, SeqTracker, Jitter)>,
    /// Latency per group.
    hists: Vec<Histogram<u64>>,
    errors: Errors,
}

struct SendOut {
    /// Measured-window packets sent, per publisher.
    sent_in_window: Vec<u64>,
    late_max_ns: u64,
    errors: Errors,
}

fn pin(cores: &[usize], who: &str) {
    if let Err(e) = sys::pin_current_thread(cores) {
        eprintln!("warning: cannot pin {who} to cores {cores:?}: {e}");
    }
}

fn sleep_until(t: u64) {
    let now = sys::monotonic_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

fn drive(spec: &LoadSpec, setup: Setup, scenario: &str) -> Result<Report, Error> {
    let Setup {
        pubs,
        subs,
        groups,
        link_sources,
        joiner,
        probe,
        pid,
        profile,
        _guard,
    } = setup;
    pin(&spec.bench_cores, "the bench");
    let np = pubs.len() as u64;
    let start = sys::monotonic_ns() + START_DELAY.as_nanos() as u64;
    let warm = start + spec.warmup.as_nanos() as u64;
    let end = warm + spec.duration.as_nanos() as u64;
    let interval = 1_000_000_000 / spec.rate.max(1);
    let kf = spec.keyframe_every.as_nanos() as u64;
    let pacers: Vec<Pacer> = (0..np)
        .map(|p| Pacer {
            // Stagger publishers so their packets interleave instead of colliding.
            start_ns: start + interval * p / np,
            rate: spec.rate,
            burst_interval_ns: kf,
            burst_offset_ns: kf * p / np,
            burst_packets: spec.keyframe_packets,
        })
        .collect();
    let ranges: Vec<_> = pacers
        .iter()
        .map(|p| p.count_before(warm)..p.count_before(end))
        .collect();

    // Sender. It starts before the receivers so WebRTC subscribers can join while it sends
    // (the first packet is due at `start`, after the receivers of a REST run are running).
    let cores = spec.bench_cores.clone();
    let size = spec.size;
    let ranges2 = ranges.clone();
    let abort = Arc::new(AtomicBool::new(false));
    let abort2 = abort.clone();
    let sender = std::thread::Builder::new()
        .name("bench-send".into())
        .spawn(move || {
            pin(&cores, "the send thread");
            send(pubs, &pacers, &ranges2, end, size, &abort2)
        })
        .map_err(|e| Error::io("spawning the send thread", e))?;

    let (subs, join_ns) = match joiner {
        None => (subs, Vec::new()),
        Some(join) => match join() {
            Ok(v) => v,
            Err(e) => {
                abort.store(true, Ordering::Relaxed);
                let _ = sender.join();
                return Err(e);
            }
        },
    };
    let joined = sys::monotonic_ns();
    if !join_ns.is_empty() && joined > warm {
        eprintln!(
            "warning: subscribers finished joining {} ms after the warm-up ended; \
             the measured window's first packets waited in socket buffers (raise --warmup)",
            (joined - warm) / 1_000_000
        );
    }

    // Receivers.
    let stop = Arc::new(AtomicBool::new(false));
    let threads = spec.sockets.clamp(1, subs.len().max(1));
    let mut threads_subs: Vec<Vec<SubState>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, end_) in subs.into_iter().enumerate() {
        let range = ranges.get(end_.publisher).cloned().unwrap_or(0..0);
        threads_subs[i % threads].push(SubState {
            end: end_,
            tracker: SeqTracker::new(range),
            jitter: Jitter::default(),
            seq_offset: None,
        });
    }
    let ngroups = groups.len().max(1);
    let mut receivers = Vec::new();
    for (t, group) in threads_subs.into_iter().enumerate() {
        let stop = stop.clone();
        let cores = spec.bench_cores.clone();
        let h = std::thread::Builder::new()
            .name(format!("bench-recv{t}"))
            .spawn(move || {
                pin(&cores, "a receive thread");
                receive(group, ngroups, &stop)
            })
            .map_err(|e| Error::io("spawning a receive thread", e))?;
        receivers.push(h);
    }

    sleep_until(warm);
    let cpu0 = probe.as_ref().and_then(CpuProbe::cpu_ns);
    let wall0 = sys::monotonic_ns();
    let link0 = relay_tx(&link_sources);
    sleep_until(end);
    let cpu1 = probe.as_ref().and_then(CpuProbe::cpu_ns);
    let wall1 = sys::monotonic_ns();
    let link1 = relay_tx(&link_sources);

    let sent = sender.join().map_err(|_| Error::Thread)?;
    std::thread::sleep(spec.drain);
    stop.store(true, Ordering::Relaxed);
    let mut outs = Vec::new();
    for h in receivers {
        outs.push(h.join().map_err(|_| Error::Thread)??);
    }

    let duration_s = spec.duration.as_secs_f64();
    let mut hist = new_hist();
    let mut group_hists: Vec<Histogram<u64>> = (0..ngroups).map(|_| new_hist()).collect();
    // Per group: expected, received.
    let mut group_counts = vec![(0u64, 0u64, 0usize); ngroups];
    let mut errors = sent.errors.clone();
    let (mut expected, mut received, mut reorder, mut dups) = (0u64, 0u64, 0u64, 0u64);
    let mut jitter_sum = 0.0;
    let mut nsubs = 0usize;
    for o in &outs {
        for (g, h) in o.hists.iter().enumerate() {
            let _ = hist.add(h);
            if let Some(gh) = group_hists.get_mut(g) {
                let _ = gh.add(h);
            }
        }
        errors.decrypt += o.errors.decrypt;
        errors.ssrc_mismatch += o.errors.ssrc_mismatch;
        errors.bad_payload += o.errors.bad_payload;
        errors.misrouted += o.errors.misrouted;
        errors.sequence_breaks += o.errors.sequence_breaks;
        errors.ignored += o.errors.ignored;
        for (g, t, j) in &o.subs {
            if let Some(c) = group_counts.get_mut(*g) {
                c.0 += t.expected();
                c.1 += t.received;
                c.2 += 1;
            }
            expected += t.expected();
            received += t.received;
            reorder += t.reordered;
            dups += t.duplicates;
            jitter_sum += j.ns();
            nsubs += 1;
        }
    }
    let sent_packets: u64 = sent.sent_in_window.iter().sum();
    let lost = expected.saturating_sub(received);
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) if wall1 > wall0 => Some(b.saturating_sub(a)),
        _ => None,
    };
    let dataplane_cpu = cpu.map(|c| c as f64 / (wall1 - wall0) as f64);
    let cpu_ns_per_packet = cpu
        .filter(|_| received > 0)
        .map(|c| c as f64 / received as f64);
    let latency_us = latency(&hist);
    let base = latency(&group_hists[0]);
    let group_reports: Vec<GroupReport> = groups
        .iter()
        .enumerate()
        .map(|(g, info)| {
            let (exp, rec, n) = group_counts[g];
            let lat = latency(&group_hists[g]);
            // Added by the relays: this group's percentile minus hop 0's, per hop.
            let per_hop = |v: u64, b: u64| (v as f64 - b as f64) / f64::from(info.hops);
            GroupReport {
                node: info.api.clone(),
                hops: info.hops,
                subscribers: n,
                expected_packets: exp,
                received_packets: rec,
                loss_ratio: if exp > 0 {
                    exp.saturating_sub(rec) as f64 / exp as f64
                } else {
                    0.0
                },
                added_p50_us_per_hop: (info.hops > 0 && lat.count > 0)
                    .then(|| per_hop(lat.p50, base.p50)),
                added_p99_us_per_hop: (info.hops > 0 && lat.count > 0)
                    .then(|| per_hop(lat.p99, base.p99)),
                latency_us: lat,
            }
        })
        .collect();
    let relay_link_pps = match (link0, link1) {
        (Some(a), Some(b)) if wall1 > wall0 && !link_sources.is_empty() => {
            Some((b - a) / ((wall1 - wall0) as f64 / 1e9))
        }
        _ => None,
    };
    Ok(Report {
        scenario: scenario.into(),
        profile,
        publishers: spec.publishers,
        subscribers: spec.subscribers,
        subscribers_total: nsubs,
        rate_pps: spec.rate,
        size: spec.size,
        warmup_s: spec.warmup.as_secs_f64(),
        duration_s,
        sent_packets,
        received_packets: received,
        expected_packets: expected,
        lost_packets: lost,
        loss_ratio: if expected > 0 {
            lost as f64 / expected as f64
        } else {
            0.0
        },
        reorder,
        duplicates: dups,
        out_pps: received as f64 / duration_s,
        in_pps: sent_packets as f64 / duration_s,
        latency_us,
        jitter_us: if nsubs > 0 {
            jitter_sum / nsubs as f64 / 1000.0
        } else {
            0.0
        },
        pacing_late_max_us: sent.late_max_ns / 1000,
        join_ms: JoinTimes::from_ns(join_ns),
        dataplane_pid: pid,
        dataplane_cpu,
        cpu_ns_per_packet,
        groups: group_reports,
        relay_link_pps,
        errors,
    })
}

fn latency(hist: &Histogram<u64>) -> Latency {
    if hist.is_empty() {
        return Latency::default();
    }
    Latency {
        count: hist.len(),
        mean: hist.mean(),
        p50: hist.value_at_quantile(0.5),
        p90: hist.value_at_quantile(0.9),
        p99: hist.value_at_quantile(0.99),
        p999: hist.value_at_quantile(0.999),
        max: hist.max(),
    }
}

/// Media packets the nodes sent over relay links so far (`None`: a node did not answer or
/// does not count them). Sampled at the window's edges; the HTTP round trip is noise
/// against a window of seconds.
fn relay_tx(nodes: &[Node]) -> Option<f64> {
    if nodes.is_empty() {
        return None;
    }
    let mut sum = 0.0;
    for n in nodes {
        sum += n.metric("relay_tx_packets_total").ok().flatten()?;
    }
    Some(sum)
}

fn new_hist() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits; this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!())
}

/// The send thread: one pass over all publishers per wake-up, each sending the packets
/// now due (up to a batch) with one sendmmsg, then sleep to the earliest next deadline.
fn send(
    mut pubs: Vec<PubEnd>,
    pacers: &[Pacer],
    ranges: &[std::ops::Range<u64>],
    end: u64,
    size: usize,
    abort: &AtomicBool,
) -> SendOut {
    let mut scheds: Vec<Schedule> = pacers.iter().map(|p| Schedule::new(*p)).collect();
    let stop_at: Vec<u64> = pacers.iter().map(|p| p.count_before(end)).collect();
    let mut out = SendOut {
        sent_in_window: vec![0; pubs.len()],
        late_max_ns: 0,
        errors: Errors::default(),
    };
    let mut bufs = vec![[0u8; MAX_SIZE + 64]; MAX_BATCH];
    let mut lens = [0usize; MAX_BATCH];
    let mut seqs = [0u64; MAX_BATCH];
    // Random-looking fixed starts, as a real sender's would be; the node must cope.
    let seq_base: u16 = 0x1234;
    let ts_base: u32 = 0x0abc_def0;
    while !abort.load(Ordering::Relaxed) {
        let mut next_wake = u64::MAX;
        for (p, pe) in pubs.iter_mut().enumerate() {
            let sched = &mut scheds[p];
            let rtp_len = size - pe.cipher.overhead();
            let now = sys::monotonic_ns();
            let mut n = 0;
            while n < MAX_BATCH && sched.sent() < stop_at[p] {
                let seq = sched.sent();
                let Some(due) = sched.next_due(now) else {
                    break;
                };
                out.late_max_ns = out.late_max_ns.max(now.saturating_sub(due.deadline_ns));
                let buf = &mut bufs[n];
                let send_ns = sys::monotonic_ns();
                let ts = ts_base.wrapping_add((u128::from(send_ns) * 90 / 1_000_000) as u32);
                packet::write_rtp_header(
                    buf,
                    seq_base.wrapping_add(seq as u16),
                    ts,
                    pe.ssrc,
                    due.marker,
                );
                Payload {
                    publisher: p as u32,
                    sequence: seq,
                    send_ns,
                }
                .encode(&mut buf[RTP_HEADER..rtp_len]);
                match pe.cipher.protect(buf, rtp_len) {
                    Ok(len) => {
                        lens[n] = len;
                        seqs[n] = seq;
                        n += 1;
                    }
                    Err(_) => out.errors.protect += 1,
                }
            }
            if n > 0 {
                let msgs: Vec<(&[u8], SocketAddr)> =
                    (0..n).map(|i| (&bufs[i][..lens[i]], pe.dest)).collect();
                let ok = sys::send_batch(&pe.sock, &msgs).unwrap_or(0);
                out.errors.send += (n - ok) as u64;
                out.sent_in_window[p] +=
                    seqs[..ok].iter().filter(|s| ranges[p].contains(s)).count() as u64;
            }
            if sched.sent() < stop_at[p] {
                next_wake = next_wake.min(sched.next_deadline());
            }
        }
        if next_wake == u64::MAX {
            return out;
        }
        let now = sys::monotonic_ns();
        if next_wake > now {
            sleep_until(next_wake.max(now + MIN_SLEEP_NS));
        }
    }
    out
}

/// A receive thread: epoll over its subscribers' sockets, drain each ready socket with
/// recvmmsg, stamp the batch at return and account every datagram.
fn receive(mut subs: Vec<SubState>, ngroups: usize, stop: &AtomicBool) -> Result<RecvOut, Error> {
    let ep = sys::Epoll::new().map_err(|e| Error::io("epoll_create", e))?;
    for (i, s) in subs.iter().enumerate() {
        s.end
            .sock
            .set_nonblocking(true)
            .map_err(|e| Error::io("set_nonblocking", e))?;
        ep.add(s.end.sock.as_raw_fd(), i as u64)
            .map_err(|e| Error::io("epoll_ctl", e))?;
    }
    let mut hists: Vec<Histogram<u64>> = (0..ngroups).map(|_| new_hist()).collect();
    let mut errors = Errors::default();
    for s in &mut subs {
        if let Some((rtp, recv_ns)) = s.end.first.take() {
            let g = s.end.group.min(ngroups - 1);
            account_rtp(s, &rtp, recv_ns, &mut hists[g], &mut errors);
        }
    }
    let mut batch = RecvBatch::default();
    let mut ready = Vec::with_capacity(64);
    while !stop.load(Ordering::Relaxed) {
        ep.wait(&mut ready, 20)
            .map_err(|e| Error::io("epoll_wait", e))?;
        for &tok in &ready {
            let Some(s) = subs.get_mut(tok as usize) else {
                continue;
            };
            loop {
                let n = batch
                    .recv(&s.end.sock, false)
                    .map_err(|e| Error::io("recvmmsg", e))?;
                let recv_ns = sys::monotonic_ns();
                let g = s.end.group.min(ngroups - 1);
                for i in 0..n {
                    account(
                        s,
                        batch.datagram_mut(i),
                        recv_ns,
                        &mut hists[g],
                        &mut errors,
                    );
                }
                if n < MAX_BATCH {
                    break;
                }
            }
        }
    }
    Ok(RecvOut {
        subs: subs
            .into_iter()
            .map(|s| (s.end.group, s.tracker, s.jitter))
            .collect(),
        hists,
        errors,
    })
}

fn account(
    s: &mut SubState,
    pkt: &mut [u8],
    recv_ns: u64,
    hist: &mut Histogram<u64>,
    errors: &mut Errors,
) {
    // RFC 7983/5761 demultiplexing: only RTP counts. STUN, DTLS and RTCP (sender reports
    // the node may send) are skipped before they could be mistaken for decrypt failures.
    if !packet::is_rtp(pkt) {
        errors.ignored += 1;
        return;
    }
    let Ok(len) = s.end.cipher.unprotect(pkt) else {
        errors.decrypt += 1;
        return;
    };
    account_rtp(s, &pkt[..len.min(pkt.len())], recv_ns, hist, errors);
}

/// Accounts one decrypted RTP packet of subscriber `s`.
fn account_rtp(
    s: &mut SubState,
    rtp: &[u8],
    recv_ns: u64,
    hist: &mut Histogram<u64>,
    errors: &mut Errors,
) {
    let Ok(info) = packet::parse_rtp(rtp) else {
        errors.bad_payload += 1;
        return;
    };
    if info.ssrc != s.end.ssrc {
        errors.ssrc_mismatch += 1;
        return;
    }
    let Ok(payload) = Payload::decode(&rtp[info.payload_offset..]) else {
        errors.bad_payload += 1;
        return;
    };
    if payload.publisher as usize != s.end.publisher {
        errors.misrouted += 1;
        return;
    }
    let offset = info.sequence.wrapping_sub(payload.sequence as u16);
    match s.seq_offset {
        None => s.seq_offset = Some(offset),
        Some(o) if o != offset => errors.sequence_breaks += 1,
        Some(_) => {}
    }
    match s.tracker.record(payload.sequence) {
        Arrival::InOrder | Arrival::Reordered => {
            let lat_ns = recv_ns.saturating_sub(payload.send_ns);
            hist.saturating_record(lat_ns / 1000);
            s.jitter.record(payload.send_ns, recv_ns);
        }
        Arrival::Duplicate | Arrival::OutOfRange => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limits() {
        let spec = LoadSpec {
            size: 40,
            ..LoadSpec::default()
        };
        assert!(validate(&spec, 0).is_ok());
        assert!(validate(&spec, 16).is_err());
        let spec = LoadSpec {
            size: 1501,
            ..LoadSpec::default()
        };
        assert!(validate(&spec, 0).is_err());
    }
}
