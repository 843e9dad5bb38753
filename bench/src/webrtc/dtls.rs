//! The DTLS client (`a=setup:active`) with webrtc-dtls, and the SRTP keys it exports.
//!
//! webrtc-dtls reads its records from a `Conn`. Given the peer's UDP socket it would keep a
//! reader on it after the handshake and swallow media, so it gets an in-memory [`Pipe`]
//! instead: the caller pumps DTLS records between the socket and the pipe while the handshake
//! runs, then stops, and the socket belongs to the bench's send/receive loops alone.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use ring::digest;
use switchyard_shared::command::SrtpProfile;
use tokio::sync::{mpsc, oneshot, Mutex};
use webrtc_dtls::config::Config;
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_util::conn::Conn;
use webrtc_util::KeyingMaterialExporter;

/// RFC 5764 §4.2 exporter label.
const SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";
/// Records queued towards the DTLS task; a flight is a handful.
const INBOUND_QUEUE: usize = 64;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    #[error("the node's certificate does not match the answer's fingerprint")]
    FingerprintMismatch,
    #[error("unsupported fingerprint {0:?} (want sha-256)")]
    Fingerprint(String),
    #[error("no SRTP profile negotiated")]
    NoSrtpProfile,
    #[error("DTLS: {0}")]
    Dtls(String),
}

/// SRTP master keys (key ‖ salt) for the bench's side: it protects with `local` (the
/// client write key) and unprotects with `remote` (the server's).
#[derive(Clone)]
pub struct Keys {
    pub profile: SrtpProfile,
    pub local: Vec<u8>,
    pub remote: Vec<u8>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({})", self.profile.name())
    }
}

/// The bench's certificate, one per run (a browser has one per peer connection; the
/// handshake cost is the same, only key generation is shared).
#[derive(Clone)]
pub struct Identity {
    cert: Certificate,
    /// `"sha-256 AB:CD:…"` for the offers.
    pub fingerprint: String,
}

impl Identity {
    pub fn generate() -> Result<Identity, DtlsError> {
        let cert = Certificate::generate_self_signed(vec!["switchyard-bench".to_owned()])
            .map_err(|e| DtlsError::Dtls(e.to_string()))?;
        let leaf = cert
            .certificate
            .first()
            .ok_or_else(|| DtlsError::Dtls("empty certificate".into()))?;
        let fingerprint = sha256_fingerprint(leaf.as_ref());
        Ok(Identity { cert, fingerprint })
    }
}

/// `"sha-256 AB:CD:…"` of a DER certificate.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let hex: Vec<String> = digest::digest(&digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("sha-256 {}", hex.join(":"))
}

/// The caller's ends of a handshake's pipe: records in, records out, and the outcome.
pub struct Handshake {
    pub inbound: mpsc::Sender<Vec<u8>>,
    pub outbound: mpsc::UnboundedReceiver<Vec<u8>>,
    pub outcome: oneshot::Receiver<Result<Keys, DtlsError>>,
}

/// Starts the client handshake as a task on the current runtime. `preferred` is offered
/// first; `server_fingerprint` is the answer's `a=fingerprint`. The task keeps the
/// connection open after reporting (a close_notify would end the node's side), until the
/// runtime shuts down.
pub fn start(
    identity: &Identity,
    preferred: SrtpProfile,
    server_fingerprint: &str,
) -> Result<Handshake, DtlsError> {
    let expected = normalize(server_fingerprint)?;
    let profiles = match preferred {
        SrtpProfile::AeadAes128Gcm => vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ],
        SrtpProfile::AesCm128HmacSha1_80 => vec![
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        ],
    };
    let config = Config {
        certificates: vec![identity.cert.clone()],
        srtp_protection_profiles: profiles,
        // The node's certificate is self-signed: no chain to build. The trust anchor is the
        // answer's fingerprint, checked in the hook, which runs after the server proved
        // possession of the key (its signed ServerKeyExchange).
        insecure_skip_verify: true,
        server_name: "switchyard".into(),
        verify_peer_certificate: Some(Arc::new(move |certs: &[Vec<u8>], _: &_| {
            match certs.first() {
                Some(leaf) if sha256_fingerprint(leaf) == expected => Ok(()),
                _ => Err(webrtc_dtls::Error::Other("fingerprint mismatch".into())),
            }
        })),
        ..Config::default()
    };
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (tx, outcome) = oneshot::channel();
    let pipe = Pipe {
        inbound: Mutex::new(in_rx),
        outbound: out_tx,
    };
    tokio::spawn(async move {
        let conn = match DTLSConn::new(Arc::new(pipe), config, true, None).await {
            Ok(c) => c,
            Err(e) => {
                let err = if e.to_string().contains("fingerprint mismatch") {
                    DtlsError::FingerprintMismatch
                } else {
                    DtlsError::Dtls(e.to_string())
                };
                let _ = tx.send(Err(err));
                return;
            }
        };
        let _ = tx.send(export(&conn).await);
        std::future::pending::<()>().await;
    });
    Ok(Handshake {
        inbound: in_tx,
        outbound: out_rx,
        outcome,
    })
}

