//! ICE-lite responder for one session (RFC 8445 §2.5, §7.3): validate the peer's Binding
//! requests with the short-term credentials, answer them, and track which address the peer
//! uses and whether it still consents to receive (RFC 7675).
//!
//! A lite agent never sends checks; it learns the 5-tuple from valid requests. The first
//! valid check fixes the session's address (so DTLS and media can start at once, as browsers
//! begin DTLS before nominating); a later valid check with USE-CANDIDATE from another address
//! moves it there, because the controlling agent has nominated that pair. Requests that fail
//! authentication change nothing and get no answer: an answer to an unauthenticated request
//! would make the node a reflector for spoofed traffic.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ring::hmac;
use switchyard_shared::command::IceCredentials;
use switchyard_shared::packet::stun::{self, attr, Class, Message, Writer, METHOD_BINDING};

/// RFC 7675 §5.1: consent expires 30 s after the last valid check.
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a STUN message was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not a Binding request (responses and indications are not for a lite agent).
    NotARequest,
    /// USERNAME missing or not `our_ufrag:their_ufrag`.
    Username,
    /// MESSAGE-INTEGRITY missing or wrong.
    Integrity,
    /// FINGERPRINT present but wrong.
    Fingerprint,
}

/// The outcome of a valid check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validated {
    /// The session's address is unchanged.
    Same,
    /// The session's address is now `src` (first valid check, or a nomination elsewhere).
    Moved,
}

pub struct IceAgent {
    local_ufrag: Box<str>,
    remote_ufrag: Box<str>,
    key: hmac::Key,
    created: Instant,
    last_valid: Option<Instant>,
    nominated: bool,
    expired: bool,
}

impl IceAgent {
    pub fn new(creds: &IceCredentials, now: Instant) -> Self {
        Self {
            local_ufrag: creds.local_ufrag.as_str().into(),
            remote_ufrag: creds.remote_ufrag.as_str().into(),
            key: hmac::Key::new(
                hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                creds.local_pwd.as_bytes(),
            ),
            created: now,
            last_valid: None,
            nominated: false,
            expired: false,
        }
    }

    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    /// Check a Binding request that named this agent's ufrag. On success the caller answers
    /// with [`write_success`](Self::write_success) and applies the returned move.
    pub fn validate(
        &mut self,
        msg: &Message<'_>,
        current: Option<SocketAddr>,
        src: SocketAddr,
        now: Instant,
    ) -> Result<Validated, Reject> {
        if msg.class != Class::Request || msg.method != METHOD_BINDING {
            return Err(Reject::NotARequest);
        }
        let (ours, theirs) = msg
            .username()
            .and_then(|u| u.split_once(':'))
            .ok_or(Reject::Username)?;
        if ours != &*self.local_ufrag || theirs != &*self.remote_ufrag {
            return Err(Reject::Username);
        }
        if !msg.check_integrity_key(&self.key) {
            return Err(Reject::Integrity);
        }
        if msg.attribute(attr::FINGERPRINT).is_some() && !msg.check_fingerprint() {
            return Err(Reject::Fingerprint);
        }
        self.last_valid = Some(now);
        let use_candidate = msg.attribute(attr::USE_CANDIDATE).is_some();
        let moved = match current {
            None => true,
            Some(cur) if cur == src => false,
            // Another address: only a nomination moves an established pair.
            Some(_) => use_candidate,
        };
        if use_candidate && (moved || current == Some(src)) {
            self.nominated = true;
        }
        Ok(if moved {
            Validated::Moved
        } else {
            Validated::Same
        })
    }

    /// The Binding success answer for `msg` from `src` into `out`.
    pub fn write_success(
        &self,
        msg: &Message<'_>,
        src: SocketAddr,
        out: &mut [u8],
    ) -> Option<usize> {
        let mut w = Writer::new(out, Class::Success, METHOD_BINDING, &msg.transaction_id).ok()?;
        w.xor_mapped_address(src).ok()?;
        w.message_integrity_key(&self.key).ok()?;
        w.fingerprint().ok()?;
        Some(w.finish())
    }

    /// Whether the peer nominated the current pair.
    pub fn nominated(&self) -> bool {
        self.nominated
    }

    /// True once, when consent has lapsed: no valid check for [`CONSENT_TIMEOUT`] (counted
    /// from creation when there never was one).
    pub fn expire(&mut self, now: Instant) -> bool {
        if self.expired {
            return false;
        }
        let since = self.last_valid.unwrap_or(self.created);
        if now.saturating_duration_since(since) >= CONSENT_TIMEOUT {
            self.expired = true;
            return true;
        }
        false
    }
}

