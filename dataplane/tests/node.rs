//! The data plane as a whole on loopback: real worker threads and sockets, commands over the
//! real shared-memory ring, SRTP peers made of plain UDP sockets.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_shared::command::{
    self, Command, Event, Keying, Role, SessionId, SessionSpec, SrtpKeys, SrtpProfile, MAX_TRACKS,
};
use switchyard_shared::config::Config;
use switchyard_shared::packet::rtp;
use switchyard_shared::ring::{self, ControlSide};
use switchyard_shared::srtp::Context;
use switchyard_shared::stats::{Counter, DropReason, Stats};

struct Node {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    ring: ControlSide,
    config: Config,
    dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_udp_ports(n: u16) -> u16 {
    // Find n consecutive free ports; bind-and-release is racy but fine on a test machine.
    'outer: for _ in 0..100 {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let base = probe.local_addr().expect("addr").port();
        drop(probe);
        if base > 65000 {
            continue;
        }
        for i in 0..n {
            if UdpSocket::bind(("127.0.0.1", base + i)).is_err() {
                continue 'outer;
            }
        }
        return base;
    }
    panic!("no free ports");
}

fn start(workers: u16) -> Node {
    let dir = std::env::temp_dir().join(format!(
        "swy-node-{}-{}",
        std::process::id(),
        free_udp_ports(1)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut config = Config::default();
    config.node.id = "test".into();
    config.ring.dir = Some(dir.clone());
    config.media.bind = "127.0.0.1".parse().expect("ip");
    config.media.port = free_udp_ports(workers);
    // Its own relay ports too: tests run in parallel, and the default (9443) is one range.
    config.media.relay_port = loop {
        let p = free_udp_ports(workers);
        if p >= config.media.port + workers || config.media.port >= p + workers {
            break p;
        }
    };
    config.media.workers = workers;
    config.media.pin = false;
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (config.clone(), stop.clone());
    let thread = std::thread::spawn(move || switchyard_dataplane::run_until(c, s));
    let deadline = Instant::now() + Duration::from_secs(10);
    let ring = loop {
        match ring::attach_control(&config.ring_path()) {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("data plane did not create its ring: {e}"),
        }
    };
    let mut node = Node {
        stop,
        thread: Some(thread),
        ring,
        config,
        dir,
    };
    match node.next_event() {
        Event::Hello { workers: w, .. } => assert_eq!(w, workers),
        other => panic!("expected Hello, got {other:?}"),
    }
    node
}

impl Node {
    fn send(&mut self, cmd: &Command) {
        let mut buf = Vec::new();
        command::encode(cmd, &mut buf).expect("encode");
        self.ring.commands.push(&buf).expect("ring has room");
    }

    fn next_event(&mut self) -> Event {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = Vec::new();
        loop {
            if self.ring.events.pop(&mut buf).expect("ring") {
                return command::decode(&buf).expect("event decodes");
            }
            assert!(Instant::now() < deadline, "no event within 5 s");
            self.ring.events.wait(Duration::from_millis(50));
        }
    }

    fn media(&self, worker: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.config.media.port + worker))
    }

    fn stats(&self) -> Stats {
        Stats::open(&self.config.stats_path()).expect("stats")
    }

    fn add(&mut self, spec: SessionSpec) {
        let id = spec.id;
        self.send(&Command::AddSession(spec));
        assert_eq!(self.next_event(), Event::SessionAdded { id });
    }
}

fn keys(remote: u8, local: u8) -> SrtpKeys {
    let p = SrtpProfile::AeadAes128Gcm;
    SrtpKeys {
        profile: p,
        remote: vec![remote; p.master_len()],
        local: vec![local; p.master_len()],
    }
}

fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    s
}

fn rtp_packet(ctx: &mut Context, seq: u16, ssrc: u32) -> Vec<u8> {
    let mut b = vec![0u8; 300];
    b[0] = 0x80;
    b[1] = 96;
    b[2..4].copy_from_slice(&seq.to_be_bytes());
    b[4..8].copy_from_slice(&(u32::from(seq) * 90).to_be_bytes());
    b[8..12].copy_from_slice(&ssrc.to_be_bytes());
    b[12..14].copy_from_slice(&seq.to_be_bytes());
    let n = ctx.protect_rtp(&mut b, 200).expect("protect");
    b.truncate(n);
    b
}

