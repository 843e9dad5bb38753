//! Segmented egress (`UDP_SEGMENT`) and relay receive offload (`UDP_GRO`) through both I/O
//! engines on loopback: every destination receives exactly the bytes it was sent, in the
//! order they were queued, whether the engine segments or not, whether the receiver
//! coalesces or not, and when the kernel refuses segmentation for a socket.
//!
//! io_uring cases are skipped (with a message) where the kernel or a seccomp policy refuses
//! io_uring; segmentation cases fail if the kernel lacks `UDP_SEGMENT` (Linux ≥ 4.18).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use switchyard_dataplane::io::{probe_uring, EngineKind, Io, IoConfig, RxEvent, Via};

fn cfg(gso: bool) -> IoConfig {
    IoConfig {
        recv_buffer: 4 << 20,
        send_buffer: 4 << 20,
        rx_batch: 64,
        tx_slots: 4096,
        uring_sendmmsg: true,
        gso,
        relay_gro: true,
    }
}

/// Engine and send mode: mmsg, io_uring sending with sendmmsg first, io_uring with one
/// SQE per message (where segmented messages live in records until their completion).
fn engines(test: &str) -> Vec<(EngineKind, bool)> {
    let mut v = vec![(EngineKind::Mmsg, true)];
    match probe_uring() {
        Ok(()) => {
            v.push((EngineKind::Uring, true));
            v.push((EngineKind::Uring, false));
        }
        Err(e) => println!("{test}: io_uring engine skipped: {e}"),
    }
    v
}

fn set_int(s: &UdpSocket, level: i32, opt: i32, v: i32) {
    // SAFETY: a live socket; the value is a local int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {opt}): {}",
        std::io::Error::last_os_error()
    );
}

fn bind() -> UdpSocket {
    bind_on("127.0.0.1:0")
}

fn bind_on(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).expect("bind loopback");
    set_int(&s, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
    s
}

/// A receiving socket; with `gro` it coalesces, and reads are split at the segment size
/// the kernel reports.
struct Receiver {
    sock: UdpSocket,
    gro: bool,
    got: Vec<Vec<u8>>,
    /// Reads that carried more than one datagram.
    coalesced: usize,
}

impl Receiver {
    fn new(gro: bool) -> Self {
        Self::on("127.0.0.1:0", gro)
    }

    fn on(addr: &str, gro: bool) -> Self {
        let sock = bind_on(addr);
        if gro {
            set_int(&sock, libc::SOL_UDP, libc::UDP_GRO, 1);
        }
        sock.set_nonblocking(true).expect("nonblocking");
        Self {
            sock,
            gro,
            got: Vec::new(),
            coalesced: 0,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("addr")
    }

    /// Read everything ready now.
    fn drain(&mut self) {
        let mut buf = vec![0u8; 65_536];
        let mut ctrl = [0u64; 16];
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: all-zero is a valid msghdr.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_iov = &mut iov;
            h.msg_iovlen = 1;
            h.msg_control = ctrl.as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of_val(&ctrl) as _;
            // SAFETY: h points at live buffers of the lengths given.
            let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut h, libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => return,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => panic!("recvmsg: {e}"),
                }
            }
            assert_eq!(h.msg_flags & libc::MSG_TRUNC, 0, "truncated read");
            let n = n as usize;
            let mut segment = 0usize;
            // SAFETY: the kernel filled msg_controllen bytes of control messages.
            let mut c = unsafe { libc::CMSG_FIRSTHDR(&h) };
            while !c.is_null() {
                // SAFETY: c points at a control message header inside `ctrl`.
                let (level, ty) = unsafe { ((*c).cmsg_level, (*c).cmsg_type) };
                if level == libc::SOL_UDP && ty == libc::UDP_GRO {
                    // SAFETY: UDP_GRO carries an int.
                    segment = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()) }
                        as usize;
                }
                // SAFETY: as above.
                c = unsafe { libc::CMSG_NXTHDR(&h, c) };
            }
            assert!(self.gro || segment == 0, "segment size without UDP_GRO");
            if segment == 0 || segment >= n {
                self.got.push(buf[..n].to_vec());
            } else {
                self.coalesced += 1;
                for chunk in buf[..n].chunks(segment) {
                    self.got.push(chunk.to_vec());
                }
            }
        }
    }
}

