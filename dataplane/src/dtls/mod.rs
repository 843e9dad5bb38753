//! DTLS-SRTP for one WebRTC session, server role (`a=setup:passive`), on the slow path.
//!
//! Workers own the UDP sockets, so a [`DtlsSession`] never touches one: the worker hands
//! DTLS records from the session's validated 5-tuple to [`DtlsSession::handle_datagram`],
//! and whatever [`DtlsSession::poll_transmit`] yields goes back to the worker to send. The
//! outcome comes out of [`DtlsSession::poll_event`]: the SRTP master keys (RFC 5764 §4.2) or
//! a [`Failure`].
//!
//! After the handshake the same task runs the session's SCTP association for data channels
//! over the connection ([`crate::datachan`]); its events come out of
//! [`DtlsSession::poll_data`] and [`DtlsSession::send_data`] hands it commands. A peer that
//! never starts SCTP (no `m=application`) leaves it waiting passively, sending nothing.
//!
//! # Why a runtime inside a synchronous API
//!
//! The DTLS state machine is webrtc-dtls, which is written against tokio and a `Conn`; we do
//! not hand-write DTLS. Each session's handshake therefore runs as a tokio task over an
//! in-memory pipe, and every session of the process shares one runtime with **one** worker
//! thread, owned by the [`DtlsConfig`] (built once per process). Hundreds of concurrent
//! handshakes are hundreds of tasks, not threads; a handshake costs well under a millisecond
//! of CPU, so one thread keeps up with any realistic join rate and never competes with the
//! pinned workers for more than one core. The public methods only touch channels
//! (`try_send` / `try_recv`), so the slow path can call them from its loop without blocking.
//!
//! The price: output is produced asynchronously. After `handle_datagram`, the answering
//! flight appears in `poll_transmit` a moment later (once the driver thread has run the
//! task), so the slow path polls its handshaking sessions every turn. webrtc-dtls also runs
//! its own flight retransmission timers on the wall clock. Only the handshake deadline is on
//! the caller's clock: `handle_timeout` / `poll_timeout`, and the `now` passed with each
//! datagram.
//!
//! # Security contract
//!
//! - The client must present a certificate (`RequireAnyClientCert`) and prove possession
//!   with CertificateVerify; browsers' certificates are self-signed, so there is no chain to
//!   check and the trust anchor is the offer's `a=fingerprint`, compared with the client's
//!   end-entity certificate (pion CVE-2021-28681). webrtc-dtls calls our check only after it
//!   has verified CertificateVerify, and a session is declared connected only if that check
//!   ran and matched, so a certificate without CertificateVerify never connects
//!   (CVE-2022-29222).
//! - The first ClientHello is answered with a HelloVerifyRequest (a stateless cookie) by
//!   webrtc-dtls; the records only come from a 5-tuple that passed ICE in any case.
//! - At most [`MAX_HANDSHAKE_BYTES`] of records are accepted before the handshake completes
//!   (CVE-2022-29189), and a handshake must complete within [`HANDSHAKE_TIMEOUT`].
//! - Records are untrusted input: nothing here panics on them.

#![forbid(unsafe_code)]

mod closable;
pub(crate) mod fingerprint;
mod pipe;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_shared::command::{SrtpKeys, SrtpProfile};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use webrtc_dtls::config::{ClientAuthType, Config};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::{Certificate, CryptoPrivateKey};
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_util::KeyingMaterialExporter;

use crate::datachan::{self, sctp, DataCommand, DataCounts, DataEvent};
use closable::Closable;
use fingerprint::Fingerprint;
use pipe::Pipe;

/// How long a closing session waits for its DTLS connection to send close_notify and stop.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A handshake still incomplete this long after [`DtlsSession::new`] fails. Browsers finish
/// in a few round trips; 10 s covers webrtc-dtls's retransmission backoff on a lossy path.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Record bytes a session may feed before its handshake completes. A full handshake with a
/// large certificate chain is a few KiB; retransmissions within the deadline stay far below
/// 64 KiB, so more is a peer trying to make us buffer (CVE-2022-29189).
pub const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;

/// RFC 5764 §4.2 exporter label.
const SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// Records above this are not DTLS from a browser (MTU-sized at most); dropped unread.
const MAX_RECORD: usize = 2048;

/// Errors building a [`DtlsConfig`] or a [`DtlsSession`]. Handshake outcomes are
/// [`DtlsEvent`]s, not errors.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("unsupported or malformed fingerprint: {0:?}")]
    Fingerprint(String),
    #[error("starting the DTLS driver thread: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("the DTLS driver has stopped")]
    DriverStopped,
    #[error(transparent)]
    Dtls(#[from] webrtc_dtls::Error),
}

