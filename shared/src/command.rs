//! Commands (control plane → data plane) and events (data plane → control plane).
//!
//! These are the only values the two planes exchange; neither holds a reference into the other.
//! They travel over the shared-memory [`crate::ring`] encoded with postcard. Every message
//! fits in [`MAX_MESSAGE`] bytes: a snapshot is streamed as one event per session, never as one
//! large message.
//!
//! Security contract: the ring is a local, trusted channel (a file under /dev/shm owned by the
//! node's user). Session specs carry SRTP master keys in the clear for that reason; nothing
//! here is ever sent over the network.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Largest encoded command or event, in bytes. A session spec with keys and addresses is
/// about 200 bytes; a WebRTC publisher's with its kept media (`control`) up to ~700.
pub const MAX_MESSAGE: usize = 2048;

pub use crate::sizes::{MAX_LAYERS, MAX_PT_MAP, MAX_RID, MAX_TRACKS};

/// Largest data channel message a node receives: the SDP answer's `a=max-message-size`
/// (control plane) and the size of every channel's receive buffer (data plane), one value so
/// the two never disagree. 64 KiB is what aiortc advertises and Chrome accepts.
pub const DATA_CHANNEL_MAX_MESSAGE: usize = 64 * 1024;

/// Control-plane-assigned session id, unique per node for the node's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// SRTP protection profiles (RFC 5764 §4.1.2, RFC 7714 §14.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SrtpProfile {
    /// SRTP_AES128_CM_HMAC_SHA1_80: 16-byte key, 14-byte salt, 10-byte tag.
    #[serde(rename = "AES_CM_128_HMAC_SHA1_80")]
    AesCm128HmacSha1_80,
    /// SRTP_AEAD_AES_128_GCM: 16-byte key, 12-byte salt, 16-byte tag.
    #[serde(rename = "AEAD_AES_128_GCM")]
    AeadAes128Gcm,
}

impl SrtpProfile {
    /// Master key length in bytes.
    pub const fn key_len(self) -> usize {
        16
    }

    /// Master salt length in bytes.
    pub const fn salt_len(self) -> usize {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 => 14,
            SrtpProfile::AeadAes128Gcm => 12,
        }
    }

    /// Key and salt together, as SDES `inline:` and DTLS-SRTP key export lay them out.
    pub const fn master_len(self) -> usize {
        self.key_len() + self.salt_len()
    }

    /// The name used in configs, JSON and SDP.
    pub const fn name(self) -> &'static str {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpProfile::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }
}

/// SRTP master key material for both directions of one session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrtpKeys {
    pub profile: SrtpProfile,
    /// Master key || master salt the peer protects with (what the node unprotects).
    pub remote: Vec<u8>,
    /// Master key || master salt the node protects with (what the peer unprotects).
    pub local: Vec<u8>,
}

