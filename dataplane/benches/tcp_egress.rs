//! What a subscriber reached over ICE-TCP costs the worker per packet, against one reached
//! over UDP: the same I/O engine ([`Io`]) fans 1,200-byte packets out to N peers that are
//! either UDP sockets or ICE-TCP connections, and the sending thread's CPU time (user +
//! system, `CLOCK_THREAD_CPUTIME_ID`) is divided by the packets it sent. Everything above
//! the I/O layer (SRTP, rewrite) is the same for both and left out.
//!
//! Two shapes per transport: one packet per peer per loop turn (audio, or video at low
//! rates), and bursts of 8 per peer per turn (a video frame), which a connection writes as
//! one `write` and UDP sends as 8 datagrams. UDP and TCP rounds alternate so both see the
//! same machine; the medians of all rounds are printed.
//!
//! `cargo bench -p switchyard-dataplane --bench tcp_egress -- [PEERS] [ROUNDS] [ENGINE] [GSO]`
//! (defaults 100, 7, auto, off). Receivers run on another thread and only drain their
//! sockets. GSO `auto` sends a UDP peer's burst as one `UDP_SEGMENT` message (off, the
//! default, keeps the figures in docs/performance.md comparable: one datagram per message).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_dataplane::io::{EngineKind, Io, IoConfig, RxEvent};

const PACKET: usize = 1200;
/// Packets per peer per round.
const PER_PEER: usize = 2_000;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Drain every socket in `fds` until `stop` (non-blocking reads, a short sleep when idle).
fn drain(mut udp: Vec<UdpSocket>, mut tcp: Vec<TcpStream>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        let mut any = false;
        for s in &mut udp {
            while s.recv(&mut buf).is_ok() {
                any = true;
            }
        }
        for s in &mut tcp {
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {
                any = true;
            }
        }
        if !any {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn io(kind: EngineKind, gso: bool) -> (Io, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let a = s.local_addr().expect("addr");
    let cfg = IoConfig {
        tx_slots: 16384,
        gso,
        ..IoConfig::default()
    };
    (Io::new(kind, s, &cfg).expect("engine"), a)
}

/// Send `PER_PEER` packets to each of `peers`, `burst` per peer per turn; CPU ns per packet.
fn send(io: &mut Io, peers: &[SocketAddr], burst: usize) -> f64 {
    let packet = [0x5au8; PACKET];
    let turns = PER_PEER / burst;
    let before = thread_cpu();
    for _ in 0..turns {
        for &p in peers {
            for _ in 0..burst {
                let tx = io.tx();
                let Some(b) = tx.alloc() else {
                    break;
                };
                tx.buf_mut(b)[..PACKET].copy_from_slice(&packet);
                tx.queue(b, PACKET, p);
            }
        }
        io.poll(Duration::ZERO, &mut |_: RxEvent<'_>, _| {})
            .expect("poll");
    }
    io.flush().expect("flush");
    let cpu = thread_cpu() - before;
    cpu.as_nanos() as f64 / (turns * burst * peers.len()) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let peers: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(100);
    let rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(7);
    let kind: EngineKind = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(EngineKind::Auto);
    let gso = args.get(3).is_some_and(|s| s == "auto");

    // UDP peers.
    let (mut udp_io, udp_addr) = io(kind, gso);
    let udp_socks: Vec<UdpSocket> = (0..peers)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.set_nonblocking(true).expect("nonblocking");
            // Deep enough for a round's bursts: the receiver thread must not drop (it would
            // not change the sender's cost, but keeps the comparison clean).
            let size: libc::c_int = 4 << 20;
            // SAFETY: setsockopt with a valid int option value.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            s
        })
        .collect();
    let udp_peers: Vec<SocketAddr> = udp_socks
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect();
    let _ = udp_addr;

    // ICE-TCP peers: connections to the engine's listener, each announced by one framed
    // packet so the engine knows it.
    let (mut tcp_io, _) = io(kind, gso);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let tcp_addr = listener.local_addr().expect("addr");
    tcp_io.add_tcp(listener, Default::default()).expect("tcp");
    let tcp_socks: Vec<TcpStream> = (0..peers)
        .map(|i| {
            // From 127.0.x.y, a few peers per address: the listener caps connections per IP.
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            let from = SocketAddr::from(([127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8], 0));
            s.bind(&from.into()).expect("bind client");
            s.connect(&tcp_addr.into()).expect("connect");
            let mut s: TcpStream = s.into();
            std::io::Write::write_all(&mut s, &[0, 1, 0]).expect("hello");
            s
        })
        .collect();
    let tcp_peers: Vec<SocketAddr> = tcp_socks
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while seen < peers {
        assert!(Instant::now() < deadline, "connections not accepted");
        tcp_io
            .poll(Duration::from_millis(5), &mut |_, _| seen += 1)
            .expect("poll");
    }
    for s in &tcp_socks {
        s.set_nonblocking(true).expect("nonblocking");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let stop = stop.clone();
        std::thread::spawn(move || drain(udp_socks, tcp_socks, stop))
    };
    println!(
        "engine {:?}, UDP_SEGMENT {}, {peers} peers, {PER_PEER} packets of {PACKET} bytes per peer per round, {rounds} rounds",
        udp_io.kind(),
        if gso { "on" } else { "off" }
    );
    for burst in [1usize, 8] {
        let (mut u, mut t) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            u.push(send(&mut udp_io, &udp_peers, burst));
            t.push(send(&mut tcp_io, &tcp_peers, burst));
        }
        let (tc, _) = tcp_io.tcp_counters();
        let (mu, mt) = (median(u.clone()), median(t.clone()));
        println!(
            "burst {burst}: UDP {mu:.0} ns/packet, ICE-TCP {mt:.0} ns/packet, TCP/UDP {:.2} \
             (rounds UDP {:?}, TCP {:?}; TCP buffer-full drops so far {}; UDP send errors {})",
            mt / mu,
            u.iter().map(|x| x.round() as u64).collect::<Vec<_>>(),
            t.iter().map(|x| x.round() as u64).collect::<Vec<_>>(),
            tc.out_dropped,
            udp_io.send_errors(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = drainer.join();
}
