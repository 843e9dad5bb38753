//! The one HTTP/1.1 client of Switchyard: what a control plane uses to call another (relay
//! set-up, health checks, room events) and what the bench uses to drive a node.
//!
//! Built on hyper's client connection, which is already in the tree through axum: the
//! parsing of status lines, headers, `Content-Length`, chunked bodies and connection close is
//! hyper's, not ours (the three hand-written clients this replaces each had their own, none
//! with chunked bodies). Why not reqwest: it would add a second HTTP stack, its own TLS
//! choices and connection pool for a few calls a second; docs/architecture.md, "HTTP
//! client", says more. One connection per request: these calls are rare, and a fresh
//! connection never meets a half-closed pooled one.
//!
//! What it does for every caller, so none repeats it:
//! - `http://` and `https://` (rustls; [`Tls`] says how the server is verified),
//! - a JSON or other body, a bearer token, extra headers,
//! - a deadline for the whole exchange, redirects included,
//! - 307/308 followed with the same method and body, 301/302/303 as `GET` (at most
//!   [`Config::max_redirects`]); the bearer token follows only to the same origin unless
//!   [`Config::token_across_origins`] says otherwise,
//! - an answer body of at most [`Config::max_body`] bytes.
//!
//! [`blocking::Client`] wraps it for synchronous callers (the bench).

pub mod blocking;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

pub use hyper::header;
pub use hyper::Method;
pub use tls::{accept_any_server, Tls};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("not an http:// or https:// URL: {0}")]
    BadUrl(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("answer body larger than {0} bytes")]
    TooLarge(usize),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("more than {0} redirects")]
    TooManyRedirects(u8),
    #[error("redirect without a usable Location")]
    BadRedirect,
    #[error("https:// needs a TLS configuration (a CA file, or accepting any server)")]
    NoTls,
}

/// How a [`Client`] behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Deadline for one [`Client::send`], redirects included.
    pub timeout: Duration,
    /// Largest answer body read; larger is [`ClientError::TooLarge`].
    pub max_body: usize,
    /// Redirects followed before [`ClientError::TooManyRedirects`]; 0 returns them as answers.
    pub max_redirects: u8,
    /// Send the bearer token after a redirect to another origin (scheme, host, port). Right
    /// for a cluster whose nodes share one key (a WHIP 307 to the room's node), wrong for
    /// anything else: a redirect must not hand the token to whoever it names.
    pub token_across_origins: bool,
    /// How `https://` servers are verified; `None` refuses `https://` URLs.
    pub tls: Option<Tls>,
    /// `User-Agent` sent with every request.
    pub user_agent: &'static str,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_body: 1024 * 1024,
            max_redirects: 0,
            token_across_origins: false,
            tls: None,
            user_agent: "switchyard",
        }
    }
}

/// One request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<(Bytes, HeaderValue)>,
    pub bearer: Option<String>,
}

impl Request {
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            bearer: None,
        }
    }

    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::GET, url)
    }

    /// A body of `content_type` (e.g. `application/sdp`).
    pub fn body(mut self, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        self.body = Some((body.into(), HeaderValue::from_static(content_type)));
        self
    }

    /// A JSON body.
    pub fn json(self, body: impl Into<Bytes>) -> Self {
        self.body("application/json", body)
    }

    pub fn bearer(mut self, token: Option<&str>) -> Self {
        self.bearer = token.map(str::to_owned);
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// A status, the headers and the body of an answer.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    /// The URL that answered (after redirects).
    pub url: String,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A header as text, if present and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The `error` field of a JSON error body, else the start of the body as text: what a
    /// Switchyard node says when it refuses.
    pub fn error_text(&self) -> String {
        error_field(&self.body).unwrap_or_else(|| {
            String::from_utf8_lossy(&self.body)
                .chars()
                .take(200)
                .collect()
        })
    }
}

/// `{"error": "..."}` without a JSON dependency: the value of the first `"error"` string.
fn error_field(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find("\"error\"")? + 7;
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// A client: cheap to clone, no connection kept between requests.
#[derive(Clone, Debug)]
pub struct Client {
    config: Arc<Config>,
}

/// Where a URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        let auth = uri.authority().ok_or_else(bad)?;
        if auth.as_str().contains('@') {
            return Err(bad()); // credentials in URLs would end up in logs
        }
        let host = auth.host().trim_matches(['[', ']']).to_owned();
        if host.is_empty() {
            return Err(bad());
        }
        let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(Self {
            https,
            host,
            port,
            path,
        })
    }

    fn origin(&self) -> (bool, &str, u16) {
        (self.https, &self.host, self.port)
    }

    /// `host:port` as a Host header and a connect address (IPv6 in brackets).
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.authority(),
            self.path
        )
    }

    /// Resolve a `Location` against this URL (absolute, or an absolute path).
    fn follow(&self, location: &str) -> Result<Self, ClientError> {
        if location.starts_with("http://") || location.starts_with("https://") {
            return Self::parse(location).map_err(|_| ClientError::BadRedirect);
        }
        if location.starts_with('/') && !location.starts_with("//") {
            return Ok(Self {
                path: location.to_owned(),
                ..self.clone()
            });
        }
        Err(ClientError::BadRedirect)
    }
}