impl std::fmt::Debug for SrtpKeys {
    // Keys never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// What a session does with its stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Sends RTP for `stream`. `ssrcs` lists the tracks it will send, in track order; an
    /// empty list lets the data plane learn up to [`MAX_TRACKS`] SSRCs from authenticated
    /// packets, in the order they first arrive.
    ///
    /// `clock_rates[i]` is the RTP clock rate (Hz) of track `i`, for the interarrival jitter
    /// in the receiver reports the node sends the publisher; at most `ssrcs.len()` entries.
    /// A missing entry or 0 means unknown: that track's jitter is reported as 0, never
    /// computed from a guessed rate.
    Publisher {
        ssrcs: Vec<u32>,
        #[serde(default)]
        clock_rates: Vec<u32>,
        /// A publisher whose offer had `a=simulcast`: how its packets map to (track,
        /// layer). `None`: every SSRC is a track of its own, as above.
        #[serde(default)]
        simulcast: Option<Simulcast>,
        /// Uplink repair per track, in track order (`ssrcs`, or `simulcast.tracks`): what
        /// the publisher negotiated for NACK and RTX. Empty or shorter: no repair for the
        /// tracks not listed (their gaps reach every viewer as they are).
        #[serde(default)]
        uplink: Vec<UplinkTrack>,
    },
    /// Receives `stream`. `ssrcs[i]` is the SSRC the subscriber sees for the publisher's
    /// track `i`; the control plane fills all [`MAX_TRACKS`] entries. `payload_types` maps
    /// the publisher's RTP payload types to the subscriber's (each peer numbers its codecs
    /// its own way); types not listed pass unchanged. At most [`MAX_PT_MAP`] pairs.
    Subscriber {
        ssrcs: Vec<u32>,
        payload_types: Vec<(u8, u8)>,
        /// One-byte header extension ids, publisher's → subscriber's (1..=14). `None` passes
        /// extensions through unchanged (plain RTP egress); `Some` drops every element not
        /// listed (a WebRTC subscriber must not see ids it did not negotiate).
        extensions: Option<Vec<(u8, u8)>>,
        /// Per publisher track (same order as `ssrcs`): the RTX (RFC 4588) SSRC and payload
        /// type the subscriber negotiated. Where set, NACKed packets are retransmitted as RTX
        /// (own SSRC, own sequence numbers, the original sequence number first in the
        /// payload) instead of as copies on the media SSRC. At most [`MAX_TRACKS`] entries.
        #[serde(default)]
        rtx: Vec<Option<(u32, u8)>>,
        /// Which publisher tracks this session receives: bit `i` = track `i`. A recorder
        /// needs one RTP port per medium (`m=audio` and `m=video` on different ports, no
        /// rtcp-mux), so a forward to plain RTP runs one session per track. Default: all.
        #[serde(default = "all_tracks")]
        tracks: u8,
    },
    /// Receives `stream` relayed from another node on this worker's relay socket and is the
    /// stream's publisher on this node (local subscribers see it like any publisher). Keying is
    /// always `Keying::Static` (the per-link key). `remote: None` latches the source of the
    /// first packet that authenticates; anything else arriving on the relay socket (unknown
    /// source, failed SRTP auth, STUN/DTLS) is dropped and counted. SSRCs are learned from
    /// authenticated packets (up to MAX_TRACKS), in arrival order, unless `ssrcs` gives them.
    /// Sequence gaps are NACKed upstream over the link; keyframe requests from local
    /// subscribers go upstream as PLI.
    RelayIn {
        /// The publisher's SSRCs in track order (the source node's publisher, at most
        /// [`MAX_TRACKS`]), so track `i` here is track `i` there whatever arrives first: WHEP
        /// on this node maps tracks in the publisher's m-line order. Empty: learned in
        /// arrival order.
        #[serde(default)]
        ssrcs: Vec<u32>,
        /// The source publisher's simulcast map (as in `Role::Publisher::simulcast`): its
        /// layers cross the link unchanged, each on its own SSRC, and this node chooses a
        /// layer for each of its own viewers. `None`: no layers.
        #[serde(default)]
        simulcast: Option<Simulcast>,
        /// Per track: the source publisher's video codec (as `UplinkTrack::video`): this
        /// node finds its keyframes and chooses SVC layers for its own viewers. Empty: none.
        #[serde(default)]
        video: Vec<Option<VideoCodec>>,
    },
    /// Sends every track of `stream` unchanged (SSRC, payload type, sequence number, timestamp,
    /// header extensions) to `remote` (another node's relay socket), SRTP-protected with the
    /// per-link key (`Keying::Static`), from this worker's relay socket. Serves NACKs arriving over
    /// the link from the publisher's packet cache and passes PLI/FIR on to the publisher.
    RelayOut,
}

