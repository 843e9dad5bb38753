//! Node configuration: embedded defaults, overridden by a TOML file, then by environment
//! variables (`SWITCHYARD_*`), then by command-line flags (the binary applies the last two).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::names;

mod region;
pub use region::{region_of, Cidr, RegionRule};

/// Which receive/send engine the workers run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// io_uring if the kernel allows it, else mmsg; the choice is logged.
    #[default]
    Auto,
    /// io_uring only; refuse to start without it.
    Uring,
    /// recvmmsg/sendmmsg with epoll.
    Mmsg,
}

impl EngineKind {
    /// The name the config and `--engine` use (and logs and `/health` print).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Mmsg => "mmsg",
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" => Ok(Self::Uring),
            "mmsg" => Ok(Self::Mmsg),
            other => Err(format!("unknown engine {other:?} (auto, uring or mmsg)")),
        }
    }
}

/// Whether a kernel offload is used where the kernel has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Offload {
    /// Probed per socket at start; used where the kernel accepts it.
    #[default]
    Auto,
    /// Never used (to measure without it, or to rule it out).
    Off,
}

impl Offload {
    pub const fn on(self) -> bool {
        matches!(self, Self::Auto)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Node id, unique in a cluster. Also names the shared-memory files.
    pub id: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            id: "node-1".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSection {
    /// Address the worker sockets bind to.
    pub bind: IpAddr,
    /// Addresses advertised to peers (session answers, ICE candidates), one address or a
    /// list (`announce = "203.0.113.7"` or `announce = ["203.0.113.7", "10.0.0.5"]`; behind a
    /// 1:1 NAT, the public address). Empty (the default): `bind` when it names an address,
    /// else every usable interface address ([`crate::netif::pick_announce`]). The first one
    /// is also the node's address for plain RTP sessions and relay links.
    #[serde(deserialize_with = "one_or_many")]
    pub announce: Vec<IpAddr>,
    /// A second, IPv6 address advertised as well (a second host candidate on the same
    /// port). Needs `bind = "::"`: one dual-stack socket per worker receives both families.
    pub announce6: Option<Ipv6Addr>,
    /// Worker `i` listens on `port + i`.
    pub port: u16,
    /// ICE-TCP (RFC 6544): worker `i` also listens on TCP `port + i`, and every WebRTC
    /// answer offers a passive TCP host candidate per address, below the UDP ones, for peers
    /// whose network drops UDP.
    pub ice_tcp: bool,
    /// Worker `i` also binds its relay socket at `relay_port + i` (same address and
    /// dual-stack setup as its media socket): node-to-node relay links (`RelayIn`/`RelayOut`
    /// sessions) send and receive there, and nothing else is answered on it.
    pub relay_port: u16,
    /// Worker threads; 0 means available cores − 1, at least 1 and at most [`MAX_WORKERS`].
    pub workers: u16,
    /// Pin worker `i` to core `(first_core + i) % cores`.
    pub pin: bool,
    pub first_core: u16,
    pub engine: EngineKind,
    /// io_uring engine: send each loop turn's datagrams with one sendmmsg and queue only
    /// what the socket cannot take as SQEs (true), or one SENDMSG SQE per datagram (false).
    pub uring_sendmmsg: bool,
    /// Send each destination's datagrams queued in one loop turn as `UDP_SEGMENT` messages
    /// (GSO: one trip through the kernel's UDP path for a run of equal-size datagrams) where
    /// the kernel supports it; a destination whose route refuses it falls back to one
    /// datagram per message. `off` sends one datagram per message everywhere.
    pub gso: Offload,
    /// Let relay sockets receive coalesced datagrams (`UDP_GRO`); the worker walks the
    /// segments. `off` receives one datagram per read.
    pub gro: Offload,
    /// RTP padding (RFC 3550 §5.1, the P bit) for equal-size runs: each video packet (a
    /// 90 kHz track) sent to a subscriber that does not end its frame is padded up to a
    /// multiple of this many bytes (datagram size), so a frame's packets, which libwebrtc
    /// cuts to within one byte of each other, leave as one `UDP_SEGMENT` message instead
    /// of two. 0 (the default) pads nothing; 2..=256 (docs/performance.md measured 8 to 32).
    pub pad_video_to: u16,
    /// SO_RCVBUF / SO_SNDBUF per worker socket, bytes. A deep receive queue rides out the
    /// bursts of a keyframe fanned out to many subscribers.
    pub recv_buffer: usize,
    pub send_buffer: usize,
    /// Sessions one worker holds at most; its tables are sized once from this.
    pub max_sessions_per_worker: u32,
    /// Packets kept per published track for NACK retransmission (a power of two). The
    /// late joiners' group (`late_join`) is served from it while the group fits.
    pub nack_cache: u16,
    /// Start a new viewer (or relay) of a video track from the packets since the
    /// publisher's last keyframe, held in the NACK cache, instead of asking the publisher
    /// for a keyframe and waiting for it (docs/webrtc.md, "Late joiners"). Off: every new
    /// viewer asks for a keyframe, as publishers that honour requests answer in a round
    /// trip, and ones that do not (OBS) at their next periodic keyframe.
    pub late_join: bool,
    /// Repair WebRTC publishers' uplinks: NACK their sequence gaps where they negotiated
    /// `nack`, take their RTX as the lost packet, PLI when repair gives up (docs/webrtc.md,
    /// "Uplink repair"). Off: their losses reach every viewer and relay hop as they are.
    pub uplink_nack: bool,
    /// Estimate each WebRTC viewer's bandwidth from its transport-cc feedback (or REMB) and
    /// give it the simulcast layers that fit (docs/webrtc.md, "Bandwidth estimation"). Off:
    /// every viewer gets the best layer its cap allows.
    pub viewer_bwe: bool,
}

impl Default for MediaSection {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            announce: Vec::new(),
            announce6: None,
            port: 10000,
            ice_tcp: true,
            relay_port: 9443,
            workers: 0,
            pin: true,
            first_core: 1,
            engine: EngineKind::Auto,
            uring_sendmmsg: true,
            gso: Offload::Auto,
            gro: Offload::Auto,
            pad_video_to: 0,
            recv_buffer: 8 << 20,
            send_buffer: 8 << 20,
            max_sessions_per_worker: 4096,
            nack_cache: 512,
            late_join: true,
            uplink_nack: true,
            viewer_bwe: true,
        }
    }
}

