//! Per-worker counters in shared memory.
//!
//! Each worker owns one cache-line-aligned block of `AtomicU64`s and only ever adds to its
//! own (relaxed stores, no contention, no syscalls); the control plane maps the same file and
//! reads every block for `/metrics`. Because the file outlives either process, counters
//! survive a control-plane restart, and a data-plane restart is visible as a new `boot`.
//!
//! Layout (`#[repr(C)]`, little-endian host order): a [`Header`], then `workers` blocks of
//! [`WorkerCounters`], then `workers × slots` [`SessionSlot`]s (worker 0's first). The
//! version field changes whenever the layout does.
//!
//! Session slots: a worker's slot `i` belongs to the session at index `i` of its session
//! slab, so the hot path finds it by the index it already holds, never by a lookup. The
//! slot is one cache line written only by the owning worker; it carries the session id, so
//! a reader that finds another id (or 0) knows the slot was reused (or is free). Sized once
//! from `media.max_sessions_per_worker` (64 B each: 256 KiB per worker at 4096).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

const MAGIC: u64 = u64::from_le_bytes(*b"SWYSTATS");
/// Bump when [`Counter`] or the layout changes.
pub const VERSION: u32 = 12;

/// Every counter a worker keeps. Counters ending in `Drop*` are per-reason packet drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    RxPackets,
    RxBytes,
    TxPackets,
    TxBytes,
    /// RTP packets sent to subscribers (after rewrite and protect).
    Forwarded,
    /// Packets handed to another worker's queue (one per packet per worker, not per subscriber).
    CrossWorkerOut,
    CrossWorkerIn,
    NacksReceived,
    Retransmitted,
    PliForwarded,
    PliThrottled,
    /// Gauge: live sessions on this worker.
    Sessions,
    /// Gauge: kernel receive-queue drops on this worker's socket (SO_RXQ_OVFL, cumulative).
    KernelRxDrops,
    /// Loop turns; with RxPackets it gives the mean receive batch.
    LoopTurns,
    /// Media and data channel packets received on relay links (authenticated, each copy
    /// once).
    RelayRxPackets,
    /// Media and data channel packets sent over relay links (each copy once,
    /// retransmissions included).
    RelayTxPackets,
    /// Sequence numbers a relay-in session NACKed upstream over its link (each try counts).
    RelayNacksSent,
    /// Data channel messages received from peers (publishers and subscribers). Written by
    /// the slow path, into the block of the session's worker; the worker never writes it,
    /// so each of these three still has a single writer.
    DataChannelIn,
    /// Data channel messages sent to subscribers.
    DataChannelOut,
    /// Data channel messages not delivered: from subscribers, on unknown channels, over a
    /// full queue or a subscriber's full send buffer (one per subscriber that missed it).
    DataChannelDropped,
    /// Data channel events (open, message, close) sent over relay links, one per link.
    /// Written by the slow path, like the three above.
    RelayDataOut,
    /// Data channel events received over relay links and handed to the hub.
    RelayDataIn,
    /// Events for the slow path the worker did not queue because a newer one replaces
    /// them: an ICE session's address moved again before the last move was handed on, or
    /// the session was removed first.
    WorkerEventsCoalesced,
    /// Events for the control plane the slow path did not put in the ring because a newer
    /// one replaces them (a session's latest address, a newer snapshot) or their session
    /// ended first. Written by the slow path, like `DataChannelIn`.
    RingEventsCoalesced,
    /// Trial SRTP decryptions of unknown-source datagrams against publishers waiting to
    /// latch (at most `MAX_LATCH_TRIALS` per datagram).
    LatchTrials,
    /// Unknown-source datagrams not tried against waiting publishers because their source
    /// used up its latch budget (counted under `unknown_source` drops as well).
    LatchRefused,
    /// Gauge: ICE-TCP connections open on this worker.
    TcpConnections,
    /// ICE-TCP connections accepted.
    TcpAccepted,
    /// ICE-TCP connections closed at once: over the per-worker or per-address limit.
    TcpRefused,
    /// Packets received on ICE-TCP connections (also counted in `RxPackets`).
    TcpRxPackets,
    /// Packets sent on ICE-TCP connections (also counted in `TxPackets`).
    TcpTxPackets,
    /// Packets dropped because an ICE-TCP connection's output buffer was full (a peer that
    /// does not read fast enough).
    TcpTxDropped,
    /// Packets of a simulcast layer's RTX stream (repaired-rid) dropped: uplink repair is
    /// off (`media.uplink_nack`) or the rid names no layer, and they must not reach viewers
    /// as media.
    SimulcastRtxDropped,
    /// Simulcast layer switches made for viewers (at a keyframe of the new layer).
    LayerSwitches,
    /// Sequence numbers NACKed to WebRTC publishers (uplink repair; each try counts).
    UplinkNacksSent,
    /// RTX packets received from publishers whose uplink is repaired (padding-only ones
    /// included: they are counted for the bandwidth estimate, then dropped).
    UplinkRtxReceived,
    /// Publisher packets that filled a gap being NACKed (as RTX or as a late original),
    /// forwarded once.
    UplinkRecovered,
    /// Publisher sequence numbers given up after the last NACK (a PLI follows, throttled).
    UplinkUnrecovered,
    /// `UDP_SEGMENT` messages sent (two datagrams or more each).
    GsoMessages,
    /// Datagrams sent inside `UDP_SEGMENT` messages.
    GsoSegments,
    /// Segmented messages the kernel refused (sent again one datagram each; the destination
    /// is not segmented again).
    GsoRefused,
    /// Coalesced buffers received on the relay socket (`UDP_GRO`, two datagrams or more).
    GroBuffers,
    /// Datagrams walked out of them.
    GroSegments,
    /// Histogram `tx_segments_per_message`: messages sent by the datagrams they carried,
    /// ≤ 1, 2, 4, 8, 16, 32, 64, more ([`SEGMENT_BUCKETS`]); the sum is `TxDatagrams`.
    TxSegments1,
    TxSegments2,
    TxSegments4,
    TxSegments8,
    TxSegments16,
    TxSegments32,
    TxSegments64,
    TxSegmentsInf,
    /// Datagrams sent on the UDP sockets (the histogram's sum).
    TxDatagrams,
    /// Histogram `tx_destination_batch`: per destination and send plan, the datagrams it had
    /// queued (what segmentation could at best join), same buckets; the sum is
    /// `TxBatchDatagrams`.
    TxBatch1,
    TxBatch2,
    TxBatch4,
    TxBatch8,
    TxBatch16,
    TxBatch32,
    TxBatch64,
    TxBatchInf,
    TxBatchDatagrams,
    /// Bandwidth probes sent to viewers (padding bursts on their RTX stream).
    BweProbes,
    /// Probes whose feedback showed the path carrying a rate (the estimate rose to it, or
    /// to what the path showed).
    BweProbesCarried,
    /// Probes lost in good part, or answered by no feedback.
    BweProbesFailed,
    /// Groups (tracks, or simulcast layers) a new subscriber was started from (the packets
    /// since the publisher's last keyframe), not from a keyframe request.
    LateJoinStarts,
    /// Packets of those groups sent.
    LateJoinPackets,
    /// Replays that could not finish (the live edge outran the cache, a queue was full):
    /// the subscriber was asked a keyframe for instead.
    LateJoinAborted,
    /// New subscribers not started from the cached group because the worker had its most
    /// replays under way (the data plane's `prime::MAX_REPLAYS`); they ask for a keyframe
    /// instead.
    LateJoinBusy,
    // Drop reasons, in DropReason order.
    DropOversize,
    DropMalformed,
    DropUnknownSource,
    DropSrtpAuth,
    DropReplay,
    DropStun,
    DropDtls,
    DropUnknownKind,
    DropQueueFull,
    DropSendFailed,
    DropNoRoute,
    DropRelayUnauthenticated,
}

