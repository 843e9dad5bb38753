//! The session service: every way of making a session (the REST API's static-key sessions,
//! WHIP/WHEP, relays, forwards) ends in [`Sessions::provision`], and every way of ending one
//! in [`Sessions::remove`]. Both push a command under the table's lock and then wait, without
//! the lock, for the data plane's answer ([`COMMAND_TIMEOUT`]; a late confirmation of an
//! abandoned add is removed again by the table).
//!
//! - [`rtp`]: `POST /v1/sessions`' request (plain RTP with static SRTP keys), checked and made
//!   into a spec.
//! - [`fetch`]: a stream's cached group as a file (`GET /v1/streams/{room}/{stream}/fetch`).

pub mod fetch;
pub mod rtp;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use switchyard_shared::command::{
    Command, CommandError, Role, SessionId, SessionSpec, Simulcast, SrtpKeys,
};
use switchyard_shared::config::MediaSection;

use crate::core::counters::Counters;
use crate::core::link::{Inner, Link, SendError};
use crate::core::state::{DataplaneInfo, NodeState, NotReady};

/// How long a request waits for the data plane to answer a command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session was not made or removed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    NotReady(#[from] NotReady),
    #[error("the data plane has not said hello yet")]
    NoHello,
    #[error("worker: {worker} is out of range; the data plane has {workers}")]
    NoSuchWorker { worker: u16, workers: u16 },
    #[error("worker {worker} is at its limit of {max} sessions")]
    WorkerFull { worker: u16, max: u32 },
    #[error(transparent)]
    Ring(#[from] SendError),
    /// The data plane refused the command.
    #[error("{}", refusal_text(.0))]
    Refused(CommandError),
    #[error("the data plane did not answer in time")]
    AddTimeout,
    #[error("the data plane did not answer in time; the removal is still queued")]
    RemoveTimeout,
    #[error("no such session")]
    NotFound,
    #[error("not a subscriber: only what a subscriber receives has layers to choose")]
    NotSubscriber,
    /// The node is shutting down (SIGTERM or a drain with `shutdown`): it takes no new
    /// sessions while the ones it has finish.
    #[error("this node is shutting down and takes no new sessions; try again (another node)")]
    ShuttingDown,
}

impl SessionError {
    /// Whether the session is not there (anymore): nothing is left to remove.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            SessionError::NotFound | SessionError::Refused(CommandError::UnknownSession)
        )
    }
}

fn refusal_text(e: &CommandError) -> String {
    match e {
        CommandError::StreamBusy => "stream busy: the stream already has a publisher".to_owned(),
        e => e.to_string(),
    }
}