impl MediaSection {
    /// The address peers should send media to when only one is asked for (plain RTP
    /// sessions, relay links, the cluster registry): the first of [`Self::announce_ips`].
    pub fn announce_ip(&self) -> IpAddr {
        self.announce_ips()
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Every address peers may send media to, in the order they are offered, and where the
    /// list came from: `media.announce` (then `announce6`), else the bind address, else the
    /// host's interfaces.
    pub fn announce_ips(&self) -> Vec<IpAddr> {
        self.announced().0
    }

    /// [`Self::announce_ips`] and where they came from, for the startup log.
    pub fn announced(&self) -> (Vec<IpAddr>, AnnounceSource) {
        let (mut ips, source) = if !self.announce.is_empty() {
            (self.announce.clone(), AnnounceSource::Config)
        } else if !self.bind.is_unspecified() {
            (vec![self.bind], AnnounceSource::Bind)
        } else {
            let v6 = self.bind.is_ipv6();
            (
                crate::netif::pick_announce(crate::netif::interfaces(), v6),
                AnnounceSource::Interfaces,
            )
        };
        ips.dedup();
        if let Some(v6) = self.announce6 {
            if !ips.contains(&IpAddr::V6(v6)) {
                ips.push(IpAddr::V6(v6));
            }
        }
        (ips, source)
    }

    /// Resolve `workers = 0` against the machine.
    pub fn worker_count(&self) -> u16 {
        if self.workers > 0 {
            return self.workers;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.saturating_sub(1).clamp(1, usize::from(MAX_WORKERS)) as u16
    }
}

/// Where a node's announced media addresses came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceSource {
    /// `media.announce` (or `--media-announce`).
    Config,
    /// `media.bind`, a specific address.
    Bind,
    /// The host's interface addresses (`media.announce` unset, bind 0.0.0.0 or `::`).
    Interfaces,
}

impl std::fmt::Display for AnnounceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnnounceSource::Config => "media.announce",
            AnnounceSource::Bind => "media.bind",
            AnnounceSource::Interfaces => "interface addresses (media.announce unset)",
        })
    }
}

/// `"1.2.3.4"` or `["1.2.3.4", "::1"]`: one address stays the short way to write it.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(IpAddr),
        Many(Vec<IpAddr>),
    }
    Ok(
        match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected an IP address or a list of IP addresses")
        })? {
            OneOrMany::One(ip) => vec![ip],
            OneOrMany::Many(v) => v,
        },
    )
}