impl Counter {
    pub const COUNT: usize = Counter::DropRelayUnauthenticated as usize + 1;

    pub const ALL: [Counter; Counter::COUNT] = [
        Counter::RxPackets,
        Counter::RxBytes,
        Counter::TxPackets,
        Counter::TxBytes,
        Counter::Forwarded,
        Counter::CrossWorkerOut,
        Counter::CrossWorkerIn,
        Counter::NacksReceived,
        Counter::Retransmitted,
        Counter::PliForwarded,
        Counter::PliThrottled,
        Counter::Sessions,
        Counter::KernelRxDrops,
        Counter::LoopTurns,
        Counter::RelayRxPackets,
        Counter::RelayTxPackets,
        Counter::RelayNacksSent,
        Counter::DataChannelIn,
        Counter::DataChannelOut,
        Counter::DataChannelDropped,
        Counter::RelayDataOut,
        Counter::RelayDataIn,
        Counter::WorkerEventsCoalesced,
        Counter::RingEventsCoalesced,
        Counter::LatchTrials,
        Counter::LatchRefused,
        Counter::TcpConnections,
        Counter::TcpAccepted,
        Counter::TcpRefused,
        Counter::TcpRxPackets,
        Counter::TcpTxPackets,
        Counter::TcpTxDropped,
        Counter::SimulcastRtxDropped,
        Counter::LayerSwitches,
        Counter::UplinkNacksSent,
        Counter::UplinkRtxReceived,
        Counter::UplinkRecovered,
        Counter::UplinkUnrecovered,
        Counter::GsoMessages,
        Counter::GsoSegments,
        Counter::GsoRefused,
        Counter::GroBuffers,
        Counter::GroSegments,
        Counter::TxSegments1,
        Counter::TxSegments2,
        Counter::TxSegments4,
        Counter::TxSegments8,
        Counter::TxSegments16,
        Counter::TxSegments32,
        Counter::TxSegments64,
        Counter::TxSegmentsInf,
        Counter::TxDatagrams,
        Counter::TxBatch1,
        Counter::TxBatch2,
        Counter::TxBatch4,
        Counter::TxBatch8,
        Counter::TxBatch16,
        Counter::TxBatch32,
        Counter::TxBatch64,
        Counter::TxBatchInf,
        Counter::TxBatchDatagrams,
        Counter::BweProbes,
        Counter::BweProbesCarried,
        Counter::BweProbesFailed,
        Counter::LateJoinStarts,
        Counter::LateJoinPackets,
        Counter::LateJoinAborted,
        Counter::LateJoinBusy,
        Counter::DropOversize,
        Counter::DropMalformed,
        Counter::DropUnknownSource,
        Counter::DropSrtpAuth,
        Counter::DropReplay,
        Counter::DropStun,
        Counter::DropDtls,
        Counter::DropUnknownKind,
        Counter::DropQueueFull,
        Counter::DropSendFailed,
        Counter::DropNoRoute,
        Counter::DropRelayUnauthenticated,
    ];