impl Client {
    pub fn new(config: Config) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Send `req`, following redirects as configured, within the configured deadline.
    pub async fn send(&self, req: Request) -> Result<Response, ClientError> {
        let timeout = self.config.timeout;
        tokio::time::timeout(timeout, self.send_inner(req))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn send_inner(&self, mut req: Request) -> Result<Response, ClientError> {
        let first = Target::parse(&req.url)?;
        let mut target = first.clone();
        let mut redirects = 0u8;
        loop {
            let same_origin = target.origin() == first.origin();
            let token = if same_origin || self.config.token_across_origins {
                req.bearer.as_deref()
            } else {
                None
            };
            let answer = self.once(&target, &req, token).await?;
            let Some(location) = answer.header("location").filter(|_| {
                matches!(answer.status, 301 | 302 | 303 | 307 | 308)
                    && self.config.max_redirects > 0
            }) else {
                return Ok(answer);
            };
            redirects += 1;
            if redirects > self.config.max_redirects {
                return Err(ClientError::TooManyRedirects(self.config.max_redirects));
            }
            let next = target.follow(location)?;
            if matches!(answer.status, 301..=303) && req.method != Method::HEAD {
                req.method = Method::GET;
                req.body = None;
            }
            target = next;
        }
    }

    async fn once(
        &self,
        target: &Target,
        req: &Request,
        token: Option<&str>,
    ) -> Result<Response, ClientError> {
        let authority = target.authority();
        if target.https && self.config.tls.is_none() {
            return Err(ClientError::NoTls);
        }
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| ClientError::Connect(authority.clone(), e))?;
        let _ = tcp.set_nodelay(true);
        let request = self.build(target, req, token)?;
        if !target.https {
            return self.exchange(TokioIo::new(tcp), request, target).await;
        }
        let tls = self.config.tls.as_ref().ok_or(ClientError::NoTls)?;
        let name = ServerName::try_from(target.host.clone())
            .map_err(|_| ClientError::BadUrl(target.url()))?;
        let stream = tokio_rustls::TlsConnector::from(tls.client_config())
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Tls(authority, e))?;
        self.exchange(TokioIo::new(stream), request, target).await
    }

    fn build(
        &self,
        target: &Target,
        req: &Request,
        token: Option<&str>,
    ) -> Result<hyper::Request<Full<Bytes>>, ClientError> {
        let mut b = hyper::Request::builder()
            .method(req.method.clone())
            .uri(target.path.as_str())
            .header(hyper::header::HOST, target.authority())
            .header(hyper::header::USER_AGENT, self.config.user_agent)
            .header(hyper::header::CONNECTION, "close");
        if let Some(t) = token {
            b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (name, value) in &req.headers {
            b = b.header(name, value);
        }
        let body = match &req.body {
            Some((bytes, content_type)) => {
                b = b.header(hyper::header::CONTENT_TYPE, content_type);
                bytes.clone()
            }
            None => Bytes::new(),
        };
        b.body(Full::new(body))
            .map_err(|e| ClientError::BadRequest(e.to_string()))
    }

    async fn exchange<S>(
        &self,
        io: TokioIo<S>,
        request: hyper::Request<Full<Bytes>>,
        target: &Target,
    ) -> Result<Response, ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        // The connection task ends when the answer is read (Connection: close).
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let answer = sender.send_request(request).await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                driver.abort();
                return Err(e.into());
            }
        };
        let status = answer.status().as_u16();
        let (parts, body) = answer.into_parts();
        let max = self.config.max_body;
        let body = Limited::new(body, max).collect().await;
        driver.abort();
        let body = body
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(h) => ClientError::Http(*h),
                Err(_) => ClientError::TooLarge(max),
            })?
            .to_bytes();
        Ok(Response {
            status,
            headers: parts.headers,
            body,
            url: target.url(),
        })
    }
}

/// The rustls crate this client speaks, for callers that build their own [`Tls`].
pub use tokio_rustls::rustls as tls_rustls;

/// A rustls client config (re-exported for callers' signatures).
pub type RustlsConfig = rustls::ClientConfig;

#[cfg(test)]
mod tests;
