//! The ring between real processes: a million commands with wrap-around, `kill -9` of either
//! end mid-stream and a restart that continues with no loss and no duplicate, the
//! one-process-per-side rule, and an index another process corrupts.
//!
//! The children are this test binary itself, run as
//! `current_exe() --exact child_entry --nocapture` with `SWITCHYARD_RING_CHILD` naming the
//! role. Every message carries its sequence number, and a consumer checks that message
//! number `position()` carries sequence `position()`: since positions persist in the file
//! across restarts, that one check proves order, no loss and no duplicate across processes.
//! Children report on stdout in lines starting with `@ring`.

// Under --cfg switchyard_loom the mmap-backed ring is compiled out (see .ci/loom.sh).
#![cfg(not(switchyard_loom))]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_shared::ring::{
    attach_control, attach_data, recreate_data, Consumer, DataSide, Producer, PushError, RingError,
};

const CHILD_ENV: &str = "SWITCHYARD_RING_CHILD";
const PATH_ENV: &str = "SWITCHYARD_RING_PATH";
const COUNT_ENV: &str = "SWITCHYARD_RING_COUNT";
const SLOTS: u32 = 1024;
/// How long any child or parent step may take before the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);
const PROGRESS_EVERY: u64 = 20_000;

/// The process tests each keep two processes busy; on a small machine running them one at a
/// time keeps each one fast.
static SERIAL: Mutex<()> = Mutex::new(());

fn payload(seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    let filler = (seq.wrapping_mul(7) % 61) as usize;
    out.extend((0..filler).map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8)));
}

// ---------------------------------------------------------------------------------------
// Child side.

/// Entry point of every child; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let path = PathBuf::from(std::env::var(PATH_ENV).expect("path env"));
    let count: u64 = std::env::var(COUNT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let code = match role.as_str() {
        "data-consume" => consume(retry(|| attach_data(&path, SLOTS)).commands, count),
        "control-consume" => consume(retry(|| attach_control(&path)).events, count),
        "data-produce" => produce(retry(|| attach_data(&path, SLOTS)).events, count),
        "control-produce" => produce(retry(|| attach_control(&path)).commands, count),
        "hold-data" => hold(attach_data(&path, SLOTS)),
        "hold-control" => hold(attach_control(&path)),
        "try-data" => try_attach(attach_data(&path, SLOTS).map(drop)),
        "try-control" => try_attach(attach_control(&path).map(drop)),
        "data-watch" => watch(retry(|| attach_data(&path, SLOTS)), &path),
        other => {
            say(&format!("ERROR unknown role {other}"));
            3
        }
    };
    std::process::exit(code);
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@ring {line}");
    let _ = out.flush();
}