    /// Prometheus-style name (without the `switchyard_` prefix).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::RxPackets => "rx_packets_total",
            Counter::RxBytes => "rx_bytes_total",
            Counter::TxPackets => "tx_packets_total",
            Counter::TxBytes => "tx_bytes_total",
            Counter::Forwarded => "forwarded_packets_total",
            Counter::CrossWorkerOut => "cross_worker_out_total",
            Counter::CrossWorkerIn => "cross_worker_in_total",
            Counter::NacksReceived => "nacks_received_total",
            Counter::Retransmitted => "retransmitted_packets_total",
            Counter::PliForwarded => "pli_forwarded_total",
            Counter::PliThrottled => "pli_throttled_total",
            Counter::Sessions => "sessions",
            Counter::KernelRxDrops => "kernel_rx_drops_total",
            Counter::LoopTurns => "loop_turns_total",
            Counter::RelayRxPackets => "relay_rx_packets_total",
            Counter::RelayTxPackets => "relay_tx_packets_total",
            Counter::RelayNacksSent => "relay_nacks_sent_total",
            Counter::DataChannelIn => "datachannel_messages_in_total",
            Counter::DataChannelOut => "datachannel_messages_out_total",
            Counter::DataChannelDropped => "datachannel_messages_dropped_total",
            Counter::RelayDataOut => "relay_datachannel_events_out_total",
            Counter::RelayDataIn => "relay_datachannel_events_in_total",
            Counter::WorkerEventsCoalesced => "worker_events_coalesced_total",
            Counter::RingEventsCoalesced => "ring_events_coalesced_total",
            Counter::LatchTrials => "latch_trials_total",
            Counter::LatchRefused => "latch_refused_total",
            Counter::TcpConnections => "tcp_connections",
            Counter::TcpAccepted => "tcp_accepted_total",
            Counter::TcpRefused => "tcp_refused_total",
            Counter::TcpRxPackets => "tcp_rx_packets_total",
            Counter::TcpTxPackets => "tcp_tx_packets_total",
            Counter::TcpTxDropped => "tcp_tx_dropped_total",
            Counter::SimulcastRtxDropped => "simulcast_rtx_dropped_total",
            Counter::LayerSwitches => "layer_switches_total",
            Counter::UplinkNacksSent => "uplink_nacks_sent_total",
            Counter::UplinkRtxReceived => "uplink_rtx_received_total",
            Counter::UplinkRecovered => "uplink_recovered_total",
            Counter::UplinkUnrecovered => "uplink_unrecovered_total",
            Counter::GsoMessages => "gso_messages_total",
            Counter::GsoSegments => "gso_segments_total",
            Counter::GsoRefused => "gso_refused_total",
            Counter::GroBuffers => "gro_buffers_total",
            Counter::GroSegments => "gro_segments_total",
            Counter::TxSegments1
            | Counter::TxSegments2
            | Counter::TxSegments4
            | Counter::TxSegments8
            | Counter::TxSegments16
            | Counter::TxSegments32
            | Counter::TxSegments64
            | Counter::TxSegmentsInf
            | Counter::TxDatagrams => "tx_segments_per_message",
            Counter::TxBatch1
            | Counter::TxBatch2
            | Counter::TxBatch4
            | Counter::TxBatch8
            | Counter::TxBatch16
            | Counter::TxBatch32
            | Counter::TxBatch64
            | Counter::TxBatchInf
            | Counter::TxBatchDatagrams => "tx_destination_batch",
            Counter::BweProbes => "bwe_probes_total",
            Counter::BweProbesCarried => "bwe_probes_carried_total",
            Counter::BweProbesFailed => "bwe_probes_failed_total",
            Counter::LateJoinStarts => "late_join_starts_total",
            Counter::LateJoinPackets => "late_join_packets_total",
            Counter::LateJoinAborted => "late_join_aborted_total",
            Counter::LateJoinBusy => "late_join_busy_total",
            _ => "drops_total",
        }
    }

    pub const fn is_gauge(self) -> bool {
        matches!(self, Counter::Sessions | Counter::TcpConnections)
    }

    /// Whether this counter is a bucket or the sum of one of the [`HISTOGRAMS`] (rendered
    /// as a histogram, not on its own).
    pub fn in_histogram(self) -> bool {
        HISTOGRAMS
            .iter()
            .any(|h| h.sum == self || h.buckets.contains(&self))
    }

    /// The drop reason label, for the drop counters.
    pub fn drop_reason(self) -> Option<DropReason> {
        DropReason::ALL
            .iter()
            .copied()
            .find(|r| r.counter() as usize == self as usize)
    }
}