impl Role {
    /// The role's name in the API and in logs: `publisher`, `subscriber`, `relay-in`,
    /// `relay-out`.
    pub const fn name(&self) -> &'static str {
        match self {
            Role::Publisher { .. } => "publisher",
            Role::Subscriber { .. } => "subscriber",
            Role::RelayIn { .. } => "relay-in",
            Role::RelayOut => "relay-out",
        }
    }

    /// A relay link session: it lives on the worker's relay socket, not its media socket.
    pub fn is_relay(&self) -> bool {
        matches!(self, Role::RelayIn { .. } | Role::RelayOut)
    }
}

/// How a simulcast publisher's packets find their track and layer. With it, track `i` is
/// `tracks[i]` (the offer's m-line order) and `Role::Publisher::ssrcs` is not used for
/// mapping; each SSRC is mapped once, from the first packet that says where it belongs:
/// the rid extension (repaired-rid: the RTX stream of a layer, never a layer itself), else
/// the mid extension for a track without layers, else the SSRCs the offer declared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Simulcast {
    /// One-byte header extension ids from the offer, 0 where not negotiated.
    pub rid_ext: u8,
    pub repaired_rid_ext: u8,
    pub mid_ext: u8,
    /// One per track, in track order; at most [`MAX_TRACKS`].
    pub tracks: Vec<SimulcastTrack>,
}

/// One m-line of a simulcast publisher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulcastTrack {
    pub mid: String,
    /// Layer `i` is `rids[i]`, in the offer's `a=simulcast` order (a preference order, not
    /// a quality order: the data plane ranks layers by what it sees). Empty: a track
    /// without layers (audio). At most [`MAX_LAYERS`], each at most [`MAX_RID`] bytes.
    pub rids: Vec<String>,
    /// Declared SSRCs: the layers' in `a=ssrc-group:SIM` order (or the track's one media
    /// SSRC), for publishers that send no rid/mid extensions. Empty: learned from them.
    pub ssrcs: Vec<u32>,
    /// What the layers carry: where a layer switch may happen (keyframes) and what else is
    /// rewritten (VP8 picture ids).
    pub codec: LayerCodec,
}

/// What a WebRTC publisher negotiated for repairing one track's uplink: the node NACKs its
/// sequence gaps (RFC 4585 §6.2.1) and takes its RTX (RFC 4588) as the late original.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkTrack {
    /// `a=rtcp-fb:<pt> nack` for the track's codec: the publisher answers NACKs.
    pub nack: bool,
    /// Its RTX stream, when it offered one for the codec.
    pub rtx: Option<UplinkRtx>,
    /// The track's video codec and payload type, where the node reads it (keyframes; SVC
    /// layers, chosen per viewer). Not repair, but per track and negotiated like it.
    #[serde(default)]
    pub video: Option<VideoCodec>,
}

/// A video track's codec and payload type, where the data plane reads the payload: its
/// keyframes (where a late joiner's cached group starts) and, for VP9 and AV1, the layers
/// of one stream (SVC) chosen per viewer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VideoCodec {
    /// VP8: keyframes from the payload descriptor and header (RFC 7741).
    Vp8(u8),
    /// H.264: IDR slices and SPS (RFC 6184).
    H264(u8),
    /// VP9: the payload descriptor (RFC 9628 §4.2) names each packet's spatial and temporal
    /// layer.
    Vp9(u8),
    /// AV1: the OBU extension headers (AV1 §5.3.3) name them.
    Av1(u8),
}

impl VideoCodec {
    pub fn payload_type(self) -> u8 {
        match self {
            Self::Vp8(pt) | Self::H264(pt) | Self::Vp9(pt) | Self::Av1(pt) => pt,
        }
    }

    /// Whether its layers travel in one stream (SVC), chosen per viewer.
    pub fn scalable(self) -> bool {
        matches!(self, Self::Vp9(_) | Self::Av1(_))
    }
}

/// A publisher track's RTX stream (RFC 4588 §8.6): `a=rtpmap:<payload_type> rtx/…` with
/// `a=fmtp:<payload_type> apt=<apt>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkRtx {
    pub payload_type: u8,
    /// The media payload type it repairs (the track's codec).
    pub apt: u8,
    /// The RTX SSRC from `a=ssrc-group:FID <media> <rtx>`, when declared. Without it (and
    /// for simulcast layers, found by repaired-rid) a packet is RTX by its payload type.
    pub ssrc: Option<u32>,
}

