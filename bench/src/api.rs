//! The node's control API, as far as the bench uses it: health, create and delete sessions.

use std::net::SocketAddr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::crypto::Profile;
use std::sync::Arc;

use crate::http::{Client, HttpError, HttpOptions};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("unexpected JSON from {what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("session {id}: {field} is not valid base64")]
    Key { id: u64, field: &'static str },
    #[error("{what}: answer without a Location header or a UTF-8 SDP body")]
    Answer { what: &'static str },
}

/// What a WHIP or WHEP POST created: the resource to DELETE and the SDP answer.
#[derive(Debug, Clone)]
pub struct WebrtcSession {
    /// Absolute URL of the session resource (`…/whip/{room}/{stream}/{id}-{secret}`): the
    /// only URL that ends the session.
    pub location: String,
    pub answer: String,
}

/// `GET /health`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: String,
    pub dataplane_pid: Option<i32>,
    pub workers: Option<u32>,
}

/// Body of `POST /v1/sessions`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRequest {
    pub role: &'static str,
    pub stream: String,
    /// `None` only for a relay-in: the node latches the relay's source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
    pub profile: Profile,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<u32>,
    /// Base64 key || salt the node unprotects with (a relay-out's is its relay-in's
    /// `localKey`); the node generates one when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_key: Option<String>,
    /// Base64 key || salt the node protects with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_key: Option<String>,
    /// A publisher's SSRCs in track order (`--audio`: video, then audio); learned from
    /// the first packets when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssrcs: Option<Vec<u32>>,
    /// A publisher's RTP clock rates, one per `ssrcs` entry (90 kHz video, 48 kHz audio):
    /// what lets the node treat its video as video (`media.pad_video_to`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_rates: Option<Vec<u32>>,
}

/// The 201 answer to `POST /v1/sessions` (fields the bench reads).
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub id: u64,
    pub worker: u32,
    pub media_address: SocketAddr,
    /// Base64 master key || salt the bench protects with.
    pub remote_key: String,
    /// Base64 master key || salt the node protects with (the bench unprotects with it).
    pub local_key: String,
    pub ssrcs: Vec<u32>,
}

impl std::fmt::Debug for Session {
    // Keys never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("worker", &self.worker)
            .field("media_address", &self.media_address)
            .field("ssrcs", &self.ssrcs)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn remote_key_bytes(&self) -> Result<Vec<u8>, ApiError> {
        decode_key(self.id, "remoteKey", &self.remote_key)
    }

    pub fn local_key_bytes(&self) -> Result<Vec<u8>, ApiError> {
        decode_key(self.id, "localKey", &self.local_key)
    }

    /// SSRC of track 0, the one the bench sends and expects.
    pub fn ssrc(&self) -> u32 {
        self.ssrcs.first().copied().unwrap_or(0)
    }
}

fn decode_key(id: u64, field: &'static str, b64: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| ApiError::Key { id, field })
}

/// A node's control API base URL, e.g. `http://127.0.0.1:8080`, and the client that speaks
/// to it.
#[derive(Debug, Clone)]
pub struct Node {
    base: String,
    http: Arc<Client>,
}

impl Node {
    pub fn new(api: &str, http: &HttpOptions) -> Result<Node, ApiError> {
        Ok(Node {
            base: api.trim_end_matches('/').to_owned(),
            http: Client::new(http)?,
        })
    }

    /// Another node spoken to by the same client.
    pub fn sibling(&self, api: &str) -> Node {
        Node {
            base: api.trim_end_matches('/').to_owned(),
            http: self.http.clone(),
        }
    }

    pub fn health(&self) -> Result<Health, ApiError> {
        let r = self
            .http
            .request("GET", &format!("{}/health", self.base), None)?;
        serde_json::from_slice(&r.body).map_err(|source| ApiError::Json {
            what: "/health",
            source,
        })
    }

    pub fn create_session(&self, req: &SessionRequest) -> Result<Session, ApiError> {
        let body = serde_json::to_vec(req).map_err(|source| ApiError::Json {
            what: "session request",
            source,
        })?;
        let r = self
            .http
            .request("POST", &format!("{}/v1/sessions", self.base), Some(&body))?;
        serde_json::from_slice(&r.body).map_err(|source| ApiError::Json {
            what: "POST /v1/sessions",
            source,
        })
    }

    /// `POST /{kind}/{room}/{stream}` with an SDP offer; `kind` is `"whip"` or `"whep"`.
    pub fn webrtc_session(
        &self,
        kind: &'static str,
        room: &str,
        stream: &str,
        offer: &str,
    ) -> Result<WebrtcSession, ApiError> {
        let url = format!("{}/{kind}/{room}/{stream}", self.base);
        let r =
            self.http
                .request_typed("POST", &url, Some(("application/sdp", offer.as_bytes())))?;
        let bad = ApiError::Answer { what: kind };
        let location = r.location.ok_or(ApiError::Answer { what: kind })?;
        let answer = String::from_utf8(r.body).map_err(|_| bad)?;
        Ok(WebrtcSession {
            location: self.absolute(&location),
            answer,
        })
    }