/// Upper bounds of the send offload histograms' buckets (datagrams), `+Inf` after them.
pub const SEGMENT_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// A histogram kept as one counter per bucket (not cumulative) and one for the sum; the
/// count is the buckets' total.
#[derive(Clone, Copy, Debug)]
pub struct CounterHistogram {
    pub name: &'static str,
    pub help: &'static str,
    /// One per [`SEGMENT_BUCKETS`] bound, then `+Inf`.
    pub buckets: [Counter; 8],
    pub sum: Counter,
}

/// The per-worker histograms of the stats block.
pub const HISTOGRAMS: [CounterHistogram; 2] = [
    CounterHistogram {
        name: "tx_segments_per_message",
        help: "Messages sent on the UDP sockets by the datagrams they carried (more than 1: a UDP_SEGMENT message).",
        buckets: [
            Counter::TxSegments1,
            Counter::TxSegments2,
            Counter::TxSegments4,
            Counter::TxSegments8,
            Counter::TxSegments16,
            Counter::TxSegments32,
            Counter::TxSegments64,
            Counter::TxSegmentsInf,
        ],
        sum: Counter::TxDatagrams,
    },
    CounterHistogram {
        name: "tx_destination_batch",
        help: "Datagrams one destination had queued when a send was planned: what segmentation could at best join.",
        buckets: [
            Counter::TxBatch1,
            Counter::TxBatch2,
            Counter::TxBatch4,
            Counter::TxBatch8,
            Counter::TxBatch16,
            Counter::TxBatch32,
            Counter::TxBatch64,
            Counter::TxBatchInf,
        ],
        sum: Counter::TxBatchDatagrams,
    },
];

/// Why a worker dropped a datagram. Small and `Copy`: the hot path counts these, it never
/// formats them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Datagram larger than the 1500-byte MTU we forward.
    Oversize,
    /// Failed to parse as RTP/RTCP.
    Malformed,
    /// No session for the source address (and no comedia publisher it authenticates for).
    UnknownSource,
    /// SRTP/SRTCP authentication failed.
    SrtpAuth,
    /// SRTP replay check rejected the packet.
    Replay,
    /// STUN that this node does not answer (or malformed STUN).
    Stun,
    /// DTLS that this node does not expect.
    Dtls,
    /// First byte in no RFC 7983 range.
    UnknownKind,
    /// A bounded queue (cross-worker or send) was full.
    QueueFull,
    /// The kernel refused the send.
    SendFailed,
    /// RTCP feedback for an SSRC the node does not forward.
    NoRoute,
    /// Anything dropped on a relay socket for not coming from a relay link: an unknown
    /// source, a failed SRTP/SRTCP authentication, STUN, DTLS or an unknown kind.
    RelayUnauthenticated,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        DropReason::Oversize,
        DropReason::Malformed,
        DropReason::UnknownSource,
        DropReason::SrtpAuth,
        DropReason::Replay,
        DropReason::Stun,
        DropReason::Dtls,
        DropReason::UnknownKind,
        DropReason::QueueFull,
        DropReason::SendFailed,
        DropReason::NoRoute,
        DropReason::RelayUnauthenticated,
    ];

    pub const fn counter(self) -> Counter {
        match self {
            DropReason::Oversize => Counter::DropOversize,
            DropReason::Malformed => Counter::DropMalformed,
            DropReason::UnknownSource => Counter::DropUnknownSource,
            DropReason::SrtpAuth => Counter::DropSrtpAuth,
            DropReason::Replay => Counter::DropReplay,
            DropReason::Stun => Counter::DropStun,
            DropReason::Dtls => Counter::DropDtls,
            DropReason::UnknownKind => Counter::DropUnknownKind,
            DropReason::QueueFull => Counter::DropQueueFull,
            DropReason::SendFailed => Counter::DropSendFailed,
            DropReason::NoRoute => Counter::DropNoRoute,
            DropReason::RelayUnauthenticated => Counter::DropRelayUnauthenticated,
        }
    }

    /// The `reason` label in `/metrics`.
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::Oversize => "oversize",
            DropReason::Malformed => "malformed",
            DropReason::UnknownSource => "unknown_source",
            DropReason::SrtpAuth => "srtp_auth",
            DropReason::Replay => "replay",
            DropReason::Stun => "stun",
            DropReason::Dtls => "dtls",
            DropReason::UnknownKind => "unknown_kind",
            DropReason::QueueFull => "queue_full",
            DropReason::SendFailed => "send_failed",
            DropReason::NoRoute => "no_route",
            DropReason::RelayUnauthenticated => "relay_unauthenticated",
        }
    }
}

#[repr(C)]
struct Header {
    magic: u64,
    version: u32,
    workers: u32,
    /// Random per data-plane start.
    boot: AtomicU64,
    /// Session slots per worker.
    slots: u32,
    _pad32: u32,
    /// CLOCK_MONOTONIC (ns) when the file was made: both processes share that clock, so
    /// a packet time written by one is an age for the other.
    anchor_ns: u64,
    _pad: [u64; 3],
}

