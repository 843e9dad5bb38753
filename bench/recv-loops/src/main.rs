//! Loopback receive throughput of three UDP receive loops against the same sender.
//!
//! A sender thread blasts 1200-byte datagrams with sendmmsg (batches of 64) for `--secs`
//! seconds, then sends 1-byte end markers. The receiving thread runs one of:
//!   (a) io-uring crate: multishot recvmsg + provided buffer ring (the design of
//!       switchyard-dataplane's uring engine, written inline here),
//!   (b) tokio-uring: `UdpSocket::recv_from` in a loop (one owned buffer, one SQE per recv),
//!   (c) recvmmsg: blocking batches of 64 with MSG_WAITFORONE.
//! Reports packets/s and the receiving thread's CPU time per packet (getrusage
//! RUSAGE_THREAD), median of `--runs` runs each.
//!
//! Usage: recv-loops [--secs N] [--runs R] [--only a|b|c]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 1200;
const BATCH: usize = 64;

struct Sample {
    pps: f64,
    cpu_ns_per_pkt: f64,
    packets: u64,
    sent: u64,
}

fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into a zeroed rusage we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to ru.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn set_rcvbuf(s: &UdpSocket, bytes: i32) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: valid fd and a pointer to a local i32.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const i32).cast(),
                4,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Blast for `secs`, then send end markers until the receiver stops. Returns datagrams sent.
fn sender(dst: SocketAddr, secs: f64, start: Arc<Barrier>) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let mut raw: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    raw.sin_family = libc::AF_INET as u16;
    raw.sin_port = dst.port().to_be();
    raw.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    let buf = [0xabu8; PAYLOAD];
    let mut iov = [libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: PAYLOAD,
    }];
    let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| {
            // SAFETY: plain C struct, zero is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut raw as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = iov.as_mut_ptr();
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    start.wait();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    while Instant::now() < end {
        // SAFETY: hdrs point at raw/iov/buf, all alive for the call.
        let n = unsafe { libc::sendmmsg(s.as_raw_fd(), hdrs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    // End markers: repeated because the receiver's queue may be full and drop some.
    for _ in 0..200 {
        let _ = s.send_to(&[1], dst);
        thread::sleep(Duration::from_millis(5));
    }
    sent
}

/// (a) multishot recvmsg + provided buffer ring, io-uring crate directly.
fn recv_uring_multishot(sock: UdpSocket, start: Arc<Barrier>) -> (u64, Duration, Duration) {
    use io_uring::{cqueue, opcode, types, IoUring};
    const BUFS: u16 = 1024;
    const BUF_SIZE: usize = 2048;
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(4096)
        .or_else(|_| IoUring::new(4096))
        .expect("io_uring");
    let mut bufs = vec![0u8; BUFS as usize * BUF_SIZE];
    let layout = std::alloc::Layout::from_size_align(16 * BUFS as usize, 4096).expect("layout");
    // SAFETY: non-zero size.
    let ring_mem = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!ring_mem.is_null());
    let tail = || {
        // SAFETY: the tail is the u16 at offset 14 of the page-aligned ring.
        unsafe { AtomicU16::from_ptr(ring_mem.add(14).cast()) }
    };
    let mut local_tail: u16 = 0;
    let base = bufs.as_mut_ptr();
    let push = |bid: u16, t: &mut u16| {
        let e = (ring_mem as *mut u64).wrapping_add(2 * (*t & (BUFS - 1)) as usize);
        // SAFETY: entry inside the ring; only addr/len/bid written, never the tail (resv).
        unsafe {
            e.write(base.add(bid as usize * BUF_SIZE) as u64);
            (e as *mut u32).add(2).write(BUF_SIZE as u32);
            (e as *mut u16).add(6).write(bid);
        }
        *t = t.wrapping_add(1);
    };
    for bid in 0..BUFS {
        push(bid, &mut local_tail);
    }
    tail().store(local_tail, Ordering::Release);
    // SAFETY: ring memory and buffers outlive the ring (dropped at the end of this fn, after it).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(ring_mem as u64, BUFS, 0, 0)
            .expect("register buf ring")
    };
    // SAFETY: plain C struct.
    let mut tpl: libc::msghdr = unsafe { std::mem::zeroed() };
    tpl.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
    let arm = |ring: &mut IoUring| {
        let e = opcode::RecvMsgMulti::new(types::Fd(sock.as_raw_fd()), &tpl, 0)
            .build()
            .user_data(1);
        // SAFETY: tpl and the socket outlive the op.
        unsafe { ring.submission().push(&e).expect("sq") };
    };
    arm(&mut ring);
    start.wait();
    let (t0, c0) = (Instant::now(), thread_cpu());
    let mut count = 0u64;
    'outer: loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => panic!("enter: {e}"),
        }
        let mut rearm = false;
        let mut done = false;
        for cqe in ring.completion() {
            if !cqueue::more(cqe.flags()) {
                rearm = true;
            }
            if cqe.result() < 0 {
                continue;
            }
            let Some(bid) = cqueue::buffer_select(cqe.flags()) else {
                continue;
            };
            let off = bid as usize * BUF_SIZE;
            let b = &bufs[off..off + cqe.result() as usize];
            if let Ok(out) = types::RecvMsgOut::parse(b, &tpl) {
                if out.payload_data().len() == 1 {
                    done = true;
                } else {
                    count += 1;
                }
            }
            push(bid, &mut local_tail);
        }
        tail().store(local_tail, Ordering::Release);
        if done {
            break 'outer;
        }
        if rearm {
            arm(&mut ring);
        }
    }
    let r = (count, t0.elapsed(), thread_cpu() - c0);
    drop(ring); // closes the ring before buffers/ring memory are freed
                // SAFETY: allocated above with this layout; the ring is closed.
    unsafe { std::alloc::dealloc(ring_mem, layout) };
    r
}