/// Upper-case hex, lower-case algorithm: how [`sha256_fingerprint`] writes it.
fn normalize(fp: &str) -> Result<String, DtlsError> {
    let mut parts = fp.split_ascii_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(alg), Some(hex), None) if alg.eq_ignore_ascii_case("sha-256") => {
            Ok(format!("sha-256 {}", hex.to_ascii_uppercase()))
        }
        _ => Err(DtlsError::Fingerprint(fp.chars().take(120).collect())),
    }
}

async fn export(conn: &DTLSConn) -> Result<Keys, DtlsError> {
    let profile = match conn.selected_srtpprotection_profile() {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => SrtpProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => SrtpProfile::AesCm128HmacSha1_80,
        _ => return Err(DtlsError::NoSrtpProfile),
    };
    let material = conn
        .connection_state()
        .await
        .export_keying_material(SRTP_EXPORTER_LABEL, &[], 2 * profile.master_len())
        .await
        .map_err(|e| DtlsError::Dtls(e.to_string()))?;
    split_keys(profile, &material).ok_or_else(|| DtlsError::Dtls("short key export".into()))
}

/// RFC 5764 §4.2: client key, server key, client salt, server salt. The bench is the client.
pub fn split_keys(profile: SrtpProfile, m: &[u8]) -> Option<Keys> {
    let (k, s) = (profile.key_len(), profile.salt_len());
    if m.len() != 2 * (k + s) {
        return None;
    }
    let (client_key, rest) = m.split_at(k);
    let (server_key, rest) = rest.split_at(k);
    let (client_salt, server_salt) = rest.split_at(s);
    Some(Keys {
        profile,
        local: [client_key, client_salt].concat(),
        remote: [server_key, server_salt].concat(),
    })
}

/// A datagram `Conn` over two channels (see the module doc).
struct Pipe {
    inbound: Mutex<mpsc::Receiver<Vec<u8>>>,
    outbound: mpsc::UnboundedSender<Vec<u8>>,
}

type UtilResult<T> = Result<T, webrtc_util::Error>;

fn placeholder_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
}

#[async_trait]
impl Conn for Pipe {
    async fn connect(&self, _addr: SocketAddr) -> UtilResult<()> {
        Err(webrtc_util::Error::Other("pipe is always connected".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> UtilResult<usize> {
        match self.inbound.lock().await.recv().await {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            // The pump stopped after the handshake. webrtc-dtls's reader retries on errors,
            // so an error would spin: wait until the runtime drops the task instead.
            None => std::future::pending().await,
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> UtilResult<(usize, SocketAddr)> {
        Ok((self.recv(buf).await?, placeholder_addr()))
    }

    async fn send(&self, buf: &[u8]) -> UtilResult<usize> {
        // Nobody pumps after the handshake; like UDP, an unsent datagram is not an error.
        let _ = self.outbound.send(buf.to_vec());
        Ok(buf.len())
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> UtilResult<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> UtilResult<SocketAddr> {
        Ok(placeholder_addr())
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> UtilResult<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        let p = SrtpProfile::AeadAes128Gcm;
        let m: Vec<u8> = (0..56).collect();
        let k = split_keys(p, &m).expect("56 bytes");
        assert_eq!(k.local, [&m[0..16], &m[32..44]].concat());
        assert_eq!(k.remote, [&m[16..32], &m[44..56]].concat());
        assert!(split_keys(p, &m[..55]).is_none());
        let p = SrtpProfile::AesCm128HmacSha1_80;
        let m: Vec<u8> = (0..60).collect();
        let k = split_keys(p, &m).expect("60 bytes");
        assert_eq!(k.local, [&m[0..16], &m[32..46]].concat());
        assert_eq!(k.remote, [&m[16..32], &m[46..60]].concat());
    }

    #[test]
    fn fingerprints() {
        assert_eq!(normalize("SHA-256 ab:cd").expect("ok"), "sha-256 AB:CD");
        assert!(normalize("sha-1 AB").is_err());
        assert!(sha256_fingerprint(b"x").starts_with("sha-256 2D:71:16:42"));
    }
}