/// One worker's counters; 64-byte aligned so two workers never share a cache line.
#[repr(C, align(64))]
pub struct WorkerCounters {
    values: [AtomicU64; Counter::COUNT],
}

impl WorkerCounters {
    /// Add to a counter. Only the owning worker calls this, so a relaxed load+store is
    /// enough and avoids a locked read-modify-write on the hot path.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        let v = &self.values[c as usize];
        v.store(v.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn set(&self, c: Counter, n: u64) {
        self.values[c as usize].store(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn drop(&self, reason: DropReason) {
        self.add(reason.counter(), 1);
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("stats file {0}: {1}")]
    Io(String, std::io::Error),
    #[error("stats file is not a Switchyard stats file or has another layout version")]
    Incompatible,
    #[error("stats file {0} belongs to uid {1}, not to this process's uid {2}")]
    Owner(String, u32, u32),
}

/// Refuse a file another user owns: the counters steer the control plane's view.
fn check_owner(file: &File, path: &Path) -> Result<(), StatsError> {
    let uid = file
        .metadata()
        .map_err(|e| StatsError::Io(path.display().to_string(), e))?
        .uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if uid != me {
        return Err(StatsError::Owner(path.display().to_string(), uid, me));
    }
    Ok(())
}

/// A mapped stats file.
pub struct Stats {
    map: MmapMut,
    workers: usize,
    slots: usize,
    /// The `Instant` of the header's `anchor_ns` in this process.
    anchor: Instant,
    anchor_ns: u64,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("workers", &self.workers)
            .finish()
    }
}

const HEADER: usize = std::mem::size_of::<Header>();
const BLOCK: usize = std::mem::size_of::<WorkerCounters>();
const SLOT: usize = std::mem::size_of::<SessionSlot>();

/// CLOCK_MONOTONIC in nanoseconds, the clock `Instant` reads on Linux.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

impl Stats {
    /// Create the file for `workers` workers, replacing any earlier one; the data plane
    /// calls this at start, so counters begin at zero each boot.
    ///
    /// The new file is written beside the old one and renamed over it: a control plane
    /// still mapping the old inode keeps valid memory until it re-opens (truncating the
    /// file it maps would fault it with SIGBUS). Mode 0600; a symlink at either name is
    /// refused.
    /// `slots`: session slots per worker (the engine's `max_sessions`).
    pub fn create(
        path: &Path,
        workers: usize,
        slots: usize,
        boot: u64,
    ) -> Result<Self, StatsError> {
        let err = |e| StatsError::Io(path.display().to_string(), e);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.new", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(err)?;
        let len = HEADER + workers * BLOCK + workers * slots * SLOT;
        let made = file.set_len(len as u64).and_then(|()| {
            // SAFETY: the file was just created and sized to `len` and nobody else knows its
            // name yet. Zeroed memory is a valid value for every field.
            unsafe { MmapMut::map_mut(&file) }
        });
        let mut map = match made.and_then(|m| std::fs::rename(&tmp, path).map(|()| m)) {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(err(e));
            }
        };
        let anchor = Instant::now();
        let anchor_ns = monotonic_ns();
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            workers: workers as u32,
            boot: AtomicU64::new(boot),
            slots: slots as u32,
            _pad32: 0,
            anchor_ns,
            _pad: [0; 3],
        };
        // SAFETY: the mapping is page-aligned and at least HEADER bytes long; we are the only
        // writer during creation.
        unsafe { std::ptr::write(map.as_mut_ptr().cast::<Header>(), header) };
        Ok(Self {
            map,
            workers,
            slots,
            anchor,
            anchor_ns,
        })
    }

