//! Who may call which route: the bearer-token check in front of the API, moq-relay style.
//! The tokens themselves (claims, signing) are `services::token`'s.
//!
//! [`check`] is the axum middleware: it classifies each request by method and path, then
//! answers 401 (no token, or one that does not verify, with the reason) or 403 (a valid token
//! that does not cover the path or the action). See docs/api.md, "Auth".

use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::json;
use switchyard_shared::config::AuthSection;

use crate::services::token::{decode_key, now_s, pem_text, under, Action, Claims};

const MISSING: &str = "missing bearer token";

/// Seconds of clock skew tolerated on `exp`.
const LEEWAY_S: u64 = 30;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// 401: no token, or one that does not verify.
    Unauthorized(String),
    /// 403: a valid token that does not cover the request.
    Forbidden(String),
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        match self {
            AuthError::Unauthorized(reason) => {
                // RFC 6750: no error code when the request simply had no token.
                let challenge = if reason == MISSING {
                    "Bearer realm=\"switchyard\"".to_owned()
                } else {
                    format!(
                        "Bearer realm=\"switchyard\", error=\"invalid_token\", error_description=\"{}\"",
                        reason.replace('"', "'")
                    )
                };
                let mut r =
                    (StatusCode::UNAUTHORIZED, Json(json!({ "error": reason }))).into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_str(&challenge)
                        .unwrap_or_else(|_| HeaderValue::from_static("Bearer")),
                );
                r
            }
            AuthError::Forbidden(reason) => {
                (StatusCode::FORBIDDEN, Json(json!({ "error": reason }))).into_response()
            }
        }
    }
}

fn unauthorized(reason: impl Into<String>) -> AuthError {
    AuthError::Unauthorized(reason.into())
}

fn forbidden(reason: impl Into<String>) -> AuthError {
    AuthError::Forbidden(reason.into())
}

/// The verifier built from `[auth]`.
pub struct Auth {
    hs256: Option<DecodingKey>,
    es256: Option<DecodingKey>,
    public: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("hs256", &self.hs256.is_some())
            .field("es256", &self.es256.is_some())
            .field("public", &self.public)
            .finish()
    }
}

impl Auth {
    /// The verifier `[auth]` asks for; `None` when auth is off (no key configured).
    pub fn from_config(c: &AuthSection) -> anyhow::Result<Option<Auth>> {
        if !c.enabled() {
            return Ok(None);
        }
        let hs256 = match &c.key {
            Some(k) => Some(DecodingKey::from_secret(
                &decode_key(k).context("auth.key")?,
            )),
            None => None,
        };
        let es256 = match &c.public_key {
            Some(p) => Some(
                DecodingKey::from_ec_pem(&pem_text(p).context("auth.public_key")?)
                    .context("auth.public_key is not an EC public key PEM")?,
            ),
            None => None,
        };
        Ok(Some(Auth {
            hs256,
            es256,
            public: c.public.as_ref().map(|p| p.trim_matches('/').to_owned()),
        }))
    }

