//! ICE-lite agent for one session (RFC 8445 §2.5, §7.3): validate the peer's Binding
//! requests with the short-term credentials, answer them, and decide which address media
//! goes to and whether the peer still consents to receive it (RFC 7675).
//!
//! Security contract: media goes only to an address that has proven it answers.
//!
//! - The first valid check fixes the session's address at once, so DTLS and media can
//!   start (browsers begin DTLS before they nominate). That address has not answered
//!   anything yet; what proves the round trip there is DTLS itself: no SRTP keys, hence no
//!   media, before a handshake completes with that address.
//! - A valid check from any other address (nominated or not) moves nothing. The agent sends
//!   that address a check of its own ([`IceAgent::poll`]: a fresh random 96-bit transaction
//!   id, signed with the peer's password, retransmitted every [`RETRANSMIT_INTERVAL`] and
//!   abandoned after [`VERIFY_TIMEOUT`]). Only a success response that carries that
//!   transaction id, comes from exactly that address and authenticates under the peer's
//!   password verifies it — someone who spoofs a check with a victim's source address sees
//!   neither the id nor can sign the answer, and the victim does not answer. A verified
//!   address becomes the session's when the peer nominates it (USE-CANDIDATE, before or
//!   after the answer), or when the current address has been silent for [`QUIET`] (a NAT
//!   rebinding: the peer does not know its address changed, so it does not nominate again).
//! - At most [`MAX_CANDIDATES`] other addresses are tracked per session, and one being
//!   verified is never displaced; more sources cost an answer each (no larger than their
//!   check) and nothing else, so a flood of spoofed sources makes a session send at most
//!   `MAX_CANDIDATES × MAX_TRANSMISSIONS` checks per [`VERIFY_TIMEOUT`].
//! - Consent is per address: only valid checks from the session's address (and the answer
//!   that moved the session there) refresh it. Checks from elsewhere keep a verified
//!   candidate alive, never the current address; no valid check from it for
//!   [`CONSENT_TIMEOUT`] ends the session.
//! - Requests that fail authentication change nothing and get no answer: an answer to an
//!   unauthenticated request would make the node a reflector for spoofed traffic.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::SecureRandom;
use switchyard_shared::command::IceCredentials;
use switchyard_shared::packet::stun::{self, attr, Class, Message, Writer, METHOD_BINDING};

/// RFC 7675 §5.1: consent expires 30 s after the last valid check.
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Between transmissions of a check to an address being verified. RFC 8445 paces a full
/// agent's checks at Ta = 50 ms and retransmits after an RTO of at least 500 ms; a lite
/// agent sends one check per address, so 200 ms gets a lossy path verified quickly without
/// adding up to much.
pub const RETRANSMIT_INTERVAL: Duration = Duration::from_millis(200);

/// Transmissions of one check (the first and four retransmissions: 0–800 ms).
pub const MAX_TRANSMISSIONS: u8 = 5;

/// A verification with no valid answer this long after its first check is abandoned; an
/// answer to the last transmission still counts for 1.2 s (a long round trip).
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// Addresses other than the session's that are being verified or wait, verified, for a
/// nomination. A browser checks from a few local candidates; the bound keeps what a flood
/// of spoofed sources can make the node send small and fixed.
pub const MAX_CANDIDATES: usize = 2;

/// Silence from the session's address after which a verified address takes over without a
/// nomination: two missed consent checks (RFC 7675 §5.1 sends one every 4–6 s).
pub const QUIET: Duration = Duration::from_secs(15);

/// PRIORITY of the agent's checks: a host candidate's (type preference 126, local
/// preference 65535, component 1; RFC 8445 §5.1.2.1), which the node's only candidate is.
const PRIORITY: u32 = (126 << 24) | (65535 << 8) | 255;

/// Why a STUN message was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not a Binding request where one was expected.
    NotARequest,
    /// USERNAME missing or not `our_ufrag:their_ufrag`.
    Username,
    /// MESSAGE-INTEGRITY missing or wrong.
    Integrity,
    /// FINGERPRINT present but wrong.
    Fingerprint,
    /// Not a Binding success answering a check in flight, from the address it went to.
    Unsolicited,
}