/// Datagram `seq` for destination `dest`: a frame of `FRAME` packets of 1,200 bytes but
/// the last (700), then a 150-byte "audio" packet; contents unique per (dest, seq).
const FRAME: u32 = 9;

fn datagram(dest: usize, seq: u32) -> Vec<u8> {
    let len = match seq % (FRAME + 1) {
        x if x == FRAME => 150,
        x if x == FRAME - 1 => 700,
        _ => 1200,
    };
    let mut v = vec![0u8; len];
    v[..4].copy_from_slice(&seq.to_be_bytes());
    v[4..8].copy_from_slice(&(dest as u32).to_be_bytes());
    for (i, b) in v.iter_mut().enumerate().skip(8) {
        *b = (seq as usize * 131 + dest * 7 + i) as u8;
    }
    v
}

/// Queue `rounds` turns of fan-out (each: one frame and an audio packet to every
/// receiver, interleaved as a fan-out queues them), flush, and collect; returns what each
/// receiver got and the engine's offload counters.
fn fan_out(
    kind: EngineKind,
    sendmmsg: bool,
    gso: bool,
    receivers: &mut [Receiver],
    rounds: u32,
    prepare: impl FnOnce(&UdpSocket),
) -> switchyard_dataplane::io::OffloadCounters {
    fan_out_from(
        kind,
        sendmmsg,
        gso,
        receivers,
        rounds,
        ("127.0.0.1:0", None),
        prepare,
    )
}

/// [`fan_out`] from an engine bound to `local`, sending from source address `src`
/// (IP_PKTINFO / IPV6_PKTINFO beside the segment size) when given.
fn fan_out_from(
    kind: EngineKind,
    sendmmsg: bool,
    gso: bool,
    receivers: &mut [Receiver],
    rounds: u32,
    (local, src): (&str, Option<IpAddr>),
    prepare: impl FnOnce(&UdpSocket),
) -> switchyard_dataplane::io::OffloadCounters {
    let sock = bind_on(local);
    prepare(&sock);
    let c = IoConfig {
        uring_sendmmsg: sendmmsg,
        ..cfg(gso)
    };
    let mut io = Io::new(kind, sock, &c).expect("engine");
    assert_eq!(io.gso(Via::Media), gso, "{kind:?}: the probe");
    let addrs: Vec<SocketAddr> = receivers.iter().map(Receiver::addr).collect();
    let per_round = FRAME + 1;
    for r in 0..rounds {
        for seq in r * per_round..(r + 1) * per_round {
            for (d, a) in addrs.iter().enumerate() {
                let data = datagram(d, seq);
                let tx = io.tx();
                let b = tx.alloc().expect("tx pool exhausted");
                tx.buf_mut(b)[..data.len()].copy_from_slice(&data);
                tx.queue_from(b, data.len(), *a, Via::Media, src);
            }
        }
        io.flush().expect("flush");
        let want = ((r + 1) * per_round) as usize;
        let deadline = Instant::now() + Duration::from_secs(5);
        while receivers.iter().any(|x| x.got.len() < want) {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: round {r} did not arrive"
            );
            // io_uring: reap completions (and send what waited for them).
            io.poll(Duration::from_millis(1), &mut |_, _| {})
                .expect("poll");
            for x in receivers.iter_mut() {
                x.drain();
            }
        }
    }
    io.offload()
}

fn check(receivers: &[Receiver], rounds: u32, what: &str) {
    for (d, x) in receivers.iter().enumerate() {
        let want: Vec<Vec<u8>> = (0..rounds * (FRAME + 1)).map(|s| datagram(d, s)).collect();
        assert_eq!(x.got.len(), want.len(), "{what}: receiver {d} count");
        for (i, (g, w)) in x.got.iter().zip(&want).enumerate() {
            assert!(
                g == w,
                "{what}: receiver {d} datagram {i} differs or is out of order"
            );
        }
    }
}

