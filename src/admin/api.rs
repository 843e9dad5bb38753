//! The node's REST API as the admin commands call it: a base URL, an optional bearer token,
//! JSON answers, and errors that say in one line who refused what.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use switchyard_httpclient::blocking::Client;
use switchyard_httpclient::{ClientError, Config, Method, Request, Tls};

use super::AdminError;

/// Debian's (and most distributions') bundle of the system's trusted CA certificates.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// A whole answer, connection included: the API answers from memory or the cluster store,
/// whose own calls give up after 2 s.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read: `GET /v1/sessions` of a full node (thousands of sessions at ~0.5 KiB
/// each) stays far below it.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Where the API is and how to reach it.
#[derive(Debug)]
pub struct Api {
    base: String,
    token: Option<String>,
    client: Client,
}

/// How `https://` is verified: a CA file, the system's bundle, or not at all.
#[derive(Debug, Default)]
pub struct TlsChoice {
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
}

impl Api {
    pub fn new(base: &str, token: Option<String>, tls: &TlsChoice) -> Result<Self, AdminError> {
        let https = base.starts_with("https://");
        if !https && !base.starts_with("http://") {
            return Err(AdminError::Usage(format!(
                "--api must be an http:// or https:// URL, not {base:?}"
            )));
        }
        let tls = match (https, tls) {
            (_, TlsChoice { insecure: true, .. }) => Some(Tls::accept_any()),
            (
                _,
                TlsChoice {
                    ca_file: Some(f), ..
                },
            ) => Some(ca(f)?),
            (true, _) if Path::new(SYSTEM_CA_BUNDLE).exists() => {
                Some(ca(Path::new(SYSTEM_CA_BUNDLE))?)
            }
            (true, _) => {
                return Err(AdminError::Usage(format!(
                    "no CA bundle at {SYSTEM_CA_BUNDLE} to verify {base}: pass --ca-file \
                     (or --insecure-tls for a test node)"
                )))
            }
            (false, _) => None,
        };
        let client = Client::new(Config {
            timeout: TIMEOUT,
            max_body: MAX_ANSWER,
            tls,
            user_agent: "switchyard-cli",
            ..Config::default()
        })
        .map_err(|e| AdminError::Usage(format!("starting the HTTP client: {e}")))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
            client,
        })
    }

    /// `GET path`: the JSON answer.
    pub fn get(&self, path: &str) -> Result<Value, AdminError> {
        self.send(Method::GET, path, None)
            .map(|v| v.unwrap_or(Value::Null))
    }

    /// `method path` with an optional JSON body: the JSON answer, None for an empty one
    /// (204).
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, AdminError> {
        let mut req = Request::new(method.clone(), format!("{}{path}", self.base))
            .bearer(self.token.as_deref());
        if let Some(b) = body {
            req = req.json(b.to_string());
        }
        let answer = self.client.send(req).map_err(|e| match e {
            ClientError::BadUrl(_) | ClientError::NoTls => {
                AdminError::Usage(format!("--api {}: {e}", self.base))
            }
            e => AdminError::Unreachable {
                api: self.base.clone(),
                error: e.to_string(),
            },
        })?;
        if !answer.is_success() {
            let hint = match answer.status {
                401 if self.token.is_none() => {
                    " (auth is on: pass a cluster token with --token or SWITCHYARD_TOKEN)"
                }
                401 | 403 => " (check --token)",
                _ => "",
            };
            return Err(AdminError::Refused {
                request: format!("{method} {path}"),
                status: answer.status,
                message: format!("{}{hint}", one_line(&answer.error_text())),
            });
        }
        if answer.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&answer.body)
            .map(Some)
            .map_err(|e| AdminError::Answer(format!("{method} {path}: not JSON: {e}")))
    }
}

fn ca(file: &Path) -> Result<Tls, AdminError> {
    Tls::from_ca_file(file).map_err(|e| AdminError::Usage(format!("--ca-file: {e}")))
}

/// Newlines and tabs out of a message that must stay on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
