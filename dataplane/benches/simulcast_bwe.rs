//! What simulcast and per-viewer bandwidth estimation cost the worker per forwarded packet,
//! against plain forwarding, on one engine (no sockets: the output writes into one buffer,
//! so what is measured is the engine's own work: SRTP, rewrite, layer selection, the
//! transport-wide number and the estimator).
//!
//! Six modes, rounds alternating so each sees the same machine:
//! - `plain`: one video track, every viewer gets it;
//! - `simulcast`: three layers (1,200-byte packets, 1, 2 and 4 per frame for q, h and f),
//!   each with VP8 temporal layers 0, 2, 1, 2 as Chromium sends them, every viewer gets
//!   one (the top) whole;
//! - `simulcast+bwe`: the same, each viewer with transport-cc: every packet it is sent is
//!   numbered, and it sends a feedback every 100 ms (which the engine decrypts and reads;
//!   building it is the viewer's work and is not measured), and the engine's 100 ms tick
//!   runs. Reading the feedback is most of what this mode adds: one SRTCP packet per
//!   viewer per 100 ms, spread here over the 12 packets that viewer got meanwhile.
//! - `svc`: one VP9 stream with three spatial layers (1, 2 and 4 packets a picture), every
//!   viewer gets all of them: the descriptor read at ingress and each viewer's layer check;
//! - `svc capped`: the same, every viewer capped to the middle layer (3 of 7 packets a
//!   picture): the numbering closed up over the 4 it does not get, whose ingress counts.
//! - `simulcast tl0`: `simulcast` with every viewer capped to temporal layer 0 (a quarter
//!   of the top layer's frames): the temporal check per packet, the numbering and picture
//!   ids closed up over the dropped frames, a run per forwarded frame.
//!
//! The time is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) around the engine calls
//! (one reading per batch of datagrams), divided by the packets sent to viewers. The ingress of the layers a viewer does not get
//! is part of simulcast's price and is counted.
//!
//! `cargo bench -p switchyard-dataplane --bench simulcast_bwe -- [VIEWERS] [ROUNDS]`
//! (defaults 50, 7).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_dataplane::engine::{
    Engine, Inbound, Limits, Output, SendError, StreamId, Via, WorkerCommand,
};
use switchyard_shared::command::{
    LayerCodec, SessionId, Simulcast, SimulcastTrack, SrtpKeys, SrtpProfile, UplinkTrack,
    ALL_TRACKS,
};
use switchyard_shared::packet::{rtp, twcc};
use switchyard_shared::srtp::Context;
use switchyard_shared::stats::Stats;

const TWCC_EXT: u8 = 5;
const VP9: u8 = 98;
const FRAMES: u32 = 300;
/// Frames before the measured ones: layer rates become known and the estimates climb.
const WARM_UP: u32 = 150;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Writes every datagram into one buffer; notes each viewer's last transport-wide number.
struct Sink {
    buf: Vec<u8>,
    to_viewers: u64,
    last: Vec<Option<u16>>,
    /// Virtual time of the engine call in progress, µs.
    now_us: i64,
    /// Per viewer, when each transport-wide number went out (by number mod 1024): the
    /// viewer's feedback reports it 20 ms later, a path with room.
    sent_at: Vec<[i64; 1024]>,
}

