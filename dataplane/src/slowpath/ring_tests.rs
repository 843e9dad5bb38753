//! The slow path's side of the ring (issue 9): the event backlog stays bounded while the
//! control plane reads nothing (item 9), and a ring found corrupt is replaced once, not
//! spun on (item 11). No worker threads: worker answers are fed in by hand.

use std::os::unix::fs::FileExt;
use std::path::Path;

use switchyard_shared::command::{SrtpKeys, SrtpProfile};
use switchyard_shared::ring::{self, ControlSide};

use super::*;
use crate::dtls::DtlsConfig;

/// Offsets in the ring file (shared/src/ring/layout.rs): each index on its own 128-byte line.
const COMMANDS_HEAD: u64 = 128;
const COMMANDS_TAIL: u64 = 256;
const EVENTS_HEAD: u64 = 512;

struct Fixture {
    slow: SlowPath,
    control: ControlSide,
    path: PathBuf,
    stats: Arc<Stats>,
    stats_path: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.stats_path);
    }
}

fn fixture(slots: u32) -> Fixture {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("swy-slow-{}-{n}", std::process::id()));
    let path = base.with_extension("ring");
    let stats_path = base.with_extension("stats");
    let _ = std::fs::remove_file(&path);
    let side = ring::attach_data(&path, slots).expect("ring");
    let control = ring::attach_control(&path).expect("control side");
    let stats = Arc::new(Stats::create(&stats_path, 1, 16, 1).expect("stats"));
    let mailboxes: Arc<[Arc<Mailbox>]> = vec![Arc::new(Mailbox::new(64))].into();
    let handshakes = Handshakes::new(DtlsConfig::generate().expect("dtls"));
    let slow = SlowPath::new(side, path.clone(), mailboxes, handshakes, stats.clone());
    Fixture {
        slow,
        control,
        path,
        stats,
        stats_path,
    }
}

fn publisher(id: u64) -> SessionSpec {
    let profile = SrtpProfile::AeadAes128Gcm;
    SessionSpec {
        id: SessionId(id),
        worker: 0,
        stream: format!("room/{id}"),
        role: Role::Publisher {
            ssrcs: vec![1],
            clock_rates: vec![],
            simulcast: None,
            uplink: Vec::new(),
        },
        remote: None,
        keying: Keying::Static(SrtpKeys {
            profile,
            remote: vec![1; profile.master_len()],
            local: vec![2; profile.master_len()],
        }),
        ice: None,
        twcc_ext: None,
        created_ms: 0,
        control: Default::default(),
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], port))
}

fn write_at(path: &Path, offset: u64, value: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open ring file");
    f.write_all_at(&value.to_ne_bytes(), offset)
        .expect("write ring file");
}

impl Fixture {
    /// A session the worker confirmed (its `SessionAdded` is in the ring or the backlog).
    fn add(&mut self, id: u64) {
        self.slow.command(Command::AddSession(publisher(id)));
        self.slow
            .worker_event(WorkerEvent::Added { id: SessionId(id) });
    }

    /// Everything the control plane can read now.
    fn read_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while self.control.events.pop(&mut buf).expect("event ring") {
            out.push(command::decode(&buf).expect("event"));
        }
        out
    }

    /// Read until the backlog is empty, letting the slow path refill the ring in between.
    fn read_all(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            let got = self.read_events();
            if got.is_empty() && self.slow.backlog.is_empty() {
                return out;
            }
            out.extend(got);
            self.slow.turn(Duration::ZERO);
        }
    }

    fn counter(&self, c: Counter) -> u64 {
        self.stats.worker(0).expect("worker 0").get(c)
    }
}

// ---- item 9: the event backlog ----------------------------------------------------------

/// A client flapping its address while the control plane reads nothing: before, each move
/// was one more encoded event in the backlog (+24 MiB in 10 s); now the ring fills, then
/// one pending event carries the latest address.
#[test]
fn a_flapping_address_is_one_pending_event_while_nobody_reads() {
    let mut f = fixture(16);
    f.add(1);
    for round in 0..100u16 {
        for k in 0..100u16 {
            let remote = addr(1000 + (round * 100 + k) % 2);
            f.slow.mailboxes[0]
                .events
                .push(WorkerEvent::Latched {
                    id: SessionId(1),
                    remote,
                })
                .expect("room");
        }
        f.slow.turn(Duration::ZERO);
        assert!(
            f.slow.backlog.len() <= 1,
            "round {round}: {}",
            f.slow.backlog.len()
        );
    }
    let events = f.read_all();
    assert!(events.len() <= 17, "{} events", events.len());
    assert_eq!(
        events.first(),
        Some(&Event::SessionAdded { id: SessionId(1) })
    );
    assert_eq!(
        events.last(),
        Some(&Event::RemoteLatched {
            id: SessionId(1),
            remote: addr(1001)
        }),
        "the address that counts now comes last"
    );
    assert_eq!(
        f.counter(Counter::RingEventsCoalesced) + events.len() as u64,
        10_000 + 1
    );
}

/// A session's address still waiting when the session ends is dropped; the removal is not.
#[test]
fn the_pending_address_of_an_ended_session_is_dropped() {
    let mut f = fixture(4);
    f.add(1);
    for id in 10..13 {
        f.slow.command(Command::RemoveSession { id: SessionId(id) });
    }
    assert_eq!(f.slow.backlog.len(), 0, "ring full, nothing waits yet");
    f.slow.worker_event(WorkerEvent::Latched {
        id: SessionId(1),
        remote: addr(1),
    });
    f.slow.command(Command::RemoveSession { id: SessionId(1) });
    f.slow
        .worker_event(WorkerEvent::Removed { id: SessionId(1) });
    let events = f.read_all();
    assert_eq!(
        events.last(),
        Some(&Event::SessionRemoved {
            id: SessionId(1),
            reason: CloseReason::Removed
        })
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::RemoteLatched { .. })));
    assert_eq!(f.counter(Counter::RingEventsCoalesced), 1);
}

