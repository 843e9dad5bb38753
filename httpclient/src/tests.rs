//! Against real sockets: small servers on loopback that answer exactly what each case needs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::*;

/// A server answering each connection with `answer(request head)`; returns its base URL and
/// the request heads it saw.
async fn server<F>(answer: F) -> (String, Arc<Mutex<Vec<String>>>)
where
    F: Fn(&str) -> Vec<u8> + Send + Sync + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let answer = answer.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                log.lock().expect("log").push(head.clone());
                let _ = s.write_all(&answer(&head)).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (base, seen)
}

fn client(redirects: u8) -> Client {
    Client::new(Config {
        timeout: Duration::from_secs(5),
        max_redirects: redirects,
        max_body: 1000,
        ..Config::default()
    })
}

#[tokio::test]
async fn json_bearer_and_content_length() {
    let (base, seen) = server(|_| {
        b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\nLocation: /x/1\r\n\r\n{\"id\":1234}"
            .to_vec()
    })
    .await;
    let r = client(0)
        .send(
            Request::new(Method::POST, format!("{base}/v1/sessions"))
                .json(&b"{\"a\":1}"[..])
                .bearer(Some("tok")),
        )
        .await
        .expect("answer");
    assert_eq!(r.status, 201);
    assert_eq!(&r.body[..], b"{\"id\":1234}");
    assert_eq!(r.header("location"), Some("/x/1"));
    let head = seen.lock().expect("seen")[0].to_ascii_lowercase();
    assert!(head.starts_with("post /v1/sessions http/1.1"), "{head}");
    assert!(head.contains("authorization: bearer tok"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
}

#[tokio::test]
async fn chunked_bodies_and_body_to_eof() {
    let (base, _) = server(|_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec()
    })
    .await;
    let r = client(0)
        .send(Request::get(format!("{base}/")))
        .await
        .expect("chunked");
    assert_eq!(&r.body[..], b"hello world");
    let (base, _) =
        server(|_| b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil eof".to_vec()).await;
    let r = client(0)
        .send(Request::get(format!("{base}/")))
        .await
        .expect("eof");
    assert_eq!(&r.body[..], b"until eof");
}

#[tokio::test]
async fn errors_are_typed_never_panics() {
    let (base, _) = server(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
            .iter()
            .chain([b'x'; 5000].iter())
            .copied()
            .collect()
    })
    .await;
    assert!(matches!(
        client(0).send(Request::get(format!("{base}/"))).await,
        Err(ClientError::TooLarge(1000))
    ));
    let (base, _) = server(|_| b"garbage\r\n\r\n".to_vec()).await;
    assert!(matches!(
        client(0).send(Request::get(format!("{base}/"))).await,
        Err(ClientError::Http(_))
    ));
    let (base, _) = server(|_| {
        std::thread::sleep(Duration::from_millis(600));
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()
    })
    .await;
    let slow = Client::new(Config {
        timeout: Duration::from_millis(200),
        ..Config::default()
    });
    assert!(matches!(
        slow.send(Request::get(format!("{base}/"))).await,
        Err(ClientError::Timeout(_))
    ));
    for bad in ["ftp://x/", "http://", "http://user:pw@host/", "no url"] {
        assert!(
            matches!(
                client(0).send(Request::get(bad)).await,
                Err(ClientError::BadUrl(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        client(0).send(Request::get("https://127.0.0.1:1/")).await,
        Err(ClientError::NoTls)
    ));
    let r = client(0).send(Request::get("http://127.0.0.1:1/")).await;
    assert!(matches!(r, Err(ClientError::Connect(..))), "{r:?}");
}

#[tokio::test]
async fn redirects_keep_method_body_and_token_only_where_allowed() {
    let (b, b_seen) =
        server(|_| b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok".to_vec()).await;
    let to_b = format!("{b}/whip/r/s");
    let (a, _) = server(move |_| {
        format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {to_b}\r\nContent-Length: 0\r\n\r\n")
            .into_bytes()
    })
    .await;
    let req = Request::new(Method::POST, format!("{a}/whip/r/s"))
        .body("application/sdp", &b"v=0"[..])
        .bearer(Some("secret"));
    // Not followed unless asked.
    assert_eq!(client(0).send(req.clone()).await.expect("307").status, 307);
    let r = client(3).send(req.clone()).await.expect("followed");
    assert_eq!((r.status, r.url), (201, format!("{b}/whip/r/s")));
    let head = b_seen.lock().expect("seen")[0].to_ascii_lowercase();
    assert!(head.starts_with("post /whip/r/s"), "{head}");
    assert!(head.contains("content-type: application/sdp"), "{head}");
    assert!(
        !head.contains("authorization"),
        "another origin gets no token by default"
    );
    let cluster = Client::new(Config {
        max_redirects: 3,
        token_across_origins: true,
        ..Config::default()
    });
    cluster.send(req).await.expect("followed");
    let head = b_seen.lock().expect("seen")[1].to_ascii_lowercase();
    assert!(head.contains("authorization: bearer secret"), "{head}");

    // A loop ends with an error, not forever.
    let (l, _) =
        server(|_| b"HTTP/1.1 307 x\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n".to_vec())
            .await;
    assert!(matches!(
        client(2).send(Request::get(format!("{l}/"))).await,
        Err(ClientError::TooManyRedirects(2))
    ));
}

#[tokio::test]
async fn https_verified_by_ca_or_accepting_any() {
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    let url = format!("https://localhost:{port}/health");
    assert!(matches!(
        client(0).send(Request::get(&url)).await,
        Err(ClientError::NoTls)
    ));
    let any = Client::new(Config {
        tls: Some(Tls::accept_any()),
        ..Config::default()
    });
    assert_eq!(
        &any.send(Request::get(&url)).await.expect("any").body[..],
        b"secure"
    );
    let dir = std::env::temp_dir().join(format!("swy-httpc-ca-{}.pem", std::process::id()));
    std::fs::write(&dir, ck.cert.pem()).expect("ca");
    let pinned = Client::new(Config {
        tls: Some(Tls::from_ca_file(&dir).expect("ca file")),
        ..Config::default()
    });
    let _ = std::fs::remove_file(&dir);
    assert_eq!(
        &pinned.send(Request::get(&url)).await.expect("ca").body[..],
        b"secure"
    );
    // The same CA does not vouch for another name.
    let other = format!("https://127.0.0.1:{port}/health");
    assert!(matches!(
        pinned.send(Request::get(&other)).await,
        Err(ClientError::Tls(..))
    ));
}

#[test]
fn blocking_client_and_error_text() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let (base, _) = rt.block_on(server(|_| {
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 33\r\n\r\n{\"error\":\"bad \\\"stream\\\" \\u00e9\"}".to_vec()
    }));
    let c = blocking::Client::new(Config::default()).expect("client");
    let r = c.send(Request::get(format!("{base}/"))).expect("answer");
    assert_eq!(r.status, 400);
    assert_eq!(r.error_text(), "bad \"stream\" é");
    drop(rt);
}

#[test]
fn urls() {
    let t = Target::parse("http://[::1]:8080/a?b=c").expect("v6");
    assert_eq!(
        (t.host.as_str(), t.port, t.path.as_str()),
        ("::1", 8080, "/a?b=c")
    );
    assert_eq!(t.authority(), "[::1]:8080");
    let t = Target::parse("https://node-b").expect("default port");
    assert_eq!((t.https, t.port, t.path.as_str()), (true, 443, "/"));
    assert_eq!(t.follow("/x").expect("path").url(), "https://node-b:443/x");
    assert!(t.follow("//evil/x").is_err());
    assert!(t.follow("x").is_err());
}