/// The ufrag a request is addressed to: the part of USERNAME before the colon.
pub fn addressed_ufrag<'a>(msg: &Message<'a>) -> Option<&'a [u8]> {
    let u = msg.attribute(attr::USERNAME)?;
    let colon = u.iter().position(|&b| b == b':')?;
    u.get(..colon)
}

/// Re-exported for tests that build requests.
pub use stun::write_binding_request;

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> IceCredentials {
        IceCredentials {
            local_ufrag: "srv1".into(),
            local_pwd: "server-password-0123456789".into(),
            remote_ufrag: "peer".into(),
        }
    }

    fn request(username: &str, pwd: &str, use_candidate: bool, buf: &mut [u8]) -> usize {
        write_binding_request(buf, &[7; 12], username, pwd.as_bytes(), use_candidate, 1, 2)
            .expect("fits")
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], p))
    }

    #[test]
    fn valid_check_moves_then_only_nomination_moves() {
        let now = Instant::now();
        let mut a = IceAgent::new(&creds(), now);
        let mut buf = [0u8; 256];
        let n = request("srv1:peer", "server-password-0123456789", false, &mut buf);
        let msg = Message::parse(&buf[..n]).expect("parse");
        assert_eq!(addressed_ufrag(&msg), Some(&b"srv1"[..]));
        assert_eq!(a.validate(&msg, None, addr(1), now), Ok(Validated::Moved));
        assert_eq!(
            a.validate(&msg, Some(addr(1)), addr(1), now),
            Ok(Validated::Same)
        );
        // Another address without nomination: answered, but the pair stays.
        assert_eq!(
            a.validate(&msg, Some(addr(1)), addr(2), now),
            Ok(Validated::Same)
        );
        let n = request("srv1:peer", "server-password-0123456789", true, &mut buf);
        let msg = Message::parse(&buf[..n]).expect("parse");
        assert_eq!(
            a.validate(&msg, Some(addr(1)), addr(2), now),
            Ok(Validated::Moved)
        );
        assert!(a.nominated());

        // The answer is a valid, signed success response carrying the source address.
        let mut out = [0u8; 128];
        let len = a.write_success(&msg, addr(2), &mut out).expect("answer");
        let resp = Message::parse(&out[..len]).expect("parse answer");
        assert_eq!(resp.class, Class::Success);
        assert_eq!(resp.transaction_id, [7; 12]);
        assert_eq!(resp.xor_mapped_address(), Some(addr(2)));
        assert!(resp.check_integrity(b"server-password-0123456789"));
        assert!(resp.check_fingerprint());
    }

    #[test]
    fn bad_checks_are_rejected_and_change_nothing() {
        let now = Instant::now();
        let mut a = IceAgent::new(&creds(), now);
        let mut buf = [0u8; 256];
        let n = request("srv1:peer", "wrong-password", true, &mut buf);
        let msg = Message::parse(&buf[..n]).expect("parse");
        assert_eq!(a.validate(&msg, None, addr(1), now), Err(Reject::Integrity));
        let n = request("srv1:other", "server-password-0123456789", true, &mut buf);
        let msg = Message::parse(&buf[..n]).expect("parse");
        assert_eq!(a.validate(&msg, None, addr(1), now), Err(Reject::Username));
        // A flipped bit in the fingerprint.
        let n = request("srv1:peer", "server-password-0123456789", true, &mut buf);
        buf[n - 1] ^= 1;
        let msg = Message::parse(&buf[..n]).expect("parse");
        assert_eq!(
            a.validate(&msg, None, addr(1), now),
            Err(Reject::Fingerprint)
        );
        assert!(!a.nominated());
        // Consent never given: expires 30 s after creation, and reports it once.
        assert!(!a.expire(now + Duration::from_secs(29)));
        assert!(a.expire(now + CONSENT_TIMEOUT));
        assert!(!a.expire(now + Duration::from_secs(60)));
    }

    #[test]
    fn consent_is_refreshed_by_valid_checks() {
        let now = Instant::now();
        let mut a = IceAgent::new(&creds(), now);
        let mut buf = [0u8; 256];
        let n = request("srv1:peer", "server-password-0123456789", true, &mut buf);
        let msg = Message::parse(&buf[..n]).expect("parse");
        let later = now + Duration::from_secs(25);
        a.validate(&msg, None, addr(1), later).expect("valid");
        assert!(!a.expire(now + Duration::from_secs(50)));
        assert!(a.expire(later + CONSENT_TIMEOUT));
    }
}
