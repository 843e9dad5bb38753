//! A lossy path in userspace (`tc netem` is not available here): a UDP proxy that listens on
//! `listen` (e.g. 127.0.0.2:<worker port>, the address the node announces) and forwards to
//! the node on `upstream` (127.0.0.1:<worker port>), with one upstream socket per client, so
//! the node sees a distinct source per client. Only the client → node direction is impaired:
//! each RTP packet is dropped with probability `loss`, and everything is delayed by `delay`
//! (in order). STUN, DTLS and RTCP are never dropped, so a session's set-up and feedback are
//! not what is measured. Replies from the node go back to the client in order, through
//! a per-client shaper that [`Lossy::shape`] can cap: a bottleneck of a given bit rate with
//! a drop-tail queue of [`QUEUE`] (a viewer's downlink, for bandwidth estimation tests).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a packet waits in a capped client's queue; beyond it the queue drops
/// (a home router's buffer is of this order).
pub const QUEUE: Duration = Duration::from_millis(250);

/// Caps by the proxy's upstream socket address (what the node sees as the client).
type Caps = Arc<Mutex<HashMap<SocketAddr, u64>>>;

pub struct Lossy {
    stop: Arc<AtomicBool>,
    /// RTP packets dropped and forwarded, client → node.
    pub dropped: Arc<AtomicU64>,
    pub passed: Arc<AtomicU64>,
    /// Datagrams node → client dropped by a cap's full queue.
    pub shaped_drops: Arc<AtomicU64>,
    caps: Caps,
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
        let caps: Caps = Arc::default();
        let shaped_drops = Arc::new(AtomicU64::new(0));
        let (caps2, drops2) = (caps.clone(), shaped_drops.clone());
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
                    .or_insert_with(|| {
                        back_channel(&sock, from, upstream, &flag, (&caps2, &drops2))
                    })
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
            shaped_drops,
            caps,
        }
    }

    /// Cap what the node sends the client it knows as `node_side` (the proxy's upstream
    /// socket: the `remote` of the client's session) to `bps` bits per second; `None`
    /// lifts the cap.
    pub fn shape(&self, node_side: SocketAddr, bps: Option<u64>) {
        let mut caps = self.caps.lock().expect("caps");
        match bps {
            Some(b) => caps.insert(node_side, b),
            None => caps.remove(&node_side),
        };
    }
}

/// An upstream socket for client `client`, and threads that pass what the node sends it
/// back to the client from the proxy's own address, in order, through its cap if it has one.
fn back_channel(
    sock: &Arc<UdpSocket>,
    client: SocketAddr,
    upstream: SocketAddr,
    stop: &Arc<AtomicBool>,
    (caps, drops): (&Caps, &Arc<AtomicU64>),
) -> Arc<UdpSocket> {
    let up = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind upstream"));
    up.connect(upstream).expect("connect upstream");
    up.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let me = up.local_addr().expect("local address");
    // The bottleneck's departures: in order, each at its time.
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    // Datagrams handed to the departure thread and not sent yet: an uncapped client's
    // datagram goes out at once from the receiving thread (no extra hop, so no extra
    // jitter) unless some are still queued ahead of it.
    let queued = Arc::new(AtomicU64::new(0));
    let (sock2, flag, queued2) = (sock.clone(), stop.clone(), queued.clone());
    std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            let Ok((due, data)) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let _ = sock2.send_to(&data, client);
            queued2.fetch_sub(1, Ordering::AcqRel);
        }
    });
    let (up2, stop, caps, drops) = (up.clone(), stop.clone(), caps.clone(), drops.clone());
    let sock = sock.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        // When the bottleneck is free again (a token bucket with no burst allowance).
        let mut free_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = up2.recv(&mut buf) else { continue };
            let now = Instant::now();
            let cap = caps.lock().ok().and_then(|c| c.get(&me).copied());
            if cap.is_none() && queued.load(Ordering::Acquire) == 0 {
                let _ = sock.send_to(&buf[..n], client);
                free_at = now;
                continue;
            }
            let start = free_at.max(now);
            let due = match cap {
                Some(_) if start.duration_since(now) > QUEUE => {
                    drops.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // On the wire: IP and UDP headers too.
                Some(bps) => start + Duration::from_secs_f64((n + 28) as f64 * 8.0 / bps as f64),
                None => start,
            };
            free_at = due;
            queued.fetch_add(1, Ordering::AcqRel);
            if tx.send((due, buf[..n].to_vec())).is_err() {
                queued.fetch_sub(1, Ordering::AcqRel);
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