    /// Map an existing file (the control plane).
    pub fn open(path: &Path) -> Result<Self, StatsError> {
        let err = |e| StatsError::Io(path.display().to_string(), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(err)?;
        check_owner(&file, path)?;
        // SAFETY: see `create`; the length is checked against the header before use.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(err)?;
        if map.len() < HEADER {
            return Err(StatsError::Incompatible);
        }
        // SAFETY: length checked above; the mapping is page-aligned.
        let h = unsafe { &*map.as_ptr().cast::<Header>() };
        if h.magic != MAGIC || h.version != VERSION {
            return Err(StatsError::Incompatible);
        }
        let workers = h.workers as usize;
        let slots = h.slots as usize;
        if map.len() < HEADER + workers * BLOCK + workers * slots * SLOT {
            return Err(StatsError::Incompatible);
        }
        let anchor_ns = h.anchor_ns;
        let ago = Duration::from_nanos(monotonic_ns().saturating_sub(anchor_ns));
        let now = Instant::now();
        let anchor = now.checked_sub(ago).unwrap_or(now);
        Ok(Self {
            map,
            workers,
            slots,
            anchor,
            anchor_ns,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn boot(&self) -> u64 {
        self.header().boot.load(Ordering::Relaxed)
    }

    fn header(&self) -> &Header {
        // SAFETY: validated in create/open.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// Worker `i`'s counters, or `None` when out of range.
    pub fn worker(&self, i: usize) -> Option<&WorkerCounters> {
        if i >= self.workers {
            return None;
        }
        // SAFETY: HEADER is a multiple of 64 (asserted below) and the mapping is page-aligned,
        // so the block is aligned; the length was validated; AtomicU64 is valid for any bits.
        Some(unsafe {
            &*self
                .map
                .as_ptr()
                .add(HEADER + i * BLOCK)
                .cast::<WorkerCounters>()
        })
    }
}

impl Stats {
    /// Session slots per worker.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Slot `idx` of worker `w`, or `None` when out of range (a session beyond the slots
    /// simply has no counters).
    #[inline]
    pub fn session(&self, w: usize, idx: usize) -> Option<&SessionSlot> {
        if w >= self.workers || idx >= self.slots {
            return None;
        }
        let at = HEADER + self.workers * BLOCK + (w * self.slots + idx) * SLOT;
        // SAFETY: HEADER, BLOCK and SLOT are multiples of 64, so the slot is
        // aligned in the page-aligned mapping; `w` and `idx` are in range and the length
        // was checked in create/open; AtomicU64 is valid for any bits.
        Some(unsafe { &*self.map.as_ptr().add(at).cast::<SessionSlot>() })
    }

    /// `at` as the CLOCK_MONOTONIC nanoseconds a slot stores (see [`SessionSlot::received`]).
    #[inline]
    pub fn stamp(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.anchor).as_nanos() as u64;
        self.anchor_ns.saturating_add(since)
    }

    /// How long ago a slot's stamp was, on this host's monotonic clock.
    pub fn age(&self, stamp: u64) -> Duration {
        Duration::from_nanos(monotonic_ns().saturating_sub(stamp))
    }

    /// The counters of session `id` on worker `w`: a scan of the worker's slots (a few µs
    /// for 4096), done at API and scrape time only, so the ring protocol needs no slot
    /// number. `None`: no slot holds it (ended, or beyond the slots).
    pub fn find(&self, w: usize, id: u64) -> Option<SessionCounters> {
        (0..self.slots).find_map(|i| self.session(w, i)?.read(id))
    }

    /// Every live slot: (worker, session id, counters).
    pub fn live(&self) -> impl Iterator<Item = (usize, u64, SessionCounters)> + '_ {
        (0..self.workers).flat_map(move |w| {
            (0..self.slots).filter_map(move |i| {
                let slot = self.session(w, i)?;
                let id = slot.id();
                Some((w, id, slot.read(id)?))
            })
        })
    }
}

/// Fields of a [`SessionSlot`], by index.
#[repr(usize)]
enum Field {
    Id,
    RxPackets,
    RxBytes,
    TxPackets,
    TxBytes,
    /// Stamp ([`Stats::stamp`]) of the last authenticated datagram from the peer; 0: none.
    LastRx,
    NacksReceived,
    /// PLI/FIR: received in the low 32 bits, sent in the high 32. 2^32 keyframe requests
    /// is beyond any session's life.
    Plis,
    /// A viewer's bandwidth estimate in bits per second; 0: none.
    Estimate,
    /// The simulcast layer a viewer receives, per publisher track: 4 bits each (track `i`
    /// at bits `4i..4i+4`), 0xF where it receives none or the track has no layers.
    Layers,
    /// A relay-out's smoothed round-trip time over its link in microseconds; 0: none yet.
    /// (A field added in the slot's spare room: a file from a data plane without it reads
    /// 0 here, so the layout version stays.)
    Rtt,
    /// The highest VP8 temporal layer a viewer receives of each track's simulcast layer,
    /// packed as `Layers`; 0xF where it receives every one or the layer has none.
    Temporal,
}

/// Fields in a slot (two cache lines; the rest is room for later fields).
const FIELDS: usize = 16;

/// One session's counters: written only by the owning worker (relaxed load + store, like
/// [`WorkerCounters::add`]).
#[repr(C, align(64))]
pub struct SessionSlot {
    values: [AtomicU64; FIELDS],
}

impl SessionSlot {
    #[inline]
    fn add(&self, f: Field, n: u64) {
        let v = &self.values[f as usize];
        v.store(v.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    fn load(&self, f: Field) -> u64 {
        self.values[f as usize].load(Ordering::Relaxed)
    }

    /// Session `id` takes the slot: counters from zero, then the id (release), so a reader
    /// that sees the new id sees the zeros too.
    pub fn open(&self, id: u64) {
        for v in &self.values[1..] {
            v.store(0, Ordering::Relaxed);
        }
        self.values[Field::Layers as usize].store(u64::MAX, Ordering::Relaxed);
        self.values[Field::Temporal as usize].store(u64::MAX, Ordering::Relaxed);
        self.values[Field::Id as usize].store(id, Ordering::Release);
    }

    /// The session ended: the slot is free.
    pub fn close(&self) {
        self.values[Field::Id as usize].store(0, Ordering::Release);
    }

    /// The session id in the slot, 0 when free.
    pub fn id(&self) -> u64 {
        self.values[Field::Id as usize].load(Ordering::Acquire)
    }

    /// An authenticated datagram of `bytes` from the peer, received at `stamp`.
    #[inline]
    pub fn received(&self, bytes: usize, stamp: u64) {
        self.add(Field::RxPackets, 1);
        self.add(Field::RxBytes, bytes as u64);
        self.values[Field::LastRx as usize].store(stamp, Ordering::Relaxed);
    }

    /// A datagram of `bytes` sent to the peer.
    #[inline]
    pub fn sent(&self, bytes: usize) {
        self.add(Field::TxPackets, 1);
        self.add(Field::TxBytes, bytes as u64);
    }

    /// Sequence numbers the peer NACKed.
    pub fn nacked(&self, n: u64) {
        self.add(Field::NacksReceived, n);
    }

    /// A viewer's bandwidth estimate and the layer it receives of each track (`None`: none,
    /// or a track without layers).
    pub fn set_estimate(&self, bps: u64, layers: &[Option<u8>]) {
        self.values[Field::Estimate as usize].store(bps, Ordering::Relaxed);
        self.values[Field::Layers as usize].store(pack(layers), Ordering::Relaxed);
    }

    /// The highest VP8 temporal layer a viewer receives of each track (`None`: every one,
    /// or a track without temporal layers).
    pub fn set_temporal(&self, tids: &[Option<u8>]) {
        self.values[Field::Temporal as usize].store(pack(tids), Ordering::Relaxed);
    }

    /// A relay link's smoothed round-trip time, as its relay-out measured it last.
    pub fn set_rtt(&self, rtt: Duration) {
        let us = (rtt.as_micros() as u64).max(1);
        self.values[Field::Rtt as usize].store(us, Ordering::Relaxed);
    }

    /// Keyframe requests (PLI or FIR) from the peer.
    pub fn pli_received(&self, n: u32) {
        self.add(Field::Plis, u64::from(n));
    }

    /// A keyframe request sent to the peer (a publisher).
    pub fn pli_sent(&self) {
        self.add(Field::Plis, 1 << 32);
    }

    /// The counters, if the slot still belongs to `id` before and after reading them (a
    /// slot reused meanwhile reads as `None`, never as the new session's numbers).
    pub fn read(&self, id: u64) -> Option<SessionCounters> {
        if id == 0 || self.id() != id {
            return None;
        }
        let plis = self.load(Field::Plis);
        let last = self.load(Field::LastRx);
        let c = SessionCounters {
            rx_packets: self.load(Field::RxPackets),
            rx_bytes: self.load(Field::RxBytes),
            tx_packets: self.load(Field::TxPackets),
            tx_bytes: self.load(Field::TxBytes),
            nacks_received: self.load(Field::NacksReceived),
            plis_received: plis & 0xffff_ffff,
            plis_sent: plis >> 32,
            last_rx: (last != 0).then_some(last),
            estimate_bps: Some(self.load(Field::Estimate)).filter(|&e| e > 0),
            rtt: Some(self.load(Field::Rtt))
                .filter(|&us| us > 0)
                .map(Duration::from_micros),
            layers: unpack(self.load(Field::Layers)),
            temporal: unpack(self.load(Field::Temporal)),
        };
        (self.id() == id).then_some(c)
    }
}

/// Small per-track values, 4 bits each (track `i` at bits `4i..4i+4`), 0xF for `None`.
fn pack(values: &[Option<u8>]) -> u64 {
    let mut packed = u64::MAX;
    for (i, v) in values.iter().enumerate().take(16) {
        if let Some(v) = v {
            packed &= !(0xF << (4 * i));
            packed |= u64::from(*v & 0xF) << (4 * i);
        }
    }
    packed
}

/// [`pack`]'s first eight values back.
fn unpack(packed: u64) -> [Option<u8>; 8] {
    let mut l = [None; 8];
    for (i, v) in l.iter_mut().enumerate() {
        let n = ((packed >> (4 * i)) & 0xF) as u8;
        *v = (n != 0xF).then_some(n);
    }
    l
}

/// A copy of one session's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Authenticated RTP and RTCP datagrams from the peer.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Datagrams sent to the peer: media, retransmissions, RTCP (SR, PLI).
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Sequence numbers the peer NACKed.
    pub nacks_received: u64,
    pub plis_received: u64,
    pub plis_sent: u64,
    /// Stamp of the last authenticated datagram (see [`Stats::age`]); `None`: none yet.
    pub last_rx: Option<u64>,
    /// A viewer's bandwidth estimate (bits per second), where it has one.
    pub estimate_bps: Option<u64>,
    /// The simulcast layer a viewer receives per publisher track.
    pub layers: [Option<u8>; 8],
    /// The highest VP8 temporal layer it receives of each, where that is not every one.
    pub temporal: [Option<u8>; 8],
    /// A relay-out's smoothed round-trip time over its link (RTCP SR/RR); `None`: not
    /// measured (another role, or no sender report echoed yet).
    pub rtt: Option<Duration>,
}

const _: () = assert!(HEADER % 64 == 0);
const _: () = assert!(SLOT == 8 * FIELDS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_open_share_counters() {
        let dir = std::env::temp_dir().join(format!("swy-stats-{}", std::process::id()));
        let s = Stats::create(&dir, 3, 4, 42).expect("create");
        s.worker(1).expect("w1").add(Counter::RxPackets, 5);
        s.worker(2).expect("w2").drop(DropReason::SrtpAuth);
        let r = Stats::open(&dir).expect("open");
        assert_eq!(r.workers(), 3);
        assert_eq!(r.boot(), 42);
        assert_eq!(r.worker(1).expect("w1").get(Counter::RxPackets), 5);
        assert_eq!(r.worker(2).expect("w2").get(Counter::DropSrtpAuth), 1);
        assert!(r.worker(3).is_none());
        std::fs::remove_file(&dir).ok();
    }

    #[test]
    fn session_slots_carry_their_id() {
        let p = std::env::temp_dir().join(format!("swy-stats-slots-{}", std::process::id()));
        let w = Stats::create(&p, 2, 8, 1).expect("create");
        let slot = w.session(1, 7).expect("slot");
        assert!(w.session(1, 8).is_none() && w.session(2, 0).is_none());
        slot.open(42);
        let now = Instant::now();
        slot.received(100, w.stamp(now));
        slot.sent(60);
        slot.sent(40);
        slot.nacked(3);
        slot.pli_received(1);
        slot.pli_sent();
        slot.pli_sent();
        let r = Stats::open(&p).expect("open");
        let c = r.find(1, 42).expect("found");
        assert_eq!(
            (c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes),
            (1, 100, 2, 100)
        );
        assert_eq!((c.nacks_received, c.plis_received, c.plis_sent), (3, 1, 2));
        assert_eq!(c.rtt, None);
        slot.set_rtt(Duration::from_micros(42_250));
        assert_eq!(
            r.find(1, 42).expect("found").rtt,
            Some(Duration::from_micros(42_250))
        );
        let age = r.age(c.last_rx.expect("stamped"));
        assert!(age < Duration::from_secs(5), "{age:?}");
        assert!(r.find(0, 42).is_none());
        assert_eq!(
            r.live().map(|(w, id, _)| (w, id)).collect::<Vec<_>>(),
            [(1, 42)]
        );
        // Reused: the old id reads nothing, the new one starts from zero.
        slot.close();
        slot.open(43);
        assert!(r.find(1, 42).is_none());
        assert_eq!(r.find(1, 43).expect("new").rx_packets, 0);
        std::fs::remove_file(&p).ok();
    }
    #[test]
    fn a_viewers_layers_and_temporal_layers_read_back_per_track() {
        let p = std::env::temp_dir().join(format!("swy-stats-tl-{}", std::process::id()));
        let w = Stats::create(&p, 1, 4, 1).expect("create");
        let slot = w.session(0, 2).expect("slot");
        slot.open(9);
        let c = slot.read(9).expect("counters");
        assert_eq!(
            (c.layers, c.temporal),
            ([None; 8], [None; 8]),
            "none until set"
        );
        slot.set_estimate(800_000, &[None, Some(2)]);
        slot.set_temporal(&[None, Some(0)]);
        let c = slot.read(9).expect("counters");
        assert_eq!(c.estimate_bps, Some(800_000));
        assert_eq!(&c.layers[..3], &[None, Some(2), None]);
        assert_eq!(&c.temporal[..3], &[None, Some(0), None]);
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn reasons_map_to_distinct_counters() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.counter().drop_reason(), Some(*r));
            assert_eq!(
                r.counter() as usize,
                Counter::DropOversize as usize + i,
                "DropReason and Counter order differ"
            );
        }
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    /// Issue 9: re-creating the file must not truncate the inode a control plane maps (a
    /// SIGBUS window), must be private to the node's user and refuse symlinks.
    #[test]
    fn recreate_leaves_the_old_mapping_valid_and_is_private() {
        let p = std::env::temp_dir().join(format!("swy-stats-re-{}", std::process::id()));
        let first = Stats::create(&p, 2, 4, 1).expect("create");
        first.worker(1).expect("w1").add(Counter::RxPackets, 3);
        let reader = Stats::open(&p).expect("open");
        let _second = Stats::create(&p, 1, 4, 2).expect("re-create, smaller");
        // The reader's pages are still the old file's: readable, unchanged.
        assert_eq!(reader.worker(1).expect("w1").get(Counter::RxPackets), 3);
        assert_eq!(reader.boot(), 1);
        assert_eq!(Stats::open(&p).expect("reopen").boot(), 2);
        let mode = std::fs::metadata(&p).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let link = p.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&p, &link).expect("symlink");
        assert!(matches!(Stats::open(&link), Err(StatsError::Io(..))));
        std::fs::remove_file(&link).ok();
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn garbage_file_is_rejected() {
        let p = std::env::temp_dir().join(format!("swy-stats-bad-{}", std::process::id()));
        std::fs::write(&p, [7u8; 4096]).expect("write");
        assert!(matches!(Stats::open(&p), Err(StatsError::Incompatible)));
        std::fs::remove_file(&p).ok();
    }
}
