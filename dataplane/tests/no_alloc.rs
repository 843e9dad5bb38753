//! Steady-state forwarding allocates nothing: a counting global allocator watches the engine
//! decrypt, cache, fan out (locally and to another worker), rewrite and re-protect packets,
//! answer NACKs and PLIs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_dataplane::engine::{
    Engine, Inbound, Limits, Output, SendError, StreamId, Via, WorkerCommand, WorkerEvent,
};
use switchyard_shared::command::{SessionId, SrtpKeys, SrtpProfile, VideoCodec, MAX_TRACKS};
use switchyard_shared::packet::{rtcp, rtp, twcc};
use switchyard_shared::srtp::Context;
use switchyard_shared::stats::{Counter, Stats};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    // Per thread: the test harness's own threads (output capture, slow-test notices) may
    // allocate while the measured loop runs; only the loop's thread counts.
    static ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn armed() -> bool {
    // try_with: allocation during thread teardown must not panic.
    ARMED.try_with(|a| a.get()).unwrap_or(false)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if armed() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if armed() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// An output with preallocated storage: it overwrites one buffer and keeps messages for
/// other workers in a vector with reserved capacity.
struct FixedOutput {
    buf: Vec<u8>,
    sent: u64,
    queued: Vec<(u16, Inbound)>,
    /// Sequence number of the last media packet sent to `watch` with SSRC 20 (the header
    /// is in the clear), so the test NACKs a packet that is in the cache.
    watch: Option<SocketAddr>,
    last_seq: u16,
    /// Packets sent with SSRC 21: RTX to the watched subscriber.
    rtx_sent: u64,
    /// The last transport-wide number (header extension id [`TWCC_EXT`]) on what went to
    /// `watch`, for the bandwidth estimation test's feedback.
    twcc: Option<u16>,
}

const TWCC_EXT: u8 = 5;

impl Output for FixedOutput {
    fn send_from(
        &mut self,
        _via: Via,
        dst: SocketAddr,
        _from: Option<IpAddr>,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<(), SendError> {
        fill(&mut self.buf).ok_or(SendError::Cancelled)?;
        if self.watch == Some(dst) && self.buf[1] < 192 && self.buf[8..12] == 20u32.to_be_bytes() {
            self.last_seq = u16::from_be_bytes([self.buf[2], self.buf[3]]);
        }
        if self.buf[1] < 192 && self.buf[8..12] == 21u32.to_be_bytes() {
            self.rtx_sent += 1;
        }
        if self.watch == Some(dst) && self.buf[1] < 192 {
            if let Ok(h) = rtp::Header::parse(&self.buf[..64]) {
                if let Some(r) = rtp::find_extension(&self.buf, &h, TWCC_EXT) {
                    self.twcc = Some(u16::from_be_bytes([
                        self.buf[r.start],
                        self.buf[r.start + 1],
                    ]));
                }
            }
        }
        self.sent += 1;
        Ok(())
    }

    fn to_worker(&mut self, worker: u16, msg: Inbound) -> Result<(), Inbound> {
        if self.queued.len() == self.queued.capacity() {
            return Err(msg);
        }
        self.queued.push((worker, msg));
        Ok(())
    }
}

fn keys(a: u8, b: u8) -> SrtpKeys {
    let p = SrtpProfile::AeadAes128Gcm;
    SrtpKeys {
        profile: p,
        remote: vec![a; p.master_len()],
        local: vec![b; p.master_len()],
    }
}

#[test]
fn steady_state_forwarding_allocates_nothing() {
    let path = std::env::temp_dir().join(format!("swy-noalloc-{}", std::process::id()));
    let stats =
        Arc::new(Stats::create(&path, 2, Limits::default().max_sessions, 1).expect("stats"));
    let start = Instant::now();
    let mut w0 = Engine::new(0, Limits::default(), stats.clone(), 1, start);
    let mut w1 = Engine::new(1, Limits::default(), stats.clone(), 2, start);
    let stream = StreamId(1);
    let publisher: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
    let mut out = FixedOutput {
        buf: vec![0; 2048],
        sent: 0,
        queued: Vec::with_capacity(1024),
        watch: None,
        last_seq: 0,
        rtx_sent: 0,
        twcc: None,
    };
    w0.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(1),
            stream,
            remote: Some(publisher),
            ssrcs: vec![42],
            clock_rates: vec![90000],
            twcc_ext: None,
            srtp: Some(keys(1, 2)),
            ice: None,
            simulcast: None,
            uplink: Vec::new(),
        },
        start,
        &mut out,
    );
    w0.handle_command(
        WorkerCommand::SetRemoteWorkers {
            stream,
            workers: [1].into_iter().collect(),
        },
        start,
        &mut out,
    );
    w1.handle_command(
        WorkerCommand::SetPublisherWorker {
            stream,
            worker: Some(0),
        },
        start,
        &mut out,
    );
    let mut subs = Vec::new();
    for id in 2..12u64 {
        let w = if id % 2 == 0 { &mut w0 } else { &mut w1 };
        let remote: SocketAddr = format!("127.0.0.1:{}", 6000 + id).parse().expect("addr");
        w.handle_command(
            WorkerCommand::AddSubscriber {
                id: SessionId(id),
                stream,
                remote: Some(remote),
                ssrcs: [id as u32 * 10, 0, 0, 0],
                payload_types: Vec::new(),
                extensions: None,
                // The NACKing subscriber (id 2) negotiated RTX: retransmissions as RTX.
                rtx: if id == 2 {
                    [Some((21, 97)), None, None, None]
                } else {
                    [None; MAX_TRACKS]
                },
                tracks: switchyard_shared::command::ALL_TRACKS,
                // One plain-RTP egress (a forward to a recorder) among them.
                plain: id == 11,
                srtp: (id != 11).then(|| keys(3, 4)),
                ice: None,
            },
            start,
            &mut out,
        );
        subs.push((id, remote));
    }
    out.watch = Some(subs[0].1);
    while let Some(ev) = w0.poll_event() {
        assert!(matches!(ev, WorkerEvent::Added { .. }), "{ev:?}");
    }
    while let Some(ev) = w1.poll_event() {
        assert!(matches!(ev, WorkerEvent::Added { .. }), "{ev:?}");
    }

    let mut tx = Context::new(SrtpProfile::AeadAes128Gcm, &[1; 28]).expect("ctx");
    let mut sub_tx = Context::new(SrtpProfile::AeadAes128Gcm, &[3; 28]).expect("ctx");
    let mut pkt = vec![0u8; 1400];
    let mut fb = vec![0u8; 256];
    // The node's address the peers send to: sessions learn it and send from it.
    let local: Option<IpAddr> = Some(IpAddr::from([10, 203, 0, 1]));
    let mut run =
        |seq_from: u16, count: u16, w0: &mut Engine, w1: &mut Engine, out: &mut FixedOutput| {
            let now = Instant::now();
            for seq in seq_from..seq_from + count {
                pkt[0] = 0x80;
                pkt[1] = 96;
                pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                pkt[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
                pkt[8..12].copy_from_slice(&42u32.to_be_bytes());
                let n = tx.protect_rtp(&mut pkt, 1200).expect("protect");
                w0.handle_datagram_to(&mut pkt[..n], publisher, local, now, out);
                // Deliver cross-worker messages both ways (media to w1, returns to w0).
                while let Some((w, msg)) = out.queued.pop() {
                    let e = if w == 0 { &mut *w0 } else { &mut *w1 };
                    e.handle_inbound(msg, now, out);
                }
                if seq % 10 == 0 {
                    // A NACK and a PLI from the subscriber on worker 0 (id 2, SSRC 20).
                    let lost = out.last_seq;
                    let n = rtcp::write_nack(&mut fb, 7, 20, &[lost]).expect("nack");
                    let n = sub_tx.protect_rtcp(&mut fb, n).expect("protect");
                    w0.handle_datagram_to(&mut fb[..n], subs[0].1, local, now, out);
                    let n = rtcp::write_pli(&mut fb, 7, 20).expect("pli");
                    let n = sub_tx.protect_rtcp(&mut fb, n).expect("protect");
                    w0.handle_datagram_to(&mut fb[..n], subs[0].1, local, now, out);
                    // The publisher's SR, and the periodic work (a receiver report back to
                    // the publisher once a second of this virtual clock).
                    let n =
                        rtcp::write_sender_report(&mut fb, 42, u64::from(seq) << 20, 0, 1, 1, &[])
                            .expect("sr");
                    let n = tx.protect_rtcp(&mut fb, n).expect("protect");
                    w0.handle_datagram_to(&mut fb[..n], publisher, local, now, out);
                    w0.handle_timeout(now + Duration::from_millis(u64::from(seq) * 10), out);
                }
            }
        };
    // Warm up: fills the NACK cache ring once so steady state is reached.
    run(1, 1000, &mut w0, &mut w1, &mut out);
    let sent_before = out.sent;
    let rtx_before = out.rtx_sent;
    let retransmitted = stats.worker(0).expect("w0").get(Counter::Retransmitted);
    ARMED.with(|a| a.set(true));
    run(1001, 5000, &mut w0, &mut w1, &mut out);
    ARMED.with(|a| a.set(false));
    let allocs = ALLOCS.load(Ordering::SeqCst);
    let forwarded = out.sent - sent_before;
    assert!(forwarded >= 50_000, "forwarded {forwarded}");
    assert_eq!(
        stats.worker(1).expect("w1").get(Counter::CrossWorkerIn),
        6000,
        "one handle per packet reached worker 1"
    );
    assert_eq!(
        stats.worker(0).expect("w0").get(Counter::Retransmitted) - retransmitted,
        500,
        "every NACK (one per 10 packets) answered"
    );
    assert_eq!(out.rtx_sent - rtx_before, 500, "as RTX");
    assert_eq!(
        allocs, 0,
        "{allocs} allocations while forwarding {forwarded} packets"
    );
    let _ = std::fs::remove_file(&path);
}

/// Keeps what one engine sends on its relay socket, in buffers allocated up front, so the
/// test can carry it to the other node's engine; media-socket sends are only counted.
struct LinkOutput {
    bufs: Vec<[u8; 1536]>,
    lens: Vec<(SocketAddr, usize)>,
    media_sent: u64,
}

impl LinkOutput {
    fn new() -> Self {
        Self {
            bufs: vec![[0; 1536]; 64],
            lens: Vec::with_capacity(64),
            media_sent: 0,
        }
    }
}

impl Output for LinkOutput {
    fn send_from(
        &mut self,
        via: Via,
        dst: SocketAddr,
        _from: Option<IpAddr>,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<(), SendError> {
        if via == Via::Media {
            let mut scratch = [0u8; 1536];
            fill(&mut scratch).ok_or(SendError::Cancelled)?;
            self.media_sent += 1;
            return Ok(());
        }
        let k = self.lens.len();
        let buf = self.bufs.get_mut(k).ok_or(SendError::Full)?;
        let n = fill(buf).ok_or(SendError::Cancelled)?;
        self.lens.push((dst, n));
        Ok(())
    }

    fn to_worker(&mut self, _worker: u16, msg: Inbound) -> Result<(), Inbound> {
        Err(msg) // one worker per node here
    }
}

/// Hand every datagram `from` holds to `to`'s relay socket as if from `src`, then forget it.
fn carry(
    from: &mut LinkOutput,
    to: &mut Engine,
    src: SocketAddr,
    now: Instant,
    out: &mut LinkOutput,
) {
    for k in 0..from.lens.len() {
        let (_, n) = from.lens[k];
        to.handle_relay_datagram(&mut from.bufs[k][..n], src, now, out);
    }
    from.lens.clear();
}

#[test]
fn relay_link_steady_state_allocates_nothing() {
    let path = std::env::temp_dir().join(format!("swy-noalloc-relay-{}", std::process::id()));
    let stats_a =
        Arc::new(Stats::create(&path, 1, Limits::default().max_sessions, 1).expect("stats"));
    let path_b = path.with_extension("b");
    let stats_b =
        Arc::new(Stats::create(&path_b, 1, Limits::default().max_sessions, 1).expect("stats"));
    let start = Instant::now();
    let mut a = Engine::new(0, Limits::default(), stats_a.clone(), 1, start);
    let mut b = Engine::new(0, Limits::default(), stats_b.clone(), 2, start);
    let stream = StreamId(1);
    let publisher: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
    let a_relay: SocketAddr = "127.0.0.1:9443".parse().expect("addr");
    let b_relay: SocketAddr = "127.0.0.1:19443".parse().expect("addr");
    let mut out_a = LinkOutput::new();
    let mut out_b = LinkOutput::new();
    a.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(1),
            stream,
            remote: Some(publisher),
            ssrcs: vec![42],
            clock_rates: vec![90000],
            twcc_ext: None,
            srtp: Some(keys(1, 2)),
            ice: None,
            simulcast: None,
            uplink: Vec::new(),
        },
        start,
        &mut out_a,
    );
    a.handle_command(
        WorkerCommand::AddRelayOut {
            id: SessionId(2),
            stream,
            remote: b_relay,
            srtp: keys(5, 4),
        },
        start,
        &mut out_a,
    );
    b.handle_command(
        WorkerCommand::AddRelayIn {
            ssrcs: Vec::new(),
            id: SessionId(1),
            stream,
            remote: Some(a_relay),
            srtp: keys(4, 5),
            simulcast: None,
        },
        start,
        &mut out_b,
    );
    for id in 2..6u64 {
        b.handle_command(
            WorkerCommand::AddSubscriber {
                id: SessionId(id),
                stream,
                remote: Some(format!("127.0.0.1:{}", 6000 + id).parse().expect("addr")),
                ssrcs: [id as u32 * 10, 0, 0, 0],
                payload_types: Vec::new(),
                extensions: None,
                rtx: [None; MAX_TRACKS],
                tracks: switchyard_shared::command::ALL_TRACKS,
                plain: false,
                srtp: Some(keys(3, 4)),
                ice: None,
            },
            start,
            &mut out_b,
        );
    }
    while let Some(ev) = a.poll_event().or_else(|| b.poll_event()) {
        assert!(matches!(ev, WorkerEvent::Added { .. }), "{ev:?}");
    }
    out_a.lens.clear();
    out_b.lens.clear();

    let mut tx = Context::new(SrtpProfile::AeadAes128Gcm, &[1; 28]).expect("ctx");
    let mut viewer_tx = Context::new(SrtpProfile::AeadAes128Gcm, &[3; 28]).expect("ctx");
    let mut pkt = vec![0u8; 1400];
    let mut fb = vec![0u8; 256];
    let t0 = Instant::now();
    let mut run = |from: u16,
                   count: u16,
                   a: &mut Engine,
                   b: &mut Engine,
                   out_a: &mut LinkOutput,
                   out_b: &mut LinkOutput| {
        for seq in from..from + count {
            let now = t0 + Duration::from_millis(u64::from(seq));
            pkt[0] = 0x80;
            pkt[1] = 96;
            pkt[2..4].copy_from_slice(&seq.to_be_bytes());
            pkt[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
            pkt[8..12].copy_from_slice(&42u32.to_be_bytes());
            let n = tx.protect_rtp(&mut pkt, 1200).expect("protect");
            a.handle_datagram(&mut pkt[..n], publisher, now, out_a);
            if seq % 20 == 7 {
                out_a.lens.clear(); // lost on the hop
            }
            carry(out_a, b, a_relay, now, out_b);
            if seq % 50 == 0 {
                // A viewer's keyframe request: upstream as PLI, on to the publisher.
                let n = rtcp::write_pli(&mut fb, 7, 20).expect("pli");
                let n = viewer_tx.protect_rtcp(&mut fb, n).expect("protect");
                let viewer: SocketAddr = "127.0.0.1:6002".parse().expect("addr");
                b.handle_datagram(&mut fb[..n], viewer, now, out_b);
            }
            b.handle_timeout(now, out_b);
            // NACKs (and PLI, RR) to A; A's answers back to B.
            carry(out_b, a, b_relay, now, out_a);
            carry(out_a, b, a_relay, now, out_b);
            out_b.lens.clear();
        }
    };
    run(1, 1000, &mut a, &mut b, &mut out_a, &mut out_b);
    let nacks_before = stats_b.worker(0).expect("b").get(Counter::RelayNacksSent);
    let viewers_before = out_b.media_sent;
    ARMED.with(|x| x.set(true));
    run(1001, 5000, &mut a, &mut b, &mut out_a, &mut out_b);
    ARMED.with(|x| x.set(false));
    let allocs = ALLOCS.load(Ordering::SeqCst);
    let nacked = stats_b.worker(0).expect("b").get(Counter::RelayNacksSent) - nacks_before;
    assert_eq!(
        nacked, 250,
        "one NACK per lost packet, each answered at the first try"
    );
    assert!(
        out_b.media_sent - viewers_before >= 4 * 5000,
        "every packet (repairs included) reached the 4 viewers"
    );
    assert_eq!(allocs, 0, "{allocs} allocations on the relay path");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&path_b);
}

