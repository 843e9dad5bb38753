//! One worker thread: pinned to a core, two sockets (media and relay), one I/O engine, one
//! [`Engine`].
//!
//! Each loop turn: apply slow-path commands, handle messages from other workers, run the
//! engine's timers if one is due, then one `Io::poll` that submits the sends queued so far,
//! waits (only when there is nothing else to do, and only until the engine's next deadline),
//! and hands a batch of datagrams to the engine. Other workers are woken at most once per
//! turn, and only when they said they were about to sleep.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use switchyard_shared::config::EngineKind;
use switchyard_shared::journal::Journal;
use switchyard_shared::stats::{Counter, Stats, HISTOGRAMS};

use crate::engine::{Engine, Inbound, Limits, Output, SendError, WorkerCommand, WorkerEvent};
use crate::io::{Io, IoConfig, RxEvent, Tx, Waker};
use crate::via::Via;
use crate::worker_set::WorkerSet;

/// Longest sleep of an idle worker, whatever the engine's next deadline: bounds how stale
/// its gauges in /metrics get and how long events that did not fit the slow path's queue
/// wait for another try (the fixed wait of every idle turn before the engine had deadlines).
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Shortest sleep when the engine's next deadline has come already (work it left due, such
/// as more NACKs than one packet carries, or sends a full queue refused): the worker gives
/// up the core for a moment instead of spinning on the deadline.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// Messages from other workers handled per turn before the socket gets a turn again.
const INBOUND_BUDGET: usize = 1024;

/// What other threads share with one worker.
pub struct Mailbox {
    /// Slow path → worker.
    pub commands: ArrayQueue<WorkerCommand>,
    /// Worker → slow path.
    pub events: ArrayQueue<WorkerEvent>,
    /// Other workers → worker.
    pub inbound: ArrayQueue<Inbound>,
    waker: OnceLock<Waker>,
    /// Set by the worker just before it may block in poll.
    parked: AtomicBool,
}

impl Mailbox {
    pub fn new(inbound_capacity: usize) -> Self {
        Self {
            commands: ArrayQueue::new(4096),
            events: ArrayQueue::new(4096),
            inbound: ArrayQueue::new(inbound_capacity),
            waker: OnceLock::new(),
            parked: AtomicBool::new(false),
        }
    }

    /// Wake the worker if it may be blocked. Cheap when it is busy (no syscall).
    pub fn wake(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            if let Some(w) = self.waker.get() {
                w.wake();
            }
        }
    }

    /// Wake unconditionally (slow path and shutdown: rare, so the syscall is fine).
    pub fn wake_now(&self) {
        if let Some(w) = self.waker.get() {
            w.wake();
        }
    }

    fn has_work(&self) -> bool {
        !self.commands.is_empty() || !self.inbound.is_empty()
    }
}

/// Everything a worker thread needs.
pub struct WorkerSetup {
    pub index: u16,
    pub socket: UdpSocket,
    /// The relay socket (`media.relay_port + index`); `None` runs without relay links.
    pub relay: Option<UdpSocket>,
    /// The ICE-TCP listener on the media port (`media.ice_tcp`), and its limits.
    pub tcp: Option<(std::net::TcpListener, crate::io::TcpLimits)>,
    pub engine: EngineKind,
    pub io: IoConfig,
    pub core: Option<usize>,
    pub limits: Limits,
    pub stats: Arc<Stats>,
    /// The SRTP index journal static keys resume from (none: they start from zero).
    pub journal: Option<Arc<Journal>>,
    pub mailboxes: Arc<[Arc<Mailbox>]>,
    pub stop: Arc<AtomicBool>,
    pub seed: u64,
}

/// The worker's view of its outputs: its socket's send half and the other workers.
struct WorkerOutput<'a> {
    tx: &'a mut Tx,
    mailboxes: &'a [Arc<Mailbox>],
    /// Workers sent to this turn, to wake once at the end of it.
    wake: &'a mut WorkerSet,
}

impl Output for WorkerOutput<'_> {
    fn send_from(
        &mut self,
        via: Via,
        dst: SocketAddr,
        from: Option<IpAddr>,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<(), SendError> {
        let b = self.tx.alloc().ok_or(SendError::Full)?;
        match fill(&mut self.tx.buf_mut(b)[..]) {
            Some(len) => {
                self.tx.queue_from(b, len, dst, via, from);
                Ok(())
            }
            None => {
                self.tx.release(b);
                Err(SendError::Cancelled)
            }
        }
    }

    fn to_worker(&mut self, worker: u16, msg: Inbound) -> Result<(), Inbound> {
        let Some(mb) = self.mailboxes.get(usize::from(worker)) else {
            return Err(msg);
        };
        mb.inbound.push(msg)?;
        self.wake.insert(worker);
        Ok(())
    }
}

