//! Per-client limits on session creation (`[limits]`): a cap on the live sessions a client
//! holds and a token bucket on how fast it makes them, so one client cannot fill a worker's
//! session table while everybody else gets 503.
//!
//! A client is a user token ([`TokenId`]) or, without a token (the public prefix), a source
//! address: an IPv4 address, or an IPv6 /64 (one host is usually given a whole /64). Cluster
//! tokens, and every caller while auth is off, are not limited (the caller decides, see
//! `super::limits::quota_check`).
//!
//! Sans-IO: the caller passes the time and a way to ask whether a session still lives, so
//! sessions that ended any way at all (DELETE, ICE timeout, data plane restart) stop counting
//! without this module hearing of it. Memory is bounded by the live sessions plus the clients
//! whose bucket is still refilling: [`Quotas::admit`] sweeps the rest once the table has
//! doubled since the last sweep.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use switchyard_shared::command::SessionId;
use switchyard_shared::config::LimitsSection;

use super::auth::TokenId;

/// The table is swept (idle clients forgotten) when it grows past this, then past twice what
/// the last sweep left.
const SWEEP_FLOOR: usize = 1024;

/// Whose quota a session creation counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    Token(TokenId),
    /// An IPv4 address, or an IPv6 address with its last 64 bits zeroed.
    Address(IpAddr),
}

impl Client {
    /// The client an anonymous request from `ip` counts as.
    pub fn address(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !u128::from(u64::MAX);
                Self::Address(IpAddr::V6(bits.into()))
            }
            v4 => Self::Address(v4),
        }
    }
}

/// Why a creation is refused (429).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this client holds {0} live sessions, its limit; end one first")]
    Sessions(u32),
    #[error("sessions are created too fast by this client; retry later")]
    Rate {
        /// When the bucket has a token again.
        retry_after: Duration,
    },
}

impl Refusal {
    /// The `Retry-After` the answer carries: for the session cap, a guess at when the client
    /// may have ended one.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Sessions(_) => Duration::from_secs(5),
            Self::Rate { retry_after } => *retry_after,
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Sessions made under this client, pruned of ended ones at each admission.
    sessions: Vec<SessionId>,
    /// Admitted creations still running (they count against the cap until settled).
    pending: u32,
    /// Creations left in the bucket, as of `refilled`.
    tokens: u32,
    refilled: Instant,
}

/// The limits and every client's use of them.
#[derive(Debug)]
pub struct Quotas {
    per_token: u32,
    per_address: u32,
    burst: u32,
    interval: Duration,
    clients: HashMap<Client, Entry>,
    sweep_at: usize,
}

impl Quotas {
    pub fn new(limits: &LimitsSection) -> Self {
        Self {
            per_token: limits.sessions_per_token,
            per_address: limits.sessions_per_address,
            burst: limits.session_burst.max(1),
            interval: Duration::from_millis(limits.session_interval_ms.max(1)),
            clients: HashMap::new(),
            sweep_at: SWEEP_FLOOR,
        }
    }

    /// May `client` create a session now? On `Ok` a creation is counted as pending until
    /// [`Self::settle`]; `live` says whether a session id still exists.
    pub fn admit(
        &mut self,
        client: Client,
        now: Instant,
        live: impl Fn(SessionId) -> bool,
    ) -> Result<(), Refusal> {
        if self.clients.len() >= self.sweep_at {
            self.sweep(now, &live);
        }
        let cap = match client {
            Client::Token(_) => self.per_token,
            Client::Address(_) => self.per_address,
        };
        let (burst, interval) = (self.burst, self.interval);
        let e = self.clients.entry(client).or_insert(Entry {
            sessions: Vec::new(),
            pending: 0,
            tokens: burst,
            refilled: now,
        });
        refill(e, now, burst, interval);
        e.sessions.retain(|&id| live(id));
        let held = u32::try_from(e.sessions.len())
            .unwrap_or(u32::MAX)
            .saturating_add(e.pending);
        if held >= cap {
            return Err(Refusal::Sessions(cap));
        }
        if e.tokens == 0 {
            let next = e.refilled + interval;
            return Err(Refusal::Rate {
                retry_after: next.saturating_duration_since(now),
            });
        }
        e.tokens -= 1;
        e.pending += 1;
        Ok(())
    }

    /// An admitted creation ended: `created` is its session when it made one.
    pub fn settle(&mut self, client: Client, created: Option<SessionId>) {
        if let Some(e) = self.clients.get_mut(&client) {
            e.pending = e.pending.saturating_sub(1);
            e.sessions.extend(created);
        }
    }