    /// Verify a token's signature and expiry; the reason on failure is meant for the client.
    ///
    /// The signature is checked with `jsonwebtoken::crypto`, the claims are parsed here:
    /// jsonwebtoken's own claim validation reads `sub` as RFC 7519's subject (a string) and
    /// rejects our `sub` list.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthorized("malformed token"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::ES256 => self.es256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| unauthorized(format!("algorithm {:?} not accepted", header.alg)))?;
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or_else(|| unauthorized("malformed token"))?;
        let (_, payload) = message
            .split_once('.')
            .ok_or_else(|| unauthorized("malformed token"))?;
        match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, header.alg) {
            Ok(true) => {}
            Ok(false) => return Err(unauthorized("bad signature")),
            Err(_) => return Err(unauthorized("malformed signature")),
        }
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| unauthorized("malformed token"))?;
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|_| unauthorized("malformed claims"))?;
        match claims.exp {
            Some(exp) if exp.saturating_add(LEEWAY_S) < now_s() => {
                Err(unauthorized("token expired"))
            }
            None if !claims.cluster => Err(unauthorized("token has no exp")),
            _ => Ok(claims),
        }
    }

    fn is_public(&self, path: &str) -> bool {
        self.public
            .as_deref()
            .is_some_and(|p| !p.is_empty() && under(p, path).is_some())
    }

    /// Decide on one request (what [`check`] does, without the caller).
    #[cfg(test)]
    pub fn authorize(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), AuthError> {
        self.identify(method, path, query, headers).map(|_| ())
    }

    /// Decide on one request, and who the caller is when it is allowed.
    pub fn identify(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Caller, AuthError> {
        let need = classify(method, path, query);
        let public_path = match &need {
            Need::Nothing => return Ok(Caller::Anonymous),
            Need::Media(_, p) | Need::Room(p) | Need::Discover(p) => Some(p.as_str()),
            Need::Cluster => None,
        };
        // WHIP/WHEP clients that cannot set a header (moq-relay's convention) may put the
        // token in the URL instead; the header wins when both are there. Never logged: the
        // HTTP metrics and logs name the route template, not the URL.
        let token = match (bearer(headers)?, &need) {
            (None, Need::Media(..)) => query_token(query),
            (t, _) => t,
        };
        if token.is_none() && public_path.is_some_and(|p| self.is_public(p)) {
            return Ok(Caller::Anonymous);
        }
        let token = token.ok_or_else(|| unauthorized(MISSING))?;
        let claims = self.verify(token)?;
        let caller = if claims.cluster {
            Caller::Cluster
        } else {
            Caller::User(TokenId::of(token))
        };
        let allowed = match need {
            Need::Nothing => Ok(()),
            Need::Cluster if claims.cluster => Ok(()),
            Need::Cluster => Err(forbidden("this endpoint needs a cluster token")),
            Need::Media(action, path) => {
                if claims.allows(action, &path) || self.is_public(&path) {
                    Ok(())
                } else {
                    let verb = match action {
                        Action::Publish => "publish to",
                        Action::Subscribe => "subscribe to",
                    };
                    Err(forbidden(format!("token does not allow {verb} {path}")))
                }
            }
            Need::Room(room) if claims.owns_room(&room) => Ok(()),
            Need::Room(room) => Err(forbidden(format!("token does not cover room {room}"))),
            Need::Discover(room) if claims.touches_room(&room) || self.is_public(&room) => Ok(()),
            Need::Discover(room) => Err(forbidden(format!("token does not cover room {room}"))),
        };
        allowed.map(|()| caller)
    }
}

/// A user token, by a digest of the token itself: the key its quotas are kept under
/// (`super::quota`). Two tokens are two clients even with the same claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenId([u8; 16]);

impl TokenId {
    fn of(token: &str) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&d.as_ref()[..16]);
        Self(id)
    }
}

/// Who made an allowed request, as the [`check`] middleware leaves it in the request's
/// extensions. Absent when auth is off: every caller is trusted then, like a cluster token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A cluster token: every endpoint, no quota, any room hook.
    Cluster,
    /// A user token.
    User(TokenId),
    /// No token: an open endpoint, or the public prefix.
    Anonymous,
}

impl Caller {
    /// Whether the request's caller may do what only operators and nodes may (set any room
    /// hook, create sessions without quota): a cluster token, or anyone while auth is off
    /// (`None`: the middleware is not installed).
    pub fn trusted(caller: Option<&Caller>) -> bool {
        matches!(caller, None | Some(Caller::Cluster))
    }
}

/// The token of `Authorization: Bearer …`; `Ok(None)` without the header.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(unauthorized("Authorization must be \"Bearer <token>\"")),
    }
}

/// The `jwt` parameter of a query string (`?jwt=<token>`), if present and not empty. A JWT is
/// base64url with dots: it needs no percent-decoding.
fn query_token(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "jwt" && !v.is_empty()).then_some(v)
    })
}