/// Most workers one node runs. Workers address each other through fixed-size sets
/// (`dataplane::worker_set::WorkerSet`, one bit per worker, copied into every routing
/// change and scanned on every cross-worker fan-out), so the count needs a ceiling; before
/// there was one, worker 64 aliased worker 0 and its media went to the wrong thread. 1024
/// covers the largest hosts there are (two 192-core sockets with SMT are 768 hardware
/// threads, so `workers = 0` never reaches it) while a set stays 128 bytes, copied without
/// allocating. Each worker also takes a media and a relay port, so 1024 of each at most.
pub const MAX_WORKERS: u16 = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Loopback by default: with auth off every endpoint is open (forwards send streams to any
    /// address), so a public address needs `[auth]` or `insecure` (see
    /// [`Config::check_exposure`]).
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first); with `private_key`, the API is served over HTTPS
    /// only. Browsers publish (getUserMedia) only from secure origins beyond localhost.
    pub certificate: Option<PathBuf>,
    /// PEM private key of `certificate` (PKCS#8, PKCS#1 or SEC1).
    pub private_key: Option<PathBuf>,
    /// Serve the API on a non-loopback `listen` with auth off (everything open to anyone who
    /// can reach it: a lab or a network that is private end to end).
    pub insecure: bool,
    /// Connections held at once (TLS handshakes included); one more is closed as soon as it
    /// is accepted. Keep it below the process's file descriptor limit (`LimitNOFILE`): the
    /// control plane lowers it to fit, with a warning.
    pub max_connections: u32,
    /// A client must send a request's whole head within this; the same deadline closes a
    /// keep-alive connection that sends no next request.
    pub header_read_timeout_ms: u64,
    /// Longest one request may take, body and the node's work included; 408 after.
    pub request_timeout_ms: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            certificate: None,
            private_key: None,
            insecure: false,
            max_connections: 4096,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
        }
    }
}

impl HttpSection {
    /// The certificate and key paths when HTTPS is configured.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        Some((self.certificate.as_deref()?, self.private_key.as_deref()?))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingSection {
    /// Directory of the shared-memory files; default `/dev/shm`.
    pub dir: Option<PathBuf>,
}

/// WebRTC settings of the data plane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebrtcSection {
    /// PEM certificate (ECDSA P-256) for DTLS; with `private_key`. Default: a self-signed
    /// one generated at each data plane start (its fingerprint goes into every answer).
    pub certificate: Option<PathBuf>,
    /// PEM PKCS#8 private key of `certificate`.
    pub private_key: Option<PathBuf>,
}

/// How a new room picks its node (see controlplane `cluster::placement`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// Power of two choices among the nodes with room: the freer of two picked at random, so
    /// a burst of rooms does not herd onto the one emptiest node.
    #[default]
    LeastLoaded,
    /// Next node with room, in node id order.
    RoundRobin,
    /// Rendezvous hash of the room id: a room id maps to the same node while it has room.
    ConsistentHash,
}

impl PlacementStrategy {
    /// The name the config uses.
    pub const fn name(self) -> &'static str {
        match self {
            Self::LeastLoaded => "least_loaded",
            Self::RoundRobin => "round_robin",
            Self::ConsistentHash => "consistent_hash",
        }
    }
}

impl std::str::FromStr for PlacementStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "least_loaded" => Ok(Self::LeastLoaded),
            "round_robin" => Ok(Self::RoundRobin),
            "consistent_hash" => Ok(Self::ConsistentHash),
            other => Err(format!(
                "unknown strategy {other:?} (least_loaded, round_robin or consistent_hash)"
            )),
        }
    }
}

