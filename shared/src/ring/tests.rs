//! Single-process tests of the ring file: protocol edge cases, attach rules, corruption.
//! Cross-process behaviour (kill -9, restarts) is in `shared/tests/ring_processes.rs`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::layout::{Dir, COMMANDS_OFFSET, LINE, SLOT_SIZE};
use super::*;

/// A ring file path removed on drop.
struct TempRing(PathBuf);

impl TempRing {
    fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "switchyard-ring-unit-{}-{n}-{name}.ring",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        TempRing(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write_at(&self, offset: usize, bytes: &[u8]) {
        let f = OpenOptions::new()
            .write(true)
            .open(&self.0)
            .expect("open ring file");
        f.write_all_at(bytes, offset as u64)
            .expect("write ring file");
    }
}

impl Drop for TempRing {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pair(t: &TempRing, slots: u32) -> (DataSide, ControlSide) {
    let data = attach_data(t.path(), slots).expect("attach data");
    let control = attach_control(t.path()).expect("attach control");
    (data, control)
}

fn pop_one(c: &mut Consumer) -> Option<Vec<u8>> {
    let mut buf = vec![0xAA; 3];
    c.pop(&mut buf).expect("pop").then_some(buf)
}

#[test]
fn push_pop_both_directions() {
    let t = TempRing::new("roundtrip");
    let (mut data, mut control) = pair(&t, 8);
    assert_eq!(control.commands.capacity(), 8);
    control.commands.push(b"hello").expect("push");
    control.commands.push(b"").expect("empty message is fine");
    assert_eq!(control.commands.len(), 2);
    assert_eq!(data.commands.len(), 2);
    assert_eq!(pop_one(&mut data.commands).as_deref(), Some(&b"hello"[..]));
    assert_eq!(pop_one(&mut data.commands).as_deref(), Some(&b""[..]));
    assert_eq!(pop_one(&mut data.commands), None);
    data.events.push(b"evt").expect("push event");
    assert_eq!(pop_one(&mut control.events).as_deref(), Some(&b"evt"[..]));
    assert!(control.commands.is_empty() && data.commands.is_empty());
}

#[test]
fn full_ring_is_back_pressure() {
    let t = TempRing::new("full");
    let (mut data, mut control) = pair(&t, 4);
    for i in 0..4u8 {
        control.commands.push(&[i]).expect("room");
    }
    assert_eq!(control.commands.push(&[9]), Err(PushError::Full));
    assert_eq!(control.commands.len(), 4);
    assert_eq!(pop_one(&mut data.commands), Some(vec![0]));
    control.commands.push(&[4]).expect("room again");
    for i in 1..5u8 {
        assert_eq!(
            pop_one(&mut data.commands),
            Some(vec![i]),
            "nothing overwritten"
        );
    }
    assert_eq!(pop_one(&mut data.commands), None);
}

#[test]
fn wraps_around_many_times() {
    let t = TempRing::new("wrap");
    let (mut data, mut control) = pair(&t, 3);
    let msg = |i: u32| -> Vec<u8> { (0..(i * 37) % 300).map(|b| (b ^ i) as u8).collect() };
    let mut next_pop = 0;
    for i in 0..100u32 {
        control.commands.push(&msg(i)).expect("room");
        if i % 2 == 1 {
            // Drain to keep at most two in flight: indices run far past the slot count.
            while let Some(got) = pop_one(&mut data.commands) {
                assert_eq!(got, msg(next_pop));
                next_pop += 1;
            }
        }
    }
    assert_eq!(next_pop, 100);
    assert_eq!(data.commands.position(), 100);
    assert_eq!(control.commands.position(), 100);
}

#[test]
fn too_large_is_refused_whole() {
    let t = TempRing::new("large");
    let (mut data, mut control) = pair(&t, 2);
    assert_eq!(control.commands.max_message(), MAX_MESSAGE);
    let big = vec![7u8; MAX_MESSAGE + 1];
    assert_eq!(control.commands.push(&big), Err(PushError::TooLarge));
    assert!(control.commands.is_empty());
    control
        .commands
        .push(&big[..MAX_MESSAGE])
        .expect("exactly max fits");
    assert_eq!(
        pop_one(&mut data.commands).map(|m| m.len()),
        Some(MAX_MESSAGE)
    );
}

#[test]
fn second_attach_of_a_side_is_busy_until_released() {
    let t = TempRing::new("busy");
    let (data, control) = pair(&t, 2);
    assert!(matches!(attach_data(t.path(), 2), Err(RingError::Busy)));
    assert!(matches!(attach_control(t.path()), Err(RingError::Busy)));
    // Each end keeps the side's lock: dropping one of the two is not enough.
    let DataSide { commands, events } = data;
    drop(commands);
    assert!(matches!(attach_data(t.path(), 2), Err(RingError::Busy)));
    drop(events);
    drop(control);
    let _again = pair(&t, 2);
}

#[test]
fn reattach_continues_where_the_last_one_stopped() {
    let t = TempRing::new("reattach");
    let (mut data, mut control) = pair(&t, 8);
    let id = data.commands.creation_id();
    for i in 0..5u8 {
        control.commands.push(&[i]).expect("room");
    }
    assert_eq!(pop_one(&mut data.commands), Some(vec![0]));
    data.events.push(b"e0").expect("room");
    drop(data);
    drop(control);

    let (mut data, mut control) = pair(&t, 8);
    assert_eq!(data.commands.creation_id(), id, "compatible file is kept");
    assert_eq!(data.commands.position(), 1);
    assert_eq!(control.commands.position(), 5);
    for i in 1..5u8 {
        assert_eq!(pop_one(&mut data.commands), Some(vec![i]));
    }
    assert_eq!(pop_one(&mut control.events), Some(b"e0".to_vec()));
    assert!(!control.replaced());
}

#[test]
fn control_needs_a_valid_file() {
    let t = TempRing::new("control");
    assert!(matches!(attach_control(t.path()), Err(RingError::Io(_))));
    std::fs::write(t.path(), b"").expect("write");
    assert!(matches!(
        attach_control(t.path()),
        Err(RingError::Incompatible(_))
    ));
    std::fs::write(t.path(), vec![0x5a; 64 * 1024]).expect("write");
    assert!(matches!(
        attach_control(t.path()),
        Err(RingError::Incompatible(_))
    ));
}

#[test]
fn data_recreates_incompatible_files() {
    let t = TempRing::new("recreate");
    std::fs::write(t.path(), vec![0x5a; 64 * 1024]).expect("write");
    let data = attach_data(t.path(), 4).expect("garbage is replaced");
    let mut control = attach_control(t.path()).expect("valid now");
    control.commands.push(b"x").expect("room");
    let old_id = data.commands.creation_id();
    drop(data);

    // Another slot count: a new file, and the old control plane can tell.
    let mut data = attach_data(t.path(), 8).expect("resized");
    assert_ne!(data.commands.creation_id(), old_id);
    assert_eq!(data.commands.capacity(), 8);
    assert_eq!(pop_one(&mut data.commands), None);
    assert!(control.replaced());
    drop(control);
    let control = attach_control(t.path()).expect("new file");
    assert!(!control.replaced());

    // A wrong version in the header.
    drop((data, control));
    t.write_at(8, &99u32.to_ne_bytes());
    assert!(matches!(
        attach_control(t.path()),
        Err(RingError::Incompatible(_))
    ));
    attach_data(t.path(), 8).expect("replaced again");
}

fn tail_offset(dir: Dir) -> usize {
    dir.indices_offset() + LINE
}

#[test]
fn corrupt_indices_are_rejected() {
    let t = TempRing::new("indices");
    let (mut data, mut control) = pair(&t, 4);
    control.commands.push(b"a").expect("room");
    // A tail far past the head: more messages than slots.
    t.write_at(tail_offset(Dir::Commands), &100u64.to_ne_bytes());
    let mut buf = Vec::new();
    assert!(matches!(
        data.commands.pop(&mut buf),
        Err(RingError::Corrupt(_))
    ));
    assert_eq!(data.commands.len(), 4, "clamped to capacity");
    assert!(matches!(
        data.commands.pop(&mut buf),
        Err(RingError::Corrupt(_))
    ));
    drop(control);
    assert!(matches!(
        attach_control(t.path()),
        Err(RingError::Corrupt(_))
    ));

    // A head ahead of the tail makes the producer see a full ring, never overwrite.
    t.write_at(tail_offset(Dir::Commands), &1u64.to_ne_bytes());
    t.write_at(COMMANDS_OFFSET, &7u64.to_ne_bytes());
    assert!(matches!(
        attach_control(t.path()),
        Err(RingError::Corrupt(_))
    ));
    drop(data);
    let data = attach_data(t.path(), 4).expect("corrupt file is replaced");
    assert!(data.commands.is_empty());
}

#[test]
fn producer_reports_a_corrupt_head_and_never_overwrites() {
    let t = TempRing::new("head");
    let (_data, mut control) = pair(&t, 4);
    t.write_at(COMMANDS_OFFSET, &u64::MAX.to_ne_bytes());
    assert_eq!(control.commands.push(b"a"), Err(PushError::Corrupt));
    assert_eq!(
        control.commands.len(),
        4,
        "a corrupt difference reads as full"
    );
    assert_eq!(control.commands.position(), 0, "nothing was written");
}

#[test]
fn bad_length_prefix_skips_the_slot() {
    let t = TempRing::new("length");
    let (mut data, mut control) = pair(&t, 4);
    control.commands.push(b"first").expect("room");
    control.commands.push(b"second").expect("room");
    let slot0 = Dir::Commands.slots_offset(4);
    t.write_at(slot0, &(SLOT_SIZE as u32).to_ne_bytes());
    let mut buf = Vec::new();
    assert!(matches!(
        data.commands.pop(&mut buf),
        Err(RingError::BadMessage(_))
    ));
    assert_eq!(pop_one(&mut data.commands), Some(b"second".to_vec()));
    assert!(
        data.commands.corruption().is_none(),
        "one bad slot is not a bad ring"
    );
}

#[test]
fn wait_times_out_when_empty_and_returns_at_once_when_not() {
    let t = TempRing::new("wait");
    let (data, mut control) = pair(&t, 4);
    let start = Instant::now();
    data.commands.wait(Duration::from_millis(50));
    assert!(start.elapsed() >= Duration::from_millis(50));
    control.commands.push(b"x").expect("room");
    let start = Instant::now();
    data.commands.wait(Duration::from_secs(10));
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn wait_is_woken_by_a_push() {
    let t = TempRing::new("wake");
    let (mut data, control) = pair(&t, 4);
    let mut commands = control.commands;
    let pusher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        commands.push(b"wake").expect("room");
        commands
    });
    let start = Instant::now();
    data.commands.wait(Duration::from_secs(10));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "woken, not timed out"
    );
    assert_eq!(pop_one(&mut data.commands), Some(b"wake".to_vec()));
    pusher.join().expect("pusher");
}

