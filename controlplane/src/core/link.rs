//! The ring link: one thread that attaches to the data plane's command ring, feeds every
//! event into [`NodeState`] and pushes the commands it asks for.
//!
//! The data plane creates the ring, so the link retries attaching every 200 ms until one is
//! there, and again whenever the data plane replaces the file. Services push their own
//! commands directly (under the same lock), so a full ring is an error they can answer with;
//! the link's own commands (snapshot requests, re-provisioning) wait in a local backlog
//! instead, because nobody could act on that error.
//!
//! A corrupt ring (impossible indices, found by either end or marked by the data plane) is
//! logged once; the link then leaves the ring alone, `/health` says `"ring": "corrupt"` with
//! 503, and API pushes get 503, until the data plane has recreated the file, which the
//! link attaches to like any replaced one.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use switchyard_shared::command::{self, Command, Event};
use switchyard_shared::config::Config;
use switchyard_shared::ring::{self, Consumer, ControlSide, Producer, PushError, RingError};
use switchyard_shared::stats::Stats;
use tokio::sync::mpsc;

use super::counters;
use super::histogram;
use super::state::{NodeState, SessionChange};
use super::traffic::Traffic;

/// The traffic sampling task (spawned by `start.rs`): a sample of every session each
/// [`SAMPLE_INTERVAL`](super::traffic::SAMPLE_INTERVAL), until aborted.
pub async fn sample_traffic(link: Arc<Link>) {
    let mut tick = tokio::time::interval(super::traffic::SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        link.lock().sample_traffic(std::time::Instant::now());
    }
}

const ATTACH_RETRY: Duration = Duration::from_millis(200);
/// Longest the link sleeps on the event ring; also how often it checks the data plane pid.
const POLL: Duration = Duration::from_millis(50);
/// Session changes waiting for the room events task; beyond this they are dropped (counted).
const CHANGES: usize = 1024;

/// The node's session table and the command ring to the data plane, as the link thread
/// keeps them and the services read and push through them.
pub struct Link {
    inner: Mutex<Inner>,
    ring_path: PathBuf,
    stats_path: PathBuf,
    /// Sessions started and ended, for the room events task (bounded; full = dropped).
    changes: mpsc::Sender<SessionChange>,
}

pub struct Inner {
    pub node: NodeState,
    producer: Option<Producer>,
    pub stats: Option<Stats>,
    /// Bitrates and per-stream totals, sampled from `stats` once a second.
    pub traffic: Traffic,
    ring: RingHealth,
}

/// The command ring as the link last found it, for `/health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingHealth {
    /// Not attached: no ring yet (the data plane has not made one), or between two files.
    Detached,
    Ok,
    /// Found corrupt; the link waits for the data plane to recreate the file.
    Corrupt,
}

impl RingHealth {
    /// The value of `ring` in `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            RingHealth::Detached => "detached",
            RingHealth::Ok => "ok",
            RingHealth::Corrupt => "corrupt",
        }
    }
}

/// Why a command did not reach the ring.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("not attached to the data plane's command ring")]
    Detached,
    #[error("command ring is full; the data plane is not keeping up")]
    Full,
    #[error("command does not encode: {0}")]
    Encode(#[from] command::CodecError),
}

impl Inner {
    /// Push one command now.
    pub fn send(&mut self, cmd: &Command) -> Result<(), SendError> {
        let mut buf = Vec::with_capacity(256);
        command::encode(cmd, &mut buf)?;
        let p = self.producer.as_mut().ok_or(SendError::Detached)?;
        match p.push(&buf) {
            Ok(()) => Ok(()),
            Err(PushError::Full) => Err(SendError::Full),
            Err(PushError::TooLarge) => Err(SendError::Encode(command::CodecError::TooLarge)),
            Err(PushError::Corrupt) => {
                let why = p.corruption().unwrap_or("command ring corrupt").to_owned();
                self.ring_corrupt(&why);
                Err(SendError::Detached)
            }
        }
    }

    /// The ring is corrupt (the end that found it has marked the file): stop using it and
    /// say so, once; the link waits for the data plane to recreate it.
    fn ring_corrupt(&mut self, why: &str) {
        if self.ring != RingHealth::Corrupt {
            tracing::error!(error = %why, "command ring corrupt; waiting for the data plane to recreate it");
        }
        self.ring = RingHealth::Corrupt;
        self.producer = None;
        self.node.detached();
    }

    /// The command ring as the link last found it.
    pub fn ring_health(&self) -> RingHealth {
        self.ring
    }

    /// Commands pushed but not yet read by the data plane.
    pub fn ring_depth(&self) -> Option<usize> {
        self.producer.as_ref().map(Producer::len)
    }
}

impl Link {
    /// The link of `config`'s node, not attached yet, and the receiving end of its session
    /// changes (for the room events task).
    pub fn new(config: &Config) -> (Self, mpsc::Receiver<SessionChange>) {
        let (changes, changes_rx) = mpsc::channel(CHANGES);
        let link = Self {
            inner: Mutex::new(Inner {
                node: NodeState::new(),
                producer: None,
                stats: None,
                traffic: Traffic::default(),
                ring: RingHealth::Detached,
            }),
            ring_path: config.ring_path(),
            stats_path: config.stats_path(),
            changes,
        };
        (link, changes_rx)
    }

