//! One HTTP request from this control plane to another node or a hook, for its status: the
//! health checks, room event deliveries, and the URL checks relays make. Over
//! `switchyard-httpclient`; `https://` accepts any server certificate (a liveness check).

use std::time::Duration;

use switchyard_httpclient::{Client, Config, Request, Tls};

/// What a node's `GET /health` said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// 200: takes rooms.
    Up,
    /// Answered something else (503 while overloaded or without its data plane): alive,
    /// takes no rooms.
    Down,
    /// No answer at all within the timeout (refused, unreachable, hung): maybe dead.
    Silent,
}

/// `GET {base}/health` within `timeout`. `http://` or `https://`; the latter accepts any
/// server certificate (a liveness check, see `switchyard_httpclient::accept_any_server`).
pub async fn probe(base: &str, timeout: Duration) -> Health {
    match http_status(base, "GET", "/health", None, timeout).await {
        Some(200) => Health::Up,
        Some(_) => Health::Down,
        None => Health::Silent,
    }
}

/// Whether a TCP connection to the server of `base` is refused (the host answered that
/// nothing listens there) within `timeout`. A timeout or an unreachable host is not a
/// refusal: it says nothing about the process, only about the path.
pub async fn refused(base: &str, timeout: Duration) -> bool {
    let Some((_, hostport)) = authority(base) else {
        return false;
    };
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(hostport.as_str())).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

/// Send one request (`body` as JSON) to the server of `base` and read the status code of the
/// answer; None on any failure or after `timeout`. Over TLS any certificate is accepted.
/// Redirects are not followed, and the answer body is read only up to a few KiB.
pub async fn http_status(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Option<u16> {
    let client = Client::new(Config {
        timeout,
        max_body: 16 * 1024,
        tls: Some(Tls::accept_any()),
        ..Config::default()
    });
    let mut req = Request::new(
        method.parse().ok()?,
        format!("{}{path}", base.trim_end_matches('/')),
    );
    if let Some(b) = body {
        req = req.json(b.to_vec());
    }
    match client.send(req).await {
        Ok(answer) => Some(answer.status),
        // An answer too long to read still said its status; anything else did not answer.
        Err(_) => None,
    }
}

/// Whether a URL is `https://`, and its `host:port` (port 80 or 443 when absent).
pub fn authority(url: &str) -> Option<(bool, String)> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://")?),
    };
    let hostport = rest.split('/').next().filter(|h| !h.is_empty())?;
    let has_port = match hostport.rfind(']') {
        Some(end) => hostport[end..].contains(':'),
        None => hostport.contains(':'),
    };
    let port = if tls { 443 } else { 80 };
    Some((
        tls,
        if has_port {
            hostport.to_owned()
        } else {
            format!("{hostport}:{port}")
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_refuses_and_a_listening_one_does_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        assert!(
            !refused(&url, Duration::from_millis(500)).await,
            "listening"
        );
        drop(listener);
        assert!(refused(&url, Duration::from_millis(500)).await, "closed");
        assert!(
            !refused("ftp://x", Duration::from_millis(500)).await,
            "not a node URL"
        );
    }

    #[test]
    fn urls() {
        let a = authority;
        assert_eq!(
            a("http://10.0.0.2:8080"),
            Some((false, "10.0.0.2:8080".into()))
        );
        assert_eq!(a("http://node/x"), Some((false, "node:80".into())));
        assert_eq!(a("http://[::1]:9"), Some((false, "[::1]:9".into())));
        assert_eq!(a("http://[::1]"), Some((false, "[::1]:80".into())));
        assert_eq!(a("https://node"), Some((true, "node:443".into())));
        assert_eq!(a("https://[::1]:8443"), Some((true, "[::1]:8443".into())));
        assert_eq!(a("ftp://node"), None);
        assert_eq!(a("http://"), None);
    }
}