/// Attach, riding out a predecessor whose lock the kernel is still releasing.
fn retry<T>(mut attach: impl FnMut() -> Result<T, RingError>) -> T {
    let start = Instant::now();
    loop {
        match attach() {
            Ok(t) => return t,
            Err(e) if start.elapsed() > Duration::from_secs(10) => {
                say(&format!("ERROR attach: {e}"));
                std::process::exit(4);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn consume(mut c: Consumer, count: u64) -> i32 {
    let start = c.position();
    say(&format!("ready {start}"));
    let deadline = Instant::now() + PATIENCE;
    let (mut buf, mut want) = (Vec::new(), Vec::new());
    while c.position() < count {
        let pos = c.position();
        match c.pop(&mut buf) {
            Ok(true) => {
                payload(pos, &mut want);
                if buf != want {
                    let seq = buf
                        .get(..8)
                        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
                    say(&format!(
                        "ERROR at position {pos}: got seq {seq:?}, {} bytes",
                        buf.len()
                    ));
                    return 1;
                }
                if (pos + 1) % PROGRESS_EVERY == 0 {
                    say(&format!("progress {}", pos + 1));
                }
            }
            Ok(false) => {
                if Instant::now() > deadline {
                    say(&format!("ERROR timed out at {pos}"));
                    return 2;
                }
                c.wait(Duration::from_millis(100));
            }
            Err(e) => {
                say(&format!("ERROR pop: {e}"));
                return 1;
            }
        }
    }
    say(&format!("done {start}"));
    0
}

fn produce(mut p: Producer, count: u64) -> i32 {
    let start = p.position();
    say(&format!("ready {start}"));
    let deadline = Instant::now() + PATIENCE;
    let mut msg = Vec::new();
    let mut fulls = 0u64;
    for seq in start..count {
        payload(seq, &mut msg);
        let mut spins = 0u32;
        loop {
            match p.push(&msg) {
                Ok(()) => break,
                Err(PushError::Full) => {
                    fulls += 1;
                    if Instant::now() > deadline {
                        say(&format!("ERROR timed out at {seq}"));
                        return 2;
                    }
                    // Back-pressure: retry; nothing is lost. Yield first, then sleep, so a
                    // busy machine gets its cores back.
                    spins += 1;
                    if spins < 16 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                Err(PushError::TooLarge) => {
                    say("ERROR too large");
                    return 1;
                }
                Err(PushError::Corrupt) => {
                    say("ERROR corrupt");
                    return 1;
                }
            }
        }
        if (seq + 1) % PROGRESS_EVERY == 0 {
            say(&format!("progress {}", seq + 1));
        }
    }
    say(&format!("done {start} full {fulls}"));
    0
}

/// Report each command until "stop", as the data plane's slow path treats a corrupt ring:
/// report it, put a new file in place, carry on with that one.
fn watch(mut side: DataSide, path: &Path) -> i32 {
    say("ready");
    let deadline = Instant::now() + PATIENCE;
    let (mut buf, mut corrupt) = (Vec::new(), 0u32);
    while Instant::now() < deadline {
        side.commands.wait(Duration::from_millis(10));
        match side.commands.pop(&mut buf) {
            Ok(true) if buf == b"stop" => {
                say(&format!("done {corrupt}"));
                return 0;
            }
            Ok(true) => say(&format!("got {}", String::from_utf8_lossy(&buf))),
            Ok(false) => {}
            Err(RingError::Corrupt(why)) => {
                corrupt += 1;
                say(&format!("corrupt {why}"));
                match recreate_data(path, SLOTS) {
                    Ok(fresh) => side = fresh,
                    Err(e) => {
                        say(&format!("ERROR recreate: {e}"));
                        return 1;
                    }
                }
                say("recreated");
            }
            Err(e) => {
                say(&format!("ERROR pop: {e}"));
                return 1;
            }
        }
    }
    say("ERROR timed out");
    2
}

/// Attach and keep the side until killed.
fn hold<T>(attached: Result<T, RingError>) -> i32 {
    match attached {
        Ok(ends) => {
            say("holding");
            std::thread::sleep(PATIENCE);
            drop(ends);
            0
        }
        Err(e) => {
            say(&format!("ERROR hold: {e}"));
            1
        }
    }
}

fn try_attach(attached: Result<(), RingError>) -> i32 {
    match attached {
        Ok(()) => say("attached"),
        Err(RingError::Busy) => say("busy"),
        Err(e) => say(&format!("other {e}")),
    }
    0
}

// ---------------------------------------------------------------------------------------
// Parent side.

/// A child process, killed on drop so a failing test leaves nothing running.
struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(role: &str, path: &Path, count: u64) -> Proc {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role)
            .env(PATH_ENV, path)
            .env(COUNT_ENV, count.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may have printed "test child_entry ... " on the same line.
                if let Some(at) = line.find("@ring ") {
                    if tx.send(line[at + 6..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Proc {
            name: role.to_owned(),
            child,
            lines,
        }
    }

    /// The next report line; fails the test on an ERROR line or after PATIENCE.
    fn next_line(&self) -> String {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(line) => {
                assert!(!line.starts_with("ERROR"), "{}: {line}", self.name);
                line
            }
            Err(RecvTimeoutError::Timeout) => panic!("{}: no report in {PATIENCE:?}", self.name),
            Err(RecvTimeoutError::Disconnected) => panic!("{}: exited early", self.name),
        }
    }

    /// Skip report lines until one starts with `prefix`; returns the rest of it.
    fn expect(&self, prefix: &str) -> String {
        loop {
            let line = self.next_line();
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    /// Wait until the child reports progress of at least `at` messages.
    fn progress_past(&self, at: u64) {
        loop {
            let p: u64 = self.expect("progress").parse().expect("progress number");
            if p >= at {
                return;
            }
        }
    }

    fn kill9(mut self) {
        // Child::kill sends SIGKILL: no destructor, no unlock, no flush runs in the child.
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// Wait for "done" and a clean exit; returns what followed "done".
    fn finish(mut self) -> String {
        let done = self.expect("done");
        let status = self.child.wait().expect("wait child");
        assert!(status.success(), "{} exited with {status}", self.name);
        done
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A ring file path, removed on drop; created by a data-side attach so any role can start.
struct RingFile(PathBuf);

impl RingFile {
    fn create(name: &str) -> RingFile {
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!(
            "switchyard-ring-proc-{}-{name}.ring",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        drop(attach_data(&path, SLOTS).expect("create ring file"));
        RingFile(path)
    }
}

impl Drop for RingFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_million_commands_between_two_processes() {
    let _serial = serial();
    const N: u64 = 1_000_000;
    let ring = RingFile::create("million");
    let consumer = Proc::spawn("data-consume", &ring.0, N);
    let producer = Proc::spawn("control-produce", &ring.0, N);
    assert_eq!(consumer.expect("ready"), "0");
    assert_eq!(producer.expect("ready"), "0");
    // 1024 slots: the indices wrap around the ring about a thousand times.
    let done = producer.finish();
    eprintln!("million: producer done {done} (full = times it met back-pressure)");
    assert!(done.starts_with("0 "), "producer: {done}");
    assert_eq!(consumer.finish(), "0");
}

/// Run `count` messages from `producer_role` to `consumer_role`, killing the `victim` end
/// with SIGKILL after it reported `kill_at` messages and starting a fresh one.
fn kill_and_restart(
    name: &str,
    producer_role: &str,
    consumer_role: &str,
    victim_is_producer: bool,
) {
    let _serial = serial();
    const N: u64 = 200_000;
    const KILL_AT: u64 = 60_000;
    let ring = RingFile::create(name);
    let consumer = Proc::spawn(consumer_role, &ring.0, N);
    let producer = Proc::spawn(producer_role, &ring.0, N);
    assert_eq!(consumer.expect("ready"), "0");
    assert_eq!(producer.expect("ready"), "0");

    let (victim, survivor, victim_role) = if victim_is_producer {
        (producer, consumer, producer_role)
    } else {
        (consumer, producer, consumer_role)
    };
    victim.progress_past(KILL_AT);
    victim.kill9();

    let restarted = Proc::spawn(victim_role, &ring.0, N);
    let resumed_at: u64 = restarted.expect("ready").parse().expect("position");
    eprintln!("{name}: killed {victim_role} after {KILL_AT}+, restart resumed at {resumed_at}");
    assert!(
        (KILL_AT..N).contains(&resumed_at),
        "restart resumed at {resumed_at}, not where the killed one stopped"
    );
    // Each consumer checked sequence == position for every message, so finishing proves no
    // loss and no duplicate across the restart.
    let survivor_done = survivor.finish();
    assert!(survivor_done.starts_with('0'), "{survivor_done}");
    let restarted_done = restarted.finish();
    assert!(
        restarted_done.starts_with(&resumed_at.to_string()),
        "{restarted_done}"
    );
}

#[test]
fn consumer_killed_mid_stream_restarts_without_loss_or_duplicate() {
    kill_and_restart("kill-consumer", "control-produce", "data-consume", false);
}

#[test]
fn producer_killed_mid_stream_restarts_without_loss_or_duplicate() {
    kill_and_restart("kill-producer", "data-produce", "control-consume", true);
}

#[test]
fn a_live_side_is_busy_and_a_dead_one_is_not() {
    let _serial = serial();
    let ring = RingFile::create("busy");
    let holder = Proc::spawn("hold-data", &ring.0, 0);
    holder.expect("holding");
    assert!(matches!(attach_data(&ring.0, SLOTS), Err(RingError::Busy)));
    let control = attach_control(&ring.0).expect("the other side is free");
    let id = control.commands.creation_id();
    assert_eq!(Proc::spawn("try-control", &ring.0, 0).expect(""), "busy");

    holder.kill9();
    // The kernel dropped the dead holder's lock: the side is free again, and the file is
    // kept (same creation), so the control plane stays attached.
    let data = attach_data(&ring.0, SLOTS).expect("dead holder's lock is gone");
    assert_eq!(data.commands.creation_id(), id);
    assert!(!control.replaced());
    assert_eq!(Proc::spawn("try-data", &ring.0, 0).expect(""), "busy");
}

/// Another process scribbles a tail index of the command ring: the data side reports it
/// once (the ring does not hand out the error again and again for a caller to spin on),
/// puts a new file in place, and the control side, seeing the file replaced, attaches to it.
#[test]
fn a_corrupt_index_from_another_process_is_reported_once_and_the_file_replaced() {
    use std::os::unix::fs::FileExt;
    let _serial = serial();
    let ring = RingFile::create("corrupt");
    let watcher = Proc::spawn("data-watch", &ring.0, 0);
    watcher.expect("ready");
    let mut control = attach_control(&ring.0).expect("control side");
    control.commands.push(b"before").expect("room");
    assert_eq!(watcher.expect("got"), "before");

    // The commands ring's tail (shared/src/ring/layout.rs: second 128-byte line).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&ring.0)
        .expect("open ring");
    f.write_all_at(&0x0bad_0bad_0bad_u64.to_ne_bytes(), 256)
        .expect("scribble");
    let why = watcher.expect("corrupt");
    assert!(why.contains("tail"), "{why}");
    watcher.expect("recreated");
    assert!(control.replaced());
    assert_eq!(
        control.commands.push(b"lost"),
        Err(PushError::Corrupt),
        "the old file is marked"
    );

    let mut control = attach_control(&ring.0).expect("the new file");
    control.commands.push(b"after").expect("room");
    assert_eq!(watcher.expect("got"), "after");
    control.commands.push(b"stop").expect("room");
    assert_eq!(watcher.finish(), "1", "one corruption, reported once");
}
