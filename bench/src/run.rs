//! One fan-out run: set up endpoints (node sessions or an in-process reflector), pace the
//! publishers from one sender thread, receive on `sockets` threads, then account.
//!
//! Timeline (CLOCK_MONOTONIC): `start` (setup + 100 ms) → warm-up → `warm` → measured
//! window → `end` → senders stop → drain → receivers stop. The measured window's publisher
//! sequences are computed up front from the pacing schedule (see [`crate::pacing`]).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::accounting::{Arrival, Jitter, SeqTracker};
use crate::api::{Node, SessionRequest};
use crate::cpu::CpuProbe;
use crate::crypto::{tag_len, Cipher, Profile};
use crate::pacing::{Pacer, Schedule};
use crate::packet::{self, Payload, PAYLOAD_HEADER, RTP_HEADER};
use crate::reflector::Reflector;
use crate::report::{Errors, Latency, Report};
use crate::sys::{self, RecvBatch, MAX_BATCH};
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
    },
    /// The in-process plain fan-out reference, its thread pinned to `core`.
    Reflector { core: Option<usize> },
}

struct PubEnd {
    sock: UdpSocket,
    dest: SocketAddr,
    ssrc: u32,
    cipher: Cipher,
}

struct SubEnd {
    sock: UdpSocket,
    publisher: usize,
    ssrc: u32,
    cipher: Cipher,
}

/// Keeps the system under test set up for the run; deletes sessions or stops the
/// reflector on drop.
enum Guard {
    Node { node: Node, ids: Vec<u64> },
    // Held only for its Drop, which stops the reflector thread.
    Reflector(#[allow(dead_code)] Reflector),
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::Node { node, ids } = self {
            for id in ids.drain(..) {
                if let Err(e) = node.delete_session(id) {
                    eprintln!("warning: deleting session {id}: {e}");
                }
            }
        }
    }
}

