//! HTTPS for the control plane (`--http-certificate` / `--http-private-key`): a real node
//! with a self-signed certificate for 127.0.0.1, asked over TLS by a client that trusts
//! only that certificate; plain HTTP to the same port gets nothing; bad files stop the start.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http, Node, BIN};
use rustls::pki_types::{CertificateDer, ServerName};

struct Tls {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: CertificateDer<'static>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn self_signed(name: &str) -> Tls {
    let dir = std::env::temp_dir().join(format!("swy-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("rcgen");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    Tls {
        cert,
        key,
        der: ck.cert.der().clone(),
        _dir: TempDir(dir),
    }
}

fn tls_flags(cert: &Path, key: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "--http-certificate".into(),
        cert.into(),
        "--http-private-key".into(),
        key.into(),
    ]
}

/// `GET path` over TLS to `addr`, trusting only `root`; returns status and body.
fn https_get(
    addr: &str,
    root: &CertificateDer<'static>,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    // A server may close without close_notify; what arrived before counts.
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

#[test]
fn health_over_https_and_no_plain_http() {
    let tls = self_signed("node");
    let node = Node::spawn_with(1, tls_flags(&tls.cert, &tls.key));
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Ok((200, body)) = https_get(&node.http_addr, &tls.der, "/health") {
            break body;
        }
        assert!(Instant::now() < deadline, "node did not answer over HTTPS");
        std::thread::sleep(Duration::from_millis(50));
    };
    let health: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    assert!(health.is_object(), "{health}");

    // The fingerprints a client may pin: this certificate's, and the DTLS one of the media.
    let (status, body) =
        https_get(&node.http_addr, &tls.der, "/certificate.sha256").expect("certificates");
    assert_eq!(status, 200, "{body}");
    let certs: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let want: String = ring::digest::digest(&ring::digest::SHA256, tls.der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(certs["https"], want.as_str(), "{certs}");
    assert!(
        certs["dtls"]
            .as_str()
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())),
        "{certs}"
    );

    // Plain HTTP to the TLS port: no HTTP answer.
    let plain = http(&node.http_addr, "GET", "/health", None);
    assert!(
        !matches!(&plain, Ok(r) if r.status == 200),
        "plain HTTP answered: {plain:?}"
    );

    // A client that does not trust the certificate fails the handshake.
    let other = self_signed("other");
    assert!(https_get(&node.http_addr, &other.der, "/health").is_err());
}

fn controlplane_with(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("controlplane")
        .args(["--node-id", "tls-bad", "--http-listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run")
}

#[test]
fn bad_certificate_files_stop_the_start() {
    let tls = self_signed("bad");
    // Missing certificate file: non-zero, with the path.
    let missing = tls.cert.with_file_name("missing.pem");
    let out = controlplane_with(&[
        "--http-certificate".as_ref(),
        missing.as_os_str(),
        "--http-private-key".as_ref(),
        tls.key.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("missing.pem"), "{err}");

    // A key file with no key in it.
    let garbage = tls.cert.with_file_name("garbage.pem");
    std::fs::write(&garbage, "not a key\n").expect("write");
    let out = controlplane_with(&[
        "--http-certificate".as_ref(),
        tls.cert.as_os_str(),
        "--http-private-key".as_ref(),
        garbage.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("garbage.pem"), "{err}");

    // The key of another certificate.
    let other = self_signed("bad-other");
    let out = controlplane_with(&[
        "--http-certificate".as_ref(),
        tls.cert.as_os_str(),
        "--http-private-key".as_ref(),
        other.key.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");

    // A certificate without its key is a config error (status 2).
    let out = controlplane_with(&["--http-certificate".as_ref(), tls.cert.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("http.certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