/// The outcome of a valid check or answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validated {
    /// The session's address is unchanged.
    Same,
    /// The session's address is now `src` (the first valid check, or a verified address).
    Moved,
}

/// What the engine does for the agent; drained with [`IceAgent::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Send a check to `to` from local address `from` (where the check that made `to` a
    /// candidate arrived, so the peer sees the pair it checked), written by
    /// [`IceAgent::write_check`]; answers carrying `transaction_id` are for this agent.
    Check {
        to: SocketAddr,
        from: Option<IpAddr>,
        transaction_id: [u8; 12],
    },
    /// The transaction is over (answered, abandoned or displaced): nothing carrying this id
    /// is for this agent any more.
    Forget([u8; 12]),
}

/// Where a verification stands.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// `sent` transmissions so far; the next is due at `next`; abandoned at `deadline`.
    InFlight {
        sent: u8,
        next: Instant,
        deadline: Instant,
    },
    /// Answered; its consent runs from `last` (the answer, or its latest valid check).
    Verified { last: Instant },
}

/// An address other than the session's that sent a valid check.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    addr: SocketAddr,
    /// The node's address its first valid check came to: our checks leave from there.
    local: Option<IpAddr>,
    transaction_id: [u8; 12],
    check: Check,
    /// The peer's latest nomination is for this address.
    nominated: bool,
}

impl Candidate {
    /// Verified and still consenting at `now`.
    fn verified(&self, now: Instant) -> bool {
        matches!(self.check, Check::Verified { last }
            if now.saturating_duration_since(last) < CONSENT_TIMEOUT)
    }

    /// A verified candidate whose consent lapsed: its slot is free.
    fn lapsed(&self, now: Instant) -> bool {
        matches!(self.check, Check::Verified { .. }) && !self.verified(now)
    }
}

pub struct IceAgent {
    local_ufrag: Box<str>,
    remote_ufrag: Box<str>,
    /// USERNAME of our checks, `remote:local`, built once.
    check_username: Box<[u8]>,
    /// Our password: the peer's checks and our answers.
    key: hmac::Key,
    /// The peer's password: our checks and the peer's answers. `None` (no password given):
    /// nothing can be verified, so the session stays at its first address.
    remote_key: Option<hmac::Key>,
    /// ICE-CONTROLLED in our checks. A lite agent is always controlled (RFC 8445 §6.1.1),
    /// so it never wins or loses a role conflict; it is random as RFC 8445 §16.1 asks.
    tie_breaker: u64,
    created: Instant,
    /// The last valid check from the session's address: its consent.
    last_valid: Option<Instant>,
    nominated: bool,
    expired: bool,
    candidates: [Option<Candidate>; MAX_CANDIDATES],
    /// Transactions ended inside a `handle_*` call, reported by the next [`IceAgent::poll`]:
    /// at most one per candidate slot per call, and the engine drains after every call.
    ended: Vec<[u8; 12]>,
}

