//! A lossy path in userspace (`tc netem` is not available here): a UDP proxy that listens on
//! `listen` (e.g. 127.0.0.2:<worker port>, the address the node announces) and forwards to
//! the node on `upstream` (127.0.0.1:<worker port>), with one upstream socket per client, so
//! the node sees a distinct source per client. Only the client → node direction is impaired:
//! each RTP packet is dropped with probability `loss`, and everything is delayed by `delay`
//! (in order). STUN, DTLS and RTCP are never dropped, so a session's set-up and feedback are
//! not what is measured. Replies from the node go straight back to the client.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub struct Lossy {
    stop: Arc<AtomicBool>,
    /// RTP packets dropped and forwarded, client → node.
    pub dropped: Arc<AtomicU64>,
    pub passed: Arc<AtomicU64>,
}

impl Lossy {
    /// Start the proxy's threads; they end when the value is dropped (within 100 ms).
    pub fn start(listen: SocketAddr, upstream: SocketAddr, loss: f64, delay: Duration) -> Lossy {
        let sock = Arc::new(UdpSocket::bind(listen).expect("bind the lossy proxy"));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let passed = Arc::new(AtomicU64::new(0));
        // The delay line: constant delay, so first in is first due.
        let (tx, rx) = mpsc::channel::<(Instant, Arc<UdpSocket>, Vec<u8>)>();
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((due, up, data)) = rx.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let _ = up.send(&data);
            }
        });
        let (flag, lost, ok) = (stop.clone(), dropped.clone(), passed.clone());
        std::thread::spawn(move || {
            let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let mut buf = vec![0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let up = clients
                    .entry(from)
                    .or_insert_with(|| back_channel(&sock, from, upstream, &flag))
                    .clone();
                // RTP, not RTCP (RFC 5761 §4: payload types 64–95 with the marker bit).
                let rtp = n > 12 && (128..192).contains(&buf[0]) && !(192..224).contains(&buf[1]);
                if rtp {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    if (rng % 1_000_000) as f64 / 1e6 < loss {
                        lost.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                let _ = tx.send((Instant::now() + delay, up, buf[..n].to_vec()));
            }
        });
        Lossy {
            stop,
            dropped,
            passed,
        }
    }
}

/// An upstream socket for client `client`, and a thread that passes what the node sends
/// it back to the client from the proxy's own address.
fn back_channel(
    sock: &Arc<UdpSocket>,
    client: SocketAddr,
    upstream: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> Arc<UdpSocket> {
    let up = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind upstream"));
    up.connect(upstream).expect("connect upstream");
    up.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let (up2, sock, stop) = (up.clone(), sock.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = up2.recv(&mut buf) {
                let _ = sock.send_to(&buf[..n], client);
            }
        }
    });
    up
}

impl Drop for Lossy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
