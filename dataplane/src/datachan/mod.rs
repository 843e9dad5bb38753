//! WebRTC data channels (RFC 8831, DCEP RFC 8832) on the slow path.
//!
//! Two halves, split the way the rest of the data plane is:
//!
//! - [`hub`]: sans-IO. Knows which session publishes or subscribes which stream, which
//!   channels each publisher has open, and which channel id each subscriber sees for them.
//!   Fed session events, drained of [`Delivery`]s. Its stream-level entry points
//!   ([`hub::Hub::open_channel`], [`hub::Hub::publish`], [`hub::Hub::close_channel`]) take a
//!   stream name and the publisher's channel key, so a relay link can feed messages from
//!   another node into the same fan-out.
//! - [`sctp`]: the SCTP association (webrtc-sctp) over one session's DTLS connection, run on
//!   the DTLS driver runtime inside the session's task. It turns what the peer does into
//!   [`DataEvent`]s and carries out [`DataCommand`]s. It knows nothing about streams.
//!
//! The node is the DTLS server, so it opens channels on odd SCTP stream ids (RFC 8832 §6)
//! and the browser on even ones. Channels must be opened in-band with DCEP; pre-negotiated
//! channels (`negotiated: true`) are not relayed.
//!
//! # Bounds
//!
//! Every queue is bounded: events from a session's task to the slow path wait when theirs
//! is full (so SCTP flow control slows a fast publisher down and nothing piles up in the
//! node); commands from the slow path to a session's task are dropped when theirs is full;
//! and a message is dropped rather than queued when it would take what the subscriber's
//! channels have queued and unacknowledged in SCTP beyond [`MAX_BUFFERED`]. Drops are
//! counted ([`DataCounts`]). A slow subscriber therefore loses messages; it never grows the
//! node's memory nor stalls its session's task.

#![forbid(unsafe_code)]

pub mod hub;
pub(crate) mod sctp;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// The largest message the node receives, which is what the SDP answer's
/// `a=max-message-size` says (browsers honour the peer's value). Every channel's reader
/// holds a buffer this large.
pub const MAX_MESSAGE: usize = switchyard_shared::command::DATA_CHANNEL_MAX_MESSAGE;

/// Channels one session may have open. Each costs a reader with a [`MAX_MESSAGE`] buffer;
/// applications use a handful. Further channels a peer opens are reset.
pub const MAX_CHANNELS: usize = 32;

/// Bytes a session's channels together may have queued and unacknowledged in SCTP before
/// further messages to it are dropped. webrtc-sctp's pending queue holds 128 KiB per
/// association and a write into a full one *waits* (which would stall the session's task,
/// and with it every command for that peer); staying 8 KiB below it leaves room for DCEP
/// and stream resets, so a send never waits. It also caps throughput to one peer at
/// 120 KiB per round trip, far above what data channel applications send.
pub const MAX_BUFFERED: usize = 120 * 1024;

/// Commands queued from the slow path to one session's task before further ones drop.
pub const COMMAND_QUEUE: usize = 256;

/// Events queued from one session's task to the slow path; the task waits when it is full.
pub const EVENT_QUEUE: usize = 256;

/// WebRTC payload protocol identifiers (RFC 8831 §8): kept end to end so a string stays a
/// string and an empty message stays empty.
pub mod ppid {
    pub const DCEP: u32 = 50;
    pub const STRING: u32 = 51;
    pub const BINARY: u32 = 53;
    pub const STRING_EMPTY: u32 = 56;
    pub const BINARY_EMPTY: u32 = 57;

    /// Whether `p` is a user-message PPID we forward.
    pub fn is_message(p: u32) -> bool {
        matches!(p, STRING | BINARY | STRING_EMPTY | BINARY_EMPTY)
    }
}

/// How a channel delivers (the DCEP channel type and reliability parameter, RFC 8832 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reliability {
    Reliable,
    /// At most this many retransmissions.
    Rexmit(u32),
    /// Retransmitted for at most this many milliseconds.
    Timed(u32),
}

/// A channel's parameters as the publisher opened it; subscribers' mirrors get the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelParams {
    pub label: String,
    pub protocol: String,
    pub ordered: bool,
    pub reliability: Reliability,
    pub priority: u16,
}

/// What a session's SCTP side reports to the slow path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataEvent {
    /// The SCTP association is established: channels can be opened towards the peer.
    Up,
    /// The peer opened a channel (DCEP DATA_CHANNEL_OPEN) on this SCTP stream id.
    Opened { channel: u16, params: ChannelParams },
    /// A user message on a channel; `ppid` is one of [`ppid::is_message`].
    Message {
        channel: u16,
        ppid: u32,
        payload: Bytes,
    },
    /// The peer reset the channel's stream.
    Closed { channel: u16 },
}

/// What the slow path asks a session's SCTP side to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataCommand {
    /// Open a channel on this (odd) SCTP stream id with DCEP.
    Open {
        channel: u16,
        params: ChannelParams,
    },
    Send {
        channel: u16,
        ppid: u32,
        payload: Bytes,
    },
    Close {
        channel: u16,
    },
}

/// One delivery the hub decided on: a [`DataCommand`] for a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub session: switchyard_shared::command::SessionId,
    pub command: DataCommand,
}

/// Messages a session's task sent and dropped since the slow path last looked; shared
/// between the task (which adds) and the slow path (which takes).
#[derive(Debug, Default)]
pub struct DataCounts {
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl DataCounts {
    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// (sent, dropped) since the last call, resetting both.
    pub fn take(&self) -> (u64, u64) {
        (
            self.sent.swap(0, Ordering::Relaxed),
            self.dropped.swap(0, Ordering::Relaxed),
        )
    }
}
