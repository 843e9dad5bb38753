//! One session's SCTP association (RFC 8261: SCTP over DTLS) and its data channels, run as
//! part of the session's task on the DTLS driver runtime (see `dtls`'s module doc for why a
//! runtime at all).
//!
//! The node is the SCTP server: it waits for the peer's INIT, so a session whose peer never
//! negotiated `m=application` keeps a passive association that sends nothing. Channels the
//! peer opens are accepted (DCEP OPEN answered with ACK by webrtc-data); channels the slow
//! path asks for are opened with DCEP OPEN. Every channel has a reader that turns the
//! peer's messages into [`DataEvent`]s, with the PPID as it came.
//!
//! Untrusted input: the peer controls everything read here. Nothing panics on it; a message
//! larger than [`MAX_MESSAGE`] (the peer ignored our `a=max-message-size`) is dropped and
//! counted, like anything else that cannot be delivered.

use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use webrtc_data::data_channel::{Config as ChannelConfig, DataChannel};
use webrtc_data::message::message_channel_open::ChannelType;
use webrtc_sctp::association::{Association, Config as AssociationConfig};
use webrtc_sctp::chunk::chunk_payload_data::PayloadProtocolIdentifier as Ppi;
use webrtc_sctp::stream::{ReliabilityType, Stream};
use webrtc_util::conn::Conn;

use super::{
    ppid, ChannelParams, DataCommand, DataCounts, DataEvent, Reliability, MAX_BUFFERED,
    MAX_CHANNELS, MAX_MESSAGE,
};

/// The association's receive window. It bounds what a peer can have in flight towards us
/// across all channels (readers that wait on a full event queue stop draining it, and SCTP
/// flow control then stops the peer). Four maximum-size messages.
const RECEIVE_BUFFER: u32 = 4 * MAX_MESSAGE as u32;

/// Largest SCTP packet read before the association exists (its first, usually an INIT);
/// webrtc-sctp reads into the same size.
const FIRST_PACKET: usize = 8192;

/// DCEP message type of DATA_CHANNEL_ACK (RFC 8832 §5.2).
const DCEP_ACK: u8 = 0x02;

/// The task's ends of a session's data channel plumbing.
pub(crate) struct Link {
    pub(crate) events: mpsc::Sender<DataEvent>,
    pub(crate) commands: mpsc::Receiver<DataCommand>,
    pub(crate) counts: Arc<DataCounts>,
}

/// Run the association over `conn` (the session's established DTLS connection) until the
/// peer goes away or the session drops its ends of `link`. The caller cuts `conn` off
/// afterwards (every read fails), which also stops the association's own loops if this
/// future is dropped early.
///
/// The association starts only when the peer sends its first SCTP packet: webrtc-sctp's
/// write task ends only when an association that got past its handshake closes, so one
/// started for a peer that never speaks SCTP (most viewers) would outlive its session,
/// with its task and the DTLS connection it holds (found by `scripts/soak.sh`).
pub(crate) async fn run(conn: Arc<dyn Conn + Send + Sync>, mut link: Link) {
    let mut first = vec![0u8; FIRST_PACKET];
    let n = match conn.recv(&mut first).await {
        Ok(n) => n,
        Err(_) => return,
    };
    first.truncate(n);
    let conn: Arc<dyn Conn + Send + Sync> = Arc::new(Replay {
        first: std::sync::Mutex::new(Some(first)),
        inner: conn,
    });
    let config = AssociationConfig {
        net_conn: conn,
        max_receive_buffer_size: RECEIVE_BUFFER,
        max_message_size: MAX_MESSAGE as u32,
        name: "switchyard".into(),
    };
    let assoc = match Association::server(config).await {
        Ok(a) => Arc::new(a),
        Err(e) => {
            tracing::debug!(error = %e, "SCTP association ended before it was established");
            return;
        }
    };
    if link.events.send(DataEvent::Up).await.is_ok() {
        serve(&assoc, &mut link).await;
    }
    let _ = assoc.close().await;
}

async fn serve(assoc: &Arc<Association>, link: &mut Link) {
    let mut channels: HashMap<u16, Arc<Stream>> = HashMap::new();
    let mut readers: JoinSet<u16> = JoinSet::new();
    loop {
        tokio::select! {
            accepted = assoc.accept_stream() => {
                let Some(stream) = accepted else { break };
                let id = stream.stream_identifier();
                if channels.len() >= MAX_CHANNELS || channels.contains_key(&id) {
                    let _ = stream.shutdown(Shutdown::Both).await;
                    continue;
                }
                channels.insert(id, Arc::clone(&stream));
                readers.spawn(read_channel(stream, None, link.events.clone(), Arc::clone(&link.counts)));
            }
            cmd = link.commands.recv() => {
                let Some(cmd) = cmd else { break };
                execute(assoc, &mut channels, &mut readers, cmd, link).await;
            }
            Some(done) = readers.join_next() => {
                if let Ok(id) = done {
                    channels.remove(&id);
                }
            }
        }
    }
}

