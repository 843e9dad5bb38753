//! `[limits]` on session creation, as middleware: user tokens and anonymous addresses get a
//! cap of live sessions and a creation rate; 429 with `Retry-After` over either. The table
//! itself is [`super::quota`] (sans-IO); this decides who a request counts against and
//! settles its creation when the answer is out.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use switchyard_shared::command::SessionId;
use switchyard_shared::config::LimitsSection;

use super::auth::Caller;
use super::error::ApiError;
use super::quota::{Client, Quotas, Refusal};
use crate::core::counters::Counters;
use crate::services::sessions::Sessions;

/// Marks a response whose request created a session, so its caller's quota counts it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Created(pub SessionId);

/// The per-client session limits and what they need to see which sessions still live.
pub struct Limited {
    quotas: Mutex<Quotas>,
    sessions: Arc<Sessions>,
    counters: Arc<Counters>,
}

impl Limited {
    pub fn new(limits: &LimitsSection, sessions: Arc<Sessions>, counters: Arc<Counters>) -> Self {
        Self {
            quotas: Mutex::new(Quotas::new(limits)),
            sessions,
            counters,
        }
    }

    fn quotas(&self) -> MutexGuard<'_, Quotas> {
        // Every change is one small update; a poisoned table is still a usable one.
        self.quotas.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Gives an admitted creation back, also when the request is dropped half-way (the client
/// went away, or the deadline passed).
struct Settle<'a> {
    limited: &'a Limited,
    client: Client,
    created: Option<SessionId>,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.limited.quotas().settle(self.client, self.created);
    }
}

/// Whether a request makes a session: a WHIP or WHEP offer, or `POST /v1/sessions`.
fn creates_session(method: &Method, path: &str) -> bool {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    method == Method::POST
        && matches!(
            segs.as_slice(),
            ["whip" | "whep", _, _] | ["v1", "sessions"]
        )
}

/// `[limits]` on session creation: user tokens and anonymous addresses get a cap of live
/// sessions and a creation rate; 429 with `Retry-After` over either (`super::quota`).
pub(crate) async fn quota_check(
    State(limited): State<Arc<Limited>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !creates_session(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let caller = req.extensions().get::<Caller>().copied();
    let client = match caller {
        c if Caller::trusted(c.as_ref()) => return next.run(req).await,
        Some(Caller::User(token)) => Client::Token(token),
        _ => {
            // The server always sets the peer; without it every such caller shares one quota.
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
            Client::address(ip)
        }
    };
    let admitted = {
        let g = limited.sessions.lock();
        limited
            .quotas()
            .admit(client, Instant::now(), |id| g.node.session(id).is_some())
    };
    if let Err(refusal) = admitted {
        let m = &limited.counters;
        match refusal {
            Refusal::Sessions(_) => &m.throttled_quota,
            Refusal::Rate { .. } => &m.throttled_rate,
        }
        .fetch_add(1, Ordering::Relaxed);
        let secs = refusal.retry_after().as_secs_f64().ceil().max(1.0);
        let mut resp =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, refusal.to_string()).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs as u64));
        return resp;
    }
    let mut settle = Settle {
        limited: &limited,
        client,
        created: None,
    };
    let resp = next.run(req).await;
    settle.created = resp.extensions().get::<Created>().map(|c| c.0);
    drop(settle);
    resp
}
