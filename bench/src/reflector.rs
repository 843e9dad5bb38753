//! The physical reference: a plain UDP fan-out thread with no crypto and no parsing. Each
//! datagram from a publisher address is sent unchanged to every subscriber address of that
//! publisher with sendmmsg batches. Whatever the node does beyond this costs CPU the
//! reflector does not spend, so `cpu_ns_per_packet` here is the floor the kernel sets.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::sys::{self, RecvBatch};

/// How often the thread looks at its stop flag when no traffic arrives.
const POLL: Duration = Duration::from_millis(50);

/// A running reflector thread; stopped and joined on drop.
pub struct Reflector {
    addr: SocketAddr,
    tid: i32,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<u64>>>,
}

impl Reflector {
    /// Binds 127.0.0.1:0 and starts the thread, pinned to `core` when given (a failed pin
    /// is reported on stderr, not fatal: some containers restrict affinity).
    /// `routes` maps a publisher's source address to its subscribers' addresses.
    pub fn start(
        routes: HashMap<SocketAddr, Vec<SocketAddr>>,
        core: Option<usize>,
    ) -> io::Result<Reflector> {
        Self::start_with(routes, core, false)
    }

    /// [`Reflector::start`]; with `gso`, each receive batch's datagrams from one publisher
    /// go to each of its subscribers as `UDP_SEGMENT` messages (runs of equal size), the
    /// shape the node's segmented egress sends (`crate::offload::send_segmented`).
    pub fn start_with(
        routes: HashMap<SocketAddr, Vec<SocketAddr>>,
        core: Option<usize>,
        gso: bool,
    ) -> io::Result<Reflector> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sys::set_socket_buffers(&sock, 4 << 20);
        sock.set_read_timeout(Some(POLL))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("reflector".into())
            .spawn(move || {
                let _ = tid_tx.send(sys::gettid());
                if let Some(c) = core {
                    if let Err(e) = sys::pin_current_thread(&[c]) {
                        eprintln!("reflector: cannot pin to core {c}: {e}");
                    }
                }
                if gso {
                    serve_segmented(&sock, &routes, &stop2)
                } else {
                    serve(&sock, &routes, &stop2)
                }
            })?;
        let tid = tid_rx
            .recv()
            .map_err(|_| io::Error::other("reflector thread died at start"))?;
        Ok(Reflector {
            addr,
            tid,
            stop,
            thread: Some(thread),
        })
    }

    /// Where publishers send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kernel thread id, for its CPU time.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Stops the thread; returns how many datagrams it sent.
    pub fn stop(mut self) -> io::Result<u64> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> io::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| io::Error::other("reflector thread panicked"))?,
            None => Ok(0),
        }
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

fn serve(
    sock: &UdpSocket,
    routes: &HashMap<SocketAddr, Vec<SocketAddr>>,
    stop: &AtomicBool,
) -> io::Result<u64> {
    let mut batch = RecvBatch::default();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = batch.recv(sock, true)?;
        for i in 0..n {
            let Some(dests) = routes.get(&batch.source(i)) else {
                continue; // not a publisher we know: drop, like the node would
            };
            // A failed send (a subscriber socket already closed) is loss, which the
            // subscribers report; it must not stop the reflector.
            sent += sys::send_to_all(sock, batch.datagram(i), dests).unwrap_or(0) as u64;
        }
    }
    Ok(sent)
}

/// [`serve`] with each batch grouped by publisher and sent per subscriber as segments.
fn serve_segmented(
    sock: &UdpSocket,
    routes: &HashMap<SocketAddr, Vec<SocketAddr>>,
    stop: &AtomicBool,
) -> io::Result<u64> {
    let mut batch = RecvBatch::default();
    let mut sent = 0u64;
    let mut by_source: Vec<(SocketAddr, Vec<usize>)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = batch.recv(sock, true)?;
        for (_, v) in &mut by_source {
            v.clear();
        }
        for i in 0..n {
            let src = batch.source(i);
            if !routes.contains_key(&src) {
                continue;
            }
            match by_source.iter_mut().find(|(s, _)| *s == src) {
                Some((_, v)) => v.push(i),
                None => by_source.push((src, vec![i])),
            }
        }
        for (src, idx) in &by_source {
            let (Some(dests), false) = (routes.get(src), idx.is_empty()) else {
                continue;
            };
            let datagrams: Vec<&[u8]> = idx.iter().map(|&i| batch.datagram(i)).collect();
            sent += crate::offload::send_segmented(sock, &datagrams, dests).unwrap_or(0) as u64;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflects_to_every_subscriber() {
        let publisher = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let subs: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let routes = HashMap::from([(
            publisher.local_addr().expect("addr"),
            subs.iter().map(|s| s.local_addr().expect("addr")).collect(),
        )]);
        let r = Reflector::start(routes, None).expect("start");
        publisher.send_to(b"hello", r.addr()).expect("send");
        let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
        stranger.send_to(b"nope", r.addr()).expect("send");
        for s in &subs {
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut buf = [0u8; 16];
            let (n, from) = s.recv_from(&mut buf).expect("reflected");
            assert_eq!((&buf[..n], from), (&b"hello"[..], r.addr()));
        }
        assert_eq!(r.stop().expect("stop"), 3);
    }

    #[test]
    fn segmented_reflector_delivers_every_datagram_in_order() {
        let publisher = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let subs: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let routes = HashMap::from([(
            publisher.local_addr().expect("addr"),
            subs.iter().map(|s| s.local_addr().expect("addr")).collect(),
        )]);
        let r = Reflector::start_with(routes, None, true).expect("start");
        let msgs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 500]).collect();
        let batch: Vec<(&[u8], SocketAddr)> = msgs.iter().map(|m| (&m[..], r.addr())).collect();
        assert_eq!(sys::send_batch(&publisher, &batch).expect("send"), 20);
        for s in &subs {
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            for m in &msgs {
                let mut buf = [0u8; 1024];
                let n = s.recv(&mut buf).expect("reflected");
                assert_eq!(&buf[..n], &m[..]);
            }
        }
        assert_eq!(r.stop().expect("stop"), 40);
    }
}