async fn execute(
    assoc: &Arc<Association>,
    channels: &mut HashMap<u16, Arc<Stream>>,
    readers: &mut JoinSet<u16>,
    cmd: DataCommand,
    link: &Link,
) {
    match cmd {
        DataCommand::Open { channel, params } => {
            if channels.len() >= MAX_CHANNELS || channels.contains_key(&channel) {
                return;
            }
            let stream = match assoc.open_stream(channel, Ppi::Binary).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(channel, error = %e, "cannot open an SCTP stream");
                    return;
                }
            };
            // Sends DATA_CHANNEL_OPEN. Until the peer's ACK the stream stays ordered and
            // reliable (RFC 8832 §6); the reader applies `params` when the ACK comes.
            if let Err(e) = DataChannel::client(Arc::clone(&stream), config_of(&params)).await {
                tracing::debug!(channel, error = %e, "DCEP open failed");
                return;
            }
            channels.insert(channel, Arc::clone(&stream));
            readers.spawn(read_channel(
                stream,
                Some(params),
                link.events.clone(),
                Arc::clone(&link.counts),
            ));
        }
        DataCommand::Send {
            channel,
            ppid: p,
            payload,
        } => {
            let Some(stream) = channels.get(&channel) else {
                link.counts.dropped();
                return;
            };
            // A subscriber that does not keep up loses messages; its backlog never grows
            // beyond this, and the write below never waits on webrtc-sctp's full pending
            // queue (see MAX_BUFFERED). At most MAX_CHANNELS streams to add up.
            let buffered: usize = channels.values().map(|s| s.buffered_amount()).sum();
            if buffered + payload.len().max(1) > MAX_BUFFERED {
                link.counts.dropped();
                return;
            }
            // SCTP cannot send an empty user message: one zero byte with an *_EMPTY PPID,
            // which the receiver reads as empty (RFC 8831 §6.6).
            let (data, ppi) = match p {
                ppid::STRING_EMPTY => (Bytes::from_static(&[0]), Ppi::StringEmpty),
                ppid::BINARY_EMPTY => (Bytes::from_static(&[0]), Ppi::BinaryEmpty),
                ppid::STRING => (payload, Ppi::String),
                _ => (payload, Ppi::Binary),
            };
            match stream.write_sctp(&data, ppi).await {
                Ok(_) => link.counts.sent(),
                Err(e) => {
                    tracing::debug!(channel, error = %e, "data channel send failed");
                    link.counts.dropped();
                }
            }
        }
        DataCommand::Close { channel } => {
            if let Some(stream) = channels.remove(&channel) {
                // Resets the outgoing stream (RFC 8831 §6.7); the reader then ends.
                let _ = stream.shutdown(Shutdown::Both).await;
            }
        }
    }
}

/// Read one channel until it closes. `opened`: the parameters of a channel the node opened
/// (applied when the peer's DCEP ACK arrives); `None`: a channel the peer opens, whose
/// first message must be its DCEP OPEN. Returns the stream id so the owner can forget it.
async fn read_channel(
    stream: Arc<Stream>,
    opened: Option<ChannelParams>,
    events: mpsc::Sender<DataEvent>,
    counts: Arc<DataCounts>,
) -> u16 {
    let id = stream.stream_identifier();
    if opened.is_none() {
        // Reads the OPEN, answers ACK and applies the channel's reliability.
        match DataChannel::server(Arc::clone(&stream), ChannelConfig::default()).await {
            Ok(dc) => {
                let ev = DataEvent::Opened {
                    channel: id,
                    params: params_of(&dc.config),
                };
                if events.send(ev).await.is_err() {
                    return id;
                }
            }
            Err(e) => {
                tracing::debug!(channel = id, error = %e, "peer's channel did not start with DCEP OPEN");
                let _ = stream.shutdown(Shutdown::Both).await;
                return id;
            }
        }
    }
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, ppi) = match stream.read_sctp(&mut buf).await {
            Ok(r) => r,
            Err(webrtc_sctp::Error::ErrShortBuffer { .. }) => {
                counts.dropped();
                continue;
            }
            Err(e) => {
                tracing::debug!(channel = id, error = %e, "data channel read failed");
                break;
            }
        };
        let data = buf.get(..n).unwrap_or_default();
        let (p, payload) = match ppi {
            // Reset by the peer or shut down by us.
            Ppi::Unknown if n == 0 => break,
            Ppi::Dcep => {
                if let (Some(params), Some(&DCEP_ACK)) = (&opened, data.first()) {
                    apply(&stream, params);
                }
                continue;
            }
            Ppi::String => (ppid::STRING, Bytes::copy_from_slice(data)),
            Ppi::Binary => (ppid::BINARY, Bytes::copy_from_slice(data)),
            Ppi::StringEmpty => (ppid::STRING_EMPTY, Bytes::new()),
            Ppi::BinaryEmpty => (ppid::BINARY_EMPTY, Bytes::new()),
            // Deprecated partial-message PPIDs and unassigned ones.
            Ppi::Unknown => {
                counts.dropped();
                continue;
            }
        };
        let ev = DataEvent::Message {
            channel: id,
            ppid: p,
            payload,
        };
        // Waits while the slow path is behind: SCTP flow control then slows the peer.
        if events.send(ev).await.is_err() {
            return id;
        }
    }
    let _ = events.send(DataEvent::Closed { channel: id }).await;
    id
}