/// Why a handshake failed. Small and `Copy`: it becomes a counter and a close reason; the
/// library's detail goes to the debug log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("fingerprint mismatch")]
    FingerprintMismatch,
    #[error("handshake timeout")]
    Timeout,
    #[error("handshake data limit exceeded")]
    DataLimit,
    /// Completed without our certificate check having run (no client certificate, or no
    /// CertificateVerify): never accepted.
    #[error("peer certificate not verified")]
    PeerNotVerified,
    #[error("no SRTP profile negotiated")]
    NoSrtpProfile,
    /// Any other handshake error (alert, bad signature, no client certificate, ...).
    #[error("handshake failed")]
    Handshake,
    /// The driver runtime stopped or the task died (a bug in the library, caught).
    #[error("DTLS driver stopped")]
    DriverStopped,
}

/// What a session reports, once: keys for the worker's SRTP contexts, or why it failed.
#[derive(Debug, PartialEq, Eq)]
pub enum DtlsEvent {
    Connected(SrtpKeys),
    Failed(Failure),
}

/// The runtime every session's task runs on. Shut down without waiting when the last
/// config or session holding it goes: tasks are dropped, sessions see `DriverStopped`.
struct Driver {
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Our DTLS identity and the driver thread, built once per process.
///
/// Building one starts the "dtls" driver thread (see the module doc); nothing else does.
#[derive(Clone)]
pub struct DtlsConfig {
    cert: Certificate,
    fingerprint: String,
    driver: Arc<Driver>,
}

impl std::fmt::Debug for DtlsConfig {
    // The private key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsConfig")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl DtlsConfig {
    /// A fresh self-signed ECDSA P-256 certificate (what browsers do): its fingerprint goes
    /// in every SDP answer this process writes, so it changes at every start.
    pub fn generate() -> Result<Self, DtlsError> {
        let cert = Certificate::generate_self_signed_with_alg(
            vec!["switchyard".to_owned()],
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )?;
        Self::with_certificate(cert)
    }

    /// Load a certificate chain (PEM `CERTIFICATE` blocks, end-entity first) and its PKCS#8
    /// ECDSA P-256 private key (PEM `PRIVATE KEY`). The key must match the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, DtlsError> {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| DtlsError::Certificate(format!("{what}: {e}"));
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| bad("private key", &e))?;
        if !key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(DtlsError::Certificate(
                "private key is not ECDSA P-256".into(),
            ));
        }
        let ders: Vec<Vec<u8>> = pem::parse_many(cert_pem)
            .map_err(|e| bad("certificate PEM", &e))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(pem::Pem::into_contents)
            .collect();
        let Some(leaf) = ders.first() else {
            return Err(DtlsError::Certificate("no CERTIFICATE block".into()));
        };
        let (_, x509) =
            x509_parser::parse_x509_certificate(leaf).map_err(|e| bad("certificate", &e))?;
        // A mismatched pair would advertise one fingerprint and sign with another key:
        // every handshake would fail in the browser with no hint why.
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(DtlsError::Certificate(
                "certificate does not match the private key".into(),
            ));
        }
        let cert = Certificate {
            certificate: ders.into_iter().map(Into::into).collect(),
            private_key: CryptoPrivateKey::from_key_pair(&key)?,
        };
        Self::with_certificate(cert)
    }

    fn with_certificate(cert: Certificate) -> Result<Self, DtlsError> {
        let Some(leaf) = cert.certificate.first() else {
            return Err(DtlsError::Certificate("empty certificate chain".into()));
        };
        let fingerprint = fingerprint::sha256_of(leaf.as_ref());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("dtls")
            .enable_time()
            .build()?;
        Ok(Self {
            cert,
            fingerprint,
            driver: Arc::new(Driver { rt: Some(rt) }),
        })
    }

    /// Our certificate's fingerprint for the SDP answer's `a=fingerprint:`, as
    /// `"sha-256 AB:CD:..."`.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

/// The state of the peer's certificate check, shared with the verify hook.
const CHECK_NOT_RUN: u8 = 0;
const CHECK_MATCHED: u8 = 1;
const CHECK_MISMATCH: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshaking,
    Connected,
    Failed,
}

/// One session's DTLS server. See the module doc for the calling contract.
pub struct DtlsSession {
    /// Keeps the runtime alive as long as the task may run.
    _driver: Arc<Driver>,
    inbound: mpsc::Sender<Vec<u8>>,
    outbound: mpsc::UnboundedReceiver<Vec<u8>>,
    outcome: oneshot::Receiver<Result<SrtpKeys, Failure>>,
    /// Dropping it ends the task: it closes the DTLS connection, which also stops the SCTP
    /// association's own tasks (an abort would leave those running).
    stop: Option<oneshot::Sender<()>>,
    data_events: mpsc::Receiver<DataEvent>,
    data_commands: mpsc::Sender<DataCommand>,
    data_counts: Arc<DataCounts>,
    events: VecDeque<DtlsEvent>,
    deadline: Instant,
    /// Record bytes fed while handshaking.
    fed: usize,
    phase: Phase,
}