/// Cluster state and placement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// Redis URL where every control plane of the cluster keeps its state: one server
    /// (`redis://host:6379/0`, `rediss://` for TLS) or a master found through Sentinel
    /// (`redis+sentinel://host1:26379,host2:26379,host3:26379/mymaster[/db]`, `rediss+sentinel://`).
    /// None: an in-memory store, for a single node.
    pub redis: Option<String>,
    /// PEM file of the CA that signs the Redis servers' TLS certificates (`rediss`), when it
    /// is not among the system's roots.
    pub redis_ca: Option<PathBuf>,
    /// Consumers (forwarded streams) one worker is sized for: node capacity = workers × this.
    pub consumers_per_worker: u32,
    pub strategy: PlacementStrategy,
    /// How often the control plane checks `GET /health` of every registered node.
    pub health_interval_ms: u64,
    /// A node that reports this share of any resource in use is overloaded and takes no new
    /// rooms (SRS's 80% rule).
    pub overload_ratio: f64,
    /// Outgoing packets per second one media worker is sized for (docs/performance.md): the
    /// node's own load heartbeat reports its busiest worker's rate as a share of this.
    pub max_pps_per_worker: u64,
    /// Every interface's capacity in Mbit/s for the `bandwidth` load share (loopback
    /// excluded). Unset: each interface's own `/sys/class/net/<if>/speed`, and interfaces
    /// without one (virtual ones) are not counted.
    pub nic_mbps: Option<u64>,
    /// Kernel receive-queue drops per second (all workers) that count as a full `rx_drops`
    /// load share.
    pub max_rx_drops_per_s: u64,
    /// Count the host's own resources (all CPUs, interface bandwidth, memory) in the load
    /// verdict, not only the node's. Off only where the host is busy with other things on
    /// purpose (the project's test machine runs the whole test suite beside its nodes).
    pub host_load: bool,
    /// How long a room created through `/v1/rooms` stays reserved after its last session
    /// ends before it is closed and its capacity given back.
    pub room_close_grace_ms: u64,
    /// How long a room created through `/v1/rooms` stays reserved when no session ever joins
    /// it before it is closed and its capacity given back.
    pub room_idle_timeout_ms: u64,
    /// Room prefixes bound to a node pool (the node label `pool`): rooms under `prefix` go only
    /// to nodes of `pool`; other rooms never go to nodes of a bound pool.
    pub pools: Vec<PoolBinding>,
    /// WHEP for a stream published on another healthy node is served where it lands, through
    /// a relay from the publisher's node (true), instead of a 307 to the room's node (false).
    /// WHIP always goes to the room's node.
    pub cascade: bool,
    /// How long a relay that feeds this node stays up after its last local subscriber left,
    /// so a subscriber that reconnects finds it still there.
    pub relay_grace_ms: u64,
    /// The bearer token this control plane sends to the others (relay set-up). Default: a
    /// short-lived cluster token signed with `[auth] key`; needed when only `public_key` is
    /// set, since a node cannot sign ES256 tokens itself.
    pub token: Option<String>,
    /// URL prefixes (`https://hooks.example.com/`) a room's `eventNotificationUri` may start
    /// with when a user token (or no token, on the public prefix) creates the room; cluster
    /// tokens may set any URL. Empty: only cluster tokens set hooks. A prefix without a
    /// trailing `/` matches only up to a `/`, `?` or `#` (no `:port` or `.evil` after it).
    pub hook_allow: Vec<String>,
    /// Exchange relay link keys over plain `http://` with a non-loopback node (the source's
    /// request to a remote `http://` target, or a remote source's request to this node when
    /// it serves plain HTTP). Off: such a relay is refused; serve the API over HTTPS instead.
    pub allow_plain_http_keys: bool,
    /// On SIGTERM (or a drain with `"shutdown": true`) the control plane takes no new
    /// sessions and waits this long at most for the ones it has to end before it exits.
    /// Keep the systemd unit's `TimeoutStopSec` above it.
    pub shutdown_grace_ms: u64,
    /// This node's region (an id: `eu-west`, `us-east-1`): rooms go to nodes in the
    /// client's region while one has room, and the cascade pulls from a source in its own
    /// region first. None: the node is in no region.
    pub region: Option<String>,
    /// Where a client is by its address, for placement and `/v1/resolve`, when no trusted
    /// `X-Switchyard-Region` header says it: `[[cluster.region_map]] cidr = "10.1.0.0/16"`,
    /// `region = "eu-west"`; the longest matching prefix wins.
    pub region_map: Vec<RegionRule>,
}

/// `[[cluster.pools]] prefix = "acme/", pool = "acme"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolBinding {
    pub prefix: String,
    pub pool: String,
}

