//! Who a relay's link keys may travel to, and how this node proves itself to others.
//!
//! The ingress answer carries the per-link SRTP keys, so they travel over plain HTTP only on
//! loopback: a source asks a remote target over `https://` only ([`check_target`]), and a
//! target serving plain HTTP answers only a loopback source ([`check_source`]), unless
//! `[cluster] allow_plain_http_keys` (a network private end to end).

use std::net::{IpAddr, SocketAddr};

use super::error::RelayError;
use super::service::Relays;
use crate::core::counters;
use crate::services::cluster::probe::authority;
use crate::services::token::{self, Claims};

/// Whether the host of a control plane URL is this machine: a loopback IP literal, or
/// `localhost`. Any other name counts as remote (what it resolves to can change).
fn url_is_loopback(url: &str) -> bool {
    let Some((_, authority)) = authority(url) else {
        return false;
    };
    let host = match authority.rfind(':') {
        Some(colon) => &authority[..colon],
        None => authority.as_str(),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Source side: may this node ask the target control plane at `url` for a relay (whose
/// answer carries the link keys)? `https://`, loopback, or `allow_plain_http_keys`.
pub fn check_target(url: &str, allow_plain: bool) -> Result<(), RelayError> {
    if allow_plain || url.starts_with("https://") || url_is_loopback(url) {
        return Ok(());
    }
    counters::cluster().relay_failed("plain_http");
    Err(RelayError::PlainKeys(format!("target {url}")))
}

/// Target side: may this node answer an ingress (the link keys) to the source that asked
/// from `peer`? Over HTTPS (`tls`), from loopback, or with `allow_plain_http_keys`.
pub fn check_source(
    peer: Option<SocketAddr>,
    tls: bool,
    allow_plain: bool,
) -> Result<(), RelayError> {
    if tls || allow_plain || peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) {
        return Ok(());
    }
    counters::cluster().relay_failed("plain_http");
    let from = peer.map_or_else(|| "an unknown address".to_owned(), |p| p.ip().to_string());
    Err(RelayError::PlainKeys(format!("source at {from}")))
}

impl Relays {
    /// [`check_source`] for this node: may it answer an ingress to a source at `peer`?
    pub fn check_ingress_peer(&self, peer: Option<SocketAddr>) -> Result<(), RelayError> {
        check_source(peer, self.tls, self.cluster.config.allow_plain_http_keys)
    }

    /// The bearer token this control plane sends to the others: `[cluster] token`, or a
    /// five-minute cluster token signed with `[auth] key`; None when neither is set (auth off).
    pub(crate) fn cluster_token(&self) -> Option<String> {
        if let Some(t) = &self.cluster.config.token {
            return Some(t.clone());
        }
        let key = self.auth_key.as_deref()?;
        let now = token::now_s();
        let claims = Claims {
            cluster: true,
            exp: Some(now + 300),
            iat: Some(now),
            ..Claims::default()
        };
        match token::sign_hs256(key, &claims) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a cluster token");
                None
            }
        }
    }
}
