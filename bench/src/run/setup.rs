//! Setting a run up: sessions on a node (REST or WebRTC), relay links between nodes, or the
//! in-process reflector; and the guard that deletes what was created.

use super::*;

pub(super) struct PubEnd {
    pub(super) sock: UdpSocket,
    pub(super) dest: SocketAddr,
    pub(super) ssrc: u32,
    pub(super) cipher: Cipher,
    /// `--simulcast`: this sender is one layer of a publisher (each layer is paced as its
    /// own frame-shaped source, on the publisher's socket and keys).
    pub(super) layer: Option<LayerOut>,
}

/// One simulcast layer of publisher `publisher` (the stream's index, not the sender's).
#[derive(Clone, Copy, Debug)]
pub(super) struct LayerOut {
    pub(super) layer: crate::simulcast::Layer,
    pub(super) publisher: usize,
    /// Subscribers expecting this layer: the copies of each of its packets the timeline
    /// expects.
    pub(super) copies: u64,
}

pub(super) struct SubEnd {
    pub(super) sock: UdpSocket,
    pub(super) publisher: usize,
    /// Index into `Setup::groups` (0 unless the run has several, as a relay run does).
    pub(super) group: usize,
    pub(super) ssrc: u32,
    /// The SSRC it receives the audio track on (`--audio`; 0 without).
    pub(super) audio_ssrc: u32,
    pub(super) cipher: Cipher,
    /// WebRTC: the first media packet, already decrypted while joining, and its receive
    /// time; accounted like any other when the receive loop starts.
    pub(super) first: Option<(Vec<u8>, u64)>,
    /// Bytes between the RTP header and the bench payload (the VP8 prefix of a simulcast
    /// layer, `crate::simulcast::VP8_PREFIX`; 0 otherwise).
    pub(super) media_offset: usize,
    /// `--simulcast`: the senders (`publisher` is one of them) carrying the other layers of
    /// the same publisher; their packets count as `other_layer`, not as misrouted.
    pub(super) siblings: std::ops::Range<usize>,
}

/// Keeps the system under test set up for the run; deletes sessions or stops the
/// reflector on drop.
pub(super) enum Guard {
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
pub(super) struct NodeGuard {
    pub(super) node: Node,
    pub(super) ids: Vec<u64>,
    pub(super) locations: Arc<Mutex<Vec<String>>>,
    pub(super) consent: Option<Arc<Consent>>,
    pub(super) agent: Option<Arc<Agent>>,
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

pub(super) struct Setup {
    pub(super) pubs: Vec<PubEnd>,
    pub(super) subs: Vec<SubEnd>,
    /// The subscriber groups a relay run reports apart (empty otherwise).
    pub(super) groups: Vec<GroupInfo>,
    /// Nodes whose relay-out packets are the relay links' traffic.
    pub(super) link_sources: Vec<Node>,
    pub(super) joiner: Option<Joiner>,
    pub(super) probe: Option<CpuProbe>,
    pub(super) pid: Option<i32>,
    pub(super) profile: String,
    pub(super) _guard: Guard,
}

pub(super) fn bind() -> Result<UdpSocket, Error> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| Error::io("binding a bench socket", e))?;
    sys::set_socket_buffers(&s, SOCKET_BUFFER);
    Ok(s)
}

pub(super) fn local(s: &UdpSocket) -> Result<SocketAddr, Error> {
    s.local_addr().map_err(|e| Error::io("local address", e))
}

