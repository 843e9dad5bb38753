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
use crate::packet::{self, Payload, PAYLOAD_HEADER, RTP_HEADER};
use crate::reflector::Reflector;
use crate::report::{Errors, GroupReport, JoinTimes, Latency, Report};
use crate::sys::{self, RecvBatch, MAX_BATCH};
use crate::timeline::{Lane, Timeline};
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
    /// Frame-shaped video instead of the steady `rate` (`crate::shape`).
    pub video: Option<crate::shape::VideoSpec>,
    /// An audio track (50 packets/s of 100–160 bytes) beside the video, or alone.
    pub audio: bool,
    /// Subscribers read with UDP_GRO (coalesced runs, split at the segment size).
    pub gro: bool,
    /// Print a progress line to stderr every second ([`crate::progress`]).
    pub progress: bool,
    /// Simulcast publishers (three layers over WHIP) and capped subscribers
    /// ([`crate::simulcast`]); the layers take `video`'s frame rate and keyframe shape.
    pub simulcast: Option<crate::simulcast::SimulcastSpec>,
}

impl LoadSpec {
    /// What shapes the publishers' traffic ([`crate::shape`]).
    pub fn load(&self) -> crate::shape::Load {
        crate::shape::Load {
            rate: self.rate,
            size: self.size,
            keyframe_every: self.keyframe_every,
            keyframe_packets: self.keyframe_packets,
            video: self.video,
            audio: self.audio,
        }
    }
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
            video: None,
            audio: false,
            gro: false,
            progress: false,
            simulcast: None,
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
    /// The in-process plain fan-out reference, its thread pinned to `core`; with `gso` it
    /// sends each subscriber a batch's datagrams as `UDP_SEGMENT` messages.
    Reflector { core: Option<usize>, gso: bool },
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

mod drive;
mod setup;
mod simulcast;

use drive::*;
use setup::*;
use simulcast::*;

fn validate(spec: &LoadSpec, overhead: usize) -> Result<(), Error> {
    let min = RTP_HEADER + PAYLOAD_HEADER + overhead;
    if spec.size < min || spec.size > MAX_SIZE {
        return Err(Error::Config(format!(
            "--size must be in {min}..={MAX_SIZE} for this profile"
        )));
    }
    let steady = spec.video.is_none() && !spec.audio;
    if spec.publishers == 0 || spec.subscribers == 0 || (steady && spec.rate == 0) {
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
    if spec.audio
        && !matches!(
            target,
            Target::Node { webrtc: None, .. } | Target::Reflector { .. }
        )
    {
        return Err(Error::Config(
            "--audio needs a node over /v1/sessions or the reflector (a second track)".into(),
        ));
    }
    if spec.relay_out && !matches!(target, Target::Node { webrtc: None, .. }) {
        return Err(Error::Config(
            "--relay-out needs a node over /v1/sessions (not --webrtc, not the reflector)".into(),
        ));
    }
    if let Some(sim) = &spec.simulcast {
        let Target::Node {
            api,
            profile,
            cpu_pid,
            worker: None,
            webrtc: None,
        } = target
        else {
            return Err(Error::Config(
                "--simulcast needs a node, without --webrtc or --worker (publishers join over \
                 WHIP, subscribers over /v1/sessions)"
                    .into(),
            ));
        };
        if spec.video.is_none() || spec.audio || spec.relay_out {
            return Err(Error::Config(
                "--simulcast sends video only (not with --audio or --relay-out)".into(),
            ));
        }
        let setup = setup_node_simulcast(spec, sim, api, *profile, *cpu_pid)?;
        return drive(spec, setup, scenario);
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
        Target::Reflector { core, gso } => setup_reflector(spec, *core, *gso)?,
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
