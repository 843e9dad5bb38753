//! `--webrtc`: publishers and subscribers join as a browser would — SDP offer over WHIP or
//! WHEP, ICE as the controlling agent against the node's ICE-lite, DTLS client, SRTP keys
//! exported from the handshake — and then the ordinary pacing and receive loops run on the
//! same sockets.
//!
//! The protocol pieces are sans-IO ([`sdp`], [`ice`]) or, for DTLS, webrtc-dtls behind a
//! pipe ([`dtls`]); this module does their I/O. A small tokio runtime ([`Agent`]) runs the
//! DTLS tasks and the per-peer pump; callers stay synchronous (`block_on` from any number of
//! join threads). During a join the peer's socket is read through a duplicate descriptor on
//! the runtime; once [`Agent::connect`] (and, for subscribers, [`Agent::first_rtp`]) return,
//! nothing on the runtime reads it again.

pub mod dtls;
pub mod ice;
pub mod sdp;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use switchyard_shared::command::SrtpProfile;
use tokio::time::{timeout_at, Instant};

use crate::crypto::Cipher;
use crate::packet;
use crate::sys;

pub use dtls::{Identity, Keys};

/// Interval of ICE connectivity check retransmissions while connecting.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// ICE gives up after this long without a valid success response.
const ICE_TIMEOUT: Duration = Duration::from_secs(5);
/// The node's DTLS deadline is 10 s; the bench waits as long.
const DTLS_TIMEOUT: Duration = Duration::from_secs(10);
/// A subscriber must see its first media packet this long after DTLS completes.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(5);
/// Consent freshness checks during the run (RFC 7675 recommends ~5 s; the node ends a
/// session after 30 s without one).
pub const CONSENT_INTERVAL: Duration = Duration::from_secs(5);
/// Receive buffer for handshake datagrams (MTU-sized records, RTP up to 1500 bytes).
const BUF: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum WebrtcError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sdp(#[from] sdp::SdpError),
    #[error(transparent)]
    Dtls(#[from] dtls::DtlsError),
    #[error("ICE: no valid Binding success response from {0} within 5 s")]
    IceTimeout(SocketAddr),
    #[error("DTLS handshake with {0} did not complete within 10 s")]
    DtlsTimeout(SocketAddr),
    #[error("no decryptable media from {0} within 5 s of the handshake")]
    NoMedia(SocketAddr),
    #[error("random number generator failed")]
    Random,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> WebrtcError {
    move |source| WebrtcError::Io { what, source }
}

/// Random bytes from the system generator.
pub fn random<const N: usize>() -> Result<[u8; N], WebrtcError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| WebrtcError::Random)?;
    Ok(b)
}

/// `n` random characters of RFC 8839 `ice-char` (letters and digits).
pub fn ice_string(n: usize) -> Result<String, WebrtcError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    for _ in 0..n {
        let [b] = random::<1>()?;
        out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
    }
    Ok(out)
}

/// A peer's own ICE credentials, fresh per peer as a browser's are.
#[derive(Clone, Debug)]
pub struct LocalIce {
    pub ufrag: String,
    pub pwd: String,
}

impl LocalIce {
    pub fn generate() -> Result<LocalIce, WebrtcError> {
        Ok(LocalIce {
            ufrag: ice_string(16)?,
            pwd: ice_string(24)?,
        })
    }
}

/// What a connected peer needs for the rest of the run.
#[derive(Debug)]
pub struct Connected {
    pub keys: Keys,
    /// The node's candidate: where the peer sends media and consent checks.
    pub candidate: SocketAddr,
    pub ice: ice::Credentials,
}