/// What a request needs.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    /// Open: health, metrics, the index, the stream list, CORS preflights.
    Nothing,
    /// WHIP (publish) or WHEP (subscribe) on `room/stream`.
    Media(Action, String),
    /// A named room: create, look up, delete.
    Room(String),
    /// `GET /v1/resolve?room=`.
    Discover(String),
    /// Everything else: sessions, nodes, room lists, unknown paths.
    Cluster,
}

fn classify(method: &Method, path: &str, query: Option<&str>) -> Need {
    if method == Method::OPTIONS {
        return Need::Nothing;
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        [""] | ["health"] | ["metrics"] | ["api"] | ["certificate.sha256"] => Need::Nothing,
        // The API explorer's page and assets (what it then calls needs what each call needs).
        ["api", "docs", ..] if method == Method::GET => Need::Nothing,
        // The cluster page; the data it then fetches (/v1/nodes, ...) needs a cluster token.
        ["cluster"] if method == Method::GET => Need::Nothing,
        ["v1", "streams"] if method == Method::GET => Need::Nothing,
        // Percent-encoded names are not matched against claims (the handlers reject them).
        [kind @ ("whip" | "whep"), room, stream, rest @ ..]
            if rest.len() <= 1 && !room.contains('%') && !stream.contains('%') =>
        {
            let action = if *kind == "whip" {
                Action::Publish
            } else {
                Action::Subscribe
            };
            Need::Media(action, format!("{room}/{stream}"))
        }
        // A stream's cached group: what a viewer of the stream could watch anyway.
        ["v1", "streams", room, stream, "fetch"]
            if method == Method::GET && !room.contains('%') && !stream.contains('%') =>
        {
            Need::Media(Action::Subscribe, format!("{room}/{stream}"))
        }
        ["v1", "rooms", room] if !room.is_empty() && !room.contains('%') => {
            Need::Room((*room).to_owned())
        }
        ["v1", "resolve"] if method == Method::GET => {
            let room = query.unwrap_or_default().split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == "room" && !v.is_empty() && !v.contains('%')).then(|| v.to_owned())
            });
            room.map_or(Need::Cluster, Need::Discover)
        }
        _ => Need::Cluster,
    }
}

/// Whether `method` on `path` (a route template such as `/v1/rooms/{room}`) may need a token
/// when auth is on: what the OpenAPI document states for each operation.
pub(crate) fn needs_token(method: &Method, path: &str) -> bool {
    !matches!(classify(method, path, None), Need::Nothing)
}

