//! A relay link between two real nodes on loopback, built by hand through `/v1/sessions`:
//! a plain-SRTP publisher on node A, a relay-out on A to node B's relay socket, a relay-in on
//! B and six subscribers on B's two workers. Between A and B sits a UDP proxy thread that
//! can drop a share of the A → B datagrams (`tc netem` is not available here), so loss on the
//! hop and its repair by NACK over the link are measured end to end.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Node;
use switchyard_shared::command::SrtpProfile;
use switchyard_shared::srtp::Context;

const PROFILE: SrtpProfile = SrtpProfile::AeadAes128Gcm;
const STREAM: &str = "relay/cam";
const SSRC: u32 = 0x4242_0001;
/// The per-link key convention: the target generates both; K_FWD protects A → B media,
/// K_BACK the NACK/PLI going back.
const K_FWD: u8 = 0x11;
const K_BACK: u8 = 0x22;
const K_PUB: u8 = 0x33;
const SUBSCRIBERS: usize = 6;

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let v = c
            .iter()
            .enumerate()
            .fold(0u32, |v, (i, &b)| v | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn key(k: u8) -> String {
    b64(&[k; 28])
}

fn ctx(k: u8) -> Context {
    Context::new(PROFILE, &[k; 28]).expect("context")
}

/// RTP packet `index` of the test stream, protected with `ctx`: the index rides in the
/// payload so a subscriber can tell which packet it got whatever its own numbering.
fn packet(ctx: &mut Context, index: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + 400 + 16];
    buf[0] = 0x80;
    buf[1] = 96;
    buf[2..4].copy_from_slice(&(index as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&index.wrapping_mul(3000).to_be_bytes());
    buf[8..12].copy_from_slice(&SSRC.to_be_bytes());
    buf[12..16].copy_from_slice(&index.to_be_bytes());
    let n = ctx.protect_rtp(&mut buf, 12 + 400).expect("protect");
    buf.truncate(n);
    buf
}

/// Forwards A's relay socket ↔ B's relay socket, dropping `loss_permille` of A → B.
struct Proxy {
    addr: SocketAddr,
    loss_permille: Arc<AtomicU32>,
    dropped: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(a: SocketAddr, b: SocketAddr) -> Proxy {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind proxy");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let loss_permille = Arc::new(AtomicU32::new(0));
        let dropped = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (loss, gone, halt) = (loss_permille.clone(), dropped.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            // Deterministic: the same run loses the same datagrams.
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            while !halt.load(Ordering::Relaxed) {
                let Ok((n, src)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let dst = if src == a {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    if (rng % 1000) < u64::from(loss.load(Ordering::Relaxed)) {
                        gone.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    b
                } else if src == b {
                    a
                } else {
                    continue;
                };
                let _ = sock.send_to(&buf[..n], dst);
            }
        });
        Proxy {
            addr,
            loss_permille,
            dropped,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A plain-SRTP subscriber on B: a socket, a thread decrypting what arrives, the packet
/// indices seen.
struct Viewer {
    addr: SocketAddr,
    seen: Arc<Mutex<BTreeSet<u32>>>,
    bad: Arc<AtomicU32>,
}

fn viewer(k: u8, stop: Arc<AtomicBool>) -> (Viewer, thread::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind viewer");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let addr = sock.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let bad = Arc::new(AtomicU32::new(0));
    let (s, b) = (seen.clone(), bad.clone());
    let t = thread::spawn(move || {
        let mut rx = ctx(k);
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = sock.recv(&mut buf) else {
                continue;
            };
            if n < 2 || (192..=223).contains(&buf[1]) {
                continue; // RTCP (sender reports), not media
            }
            match rx.unprotect_rtp(&mut buf[..n]) {
                Ok(len) if len >= 16 => {
                    let index = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
                    s.lock().expect("lock").insert(index);
                }
                // A duplicate (a repair another viewer needed) is the replay check at work.
                Err(switchyard_shared::srtp::Error::Replayed) => {}
                _ => {
                    b.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    (Viewer { addr, seen, bad }, t)
}

fn created(node: &Node, body: &str) -> serde_json::Value {
    let r = node.post("/v1/sessions", body);
    assert_eq!(r.status, 201, "{body}: {}", r.body);
    r.json()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Send packets `range` from the publisher at ~1 per ms (bursts would only test socket
/// buffers).
fn publish(sock: &UdpSocket, to: SocketAddr, ctx: &mut Context, range: std::ops::Range<u32>) {
    let start = Instant::now();
    for (k, i) in range.enumerate() {
        sock.send_to(&packet(ctx, i), to).expect("send");
        let due = start + Duration::from_micros(1000 * (k as u64 + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
}

fn metric(node: &Node, name: &str) -> u64 {
    node.metric_sum(&format!("switchyard_{name}{{"))
}

fn relay_drops(node: &Node) -> u64 {
    node.get("/metrics")
        .body
        .lines()
        .filter(|l| l.starts_with("switchyard_drops_total{") && l.contains("relay_unauthenticated"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn relay_link_carries_one_copy_per_packet_drops_forgeries_and_repairs_loss() {
    let a = Node::start(1);
    let b = Node::start(2);
    let a_relay: SocketAddr = format!("127.0.0.1:{}", a.relay_port).parse().expect("addr");
    let b_relay: SocketAddr = format!("127.0.0.1:{}", b.relay_port).parse().expect("addr");
    let proxy = Proxy::start(a_relay, b_relay);

    // B: the relay-in (its far end is the proxy, standing in for A) and the viewers.
    let relay_in = created(
        &b,
        &format!(
            r#"{{"role":"relay-in","stream":"{STREAM}","worker":0,"remote":"{}","profile":"AEAD_AES_128_GCM","remoteKey":"{}","localKey":"{}"}}"#,
            proxy.addr,
            key(K_FWD),
            key(K_BACK)
        ),
    );
    assert_eq!(relay_in["role"], "relay-in");
    assert_eq!(relay_in["mediaAddress"], b_relay.to_string(), "{relay_in}");
    let stop = Arc::new(AtomicBool::new(false));
    let mut viewers = Vec::new();
    let mut threads = Vec::new();
    for i in 0..SUBSCRIBERS {
        let k = 0x40 + i as u8;
        let (v, t) = viewer(k, stop.clone());
        created(
            &b,
            &format!(
                r#"{{"role":"subscriber","stream":"{STREAM}","worker":{},"remote":"{}","profile":"AEAD_AES_128_GCM","localKey":"{}"}}"#,
                i % 2,
                v.addr,
                key(k)
            ),
        );
        viewers.push(v);
        threads.push(t);
    }

    // A: the publisher and the relay-out towards B (through the proxy).
    let publisher = UdpSocket::bind("127.0.0.1:0").expect("bind publisher");
    let pub_addr = publisher.local_addr().expect("addr");
    created(
        &a,
        &format!(
            r#"{{"role":"publisher","stream":"{STREAM}","worker":0,"remote":"{pub_addr}","profile":"AEAD_AES_128_GCM","remoteKey":"{}","ssrcs":[{SSRC}]}}"#,
            key(K_PUB)
        ),
    );
    let relay_out = created(
        &a,
        &format!(
            r#"{{"role":"relay-out","stream":"{STREAM}","worker":0,"remote":"{}","profile":"AEAD_AES_128_GCM","remoteKey":"{}","localKey":"{}"}}"#,
            proxy.addr,
            key(K_BACK),
            key(K_FWD)
        ),
    );
    assert_eq!(relay_out["role"], "relay-out");
    let listed = a.get("/v1/sessions").json();
    assert!(
        listed["sessions"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["role"] == "relay-out")),
        "{listed}"
    );
    // Relay roles take no SSRC, payload-type or clock-rate lists, and a relay-out needs
    // its far end: answered 400 with a JSON error, nothing created.
    for bad in [
        format!(r#"{{"role":"relay-out","stream":"{STREAM}"}}"#),
        format!(r#"{{"role":"relay-in","stream":"{STREAM}","ssrcs":[1]}}"#),
        format!(
            r#"{{"role":"relay-out","stream":"{STREAM}","remote":"127.0.0.1:9","payloadTypes":[[96,97]]}}"#
        ),
    ] {
        let r = a.post("/v1/sessions", &bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{}", r.body);
    }
    let a_media: SocketAddr = format!("127.0.0.1:{}", a.media_port).parse().expect("addr");
    let mut pub_ctx = ctx(K_PUB);

    // 1. No loss: every viewer gets every packet; A sends one copy per packet over the link.
    const CLEAN: u32 = 300;
    publish(&publisher, a_media, &mut pub_ctx, 0..CLEAN);
    wait_for(
        "every viewer to get every packet",
        Duration::from_secs(15),
        || {
            viewers
                .iter()
                .all(|v| v.seen.lock().expect("lock").range(0..CLEAN).count() == CLEAN as usize)
        },
    );
    assert_eq!(metric(&a, "relay_tx_packets_total"), u64::from(CLEAN));
    assert_eq!(metric(&b, "relay_rx_packets_total"), u64::from(CLEAN));
    assert_eq!(metric(&b, "relay_nacks_sent_total"), 0);
    assert_eq!(
        metric(&b, "forwarded_packets_total"),
        u64::from(CLEAN) * SUBSCRIBERS as u64
    );

    // 2. Forgeries on B's relay port: a wrong key from the right-looking place, and the
    // right key from a stranger. Both dropped and counted; nothing reaches a viewer.
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind stranger");
    stranger
        .send_to(&packet(&mut ctx(0x99), 5000), b_relay)
        .expect("send");
    stranger
        .send_to(&packet(&mut ctx(K_FWD), 5001), b_relay)
        .expect("send");
    wait_for("forgeries to be counted", Duration::from_secs(10), || {
        relay_drops(&b) == 2
    });
    assert_eq!(metric(&b, "relay_rx_packets_total"), u64::from(CLEAN));

    // 3. 5 % loss on the hop: NACKs over the link repair it for every viewer.
    proxy.loss_permille.store(50, Ordering::Relaxed);
    const LOSSY: u32 = 1000;
    let range = CLEAN..CLEAN + LOSSY;
    publish(&publisher, a_media, &mut pub_ctx, range.clone());
    // Give the last NACK rounds time to finish.
    thread::sleep(Duration::from_millis(1000));
    proxy.loss_permille.store(0, Ordering::Relaxed);
    let dropped = proxy.dropped.load(Ordering::Relaxed);
    assert!(dropped > 20, "the proxy lost {dropped} datagrams");
    for (i, v) in viewers.iter().enumerate() {
        let got = v.seen.lock().expect("lock").range(range.clone()).count() as u32;
        let lost = LOSSY - got;
        assert!(
            lost * 1000 < LOSSY * 5,
            "viewer {i} lost {lost} of {LOSSY} (hop dropped {dropped})"
        );
        assert_eq!(
            v.bad.load(Ordering::Relaxed),
            0,
            "viewer {i}: undecryptable"
        );
        assert!(
            v.seen
                .lock()
                .expect("lock")
                .range(5000..5002)
                .next()
                .is_none(),
            "viewer {i} got a forgery"
        );
    }
    assert!(metric(&b, "relay_nacks_sent_total") > 0);
    assert!(metric(&a, "retransmitted_packets_total") > 0);
    println!(
        "hop dropped {dropped} of ~{} datagrams; B NACKed {}; A retransmitted {}",
        LOSSY,
        metric(&b, "relay_nacks_sent_total"),
        metric(&a, "retransmitted_packets_total")
    );

    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
}

/// The bench's `--relay-out`: relay-out sessions as its receivers. Each gets every packet,
/// decrypts it with its link key and finds the publisher's own SSRC and numbering (the
/// bench counts any SSRC mismatch or sequence break as an error).
#[test]
fn bench_relay_out_receivers_get_the_stream_unchanged() {
    use switchyard_bench::crypto::Profile;
    use switchyard_bench::{run, LoadSpec, Target};

    let node = Node::start(1);
    let spec = LoadSpec {
        subscribers: 5,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(300),
        rate: 200,
        size: 600,
        bench_cores: Vec::new(),
        relay_out: true,
        ..LoadSpec::default()
    };
    let target = Target::Node {
        api: node.api.clone(),
        profile: Profile::AeadAes128Gcm,
        cpu_pid: None,
        worker: None,
        webrtc: None,
    };
    let report = run(&spec, &target).expect("bench run");
    assert_eq!(report.errors.decrypt, 0, "{report:?}");
    assert_eq!(report.errors.ssrc_mismatch, 0, "{report:?}");
    assert_eq!(report.errors.sequence_breaks, 0, "{report:?}");
    assert!(report.expected_packets > 0, "{report:?}");
    assert_eq!(
        report.received_packets, report.expected_packets,
        "{report:?}"
    );
    assert_eq!(
        metric(&node, "relay_tx_packets_total"),
        metric(&node, "forwarded_packets_total"),
        "every copy left as relay egress"
    );
}