impl IceAgent {
    pub fn new(creds: &IceCredentials, now: Instant, rng: &dyn SecureRandom) -> Self {
        let mut tb = [0u8; 8];
        // Failing only if the OS has no randomness; the value then decides nothing (above).
        let _ = rng.fill(&mut tb);
        Self {
            local_ufrag: creds.local_ufrag.as_str().into(),
            remote_ufrag: creds.remote_ufrag.as_str().into(),
            check_username: format!("{}:{}", creds.remote_ufrag, creds.local_ufrag)
                .into_bytes()
                .into(),
            key: hmac::Key::new(
                hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                creds.local_pwd.as_bytes(),
            ),
            remote_key: (!creds.remote_pwd.is_empty()).then(|| {
                hmac::Key::new(
                    hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                    creds.remote_pwd.as_bytes(),
                )
            }),
            tie_breaker: u64::from_be_bytes(tb),
            created: now,
            last_valid: None,
            nominated: false,
            expired: false,
            candidates: [None; MAX_CANDIDATES],
            ended: Vec::with_capacity(MAX_CANDIDATES),
        }
    }

    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    /// Check a Binding request that named this agent's ufrag, from `src` to the node's
    /// address `dst`, the session's address being `current`. On success the caller answers with
    /// [`write_success`](Self::write_success), applies a [`Validated::Moved`], and drains
    /// [`poll`](Self::poll) (a new address gets its first check at once).
    pub fn handle_request(
        &mut self,
        msg: &Message<'_>,
        current: Option<SocketAddr>,
        (src, dst): (SocketAddr, Option<IpAddr>),
        now: Instant,
        rng: &dyn SecureRandom,
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
        let use_candidate = msg.attribute(attr::USE_CANDIDATE).is_some();
        let Some(current) = current else {
            // The first address: DTLS proves the round trip (module doc).
            self.last_valid = Some(now);
            self.nominated = use_candidate;
            return Ok(Validated::Moved);
        };
        if use_candidate {
            // The peer's latest nomination is the one that counts.
            self.nominated = current == src;
            for c in self.candidates.iter_mut().flatten() {
                c.nominated = c.addr == src;
            }
        }
        if current == src {
            self.last_valid = Some(now);
            return Ok(Validated::Same);
        }
        let slot = self
            .candidates
            .iter()
            .position(|c| c.is_some_and(|c| c.addr == src));
        let Some(k) = slot else {
            self.start((src, dst), use_candidate, now, rng);
            return Ok(Validated::Same);
        };
        let Some(c) = self.candidates[k].as_mut() else {
            return Ok(Validated::Same);
        };
        match c.check {
            Check::InFlight { .. } => Ok(Validated::Same),
            Check::Verified { .. } if c.verified(now) => {
                c.check = Check::Verified { last: now };
                Ok(self.adopt_if_chosen(k, now))
            }
            Check::Verified { .. } => {
                // Its consent lapsed: it has to answer again.
                self.candidates[k] = None;
                self.start((src, dst), use_candidate, now, rng);
                Ok(Validated::Same)
            }
        }
    }

    /// Check a STUN response from `src`, routed here by its transaction id. A valid answer
    /// verifies the address its check went to; [`Validated::Moved`] means the session's
    /// address is now `src`. The caller then drains [`poll`](Self::poll).
    pub fn handle_response(
        &mut self,
        msg: &Message<'_>,
        src: SocketAddr,
        now: Instant,
    ) -> Result<Validated, Reject> {
        if msg.class != Class::Success || msg.method != METHOD_BINDING {
            return Err(Reject::Unsolicited);
        }
        let k = self
            .candidates
            .iter()
            .position(|c| {
                c.is_some_and(|c| {
                    matches!(c.check, Check::InFlight { .. })
                        && c.transaction_id == msg.transaction_id
                        && c.addr == src
                })
            })
            .ok_or(Reject::Unsolicited)?;
        let key = self.remote_key.as_ref().ok_or(Reject::Integrity)?;
        if !msg.check_integrity_key(key) {
            return Err(Reject::Integrity);
        }
        if msg.attribute(attr::FINGERPRINT).is_some() && !msg.check_fingerprint() {
            return Err(Reject::Fingerprint);
        }
        let Some(c) = self.candidates[k].as_mut() else {
            return Err(Reject::Unsolicited);
        };
        c.check = Check::Verified { last: now };
        self.ended.push(c.transaction_id);
        Ok(self.adopt_if_chosen(k, now))
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

    /// The next check to send or transaction to forget, in order; `None` once nothing is
    /// due before [`poll_timeout`](Self::poll_timeout). Abandons verifications past
    /// [`VERIFY_TIMEOUT`].
    pub fn poll(&mut self, now: Instant) -> Option<Poll> {
        if let Some(t) = self.ended.pop() {
            return Some(Poll::Forget(t));
        }
        for slot in &mut self.candidates {
            let Some(c) = slot else { continue };
            let Check::InFlight {
                sent,
                next,
                deadline,
            } = &mut c.check
            else {
                continue;
            };
            if now >= *deadline {
                let t = c.transaction_id;
                *slot = None;
                return Some(Poll::Forget(t));
            }
            if *sent < MAX_TRANSMISSIONS && now >= *next {
                *sent += 1;
                *next = now + RETRANSMIT_INTERVAL;
                return Some(Poll::Check {
                    to: c.addr,
                    from: c.local,
                    transaction_id: c.transaction_id,
                });
            }
        }
        None
    }

    /// When [`poll`](Self::poll) has something next (a retransmission or an abandoned
    /// verification); `None` while no verification is in flight.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.candidates
            .iter()
            .flatten()
            .filter_map(|c| match c.check {
                Check::InFlight {
                    sent,
                    next,
                    deadline,
                } if sent < MAX_TRANSMISSIONS => Some(next.min(deadline)),
                Check::InFlight { deadline, .. } => Some(deadline),
                Check::Verified { .. } => None,
            })
            .min()
    }