fn apply(stream: &Stream, p: &ChannelParams) {
    let (kind, value) = match p.reliability {
        Reliability::Reliable => (ReliabilityType::Reliable, 0),
        Reliability::Rexmit(n) => (ReliabilityType::Rexmit, n),
        Reliability::Timed(ms) => (ReliabilityType::Timed, ms),
    };
    stream.set_reliability_params(!p.ordered, kind, value);
}

fn config_of(p: &ChannelParams) -> ChannelConfig {
    let (channel_type, reliability_parameter) = match (p.ordered, p.reliability) {
        (true, Reliability::Reliable) => (ChannelType::Reliable, 0),
        (false, Reliability::Reliable) => (ChannelType::ReliableUnordered, 0),
        (true, Reliability::Rexmit(n)) => (ChannelType::PartialReliableRexmit, n),
        (false, Reliability::Rexmit(n)) => (ChannelType::PartialReliableRexmitUnordered, n),
        (true, Reliability::Timed(ms)) => (ChannelType::PartialReliableTimed, ms),
        (false, Reliability::Timed(ms)) => (ChannelType::PartialReliableTimedUnordered, ms),
    };
    ChannelConfig {
        channel_type,
        negotiated: false,
        priority: p.priority,
        reliability_parameter,
        label: p.label.clone(),
        protocol: p.protocol.clone(),
    }
}

fn params_of(c: &ChannelConfig) -> ChannelParams {
    let r = c.reliability_parameter;
    let (ordered, reliability) = match c.channel_type {
        ChannelType::Reliable => (true, Reliability::Reliable),
        ChannelType::ReliableUnordered => (false, Reliability::Reliable),
        ChannelType::PartialReliableRexmit => (true, Reliability::Rexmit(r)),
        ChannelType::PartialReliableRexmitUnordered => (false, Reliability::Rexmit(r)),
        ChannelType::PartialReliableTimed => (true, Reliability::Timed(r)),
        ChannelType::PartialReliableTimedUnordered => (false, Reliability::Timed(r)),
    };
    ChannelParams {
        label: c.label.clone(),
        protocol: c.protocol.clone(),
        ordered,
        reliability,
        priority: c.priority,
    }
}

/// A connection that yields `first` (read before the association existed) before anything
/// else it reads.
struct Replay {
    first: std::sync::Mutex<Option<Vec<u8>>>,
    inner: Arc<dyn Conn + Send + Sync>,
}

impl Replay {
    fn take_first(&self) -> Option<Vec<u8>> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[async_trait::async_trait]
impl Conn for Replay {
    async fn connect(&self, addr: std::net::SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        if let Some(first) = self.take_first() {
            let n = first.len().min(buf.len());
            buf[..n].copy_from_slice(&first[..n]);
            return Ok(n);
        }
        self.inner.recv(buf).await
    }

    async fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> webrtc_util::Result<(usize, std::net::SocketAddr)> {
        if self
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            let n = self.recv(buf).await?;
            let from = self
                .inner
                .remote_addr()
                .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
            return Ok((n, from));
        }
        self.inner.recv_from(buf).await
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(
        &self,
        buf: &[u8],
        target: std::net::SocketAddr,
    ) -> webrtc_util::Result<usize> {
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_parameters_survive_the_dcep_round_trip() {
        for ordered in [true, false] {
            for reliability in [
                Reliability::Reliable,
                Reliability::Rexmit(5),
                Reliability::Timed(250),
            ] {
                let p = ChannelParams {
                    label: "chat".into(),
                    protocol: "json".into(),
                    ordered,
                    reliability,
                    priority: 512,
                };
                assert_eq!(params_of(&config_of(&p)), p);
            }
        }
    }
}