/// Run a worker until `stop` is set. `ready` gets the engine kind that actually runs (or
/// the error that kept the worker from starting).
pub fn run(setup: WorkerSetup, ready: std::sync::mpsc::Sender<Result<EngineKind, String>>) {
    let WorkerSetup {
        index,
        socket,
        relay,
        tcp,
        engine: kind,
        io: io_config,
        core,
        limits,
        stats,
        journal,
        mailboxes,
        stop,
        seed,
    } = setup;
    if let Some(core) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            tracing::warn!(worker = index, core, "could not pin worker to core");
        }
    }
    let Some(me) = mailboxes.get(usize::from(index)).cloned() else {
        let _ = ready.send(Err(format!("no mailbox for worker {index}")));
        return;
    };
    let mut io = match Io::with_relay(kind, socket, relay, &io_config) {
        Ok(io) => io,
        Err(e) => {
            let _ = ready.send(Err(format!("worker {index}: {e}")));
            return;
        }
    };
    if let Some((listener, limits)) = tcp {
        if let Err(e) = io.add_tcp(listener, limits) {
            let _ = ready.send(Err(format!("worker {index}: ICE-TCP: {e}")));
            return;
        }
    }
    let _ = me.waker.set(io.waker());
    let _ = ready.send(Ok(io.kind()));
    // From here on a worker that ends while the data plane runs takes the process down.
    let _guard = AbortOnExit::new(format!("worker {index}"), stop.clone());
    drop(ready);

    let mut engine = Engine::new(index, limits, stats.clone(), seed, Instant::now());
    if let Some(j) = journal {
        engine.set_journal(j);
    }
    let counters = stats.worker(usize::from(index));
    let mut wake = WorkerSet::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        {
            let mut out = WorkerOutput {
                tx: io.tx(),
                mailboxes: &mailboxes,
                wake: &mut wake,
            };
            while let Some(cmd) = me.commands.pop() {
                engine.handle_command(cmd, now, &mut out);
            }
            for _ in 0..INBOUND_BUDGET {
                let Some(msg) = me.inbound.pop() else { break };
                engine.handle_inbound(msg, now, &mut out);
            }
            if engine.poll_timeout().is_some_and(|t| t <= now) {
                engine.handle_timeout(now, &mut out);
            }
        }
        hand_over(&mut engine, &me.events);

        // Announce the sleep, then look once more, so a message pushed in between is seen
        // either by this check or through the waker. Events that did not fit wait for the
        // slow path, which drains every 2 ms; no reason to spin for them.
        me.parked.store(true, Ordering::SeqCst);
        let timeout = if me.has_work() {
            Duration::ZERO
        } else {
            idle_wait(engine.poll_timeout(), Instant::now())
        };
        let polled = io.poll(timeout, &mut |ev, tx| {
            let mut out = WorkerOutput {
                tx,
                mailboxes: &mailboxes,
                wake: &mut wake,
            };
            match ev {
                RxEvent::Datagram {
                    data,
                    src,
                    dst,
                    at,
                    via: Via::Media,
                } => engine.handle_datagram_to(data, src, dst, at, &mut out),
                // Relay links keep the kernel's choice of source address (issue #11 covers
                // the media socket only).
                RxEvent::Datagram {
                    data,
                    src,
                    at,
                    via: Via::Relay,
                    ..
                } => engine.handle_relay_datagram(data, src, at, &mut out),
                RxEvent::Oversize { .. } => engine.oversize(),
            }
        });
        me.parked.store(false, Ordering::SeqCst);
        if let Err(e) = polled {
            tracing::error!(worker = index, error = %e, "I/O engine failed; worker stops");
            break;
        }
        wake_peers(&mailboxes, &mut wake);
        if let Some(c) = counters {
            c.add(Counter::LoopTurns, 1);
            c.set(Counter::KernelRxDrops, io.kernel_drops());
            c.set(Counter::DropSendFailed, io.send_errors());
            let (t, open) = io.tcp_counters();
            c.set(Counter::TcpConnections, open as u64);
            c.set(Counter::TcpAccepted, t.accepted);
            c.set(Counter::TcpRefused, t.refused);
            c.set(Counter::TcpRxPackets, t.packets_in);
            c.set(Counter::TcpTxPackets, t.packets_out);
            c.set(Counter::TcpTxDropped, t.out_dropped);
            let o = io.offload();
            c.set(Counter::GsoMessages, o.gso_messages);
            c.set(Counter::GsoSegments, o.gso_segments);
            c.set(Counter::GsoRefused, o.gso_refused);
            c.set(Counter::GroBuffers, o.gro_buffers);
            c.set(Counter::GroSegments, o.gro_segments);
            let [seg, batch] = HISTOGRAMS;
            for (b, v) in seg.buckets.iter().zip(o.segments_per_message) {
                c.set(*b, v);
            }
            c.set(seg.sum, o.datagrams);
            for (b, v) in batch.buckets.iter().zip(o.datagrams_per_destination) {
                c.set(*b, v);
            }
            c.set(batch.sum, o.batched);
        }
    }
    if let Err(e) = io.flush() {
        tracing::warn!(worker = index, error = %e, "final flush failed");
    }
    tracing::info!(worker = index, "worker stopped");
}