/// The codec of a simulcast track, as far as layer switching cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerCodec {
    Vp8,
    H264,
    /// Keyframes are not recognised: the viewer stays on its first layer.
    Other,
}

/// Every track: the [`Role::Subscriber::tracks`] default.
pub const ALL_TRACKS: u8 = (1u16 << MAX_TRACKS).wrapping_sub(1) as u8;

fn all_tracks() -> u8 {
    ALL_TRACKS
}

/// How a session gets its SRTP keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Keying {
    /// Given by the control plane (an RTP/SRTP ingest or egress with provisioned keys).
    Static(SrtpKeys),
    /// Negotiated with DTLS-SRTP on the data plane's slow path, the node in the server role
    /// (`a=setup:passive`). The client's certificate must match this fingerprint from the
    /// offer (`"sha-256 AB:CD:…"`); media waits until the handshake completes.
    Dtls { remote_fingerprint: String },
    /// No SRTP at all: RTP and RTCP go out (and RTCP comes in) unencrypted and
    /// unauthenticated. Only for egress to a recorder or transcoder on a trusted network (a
    /// forward, see controlplane `forward`): the data plane accepts it for a subscriber with
    /// a fixed `remote` and no ICE, never for a publisher — ingress must authenticate, or
    /// anyone could inject media ([`CommandError::PlainIngress`]). The session's RTCP
    /// address is `remote` with the port + 1 (RFC 3550 §11, no rtcp-mux); RTCP is accepted
    /// only from those two addresses.
    Plain,
}

impl Keying {
    /// The static keys, if any.
    pub fn keys(&self) -> Option<&SrtpKeys> {
        match self {
            Keying::Static(k) => Some(k),
            Keying::Dtls { .. } | Keying::Plain => None,
        }
    }
}

/// ICE-lite short-term credentials of a WebRTC session (RFC 8445 §7.2.2): the peer's checks
/// carry `USERNAME = local_ufrag:remote_ufrag` and are signed with `local_pwd`; the checks the
/// worker sends to verify a new address before it moves media there (RFC 7675 consent per
/// address) carry `remote_ufrag:local_ufrag` and are signed with `remote_pwd`, and so are the
/// peer's answers to them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCredentials {
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    /// The peer's `a=ice-pwd`. Empty: the session never moves from the first address its
    /// checks came from (nothing can be verified without it).
    pub remote_pwd: String,
}

impl std::fmt::Debug for IceCredentials {
    // The passwords never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceCredentials")
            .field("local_ufrag", &self.local_ufrag)
            .field("remote_ufrag", &self.remote_ufrag)
            .finish_non_exhaustive()
    }
}

/// Everything the data plane needs to run one session, and everything the control plane
/// needs to rebuild its view of it after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSpec {
    pub id: SessionId,
    /// Worker that owns the session; its media port is `media_port + worker` (relay roles:
    /// its relay port, `relay_port + worker`).
    pub worker: u16,
    /// Stream name, `room/stream` by convention.
    pub stream: String,
    pub role: Role,
    /// The peer's address. `None` for a publisher means "latch the source of the first
    /// packet that authenticates" (comedia); subscribers always have one.
    pub remote: Option<SocketAddr>,
    pub keying: Keying,
    /// ICE-lite credentials for a WebRTC session: the worker answers connectivity checks
    /// and takes `remote` from the first valid one (a nominated one moves it). `None`: a
    /// plain RTP/SRTP session addressed by `remote` alone.
    pub ice: Option<IceCredentials>,
    /// Publisher: id of the transport-wide-cc RTP header extension it sends (from its SDP);
    /// the worker then sends it transport-cc feedback so its send rate can grow.
    pub twcc_ext: Option<u8>,
    /// Unix milliseconds when the control plane created the session.
    pub created_ms: u64,
    /// The control plane's own state for this session (a WHIP/WHEP resource secret, a WHIP
    /// publisher's negotiated codecs): the data plane stores it with the session and hands
    /// it back in [`Event::SnapshotSession`], so a restarted control plane gets it back, but
    /// never reads it. Empty for most sessions; it counts toward [`MAX_MESSAGE`] with the
    /// rest of the spec. (`serde(default)` helps self-describing encodings only: on the
    /// ring, postcard, both planes are the same build, as for every other field.)
    #[serde(default)]
    pub control: Opaque,
}

