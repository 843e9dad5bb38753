//! How one control plane calls another (relay set-up): a JSON body, a bearer token, a
//! bounded answer, over Switchyard's one HTTP client (`switchyard-httpclient`). `https://`
//! accepts any server certificate, as the health checks do: the cluster token authenticates
//! the caller, and the operator's network or a pinned certificate the callee
//! (docs/cluster.md). Redirects are not followed: a node answering a relay request with one
//! is refused, not chased with the link keys' request.

use std::time::Duration;

use switchyard_httpclient::{Client, Config, Request, Tls};

pub use switchyard_httpclient::ClientError;

/// Largest answer read: a relay answer is a few hundred bytes, an error a line.
const MAX_ANSWER: usize = 64 * 1024;

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
    let client = Client::new(Config {
        timeout,
        max_body: MAX_ANSWER,
        tls: Some(Tls::accept_any()),
        ..Config::default()
    });
    let method = method
        .parse()
        .map_err(|_| ClientError::BadRequest(format!("method {method}")))?;
    let mut req = Request::new(method, format!("{}{path}", base.trim_end_matches('/')))
        .bearer(token)
        .header(
            switchyard_httpclient::header::ACCEPT,
            switchyard_httpclient::header::HeaderValue::from_static("application/json"),
        );
    if let Some(b) = body {
        req = req.json(b.to_vec());
    }
    let answer = client.send(req).await?;
    Ok(Answer {
        status: answer.status,
        body: answer.body.to_vec(),
    })
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
}
