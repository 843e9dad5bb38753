//! The HTTP/1.1 client one control plane uses to call another (relay set-up): one request
//! per connection (`Connection: close`), a JSON body, a bearer token, a bounded answer.
//! `https://` accepts any server certificate, as the health checks do
//! (`tls::probe_client_config`): the cluster token authenticates the caller, and the
//! operator's network or a pinned certificate the callee (docs/cluster.md).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::cluster::health::authority;

/// Largest answer read: a relay answer is a few hundred bytes, an error a line.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("not an http:// or https:// URL: {0}")]
    BadUrl(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("malformed HTTP answer")]
    Malformed,
}

/// A status code and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    /// The `error` field of a JSON error body, or the body as text.
    pub fn error_text(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(200)
                    .collect()
            })
    }
}

/// `method {base}{path}` with `body` as JSON and `token` as bearer.
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let (tls, host) = authority(base).ok_or_else(|| ClientError::BadUrl(base.to_owned()))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: switchyard\r\nAccept: application/json\r\n"
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    let exchange = async {
        let tcp = TcpStream::connect(host.as_str()).await?;
        if !tls {
            return exchange(tcp, &req).await;
        }
        static CLIENT: std::sync::OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> =
            std::sync::OnceLock::new();
        let config = CLIENT.get_or_init(crate::tls::probe_client_config).clone();
        let name = host.rfind(':').map_or(host.as_str(), |c| &host[..c]);
        let name = ServerName::try_from(name.trim_matches(['[', ']']).to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        exchange(stream, &req).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

async fn exchange<S>(mut s: S, req: &[u8]) -> Result<Answer, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req).await?;
    let mut raw = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        // A TLS peer that closes without close_notify ends the read with an error after the
        // whole answer arrived; what was read still counts.
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            Err(_) if !raw.is_empty() => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        if raw.len() + n > MAX_ANSWER {
            return Err(ClientError::Malformed);
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    parse(&raw)
}

/// Status and body of a complete HTTP/1.1 answer (Content-Length, chunked, or to EOF).
fn parse(raw: &[u8]) -> Result<Answer, ClientError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(ClientError::Malformed)?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| ClientError::Malformed)?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| {
            let mut p = l.split_ascii_whitespace();
            p.next().filter(|v| v.starts_with("HTTP/1."))?;
            p.next()?.parse().ok()
        })
        .ok_or(ClientError::Malformed)?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| ClientError::Malformed)?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).ok_or(ClientError::Malformed)?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Answer { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(ClientError::Malformed)?;
        let size = std::str::from_utf8(&rest[..eol]).map_err(|_| ClientError::Malformed)?;
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| ClientError::Malformed)?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).ok_or(ClientError::Malformed)?);
        rest = rest.get(size + 2..).ok_or(ClientError::Malformed)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn posts_json_with_a_token_over_https_and_http() {
        use axum::http::HeaderMap;
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("rcgen");
        let dir = std::env::temp_dir().join(format!("swy-relay-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).expect("cert");
        std::fs::write(&key, ck.key_pair.serialize_pem()).expect("key");
        let config = crate::tls::server_config(&cert, &key).expect("server config");
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
        let listener = crate::tls::TlsListener::new(tcp, config).expect("listener");
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

    #[test]
    fn answers_parse() {
        let a = parse(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}trailing").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (201, &b"{}"[..]));
        let a = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(a.body, b"abcde");
        let a = parse(b"HTTP/1.1 409 Conflict\r\n\r\n{\"error\":\"loop\"}").unwrap();
        assert_eq!((a.status, a.error_text()), (409, "loop".to_owned()));
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