/// Bytes one plane stores for the other without reading them (see
/// [`SessionSpec::control`]). They may hold secrets, so `Debug` shows their length only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opaque(pub Vec<u8>);

impl std::fmt::Debug for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opaque({} bytes)", self.0.len())
    }
}

/// Control plane → data plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// Control messages, a handful per session lifetime and encoded at once: boxing the spec
// would buy nothing but an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Start a session. Answered by [`Event::SessionAdded`] or [`Event::CommandFailed`].
    AddSession(SessionSpec),
    /// End a session. Answered by [`Event::SessionRemoved`] (or `CommandFailed` if unknown).
    RemoveSession { id: SessionId },
    /// Stream every live session as [`Event::SnapshotSession`], then
    /// [`Event::SnapshotDone`] with the same `request`.
    Snapshot { request: u64 },
    /// Subscriber `id` receives simulcast layers up to rank `max_layer` (0: the lowest
    /// quality the publisher sends; [`u8::MAX`]: no cap). Not answered: an unknown session
    /// or one that is not a subscriber is ignored.
    SetMaxLayer { id: SessionId, max_layer: u8 },
    /// Subscriber `id` receives VP8 temporal layers of its simulcast layers up to
    /// `max_temporal` (0: the base frame rate; [`u8::MAX`]: no cap). Not answered, as
    /// `SetMaxLayer`.
    SetMaxTemporal { id: SessionId, max_temporal: u8 },
    /// Relay-in `id` is fed from now on by another source node (the old one died, or the
    /// publisher re-published elsewhere): a new link key (`keys`, as in the session's
    /// `Keying::Static`), the new source publisher's SSRCs and simulcast map (as in
    /// `Role::RelayIn`), and the address latched again from the first packet that
    /// authenticates with the new key. The session, its id and its subscribers stay: each
    /// viewer's numbering continues across the switch and a keyframe is asked for. Not
    /// answered: an unknown session, or one that is not a relay-in, is ignored (the control
    /// plane checked it and keeps the spec in step itself).
    RetargetRelayIn {
        id: SessionId,
        keys: SrtpKeys,
        ssrcs: Vec<u32>,
        simulcast: Option<Simulcast>,
        /// As in `Role::RelayIn::video`.
        video: Vec<Option<VideoCodec>>,
    },
    /// The cached group of track `track` of publisher (or relay-in) `id`: the packets since
    /// its latest keyframe (`prime`), for `GET /v1/streams/{room}/{stream}/fetch`. Answered
    /// by one [`Event::GroupPacket`] per packet, in order, then [`Event::GroupDone`] with
    /// the same `request`.
    FetchGroup {
        request: u64,
        id: SessionId,
        track: u8,
    },
}

/// Why a [`Command::FetchGroup`] has no group to give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NoGroup {
    #[error("no such publisher on this node")]
    UnknownSession,
    #[error("not a video track whose codec the node knows")]
    NotVideo,
    #[error(
        "no whole group cached: no keyframe yet, a group longer than the NACK cache \
         (media.nack_cache), or the track quiet for over 500 ms"
    )]
    NotCached,
}