#[test]
fn unpublished_slot_is_invisible() {
    // What a producer that died mid-write leaves behind: bytes in the slot, tail unchanged.
    let t = TempRing::new("halfwrite");
    let (mut data, mut control) = pair(&t, 4);
    let slot0 = Dir::Commands.slots_offset(4);
    t.write_at(slot0, &3u32.to_ne_bytes());
    t.write_at(slot0 + 8, b"hal");
    assert_eq!(pop_one(&mut data.commands), None);
    control.commands.push(b"whole").expect("room");
    assert_eq!(pop_one(&mut data.commands), Some(b"whole".to_vec()));
}

#[test]
fn invalid_slot_counts_are_refused() {
    let t = TempRing::new("slots");
    assert!(matches!(
        attach_data(t.path(), 0),
        Err(RingError::Incompatible(_))
    ));
    assert!(matches!(
        attach_data(t.path(), u32::MAX),
        Err(RingError::Incompatible(_))
    ));
}

#[test]
fn ends_are_send() {
    fn send<T: Send>() {}
    send::<Producer>();
    send::<Consumer>();
    send::<DataSide>();
    send::<ControlSide>();
}

/// Issue 9: the ring carries SRTP keys; a symlink planted at its name is never followed by
/// either side (it could point the data plane at a file another user reads).
#[test]
fn symlinks_are_refused_by_both_sides() {
    let target = TempRing::new("link-target");
    let link = TempRing::new("link");
    std::fs::write(target.path(), b"").expect("target");
    std::os::unix::fs::symlink(target.path(), link.path()).expect("symlink");
    assert!(matches!(attach_data(link.path(), 4), Err(RingError::Io(_))));
    assert!(matches!(attach_control(link.path()), Err(RingError::Io(_))));
    assert_eq!(
        std::fs::metadata(target.path()).expect("target").len(),
        0,
        "the link's target was not touched"
    );
}