pub(super) fn setup_node(
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
        // Frame-shaped media declares its tracks (video, audio) and their clock rates: with
        // audio their order must be known, and the node pads only what it knows is video.
        let framed = spec.video.is_some() || spec.audio;
        let video_ssrc = 0x5357_0000 + p as u32;
        let s = node.create_session(&SessionRequest {
            role: "publisher",
            stream: stream.clone(),
            remote: Some(local(&sock)?),
            profile,
            worker,
            remote_key: None,
            local_key: None,
            ssrcs: framed.then(|| vec![video_ssrc, crate::shape::audio_ssrc(video_ssrc)]),
            clock_rates: framed.then(|| vec![90_000, 48_000]),
        })?;
        track(s.id);
        pubs.push(PubEnd {
            sock,
            dest: s.media_address,
            ssrc: if framed { video_ssrc } else { s.ssrc() },
            cipher: Cipher::srtp(profile, &s.remote_key_bytes()?)?,
            layer: None,
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
                ssrcs: None,
                clock_rates: None,
            })?;
            track(s.id);
            subs.push(SubEnd {
                sock,
                publisher: p,
                group: 0,
                ssrc: pub_ssrc.unwrap_or(s.ssrc()),
                audio_ssrc: match pub_ssrc {
                    Some(v) => crate::shape::audio_ssrc(v),
                    None => s.ssrcs.get(1).copied().unwrap_or(0),
                },
                cipher: Cipher::srtp(profile, &s.local_key_bytes()?)?,
                first: None,
                media_offset: 0,
                siblings: 0..0,
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
pub(super) struct GroupInfo {
    pub(super) api: String,
    pub(super) hops: u32,
}

pub(super) fn new_guard(node: &Node) -> NodeGuard {
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
pub(super) fn rest_subscribers(
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
        let (sub, _) = rest_subscriber(node, guard, stream, profile)?;
        subs.push(SubEnd {
            publisher: p,
            group,
            ..sub
        });
    }
    Ok(())
}

/// One REST subscriber of `stream` on `node` (its session id too), as the receiving end of
/// publisher 0 in group 0: the caller says whose packets it expects.
pub(super) fn rest_subscriber(
    node: &Node,
    guard: &mut NodeGuard,
    stream: &str,
    profile: Profile,
) -> Result<(SubEnd, u64), Error> {
    let sock = bind()?;
    let s = node.create_session(&SessionRequest {
        role: "subscriber",
        stream: stream.to_owned(),
        remote: Some(local(&sock)?),
        profile,
        worker: None,
        remote_key: None,
        local_key: None,
        ssrcs: None,
        clock_rates: None,
    })?;
    guard.ids.push(s.id);
    let sub = SubEnd {
        sock,
        publisher: 0,
        group: 0,
        ssrc: s.ssrc(),
        audio_ssrc: 0,
        cipher: Cipher::srtp(profile, &s.local_key_bytes()?)?,
        first: None,
        media_offset: 0,
        siblings: 0..0,
    };
    Ok((sub, s.id))
}

pub(super) fn setup_relay(
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
            ssrcs: None,
            clock_rates: None,
        })?;
        guards[0].ids.push(s.id);
        pubs.push(PubEnd {
            sock,
            dest: s.media_address,
            ssrc: s.ssrc(),
            cipher: Cipher::srtp(profile, &s.remote_key_bytes()?)?,
            layer: None,
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
                ssrcs: None,
                clock_rates: None,
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
                ssrcs: None,
                clock_rates: None,
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
pub(super) struct Rtc {
    pub(super) node: Node,
    pub(super) agent: Arc<Agent>,
    pub(super) consent: Arc<Consent>,
    pub(super) locations: Arc<Mutex<Vec<String>>>,
}

impl Rtc {
    /// Offer, POST, record the Location, parse the answer.
    pub(super) fn signal(
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
            layer: None,
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
                audio_ssrc: 0,
                cipher,
                first: Some((rtp, recv_ns)),
                media_offset: 0,
                siblings: 0..0,
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
pub(super) fn setup_node_webrtc(
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

pub(super) fn setup_reflector(
    spec: &LoadSpec,
    core: Option<usize>,
    gso: bool,
) -> Result<Setup, Error> {
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
                audio_ssrc: crate::shape::audio_ssrc(ssrc),
                cipher: Cipher::Plain,
                first: None,
                media_offset: 0,
                siblings: 0..0,
            });
        }
        routes.insert(local(&sock)?, dests);
        pubs.push(PubEnd {
            sock,
            dest: SocketAddr::from(([127, 0, 0, 1], 0)), // set below
            ssrc,
            cipher: Cipher::Plain,
            layer: None,
        });
    }
    let reflector = Reflector::start_with(routes, core, gso)
        .map_err(|e| Error::io("starting the reflector", e))?;
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