/// Two workers sharing a stream: the publisher `add` makes on worker 0 (at 127.0.0.1:5000),
/// viewers 2 to 7 alternating between the workers (viewer 2, watched by the output, with
/// RTX), every answer drained.
struct TwoWorkers {
    stats: Arc<Stats>,
    w0: Engine,
    w1: Engine,
    out: FixedOutput,
    start: Instant,
    publisher: SocketAddr,
    path: std::path::PathBuf,
}

fn two_workers(tag: &str, add: impl FnOnce(StreamId, SocketAddr) -> WorkerCommand) -> TwoWorkers {
    let path = std::env::temp_dir().join(format!("swy-noalloc-{tag}-{}", std::process::id()));
    let stats =
        Arc::new(Stats::create(&path, 2, Limits::default().max_sessions, 1).expect("stats"));
    let start = Instant::now();
    let mut w0 = Engine::new(0, Limits::default(), stats.clone(), 1, start);
    let mut w1 = Engine::new(1, Limits::default(), stats.clone(), 2, start);
    let stream = StreamId(1);
    let publisher: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
    let mut out = FixedOutput {
        buf: vec![0; 2048],
        sent: 0,
        queued: Vec::with_capacity(1024),
        watch: Some("127.0.0.1:6002".parse().expect("addr")),
        last_seq: 0,
        rtx_sent: 0,
        twcc: None,
    };
    w0.handle_command(add(stream, publisher), start, &mut out);
    w0.handle_command(
        WorkerCommand::SetRemoteWorkers {
            stream,
            workers: [1].into_iter().collect(),
        },
        start,
        &mut out,
    );
    w1.handle_command(
        WorkerCommand::SetPublisherWorker {
            stream,
            worker: Some(0),
        },
        start,
        &mut out,
    );
    for id in 2..8u64 {
        let w = if id % 2 == 0 { &mut w0 } else { &mut w1 };
        let remote: SocketAddr = format!("127.0.0.1:{}", 6000 + id).parse().expect("addr");
        w.handle_command(
            WorkerCommand::AddSubscriber {
                id: SessionId(id),
                stream,
                remote: Some(remote),
                ssrcs: [id as u32 * 10, 0, 0, 0],
                payload_types: Vec::new(),
                extensions: None,
                rtx: if id == 2 {
                    [Some((21, 97)), None, None, None]
                } else {
                    [None; MAX_TRACKS]
                },
                tracks: switchyard_shared::command::ALL_TRACKS,
                plain: false,
                srtp: Some(keys(3, 4)),
                ice: None,
            },
            start,
            &mut out,
        );
    }
    for w in [&mut w0, &mut w1] {
        while let Some(ev) = w.poll_event() {
            assert!(matches!(ev, WorkerEvent::Added { .. }), "{ev:?}");
        }
    }
    TwoWorkers {
        stats,
        w0,
        w1,
        out,
        start,
        publisher,
        path,
    }
}

