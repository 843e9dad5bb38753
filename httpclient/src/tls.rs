//! How `https://` servers are verified.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// The TLS side of a [`crate::Client`].
#[derive(Clone, Debug)]
pub struct Tls(Arc<rustls::ClientConfig>);

impl Tls {
    /// Servers whose certificate chains to one of the PEM certificates in `ca_file`, for the
    /// URL's host name (the usual verification).
    pub fn from_ca_file(ca_file: &Path) -> Result<Self, String> {
        let certs = CertificateDer::pem_file_iter(ca_file)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM CERTIFICATE in it", ca_file.display()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(Arc::new(config)))
    }

    /// Any server certificate ([`accept_any_server`]).
    pub fn accept_any() -> Self {
        Self(accept_any_server())
    }

    /// A config the caller built.
    pub fn custom(config: Arc<rustls::ClientConfig>) -> Self {
        Self(config)
    }

    pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.0.clone()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config that accepts any server certificate, for calls between the nodes of a
/// cluster (health checks, relay set-up, events to a node): nodes may use private or
/// self-signed certificates, the cluster token authenticates the caller, and the operator's
/// network (or a pinned CA with [`Tls::from_ca_file`]) the callee (docs/cluster.md).
/// Handshake signatures are still verified, so the handshake is a real one.
pub fn accept_any_server() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = provider();
            let verifier = Arc::new(AnyServer(provider.signature_verification_algorithms));
            let mut config = match rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
            {
                Ok(b) => b,
                // ring supports every default version; this cannot happen with this build.
                Err(e) => unreachable!("ring lacks the default TLS versions: {e}"),
            }
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct AnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}