// ---- Issue 9 item 11: corruption found while the ring runs --------------------------------

fn head_offset(dir: Dir) -> usize {
    dir.indices_offset()
}

/// A head scribbled past the tail is corruption, not a full ring: before, the control plane
/// took it for back-pressure and answered every new session with 503 forever.
#[test]
fn a_corrupt_head_is_corruption_not_back_pressure() {
    for bad in [u64::MAX, 3, 1000] {
        let t = TempRing::new("live-head");
        let (_data, mut control) = pair(&t, 4);
        control.commands.push(b"a").expect("room");
        control.commands.push(b"b").expect("room");
        t.write_at(head_offset(Dir::Commands), &bad.to_ne_bytes());
        let r = control.commands.push(b"c");
        assert!(
            matches!(r, Err(e) if e != PushError::Full),
            "head {bad}: {r:?}"
        );
    }
}

/// A consumer that found impossible indices does not make its caller spin: `wait` sleeps
/// its whole timeout instead of returning at once because `tail != head`.
#[test]
fn a_corrupt_tail_does_not_make_wait_spin() {
    let t = TempRing::new("live-tail");
    let (mut data, _control) = pair(&t, 4);
    t.write_at(tail_offset(Dir::Commands), &0xdead_beef_u64.to_ne_bytes());
    let mut buf = Vec::new();
    assert!(matches!(
        data.commands.pop(&mut buf),
        Err(RingError::Corrupt(_))
    ));
    let start = Instant::now();
    for _ in 0..5 {
        data.commands.wait(Duration::from_millis(10));
    }
    assert!(
        start.elapsed() >= Duration::from_millis(40),
        "wait returned at once on a corrupt ring: {:?}",
        start.elapsed()
    );
}

