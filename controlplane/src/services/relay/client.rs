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

/// The path of `stream`'s relays on another node: `/v1/streams/{room}/{stream}/relays`, the
/// first `/` splitting room from stream and any further `/` percent-encoded.
pub fn stream_path(stream: &str) -> String {
    match stream.split_once('/') {
        Some((room, rest)) => format!("/v1/streams/{room}/{}/relays", rest.replace('/', "%2F")),
        // Not reachable through these routes (a relay's stream always has a room).
        None => format!("/v1/streams/{stream}/relays"),
    }
}