#[test]
fn segmented_fan_out_is_byte_identical_to_unsegmented_per_destination() {
    const DESTS: usize = 6;
    const ROUNDS: u32 = 40;
    for (kind, sendmmsg) in engines("segmented_fan_out_is_byte_identical") {
        let what = format!("{kind:?}, sendmmsg {sendmmsg}");
        let mut plain: Vec<Receiver> = (0..DESTS).map(|_| Receiver::new(false)).collect();
        let off = fan_out(kind, sendmmsg, false, &mut plain, ROUNDS, |_| {});
        assert_eq!(off.gso_messages, 0, "{what}: GSO off segments nothing");
        check(&plain, ROUNDS, &what);

        let mut seg: Vec<Receiver> = (0..DESTS).map(|_| Receiver::new(false)).collect();
        let on = fan_out(kind, sendmmsg, true, &mut seg, ROUNDS, |_| {});
        check(&seg, ROUNDS, &what);
        for (a, b) in plain.iter().zip(&seg) {
            assert!(
                a.got == b.got,
                "{what}: segmented output differs from unsegmented"
            );
        }
        // Each turn's frame to each destination: 8 datagrams of 1,200 and 700 in one
        // message (the 150-byte audio packet after it is longer than nothing, shorter than
        // 700: it joins as a new message of its own since 700 ended the run).
        assert_eq!(
            on.gso_messages,
            u64::from(ROUNDS) * DESTS as u64,
            "{what}: {on:?}"
        );
        assert_eq!(
            on.gso_segments,
            on.gso_messages * u64::from(FRAME),
            "{what}"
        );
        assert_eq!(on.gso_refused, 0);
        assert_eq!(
            on.datagrams,
            u64::from(ROUNDS * (FRAME + 1)) * DESTS as u64,
            "{what}: every datagram counted once"
        );
        eprintln!("{what}: {on:?}");
    }
}

#[test]
fn gro_receivers_get_every_datagram_intact_and_in_order() {
    const DESTS: usize = 4;
    const ROUNDS: u32 = 30;
    for (kind, sendmmsg) in engines("gro_receivers") {
        let what = format!("{kind:?}, sendmmsg {sendmmsg}");
        let mut rx: Vec<Receiver> = (0..DESTS).map(|_| Receiver::new(true)).collect();
        let on = fan_out(kind, sendmmsg, true, &mut rx, ROUNDS, |_| {});
        check(&rx, ROUNDS, &what);
        assert!(on.gso_messages > 0, "{what}");
        // On loopback a segmented message reaches a coalescing socket unsplit.
        assert!(
            rx.iter().all(|x| x.coalesced > 0),
            "{what}: no coalesced read"
        );
    }
}

/// Segmented messages carry the source address control message beside the segment size
/// (a wildcard-bound worker answers from the address the peer used), over IPv4 and IPv6.
#[test]
fn segments_leave_from_the_source_address_asked_for() {
    let mut cases = vec![("0.0.0.0:0", "127.0.0.1:0", "127.0.0.1")];
    if UdpSocket::bind("[::1]:0").is_ok() {
        cases.push(("[::]:0", "[::1]:0", "::1"));
    } else {
        println!("no IPv6 loopback: the IPv6 case skipped");
    }
    for (kind, sendmmsg) in engines("segments_leave_from_the_source_address") {
        for (local, peer, src) in &cases {
            let what = format!("{kind:?}, sendmmsg {sendmmsg}, {local}");
            let src: IpAddr = src.parse().expect("ip");
            let mut rx: Vec<Receiver> = (0..3).map(|_| Receiver::on(peer, false)).collect();
            let c = fan_out_from(
                kind,
                sendmmsg,
                true,
                &mut rx,
                10,
                (local, Some(src)),
                |_| {},
            );
            check(&rx, 10, &what);
            assert_eq!(c.gso_messages, 30, "{what}: {c:?}");
        }
    }
}