/// Each side is the only writer of its own index, so a value in the file that differs from
/// its own copy is corruption even when it is in range (it would replay or skip messages).
#[test]
fn an_overwritten_own_index_is_corruption() {
    let t = TempRing::new("own-index");
    let (mut data, mut control) = pair(&t, 8);
    for m in [b"a", b"b", b"c"] {
        control.commands.push(m).expect("room");
    }
    assert_eq!(pop_one(&mut data.commands), Some(b"a".to_vec()));
    // The data plane's head goes back to 0: in range, but not what it wrote.
    t.write_at(head_offset(Dir::Commands), &0u64.to_ne_bytes());
    let mut buf = Vec::new();
    assert!(matches!(
        data.commands.pop(&mut buf),
        Err(RingError::Corrupt(_))
    ));
    // The control plane's tail moves ahead by one: in range, but not what it wrote.
    t.write_at(tail_offset(Dir::Commands), &4u64.to_ne_bytes());
    assert!(
        matches!(control.commands.push(b"d"), Err(e) if e != PushError::Full),
        "the producer must notice its tail was overwritten"
    );
}

/// What one side finds, the other learns through the header mark; the data plane's idle
/// event ring is checked without a push; a recreated file works at once.
#[test]
fn a_marked_ring_is_recreated_by_the_data_plane_and_refused_until_then() {
    let t = TempRing::new("mark");
    let (mut data, mut control) = pair(&t, 4);
    control.commands.push(b"lost").expect("room");
    // The control plane's own head of the event ring is overwritten (in range: only the
    // control plane can tell), so it marks the file.
    t.write_at(head_offset(Dir::Events), &0u64.to_ne_bytes());
    data.events.push(b"e").expect("room");
    let mut buf = Vec::new();
    assert!(
        control.events.pop(&mut buf).is_ok(),
        "head 0 is still right"
    );
    t.write_at(head_offset(Dir::Events), &0u64.to_ne_bytes());
    assert!(matches!(
        control.events.pop(&mut buf),
        Err(RingError::Corrupt(_))
    ));
    assert!(control.events.corruption().is_some());

    // The data plane learns it from the mark, on its next look, with no traffic needed.
    assert!(matches!(data.check(), Err(RingError::Corrupt(why)) if why.contains("control plane")));
    assert!(matches!(
        data.commands.pop(&mut buf),
        Err(RingError::Corrupt(_))
    ));
    assert_eq!(data.events.push(b"x"), Err(PushError::Corrupt));

    // A marked file is never attached to again: the control plane waits, the data plane
    // replaces it.
    drop(control);
    assert!(matches!(
        attach_control(t.path()),
        Err(RingError::Corrupt(_))
    ));
    let old = creation_id_in_file(&t);
    let mut fresh = recreate_data(t.path(), 4).expect("recreate");
    drop(data);
    assert_ne!(fresh.commands.creation_id(), old);
    let mut control = attach_control(t.path()).expect("the new file");
    assert!(fresh.check().is_ok() && control.check().is_ok());
    control.commands.push(b"again").expect("room");
    assert_eq!(pop_one(&mut fresh.commands), Some(b"again".to_vec()));
    assert_eq!(
        pop_one(&mut fresh.commands),
        None,
        "the old file's message is gone"
    );
}