/// What is still waiting of a snapshot nobody will read any more (the control plane asked
/// again) is dropped.
#[test]
fn a_newer_snapshot_supersedes_the_waiting_one() {
    let mut f = fixture(4);
    for id in 1..=3 {
        f.add(id);
    }
    f.slow.command(Command::RemoveSession { id: SessionId(99) });
    // The ring is full: three SessionAdded and one CommandFailed.
    f.slow.command(Command::Snapshot { request: 1 });
    f.slow.command(Command::Snapshot { request: 2 });
    let events = f.read_all();
    let requests: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::SnapshotSession { request, .. } | Event::SnapshotDone { request, .. } => {
                Some(*request)
            }
            _ => None,
        })
        .collect();
    assert_eq!(requests, vec![2, 2, 2, 2]);
    assert_eq!(f.counter(Counter::RingEventsCoalesced), 4);
}

/// Lifecycle events are never dropped. A control plane that sends but does not read meets
/// back-pressure on its command ring once `BACKLOG_PAUSE` events wait, instead of growing
/// the data plane; when it reads again, every answer is there, in order.
#[test]
fn lifecycle_events_are_kept_and_commands_wait_while_the_backlog_is_long() {
    let mut f = fixture(16);
    let mut sent = 0u64;
    let mut refused_turns = 0;
    while refused_turns < 3 {
        let mut pushed = false;
        loop {
            let mut buf = Vec::new();
            let cmd = Command::RemoveSession {
                id: SessionId(sent + 1000),
            };
            command::encode(&cmd, &mut buf).expect("encode");
            if f.control.commands.push(&buf).is_err() {
                break;
            }
            sent += 1;
            pushed = true;
        }
        refused_turns = if pushed { 0 } else { refused_turns + 1 };
        f.slow.turn(Duration::ZERO);
        assert!(f.slow.backlog.len() <= BACKLOG_PAUSE);
        assert!(
            sent < 100_000,
            "the slow path never stopped reading commands"
        );
    }
    assert_eq!(f.slow.backlog.len(), BACKLOG_PAUSE);
    let events = f.read_all();
    let ids: Vec<u64> = events
        .iter()
        .map(|e| match e {
            Event::CommandFailed { id, .. } => id.0,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ids, (1000..1000 + sent).collect::<Vec<_>>());
}

// ---- item 11: a corrupt ring --------------------------------------------------------------

/// A corrupt index of either ring, found by the slow path: one new file, sessions kept, and
/// the control plane that attaches to the new file gets its snapshot.
#[test]
fn a_corrupt_ring_is_replaced_once_and_the_new_one_works() {
    for (what, offset, value) in [
        ("commands tail", COMMANDS_TAIL, 0x0bad_0bad_u64),
        ("commands head", COMMANDS_HEAD, 5),
        ("events head", EVENTS_HEAD, u64::MAX),
    ] {
        let mut f = fixture(16);
        f.add(1);
        assert_eq!(
            f.read_events(),
            vec![Event::SessionAdded { id: SessionId(1) }]
        );
        write_at(&f.path, offset, value);
        f.slow.turn(Duration::ZERO);
        assert!(f.control.replaced(), "{what}: the file was replaced");
        // A few hundred more turns: no second file, no spinning on the old one.
        let id = f.slow.ring.commands.creation_id();
        for _ in 0..300 {
            f.slow.turn(Duration::ZERO);
        }
        assert_eq!(
            f.slow.ring.commands.creation_id(),
            id,
            "{what}: replaced once"
        );
        f.control = ring::attach_control(&f.path).expect("the new file");
        let mut buf = Vec::new();
        command::encode(&Command::Snapshot { request: 7 }, &mut buf).expect("encode");
        f.control.commands.push(&buf).expect("room");
        f.slow.turn(Duration::ZERO);
        let events = f.read_all();
        assert!(
            matches!(
                &events[..],
                [
                    Event::SnapshotSession { request: 7, spec },
                    Event::SnapshotDone { request: 7, sessions: 1, .. }
                ] if spec.id == SessionId(1)
            ),
            "{what}: {events:?}"
        );
    }
}

/// The control plane found the ring corrupt (it alone can tell its own index was
/// overwritten) and marked the file: the slow path replaces it within a turn, with no
/// traffic on either ring.
#[test]
fn a_ring_the_control_plane_marked_is_replaced() {
    let mut f = fixture(16);
    f.control.events.mark_corrupt("test");
    f.slow.turn(Duration::ZERO);
    assert!(f.control.replaced());
    assert!(ring::attach_control(&f.path).is_ok());
}

/// Something that keeps scribbling on the file gets a new file a second at most, not one
/// per turn.
#[test]
fn repeated_corruption_costs_a_new_file_a_second_at_most() {
    let mut f = fixture(16);
    let start = Instant::now();
    let mut files = std::collections::HashSet::new();
    while start.elapsed() < Duration::from_millis(1500) {
        write_at(&f.path, COMMANDS_TAIL, 0x0bad_0bad);
        f.slow.turn(Duration::from_millis(2));
        files.insert(f.slow.ring.commands.creation_id());
    }
    assert!(
        (2..=3).contains(&files.len()),
        "{} files in 1.5 s",
        files.len()
    );
}