// `validate` rejects a NaN `overload_ratio`, the one value that would break reflexivity.
impl Eq for ClusterSection {}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            redis: None,
            redis_ca: None,
            consumers_per_worker: 500,
            strategy: PlacementStrategy::LeastLoaded,
            health_interval_ms: 5000,
            overload_ratio: 0.8,
            max_pps_per_worker: 200_000,
            nic_mbps: None,
            max_rx_drops_per_s: 100,
            host_load: true,
            room_close_grace_ms: 30_000,
            room_idle_timeout_ms: 300_000,
            pools: Vec::new(),
            cascade: true,
            relay_grace_ms: 30_000,
            shutdown_grace_ms: 30_000,
            token: None,
            hook_allow: Vec::new(),
            allow_plain_http_keys: false,
            region: None,
            region_map: Vec::new(),
        }
    }
}

/// Bearer-token (JWT) authentication of the HTTP API. Without `key` and `public_key` auth is
/// off and every endpoint is open (bind the API to a private address then).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// HS256 shared secret, base64 (`switchyard token generate` makes one).
    pub key: Option<String>,
    /// ES256 public key: a PEM file path, or the PEM text itself.
    pub public_key: Option<String>,
    /// A path prefix (`anon` covers `anon/...`) anyone may publish and watch under without a
    /// token.
    pub public: Option<String>,
}

impl AuthSection {
    /// Whether tokens are checked at all.
    pub fn enabled(&self) -> bool {
        self.key.is_some() || self.public_key.is_some()
    }
}

/// What one client may take of a node: live sessions and the rate it creates them at
/// (WHIP, WHEP, `POST /v1/sessions`). A client is a user token, or, without a token (the
/// public prefix), a source address (an IPv4 address or an IPv6 /64). Cluster tokens, and
/// every caller while auth is off, are not limited.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Live sessions one user token holds at most.
    pub sessions_per_token: u32,
    /// Live sessions one anonymous source address holds at most.
    pub sessions_per_address: u32,
    /// Sessions a client may create at once before the rate applies (token bucket size).
    pub session_burst: u32,
    /// One more session creation every this many milliseconds after the burst.
    pub session_interval_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            sessions_per_token: 1000,
            sessions_per_address: 100,
            session_burst: 20,
            // 10 per second per client.
            session_interval_ms: 100,
        }
    }
}

/// `[metrics]`: what `GET /metrics` exposes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Streams that get series of their own (`stream="room/cam"`), busiest first by bytes
    /// in and out; the rest are summed into one `stream="_other"` series. Each stream costs
    /// five series, and stream names come from clients, so this bounds what a scrape and
    /// the Prometheus server hold. 0: every stream goes to `_other`.
    pub max_stream_series: u32,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            max_stream_series: 1000,
        }
    }
}

/// `[[forward]]`: copy every published stream whose name starts with `prefix` (every stream
/// when empty) to each of `destinations` (see [`Destination`]). The same shape as a
/// `POST /v1/forwards` body, plus the `id` that names it in the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSection {
    pub id: String,
    #[serde(default)]
    pub prefix: String,
    pub destinations: Vec<String>,
}

/// Most destinations one forward has.
pub const MAX_FORWARD_DESTINATIONS: usize = 16;

/// Where a forward sends a stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// `rtp://ip:port`: plain (unencrypted) RTP, publisher track `i` to `port + 2i` and its
    /// RTCP to `port + 2i + 1` (audio on `port`, video on `port + 2` for a WHIP publisher
    /// sending audio then video), as a recorder reading an SDP file expects.
    Rtp(SocketAddr),
    /// `node://<node-id>` or `node://host:port`: another Switchyard node as hot standby,
    /// fed by one relay link per stream (all its tracks) set up through the relay API.
    Node(NodeRef),
}

/// The node a `node://` destination names. Node ids never contain `:` (they are
/// `A-Z a-z 0-9 _ . -`), so `node://x` with a `:` is a control plane address
/// (`host:port`, `[v6]:port`) and without one a registered node id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeRef {
    /// A node in the cluster registry, by id.
    Id(String),
    /// A control plane's HTTP address outside the registry (`host:port`; reached over
    /// `http://`).
    Addr(String),
}

/// Why a destination string is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("destination {0:?}: {1}")]
    Invalid(String, &'static str),
}

