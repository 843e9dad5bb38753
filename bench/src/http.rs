//! A minimal blocking HTTP/1.1 client for the node's control API: one request per
//! connection (`Connection: close`), bodies framed by Content-Length or by EOF. No chunked
//! encoding, no TLS, no redirects: the control API on loopback needs none of them, and this
//! keeps an async runtime out of the load generator.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Connect and read timeout for one request; the control API answers in milliseconds.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response accepted; control API answers are a few hundred bytes.
const MAX_RESPONSE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported URL {0:?} (want http://host:port/path)")]
    Url(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
}

/// A parsed response: status, `Location` (WHIP/WHEP resources) and body; other headers
/// are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// Splits `http://host:port/path` into (`host:port`, `/path`).
pub fn split_url(url: &str) -> Result<(String, String), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(url.to_owned()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(HttpError::Url(url.to_owned()));
    }
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_owned()))
}

/// Sends one request and returns the response if its status is 2xx; other statuses become
/// [`HttpError::Status`] carrying the `{"error": ...}` message when the body has one.
pub fn request(method: &str, url: &str, json_body: Option<&[u8]>) -> Result<Response, HttpError> {
    request_typed(method, url, json_body.map(|b| ("application/json", b)))
}

/// [`request`] with a body of any `(Content-Type, bytes)`, e.g. `application/sdp` for
/// WHIP/WHEP offers.
pub fn request_typed(
    method: &str,
    url: &str,
    body: Option<(&str, &[u8])>,
) -> Result<Response, HttpError> {
    let (host, path) = split_url(url)?;
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| HttpError::Url(url.to_owned()))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json, application/sdp\r\n"
    );
    if let Some((content_type, _)) = body {
        req.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    let body = body.map(|(_, b)| b).unwrap_or_default();
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    check_status(parse_response(&raw)?)
}

/// Parses a complete response (the connection has been read to EOF).
pub fn parse_response(raw: &[u8]) -> Result<Response, HttpError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpError::Malformed("no end of headers"))?;
    let head =
        std::str::from_utf8(&raw[..end]).map_err(|_| HttpError::Malformed("non-UTF-8 headers"))?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("bad status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed("bad status code"))?;
    let mut content_length = None;
    let mut location = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed("bad header line"));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .trim()
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length"))?;
            content_length = Some(n);
        } else if name.trim().eq_ignore_ascii_case("location") {
            location = Some(value.trim().to_owned());
        } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Malformed("chunked bodies are not supported"));
        }
    }
    let body = match content_length {
        Some(n) => rest
            .get(..n)
            .ok_or(HttpError::Malformed("body shorter than Content-Length"))?,
        None => rest,
    };
    Ok(Response {
        status,
        location,
        body: body.to_vec(),
    })
}

/// Turns a non-2xx response into an error with the server's message.
pub fn check_status(resp: Response) -> Result<Response, HttpError> {
    if (200..300).contains(&resp.status) {
        return Ok(resp);
    }
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let message = match serde_json::from_slice::<ErrorBody>(&resp.body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(&resp.body).into_owned(),
    };
    Err(HttpError::Status {
        status: resp.status,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_body() {
        let raw = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nlocation: /whep/r/s/7\r\nContent-Length: 7\r\n\r\n{\"a\":1}trailing";
        let r = parse_response(raw).expect("valid");
        assert_eq!(r.status, 201);
        assert_eq!(r.location.as_deref(), Some("/whep/r/s/7"));
        assert_eq!(r.body, b"{\"a\":1}");
    }

    #[test]
    fn body_to_eof_without_length() {
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nhello").expect("valid");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
    }

    #[test]
    fn malformed_responses() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"SIP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(
                matches!(parse_response(raw), Err(HttpError::Malformed(_))),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn error_status_carries_json_message() {
        let raw =
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 25\r\n\r\n{\"error\":\"no such thing\"}";
        match check_status(parse_response(raw).expect("valid")) {
            Err(HttpError::Status { status, message }) => {
                assert_eq!((status, message.as_str()), (404, "no such thing"))
            }
            other => panic!("unexpected {other:?}"),
        }
        let raw = b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nboom";
        assert!(matches!(
            check_status(parse_response(raw).expect("valid")),
            Err(HttpError::Status { status: 500, message }) if message == "boom"
        ));
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/v1/sessions").expect("ok"),
            ("127.0.0.1:8080".into(), "/v1/sessions".into())
        );
        assert_eq!(
            split_url("http://localhost").expect("ok"),
            ("localhost:80".into(), "/".into())
        );
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn round_trip_against_a_loopback_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            // Read the whole request first: closing with unread bytes would reset the
            // connection before the client reads the answer.
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"{\"k\":1}") {
                let n = s.read(&mut buf).expect("read");
                assert!(n > 0, "client closed early");
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8_lossy(&req).into_owned();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                .expect("write");
            req
        });
        let r =
            request("POST", &format!("http://{addr}/v1/x"), Some(b"{\"k\":1}")).expect("request");
        assert_eq!(r.body, b"{}");
        let req = server.join().expect("server");
        assert!(req.starts_with("POST /v1/x HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Content-Length: 7\r\n"));
    }
}