impl Output for Sink {
    fn send_from(
        &mut self,
        _via: Via,
        dst: SocketAddr,
        _from: Option<IpAddr>,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<(), SendError> {
        let n = fill(&mut self.buf).ok_or(SendError::Cancelled)?;
        let v = usize::from(dst.port().wrapping_sub(7000));
        // RTP, not RTCP (RFC 5761 §4: 200–206 are the RTCP packet types).
        if v < self.last.len() && !(200..=206).contains(&self.buf[1]) {
            self.to_viewers += 1;
            if let Ok(h) = rtp::Header::parse(&self.buf[..n]) {
                if let Some(r) = rtp::find_extension(&self.buf[..n], &h, TWCC_EXT) {
                    self.last[v] = Some(u16::from_be_bytes([
                        self.buf[r.start],
                        self.buf[r.start + 1],
                    ]));
                }
            }
        }
        Ok(())
    }

    fn to_worker(&mut self, _worker: u16, msg: Inbound) -> Result<(), Inbound> {
        Err(msg)
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

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Simulcast,
    Bwe,
    Svc,
    SvcCapped,
    /// Simulcast with every viewer capped to VP8 temporal layer 0 (of 0, 2, 1, 2).
    SimTemporal,
}

/// One round: a fresh engine, `viewers` viewers, [`FRAMES`] frames at 30 frames/s of
/// virtual time. Returns CPU ns per packet sent to a viewer.
fn round(mode: Mode, viewers: usize) -> f64 {
    let path = std::env::temp_dir().join(format!("swy-bench-bwe-{}", std::process::id()));
    let stats = Arc::new(Stats::create(&path, 1, 4096, 1).expect("stats"));
    let start = Instant::now();
    let mut e = Engine::new(0, Limits::default(), stats, 1, start);
    let stream = StreamId(1);
    let publisher: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
    let mut out = Sink {
        buf: vec![0; 2048],
        to_viewers: 0,
        last: vec![None; viewers],
        now_us: 0,
        sent_at: vec![[0; 1024]; viewers],
    };
    let svc = matches!(mode, Mode::Svc | Mode::SvcCapped);
    let layered = matches!(mode, Mode::Simulcast | Mode::Bwe | Mode::SimTemporal);
    let simulcast = layered.then(|| Simulcast {
        rid_ext: 10,
        repaired_rid_ext: 11,
        mid_ext: 4,
        tracks: vec![SimulcastTrack {
            mid: "1".into(),
            rids: vec!["q".into(), "h".into(), "f".into()],
            ssrcs: Vec::new(),
            codec: LayerCodec::Vp8,
        }],
    });
    e.handle_command(
        WorkerCommand::AddPublisher {
            id: SessionId(1),
            stream,
            remote: Some(publisher),
            ssrcs: if layered { Vec::new() } else { vec![102] },
            clock_rates: vec![90000],
            twcc_ext: None,
            srtp: Some(keys(1, 2)),
            ice: None,
            simulcast,
            uplink: if svc {
                vec![UplinkTrack {
                    nack: false,
                    rtx: None,
                    video: Some(switchyard_shared::command::VideoCodec::Vp9(VP9)),
                }]
            } else {
                Vec::new()
            },
        },
        start,
        &mut out,
    );
    for v in 0..viewers {
        let id = SessionId(10 + v as u64);
        e.handle_command(
            WorkerCommand::AddSubscriber {
                id,
                stream,
                remote: Some(SocketAddr::from(([127, 0, 0, 1], 7000 + v as u16))),
                ssrcs: [1000 + v as u32, 0, 0, 0],
                payload_types: Vec::new(),
                // As a WHEP viewer's answer maps them: mid, rid and the publisher's
                // transport-wide numbers mean nothing on its leg and are dropped.
                extensions: Some([0; 16]),
                rtx: [Some((5000 + v as u32, 97)), None, None, None],
                tracks: ALL_TRACKS,
                plain: false,
                srtp: Some(keys(3, 4)),
                ice: None,
            },
            start,
            &mut out,
        );
        if mode == Mode::SvcCapped {
            e.handle_command(
                WorkerCommand::SetMaxLayer { id, max_layer: 1 },
                start,
                &mut out,
            );
        }
        if mode == Mode::SimTemporal {
            e.handle_command(
                WorkerCommand::SetMaxTemporal {
                    id,
                    max_temporal: 0,
                },
                start,
                &mut out,
            );
        }
        if mode == Mode::Bwe {
            e.handle_command(
                WorkerCommand::EnableBwe {
                    id,
                    twcc_ext: TWCC_EXT,
                },
                start,
                &mut out,
            );
        }
    }
    while e.poll_event().is_some() {}
    let mut tx = Context::new(SrtpProfile::AeadAes128Gcm, &[1; 28]).expect("ctx");
    let mut viewer_tx: Vec<Context> = (0..viewers)
        .map(|_| Context::new(SrtpProfile::AeadAes128Gcm, &[3; 28]).expect("ctx"))
        .collect();
    let mut reported: Vec<Option<u16>> = vec![None; viewers];
    let mut arrivals = vec![None; twcc::MAX_STATUSES];
    let mut pkt = vec![0u8; 1400];
    let mut fb = vec![0u8; twcc::MAX_LEN + 64];
    let mut seqs = [0u16; 3];
    let mut busy = Duration::ZERO;
    let mut frame = vec![(vec![0u8; 1400], 0usize); 8];
    let mut feedback = vec![(vec![0u8; twcc::MAX_LEN + 64], 0usize, 0usize); viewers];
    // The engine's share of the loop: CPU time around each call into it.
    macro_rules! timed {
        ($call:expr) => {{
            let t = thread_cpu();
            $call;
            busy += thread_cpu() - t;
        }};
    }
    // The first frames only warm up.
    let mut counted = 0u64;
    for n in 0..WARM_UP + FRAMES {
        let at = start + Duration::from_millis(33) * n;
        out.now_us = i64::from(n) * 33_000;
        if n == WARM_UP {
            busy = Duration::ZERO;
            counted = out.to_viewers;
        }
        let per_layer: &[(u8, u32)] = if layered || svc {
            &[(b'q', 1), (b'h', 2), (b'f', 4)]
        } else {
            &[(b'f', 4)]
        };
        let mut packets = 0;
        for (l, &(rid, count)) in per_layer.iter().enumerate() {
            for k in 0..count {
                // A VP9 stream numbers all its layers in one sequence.
                let seq = &mut seqs[if svc { 0 } else { l }];
                *seq = seq.wrapping_add(1);
                pkt[0] = 0x90;
                pkt[1] = 96 | if k + 1 == count { 0x80 } else { 0 };
                pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                pkt[4..8].copy_from_slice(&(n * 3000).to_be_bytes());
                pkt[8..12]
                    .copy_from_slice(&(100 + l as u32 + u32::from(!layered) * 2).to_be_bytes());
                // Chromium's one-byte extensions: mid "1", rid, transport-wide number.
                pkt[12..24].copy_from_slice(&[
                    0xbe, 0xde, 0, 2, 0x40, b'1', 0xa0, rid, 0x31, 0, n as u8, 0,
                ]);
                let key = n % 60 == 0 && k == 0;
                let pid = (n as u16) & 0x7fff;
                // Simulcast layers carry VP8 temporal layers 0, 2, 1, 2 (T and a TID byte),
                // as Chromium's L1T3 layers do.
                let x = if layered { 0xe0 } else { 0xc0 };
                pkt[24..26].copy_from_slice(&[if k == 0 { 0x90 } else { 0x80 }, x]);
                pkt[26..28].copy_from_slice(&(0x8000 | pid).to_be_bytes());
                pkt[28] = n as u8;
                let at = if layered {
                    pkt[29] = [0u8, 2, 1, 2][n as usize % 4] << 6;
                    30
                } else {
                    29
                };
                pkt[at..at + 3].copy_from_slice(&[u8::from(!key), 0, 0]);
                pkt[at + 3..at + 6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                let size = [(320u16, 180u16), (640, 360), (1280, 720)][if layered { l } else { 2 }];
                pkt[at + 6..at + 8].copy_from_slice(&size.0.to_le_bytes());
                pkt[at + 8..at + 10].copy_from_slice(&size.1.to_le_bytes());
                if svc {
                    // One SSRC; the VP9 descriptor (I, L, non-flexible) names the layer.
                    pkt[1] = VP9 | if l == 2 && k + 1 == count { 0x80 } else { 0 };
                    pkt[8..12].copy_from_slice(&102u32.to_be_bytes());
                    let b0 = 0xa0
                        | if key { 0 } else { 0x40 }
                        | if k == 0 { 0x08 } else { 0 }
                        | if k + 1 == count { 0x04 } else { 0 };
                    pkt[24..29].copy_from_slice(&[
                        b0,
                        0x80 | (pid >> 8) as u8,
                        pid as u8,
                        (l as u8) << 1,
                        n as u8,
                    ]);
                }
                let len = tx.protect_rtp(&mut pkt, 1200).expect("protect");
                let (buf, n) = &mut frame[packets];
                buf[..len].copy_from_slice(&pkt[..len]);
                *n = len;
                packets += 1;
            }
        }
        // One clock reading per batch: a thread CPU clock read is a system call, and one
        // per datagram would weigh on the mode with more (feedback) datagrams.
        timed!(for (buf, len) in &mut frame[..packets] {
            e.handle_datagram_to(&mut buf[..*len], publisher, None, at, &mut out);
        });
        if mode == Mode::Bwe && n % 3 == 0 {
            let mut ready = 0;
            for v in 0..viewers {
                let Some(last) = out.last[v] else { continue };
                let first = reported[v].map_or(last, |r| r.wrapping_add(1));
                let count = usize::from(last.wrapping_sub(first)) + 1;
                if count > arrivals.len() || last == first.wrapping_sub(1) {
                    continue;
                }
                // Each 20 ms after it was sent, 50 µs behind the one before it in a burst.
                for (i, a) in arrivals[..count].iter_mut().enumerate() {
                    let seq = first.wrapping_add(i as u16);
                    *a = Some(
                        out.sent_at[v][usize::from(seq) % 1024] + 20_000 + (i as i64 % 8) * 50,
                    );
                }
                let k = twcc::write(
                    &mut fb,
                    7,
                    1000 + v as u32,
                    first,
                    n as u8,
                    &arrivals[..count],
                )
                .expect("feedback");
                reported[v] = Some(last);
                let k = viewer_tx[v].protect_rtcp(&mut fb, k).expect("protect");
                let (buf, n, from) = &mut feedback[ready];
                buf[..k].copy_from_slice(&fb[..k]);
                *n = k;
                *from = v;
                ready += 1;
            }
            timed!(for (buf, len, v) in &mut feedback[..ready] {
                let from = SocketAddr::from(([127, 0, 0, 1], 7000 + *v as u16));
                e.handle_datagram_to(&mut buf[..*len], from, None, at, &mut out);
            });
        }
        if e.poll_timeout().is_some_and(|t| t <= at) {
            timed!(e.handle_timeout(at, &mut out));
        }
    }
    let _ = std::fs::remove_file(&path);
    let sent = out.to_viewers - counted;
    if std::env::var("BENCH_DEBUG").is_ok() {
        eprintln!(
            "packets per viewer per frame: {:.2}",
            sent as f64 / (viewers as f64 * f64::from(FRAMES))
        );
    }
    busy.as_nanos() as f64 / sent.max(1) as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let viewers: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(50);
    let rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(7);
    let mut results: [Vec<f64>; 6] = Default::default();
    for _ in 0..rounds {
        for (i, mode) in [
            Mode::Plain,
            Mode::Simulcast,
            Mode::Bwe,
            Mode::Svc,
            Mode::SvcCapped,
            Mode::SimTemporal,
        ]
        .into_iter()
        .enumerate()
        {
            results[i].push(round(mode, viewers));
        }
    }
    let [mut plain, mut sim, mut bwe, mut svc, mut capped, mut temporal] = results;
    let (p, s, b) = (median(&mut plain), median(&mut sim), median(&mut bwe));
    let (v, c) = (median(&mut svc), median(&mut capped));
    let t = median(&mut temporal);
    println!("{viewers} viewers, {rounds} rounds, CPU ns per packet sent to a viewer (median):");
    println!("  plain            {p:8.0}");
    println!("  simulcast        {s:8.0}   {:.3}x plain", s / p);
    println!(
        "  simulcast+bwe    {b:8.0}   {:.3}x plain, {:.3}x simulcast",
        b / p,
        b / s
    );
    println!("  svc              {v:8.0}   {:.3}x plain", v / p);
    println!("  svc capped       {c:8.0}   {:.3}x plain", c / p);
    println!(
        "  simulcast tl0    {t:8.0}   {:.3}x plain, {:.3}x simulcast",
        t / p,
        t / s
    );
}