/// Why a command was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error("no such session")]
    UnknownSession,
    #[error("a session with this id already exists")]
    DuplicateSession,
    #[error("worker index out of range")]
    NoSuchWorker,
    #[error("SRTP key material has the wrong length for the profile")]
    BadKey,
    #[error("SSRC already used by another publisher on this node")]
    SsrcConflict,
    #[error("the remote address is already used by another session")]
    AddressConflict,
    #[error("the data plane has no room for more sessions")]
    Capacity,
    #[error("the stream already has a publisher")]
    StreamBusy,
    #[error("invalid session spec")]
    Invalid,
    #[error("plain (unencrypted) RTP is only for egress to a subscriber with a fixed address, never for a publisher or an ICE session")]
    PlainIngress,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// A `RemoveSession` command.
    Removed,
    /// No valid ICE connectivity check for the consent timeout (RFC 7675: 30 s).
    ConsentExpired,
    /// The DTLS handshake failed (the preceding [`Event::DtlsFailed`] says why).
    DtlsFailed,
}

/// Data plane → control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // as for Command
pub enum Event {
    /// Sent when the data plane attaches to the ring (at start). `boot` changes every time
    /// the data plane process starts, so a control plane can tell a restart from a reattach.
    Hello {
        boot: u64,
        pid: u32,
        workers: u16,
        media_port: u16,
        /// First relay port: worker `i`'s relay socket (relay links) is `relay_port + i`.
        relay_port: u16,
        /// The I/O engine the workers run (uring or mmsg, never auto).
        engine: crate::config::EngineKind,
        /// The data plane's DTLS certificate fingerprint (`"sha-256 AB:…"`) for SDP answers.
        fingerprint: String,
    },
    SessionAdded {
        id: SessionId,
    },
    SessionRemoved {
        id: SessionId,
        reason: CloseReason,
    },
    CommandFailed {
        id: SessionId,
        error: CommandError,
    },
    /// A comedia publisher latched onto its first authenticated source address, or an ICE
    /// session's peer was validated (or nominated) at this address.
    RemoteLatched {
        id: SessionId,
        remote: SocketAddr,
    },
    /// A DTLS-keyed session completed its handshake: media flows.
    DtlsConnected {
        id: SessionId,
        profile: SrtpProfile,
    },
    /// A DTLS-keyed session's handshake failed; the session is removed.
    DtlsFailed {
        id: SessionId,
        reason: String,
    },
    SnapshotSession {
        request: u64,
        spec: SessionSpec,
    },
    SnapshotDone {
        request: u64,
        sessions: u32,
        /// The highest session id any `AddSession` this process received carried, whether
        /// the session was added, refused or has ended since (0: none). A control plane
        /// that attaches later hands out ids above it, so no id (a deleted session's
        /// included) is handed out twice while this data plane runs. Across a data plane
        /// restart the running control plane keeps counting; only a restart of both
        /// processes starts again at 1, when no session of before is left (and the
        /// Location of one of them still ends nothing: its secret is not the new one's).
        highest_id: SessionId,
    },
    /// One packet of the group a [`Command::FetchGroup`] asked for: the whole RTP packet,
    /// decrypted, as the publisher sent it.
    GroupPacket {
        request: u64,
        packet: Vec<u8>,
    },
    /// The end of a [`Command::FetchGroup`]'s answer: the track's codec and how many
    /// packets came, or why there is no group.
    GroupDone {
        request: u64,
        result: Result<(VideoCodec, u32), NoGroup>,
    },
}

/// Encoding or decoding a message failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message does not fit in {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encode into `buf` (cleared first); errors if the result exceeds [`MAX_MESSAGE`].
pub fn encode<T: Serialize>(msg: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    buf.clear();
    let out = postcard::to_extend(msg, std::mem::take(buf))?;
    *buf = out;
    if buf.len() > MAX_MESSAGE {
        return Err(CodecError::TooLarge);
    }
    Ok(())
}

