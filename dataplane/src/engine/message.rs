//! What goes in and out of an engine: commands from the slow path, events back to it,
//! messages between workers, and the [`Output`] an engine sends through.

use std::net::{IpAddr, SocketAddr};

use switchyard_shared::command::{
    CommandError, IceCredentials, SessionId, Simulcast, SrtpKeys, UplinkTrack, MAX_TRACKS,
};

use super::pool::Handle;
use super::session::SessionKey;
use crate::via::Via;
use crate::worker_set::WorkerSet;

/// Dense per-node stream index assigned by the slow path (stream names stay off the hot path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// Slow path → worker.
#[derive(Debug)]
pub enum WorkerCommand {
    AddPublisher {
        id: SessionId,
        stream: StreamId,
        remote: Option<SocketAddr>,
        ssrcs: Vec<u32>,
        /// RTP clock rate of `ssrcs[i]`; missing or 0: unknown (jitter reported as 0).
        clock_rates: Vec<u32>,
        /// Transport-wide-cc extension id: send this publisher transport-cc feedback.
        twcc_ext: Option<u8>,
        /// `None` until DTLS-SRTP delivers them ([`WorkerCommand::SetKeys`]).
        srtp: Option<SrtpKeys>,
        ice: Option<IceCredentials>,
        /// A simulcast publisher: its (track, layer) map; `ssrcs` is then ignored.
        simulcast: Option<Simulcast>,
        /// Uplink repair per track (`Role::Publisher::uplink`); empty: none.
        uplink: Vec<UplinkTrack>,
    },
    AddSubscriber {
        id: SessionId,
        stream: StreamId,
        /// `None` only with `ice`: the address comes from the first valid check.
        remote: Option<SocketAddr>,
        ssrcs: [u32; MAX_TRACKS],
        /// Publisher → subscriber payload types (validated < 128 by the slow path).
        payload_types: Vec<(u8, u8)>,
        /// Header extension id table (`rtp::remap_extensions`); `None`: unchanged.
        extensions: Option<[u8; 16]>,
        /// Per track: the subscriber's RTX SSRC and payload type, where it negotiated RTX.
        rtx: [Option<(u32, u8)>; MAX_TRACKS],
        /// Tracks it receives: bit `i` = publisher track `i`.
        tracks: u8,
        /// Plain RTP egress: no SRTP (`srtp` and `ice` must be `None`, `remote` set).
        plain: bool,
        srtp: Option<SrtpKeys>,
        ice: Option<IceCredentials>,
    },
    /// This node's end of a relay link: the publisher of `stream` here, fed by another
    /// node's relay-out over this worker's relay socket (see `Role::RelayIn`).
    AddRelayIn {
        id: SessionId,
        stream: StreamId,
        /// The far node's relay socket; `None` latches the first authenticated source.
        remote: Option<SocketAddr>,
        /// The publisher's SSRCs in track order (at most `MAX_TRACKS`); tracks not given are
        /// learned from packets in arrival order.
        ssrcs: Vec<u32>,
        /// The per-link key: `remote` unprotects the link's media, `local` protects the
        /// NACK/PLI sent back.
        srtp: SrtpKeys,
        /// The source publisher's simulcast map: layers are told apart as a publisher's are.
        simulcast: Option<Simulcast>,
    },
    /// Relay-in `id` gets a new source (see `Command::RetargetRelayIn`): new link key and
    /// the new source publisher's SSRCs and layers; the address is latched again.
    RetargetRelayIn {
        id: SessionId,
        ssrcs: Vec<u32>,
        srtp: SrtpKeys,
        simulcast: Option<Simulcast>,
    },
    /// A subscriber of `stream` that forwards it unchanged to another node's relay socket
    /// from this worker's relay socket (see `Role::RelayOut`).
    AddRelayOut {
        id: SessionId,
        stream: StreamId,
        remote: SocketAddr,
        srtp: SrtpKeys,
    },
    /// WebRTC subscriber `id` negotiated transport-cc on header extension `twcc_ext`:
    /// number what it is sent and estimate its bandwidth from its feedback.
    EnableBwe {
        id: SessionId,
        twcc_ext: u8,
    },
    /// Publisher or relay-in `id`: per track, its video codec (keyframes for the late
    /// joiners' cache; VP9 and AV1 layers viewers get selectively, `svc`); `None` for other
    /// tracks.
    SetVideo {
        id: SessionId,
        codecs: [Option<switchyard_shared::command::VideoCodec>;
            switchyard_shared::command::MAX_TRACKS],
    },
    /// Subscriber `id` takes simulcast layers up to rank `max_layer` (`u8::MAX`: no cap).
    SetMaxLayer {
        id: SessionId,
        max_layer: u8,
    },
    /// Subscriber `id` takes VP8 temporal layers up to `max_temporal` (`u8::MAX`: no cap).
    SetMaxTemporal {
        id: SessionId,
        max_temporal: u8,
    },
    Remove {
        id: SessionId,
    },
    /// SRTP keys negotiated by DTLS: media can flow.
    SetKeys {
        id: SessionId,
        keys: SrtpKeys,
    },
    /// A datagram from the slow path (a DTLS flight) for the session's peer.
    SendRaw {
        id: SessionId,
        data: Vec<u8>,
    },
    /// Sent to the publisher's worker: the workers that have subscribers of `stream` (the
    /// publisher's own worker may be among them; it serves those itself).
    SetRemoteWorkers {
        stream: StreamId,
        workers: WorkerSet,
    },
    /// Sent to subscribers' workers: where the stream's publisher runs now.
    SetPublisherWorker {
        stream: StreamId,
        worker: Option<u16>,
    },
    /// One data channel frame's fragments (`datachan::relay` payloads) for relay-out `id`
    /// to send over its link, in order.
    RelayData {
        id: SessionId,
        fragments: Vec<Vec<u8>>,
    },
    /// Copy out the cached group of track `track` of publisher (or relay-in) `id`
    /// (`Command::FetchGroup`); answered by [`WorkerEvent::Group`].
    FetchGroup {
        request: u64,
        id: SessionId,
        track: u8,
    },
}