/// (b) tokio-uring recv_from loop.
fn recv_tokio_uring(sock: UdpSocket, start: Arc<Barrier>) -> (u64, Duration, Duration) {
    tokio_uring::start(async move {
        let sock = tokio_uring::net::UdpSocket::from_std(sock);
        let mut buf = vec![0u8; 2048];
        start.wait();
        let (t0, c0) = (Instant::now(), thread_cpu());
        let mut count = 0u64;
        loop {
            let (res, b) = sock.recv_from(buf).await;
            buf = b;
            match res {
                Ok((1, _)) => break,
                Ok(_) => count += 1,
                Err(e) => panic!("recv_from: {e}"),
            }
        }
        (count, t0.elapsed(), thread_cpu() - c0)
    })
}

/// (c) blocking recvmmsg batches.
fn recv_mmsg(sock: UdpSocket, start: Arc<Barrier>) -> (u64, Duration, Duration) {
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut names: Vec<libc::sockaddr_in6> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: plain C struct.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    start.wait();
    let (t0, c0) = (Instant::now(), thread_cpu());
    let mut count = 0u64;
    'outer: loop {
        for i in 0..BATCH {
            hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in6).cast();
            hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: headers point at live buffers/names for the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            continue;
        }
        for h in &hdrs[..n as usize] {
            if h.msg_len == 1 {
                break 'outer;
            }
            count += 1;
        }
    }
    (count, t0.elapsed(), thread_cpu() - c0)
}

type Loop = fn(UdpSocket, Arc<Barrier>) -> (u64, Duration, Duration);

fn run_once(recv: Loop, secs: f64) -> Sample {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
    set_rcvbuf(&sock, 8 << 20);
    let dst = sock.local_addr().expect("addr");
    let start = Arc::new(Barrier::new(2));
    let s2 = start.clone();
    let tx = thread::spawn(move || sender(dst, secs, s2));
    let (packets, wall, cpu) = recv(sock, start);
    let sent = tx.join().expect("sender");
    Sample {
        pps: packets as f64 / wall.as_secs_f64(),
        cpu_ns_per_pkt: cpu.as_nanos() as f64 / packets.max(1) as f64,
        packets,
        sent,
    }
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.pps.total_cmp(&b.pps));
    v.swap_remove(v.len() / 2)
}

fn main() {
    let mut secs = 3.0;
    let mut runs = 3;
    let mut only = String::from("abc");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--secs" => secs = v.parse().expect("--secs N"),
            "--runs" => runs = v.parse().expect("--runs R"),
            "--only" => only = v,
            _ => panic!("usage: recv-loops [--secs N] [--runs R] [--only abc]"),
        }
    }
    let loops: [(char, &str, Loop); 3] = [
        (
            'a',
            "io-uring multishot recvmsg + buf ring",
            recv_uring_multishot,
        ),
        ('b', "tokio-uring UdpSocket::recv_from", recv_tokio_uring),
        ('c', "recvmmsg batch 64", recv_mmsg),
    ];
    println!("payload {PAYLOAD} B, {secs} s per run, median of {runs} runs (by packets/s)");
    println!(
        "{:<42} {:>12} {:>14} {:>12} {:>12}",
        "loop", "packets/s", "cpu ns/packet", "received", "sent"
    );
    for (key, name, f) in loops {
        if !only.contains(key) {
            continue;
        }
        let samples: Vec<Sample> = (0..runs).map(|_| run_once(f, secs)).collect();
        let m = median(samples);
        println!(
            "({key}) {name:<38} {:>12.0} {:>14.0} {:>12} {:>12}",
            m.pps, m.cpu_ns_per_pkt, m.packets, m.sent
        );
    }
}