/// Decode one message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    Ok(postcard::from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SessionSpec {
        SessionSpec {
            id: SessionId(7),
            worker: 1,
            stream: "room/cam".into(),
            role: Role::Subscriber {
                ssrcs: vec![1, 2, 3, 4],
                payload_types: vec![(96, 100)],
                extensions: None,
                rtx: Vec::new(),
                tracks: ALL_TRACKS,
            },
            remote: Some("127.0.0.1:5000".parse().expect("literal")),
            keying: Keying::Static(SrtpKeys {
                profile: SrtpProfile::AeadAes128Gcm,
                remote: vec![1; 28],
                local: vec![2; 28],
            }),
            ice: None,
            twcc_ext: None,
            created_ms: 1,
            control: Opaque::default(),
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        let cmd = Command::AddSession(spec());
        encode(&cmd, &mut buf).expect("encode");
        assert!(buf.len() < 200, "spec is {} bytes", buf.len());
        let back: Command = decode(&buf).expect("decode");
        assert_eq!(back, cmd);
    }

    #[test]
    fn relay_roles_round_trip() {
        let mut buf = Vec::new();
        for role in [
            Role::RelayIn {
                ssrcs: Vec::new(),
                simulcast: None,
                video: Vec::new(),
            },
            Role::RelayIn {
                ssrcs: vec![1, 2],
                simulcast: None,
                video: vec![None, Some(VideoCodec::Vp9(98)), Some(VideoCodec::Av1(45))],
            },
            Role::RelayOut,
        ] {
            assert!(role.is_relay());
            let cmd = Command::AddSession(SessionSpec { role, ..spec() });
            encode(&cmd, &mut buf).expect("encode");
            assert_eq!(decode::<Command>(&buf).expect("decode"), cmd);
        }
        assert!(!spec().role.is_relay());
    }

    #[test]
    fn garbage_is_an_error() {
        for bytes in [
            &[][..],
            &[0xff; 3][..],
            &[0, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            assert!(decode::<Command>(bytes).is_err());
        }
    }

    #[test]
    fn plain_keying_and_track_mask_round_trip() {
        let mut s = spec();
        s.keying = Keying::Plain;
        if let Role::Subscriber { tracks, .. } = &mut s.role {
            *tracks = 0b10;
        }
        let mut buf = Vec::new();
        let cmd = Command::AddSession(s);
        encode(&cmd, &mut buf).expect("encode");
        assert_eq!(decode::<Command>(&buf).expect("decode"), cmd);
        assert_eq!(ALL_TRACKS, 0b1111);
        assert!(Keying::Plain.keys().is_none());
    }

    #[test]
    fn debug_hides_keys() {
        let s = format!("{:?}", spec().keying);
        assert!(!s.contains("remote"), "{s}");
    }

    #[test]
    fn control_bytes_round_trip_and_stay_out_of_logs() {
        let spec = SessionSpec {
            control: Opaque(vec![0xab; 40]),
            ..spec()
        };
        assert_eq!(format!("{:?}", spec.control), "Opaque(40 bytes)");
        let mut buf = Vec::new();
        let ev = Event::SnapshotSession { request: 3, spec };
        encode(&ev, &mut buf).expect("encode");
        assert_eq!(decode::<Event>(&buf).expect("decode"), ev);
    }

    #[test]
    fn ice_credentials_round_trip_and_debug_hides_both_passwords() {
        let ice = IceCredentials {
            local_ufrag: "srv1".into(),
            local_pwd: "local-secret-0123456789ab".into(),
            remote_ufrag: "peer".into(),
            remote_pwd: "remote-secret-0123456789".into(),
        };
        let s = format!("{ice:?}");
        assert!(s.contains("srv1") && s.contains("peer"), "{s}");
        assert!(!s.contains("secret"), "{s}");
        let mut buf = Vec::new();
        let cmd = Command::AddSession(SessionSpec {
            ice: Some(ice),
            ..spec()
        });
        encode(&cmd, &mut buf).expect("encode");
        assert_eq!(decode::<Command>(&buf).expect("decode"), cmd);
    }
}