/// SO_NO_CHECK makes Linux refuse every segmented send on the socket (EINVAL): the kernel
/// path a driver without checksum offload takes with EIO. Nothing may be lost or
/// reordered, each destination is refused once, then sent unsegmented.
#[test]
fn a_refused_destination_falls_back_to_single_datagrams() {
    const DESTS: usize = 5;
    const ROUNDS: u32 = 20;
    for (kind, sendmmsg) in engines("a_refused_destination_falls_back") {
        let what = format!("{kind:?}, sendmmsg {sendmmsg}");
        let mut rx: Vec<Receiver> = (0..DESTS).map(|_| Receiver::new(false)).collect();
        let c = fan_out(kind, sendmmsg, true, &mut rx, ROUNDS, |s| {
            set_int(s, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1);
        });
        check(&rx, ROUNDS, &what);
        assert_eq!(c.gso_messages, 0, "{what}: nothing went segmented");
        match kind {
            EngineKind::Mmsg => {
                assert_eq!(c.gso_refused, DESTS as u64, "{what}: once per destination")
            }
            // io_uring completes sends later: a loaded machine may have put a destination's
            // next segmented sends in flight before its first refusal came back. Each is
            // refused, and sent again unsegmented (`check` saw every datagram once, in order).
            _ => assert!(
                (DESTS as u64..=DESTS as u64 * u64::from(ROUNDS)).contains(&c.gso_refused),
                "{what}: every destination refused, then left unsegmented: {}",
                c.gso_refused
            ),
        }
    }
}

/// A relay socket with UDP_GRO: another engine's segmented relay sends arrive as one
/// buffer per message and are handed over datagram by datagram, intact and in order.
#[test]
fn relay_socket_walks_coalesced_segments() {
    const ROUNDS: u32 = 30;
    for (kind, sendmmsg) in engines("relay_socket_walks_coalesced_segments") {
        let what = format!("{kind:?}, sendmmsg {sendmmsg}");
        let c = IoConfig {
            uring_sendmmsg: sendmmsg,
            ..cfg(true)
        };
        let mut a = Io::with_relay(kind, bind(), Some(bind()), &c).expect("sender");
        let b_relay = bind();
        let b_addr = b_relay.local_addr().expect("addr");
        let mut b = Io::with_relay(kind, bind(), Some(b_relay), &c).expect("receiver");
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut vias = Vec::new();
        for r in 0..ROUNDS {
            for seq in r * (FRAME + 1)..(r + 1) * (FRAME + 1) {
                let data = datagram(0, seq);
                let tx = a.tx();
                let buf = tx.alloc().expect("slot");
                tx.buf_mut(buf)[..data.len()].copy_from_slice(&data);
                tx.queue_via(buf, data.len(), b_addr, Via::Relay);
            }
            a.flush().expect("flush");
            let want = ((r + 1) * (FRAME + 1)) as usize;
            let deadline = Instant::now() + Duration::from_secs(5);
            while got.len() < want {
                assert!(Instant::now() < deadline, "{what}: round {r}");
                a.poll(Duration::ZERO, &mut |_, _| {}).expect("poll a");
                b.poll(Duration::from_millis(2), &mut |ev, _| match ev {
                    RxEvent::Datagram { data, via, .. } => {
                        got.push(data.to_vec());
                        vias.push(via);
                    }
                    RxEvent::Oversize { .. } => panic!("{what}: oversize"),
                })
                .expect("poll b");
            }
        }
        let want: Vec<Vec<u8>> = (0..ROUNDS * (FRAME + 1)).map(|s| datagram(0, s)).collect();
        assert!(
            got == want,
            "{what}: relay datagrams differ or are out of order"
        );
        assert!(vias.iter().all(|v| *v == Via::Relay));
        let sent = a.offload();
        let recv = b.offload();
        assert!(sent.gso_messages > 0, "{what}: {sent:?}");
        assert!(recv.gro_buffers > 0, "{what}: {recv:?}");
        assert_eq!(
            recv.gro_segments, sent.gso_segments,
            "{what}: {recv:?} vs {sent:?}"
        );
    }
}