struct Setup {
    pubs: Vec<PubEnd>,
    subs: Vec<SubEnd>,
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
    let node = Node::new(api);
    let health = node.health()?;
    let pid = cpu_pid.or(health.dataplane_pid);
    let mut guard = Guard::Node {
        node: node.clone(),
        ids: Vec::new(),
    };
    let mut track = |id: u64| {
        if let Guard::Node { ids, .. } = &mut guard {
            ids.push(id);
        }
    };
    let mut pubs = Vec::new();
    let mut subs = Vec::new();
    for p in 0..spec.publishers {
        let stream = format!("bench/s{p}");
        let sock = bind()?;
        let s = node.create_session(&SessionRequest {
            role: "publisher",
            stream: stream.clone(),
            remote: local(&sock)?,
            profile,
            worker,
        })?;
        track(s.id);
        pubs.push(PubEnd {
            sock,
            dest: s.media_address,
            ssrc: s.ssrc(),
            cipher: Cipher::srtp(profile, &s.remote_key_bytes()?)?,
        });
        for _ in 0..spec.subscribers {
            let sock = bind()?;
            let s = node.create_session(&SessionRequest {
                role: "subscriber",
                stream: stream.clone(),
                remote: local(&sock)?,
                profile,
                worker,
            })?;
            track(s.id);
            subs.push(SubEnd {
                sock,
                publisher: p,
                ssrc: s.ssrc(),
                cipher: Cipher::srtp(profile, &s.local_key_bytes()?)?,
            });
        }
    }
    Ok(Setup {
        pubs,
        subs,
        probe: pid.map(CpuProbe::process),
        pid,
        profile: profile.name().to_owned(),
        _guard: guard,
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
                ssrc,
                cipher: Cipher::Plain,
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
        Target::Reflector { .. } => ("reflector", 0),
    };
    validate(spec, overhead)?;
    let setup = match target {
        Target::Node {
            api,
            profile,
            cpu_pid,
            worker,
        } => setup_node(spec, api, *profile, *cpu_pid, *worker)?,
        Target::Reflector { core } => setup_reflector(spec, *core)?,
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
    subs: Vec<(SeqTracker, Jitter)>,
    hist: Histogram<u64>,
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

    // Receivers.
    let stop = Arc::new(AtomicBool::new(false));
    let threads = spec.sockets.clamp(1, subs.len().max(1));
    let mut groups: Vec<Vec<SubState>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, end_) in subs.into_iter().enumerate() {
        let range = ranges.get(end_.publisher).cloned().unwrap_or(0..0);
        groups[i % threads].push(SubState {
            end: end_,
            tracker: SeqTracker::new(range),
            jitter: Jitter::default(),
            seq_offset: None,
        });
    }
    let mut receivers = Vec::new();
    for (t, group) in groups.into_iter().enumerate() {
        let stop = stop.clone();
        let cores = spec.bench_cores.clone();
        let h = std::thread::Builder::new()
            .name(format!("bench-recv{t}"))
            .spawn(move || {
                pin(&cores, "a receive thread");
                receive(group, &stop)
            })
            .map_err(|e| Error::io("spawning a receive thread", e))?;
        receivers.push(h);
    }

    // Sender.
    let cores = spec.bench_cores.clone();
    let size = spec.size;
    let ranges2 = ranges.clone();
    let sender = std::thread::Builder::new()
        .name("bench-send".into())
        .spawn(move || {
            pin(&cores, "the send thread");
            send(pubs, &pacers, &ranges2, end, size)
        })
        .map_err(|e| Error::io("spawning the send thread", e))?;

    sleep_until(warm);
    let cpu0 = probe.as_ref().and_then(CpuProbe::cpu_ns);
    let wall0 = sys::monotonic_ns();
    sleep_until(end);
    let cpu1 = probe.as_ref().and_then(CpuProbe::cpu_ns);
    let wall1 = sys::monotonic_ns();

    let sent = sender.join().map_err(|_| Error::Thread)?;
    std::thread::sleep(spec.drain);
    stop.store(true, Ordering::Relaxed);
    let mut outs = Vec::new();
    for h in receivers {
        outs.push(h.join().map_err(|_| Error::Thread)??);
    }

    let duration_s = spec.duration.as_secs_f64();
    let mut hist = new_hist();
    let mut errors = sent.errors.clone();
    let (mut expected, mut received, mut reorder, mut dups) = (0u64, 0u64, 0u64, 0u64);
    let mut jitter_sum = 0.0;
    let mut nsubs = 0usize;
    for o in &outs {
        let _ = hist.add(&o.hist);
        errors.decrypt += o.errors.decrypt;
        errors.ssrc_mismatch += o.errors.ssrc_mismatch;
        errors.bad_payload += o.errors.bad_payload;
        errors.misrouted += o.errors.misrouted;
        errors.sequence_breaks += o.errors.sequence_breaks;
        errors.ignored += o.errors.ignored;
        for (t, j) in &o.subs {
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
    let latency_us = if hist.is_empty() {
        Latency::default()
    } else {
        Latency {
            count: hist.len(),
            mean: hist.mean(),
            p50: hist.value_at_quantile(0.5),
            p90: hist.value_at_quantile(0.9),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        }
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
        dataplane_pid: pid,
        dataplane_cpu,
        cpu_ns_per_packet,
        errors,
    })
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
    loop {
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
}

/// A receive thread: epoll over its subscribers' sockets, drain each ready socket with
/// recvmmsg, stamp the batch at return and account every datagram.
fn receive(mut subs: Vec<SubState>, stop: &AtomicBool) -> Result<RecvOut, Error> {
    let ep = sys::Epoll::new().map_err(|e| Error::io("epoll_create", e))?;
    for (i, s) in subs.iter().enumerate() {
        s.end
            .sock
            .set_nonblocking(true)
            .map_err(|e| Error::io("set_nonblocking", e))?;
        ep.add(s.end.sock.as_raw_fd(), i as u64)
            .map_err(|e| Error::io("epoll_ctl", e))?;
    }
    let mut hist = new_hist();
    let mut errors = Errors::default();
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
                for i in 0..n {
                    account(s, batch.datagram_mut(i), recv_ns, &mut hist, &mut errors);
                }
                if n < MAX_BATCH {
                    break;
                }
            }
        }
    }
    Ok(RecvOut {
        subs: subs.into_iter().map(|s| (s.tracker, s.jitter)).collect(),
        hist,
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
    let is_rtp = matches!(pkt.first(), Some(128..=191)) && !matches!(pkt.get(1), Some(192..=223));
    if !is_rtp {
        errors.ignored += 1;
        return;
    }
    let Ok(len) = s.end.cipher.unprotect(pkt) else {
        errors.decrypt += 1;
        return;
    };
    let rtp = &pkt[..len.min(pkt.len())];
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