    /// Forget clients with nothing live, nothing pending and a full bucket.
    fn sweep(&mut self, now: Instant, live: &impl Fn(SessionId) -> bool) {
        let (burst, interval) = (self.burst, self.interval);
        self.clients.retain(|_, e| {
            refill(e, now, burst, interval);
            e.sessions.retain(|&id| live(id));
            !e.sessions.is_empty() || e.pending > 0 || e.tokens < burst
        });
        self.sweep_at = (self.clients.len() * 2).max(SWEEP_FLOOR);
    }

    /// Clients in the table.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.clients.len()
    }
}

/// Add the tokens earned since `refilled`, up to `burst`.
fn refill(e: &mut Entry, now: Instant, burst: u32, interval: Duration) {
    let earned = now.saturating_duration_since(e.refilled).as_nanos() / interval.as_nanos();
    if earned == 0 {
        return;
    }
    let earned = u32::try_from(earned).unwrap_or(u32::MAX);
    if e.tokens.saturating_add(earned) >= burst {
        e.tokens = burst;
        e.refilled = now;
    } else {
        e.tokens += earned;
        e.refilled += interval * earned;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(per_token: u32, per_address: u32, burst: u32, interval_ms: u64) -> Quotas {
        Quotas::new(&LimitsSection {
            sessions_per_token: per_token,
            sessions_per_address: per_address,
            session_burst: burst,
            session_interval_ms: interval_ms,
        })
    }

    fn ip(s: &str) -> Client {
        Client::address(s.parse().expect("ip"))
    }

    #[test]
    fn live_sessions_are_capped_and_come_back_when_they_end() {
        let mut q = quotas(10, 2, 100, 1);
        let t = Instant::now();
        let a = ip("192.0.2.1");
        let live = std::cell::RefCell::new(vec![SessionId(1), SessionId(2)]);
        let is_live = |id| live.borrow().contains(&id);
        for id in [1, 2] {
            q.admit(a, t, is_live).expect("under the cap");
            q.settle(a, Some(SessionId(id)));
        }
        assert_eq!(q.admit(a, t, is_live), Err(Refusal::Sessions(2)));
        // Another address is another client.
        assert!(q.admit(ip("192.0.2.2"), t, is_live).is_ok());
        live.borrow_mut().retain(|&id| id != SessionId(1));
        assert!(
            q.admit(a, t, is_live).is_ok(),
            "an ended session frees its place"
        );
    }

    #[test]
    fn pending_creations_count_and_failures_give_back() {
        let mut q = quotas(10, 1, 100, 1);
        let t = Instant::now();
        let a = ip("192.0.2.1");
        q.admit(a, t, |_| true).expect("first");
        assert_eq!(
            q.admit(a, t, |_| true),
            Err(Refusal::Sessions(1)),
            "a creation in flight holds its place"
        );
        q.settle(a, None);
        assert!(
            q.admit(a, t, |_| true).is_ok(),
            "a failed creation gives it back"
        );
    }

    #[test]
    fn creation_rate_is_a_token_bucket() {
        let mut q = quotas(100, 100, 3, 1000);
        let t = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            q.admit(a, t, |_| false).expect("burst");
            q.settle(a, None);
        }
        let wait = match q.admit(a, t + Duration::from_millis(400), |_| false) {
            Err(Refusal::Rate { retry_after }) => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(wait, Duration::from_millis(600));
        assert!(q
            .admit(a, t + Duration::from_millis(1000), |_| false)
            .is_ok());
        assert!(matches!(
            q.admit(a, t + Duration::from_millis(1500), |_| false),
            Err(Refusal::Rate { .. })
        ));
        // A long pause refills the bucket up to the burst only.
        let later = t + Duration::from_secs(60);
        for _ in 0..3 {
            q.admit(a, later, |_| false).expect("refilled");
        }
        assert!(q.admit(a, later, |_| false).is_err());
    }

    #[test]
    fn ipv6_clients_are_slash_64s_and_v4_mapped_is_v4() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let mut q = quotas(10, 10, 2, 10);
        let t = Instant::now();
        for i in 0..SWEEP_FLOOR as u32 {
            let c = Client::address(IpAddr::V4(i.into()));
            q.admit(c, t, |_| false).expect("admit");
            q.settle(c, None);
        }
        assert_eq!(q.clients(), SWEEP_FLOOR);
        // Their buckets are full again and nothing of theirs lives: the next admission
        // sweeps them.
        q.admit(ip("198.51.100.1"), t + Duration::from_secs(1), |_| false)
            .expect("admit");
        assert_eq!(q.clients(), 1);
    }
}
