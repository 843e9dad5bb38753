//! Switchyard's bearer tokens (JWT), with moq-relay-style claims: what a token allows, and
//! how one is signed (`switchyard token`, and this control plane's own cluster tokens for
//! the calls it makes to other nodes). Verifying a request's token is the HTTP layer's
//! (`http::auth`).
//!
//! A token carries `root` (a path prefix, `""` for everything), `pub` and `sub` (suffixes under
//! `root` it may publish and watch; `""` is anything under `root`), `exp` and `cluster`
//! (node-to-node: everything is allowed). Tokens are HS256 (the `[auth] key` secret) or ES256
//! (the `[auth] public_key`). `exp` is required unless the token is a cluster token.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Deserializer, Serialize};

/// The claims of a Switchyard token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Path prefix every `pub`/`sub` suffix is relative to; `""` is the whole namespace.
    #[serde(default)]
    pub root: String,
    /// Suffixes under `root` the bearer may publish to (WHIP).
    #[serde(
        rename = "pub",
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub publish: Vec<String>,
    /// Suffixes under `root` the bearer may watch (WHEP).
    #[serde(
        rename = "sub",
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub subscribe: Vec<String>,
    /// Node-to-node token: every endpoint, every path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Issued at, seconds since the Unix epoch (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// `pub`/`sub` as one string or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

/// What a request wants to do with a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

/// `path` relative to `prefix` when `prefix` covers it (`""` covers everything; `a` covers `a`
/// and `a/...` but not `ab`).
pub(crate) fn under<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some(rest)
    } else {
        rest.strip_prefix('/')
    }
}

impl Claims {
    /// Whether the token may do `action` on `path` (`room/stream`).
    pub fn allows(&self, action: Action, path: &str) -> bool {
        if self.cluster {
            return true;
        }
        let Some(rest) = under(&self.root, path) else {
            return false;
        };
        let list = match action {
            Action::Publish => &self.publish,
            Action::Subscribe => &self.subscribe,
        };
        list.iter().any(|s| under(s, rest).is_some())
    }

    /// Whether `room` lies under the token's root (room creation, lookup and deletion).
    pub fn owns_room(&self, room: &str) -> bool {
        self.cluster || under(&self.root, room).is_some()
    }

    /// Whether the token's root and `room` overlap either way (discovery: a token for
    /// `room1/cam` may ask where `room1` is served).
    pub fn touches_room(&self, room: &str) -> bool {
        self.owns_room(room) || under(room, self.root.trim_matches('/')).is_some()
    }
}

/// Decode a base64 HS256 secret.
pub fn decode_key(key: &str) -> anyhow::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .context("the key is not base64")
}

/// A PEM given inline or as a file path.
pub(crate) fn pem_text(value: &str) -> anyhow::Result<Vec<u8>> {
    if value.trim_start().starts_with("-----BEGIN") {
        Ok(value.as_bytes().to_vec())
    } else {
        std::fs::read(value).with_context(|| format!("reading {value}"))
    }
}

/// A fresh random HS256 secret (32 bytes), base64, for `[auth] key`.
pub fn generate_key() -> anyhow::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| anyhow::anyhow!("the system RNG failed"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

/// Sign `claims` with an HS256 secret (base64).
pub fn sign_hs256(key_b64: &str, claims: &Claims) -> anyhow::Result<String> {
    let key = EncodingKey::from_secret(&decode_key(key_b64)?);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).context("signing")
}

/// Sign `claims` with an ES256 private key (PKCS#8 PEM, inline or a file path).
pub fn sign_es256(private_key_pem: &str, claims: &Claims) -> anyhow::Result<String> {
    let key = EncodingKey::from_ec_pem(&pem_text(private_key_pem)?)
        .context("not an EC (P-256) PKCS#8 private key PEM")?;
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &key).context("signing")
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(root: &str, publish: &[&str], subscribe: &[&str]) -> Claims {
        Claims {
            root: root.into(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            exp: Some(now_s() + 3600),
            ..Claims::default()
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert_eq!(under("", "a/b"), Some("a/b"));
        assert_eq!(under("a", "a/b"), Some("b"));
        assert_eq!(under("a/", "a/b"), Some("b"));
        assert_eq!(under("a", "a"), Some(""));
        assert_eq!(under("a", "ab/c"), None);
        assert_eq!(under("a/b", "a/c"), None);
    }

    #[test]
    fn pub_and_sub_are_relative_to_root() {
        let c = claims("room1", &["cam"], &[""]);
        assert!(c.allows(Action::Publish, "room1/cam"));
        assert!(!c.allows(Action::Publish, "room1/screen"));
        assert!(!c.allows(Action::Publish, "room2/cam"));
        assert!(c.allows(Action::Subscribe, "room1/screen"));
        assert!(!c.allows(Action::Subscribe, "room10/cam"));
        let all = claims("", &[""], &[]);
        assert!(all.allows(Action::Publish, "x/y"));
        assert!(
            !all.allows(Action::Subscribe, "x/y"),
            "no sub list: no watching"
        );
        let nested = claims("", &["room1"], &[]);
        assert!(nested.allows(Action::Publish, "room1/any"));
        assert!(!nested.allows(Action::Publish, "room2/any"));
        let cluster = Claims {
            cluster: true,
            ..Claims::default()
        };
        assert!(cluster.allows(Action::Publish, "any/thing"));
        assert!(cluster.owns_room("r"));
    }

    #[test]
    fn rooms_are_owned_by_their_root() {
        let c = claims("room1", &["cam"], &[]);
        assert!(c.owns_room("room1"));
        assert!(!c.owns_room("room2"));
        let s = claims("room1/cam", &[""], &[]);
        assert!(!s.owns_room("room1"));
        assert!(s.touches_room("room1"));
        assert!(!s.touches_room("room2"));
    }

    #[test]
    fn pub_and_sub_accept_a_string_or_a_list() {
        let c: Claims =
            serde_json::from_str(r#"{"root":"r","pub":"a","sub":["b","c"],"exp":1}"#).unwrap();
        assert_eq!(c.publish, vec!["a"]);
        assert_eq!(c.subscribe, vec!["b", "c"]);
        let c: Claims = serde_json::from_str(r#"{"cluster":true}"#).unwrap();
        assert!(c.cluster && c.publish.is_empty() && c.exp.is_none());
    }
}