/// Worker → slow path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerEvent {
    Added {
        id: SessionId,
    },
    Failed {
        id: SessionId,
        error: CommandError,
    },
    Removed {
        id: SessionId,
    },
    Latched {
        id: SessionId,
        remote: SocketAddr,
    },
    /// An ICE session's consent lapsed (RFC 7675); the slow path removes it.
    ConsentExpired {
        id: SessionId,
    },
    /// A DTLS record from the session's ICE-validated address, for the slow path.
    Dtls {
        id: SessionId,
        data: Vec<u8>,
    },
    /// An authenticated data channel fragment that relay-in `id` received over its link:
    /// its RTP sequence number and payload (`datachan::relay` format), for the slow path.
    RelayData {
        id: SessionId,
        seq: u16,
        payload: Vec<u8>,
    },
    /// The answer to a [`WorkerCommand::FetchGroup`]: the track's codec and its group's
    /// packets (whole RTP, decrypted, in order), or why there is none.
    Group {
        request: u64,
        result: Result<
            (switchyard_shared::command::VideoCodec, Vec<Vec<u8>>),
            switchyard_shared::command::NoGroup,
        >,
    },
}

/// Worker → worker.
#[derive(Debug)]
pub enum Inbound {
    /// A decrypted packet for this worker's subscribers of `packet.stream`.
    Media(Handle),
    /// A cached packet to retransmit to one subscriber here.
    Retransmit { session: SessionKey, packet: Handle },
    /// A subscriber on worker `from` lost `seq` (publisher numbering) of `stream`/`slot`
    /// (the track, or the simulcast layer it receives: `layers::slot`).
    Nack {
        from: u16,
        session: SessionKey,
        stream: StreamId,
        slot: u8,
        seq: u16,
    },
    /// A subscriber wants a keyframe of `stream`/`slot` (see `Nack`).
    Pli { stream: StreamId, slot: u8 },
    /// The publisher's sender report for `stream`/`track`, for subscribers here.
    SenderReport(SenderReport),
    /// A handle going home to the worker whose pool owns it.
    Return(Handle),
    /// Subscriber `session` on worker `from` can receive: the publisher's worker sends it
    /// the cached groups of `stream` (`prime`).
    Prime {
        from: u16,
        session: SessionKey,
        stream: StreamId,
        /// What the subscriber takes of simulcast tracks.
        choice: super::prime::Choice,
    },
    /// A packet of a cached group for subscriber `session` here.
    Replay { session: SessionKey, packet: Handle },
    /// The replay for `session` is over: its live packets flow again.
    PrimeDone { session: SessionKey },
}

/// A publisher's sender report, as each subscriber gets it under its own SSRC and timestamp
/// offset: the NTP ↔ RTP time pair is what lets a receiver synchronise audio and video.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderReport {
    pub stream: StreamId,
    pub track: u8,
    pub ntp: u64,
    pub rtp_ts: u32,
    pub packets: u32,
    pub octets: u32,
}

/// Why a send did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No free transmit buffer.
    Full,
    /// `fill` declined (protect failed).
    Cancelled,
}

/// Where the engine's output goes: the worker's sockets and the other workers' queues.
pub trait Output {
    /// Send one datagram to `dst` from the worker socket `via` names, written in place by
    /// `fill` into a buffer of at least `MAX_DATAGRAM + srtp::MAX_OVERHEAD` bytes; `fill`
    /// returns the length or `None` to cancel.
    fn send(
        &mut self,
        via: Via,
        dst: SocketAddr,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<(), SendError> {
        self.send_from(via, dst, None, fill)
    }

    /// [`Output::send`] from local address `from` (the session's `Session::local`, or the
    /// destination of the check a STUN answer answers); `None` leaves the choice to the kernel. A peer that sent to one of
    /// the node's addresses discards what comes back from another.
    fn send_from(
        &mut self,
        via: Via,
        dst: SocketAddr,
        from: Option<IpAddr>,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<(), SendError>;

    /// Queue a message to another worker; gives it back when that queue is full.
    fn to_worker(&mut self, worker: u16, msg: Inbound) -> Result<(), Inbound>;
}
