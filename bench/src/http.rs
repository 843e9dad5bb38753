//! The bench's view of the node's control API over HTTP: Switchyard's one HTTP client
//! (`switchyard-httpclient`, blocking), with the bench's options: a bearer token, HTTPS
//! verified by a CA file (or not at all, when asked), and 307s followed (a WHIP/WHEP POST to
//! a node that does not host the room is redirected to the one that does; the token goes
//! along, since a cluster's nodes share one key).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchyard_httpclient::blocking;
use switchyard_httpclient::{ClientError, Config, Request, Tls};

/// One request's deadline, redirects included; the control API answers in milliseconds.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read; control API answers are a few hundred bytes, `/metrics` a few KiB.
const MAX_RESPONSE: usize = 4 << 20;
/// Redirects followed: one 307 to the room's node, with room to spare.
const MAX_REDIRECTS: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("HTTP client: {0}")]
    Setup(String),
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
}

/// How the bench talks to a node's API (`--token`, `--ca`, `--insecure`).
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// Sent as `Authorization: Bearer` (a cluster token for `/v1/sessions`).
    pub token: Option<String>,
    /// PEM CA certificate(s) `https://` nodes are verified against.
    pub ca: Option<PathBuf>,
    /// `https://` without verifying the node's certificate (self-signed test nodes).
    pub insecure: bool,
}

/// A status, the `Location` (WHIP/WHEP resources) and the body of a 2xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// The bench's HTTP client; shared by every thread of a run.
#[derive(Debug)]
pub struct Client {
    inner: blocking::Client,
    token: Option<String>,
}

impl Client {
    pub fn new(opts: &HttpOptions) -> Result<Arc<Self>, HttpError> {
        let tls = match (&opts.ca, opts.insecure) {
            (Some(ca), _) => Some(Tls::from_ca_file(ca).map_err(HttpError::Setup)?),
            (None, true) => Some(Tls::accept_any()),
            (None, false) => None,
        };
        let inner = blocking::Client::new(Config {
            timeout: TIMEOUT,
            max_body: MAX_RESPONSE,
            max_redirects: MAX_REDIRECTS,
            token_across_origins: true,
            tls,
            user_agent: "switchyard-bench",
        })
        .map_err(|e| HttpError::Setup(e.to_string()))?;
        Ok(Arc::new(Self {
            inner,
            token: opts.token.clone(),
        }))
    }

    /// Sends one request and returns the answer if its status is 2xx; other statuses become
    /// [`HttpError::Status`] carrying the `{"error": ...}` message when the body has one.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        json_body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        self.request_typed(method, url, json_body.map(|b| ("application/json", b)))
    }

    /// [`Client::request`] with a body of any `(Content-Type, bytes)`, e.g.
    /// `application/sdp` for WHIP/WHEP offers.
    pub fn request_typed(
        &self,
        method: &str,
        url: &str,
        body: Option<(&'static str, &[u8])>,
    ) -> Result<Response, HttpError> {
        let method = method
            .parse()
            .map_err(|_| HttpError::Setup(format!("bad method {method}")))?;
        let mut req = Request::new(method, url).bearer(self.token.as_deref());
        if let Some((content_type, b)) = body {
            req = req.body(content_type, b.to_vec());
        }
        let answer = self.inner.send(req).map_err(|e| match e {
            ClientError::NoTls => HttpError::Setup(format!(
                "{url}: https:// needs --ca FILE (the node's CA) or --insecure"
            )),
            e => HttpError::Client(e),
        })?;
        if !answer.is_success() {
            return Err(HttpError::Status {
                status: answer.status,
                message: answer.error_text(),
            });
        }
        Ok(Response {
            status: answer.status,
            location: answer.header("location").map(str::to_owned),
            body: answer.body.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A server answering `answers` in turn, one connection each; returns the requests.
    fn serve(answers: Vec<String>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for a in answers {
                let (mut s, _) = listener.accept().expect("accept");
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                // Read the whole request (head and declared body) before answering.
                loop {
                    let n = s.read(&mut buf).expect("read");
                    assert!(n > 0, "client closed early");
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                s.write_all(a.as_bytes()).expect("write");
                seen.push(String::from_utf8_lossy(&req).into_owned());
            }
            seen
        });
        (base, t)
    }

    #[test]
    fn token_json_and_errors_with_the_nodes_message() {
        let (base, server) = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".into(),
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 41\r\n\r\n{\"error\":\"this endpoint needs a cluster\"}"
                .into(),
        ]);
        let c = Client::new(&HttpOptions {
            token: Some("t0k".into()),
            ..HttpOptions::default()
        })
        .expect("client");
        let r = c
            .request("POST", &format!("{base}/v1/x"), Some(b"{\"k\":1}"))
            .expect("request");
        assert_eq!(r.body, b"{}");
        match c.request("GET", &format!("{base}/v1/y"), None) {
            Err(HttpError::Status { status, message }) => {
                assert_eq!(
                    (status, message.as_str()),
                    (403, "this endpoint needs a cluster")
                );
            }
            other => panic!("{other:?}"),
        }
        let seen = server.join().expect("server");
        assert!(
            seen[0].starts_with("POST /v1/x HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        let lower = seen[0].to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer t0k"), "{lower}");
        assert!(lower.contains("content-length: 7"), "{lower}");
    }

    #[test]
    fn whip_307_is_followed_with_the_offer_and_the_token() {
        let (b, b_server) = serve(vec![
            "HTTP/1.1 201 Created\r\nLocation: /whip/r/s/1-ab\r\nContent-Length: 3\r\n\r\nv=0"
                .into(),
        ]);
        let (a, a_server) = serve(vec![format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {b}/whip/r/s\r\nContent-Length: 0\r\n\r\n"
        )]);
        let c = Client::new(&HttpOptions {
            token: Some("t".into()),
            ..HttpOptions::default()
        })
        .expect("client");
        let r = c
            .request_typed(
                "POST",
                &format!("{a}/whip/r/s"),
                Some(("application/sdp", b"offer")),
            )
            .expect("followed");
        assert_eq!(r.status, 201);
        assert_eq!(r.location.as_deref(), Some("/whip/r/s/1-ab"));
        a_server.join().expect("a");
        let seen = b_server.join().expect("b")[0].to_ascii_lowercase();
        assert!(seen.starts_with("post /whip/r/s "), "{seen}");
        assert!(seen.ends_with("offer"), "{seen}");
        assert!(seen.contains("authorization: bearer t"), "{seen}");
    }

    #[test]
    fn https_without_a_ca_says_what_to_pass() {
        let c = Client::new(&HttpOptions::default()).expect("client");
        match c.request("GET", "https://127.0.0.1:1/health", None) {
            Err(HttpError::Setup(m)) => assert!(m.contains("--ca"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