    /// The lock is only held for table updates and ring pushes, never across an await; a
    /// panic while holding it cannot leave the table half-updated in a way worse than the
    /// panic itself, so a poisoned lock is used as is.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Join and handshake times, from the events as they arrive (before `apply`, which may
/// forget the session). The clock read here, not in `NodeState`, keeps that sans-IO.
fn time_joins(node: &NodeState, ev: &Event) {
    let l = histogram::latency();
    match ev {
        Event::RemoteLatched { id, .. } if node.dtls_pending(*id) => {
            l.latched(*id, std::time::Instant::now());
        }
        Event::DtlsConnected { id, .. } => {
            l.connected(*id, std::time::Instant::now());
            if let Some(spec) = node.session(*id) {
                let since = super::clock::now_ms().saturating_sub(spec.created_ms);
                let h = if super::traffic::is_publisher(&spec.role) {
                    &l.whip_join
                } else {
                    &l.whep_join
                };
                h.observe(Duration::from_millis(since));
            }
        }
        Event::DtlsFailed { id, .. } | Event::SessionRemoved { id, .. } => l.ended(*id),
        _ => {}
    }
}

impl Inner {
    /// Take a traffic sample (see [`Traffic::sample`]); nothing without a stats file.
    pub fn sample_traffic(&mut self, now: std::time::Instant) {
        if let Some(stats) = &self.stats {
            self.traffic.sample(now, &self.node, stats);
        }
    }
}

/// Start the link thread; it runs until `stop` is set.
pub fn spawn(
    link: Arc<Link>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("swy-ring-link".into())
        .spawn(move || run(&link, &stop))
}

fn run(link: &Link, stop: &AtomicBool) {
    let path = link.ring_path.clone();
    let mut waiting_logged = false;
    while !stop.load(Ordering::Relaxed) {
        let side = match ring::attach_control(&path) {
            Ok(side) => side,
            Err(e) => {
                // A file the data plane has not replaced yet after one of the ends marked it.
                link.lock().ring = match e {
                    RingError::Corrupt(_) => RingHealth::Corrupt,
                    _ => RingHealth::Detached,
                };
                if !waiting_logged {
                    tracing::info!(ring = %path.display(), error = %e, "waiting for the data plane's command ring");
                    waiting_logged = true;
                }
                std::thread::sleep(ATTACH_RETRY);
                continue;
            }
        };
        waiting_logged = false;
        tracing::info!(ring = %path.display(), "attached to the data plane");
        serve(link, stop, side);
    }
}

/// Serve one attachment until the file is replaced or `stop` is set.
fn serve(link: &Link, stop: &AtomicBool, side: ControlSide) {
    let ControlSide {
        commands,
        mut events,
    } = side;
    let mut backlog = VecDeque::new();
    {
        let mut g = link.lock();
        g.producer = Some(commands);
        g.ring = RingHealth::Ok;
        backlog.push_back(g.node.attached());
    }
    let mut buf = Vec::with_capacity(command::MAX_MESSAGE);
    let mut alive_before = true;
    while !stop.load(Ordering::Relaxed) {
        events.wait(POLL);
        let mut g = link.lock();
        loop {
            match events.pop(&mut buf) {
                Ok(true) => match command::decode::<Event>(&buf) {
                    Ok(ev) => {
                        tracing::debug!(?ev, "event");
                        time_joins(&g.node, &ev);
                        let fx = g.node.apply(ev);
                        if fx.reopen_stats {
                            g.stats = open_stats(&link.stats_path);
                        }
                        backlog.extend(fx.commands);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable event dropped"),
                },
                Ok(false) => break,
                // One unreadable slot, skipped; the ring goes on.
                Err(RingError::BadMessage(e)) => tracing::warn!(error = %e, "event dropped"),
                Err(e) => {
                    g.ring_corrupt(&e.to_string());
                    break;
                }
            }
        }
        // The command ring is looked at here too, not only when an API request pushes: the
        // control plane alone can tell that its own index was overwritten.
        if let Some(Err(e)) = g.producer.as_mut().map(Producer::check) {
            g.ring_corrupt(&e.to_string());
        }
        if g.ring == RingHealth::Corrupt {
            drop(g);
            return wait_for_new_ring(stop, &events);
        }
        for c in g.node.take_changes() {
            if link.changes.try_send(c).is_err() {
                counters::cluster()
                    .events_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some(cmd) = backlog.front() {
            match g.send(cmd) {
                Ok(()) => {
                    backlog.pop_front();
                }
                Err(SendError::Full) => break,
                Err(e) => {
                    tracing::error!(error = %e, ?cmd, "command dropped");
                    backlog.pop_front();
                }
            }
        }
        let alive = g
            .node
            .dataplane()
            .is_none_or(|d| Path::new(&format!("/proc/{}", d.pid)).exists());
        if alive != alive_before {
            if alive {
                tracing::info!("data plane is back");
            } else {
                tracing::warn!("data plane process is gone; waiting for it to restart");
            }
            alive_before = alive;
        }
        g.node.set_alive(alive);
        if g.producer.as_ref().is_some_and(Producer::replaced) {
            tracing::warn!("the data plane replaced the command ring; attaching again");
            g.producer = None;
            g.ring = RingHealth::Detached;
            g.node.detached();
            return;
        }
    }
}

/// After a corrupt ring: stay off it (no pops, no pushes, a look every 200 ms) until the data
/// plane has put a new file in its place, which it does at once if it runs or when it
/// starts; then `run` attaches to that one.
fn wait_for_new_ring(stop: &AtomicBool, events: &Consumer) {
    while !stop.load(Ordering::Relaxed) {
        if events.replaced() {
            tracing::info!("the data plane recreated the command ring; attaching again");
            return;
        }
        std::thread::sleep(ATTACH_RETRY);
    }
}

fn open_stats(path: &Path) -> Option<Stats> {
    match Stats::open(path) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "stats file unavailable; /metrics has no worker counters");
            None
        }
    }
}