/// The runtime for DTLS and the per-peer pumps, and the bench's certificate. One per run.
pub struct Agent {
    rt: Option<tokio::runtime::Runtime>,
    identity: Identity,
    profile: SrtpProfile,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("fingerprint", &self.identity.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The DTLS tasks wait forever after their handshakes (see `dtls::start`): drop them.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Agent {
    /// Starts the runtime (two threads: the handshakes' crypto is the only real work) and
    /// generates the certificate. `profile` is offered first in DTLS use_srtp.
    pub fn new(profile: SrtpProfile) -> Result<Agent, WebrtcError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-webrtc")
            .enable_all()
            .build()
            .map_err(io("starting the WebRTC runtime"))?;
        Ok(Agent {
            rt: Some(rt),
            identity: Identity::generate()?,
            profile,
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.identity.fingerprint
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        // Only Drop takes the runtime.
        self.rt.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// ICE (nominating check, retried every 100 ms up to 5 s), then the DTLS handshake, over
    /// `sock`, against `answer`. Blocking; returns the exported keys. `sock` keeps its
    /// blocking mode.
    pub fn connect(
        &self,
        sock: &UdpSocket,
        local: &LocalIce,
        answer: &sdp::Answer,
    ) -> Result<Connected, WebrtcError> {
        let creds = ice::Credentials {
            local_ufrag: local.ufrag.clone(),
            remote_ufrag: answer.ufrag.clone(),
            remote_pwd: answer.pwd.clone(),
            tiebreaker: u64::from_be_bytes(random()?),
        };
        let dup = sock.try_clone().map_err(io("duplicating a peer socket"))?;
        dup.set_nonblocking(true)
            .map_err(io("set_nonblocking on a peer socket"))?;
        let peer = answer.candidate;
        let result = self.rt().block_on(async {
            let t = tokio::net::UdpSocket::from_std(dup).map_err(io("registering a socket"))?;
            ice_connect(&t, peer, &creds).await?;
            let hs = dtls::start(&self.identity, self.profile, &answer.fingerprint)?;
            dtls_pump(&t, peer, hs).await
        });
        // O_NONBLOCK is shared with the duplicate: give the bench's loops back a blocking
        // socket (they set their own mode where they need another).
        sock.set_nonblocking(false)
            .map_err(io("set_nonblocking on a peer socket"))?;
        Ok(Connected {
            keys: result?,
            candidate: peer,
            ice: creds,
        })
    }

    /// Waits for the first RTP packet on `sock` that `cipher` unprotects and that carries
    /// `ssrc`; returns the decrypted packet and its receive time (CLOCK_MONOTONIC ns).
    /// Everything else (STUN, DTLS retransmissions, RTCP) is skipped.
    pub fn first_rtp(
        &self,
        sock: &UdpSocket,
        from: SocketAddr,
        cipher: &mut Cipher,
        ssrc: u32,
    ) -> Result<(Vec<u8>, u64), WebrtcError> {
        let dup = sock.try_clone().map_err(io("duplicating a peer socket"))?;
        dup.set_nonblocking(true)
            .map_err(io("set_nonblocking on a peer socket"))?;
        let result = self.rt().block_on(async {
            let t = tokio::net::UdpSocket::from_std(dup).map_err(io("registering a socket"))?;
            let deadline = Instant::now() + MEDIA_TIMEOUT;
            let mut buf = [0u8; BUF];
            loop {
                let Ok(r) = timeout_at(deadline, t.recv_from(&mut buf)).await else {
                    return Err(WebrtcError::NoMedia(from));
                };
                let (n, src) = r.map_err(io("receiving media"))?;
                let recv_ns = sys::monotonic_ns();
                let pkt = &mut buf[..n];
                if src != from || !packet::is_rtp(pkt) {
                    continue;
                }
                let Ok(len) = cipher.unprotect(pkt) else {
                    continue;
                };
                let rtp = &pkt[..len.min(n)];
                if packet::parse_rtp(rtp).is_ok_and(|i| i.ssrc == ssrc) {
                    return Ok((rtp.to_vec(), recv_ns));
                }
            }
        });
        sock.set_nonblocking(false)
            .map_err(io("set_nonblocking on a peer socket"))?;
        result
    }
}

async fn ice_connect(
    t: &tokio::net::UdpSocket,
    peer: SocketAddr,
    creds: &ice::Credentials,
) -> Result<(), WebrtcError> {
    // One transaction, retransmitted: any of the copies' responses completes it.
    let tid: [u8; 12] = random()?;
    let mut req = [0u8; ice::MAX_REQUEST];
    let n = creds.request(&mut req, &tid);
    let give_up = Instant::now() + ICE_TIMEOUT;
    let mut buf = [0u8; BUF];
    while Instant::now() < give_up {
        t.send_to(&req[..n], peer)
            .await
            .map_err(io("sending a STUN check"))?;
        let next = (Instant::now() + CHECK_INTERVAL).min(give_up);
        while let Ok(r) = timeout_at(next, t.recv_from(&mut buf)).await {
            let (len, src) = r.map_err(io("receiving a STUN response"))?;
            if src == peer && creds.is_success(&buf[..len], &tid) {
                return Ok(());
            }
        }
    }
    Err(WebrtcError::IceTimeout(peer))
}

/// Moves DTLS records between the socket and the handshake until it reports.
async fn dtls_pump(
    t: &tokio::net::UdpSocket,
    peer: SocketAddr,
    mut hs: dtls::Handshake,
) -> Result<Keys, WebrtcError> {
    let deadline = Instant::now() + DTLS_TIMEOUT;
    let mut buf = [0u8; BUF];
    loop {
        tokio::select! {
            r = t.recv_from(&mut buf) => {
                let (n, src) = r.map_err(io("receiving DTLS"))?;
                // RFC 7983: DTLS records start with 20..=63.
                if src == peer && matches!(buf.first(), Some(20..=63)) && n > 0 {
                    let _ = hs.inbound.try_send(buf[..n].to_vec());
                }
            }
            Some(d) = hs.outbound.recv() => {
                t.send_to(&d, peer).await.map_err(io("sending DTLS"))?;
            }
            o = &mut hs.outcome => {
                // Anything the client wrote before reporting (its last flight) goes out.
                while let Ok(d) = hs.outbound.try_recv() {
                    t.send_to(&d, peer).await.map_err(io("sending DTLS"))?;
                }
                return match o {
                    Ok(r) => Ok(r?),
                    Err(_) => Err(dtls::DtlsError::Dtls("handshake task died".into()).into()),
                };
            }
            () = tokio::time::sleep_until(deadline) => return Err(WebrtcError::DtlsTimeout(peer)),
        }
    }
}

struct ConsentPeer {
    sock: UdpSocket,
    peer: SocketAddr,
    creds: ice::Credentials,
}

/// Sends a consent check (a Binding request) from every registered peer's socket every
/// [`CONSENT_INTERVAL`] until dropped. The responses reach the peers' sockets, where the
/// receive loop skips them as non-RTP.
pub struct Consent {
    peers: Arc<Mutex<Vec<ConsentPeer>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Consent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Consent")
    }
}

impl Consent {
    /// Starts the consent thread (it sleeps in 100 ms steps so a drop stops it promptly).
    pub fn start() -> Result<Consent, WebrtcError> {
        let peers: Arc<Mutex<Vec<ConsentPeer>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peers.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("bench-consent".into())
            .spawn(move || {
                let mut req = [0u8; ice::MAX_REQUEST];
                let mut next = std::time::Instant::now() + CONSENT_INTERVAL;
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if std::time::Instant::now() < next {
                        continue;
                    }
                    next += CONSENT_INTERVAL;
                    let peers = p.lock().unwrap_or_else(|e| e.into_inner());
                    for c in peers.iter() {
                        let tid = random::<12>().unwrap_or_default();
                        let n = c.creds.request(&mut req, &tid);
                        // A lost check is retried in 5 s; the node waits 30.
                        let _ = c.sock.send_to(&req[..n], c.peer);
                    }
                }
            })
            .map_err(io("spawning the consent thread"))?;
        Ok(Consent {
            peers,
            stop,
            thread: Some(thread),
        })
    }

    /// Keeps consent for a connected peer (its socket is duplicated).
    pub fn add(&self, sock: &UdpSocket, c: &Connected) -> Result<(), WebrtcError> {
        let sock = sock.try_clone().map_err(io("duplicating a peer socket"))?;
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ConsentPeer {
                sock,
                peer: c.candidate,
                creds: c.ice.clone(),
            });
        Ok(())
    }
}

impl Drop for Consent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
