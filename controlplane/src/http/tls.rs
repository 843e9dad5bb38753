//! HTTPS for the API (`[http] certificate` / `private_key`): rustls with the ring provider
//! (the one webrtc-dtls already brings). The server (`super::server`) runs each handshake in
//! its connection's own task, under the connection cap, with [`HANDSHAKE_TIMEOUT`], so a
//! client that stalls mid-handshake holds up only itself.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::rustls::ServerConfig;

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The process-wide crypto provider: ring.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config from PEM files: `cert` a chain, leaf first; `key` PKCS#8, PKCS#1 or
/// SEC1. Errors name the file and the reason.
/// SHA-256 of the first (leaf) certificate in PEM file `cert`, lowercase hex: what
/// `GET /certificate.sha256` answers, and what a WebTransport client pins with
/// `serverCertificateHashes`.
pub fn certificate_sha256(cert: &Path) -> anyhow::Result<String> {
    let leaf = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow!("http.certificate {}: {e}", cert.display()))?
        .next()
        .ok_or_else(|| {
            anyhow!(
                "http.certificate {}: no PEM CERTIFICATE in it",
                cert.display()
            )
        })?
        .map_err(|e| anyhow!("http.certificate {}: {e}", cert.display()))?;
    let d = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    Ok(d.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("http.certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(anyhow!(
            "http.certificate {}: no PEM CERTIFICATE in it",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow!("http.private_key {}: {e}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(|| {
            format!(
                "http.certificate {} with http.private_key {}",
                cert.display(),
                key.display()
            )
        })?;
    // axum is built for HTTP/1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
pub(crate) use listener::TlsListener;

#[cfg(test)]
mod listener {
    use std::io;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::serve::Listener;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{mpsc, Semaphore};
    use tokio_rustls::server::TlsStream;
    use tokio_rustls::TlsAcceptor;

    use super::{ServerConfig, HANDSHAKE_TIMEOUT};

    /// TLS handshakes in progress at once; further connections wait in the accept queue.
    const MAX_HANDSHAKES: usize = 256;

    /// Accepts TCP connections and yields them once their TLS handshake is done.
    pub struct TlsListener {
        ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        addr: SocketAddr,
        acceptor: tokio::task::JoinHandle<()>,
    }

    impl TlsListener {
        /// Start accepting on `listener` (needs a tokio runtime).
        pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
            let addr = listener.local_addr()?;
            let (tx, ready) = mpsc::channel(64);
            let tls = TlsAcceptor::from(config);
            let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            let acceptor = tokio::spawn(async move {
                loop {
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let (tcp, peer) = match listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            // EMFILE and the like: back off as axum's own listener does.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let tls = tls.clone();
                    let ready = tx.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let _ = ready.send((stream, peer)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                    if tx.is_closed() {
                        return;
                    }
                }
            });
            Ok(Self {
                ready,
                addr,
                acceptor,
            })
        }
    }

    impl Drop for TlsListener {
        fn drop(&mut self) {
            self.acceptor.abort();
        }
    }

    impl Listener for TlsListener {
        type Io = TlsStream<TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match self.ready.recv().await {
                Some(conn) => conn,
                // The acceptor task is gone (only when aborted): accept nothing more.
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(self.addr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn serves_https_and_the_health_probe_speaks_it() {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("rcgen");
        let dir = std::env::temp_dir().join(format!("swy-cp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).expect("cert");
        std::fs::write(&key, ck.key_pair.serialize_pem()).expect("key");
        let config = server_config(&cert, &key).expect("server config");
        let _ = std::fs::remove_dir_all(&dir);
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let listener = TlsListener::new(tcp, config).expect("listener");
        let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        use crate::services::cluster::probe::{probe, Health};
        let t = Duration::from_secs(5);
        assert_eq!(probe(&format!("https://{addr}"), t).await, Health::Up);
        assert_ne!(probe(&format!("http://{addr}"), t).await, Health::Up);
    }

    #[tokio::test]
    async fn posts_json_with_a_token_over_https_and_http() {
        use crate::services::relay::client::{request, ClientError};
        use axum::http::HeaderMap;
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("rcgen");
        let dir = std::env::temp_dir().join(format!("swy-relay-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).expect("cert");
        std::fs::write(&key, ck.key_pair.serialize_pem()).expect("key");
        let config = server_config(&cert, &key).expect("server config");
        let _ = std::fs::remove_dir_all(&dir);
        // Echoes the bearer token and the body's length, as JSON.
        let app = || {
            axum::Router::new().route(
                "/v1/relays/ingress",
                axum::routing::post(|h: HeaderMap, body: axum::body::Bytes| async move {
                    let auth = h
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    (
                        axum::http::StatusCode::CREATED,
                        axum::Json(serde_json::json!({ "auth": auth, "len": body.len() })),
                    )
                }),
            )
        };
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let tls_addr = tcp.local_addr().expect("addr");
        let listener = TlsListener::new(tcp, config).expect("listener");
        tokio::spawn(async move { axum::serve(listener, app()).await });
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let plain_addr = plain.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(plain, app()).await });
        let t = Duration::from_secs(5);
        for base in [
            format!("https://{tls_addr}"),
            format!("http://{plain_addr}"),
        ] {
            let a = request(
                &base,
                "POST",
                "/v1/relays/ingress",
                Some(b"{\"a\":1}"),
                Some("tok"),
                t,
            )
            .await
            .expect("answer");
            assert_eq!(a.status, 201, "{base}");
            let v: serde_json::Value = serde_json::from_slice(&a.body).expect("json");
            assert_eq!(v["auth"], "Bearer tok", "{base}");
            assert_eq!(v["len"], 7, "{base}");
            let missing = request(&base, "GET", "/nowhere", None, None, t)
                .await
                .expect("404");
            assert_eq!(missing.status, 404);
        }
        // Plain HTTP to the TLS port gets no HTTP answer.
        assert!(
            request(&format!("http://{tls_addr}"), "GET", "/", None, None, t)
                .await
                .is_err()
        );
        assert!(matches!(
            request("ftp://x", "GET", "/", None, None, t).await,
            Err(ClientError::BadUrl(_))
        ));
    }
}