    /// `DELETE` a WHIP/WHEP session by its absolute Location URL.
    pub fn delete_url(&self, url: &str) -> Result<(), ApiError> {
        self.http.request("DELETE", url, None)?;
        Ok(())
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base)
        }
    }

    /// `switchyard_{name}` in `/metrics`, summed over its samples (per-worker labels);
    /// `None` when the node does not export it.
    pub fn metric(&self, name: &str) -> Result<Option<f64>, ApiError> {
        let r = self
            .http
            .request("GET", &format!("{}/metrics", self.base), None)?;
        let text = String::from_utf8_lossy(&r.body);
        Ok(metric_value(&text, name))
    }

    /// `POST /v1/sessions/{id}/layers`: subscriber `id` receives simulcast layers up to rank
    /// `max_layer` (0: the lowest).
    pub fn cap_layers(&self, id: u64, max_layer: u8) -> Result<(), ApiError> {
        let body = format!("{{\"maxLayer\":{max_layer}}}");
        self.http.request(
            "POST",
            &format!("{}/v1/sessions/{id}/layers", self.base),
            Some(body.as_bytes()),
        )?;
        Ok(())
    }

    pub fn delete_session(&self, id: u64) -> Result<(), ApiError> {
        self.http
            .request("DELETE", &format!("{}/v1/sessions/{id}", self.base), None)?;
        Ok(())
    }
}

/// The sum of every sample of `switchyard_{name}` (per-worker labels included); `None` when
/// there is none.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    let full = format!("switchyard_{name}");
    let mut sum = None;
    for l in text.lines() {
        let Some((k, v)) = l.rsplit_once(' ') else {
            continue;
        };
        let base = k.split_once('{').map_or(k, |(b, _)| b);
        if base == full {
            if let Ok(v) = v.trim().parse::<f64>() {
                *sum.get_or_insert(0.0) += v;
            }
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape() {
        let req = SessionRequest {
            role: "subscriber",
            stream: "bench/s0".into(),
            remote: Some("127.0.0.1:40000".parse().expect("addr")),
            profile: Profile::AeadAes128Gcm,
            worker: None,
            remote_key: None,
            local_key: None,
            ssrcs: None,
            clock_rates: None,
        };
        let v: serde_json::Value = serde_json::to_value(&req).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"role":"subscriber","stream":"bench/s0",
                "remote":"127.0.0.1:40000","profile":"AEAD_AES_128_GCM"})
        );
    }

    #[test]
    fn metric_lines() {
        let text = "# HELP switchyard_x_total X.\nswitchyard_x_total 12\n\
                    switchyard_x_total_more 3\nswitchyard_drops_total{worker=\"0\",reason=\"a\"} 1\n\
                    switchyard_drops_total{worker=\"1\",reason=\"a\"} 2\n";
        assert_eq!(metric_value(text, "x_total"), Some(12.0));
        assert_eq!(metric_value(text, "drops_total"), Some(3.0));
        assert_eq!(metric_value(text, "y_total"), None);
    }

    #[test]
    fn relay_request_shape() {
        let req = SessionRequest {
            role: "relay-out",
            stream: "bench/s0".into(),
            remote: None,
            profile: Profile::AeadAes128Gcm,
            worker: Some(0),
            remote_key: Some("AAEC".into()),
            local_key: Some("AwQF".into()),
            ssrcs: None,
            clock_rates: None,
        };
        let v: serde_json::Value = serde_json::to_value(&req).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"role":"relay-out","stream":"bench/s0","worker":0,
                "profile":"AEAD_AES_128_GCM","remoteKey":"AAEC","localKey":"AwQF"})
        );
    }

    #[test]
    fn session_answer_parses() {
        let body = r#"{"id":3,"worker":1,"mediaAddress":"127.0.0.1:10001","stream":"bench/s0",
            "role":"publisher","profile":"AEAD_AES_128_GCM","remote":"127.0.0.1:40000",
            "remoteKey":"AAECAw==","localKey":"BAU=","ssrcs":[1,2,3,4]}"#;
        let s: Session = serde_json::from_str(body).expect("parses");
        assert_eq!(s.remote_key_bytes().expect("b64"), vec![0, 1, 2, 3]);
        assert_eq!(s.local_key_bytes().expect("b64"), vec![4, 5]);
        assert_eq!((s.id, s.ssrc()), (3, 1));
        let h: Health =
            serde_json::from_str(r#"{"status":"ok","dataplanePid":42,"workers":1,"x":0}"#)
                .expect("parses");
        assert_eq!(h.dataplane_pid, Some(42));
    }
}