/// The session service. Cheap to share (`Arc`); every part that makes sessions holds one.
pub struct Sessions {
    link: Arc<Link>,
    counters: Arc<Counters>,
    media: MediaSection,
    /// Set once at shutdown: no new sessions from then on.
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Sessions {
    pub fn new(link: Arc<Link>, counters: Arc<Counters>, media: MediaSection) -> Self {
        Self {
            link,
            counters,
            media,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Take no new sessions from now on (the ones there are go on until they end).
    pub fn shut_down(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// WHIP and WHEP sessions this node holds now: what a graceful shutdown waits for.
    /// Relays and forwards follow the peers (a relay-in ends when its viewers left), and
    /// plain RTP sessions belong to an API client that may never end them.
    pub fn peers(&self) -> usize {
        self.link
            .lock()
            .node
            .sessions()
            .filter(|s| s.ice.is_some())
            .count()
    }

    /// The session table and the ring, for reading (held briefly, never across an await).
    /// How long session `id` has received nothing from its peer (a relay-in: from its
    /// source node). `None`: no data plane, no such session, or nothing received yet.
    pub fn quiet_for(&self, id: SessionId) -> Option<std::time::Duration> {
        let g = self.lock();
        let stats = g.stats.as_ref()?;
        let spec = g.node.session(id)?;
        let last = stats.find(usize::from(spec.worker), id.0)?.last_rx?;
        Some(stats.age(last))
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.link.lock()
    }

    /// `[media]`: the addresses and ports sessions are reached on.
    pub fn media(&self) -> &MediaSection {
        &self.media
    }

    /// The data plane's relay base port as its `Hello` said (the configured one before that).
    pub fn relay_base(&self, node: &NodeState) -> u16 {
        node.dataplane()
            .map_or(self.media.relay_port, |d| d.relay_port)
    }

    /// Place a new session on a worker (`want`, or the least loaded), let `build` make its
    /// spec (and whatever else the caller needs, e.g. an SDP answer) for that id and worker,
    /// and add it to the data plane. Returns once the data plane confirmed it.
    pub async fn provision<T, E: From<SessionError>>(
        &self,
        want: Option<u16>,
        build: impl FnOnce(SessionId, u16, &DataplaneInfo) -> Result<(SessionSpec, T), E>,
    ) -> Result<(SessionSpec, T), E> {
        if self.shutting_down() {
            return Err(SessionError::ShuttingDown.into());
        }
        let (spec, extra, rx) = {
            let mut g = self.link.lock();
            g.node.ready().map_err(SessionError::from)?;
            let Some(dp) = g.node.dataplane().cloned() else {
                return Err(SessionError::NoHello.into());
            };
            let workers = dp.workers;
            let load = g.node.load(workers);
            let max = self.media.max_sessions_per_worker;
            let worker = match want {
                Some(w) if w >= workers => {
                    return Err(SessionError::NoSuchWorker { worker: w, workers }.into())
                }
                Some(w) => w,
                None => (0..workers)
                    .min_by_key(|&w| load.get(usize::from(w)).copied().unwrap_or(u32::MAX))
                    .unwrap_or(0),
            };
            if load.get(usize::from(worker)).copied().unwrap_or(0) >= max {
                return Err(SessionError::WorkerFull { worker, max }.into());
            }
            let id = g.node.allocate_id();
            let (spec, extra) = build(id, worker, &dp)?;
            let (cmd, rx) = g.node.begin_add(spec.clone());
            if let Err(e) = g.send(&cmd) {
                g.node.cancel_add(spec.id);
                self.counters
                    .sessions_refused
                    .fetch_add(1, Ordering::Relaxed);
                return Err(SessionError::from(e).into());
            }
            (spec, extra, rx)
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => {
                self.counters
                    .sessions_created
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(id = spec.id.0, stream = %spec.stream, worker = spec.worker, role = spec.role.name(), "session created");
                Ok((spec, extra))
            }
            Ok(Ok(Err(e))) => {
                self.counters
                    .sessions_refused
                    .fetch_add(1, Ordering::Relaxed);
                Err(SessionError::Refused(e).into())
            }
            Ok(Err(_)) | Err(_) => {
                self.link.lock().node.abandon_add(spec.id);
                self.counters
                    .sessions_refused
                    .fetch_add(1, Ordering::Relaxed);
                Err(SessionError::AddTimeout.into())
            }
        }
    }

    /// Remove a session and wait for the data plane to confirm.
    pub async fn remove(&self, id: SessionId) -> Result<(), SessionError> {
        let rx = {
            let mut g = self.link.lock();
            g.node.ready()?;
            let (cmd, rx) = g.node.begin_remove(id).ok_or(SessionError::NotFound)?;
            if let Some(cmd) = cmd {
                if let Err(e) = g.send(&cmd) {
                    g.node.cancel_remove(id);
                    return Err(e.into());
                }
            }
            rx
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => {
                self.counters
                    .sessions_removed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(id = id.0, "session removed");
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(SessionError::Refused(e)),
            Ok(Err(_)) | Err(_) => {
                // Forget the waiters so a retried DELETE sends the command again; a late
                // answer to this one still removes the session from the table.
                self.link.lock().node.cancel_remove(id);
                Err(SessionError::RemoveTimeout)
            }
        }
    }

    /// Subscriber `id` receives simulcast layers up to rank `max_layer` (0: the lowest
    /// quality its publisher sends; `None`: no cap, the best the publisher sends). The data
    /// plane applies it at the next keyframe of the layer it picks; nothing is waited for
    /// (there is no answer to wait for: a session that ended meanwhile has nothing to cap).
    /// Not kept across a data plane restart.
    pub fn set_max_layer(&self, id: SessionId, max_layer: Option<u8>) -> Result<(), SessionError> {
        let mut g = self.link.lock();
        g.node.ready()?;
        let spec = g.node.session(id).ok_or(SessionError::NotFound)?;
        if !matches!(spec.role, Role::Subscriber { .. }) {
            return Err(SessionError::NotSubscriber);
        }
        let max_layer = max_layer.unwrap_or(u8::MAX);
        g.send(&Command::SetMaxLayer { id, max_layer })?;
        Ok(())
    }

    /// Cap the VP8 temporal layers subscriber `id` takes of simulcast layers (`None`: no
    /// cap).
    pub fn set_max_temporal(
        &self,
        id: SessionId,
        max_temporal: Option<u8>,
    ) -> Result<(), SessionError> {
        let mut g = self.link.lock();
        g.node.ready()?;
        let spec = g.node.session(id).ok_or(SessionError::NotFound)?;
        if !matches!(spec.role, Role::Subscriber { .. }) {
            return Err(SessionError::NotSubscriber);
        }
        let max_temporal = max_temporal.unwrap_or(u8::MAX);
        g.send(&Command::SetMaxTemporal { id, max_temporal })?;
        Ok(())
    }

    /// Relay-in `id` is fed by another source from now on (`Command::RetargetRelayIn`):
    /// the new link key and the new source publisher's SSRCs and layers. The session and
    /// its viewers stay; the spec kept here follows, so a restarted data plane gets the new
    /// key. Not answered by the data plane (it was checked here).
    pub fn retarget_relay_in(
        &self,
        id: SessionId,
        keys: SrtpKeys,
        ssrcs: Vec<u32>,
        simulcast: Option<Simulcast>,
        video: Vec<Option<switchyard_shared::command::VideoCodec>>,
    ) -> Result<(), SessionError> {
        let mut g = self.link.lock();
        g.node.ready()?;
        let spec = g.node.session(id).ok_or(SessionError::NotFound)?;
        if !matches!(spec.role, Role::RelayIn { .. }) {
            return Err(SessionError::NotFound);
        }
        g.send(&Command::RetargetRelayIn {
            id,
            keys: keys.clone(),
            ssrcs: ssrcs.clone(),
            simulcast: simulcast.clone(),
            video: video.clone(),
        })?;
        g.node.retarget_relay_in(id, keys, ssrcs, simulcast, video);
        Ok(())
    }

    /// Streams with a publisher here (a WebRTC or plain publisher, or a relay that feeds this
    /// node) whose name starts with `prefix`, sorted, each with its number of subscribers.
    pub fn streams(&self, prefix: &str) -> Vec<(String, usize)> {
        let g = self.link.lock();
        published_streams(
            g.node.sessions().map(|s| {
                (
                    s.stream.as_str(),
                    matches!(s.role, Role::Publisher { .. } | Role::RelayIn { .. }),
                )
            }),
            prefix,
        )
        .into_iter()
        .map(|(stream, subscribers)| (stream.to_owned(), subscribers))
        .collect()
    }
}

/// From `(stream, is_publisher)` per session: the streams starting with `prefix` that have a
/// publisher, sorted, each with its number of subscribers.
fn published_streams<'a>(
    sessions: impl IntoIterator<Item = (&'a str, bool)>,
    prefix: &str,
) -> Vec<(&'a str, usize)> {
    let mut streams = BTreeMap::<&str, (bool, usize)>::new();
    for (stream, publisher) in sessions {
        if !stream.starts_with(prefix) {
            continue;
        }
        let e = streams.entry(stream).or_default();
        if publisher {
            e.0 = true;
        } else {
            e.1 += 1;
        }
    }
    streams
        .into_iter()
        .filter(|(_, (published, _))| *published)
        .map(|(stream, (_, subscribers))| (stream, subscribers))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::published_streams;

    #[test]
    fn streams_filter_by_prefix() {
        let sessions = [
            ("room1/cam", true),
            ("room1/cam", false),
            ("room1/cam", false),
            ("room1/screen", true),
            ("room10/cam", true),
            ("room2/cam", true),
            ("room1/watch-only", false),
        ];
        assert_eq!(
            published_streams(sessions, "room1/"),
            vec![("room1/cam", 2), ("room1/screen", 0)]
        );
        assert_eq!(published_streams(sessions, "").len(), 4);
        assert_eq!(published_streams(sessions, "room3/"), vec![]);
    }
}