/// Move the engine's events to the slow path's queue while it has room, in order. What does
/// not fit waits in the engine, where it is bounded and coalesced (`Engine::poll_event`);
/// it used to wait in a vector here that nothing bounded, which also made the engine's
/// pending-event limit see an empty queue every turn.
pub(crate) fn hand_over(engine: &mut Engine, queue: &ArrayQueue<WorkerEvent>) {
    while !queue.is_full() {
        let Some(ev) = engine.poll_event() else {
            return;
        };
        if let Err(ev) = queue.push(ev) {
            // Only this worker pushes here, so the room seen above is still there; if that
            // ever changed the event goes back, not lost.
            engine.requeue_event(ev);
            return;
        }
    }
}

/// How long an idle worker may wait in `Io::poll`: until the engine's next deadline, but at
/// least [`MIN_WAIT`] and at most [`MAX_WAIT`]. A datagram or a waker ends the wait sooner.
fn idle_wait(deadline: Option<Instant>, now: Instant) -> Duration {
    deadline
        .map_or(MAX_WAIT, |t| t.saturating_duration_since(now))
        .clamp(MIN_WAIT, MAX_WAIT)
}

fn wake_peers(mailboxes: &[Arc<Mailbox>], workers: &mut WorkerSet) {
    for w in &workers.take() {
        if let Some(mb) = mailboxes.get(usize::from(w)) {
            mb.wake();
        }
    }
}

/// Aborts the process when dropped while the data plane is not stopping: a worker thread
/// that returned (I/O engine failure) or panicked. Its sessions, mailbox and socket would
/// otherwise be dead inside a live process (the slow path retrying forever on a full
/// mailbox, `/health` still green); aborting lets the supervisor (`switchyard up`, systemd)
/// restart the data plane, and the control plane provisions its sessions again.
pub struct AbortOnExit {
    what: String,
    stop: Arc<AtomicBool>,
}

impl AbortOnExit {
    pub fn new(what: String, stop: Arc<AtomicBool>) -> Self {
        Self { what, stop }
    }
}

impl Drop for AbortOnExit {
    fn drop(&mut self) {
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        let how = if std::thread::panicking() {
            "panicked"
        } else {
            "stopped"
        };
        tracing::error!(what = %self.what, how, "a data-plane thread ended while the data plane runs; aborting so the supervisor restarts it");
        eprintln!("switchyard dataplane: {} {how}; aborting", self.what);
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "SWITCHYARD_ABORT_TEST_CHILD";

    /// Issue 9: a worker that dies must not leave a half-alive process. Runs itself as a
    /// child process (the abort would end the test runner) and checks the child aborted.
    #[test]
    fn a_thread_that_dies_aborts_the_process() {
        if let Ok(mode) = std::env::var(CHILD) {
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let t = std::thread::spawn(move || {
                let _guard = AbortOnExit::new("worker 0".into(), s);
                if mode == "panic" {
                    panic!("simulated worker panic");
                }
            });
            let _ = t.join();
            std::thread::sleep(Duration::from_secs(2));
            std::process::exit(0); // not reached when the guard aborts
        }
        let exe = std::env::current_exe().expect("test binary");
        for mode in ["panic", "return"] {
            let out = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "worker::tests::a_thread_that_dies_aborts_the_process",
                ])
                .env(CHILD, mode)
                .output()
                .expect("run child");
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGABRT),
                "{mode}: {:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The worker sleeps until the engine's next deadline (a relay NACK retry 30 ms away is
    /// not 50 ms late), never spins on one that has passed, and never sleeps past 50 ms.
    #[test]
    fn an_idle_worker_waits_for_the_engines_next_deadline() {
        let now = crate::testing::t0();
        let ms = Duration::from_millis;
        assert_eq!(idle_wait(None, now), MAX_WAIT, "nothing due");
        assert_eq!(idle_wait(Some(now + ms(30)), now), ms(30));
        assert_eq!(idle_wait(Some(now + ms(200)), now), MAX_WAIT);
        assert_eq!(idle_wait(Some(now), now), MIN_WAIT, "due now: no busy loop");
        assert_eq!(
            idle_wait(Some(now), now + ms(5)),
            MIN_WAIT,
            "passed: no busy loop"
        );
        assert_eq!(
            idle_wait(Some(now + Duration::from_micros(300)), now),
            MIN_WAIT
        );
    }

    /// A turn's wake-ups reach workers beyond 64 (once aliased onto worker `w % 64`).
    #[test]
    fn wakeups_reach_workers_beyond_64() {
        let mailboxes: Vec<Arc<Mailbox>> = (0..100).map(|_| Arc::new(Mailbox::new(4))).collect();
        for mb in &mailboxes {
            mb.parked.store(true, Ordering::SeqCst);
        }
        let mut wake: WorkerSet = [64].into_iter().collect();
        wake_peers(&mailboxes, &mut wake);
        assert!(wake.is_empty());
        let woken: Vec<usize> = (0..100)
            .filter(|&w| !mailboxes[w].parked.load(Ordering::SeqCst))
            .collect();
        assert_eq!(woken, [64], "worker 64 woken, worker 0 left asleep");
    }

    #[test]
    fn a_thread_that_ends_on_stop_does_not_abort() {
        let stop = Arc::new(AtomicBool::new(true));
        drop(AbortOnExit::new("worker 0".into(), stop));
    }
}