    /// Write the check [`Poll::Check`] asked for into `out`: USERNAME `remote:local`,
    /// PRIORITY, ICE-CONTROLLED, MESSAGE-INTEGRITY under the peer's password, FINGERPRINT.
    pub fn write_check(&self, transaction_id: &[u8; 12], out: &mut [u8]) -> Option<usize> {
        let key = self.remote_key.as_ref()?;
        let mut w = Writer::new(out, Class::Request, METHOD_BINDING, transaction_id).ok()?;
        w.attribute(attr::USERNAME, &self.check_username).ok()?;
        w.attribute(attr::PRIORITY, &PRIORITY.to_be_bytes()).ok()?;
        w.attribute(attr::ICE_CONTROLLED, &self.tie_breaker.to_be_bytes())
            .ok()?;
        w.message_integrity_key(key).ok()?;
        w.fingerprint().ok()?;
        Some(w.finish())
    }

    /// Every transaction id the engine may still route here: those in flight and those
    /// ended but not yet reported. For cleaning up when the session goes.
    pub fn transactions(&self) -> impl Iterator<Item = [u8; 12]> + '_ {
        self.candidates
            .iter()
            .flatten()
            .filter(|c| matches!(c.check, Check::InFlight { .. }))
            .map(|c| c.transaction_id)
            .chain(self.ended.iter().copied())
    }

    /// Whether the peer's latest nomination is for the session's address.
    pub fn nominated(&self) -> bool {
        self.nominated
    }

    /// True once, when consent has lapsed: no valid check from the session's address for
    /// [`CONSENT_TIMEOUT`] (counted from creation when there never was one). Also lets
    /// verified candidates whose own consent lapsed go.
    pub fn expire(&mut self, now: Instant) -> bool {
        for slot in &mut self.candidates {
            if slot.is_some_and(|c| c.lapsed(now)) {
                *slot = None;
            }
        }
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

    /// Start verifying `addr` in a free slot (or a lapsed one), else, for a nomination, in
    /// the slot of a verified candidate the peer did not nominate. A verification in flight
    /// is never displaced: that is what bounds the checks a flood of spoofed sources gets
    /// sent, and a real peer repeats its nomination until a slot frees.
    fn start(
        &mut self,
        (addr, local): (SocketAddr, Option<IpAddr>),
        nominated: bool,
        now: Instant,
        rng: &dyn SecureRandom,
    ) {
        if self.remote_key.is_none() {
            return;
        }
        let free = self
            .candidates
            .iter()
            .position(|c| c.is_none_or(|c| c.lapsed(now)));
        let displaced = || {
            self.candidates
                .iter()
                .position(|c| c.is_some_and(|c| !c.nominated && c.verified(now)))
        };
        let Some(k) = free.or_else(|| nominated.then(displaced).flatten()) else {
            return;
        };
        let mut transaction_id = [0u8; 12];
        if rng.fill(&mut transaction_id).is_err() {
            // A guessable id would let a spoofer answer its own check: verify nothing.
            return;
        }
        // Never in flight (above), so its transaction was forgotten when it was answered.
        self.candidates[k] = Some(Candidate {
            addr,
            local,
            transaction_id,
            check: Check::InFlight {
                sent: 0,
                next: now,
                deadline: now + VERIFY_TIMEOUT,
            },
            nominated,
        });
    }

    /// Candidate `k` is verified: it becomes the session's address if the peer nominated it
    /// or the session's address has gone quiet.
    fn adopt_if_chosen(&mut self, k: usize, now: Instant) -> Validated {
        let quiet = self
            .last_valid
            .is_none_or(|t| now.saturating_duration_since(t) >= QUIET);
        let Some(c) = self.candidates[k].filter(|c| c.nominated || quiet) else {
            return Validated::Same;
        };
        self.candidates[k] = None;
        self.last_valid = Some(now);
        self.nominated = c.nominated;
        Validated::Moved
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
mod tests;