impl DtlsSession {
    /// Start the server side of one session's handshake; the client speaks first.
    ///
    /// `remote_fingerprint` is the offer's `a=fingerprint` value (`"sha-256 AB:..."`); the
    /// client's certificate must hash to it. `now` starts the [`HANDSHAKE_TIMEOUT`].
    pub fn new(
        cfg: &DtlsConfig,
        remote_fingerprint: &str,
        now: Instant,
    ) -> Result<Self, DtlsError> {
        let expected = Fingerprint::parse(remote_fingerprint)?;
        let Some(rt) = cfg.driver.rt.as_ref() else {
            // Only `Driver::drop` takes the runtime, and `cfg` holds the driver.
            return Err(DtlsError::DriverStopped);
        };
        let check = Arc::new(AtomicU8::new(CHECK_NOT_RUN));
        let hook_check = Arc::clone(&check);
        let config = Config {
            certificates: vec![cfg.cert.clone()],
            // Offered in our order of preference; webrtc-dtls picks the first of the
            // client's list that we support.
            srtp_protection_profiles: vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ],
            // Browsers' certificates are self-signed: require one, skip chain building
            // (RequireAnyClientCert does), and check the fingerprint in the hook below.
            client_auth: ClientAuthType::RequireAnyClientCert,
            verify_peer_certificate: Some(Arc::new(move |certs: &[Vec<u8>], _chains: &_| {
                let ok = certs.first().is_some_and(|leaf| expected.matches(leaf));
                let state = if ok { CHECK_MATCHED } else { CHECK_MISMATCH };
                hook_check.store(state, Ordering::Release);
                if ok {
                    Ok(())
                } else {
                    Err(webrtc_dtls::Error::Other("fingerprint mismatch".into()))
                }
            })),
            ..Config::default()
        };
        let (pipe, ends) = Pipe::new();
        let (outcome_tx, outcome) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel();
        let (events_tx, data_events) = mpsc::channel(datachan::EVENT_QUEUE);
        let (data_commands, commands_rx) = mpsc::channel(datachan::COMMAND_QUEUE);
        let data_counts = Arc::new(DataCounts::default());
        let link = sctp::Link {
            events: events_tx,
            commands: commands_rx,
            counts: Arc::clone(&data_counts),
        };
        rt.spawn(serve(pipe, config, check, outcome_tx, stop_rx, link));
        Ok(Self {
            _driver: Arc::clone(&cfg.driver),
            inbound: ends.inbound,
            outbound: ends.outbound,
            outcome,
            stop: Some(stop),
            data_events,
            data_commands,
            data_counts,
            events: VecDeque::new(),
            deadline: now + HANDSHAKE_TIMEOUT,
            fed: 0,
            phase: Phase::Handshaking,
        })
    }

    /// A DTLS record (RFC 7983 first byte 20..=63) from the session's validated 5-tuple,
    /// with its receive time. Dropped, like a full socket buffer would, if the driver is
    /// behind; ignored after a failure.
    pub fn handle_datagram(&mut self, data: &[u8], now: Instant) {
        self.pump();
        self.check_deadline(now);
        match self.phase {
            Phase::Failed => return,
            Phase::Handshaking => {
                self.fed = self.fed.saturating_add(data.len());
                if self.fed > MAX_HANDSHAKE_BYTES {
                    self.fail(Failure::DataLimit);
                    return;
                }
            }
            // Still fed after the handshake: the client may retransmit its last flight if
            // ours was lost, and webrtc-dtls answers it.
            Phase::Connected => {}
        }
        if data.is_empty() || data.len() > MAX_RECORD {
            return;
        }
        let _ = self.inbound.try_send(data.to_vec());
    }

    /// The next datagram to send to the peer, if any. Call every slow-path turn while the
    /// session exists: flights are produced asynchronously (see the module doc).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbound.try_recv().ok()
    }

    /// `Connected` or `Failed`, at most one of them, once.
    pub fn poll_event(&mut self) -> Option<DtlsEvent> {
        self.pump();
        self.events.pop_front()
    }

    /// Fails the handshake if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pump();
        self.check_deadline(now);
    }

    /// When to call [`Self::handle_timeout`]: the handshake deadline, while handshaking.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.phase == Phase::Handshaking).then_some(self.deadline)
    }

    /// The next thing the peer did on its data channels, if any. Call every slow-path turn
    /// while the session is connected: the session's task waits while these are not taken.
    pub fn poll_data(&mut self) -> Option<DataEvent> {
        self.data_events.try_recv().ok()
    }

    /// Queue a data channel command for the session's task. `false`: dropped, because the
    /// queue is full (the peer or the driver is behind) or the session has ended; the caller
    /// counts it.
    pub fn send_data(&mut self, cmd: DataCommand) -> bool {
        match self.data_commands.try_send(cmd) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => false,
        }
    }

    /// Data channel messages the task sent and dropped since the last call.
    pub fn take_data_counts(&self) -> (u64, u64) {
        self.data_counts.take()
    }

    fn check_deadline(&mut self, now: Instant) {
        if self.phase == Phase::Handshaking && now >= self.deadline {
            self.fail(Failure::Timeout);
        }
    }

    /// Move the task's outcome, if it has one, into the event queue.
    fn pump(&mut self) {
        if self.phase != Phase::Handshaking {
            return;
        }
        match self.outcome.try_recv() {
            Ok(Ok(keys)) => {
                self.phase = Phase::Connected;
                self.events.push_back(DtlsEvent::Connected(keys));
            }
            Ok(Err(failure)) => self.fail(failure),
            Err(oneshot::error::TryRecvError::Empty) => {}
            Err(oneshot::error::TryRecvError::Closed) => self.fail(Failure::DriverStopped),
        }
    }

    fn fail(&mut self, failure: Failure) {
        self.phase = Phase::Failed;
        self.stop.take();
        self.events.push_back(DtlsEvent::Failed(failure));
    }
}

