//! Fixed-bucket histograms for `/metrics`: a count per bucket, the sum and the count, all
//! atomics, so recording is three relaxed adds and never takes a lock. The buckets are
//! chosen per histogram (docs/operations.md says why each has its bounds); the exposition
//! cumulates them at scrape time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use switchyard_shared::command::SessionId;

/// HTTP request durations: an API answer is sub-millisecond to a few ms; a request that
/// waits on the data plane ends by 2 s (its timeout → 504), so 2.5 s closes the range.
pub const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// WHIP/WHEP join (POST to DTLS connected): ICE and DTLS take one to a few round trips
/// after the browser gathers candidates (100 ms to 2 s); 30 s is ICE consent's end.
pub const JOIN_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0];
/// DTLS handshake (ICE latched to DTLS connected): two round trips plus the certificate
/// work; DTLS retransmits after 1 s, doubling, so the upper buckets show lost flights.
pub const DTLS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound plus +Inf; not cumulative (see [`Histogram::cumulative`]).
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// (upper bound, cumulative count) per bucket, `+Inf` last as `f64::INFINITY`; then the
    /// sum in seconds and the count.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            let le = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            out.push((le, total));
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (out, sum, total)
    }
}

/// The latency histograms of this process, recorded from the HTTP middleware and from the
/// ring link thread (where DTLS events arrive). One per process like the cluster counters:
/// the link thread is started deep inside `core::link`, and threading a handle there buys
/// nothing.
#[derive(Debug)]
pub struct Latency {
    /// By (route template, status class).
    http: Mutex<BTreeMap<(String, &'static str), Histogram>>,
    pub whip_join: Histogram,
    pub whep_join: Histogram,
    pub dtls_handshake: Histogram,
    /// When each DTLS session's peer was latched by ICE, until it connects or ends. At most
    /// one entry per live session.
    latched: Mutex<HashMap<SessionId, Instant>>,
}

/// Every update is one map operation: a poisoned lock still holds consistent values.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn latency() -> &'static Latency {
    static L: OnceLock<Latency> = OnceLock::new();
    L.get_or_init(|| Latency {
        http: Mutex::new(BTreeMap::new()),
        whip_join: Histogram::new(JOIN_BUCKETS),
        whep_join: Histogram::new(JOIN_BUCKETS),
        dtls_handshake: Histogram::new(DTLS_BUCKETS),
        latched: Mutex::new(HashMap::new()),
    })
}

/// `2xx`, `4xx`, …: the status class label (five values at most).
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

impl Latency {
    /// One answered request. `route` is the matched route template (bounded by the
    /// router), never the raw path, so a client cannot mint series.
    pub fn http(&self, route: &str, status: u16, d: Duration) {
        let mut g = locked(&self.http);
        let key = (route.to_owned(), status_class(status));
        g.entry(key)
            .or_insert_with(|| Histogram::new(HTTP_BUCKETS))
            .observe(d);
    }

    /// Run `f` over the HTTP histograms, in label order.
    pub fn each_http(&self, mut f: impl FnMut(&str, &str, &Histogram)) {
        for ((route, class), h) in locked(&self.http).iter() {
            f(route, class, h);
        }
    }

    /// ICE latched a DTLS session's peer at `now`: its handshake starts (the first latch
    /// counts; a later move does not restart it).
    pub fn latched(&self, id: SessionId, now: Instant) {
        locked(&self.latched).entry(id).or_insert(now);
    }

    /// The session connected at `now`: its handshake time, if its latch was seen.
    pub fn connected(&self, id: SessionId, now: Instant) {
        if let Some(t) = locked(&self.latched).remove(&id) {
            self.dtls_handshake
                .observe(now.saturating_duration_since(t));
        }
    }

    /// The session ended or failed: forget its latch.
    pub fn ended(&self, id: SessionId) {
        locked(&self.latched).remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_inf_last() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(100));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(3));
        let (b, sum, n) = h.cumulative();
        assert_eq!(b, [(0.1, 2), (1.0, 3), (f64::INFINITY, 4)]);
        assert_eq!(n, 4);
        assert!((sum - 3.65).abs() < 1e-9);
    }
}