impl Destination {
    /// Parse `rtp://ip:port` (`rtp://[v6]:port`), `node://<node-id>` or `node://host:port`.
    pub fn parse(text: &str) -> Result<Self, DestinationError> {
        let bad = |why| Err(DestinationError::Invalid(text.to_owned(), why));
        let Some((scheme, rest)) = text.split_once("://") else {
            return bad("expected rtp://ip:port, node://<node-id> or node://host:port");
        };
        match scheme {
            "rtp" => {
                let Ok(addr) = rest.parse::<SocketAddr>() else {
                    return bad("expected rtp://ip:port with a literal IP address");
                };
                let ip = addr.ip();
                if ip.is_unspecified() || ip.is_multicast() {
                    return bad("needs a unicast address");
                }
                if addr.port() == 0 || addr.port() % 2 != 0 {
                    return bad(
                        "the port must be even and non-zero (RTCP uses the odd port above)",
                    );
                }
                // Every track's RTP and RTCP port must exist.
                if usize::from(addr.port()) + 2 * crate::sizes::MAX_TRACKS - 1 > 65535 {
                    return bad("the port leaves no room for every track's RTP and RTCP ports");
                }
                Ok(Self::Rtp(addr))
            }
            "node" => {
                if rest.contains(':') {
                    // host:port, host a name, an IPv4 address or a bracketed IPv6 one.
                    let Some((host, port)) = rest.rsplit_once(':') else {
                        return bad("expected node://host:port");
                    };
                    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
                    let host_ok = if let Some(v6) =
                        host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
                    {
                        v6.parse::<std::net::Ipv6Addr>().is_ok()
                    } else {
                        !host.is_empty()
                            && host.len() <= 253
                            && host
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
                    };
                    if !port_ok || !host_ok {
                        return bad("expected node://host:port (a control plane's HTTP address)");
                    }
                    Ok(Self::Node(NodeRef::Addr(rest.to_owned())))
                } else {
                    if !names::Rule::Id.allows(rest) {
                        // `names::Rule::Id` in words (the reason is a static string).
                        return bad("a node id is 1 to 128 characters of A-Z a-z 0-9 _ . -");
                    }
                    Ok(Self::Node(NodeRef::Id(rest.to_owned())))
                }
            }
            _ => bad("unknown scheme; rtp:// and node:// are supported"),
        }
    }

    /// Where track `track` goes: its RTP address (the RTCP one is the port above). None for
    /// a node destination (a relay link carries every track).
    pub fn track_address(&self, track: u8) -> Option<SocketAddr> {
        match self {
            Self::Rtp(a) => {
                let port = a.port().checked_add(2 * u16::from(track))?;
                Some(SocketAddr::new(a.ip(), port))
            }
            Self::Node(_) => None,
        }
    }

    /// Whether this is a `node://` destination.
    pub fn is_node(&self) -> bool {
        matches!(self, Self::Node(_))
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rtp(a) => write!(f, "rtp://{a}"),
            Self::Node(NodeRef::Id(id)) => write!(f, "node://{id}"),
            Self::Node(NodeRef::Addr(a)) => write!(f, "node://{a}"),
        }
    }
}

impl ForwardSection {
    /// Check the id, prefix and destinations; the parsed destinations in order.
    pub fn check(&self) -> Result<Vec<Destination>, String> {
        names::forward_id("id", &self.id).map_err(|e| e.to_string())?;
        check_forward(&self.prefix, &self.destinations).map_err(|e| format!("{}: {e}", self.id))
    }
}

/// Whether `p` can be a `[cluster] hook_allow` entry: `http://` or `https://`, then a host.
fn valid_hook_prefix(p: &str) -> bool {
    let rest = p
        .strip_prefix("https://")
        .or_else(|| p.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or_default();
        !host.is_empty() && !host.contains('@')
    }) && !p.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Whether a room hook `url` lies under one of the `[cluster] hook_allow` prefixes. A prefix
/// ending in `/` matches any URL that starts with it; one without must be followed by the
/// end, `/`, `?` or `#`, so `https://a.example` allows neither `https://a.example.evil.test`
/// nor `https://a.example:6379` nor `https://a.example@evil.test`.
pub fn hook_allowed(url: &str, allow: &[String]) -> bool {
    allow.iter().any(|p| match url.strip_prefix(p.as_str()) {
        Some(rest) => p.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?', '#']),
        None => false,
    })
}

/// Check a forward's prefix and destinations (config and API share the rules).
pub fn check_forward(prefix: &str, destinations: &[String]) -> Result<Vec<Destination>, String> {
    names::prefix("prefix", prefix).map_err(|e| e.to_string())?;
    if destinations.is_empty() || destinations.len() > MAX_FORWARD_DESTINATIONS {
        return Err(format!(
            "destinations: 1 to {MAX_FORWARD_DESTINATIONS} entries"
        ));
    }
    let mut out = Vec::with_capacity(destinations.len());
    for d in destinations {
        let d = Destination::parse(d).map_err(|e| e.to_string())?;
        if out.contains(&d) {
            return Err(format!("destinations: {d} is listed twice"));
        }
        out.push(d);
    }
    Ok(out)
}

