//! Both I/O engines against a std UdpSocket peer on loopback. io_uring cases are skipped
//! (with a message) when the kernel or a seccomp policy refuses io_uring.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use switchyard_dataplane::io::{
    probe_uring, EngineKind, Io, IoConfig, RxEvent, Via, MAX_DATAGRAM, TX_BUF,
};

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Io>();
};

/// The engines this machine can run: mmsg always, uring when the probe passes.
fn engines(test: &str) -> Vec<EngineKind> {
    let mut v = vec![EngineKind::Mmsg];
    match probe_uring() {
        Ok(()) => v.push(EngineKind::Uring),
        Err(e) => println!("{test}: io_uring engine skipped: {e}"),
    }
    v
}

fn cfg() -> IoConfig {
    IoConfig {
        recv_buffer: 4 << 20,
        send_buffer: 4 << 20,
        rx_batch: 64,
        tx_slots: 1024,
        uring_sendmmsg: true,
        gso: true,
        relay_gro: true,
    }
}

fn bind(addr: &str) -> UdpSocket {
    UdpSocket::bind(addr).expect("bind loopback")
}

fn io_on(kind: EngineKind, addr: &str, cfg: &IoConfig) -> (Io, SocketAddr) {
    let s = bind(addr);
    let local = s.local_addr().expect("local addr");
    let io = Io::new(kind, s, cfg).expect("engine");
    assert_eq!(io.kind(), kind);
    (io, local)
}