/// Simulcast: three VP8 layers (rid extension, temporal layers 0, 2, 1, 2) fanned out to
/// viewers on two workers, each capped to temporal layer 0 and back, then switching layers
/// at keyframes (a cap, then the top layer stopping), with their NACKs and the PLIs the
/// switches send, allocates nothing either.
#[test]
fn simulcast_layer_switching_allocates_nothing() {
    use switchyard_shared::command::{LayerCodec, Simulcast, SimulcastTrack};

    let simulcast = Simulcast {
        rid_ext: 10,
        repaired_rid_ext: 11,
        mid_ext: 4,
        tracks: vec![SimulcastTrack {
            mid: "1".into(),
            rids: vec!["q".into(), "h".into(), "f".into()],
            ssrcs: Vec::new(),
            codec: LayerCodec::Vp8,
        }],
    };
    let TwoWorkers {
        stats,
        mut w0,
        mut w1,
        mut out,
        start,
        publisher,
        path,
    } = two_workers("sim", |stream, publisher| WorkerCommand::AddPublisher {
        id: SessionId(1),
        stream,
        remote: Some(publisher),
        ssrcs: Vec::new(),
        clock_rates: vec![90000],
        twcc_ext: None,
        srtp: Some(keys(1, 2)),
        ice: None,
        simulcast: Some(simulcast),
        uplink: Vec::new(),
    });
    let mut tx = Context::new(SrtpProfile::AeadAes128Gcm, &[1; 28]).expect("ctx");
    let mut sub_tx = Context::new(SrtpProfile::AeadAes128Gcm, &[3; 28]).expect("ctx");
    let mut pkt = vec![0u8; 1400];
    let mut fb = vec![0u8; 256];
    let sizes: [(u16, u16); 3] = [(320, 180), (640, 360), (1280, 720)];
    // Frame `n`: one packet per layer in `layers`, keyframes every 30 frames.
    let mut frame = |n: u32,
                     layers: usize,
                     at: Instant,
                     w0: &mut Engine,
                     w1: &mut Engine,
                     out: &mut FixedOutput| {
        for (l, rid) in [b'q', b'h', b'f'].into_iter().enumerate().take(layers) {
            let seq = (n as u16).wrapping_add(l as u16 * 10_000);
            pkt[0] = 0x90;
            pkt[1] = 96;
            pkt[2..4].copy_from_slice(&seq.to_be_bytes());
            pkt[4..8].copy_from_slice(&(n * 3000).to_be_bytes());
            pkt[8..12].copy_from_slice(&(100 + l as u32).to_be_bytes());
            // One-byte extensions: mid "1", rid.
            pkt[12..20].copy_from_slice(&[0xbe, 0xde, 0, 1, 0x40, b'1', 0xa0, rid]);
            let key = n % 30 == 0;
            let pid = (n as u16) & 0x7fff;
            // X with I, L and T: VP8 temporal layers 0, 2, 1, 2 as Chromium sends them.
            pkt[20..22].copy_from_slice(&[0x90, 0xe0]);
            pkt[22..24].copy_from_slice(&(0x8000 | pid).to_be_bytes());
            pkt[24] = n as u8;
            pkt[25] = [0u8, 2, 1, 2][n as usize % 4] << 6;
            pkt[26..29].copy_from_slice(&[u8::from(!key), 0, 0]);
            pkt[29..32].copy_from_slice(&[0x9d, 0x01, 0x2a]);
            pkt[32..34].copy_from_slice(&sizes[l].0.to_le_bytes());
            pkt[34..36].copy_from_slice(&sizes[l].1.to_le_bytes());
            let n = tx.protect_rtp(&mut pkt, 1000).expect("protect");
            w0.handle_datagram_to(&mut pkt[..n], publisher, None, at, out);
            while let Some((w, msg)) = out.queued.pop() {
                let e = if w == 0 { &mut *w0 } else { &mut *w1 };
                e.handle_inbound(msg, at, out);
            }
        }
        if n % 10 == 0 {
            let lost = out.last_seq;
            let k = rtcp::write_nack(&mut fb, 7, 20, &[lost]).expect("nack");
            let k = sub_tx.protect_rtcp(&mut fb, k).expect("protect");
            let sub: SocketAddr = "127.0.0.1:6002".parse().expect("addr");
            w0.handle_datagram_to(&mut fb[..k], sub, None, at, out);
            while let Some((w, msg)) = out.queued.pop() {
                let e = if w == 0 { &mut *w0 } else { &mut *w1 };
                e.handle_inbound(msg, at, out);
            }
        }
    };
    let tick = Duration::from_millis(33);
    let at = |n: u32| start + tick * n;
    // Warm up on all three layers: every NACK cache fills once.
    for n in 0..1200 {
        frame(n, 3, at(n), &mut w0, &mut w1, &mut out);
    }
    let switches = stats.worker(0).expect("w0").get(Counter::LayerSwitches)
        + stats.worker(1).expect("w1").get(Counter::LayerSwitches);
    let retransmitted = stats.worker(0).expect("w0").get(Counter::Retransmitted);
    ARMED.with(|a| a.set(true));
    for n in 1200..1300 {
        frame(n, 3, at(n), &mut w0, &mut w1, &mut out);
    }
    // Temporal layer 0 only, then every layer again: frames dropped, numbering closed up,
    // runs kept, NACKs mapped through them.
    for (from, cap) in [(1300u32, 0u8), (1400, u8::MAX)] {
        for id in 2..8u64 {
            let w = if id % 2 == 0 { &mut w0 } else { &mut w1 };
            w.handle_command(
                WorkerCommand::SetMaxTemporal {
                    id: SessionId(id),
                    max_temporal: cap,
                },
                at(from),
                &mut out,
            );
        }
        for n in from..from + 100 {
            frame(n, 3, at(n), &mut w0, &mut w1, &mut out);
        }
    }
    for id in 2..8u64 {
        let w = if id % 2 == 0 { &mut w0 } else { &mut w1 };
        w.handle_command(
            WorkerCommand::SetMaxLayer {
                id: SessionId(id),
                max_layer: 0,
            },
            at(1500),
            &mut out,
        );
    }
    for n in 1500..1800 {
        frame(n, 3, at(n), &mut w0, &mut w1, &mut out);
    }
    for id in 2..8u64 {
        let w = if id % 2 == 0 { &mut w0 } else { &mut w1 };
        w.handle_command(
            WorkerCommand::SetMaxLayer {
                id: SessionId(id),
                max_layer: u8::MAX,
            },
            at(1800),
            &mut out,
        );
    }
    // The top layer stops: viewers go from f to h.
    for n in 1800..2400 {
        let layers = if n < 1850 { 3 } else { 2 };
        frame(n, layers, at(n), &mut w0, &mut w1, &mut out);
    }
    ARMED.with(|a| a.set(false));
    let allocs = ALLOCS.load(Ordering::SeqCst);
    let switched = stats.worker(0).expect("w0").get(Counter::LayerSwitches)
        + stats.worker(1).expect("w1").get(Counter::LayerSwitches)
        - switches;
    assert_eq!(switched, 18, "6 viewers: down to q, up to f, down to h");
    assert!(
        stats.worker(0).expect("w0").get(Counter::Retransmitted) > retransmitted,
        "NACKs answered"
    );
    assert_eq!(allocs, 0, "{allocs} allocations while switching layers");
    let _ = std::fs::remove_file(&path);
}