/// The creation id in the file at `t`, read without attaching (a marked file refuses that).
fn creation_id_in_file(t: &TempRing) -> u64 {
    let mut b = [0u8; 8];
    let f = std::fs::File::open(t.path()).expect("open");
    let at = std::mem::offset_of!(super::layout::Header, creation_id);
    f.read_exact_at(&mut b, at as u64)
        .expect("read creation id");
    u64::from_ne_bytes(b)
}

/// After the first finding an end neither reads nor writes the file again: a corrupt ring
/// costs one error, not one per call.
#[test]
fn a_corrupt_end_stays_corrupt_and_touches_nothing() {
    let t = TempRing::new("sticky");
    let (mut data, mut control) = pair(&t, 4);
    t.write_at(head_offset(Dir::Commands), &9u64.to_ne_bytes());
    assert_eq!(control.commands.push(b"a"), Err(PushError::Corrupt));
    // Put the right value back: the end stays corrupt (the file is marked).
    t.write_at(head_offset(Dir::Commands), &0u64.to_ne_bytes());
    for _ in 0..3 {
        assert_eq!(control.commands.push(b"a"), Err(PushError::Corrupt));
    }
    assert_eq!(control.commands.position(), 0);
    assert!(control
        .commands
        .corruption()
        .is_some_and(|w| w.contains("head 9")));
    let mut buf = Vec::new();
    assert!(matches!(
        data.commands.pop(&mut buf),
        Err(RingError::Corrupt(_))
    ));
    assert!(control.check().is_err() && data.check().is_err());
}