/// The middleware: refuse what the request's token does not allow; leave the [`Caller`] of
/// what it allows in the request's extensions.
pub(crate) async fn check(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    match auth.identify(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        req.headers(),
    ) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::token::{generate_key, sign_es256, sign_hs256};

    fn claims(root: &str, publish: &[&str], subscribe: &[&str]) -> Claims {
        Claims {
            root: root.into(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            exp: Some(now_s() + 3600),
            ..Claims::default()
        }
    }

    fn auth_with(key: &str, public: Option<&str>) -> Auth {
        Auth::from_config(&AuthSection {
            key: Some(key.into()),
            public_key: None,
            public: public.map(str::to_owned),
        })
        .unwrap()
        .unwrap()
    }

    fn with_token(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn verify_reports_why() {
        let key = generate_key().unwrap();
        let auth = auth_with(&key, Some("anon"));
        let good = sign_hs256(&key, &claims("room1", &["cam"], &[])).unwrap();
        assert!(auth.verify(&good).is_ok());
        let mut expired = claims("room1", &["cam"], &[]);
        expired.exp = Some(now_s() - 3600);
        let expired = sign_hs256(&key, &expired).unwrap();
        assert_eq!(auth.verify(&expired), Err(unauthorized("token expired")));
        let other = sign_hs256(&generate_key().unwrap(), &claims("room1", &[], &[])).unwrap();
        assert_eq!(auth.verify(&other), Err(unauthorized("bad signature")));
        assert_eq!(
            auth.verify("nonsense"),
            Err(unauthorized("malformed token"))
        );
        let mut no_exp = claims("room1", &[], &[]);
        no_exp.exp = None;
        let no_exp = sign_hs256(&key, &no_exp).unwrap();
        assert_eq!(auth.verify(&no_exp), Err(unauthorized("token has no exp")));
        let cluster = Claims {
            cluster: true,
            ..Claims::default()
        };
        assert!(auth.verify(&sign_hs256(&key, &cluster).unwrap()).is_ok());
    }

    /// moq-relay's `?jwt=` for clients that cannot set a header: WHIP/WHEP only, and the
    /// `Authorization` header wins when both are there.
    #[test]
    fn a_token_in_the_url_reaches_only_whip_and_whep() {
        let key = generate_key().unwrap();
        let auth = auth_with(&key, None);
        let token = sign_hs256(&key, &claims("room1", &["cam"], &[])).unwrap();
        let cluster = sign_hs256(
            &key,
            &Claims {
                cluster: true,
                ..Claims::default()
            },
        )
        .unwrap();
        let none = HeaderMap::new();
        let q = format!("jwt={token}");
        assert!(auth
            .authorize(&Method::POST, "/whip/room1/cam", Some(&q), &none)
            .is_ok());
        let q2 = format!("x=1&jwt={token}");
        assert!(auth
            .authorize(&Method::DELETE, "/whip/room1/cam/7-abc", Some(&q2), &none)
            .is_ok());
        assert!(matches!(
            auth.authorize(&Method::POST, "/whip/room1/cam", Some("jwt="), &none),
            Err(AuthError::Unauthorized(_))
        ));
        // Not for the rest of the API, even with a cluster token.
        let qc = format!("jwt={cluster}");
        assert!(auth
            .authorize(&Method::GET, "/v1/sessions", Some(&qc), &none)
            .is_err());
        // The header is what counts when there is one.
        let mut bad = HeaderMap::new();
        bad.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nonsense"),
        );
        assert!(auth
            .authorize(&Method::POST, "/whip/room1/cam", Some(&q), &bad)
            .is_err());
    }

    #[test]
    fn a_tampered_payload_fails_the_signature() {
        let key = generate_key().unwrap();
        let auth = auth_with(&key, None);
        let token = sign_hs256(&key, &claims("room1", &["cam"], &[])).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims("", &[""], &[""])).unwrap());
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(auth.verify(&tampered), Err(unauthorized("bad signature")));
        // An ES256 token to a node with only an HS256 key; `none` is never accepted.
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert!(matches!(
            auth.verify(&none),
            Err(AuthError::Unauthorized(_))
        ));
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key() {
        use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // SubjectPublicKeyInfo of a P-256 key: fixed prefix, then the uncompressed point.
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend_from_slice(pair.public_key().as_ref());
        let auth = Auth::from_config(&AuthSection {
            key: None,
            public_key: Some(pem("PUBLIC KEY", &spki)),
            public: None,
        })
        .unwrap()
        .unwrap();
        let private = pem("PRIVATE KEY", pkcs8.as_ref());
        let token = sign_es256(&private, &claims("r", &["s"], &[])).unwrap();
        let c = auth.verify(&token).unwrap();
        assert!(c.allows(Action::Publish, "r/s"));
        // HS256 tokens are refused when only an ES256 key is configured.
        let hs = sign_hs256(&generate_key().unwrap(), &claims("r", &["s"], &[])).unwrap();
        assert_eq!(
            auth.verify(&hs),
            Err(unauthorized("algorithm HS256 not accepted"))
        );
    }

    #[test]
    fn relays_need_a_cluster_token() {
        let key = generate_key().unwrap();
        let auth = auth_with(&key, Some("anon"));
        let none = HeaderMap::new();
        // Even the stream's publisher (or the public prefix) may not spend another node's
        // capacity on a relay.
        let user = with_token(&sign_hs256(&key, &claims("", &[""], &[""])).unwrap());
        let cluster = with_token(
            &sign_hs256(
                &key,
                &Claims {
                    cluster: true,
                    ..Claims::default()
                },
            )
            .unwrap(),
        );
        for (m, p) in [
            (Method::POST, "/v1/streams/room1/cam/relays"),
            (Method::GET, "/v1/streams/room1/cam/relays"),
            (Method::DELETE, "/v1/streams/room1/cam/relays/b"),
            (Method::POST, "/v1/streams/anon/cam/relays"),
            (Method::GET, "/v1/relays"),
            (Method::POST, "/v1/relays/ingress"),
            (Method::DELETE, "/v1/relays/ingress/3"),
        ] {
            assert!(
                matches!(
                    auth.authorize(&m, p, None, &none),
                    Err(AuthError::Unauthorized(_))
                ),
                "{m} {p}"
            );
            assert_eq!(
                auth.authorize(&m, p, None, &user),
                Err(forbidden("this endpoint needs a cluster token")),
                "{m} {p}"
            );
            assert_eq!(auth.authorize(&m, p, None, &cluster), Ok(()), "{m} {p}");
        }
        assert_eq!(
            auth.authorize(&Method::GET, "/v1/streams", None, &none),
            Ok(())
        );
    }

    #[test]
    fn a_streams_group_is_for_whoever_may_watch_it() {
        let key = generate_key().unwrap();
        let auth = auth_with(&key, Some("anon"));
        let none = HeaderMap::new();
        let viewer = with_token(&sign_hs256(&key, &claims("", &[], &["room1/"])).unwrap());
        let fetch = |p: &str, h: &HeaderMap| auth.authorize(&Method::GET, p, None, h);
        assert_eq!(fetch("/v1/streams/room1/cam/fetch", &viewer), Ok(()));
        assert_eq!(
            fetch("/v1/streams/room2/cam/fetch", &viewer),
            Err(forbidden("token does not allow subscribe to room2/cam"))
        );
        assert!(matches!(
            fetch("/v1/streams/room1/cam/fetch", &none),
            Err(AuthError::Unauthorized(_))
        ));
        assert_eq!(fetch("/v1/streams/anon/cam/fetch", &none), Ok(()), "public");
        assert_eq!(
            fetch("/v1/streams/room1%2Fx/cam/fetch", &viewer),
            Err(forbidden("this endpoint needs a cluster token"))
        );
    }

    #[test]
    fn callers_are_identified() {
        let key = generate_key().unwrap();
        let auth = auth_with(&key, Some("anon"));
        let id = |h: &HeaderMap| auth.identify(&Method::POST, "/whip/anon/cam", None, h);
        assert_eq!(id(&HeaderMap::new()), Ok(Caller::Anonymous));
        let a = sign_hs256(&key, &claims("anon", &[""], &[])).unwrap();
        let b = sign_hs256(&key, &claims("", &[""], &[])).unwrap();
        let (Ok(Caller::User(ta)), Ok(Caller::User(tb))) =
            (id(&with_token(&a)), id(&with_token(&b)))
        else {
            panic!("user tokens are users");
        };
        assert_ne!(ta, tb, "two tokens, two clients");
        assert_eq!(id(&with_token(&a)), Ok(Caller::User(ta)));
        let cluster = Claims {
            cluster: true,
            ..Claims::default()
        };
        let c = with_token(&sign_hs256(&key, &cluster).unwrap());
        assert_eq!(id(&c), Ok(Caller::Cluster));
        assert!(Caller::trusted(None) && Caller::trusted(Some(&Caller::Cluster)));
        assert!(!Caller::trusted(Some(&Caller::Anonymous)));
        assert!(!Caller::trusted(Some(&Caller::User(ta))));
    }

    #[test]
    fn requests_are_classified() {
        let key = generate_key().unwrap();
        let auth = auth_with(&key, Some("anon"));
        let none = HeaderMap::new();
        let ok = |m: Method, p: &str, q: Option<&str>, h: &HeaderMap| auth.authorize(&m, p, q, h);
        assert!(ok(Method::GET, "/health", None, &none).is_ok());
        assert!(ok(Method::GET, "/metrics", None, &none).is_ok());
        assert!(ok(Method::GET, "/api", None, &none).is_ok());
        assert!(ok(Method::GET, "/", None, &none).is_ok());
        assert!(ok(Method::GET, "/cluster", None, &none).is_ok());
        assert!(matches!(
            ok(Method::GET, "/v1/cluster/streams", None, &none),
            Err(AuthError::Unauthorized(_))
        ));
        assert!(ok(Method::GET, "/v1/streams", Some("prefix=a"), &none).is_ok());
        assert!(ok(Method::OPTIONS, "/whip/a/b", None, &none).is_ok());
        assert!(ok(Method::POST, "/whip/anon/cam", None, &none).is_ok());
        assert!(ok(Method::DELETE, "/whep/anon/cam/3", None, &none).is_ok());
        assert_eq!(
            ok(Method::POST, "/whip/room1/cam", None, &none),
            Err(unauthorized("missing bearer token"))
        );
        assert!(matches!(
            ok(Method::GET, "/v1/sessions", None, &none),
            Err(AuthError::Unauthorized(_))
        ));
        let user = with_token(&sign_hs256(&key, &claims("room1", &["cam"], &[""])).unwrap());
        assert_eq!(ok(Method::POST, "/whip/room1/cam", None, &user), Ok(()));
        assert!(ok(Method::PATCH, "/whip/room1/cam/7", None, &user).is_ok());
        assert!(ok(Method::POST, "/whep/room1/screen", None, &user).is_ok());
        assert!(matches!(
            ok(Method::POST, "/whip/room1/screen", None, &user),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            ok(Method::POST, "/whip/room1%2Fcam/x", None, &user),
            Err(AuthError::Forbidden(_))
        ));
        assert!(ok(Method::POST, "/v1/rooms/room1", None, &user).is_ok());
        assert!(ok(Method::GET, "/v1/resolve", Some("room=room1"), &user).is_ok());
        assert!(matches!(
            ok(Method::POST, "/v1/rooms/room2", None, &user),
            Err(AuthError::Forbidden(_))
        ));
        assert_eq!(
            ok(Method::POST, "/v1/sessions", None, &user),
            Err(forbidden("this endpoint needs a cluster token"))
        );
        assert!(matches!(
            ok(Method::POST, "/v1/nodes/register", None, &user),
            Err(AuthError::Forbidden(_))
        ));
        // Forwards copy any stream anywhere: an operator's business, like /v1/sessions.
        for (m, path, q) in [
            (Method::POST, "/v1/forwards", None),
            (Method::GET, "/v1/forwards", None),
            (Method::DELETE, "/v1/forwards/fwd-1", None),
            (
                Method::GET,
                "/v1/forwards/fwd-1/sdp",
                Some("stream=room1/cam"),
            ),
        ] {
            assert_eq!(
                ok(m, path, q, &user),
                Err(forbidden("this endpoint needs a cluster token")),
                "{path}"
            );
        }
        let cluster = Claims {
            cluster: true,
            ..Claims::default()
        };
        let cluster = with_token(&sign_hs256(&key, &cluster).unwrap());
        assert!(ok(Method::POST, "/v1/nodes/n1/drain", None, &cluster).is_ok());
        assert!(ok(Method::POST, "/v1/sessions", None, &cluster).is_ok());
        assert!(ok(Method::POST, "/v1/forwards", None, &cluster).is_ok());
        let mut bad = HeaderMap::new();
        bad.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(matches!(
            ok(Method::POST, "/whip/anon/cam", None, &bad),
            Err(AuthError::Unauthorized(_))
        ));
    }
}