/// The whole node configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub media: MediaSection,
    pub http: HttpSection,
    pub ring: RingSection,
    pub webrtc: WebrtcSection,
    pub cluster: ClusterSection,
    pub auth: AuthSection,
    pub limits: LimitsSection,
    pub metrics: MetricsSection,
    /// `[[forward]]` entries, re-created at every control plane start.
    pub forward: Vec<ForwardSection>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The underlying errors are kept as text, not as `source`: a chain printer would
    // otherwise repeat them after the message that already says them (and TOML's own
    // message is a multi-line snippet; `Parse` says line and column instead).
    #[error("reading {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{}: line {line}, column {column}: {reason}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
    /// The API would be open to anyone on a public address ([`Config::check_exposure`]).
    #[error(
        "refusing to serve the API on {0} with auth off (anyone there could create sessions \
         and forwards): configure [auth] key or public_key, listen on a loopback address, or \
         pass --insecure"
    )]
    Exposed(SocketAddr),
}

impl Config {
    /// Load a TOML file over the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start).min(text.len());
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            ConfigError::Parse {
                path: path.into(),
                line,
                column,
                reason: e.message().trim().to_owned(),
            }
        })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reject values the planes cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        // The node id names its shared-memory files and its cluster registry entry.
        if let Err(e) = names::id("node.id", &self.node.id) {
            return bad(&e.to_string());
        }
        if self.media.workers > MAX_WORKERS {
            return Err(ConfigError::Invalid(format!(
                "media.workers is {}; at most {MAX_WORKERS} workers per node (0 picks one per \
                 core, up to that)",
                self.media.workers
            )));
        }
        let workers = u32::from(self.media.worker_count());
        if u32::from(self.media.port) + workers > 65536 || self.media.port == 0 {
            return bad("media.port + workers must stay within 1..=65535");
        }
        if u32::from(self.media.relay_port) + workers > 65536 || self.media.relay_port == 0 {
            return bad("media.relay_port + workers must stay within 1..=65535");
        }
        let (m, r) = (u32::from(self.media.port), u32::from(self.media.relay_port));
        if m < r + workers && r < m + workers {
            return bad(&format!(
                "media.port range {m}..={} and media.relay_port range {r}..={} overlap \
                 ({workers} workers each): move one of them",
                m + workers - 1,
                r + workers - 1
            ));
        }
        if !self.media.nack_cache.is_power_of_two() {
            return bad("media.nack_cache must be a power of two");
        }
        if self.media.pad_video_to == 1 || self.media.pad_video_to > 256 {
            return bad("media.pad_video_to is 0 (off) or 2..=256 bytes");
        }
        if self.media.max_sessions_per_worker == 0 {
            return bad("media.max_sessions_per_worker must be at least 1");
        }
        if self.media.announce6.is_some() && self.media.bind != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
            return bad("media.announce6 needs media.bind = \"::\" (dual-stack worker sockets)");
        }
        if let Some(ip) = self.media.announce.iter().find(|ip| ip.is_unspecified()) {
            return bad(&format!(
                "media.announce {ip}: announce addresses peers can reach, not a wildcard"
            ));
        }
        if self.media.bind.is_ipv4() {
            if let Some(ip) = self.media.announce.iter().find(|ip| ip.is_ipv6()) {
                return bad(&format!(
                    "media.announce {ip} is IPv6 but media.bind {} is IPv4: bind \"::\" (dual-stack)",
                    self.media.bind
                ));
            }
        }
        if self.webrtc.certificate.is_some() != self.webrtc.private_key.is_some() {
            return bad("webrtc.certificate and webrtc.private_key go together");
        }
        if self.http.certificate.is_some() != self.http.private_key.is_some() {
            return bad("http.certificate and http.private_key go together");
        }
        if self.http.max_connections == 0 {
            return bad("http.max_connections must be at least 1");
        }
        if self.http.header_read_timeout_ms < 100 || self.http.request_timeout_ms < 100 {
            return bad("http.header_read_timeout_ms and http.request_timeout_ms: at least 100");
        }
        let l = &self.limits;
        if l.sessions_per_token == 0
            || l.sessions_per_address == 0
            || l.session_burst == 0
            || l.session_interval_ms == 0
        {
            return bad("limits: every value must be at least 1");
        }
        if let Some(p) = self
            .cluster
            .hook_allow
            .iter()
            .find(|p| !valid_hook_prefix(p))
        {
            return Err(ConfigError::Invalid(format!(
                "cluster.hook_allow: {p:?} is not an http:// or https:// URL prefix with a host"
            )));
        }
        if self.cluster.consumers_per_worker == 0 {
            return bad("cluster.consumers_per_worker must be at least 1");
        }
        if self.cluster.health_interval_ms < 100 {
            return bad("cluster.health_interval_ms must be at least 100");
        }
        if !(self.cluster.overload_ratio > 0.0 && self.cluster.overload_ratio <= 1.0) {
            return bad("cluster.overload_ratio must be in (0, 1]");
        }
        if self.cluster.max_pps_per_worker == 0 {
            return bad("cluster.max_pps_per_worker must be at least 1");
        }
        if self
            .cluster
            .pools
            .iter()
            .any(|p| p.prefix.is_empty() || p.pool.is_empty())
        {
            return bad("cluster.pools: prefix and pool must be non-empty");
        }
        for region in self
            .cluster
            .region
            .iter()
            .chain(self.cluster.region_map.iter().map(|r| &r.region))
        {
            if let Err(e) = names::id("cluster.region", region) {
                return bad(&e.to_string());
            }
        }
        if let Some(url) = &self.cluster.redis {
            // The schemes the Redis store understands (controlplane's `redis_target`): one
            // server, plain or TLS, or a Sentinel-watched master, plain or TLS.
            const SCHEMES: [&str; 4] = [
                "redis://",
                "rediss://",
                "redis+sentinel://",
                "rediss+sentinel://",
            ];
            if !SCHEMES.iter().any(|s| url.starts_with(s)) {
                return bad(
                    "cluster.redis must be a redis://, rediss://, redis+sentinel:// or rediss+sentinel:// URL",
                );
            }
        }
        if let Some(key) = &self.auth.key {
            use base64::Engine as _;
            match base64::engine::general_purpose::STANDARD.decode(key.trim()) {
                Ok(k) if k.len() >= 16 => {}
                _ => return bad("auth.key must be base64 of at least 16 bytes"),
            }
        }
        let mut ids = std::collections::HashSet::new();
        for f in &self.forward {
            if let Err(e) = f.check() {
                return Err(ConfigError::Invalid(format!("[[forward]] {e}")));
            }
            if !ids.insert(f.id.as_str()) {
                return bad("[[forward]] ids must be unique");
            }
        }
        if let Some(public) = &self.auth.public {
            if public.starts_with('/') || public.ends_with('/') {
                return bad("auth.public is a path prefix without leading or trailing '/'");
            }
            if !self.auth.enabled() {
                return bad("auth.public needs auth.key or auth.public_key");
            }
        }
        Ok(())
    }

    /// Refuse to serve an open API (auth off) on a non-loopback address unless
    /// `http.insecure` says so: `up` and `controlplane` exit with status 2 on this error.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        let listen = self.http.listen;
        if self.auth.enabled() || self.http.insecure || listen.ip().is_loopback() {
            Ok(())
        } else {
            Err(ConfigError::Exposed(listen))
        }
    }

    fn shm_dir(&self) -> PathBuf {
        self.ring
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev/shm"))
    }

    /// The command/event ring file.
    pub fn ring_path(&self) -> PathBuf {
        self.shm_dir()
            .join(format!("switchyard-{}.ring", self.node.id))
    }

    /// The control plane's relay records (what the data plane's snapshot cannot say about
    /// its relay sessions), beside the ring.
    pub fn relays_path(&self) -> PathBuf {
        self.shm_dir()
            .join(format!("switchyard-{}.relays", self.node.id))
    }

    /// The per-worker counters file.
    pub fn stats_path(&self) -> PathBuf {
        self.shm_dir()
            .join(format!("switchyard-{}.stats", self.node.id))
    }

    /// The SRTP index journal ([`crate::journal`]): outlives data-plane restarts on purpose.
    pub fn journal_path(&self) -> PathBuf {
        self.shm_dir()
            .join(format!("switchyard-{}.srtp", self.node.id))
    }
}

#[cfg(test)]
mod tests;