fn sum(stats: &Stats, c: Counter) -> u64 {
    (0..stats.workers())
        .map(|w| stats.worker(w).map_or(0, |x| x.get(c)))
        .sum()
}

#[test]
fn forwards_across_workers_and_counts_bad_input() {
    let mut node = start(2);
    let publisher = peer();
    node.add(SessionSpec {
        id: SessionId(1),
        worker: 0,
        stream: "room/cam".into(),
        role: Role::Publisher {
            ssrcs: vec![],
            clock_rates: vec![],
            simulcast: None,
            uplink: Vec::new(),
        },
        remote: Some(publisher.local_addr().expect("addr")),
        keying: Keying::Static(keys(1, 2)),
        ice: None,
        twcc_ext: None,
        created_ms: 0,
        control: Default::default(),
    });
    let mut subs = Vec::new();
    for i in 0..4u64 {
        let s = peer();
        let ssrcs = vec![1000 + i as u32; MAX_TRACKS];
        node.add(SessionSpec {
            id: SessionId(10 + i),
            worker: (i % 2) as u16,
            stream: "room/cam".into(),
            role: Role::Subscriber {
                ssrcs,
                payload_types: Vec::new(),
                extensions: None,
                rtx: Vec::new(),
                tracks: switchyard_shared::command::ALL_TRACKS,
            },
            remote: Some(s.local_addr().expect("addr")),
            keying: Keying::Static(keys(3, 20 + i as u8)),
            ice: None,
            twcc_ext: None,
            created_ms: 0,
            control: Default::default(),
        });
        subs.push(s);
    }

    let mut tx = Context::new(SrtpProfile::AeadAes128Gcm, &[1; 28]).expect("ctx");
    let first = rtp_packet(&mut tx, 1, 77);
    publisher.send_to(&first, node.media(0)).expect("send");
    for seq in 2..=100u16 {
        publisher
            .send_to(&rtp_packet(&mut tx, seq, 77), node.media(0))
            .expect("send");
        if seq % 20 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for (i, s) in subs.iter().enumerate() {
        let mut rx = Context::new(SrtpProfile::AeadAes128Gcm, &[20 + i as u8; 28]).expect("ctx");
        let mut buf = [0u8; 2048];
        let mut last = None;
        for k in 0..100u16 {
            let (n, from) = s.recv_from(&mut buf).expect("subscriber receives");
            assert_eq!(
                from,
                node.media((i % 2) as u16),
                "sent from the owning worker"
            );
            let len = rx.unprotect_rtp(&mut buf[..n]).expect("decrypts");
            let h = rtp::Header::parse(&buf[..len]).expect("rtp");
            assert_eq!(h.ssrc, 1000 + i as u32);
            if let Some(l) = last {
                assert_eq!(h.sequence, u16::wrapping_add(l, 1));
            }
            last = Some(h.sequence);
            assert_eq!(&buf[12..14], &(k + 1).to_be_bytes(), "in order");
        }
    }
    let stats = node.stats();
    assert!(sum(&stats, Counter::CrossWorkerOut) >= 100);

    // Bad input from everywhere: each is counted under its reason and nothing is forwarded.
    let stranger = peer();
    let mut wrong = Context::new(SrtpProfile::AeadAes128Gcm, &[9; 28]).expect("ctx");
    let cases: Vec<(&UdpSocket, Vec<u8>, DropReason)> = vec![
        (&publisher, vec![0x80, 96, 1], DropReason::Malformed),
        (
            &publisher,
            rtp_packet(&mut wrong, 500, 77),
            DropReason::SrtpAuth,
        ),
        (&publisher, first.clone(), DropReason::Replay),
        (
            &publisher,
            vec![
                0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            DropReason::Stun,
        ),
        (
            &publisher,
            vec![22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            DropReason::Dtls,
        ),
        (&publisher, vec![0x40; 64], DropReason::UnknownKind),
        (&publisher, vec![0x80; 1600], DropReason::Oversize),
        (
            &stranger,
            rtp_packet(&mut tx, 600, 77),
            DropReason::UnknownSource,
        ),
    ];
    for (sock, bytes, reason) in cases {
        let before = sum(&stats, reason.counter());
        sock.send_to(&bytes, node.media(0)).expect("send");
        let deadline = Instant::now() + Duration::from_secs(2);
        while sum(&stats, reason.counter()) == before {
            assert!(Instant::now() < deadline, "{reason:?} was not counted");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Random garbage: all dropped, the worker lives on.
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 1400) as usize;
        let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
        let _ = publisher.send_to(&bytes, node.media((x % 2) as u16));
    }
    publisher
        .send_to(&rtp_packet(&mut tx, 101, 77), node.media(0))
        .expect("send");
    for s in &subs {
        let mut buf = [0u8; 2048];
        let (n, _) = s
            .recv_from(&mut buf)
            .expect("still forwarding after garbage");
        assert!(n > 200);
    }

    // Remove everything; the data plane answers and the gauges go to zero.
    for id in [1u64, 10, 11, 12, 13] {
        node.send(&Command::RemoveSession { id: SessionId(id) });
        let ev = node.next_event();
        assert!(
            matches!(ev, Event::SessionRemoved { id: got, .. } if got == SessionId(id)),
            "{ev:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while sum(&stats, Counter::Sessions) != 0 {
        assert!(Instant::now() < deadline, "sessions gauge stuck");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn snapshot_lists_live_sessions_and_refuses_bad_commands() {
    let mut node = start(1);
    let p = peer();
    node.add(SessionSpec {
        id: SessionId(5),
        worker: 0,
        stream: "a/b".into(),
        role: Role::Publisher {
            ssrcs: vec![1],
            clock_rates: vec![],
            simulcast: None,
            uplink: Vec::new(),
        },
        remote: Some(p.local_addr().expect("addr")),
        keying: Keying::Static(keys(1, 2)),
        ice: None,
        twcc_ext: None,
        created_ms: 7,
        // Stored and handed back untouched: the data plane never reads it.
        control: switchyard_shared::command::Opaque(vec![1, 2, 3]),
    });
    let bad = [
        (SessionId(5), 0u16, "a/c", 28usize), // duplicate id
        (SessionId(6), 3, "a/c", 28),         // no such worker
        (SessionId(7), 0, "a/c", 5),          // key length
        (SessionId(8), 0, "a/b", 28),         // stream already has a publisher
    ];
    for (id, worker, stream, klen) in bad {
        let mut k = keys(1, 2);
        k.remote.truncate(klen);
        node.send(&Command::AddSession(SessionSpec {
            id,
            worker,
            stream: stream.into(),
            role: Role::Publisher {
                ssrcs: vec![],
                clock_rates: vec![],
                simulcast: None,
                uplink: Vec::new(),
            },
            remote: None,
            keying: Keying::Static(k),
            ice: None,
            twcc_ext: None,
            created_ms: 0,
            control: Default::default(),
        }));
        let ev = node.next_event();
        assert!(
            matches!(ev, Event::CommandFailed { id: got, .. } if got == id),
            "{ev:?}"
        );
    }
    node.send(&Command::Snapshot { request: 42 });
    // A snapshot starts by repeating the Hello, for control planes that attach late.
    let hello = node.next_event();
    assert!(
        matches!(hello, Event::Hello { workers: 1, .. }),
        "{hello:?}"
    );
    match node.next_event() {
        Event::SnapshotSession { request: 42, spec } => {
            assert_eq!(spec.id, SessionId(5));
            assert_eq!(spec.created_ms, 7);
            assert_eq!(spec.control.0, vec![1, 2, 3]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        node.next_event(),
        Event::SnapshotDone {
            request: 42,
            sessions: 1,
            // The refused adds' ids count too: a control plane must not hand them out again.
            highest_id: SessionId(8),
        }
    );
}