/// One session's task: run the handshake, report, then keep the connection alive (answering
/// retransmitted client flights) and run data channels over it until the session drops
/// `stop` or the peer closes.
async fn serve(
    pipe: Pipe,
    config: Config,
    check: Arc<AtomicU8>,
    outcome: oneshot::Sender<Result<SrtpKeys, Failure>>,
    mut stop: oneshot::Receiver<()>,
    link: sctp::Link,
) {
    // Stopped while handshaking: dropping the handshake drops the connection and with it
    // its reader and writer tasks.
    let handshake = tokio::select! {
        _ = &mut stop => return,
        r = DTLSConn::new(Arc::new(pipe), config, false, None) => r,
    };
    let conn = match handshake {
        Ok(conn) => Arc::new(conn),
        Err(e) => {
            let failure = if check.load(Ordering::Acquire) == CHECK_MISMATCH {
                Failure::FingerprintMismatch
            } else {
                tracing::debug!(error = %e, "DTLS handshake failed");
                Failure::Handshake
            };
            let _ = outcome.send(Err(failure));
            return;
        }
    };
    let result = if check.load(Ordering::Acquire) == CHECK_MATCHED {
        export_keys(&conn).await
    } else {
        Err(Failure::PeerNotVerified)
    };
    let connected = result.is_ok();
    if outcome.send(result).is_ok() && connected {
        // SCTP reads the connection's application data from here on, so its reader never
        // stalls on a full channel. Ends on the peer's close or fatal alert, or on `stop`.
        let (net, off) = Closable::new(Arc::clone(&conn));
        tokio::select! {
            _ = &mut stop => {}
            _ = sctp::run(net, link) => {}
        }
        // The association's read and write tasks hold the connection and end only on a
        // failed read: fail them first (see `closable`).
        let _ = off.send(true);
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
}

async fn export_keys(conn: &DTLSConn) -> Result<SrtpKeys, Failure> {
    let profile = match conn.selected_srtpprotection_profile() {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => SrtpProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => SrtpProfile::AesCm128HmacSha1_80,
        _ => return Err(Failure::NoSrtpProfile),
    };
    let (k, s) = (profile.key_len(), profile.salt_len());
    let material = conn
        .connection_state()
        .await
        .export_keying_material(SRTP_EXPORTER_LABEL, &[], 2 * (k + s))
        .await
        .map_err(|e| {
            tracing::debug!(error = %e, "DTLS-SRTP key export failed");
            Failure::Handshake
        })?;
    // split_keys slices by these lengths; the exporter returns exactly what was asked.
    if material.len() != 2 * (k + s) {
        return Err(Failure::Handshake);
    }
    Ok(split_keys(profile, &material))
}

/// RFC 5764 §4.2 layout: client key, server key, client salt, server salt. We are the
/// server, so the peer protects with the client half. `m` is `2 * master_len` bytes.
fn split_keys(profile: SrtpProfile, m: &[u8]) -> SrtpKeys {
    let (k, s) = (profile.key_len(), profile.salt_len());
    let (client_key, rest) = m.split_at(k);
    let (server_key, rest) = rest.split_at(k);
    let (client_salt, server_salt) = rest.split_at(s);
    SrtpKeys {
        profile,
        remote: [client_key, client_salt].concat(),
        local: [server_key, &server_salt[..s]].concat(),
    }
}