/// The engine's sends through the real I/O layer, as the worker wires them.
struct TxOutput<'a> {
    tx: &'a mut switchyard_dataplane::io::Tx,
}

impl Output for TxOutput<'_> {
    fn send_from(
        &mut self,
        via: Via,
        dst: SocketAddr,
        from: Option<IpAddr>,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<(), SendError> {
        let b = self.tx.alloc().ok_or(SendError::Full)?;
        match fill(&mut self.tx.buf_mut(b)[..]) {
            Some(len) => {
                self.tx.queue_from(b, len, dst, via, from);
                Ok(())
            }
            None => {
                self.tx.release(b);
                Err(SendError::Cancelled)
            }
        }
    }

    fn to_worker(&mut self, _worker: u16, msg: Inbound) -> Result<(), Inbound> {
        Err(msg)
    }
}

/// Segmented egress and relay receive offload allocate nothing either: frames of eight
/// packets fanned out to 16 subscribers on loopback through a real [`Io`] (planning, message
/// records, `sendmmsg` or io_uring SQEs), and segmented relay sends walked out of coalesced
/// buffers by a second `Io` whose relay socket has UDP_GRO; every engine and send mode.
#[test]
fn segmented_egress_and_relay_gro_allocate_nothing() {
    use std::net::UdpSocket;
    use switchyard_dataplane::io::{probe_uring, EngineKind, Io, IoConfig, RxEvent};

    let mut modes = vec![(EngineKind::Mmsg, true)];
    if probe_uring().is_ok() {
        modes.push((EngineKind::Uring, true));
        modes.push((EngineKind::Uring, false));
    } else {
        println!("io_uring engine skipped: the kernel refuses it");
    }
    for (kind, sendmmsg) in modes {
        let path =
            std::env::temp_dir().join(format!("swy-noalloc-gso-{}-{kind:?}", std::process::id()));
        let stats =
            Arc::new(Stats::create(&path, 1, Limits::default().max_sessions, 1).expect("stats"));
        let start = Instant::now();
        let mut engine = Engine::new(0, Limits::default(), stats.clone(), 1, start);
        let cfg = IoConfig {
            uring_sendmmsg: sendmmsg,
            tx_slots: 4096,
            ..IoConfig::default()
        };
        let bind = || UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut a = Io::with_relay(kind, bind(), Some(bind()), &cfg).expect("engine a");
        let b_relay = bind();
        let b_relay_addr = b_relay.local_addr().expect("addr");
        let mut b = Io::with_relay(kind, bind(), Some(b_relay), &cfg).expect("engine b");
        let publisher: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let stream = StreamId(1);
        let mut out = TxOutput { tx: a.tx() };
        engine.handle_command(
            WorkerCommand::AddPublisher {
                id: SessionId(1),
                stream,
                remote: Some(publisher),
                ssrcs: vec![42],
                clock_rates: vec![90000],
                twcc_ext: None,
                srtp: Some(keys(1, 2)),
                ice: None,
                simulcast: None,
                uplink: Vec::new(),
            },
            start,
            &mut out,
        );
        let receivers: Vec<UdpSocket> = (0..16)
            .map(|_| {
                let s = bind();
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .collect();
        for (k, r) in receivers.iter().enumerate() {
            engine.handle_command(
                WorkerCommand::AddSubscriber {
                    id: SessionId(10 + k as u64),
                    stream,
                    remote: Some(r.local_addr().expect("addr")),
                    ssrcs: [100 + k as u32, 0, 0, 0],
                    payload_types: Vec::new(),
                    extensions: None,
                    rtx: [None; MAX_TRACKS],
                    tracks: switchyard_shared::command::ALL_TRACKS,
                    plain: false,
                    srtp: Some(keys(3, 4)),
                    ice: None,
                },
                start,
                &mut out,
            );
        }
        while engine.poll_event().is_some() {}
        let mut ctx = Context::new(SrtpProfile::AeadAes128Gcm, &[1; 28]).expect("ctx");
        let mut pkt = vec![0u8; 1400];
        let mut rbuf = [0u8; 2048];
        let mut received = 0u64;
        let mut relayed = 0u64;
        let mut seq = 1u16;
        let mut turn = |engine: &mut Engine, a: &mut Io, b: &mut Io, received: &mut u64| {
            let now = Instant::now();
            // A frame: eight packets of one size, as a publisher's burst in one receive batch.
            for _ in 0..8 {
                pkt[0] = 0x80;
                pkt[1] = 96;
                pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                pkt[4..8].copy_from_slice(&(u32::from(seq / 8) * 3000).to_be_bytes());
                pkt[8..12].copy_from_slice(&42u32.to_be_bytes());
                seq = seq.wrapping_add(1);
                let n = ctx.protect_rtp(&mut pkt, 1100).expect("protect");
                let mut out = TxOutput { tx: a.tx() };
                engine.handle_datagram_to(&mut pkt[..n], publisher, None, now, &mut out);
                // And the same bytes down a relay link, to b's coalescing relay socket.
                let tx = a.tx();
                let buf = tx.alloc().expect("slot");
                tx.buf_mut(buf)[..n].copy_from_slice(&pkt[..n]);
                tx.queue_via(buf, n, b_relay_addr, Via::Relay);
            }
            a.poll(Duration::ZERO, &mut |_: RxEvent<'_>, _| {})
                .expect("poll a");
            for r in &receivers {
                while r.recv(&mut rbuf).is_ok() {
                    *received += 1;
                }
            }
            b.poll(Duration::ZERO, &mut |ev, _| {
                if let RxEvent::Datagram {
                    via: Via::Relay, ..
                } = ev
                {
                    relayed += 1;
                }
            })
            .expect("poll b");
        };
        for _ in 0..50 {
            turn(&mut engine, &mut a, &mut b, &mut received);
        }
        let before = a.offload();
        ARMED.with(|x| x.set(true));
        for _ in 0..400 {
            turn(&mut engine, &mut a, &mut b, &mut received);
        }
        ARMED.with(|x| x.set(false));
        let allocs = ALLOCS.swap(0, Ordering::SeqCst);
        let after = a.offload();
        let gro = b.offload();
        assert!(
            after.gso_messages - before.gso_messages >= 400 * 16,
            "{kind:?}/{sendmmsg}: the fan-out went segmented: {after:?}"
        );
        assert!(
            gro.gro_segments > 0,
            "{kind:?}/{sendmmsg}: relay GRO: {gro:?}"
        );
        assert!(received > 0 && relayed > 0);
        assert_eq!(
            allocs, 0,
            "{kind:?} (sendmmsg {sendmmsg}): {allocs} allocations in 400 segmented turns"
        );
        let _ = std::fs::remove_file(&path);
    }
}

/// Per-viewer bandwidth estimation in steady state: transport-wide numbers stamped on every
/// packet, transport-cc feedback read, the estimate fitting layers, probes sent, REMB read.
#[test]
fn viewer_bandwidth_estimation_allocates_nothing() {
    use switchyard_shared::command::{LayerCodec, Simulcast, SimulcastTrack};

    let path = std::env::temp_dir().join(format!("swy-noalloc-bwe-{}", std::process::id()));
    let stats =
        Arc::new(Stats::create(&path, 1, Limits::default().max_sessions, 1).expect("stats"));
    let start = Instant::now();
    let mut w0 = Engine::new(0, Limits::default(), stats.clone(), 1, start);
    let stream = StreamId(1);
    let publisher: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
    let viewer: SocketAddr = "127.0.0.1:6002".parse().expect("addr");
    let mut out = FixedOutput {
        buf: vec![0; 2048],
        sent: 0,
        queued: Vec::with_capacity(1024),
        watch: Some(viewer),
        last_seq: 0,
        rtx_sent: 0,
        twcc: None,
    };
    let simulcast = Simulcast {
        rid_ext: 10,
        repaired_rid_ext: 11,
        mid_ext: 4,
        tracks: vec![SimulcastTrack {
            mid: "1".into(),
            rids: vec!["q".into(), "h".into(), "f".into()],
            ssrcs: Vec::new(),
            codec: LayerCodec::Vp8,
        }],
    };
    w0.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(1),
            stream,
            remote: Some(publisher),
            ssrcs: Vec::new(),
            clock_rates: vec![90000],
            twcc_ext: None,
            srtp: Some(keys(1, 2)),
            ice: None,
            simulcast: Some(simulcast),
            uplink: Vec::new(),
        },
        start,
        &mut out,
    );
    w0.handle_command(
        WorkerCommand::AddSubscriber {
            id: SessionId(2),
            stream,
            remote: Some(viewer),
            ssrcs: [20, 0, 0, 0],
            payload_types: Vec::new(),
            extensions: None,
            rtx: [Some((21, 97)), None, None, None],
            tracks: switchyard_shared::command::ALL_TRACKS,
            plain: false,
            srtp: Some(keys(3, 4)),
            ice: None,
        },
        start,
        &mut out,
    );
    w0.handle_command(
        WorkerCommand::EnableBwe {
            id: SessionId(2),
            twcc_ext: TWCC_EXT,
        },
        start,
        &mut out,
    );
    while let Some(ev) = w0.poll_event() {
        assert!(matches!(ev, WorkerEvent::Added { .. }), "{ev:?}");
    }
    let mut tx = Context::new(SrtpProfile::AeadAes128Gcm, &[1; 28]).expect("ctx");
    let mut sub_tx = Context::new(SrtpProfile::AeadAes128Gcm, &[3; 28]).expect("ctx");
    let mut pkt = vec![0u8; 1400];
    let mut fb = vec![0u8; twcc::MAX_LEN + 64];
    let mut arrivals = [None; twcc::MAX_STATUSES];
    let mut reported: Option<u16> = None;
    let mut feedbacks = 0u8;
    let sizes: [(u16, u16); 3] = [(320, 180), (640, 360), (1280, 720)];
    // Layers of 250, 500 and 1,000 bytes a frame: 60, 120 and 240 kbit/s at 30 frames/s.
    let lens = [250usize, 500, 1000];
    let mut frame = |n: u32, at: Instant, w0: &mut Engine, out: &mut FixedOutput| {
        for (l, rid) in [b'q', b'h', b'f'].into_iter().enumerate() {
            let seq = (n as u16).wrapping_add(l as u16 * 10_000);
            pkt[0] = 0x90;
            pkt[1] = 96;
            pkt[2..4].copy_from_slice(&seq.to_be_bytes());
            pkt[4..8].copy_from_slice(&(n * 3000).to_be_bytes());
            pkt[8..12].copy_from_slice(&(100 + l as u32).to_be_bytes());
            pkt[12..20].copy_from_slice(&[0xbe, 0xde, 0, 1, 0x40, b'1', 0xa0, rid]);
            let key = n % 30 == 0;
            let pid = (n as u16) & 0x7fff;
            // X with I, L and T: VP8 temporal layers 0, 2, 1, 2 as Chromium sends them.
            pkt[20..22].copy_from_slice(&[0x90, 0xe0]);
            pkt[22..24].copy_from_slice(&(0x8000 | pid).to_be_bytes());
            pkt[24] = n as u8;
            pkt[25] = [0u8, 2, 1, 2][n as usize % 4] << 6;
            pkt[26..29].copy_from_slice(&[u8::from(!key), 0, 0]);
            pkt[29..32].copy_from_slice(&[0x9d, 0x01, 0x2a]);
            pkt[32..34].copy_from_slice(&sizes[l].0.to_le_bytes());
            pkt[34..36].copy_from_slice(&sizes[l].1.to_le_bytes());
            let k = tx.protect_rtp(&mut pkt, lens[l]).expect("protect");
            w0.handle_datagram_to(&mut pkt[..k], publisher, None, at, out);
        }
        // Every 3 frames (100 ms) the viewer reports everything since its last feedback,
        // received 1 ms apart; every 30 frames it also sends a REMB.
        if n % 3 == 0 {
            if let Some(last) = out.twcc {
                let first = reported.map_or(last, |r| r.wrapping_add(1));
                let count = usize::from(last.wrapping_sub(first)) + 1;
                if count <= arrivals.len() && last != first.wrapping_sub(1) {
                    let base = i64::from(n) * 33_000;
                    // Half of it lost for a while in the measured part: the estimate
                    // falls, and probes follow when the loss ends.
                    let lossy = (1200..1400).contains(&n);
                    for (i, a) in arrivals[..count].iter_mut().enumerate() {
                        *a = (!lossy || i % 2 == 0).then_some(base + i as i64 * 1_000);
                    }
                    let k = twcc::write(&mut fb, 7, 20, first, feedbacks, &arrivals[..count])
                        .expect("feedback");
                    feedbacks = feedbacks.wrapping_add(1);
                    reported = Some(last);
                    let k = sub_tx.protect_rtcp(&mut fb, k).expect("protect");
                    w0.handle_datagram_to(&mut fb[..k], viewer, None, at, out);
                }
            }
        }
        if n % 30 == 15 {
            // REMB: 1 Mbit/s (exponent 2, mantissa 250,000).
            let remb = [
                0x8f, 206, 0, 5, 0, 0, 0, 7, 0, 0, 0, 0, b'R', b'E', b'M', b'B', 1, 0x0b, 0xd0,
                0x90, 0, 0, 0, 20,
            ];
            fb[..remb.len()].copy_from_slice(&remb);
            let k = sub_tx.protect_rtcp(&mut fb, remb.len()).expect("protect");
            w0.handle_datagram_to(&mut fb[..k], viewer, None, at, out);
        }
        if w0.poll_timeout().is_some_and(|t| t <= at) {
            w0.handle_timeout(at, out);
        }
    };
    let tick = Duration::from_millis(33);
    let at = |n: u32| start + tick * n;
    for n in 0..900 {
        frame(n, at(n), &mut w0, &mut out);
    }
    let probes = stats.worker(0).expect("w0").get(Counter::BweProbes);
    let sent = out.sent;
    ARMED.with(|a| a.set(true));
    for n in 900..1800 {
        frame(n, at(n), &mut w0, &mut out);
    }
    ARMED.with(|a| a.set(false));
    let allocs = ALLOCS.load(Ordering::SeqCst);
    assert!(out.sent > sent, "media flowed");
    assert!(
        stats.worker(0).expect("w0").get(Counter::BweProbes) > probes,
        "probes were sent while measured"
    );
    let c = stats.find(0, 2).expect("the viewer's slot");
    assert!(c.estimate_bps.is_some(), "{c:?}");
    assert_eq!(
        allocs, 0,
        "{allocs} allocations with bandwidth estimation on"
    );
    let _ = std::fs::remove_file(&path);
}

/// VP9 SVC allocates nothing either: three spatial layers a picture on one SSRC, fanned out
/// locally and to another worker to viewers capped to the base layer and not, caps moved
/// both ways (down at once, up at a keyframe), NACKs mapped back through the dropped-layer
/// numbering.
#[test]
fn svc_layer_selection_allocates_nothing() {
    svc_allocates_nothing(VideoCodec::Vp9(98));
}

/// The same for AV1 L1T3: frames of temporal layers 0, 2, 1, 2 in two packets each (the
/// second a continuation that takes its layer from the frame), chosen on the temporal axis.
#[test]
fn av1_temporal_layer_selection_allocates_nothing() {
    svc_allocates_nothing(VideoCodec::Av1(98));
}

/// The payload descriptor of packet `k` (of two) of picture `n`'s layer frame `sid`, for
/// `codec`; whether the packet ends the picture (the marker).
fn svc_payload(codec: VideoCodec, n: u32, sid: u8, k: u8, key: bool) -> ([u8; 5], bool) {
    match codec {
        VideoCodec::Vp9(_) | VideoCodec::Vp8(_) | VideoCodec::H264(_) => {
            let b0 = 0xa0
                | if key { 0 } else { 0x40 }
                | if k == 0 { 0x08 } else { 0 }
                | if k == 1 { 0x04 } else { 0 };
            (
                [b0, 0x80 | (n >> 8) as u8, n as u8, sid << 1, 0],
                sid == 2 && k == 1,
            )
        }
        VideoCodec::Av1(_) => {
            // One frame a picture (sid 0 only); its layer cycles 0, 2, 1, 2.
            let tid = [0u8, 2, 1, 2][(n % 4) as usize];
            let n_bit = if key && k == 0 { 0x08 } else { 0 };
            if k == 0 {
                // W = 1; an OBU_FRAME header with its extension, then payload.
                ([0x10 | n_bit, (6 << 3) | 0x04, tid << 5, 0x55, 0x55], false)
            } else {
                // Z = 1, W = 1: the rest of the frame OBU.
                ([0x90, 0x55, 0x55, 0x55, 0x55], true)
            }
        }
    }
}

fn svc_allocates_nothing(codec: VideoCodec) {
    use switchyard_shared::command::UplinkTrack;
    let layers: u8 = match codec {
        VideoCodec::Vp9(_) | VideoCodec::Vp8(_) | VideoCodec::H264(_) => 3,
        VideoCodec::Av1(_) => 1,
    };

    let TwoWorkers {
        stats,
        mut w0,
        mut w1,
        mut out,
        start,
        publisher,
        path,
    } = two_workers("svc", |stream, publisher| WorkerCommand::AddPublisher {
        id: SessionId(1),
        stream,
        remote: Some(publisher),
        ssrcs: vec![100],
        clock_rates: vec![90000],
        twcc_ext: None,
        srtp: Some(keys(1, 2)),
        ice: None,
        simulcast: None,
        uplink: vec![UplinkTrack {
            nack: true,
            rtx: None,
            video: Some(codec),
        }],
    });
    let viewer: SocketAddr = "127.0.0.1:6002".parse().expect("addr");
    for id in [3u64, 6] {
        let w = if id % 2 == 0 { &mut w0 } else { &mut w1 };
        w.handle_command(
            WorkerCommand::SetMaxLayer {
                id: SessionId(id),
                max_layer: 0,
            },
            start,
            &mut out,
        );
    }
    let mut tx = Context::new(SrtpProfile::AeadAes128Gcm, &[1; 28]).expect("ctx");
    let mut sub_tx = Context::new(SrtpProfile::AeadAes128Gcm, &[3; 28]).expect("ctx");
    let mut pkt = vec![0u8; 1400];
    let mut fb = vec![0u8; 256];
    let mut seq = 0u16;
    // Picture `n`: two packets per spatial layer, a keyframe every 30 pictures.
    let mut picture =
        |n: u32, at: Instant, w0: &mut Engine, w1: &mut Engine, out: &mut FixedOutput| {
            let key = n % 30 == 0;
            for sid in 0..layers {
                for k in 0..2 {
                    let (descriptor, marker) = svc_payload(codec, n, sid, k, key);
                    pkt[0] = 0x80;
                    pkt[1] = 98 | if marker { 0x80 } else { 0 };
                    pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                    pkt[4..8].copy_from_slice(&(n * 3000).to_be_bytes());
                    pkt[8..12].copy_from_slice(&100u32.to_be_bytes());
                    pkt[12..17].copy_from_slice(&descriptor);
                    seq = seq.wrapping_add(1);
                    let len = tx.protect_rtp(&mut pkt, 600).expect("protect");
                    w0.handle_datagram_to(&mut pkt[..len], publisher, None, at, out);
                    while let Some((w, msg)) = out.queued.pop() {
                        let e = if w == 0 { &mut *w0 } else { &mut *w1 };
                        e.handle_inbound(msg, at, out);
                    }
                }
            }
            if n % 10 == 5 {
                let lost = out.last_seq;
                let k = rtcp::write_nack(&mut fb, 7, 20, &[lost]).expect("nack");
                let k = sub_tx.protect_rtcp(&mut fb, k).expect("protect");
                w0.handle_datagram_to(&mut fb[..k], viewer, None, at, out);
                while let Some((w, msg)) = out.queued.pop() {
                    let e = if w == 0 { &mut *w0 } else { &mut *w1 };
                    e.handle_inbound(msg, at, out);
                }
            }
            if w0.poll_timeout().is_some_and(|t| t <= at) {
                w0.handle_timeout(at, out);
            }
        };
    let tick = Duration::from_millis(33);
    let at = |n: u32| start + tick * n;
    for n in 0..900 {
        picture(n, at(n), &mut w0, &mut w1, &mut out);
    }
    let retransmitted = stats.worker(0).expect("w0").get(Counter::Retransmitted);
    let sent = out.sent;
    ARMED.with(|a| a.set(true));
    for n in 900..1200 {
        picture(n, at(n), &mut w0, &mut w1, &mut out);
    }
    for (id, cap) in [(2u64, 0u8), (3, u8::MAX), (4, 1), (6, u8::MAX)] {
        let w = if id % 2 == 0 { &mut w0 } else { &mut w1 };
        w.handle_command(
            WorkerCommand::SetMaxLayer {
                id: SessionId(id),
                max_layer: cap,
            },
            at(1200),
            &mut out,
        );
    }
    for n in 1200..1800 {
        picture(n, at(n), &mut w0, &mut w1, &mut out);
    }
    ARMED.with(|a| a.set(false));
    let allocs = ALLOCS.load(Ordering::SeqCst);
    assert!(out.sent > sent, "media flowed");
    assert!(
        stats.worker(0).expect("w0").get(Counter::Retransmitted) > retransmitted,
        "NACKs answered through the SVC numbering"
    );
    assert_eq!(
        allocs, 0,
        "{allocs} allocations while choosing layers ({codec:?})"
    );
    let _ = std::fs::remove_file(&path);
}