fn payload(seq: u32) -> Vec<u8> {
    let len = 8 + (seq as usize * 37) % 1192;
    let mut v = vec![0u8; len];
    v[..4].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in v.iter_mut().enumerate().skip(4) {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    v
}

/// Run an echo server on `io` in a thread until `stop`; returns (datagrams, max batch).
fn spawn_echo(
    mut io: Io,
    peer: SocketAddr,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(usize, usize)> {
    thread::spawn(move || {
        let (mut total, mut max_batch) = (0usize, 0usize);
        while !stop.load(Ordering::Relaxed) {
            let n = io
                .poll(Duration::from_millis(100), &mut |ev, tx| match ev {
                    RxEvent::Datagram { data, src, .. } => {
                        assert_eq!(src, peer, "source address");
                        assert!(tx.send_copy(data, src), "tx pool exhausted in echo");
                    }
                    RxEvent::Oversize { .. } => panic!("unexpected oversize"),
                })
                .expect("poll");
            total += n;
            max_batch = max_batch.max(n);
        }
        io.flush().expect("flush");
        (total, max_batch)
    })
}

fn echo_many(kind: EngineKind, local_addr: &str, count: u32) {
    echo_many_with(kind, local_addr, count, &cfg());
}

fn echo_many_with(kind: EngineKind, local_addr: &str, count: u32, cfg: &IoConfig) {
    let (io, local) = io_on(kind, local_addr, cfg);
    let peer = bind(local_addr);
    peer.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let waker = io.waker();
    let h = spawn_echo(io, peer.local_addr().expect("peer addr"), stop.clone());

    // Windowed so neither side's receive buffer can overflow.
    const WINDOW: u32 = 32;
    let (mut sent, mut got) = (0u32, 0u32);
    let mut seen = vec![false; count as usize];
    let mut buf = [0u8; 2048];
    while got < count {
        while sent < count && sent - got < WINDOW {
            peer.send_to(&payload(sent), local).expect("send");
            sent += 1;
        }
        // EINTR is a signal landing on this thread (the test harness), not a lost echo.
        let (n, from) = loop {
            match peer.recv_from(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        }
        .unwrap_or_else(|e| panic!("{kind:?}: echo {got}/{count} did not arrive: {e}"));
        assert_eq!(from, local, "echo comes from the engine's socket");
        let seq = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
        assert_eq!(&buf[..n], &payload(seq)[..], "content intact");
        assert!(!seen[seq as usize], "duplicate {seq}");
        seen[seq as usize] = true;
        got += 1;
    }
    stop.store(true, Ordering::Relaxed);
    waker.wake();
    let (total, _) = h.join().expect("echo thread");
    assert_eq!(total, count as usize);
}

#[test]
fn echo_10k_datagrams() {
    for kind in engines("echo_10k_datagrams") {
        echo_many(kind, "127.0.0.1:0", 10_000);
    }
}

#[test]
fn echo_with_one_sqe_per_send() {
    // The io_uring engine's other send mode (the default sends with sendmmsg first).
    if engines("echo_with_one_sqe_per_send").contains(&EngineKind::Uring) {
        let c = IoConfig {
            uring_sendmmsg: false,
            ..cfg()
        };
        echo_many_with(EngineKind::Uring, "127.0.0.1:0", 5_000, &c);
    }
}

#[test]
fn ipv6_loopback_echo() {
    if UdpSocket::bind("[::1]:0").is_err() {
        println!("ipv6_loopback_echo: skipped, no IPv6 loopback");
        return;
    }
    for kind in engines("ipv6_loopback_echo") {
        echo_many(kind, "[::1]:0", 500);
    }
}

#[test]
fn batches_larger_than_one() {
    for kind in engines("batches_larger_than_one") {
        let (mut io, local) = io_on(kind, "127.0.0.1:0", &cfg());
        let peer = bind("127.0.0.1:0");
        for i in 0..50u32 {
            peer.send_to(&payload(i), local).expect("send");
        }
        let (mut total, mut max_batch) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while total < 50 && Instant::now() < deadline {
            let mut stamps = Vec::new();
            let n = io
                .poll(Duration::from_millis(200), &mut |ev, _| {
                    if let RxEvent::Datagram { at, .. } = ev {
                        stamps.push(at);
                    }
                })
                .expect("poll");
            assert!(
                stamps.windows(2).all(|w| w[0] == w[1]),
                "one Instant per batch"
            );
            total += n;
            max_batch = max_batch.max(n);
        }
        assert_eq!(total, 50, "{kind:?}");
        assert!(max_batch > 1, "{kind:?}: max batch {max_batch}");
    }
}

#[test]
fn tx_pool_exhaustion_recovers() {
    for kind in engines("tx_pool_exhaustion_recovers") {
        let c = IoConfig {
            tx_slots: 4,
            ..cfg()
        };
        let (mut io, _) = io_on(kind, "127.0.0.1:0", &c);
        let peer = bind("127.0.0.1:0");
        peer.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let dst = peer.local_addr().expect("peer addr");
        let mut bufs = Vec::new();
        while let Some(b) = io.tx().alloc() {
            bufs.push(b);
        }
        assert_eq!(bufs.len(), 4, "{kind:?}");
        assert!(!io.tx().send_copy(b"x", dst), "send_copy refuses when full");
        for (i, b) in bufs.into_iter().enumerate() {
            let buf = io.tx().buf_mut(b);
            assert_eq!(buf.len(), TX_BUF);
            buf[0] = i as u8;
            io.tx().queue(b, 1, dst);
        }
        // Completions are reaped by poll; the pool must come back quickly.
        let deadline = Instant::now() + Duration::from_secs(5);
        let b = loop {
            io.poll(Duration::from_millis(10), &mut |_, _| {})
                .expect("poll");
            if let Some(b) = io.tx().alloc() {
                break b;
            }
            assert!(Instant::now() < deadline, "{kind:?}: pool never recovered");
        };
        io.tx().release(b);
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        for _ in 0..4 {
            let (n, _) = peer.recv_from(&mut buf).expect("queued sends arrive");
            assert_eq!(n, 1);
            got.push(buf[0]);
        }
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert_eq!(io.send_errors(), 0);
    }
}

#[test]
fn waker_interrupts_long_poll() {
    for kind in engines("waker_interrupts_long_poll") {
        let (mut io, _) = io_on(kind, "127.0.0.1:0", &cfg());
        let waker = io.waker();
        let h = thread::spawn(move || {
            let start = Instant::now();
            let n = io
                .poll(Duration::from_secs(10), &mut |_, _| {})
                .expect("poll");
            (n, Instant::now(), start)
        });
        thread::sleep(Duration::from_millis(200));
        let woke = Instant::now();
        waker.wake();
        waker.wake(); // coalesced
        let (n, returned, start) = h.join().expect("poll thread");
        assert_eq!(n, 0);
        let latency = returned.saturating_duration_since(woke);
        assert!(
            latency < Duration::from_millis(500),
            "{kind:?}: poll returned {latency:?} after wake (blocked {:?})",
            returned - start
        );
    }
}

#[test]
fn oversize_then_normal() {
    for kind in engines("oversize_then_normal") {
        let (mut io, local) = io_on(kind, "127.0.0.1:0", &cfg());
        let peer = bind("127.0.0.1:0");
        let peer_addr = peer.local_addr().expect("peer addr");
        peer.send_to(&[7u8; 2000], local).expect("send big");
        peer.send_to(&[8u8; MAX_DATAGRAM + 100], local)
            .expect("send a bit big");
        peer.send_to(&[9u8; MAX_DATAGRAM], local).expect("send max");
        peer.send_to(&[1u8; 100], local).expect("send small");
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while events.len() < 4 && Instant::now() < deadline {
            io.poll(Duration::from_millis(200), &mut |ev, _| match ev {
                RxEvent::Oversize { src } => events.push(("oversize", 0, src)),
                RxEvent::Datagram { data, src, .. } => {
                    assert!(data.iter().all(|&b| b == data[0]));
                    events.push(("datagram", data.len(), src));
                }
            })
            .expect("poll");
        }
        assert_eq!(
            events,
            vec![
                ("oversize", 0, peer_addr),
                ("oversize", 0, peer_addr),
                ("datagram", MAX_DATAGRAM, peer_addr),
                ("datagram", 100, peer_addr),
            ],
            "{kind:?}"
        );
    }
}

#[test]
fn kernel_drops_reported() {
    for kind in engines("kernel_drops_reported") {
        let c = IoConfig {
            recv_buffer: 1, // the kernel rounds up to its minimum (a few KiB)
            ..cfg()
        };
        let (mut io, local) = io_on(kind, "127.0.0.1:0", &c);
        let peer = bind("127.0.0.1:0");
        for _ in 0..2000 {
            peer.send_to(&[0u8; 1000], local).expect("flood");
        }
        assert_eq!(io.kernel_drops(), 0, "nothing seen before polling");
        // The count rides on the next datagram the kernel does queue.
        let deadline = Instant::now() + Duration::from_secs(5);
        while io.kernel_drops() == 0 {
            assert!(Instant::now() < deadline, "{kind:?}: no drops reported");
            io.poll(Duration::from_millis(20), &mut |_, _| {})
                .expect("poll");
            peer.send_to(&[0u8; 10], local).expect("probe");
        }
        assert!(io.kernel_drops() < 2000, "{kind:?}: {}", io.kernel_drops());
    }
}

#[test]
fn auto_picks_a_real_engine() {
    let io = Io::new(EngineKind::Auto, bind("127.0.0.1:0"), &cfg()).expect("auto");
    assert_ne!(io.kind(), EngineKind::Auto);
    if probe_uring().is_ok() {
        assert_eq!(io.kind(), EngineKind::Uring);
    }
}

#[test]
fn send_to_wrong_family_is_counted_not_fatal() {
    for kind in engines("send_to_wrong_family_is_counted_not_fatal") {
        let (mut io, _) = io_on(kind, "127.0.0.1:0", &cfg());
        let v6: SocketAddr = "[2001:db8::1]:9".parse().expect("addr");
        assert!(io.tx().send_copy(b"x", v6));
        let deadline = Instant::now() + Duration::from_secs(5);
        while io.send_errors() == 0 {
            assert!(Instant::now() < deadline, "{kind:?}: error not counted");
            io.poll(Duration::from_millis(10), &mut |_, _| {})
                .expect("poll");
        }
        assert!(io.tx().alloc().is_some());
    }
}

/// A worker's two sockets: each datagram says which one it came in on, and each reply
/// leaves from the socket it is queued on (the peer sees the right source port).
#[test]
fn relay_socket_is_served_alongside_the_media_socket() {
    for kind in engines("relay_socket_is_served_alongside_the_media_socket") {
        let media = bind("127.0.0.1:0");
        let relay = bind("127.0.0.1:0");
        let (media_addr, relay_addr) = (
            media.local_addr().expect("addr"),
            relay.local_addr().expect("addr"),
        );
        let mut io = Io::with_relay(kind, media, Some(relay), &cfg()).expect("engine");
        let peer = bind("127.0.0.1:0");
        peer.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // Each datagram names the socket the reply must leave from: 0 media, 1 relay.
        for (to, reply_via) in [(relay_addr, 0u8), (media_addr, 1), (relay_addr, 1)] {
            peer.send_to(&[reply_via, 7, 7], to).expect("send");
        }
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.len() < 3 {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: datagrams did not arrive"
            );
            io.poll(Duration::from_millis(50), &mut |ev, tx| {
                if let RxEvent::Datagram { data, src, via, .. } = ev {
                    seen.push(via);
                    let reply = if data[0] == 1 { Via::Relay } else { Via::Media };
                    let b = tx.alloc().expect("tx slot");
                    tx.buf_mut(b)[..3].copy_from_slice(&[data[0], 9, 9]);
                    tx.queue_via(b, 3, src, reply);
                }
            })
            .expect("poll");
        }
        io.flush().expect("flush");
        seen.sort_by_key(|v| v.index());
        assert_eq!(seen, [Via::Media, Via::Relay, Via::Relay], "{kind:?}");
        let mut buf = [0u8; 16];
        let mut from = Vec::new();
        for _ in 0..3 {
            let (n, src) = peer.recv_from(&mut buf).expect("reply");
            assert_eq!(&buf[1..n], &[9, 9]);
            let want = if buf[0] == 1 { relay_addr } else { media_addr };
            assert_eq!(
                src, want,
                "{kind:?}: reply left from the socket it was queued on"
            );
            from.push(src);
        }
        assert_eq!(io.send_errors(), 0);
    }
}

/// Without a relay socket, relay sends are refused and counted, never sent from the media
/// socket.
#[test]
fn relay_sends_without_a_relay_socket_are_refused() {
    use switchyard_dataplane::io::Via;
    for kind in engines("relay_sends_without_a_relay_socket_are_refused") {
        let (mut io, _) = io_on(kind, "127.0.0.1:0", &cfg());
        let peer = bind("127.0.0.1:0");
        peer.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let tx = io.tx();
        let b = tx.alloc().expect("slot");
        tx.queue_via(b, 3, peer.local_addr().expect("addr"), Via::Relay);
        io.flush().expect("flush");
        assert_eq!(io.send_errors(), 1, "{kind:?}");
        let mut buf = [0u8; 8];
        assert!(
            peer.recv_from(&mut buf).is_err(),
            "{kind:?}: nothing was sent"
        );
    }
}

/// A socket bound to the wildcard the way the node binds its media sockets (a `[::]` one
/// dual-stack).
fn bind_wildcard(addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().expect("addr");
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )
    .expect("socket");
    if addr.is_ipv6() {
        s.set_only_v6(false).expect("dual-stack");
    }
    s.bind(&addr.into()).expect("bind wildcard");
    s.into()
}

/// The engine on `wildcard` receives from a client at `client` a datagram sent to its
/// port on `to`; it must report `to` as the destination and answer from each of `froms`
/// (in order), and the client must see each answer come from that address.
/// The io_uring engine runs twice: sendmmsg first, and one SENDMSG SQE per send.
fn answers_from_the_address_asked(
    (kind, cfg): (EngineKind, &IoConfig),
    wildcard: &str,
    client: &str,
    to: IpAddr,
    froms: &[IpAddr],
) {
    let s = bind_wildcard(wildcard);
    let port = s.local_addr().expect("local addr").port();
    let mut io = Io::new(kind, s, cfg).expect("engine");
    let peer = bind(client);
    peer.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    peer.send_to(b"check", SocketAddr::new(to, port))
        .expect("send");
    let mut dst = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while dst.is_none() && Instant::now() < deadline {
        io.poll(Duration::from_millis(100), &mut |ev, tx| {
            if let RxEvent::Datagram {
                data, src, dst: d, ..
            } = ev
            {
                assert_eq!(&data[..], b"check");
                assert_eq!(src, peer.local_addr().expect("peer addr"));
                dst = Some(d);
                for (k, from) in froms.iter().enumerate() {
                    let b = tx.alloc().expect("slot");
                    tx.buf_mut(b)[0] = k as u8;
                    tx.queue_from(b, 1, src, Via::Media, Some(*from));
                }
            }
        })
        .expect("poll");
    }
    assert_eq!(
        dst,
        Some(Some(to)),
        "{kind:?} on {wildcard}: destination reported"
    );
    io.flush().expect("flush");
    let mut buf = [0u8; 16];
    for (k, from) in froms.iter().enumerate() {
        let (n, got) = loop {
            match peer.recv_from(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        }
        .unwrap_or_else(|e| panic!("{kind:?} on {wildcard}: answer {k} from {from}: {e}"));
        assert_eq!(&buf[..n], &[k as u8]);
        assert_eq!(
            got,
            SocketAddr::new(*from, port),
            "{kind:?} on {wildcard}: answer {k} leaves from the address asked for"
        );
    }
    assert_eq!(io.send_errors(), 0);
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Each engine this machine runs, and io_uring also in its one-SQE-per-send mode.
fn engine_configs(test: &str) -> Vec<(EngineKind, IoConfig)> {
    let mut v = Vec::new();
    for kind in engines(test) {
        v.push((kind, cfg()));
        if kind == EngineKind::Uring {
            let sqe = IoConfig {
                uring_sendmmsg: false,
                ..cfg()
            };
            v.push((kind, sqe));
        }
    }
    v
}

#[test]
fn pktinfo_ipv4_wildcard() {
    // All of 127/8 is on lo: 127.0.0.2 is a second local address without any setup.
    for (kind, c) in engine_configs("pktinfo_ipv4_wildcard") {
        answers_from_the_address_asked(
            (kind, &c),
            "0.0.0.0:0",
            "127.0.0.1:0",
            ip("127.0.0.2"),
            &[ip("127.0.0.2"), ip("127.0.0.1")],
        );
    }
}

#[test]
fn pktinfo_dual_stack_ipv4_client() {
    for (kind, c) in engine_configs("pktinfo_dual_stack_ipv4_client") {
        answers_from_the_address_asked(
            (kind, &c),
            "[::]:0",
            "127.0.0.1:0",
            ip("127.0.0.2"),
            &[ip("127.0.0.2"), ip("127.0.0.1")],
        );
    }
}

#[test]
fn pktinfo_ipv6_loopback() {
    if UdpSocket::bind("[::1]:0").is_err() {
        println!("pktinfo_ipv6_loopback: skipped, no IPv6 loopback");
        return;
    }
    for (kind, c) in engine_configs("pktinfo_ipv6_loopback") {
        answers_from_the_address_asked((kind, &c), "[::]:0", "[::1]:0", ip("::1"), &[ip("::1")]);
    }
}

/// Read one RFC 4571 frame (length prefix, then the packet) from a TCP stream.
fn read_frame(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("frame length");
    let mut p = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut p).expect("frame");
    p
}

/// ICE-TCP beside the UDP socket, in every engine: framed packets on a connection arrive as
/// media datagrams from the connection's peer to the address it connected to; replies
/// queued to that peer go back framed on the connection, in order, while UDP peers still get
/// theirs over UDP; a busy UDP socket does not starve the connection.
#[test]
fn ice_tcp_connections_are_served_beside_the_udp_socket() {
    use std::io::Write;
    for (kind, c) in engine_configs("ice_tcp_connections_are_served_beside_the_udp_socket") {
        let (mut io, udp_addr) = io_on(kind, "127.0.0.1:0", &c);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let tcp_addr = listener.local_addr().expect("addr");
        io.add_tcp(listener, Default::default()).expect("add tcp");
        let mut client = std::net::TcpStream::connect(tcp_addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let me = client.local_addr().expect("addr");
        let udp_peer = bind("127.0.0.1:0");
        udp_peer
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = 200u32;
        let mut wire = Vec::new();
        for seq in 0..n {
            let p = payload(seq);
            wire.extend_from_slice(&(p.len() as u16).to_be_bytes());
            wire.extend_from_slice(&p);
        }
        // Half the stream, a flood of UDP, then the rest in odd-sized pieces.
        let (a, b) = wire.split_at(wire.len() / 2);
        client.write_all(a).expect("write");
        // (100 of them: the peer's default receive buffer must hold all the echoes.)
        for seq in 0..100 {
            udp_peer.send_to(&payload(seq), udp_addr).expect("udp send");
        }
        let mut got_tcp = Vec::new();
        let mut got_udp = 0u32;
        let mut rest = b.to_vec();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got_tcp.len() < n as usize {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: {} of {n} TCP packets",
                got_tcp.len()
            );
            if !rest.is_empty() {
                let take = rest.len().min(331);
                client.write_all(&rest[..take]).expect("write");
                rest.drain(..take);
            }
            io.poll(Duration::from_millis(2), &mut |ev, tx| {
                if let RxEvent::Datagram {
                    data,
                    src,
                    dst,
                    via,
                    ..
                } = ev
                {
                    assert_eq!(via, Via::Media);
                    if src == me {
                        assert_eq!(dst, Some(tcp_addr.ip()), "{kind:?}");
                        got_tcp.push(data.to_vec());
                    } else {
                        got_udp += 1;
                    }
                    // Echo everything to where it came from.
                    let b = tx.alloc().expect("tx slot");
                    tx.buf_mut(b)[..data.len()].copy_from_slice(data);
                    tx.queue(b, data.len(), src);
                }
            })
            .expect("poll");
        }
        io.flush().expect("flush");
        let want: Vec<Vec<u8>> = (0..n).map(payload).collect();
        assert_eq!(got_tcp, want, "{kind:?}: TCP packets whole and in order");
        for seq in 0..n {
            assert_eq!(
                read_frame(&mut client),
                payload(seq),
                "{kind:?}: echo {seq}"
            );
        }
        let mut buf = [0u8; 2048];
        for _ in 0..got_udp {
            let (len, from) = udp_peer.recv_from(&mut buf).expect("udp echo");
            assert!(len > 0);
            assert_eq!(
                from, udp_addr,
                "{kind:?}: UDP peers still answered over UDP"
            );
        }
        let (counters, open) = io.tcp_counters();
        assert_eq!(open, 1, "{kind:?}");
        assert_eq!(counters.packets_in, u64::from(n));
        assert_eq!(counters.packets_out, u64::from(n));
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        while io.tcp_counters().1 != 0 {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: closed connection kept"
            );
            io.poll(Duration::from_millis(20), &mut |_, _| {})
                .expect("poll");
        }
    }
}
