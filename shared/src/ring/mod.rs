//! Shared-memory SPSC rings between the control plane and the data plane.
//!
//! One file (e.g. `/dev/shm/switchyard-node-1.ring`) holds two rings, mapped `MAP_SHARED`
//! by both processes: commands (control → data) and events (data → control). Each carries
//! byte messages of at most [`MAX_MESSAGE`] bytes (postcard-encoded
//! [`crate::command::Command`]s and [`crate::command::Event`]s; this module does not look
//! inside them).
//!
//! - **Back-pressure**: a full ring makes [`Producer::push`] return [`PushError::Full`];
//!   nothing is dropped or overwritten.
//! - **Restarts**: the indices live in the file, so either process can die at any moment and
//!   a restarted one continues where its predecessor stopped, with no loss and no duplicate.
//!   A message is published only after it is completely written (see `spsc.rs`).
//! - **One process per side**: each side holds an OFD lock on the file; a second attach of
//!   the same side gets [`RingError::Busy`] until the holder exits or dies.
//! - **Sleeping**: [`Consumer::wait`] sleeps on a shared futex; a producer makes the wake
//!   syscall only when the consumer is actually waiting.
//!
//! - **Corruption at run time**: each side is the only writer of its own index, so it checks
//!   on every push or pop that the file still holds the value it wrote, and that the other
//!   side's index is possible (`head <= tail <= head + capacity`). The first impossible value
//!   makes the end *corrupt*: it returns [`RingError::Corrupt`] / [`PushError::Corrupt`] from
//!   then on without touching the file, [`Consumer::wait`] sleeps its whole timeout, and the
//!   side marks the header so the other side learns it too. Only a new file mends that: the
//!   data plane makes one ([`recreate_data`]) and the control plane, which sees
//!   [`ControlSide::replaced`], attaches to it. A marked file is never attached to again
//!   (the data plane replaces it, the control plane gets `Corrupt` until then).
//!
//! Security contract: the file is a local channel between two processes of the same user
//! (mode 0600). Still, its contents are treated as untrusted input: the header is validated,
//! index differences are checked, and every length prefix is checked, so a corrupt or
//! hostile file yields [`RingError`]s, never out-of-bounds access, a busy loop or a panic.
//! What this cannot prevent: someone truncating the file under a live mapping (the kernel
//! then sends SIGBUS), or writing a plausible message into a slot.

#[cfg(not(switchyard_loom))]
mod file;
#[cfg(not(switchyard_loom))]
mod futex;
#[cfg(not(switchyard_loom))]
mod layout;
#[cfg(not(switchyard_loom))]
mod lock;
// Under loom only the protocol and its model tests are built; the mmap users are not.
#[cfg_attr(switchyard_loom, allow(dead_code))]
mod spsc;
mod sync;
#[cfg(all(test, not(switchyard_loom)))]
mod tests;

#[cfg(not(switchyard_loom))]
use std::{path::Path, sync::Arc, time::Duration, time::Instant};

#[cfg(not(switchyard_loom))]
use self::{file::Mapping, layout::Dir};
#[cfg(not(switchyard_loom))]
use crate::command::MAX_MESSAGE;

/// Why attaching to or reading from the ring file failed.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring file I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Bad magic, layout version, slot size or file size.
    #[error("ring file incompatible: {0}")]
    Incompatible(String),
    /// The same side is already attached by a live process.
    #[error("ring side already attached by a live process")]
    Busy,
    /// Impossible indices, or the header marked corrupt by the other side: the ring is
    /// unusable until the data plane recreates the file.
    #[error("ring file corrupt: {0}")]
    Corrupt(String),
    /// One slot's length prefix was impossible; that message was skipped and the ring goes
    /// on with the next.
    #[error("ring message unreadable: {0}")]
    BadMessage(String),
}

/// Why a push was refused. Nothing was written in either case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The ring holds `capacity` unread messages; retry after the consumer catches up.
    #[error("ring full")]
    Full,
    /// The message is longer than [`crate::command::MAX_MESSAGE`].
    #[error("message too large for a ring slot")]
    TooLarge,
    /// The ring's indices are impossible (see the module doc): retrying cannot help, only
    /// a recreated file (the data plane's [`recreate_data`]).
    #[error("ring corrupt")]
    Corrupt,
}

/// Slots per ring unless configured otherwise: with ~2 KiB slots that is ~2 MiB per ring,
/// and at least a thousand commands of slack before the control plane sees back-pressure.
pub const DEFAULT_SLOTS: u32 = 1024;

/// The writing end of one ring.
/// One end's verdict on the ring file: healthy until the first impossible value, then
/// corrupt for good (see the module doc). Both ends judge the same way through it; only
/// the index each one owns and the side it marks differ.
#[cfg(not(switchyard_loom))]
#[derive(Debug, Default)]
struct Verdict(Option<String>);

#[cfg(not(switchyard_loom))]
impl Verdict {
    fn is_corrupt(&self) -> bool {
        self.0.is_some()
    }

    fn why(&self) -> Option<&str> {
        self.0.as_deref()
    }

    fn result(&self) -> Result<(), RingError> {
        match &self.0 {
            Some(why) => Err(RingError::Corrupt(why.clone())),
            None => Ok(()),
        }
    }

    /// The first finding marks the file for the other side and sticks; later ones change
    /// nothing.
    fn poison(&mut self, map: &Mapping, side: layout::Side, why: String) {
        if self.0.is_none() {
            map.mark_corrupt(side);
            self.0 = Some(why);
        }
    }

    /// The header's mark (set by the other side), then our own index as the file holds it
    /// (`shared`) against what we wrote (`mine`): only we write it, so any difference is
    /// corruption.
    fn check_own(
        &mut self,
        map: &Mapping,
        side: layout::Side,
        shared: u64,
        mine: u64,
        why: impl FnOnce() -> String,
    ) -> Result<(), RingError> {
        if self.0.is_none() {
            if let Some(mark) = map.corrupt_mark() {
                self.0 = Some(mark);
            } else if shared != mine {
                self.poison(map, side, why());
            }
        }
        self.result()
    }
}

#[cfg(not(switchyard_loom))]
pub struct Producer {
    map: Arc<Mapping>,
    dir: Dir,
    /// Our copy of `tail`; only we write it, so the shared one is only ever stored.
    tail: u64,
    /// Why this end stopped using the ring (see the module doc); `None` while healthy.
    corrupt: Verdict,
}

/// The reading end of one ring.
#[cfg(not(switchyard_loom))]
pub struct Consumer {
    map: Arc<Mapping>,
    dir: Dir,
    /// Our copy of `head`; only we write it.
    head: u64,
    /// Why this end stopped using the ring (see the module doc); `None` while healthy.
    corrupt: Verdict,
}

#[cfg(not(switchyard_loom))]
impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("dir", &self.dir)
            .field("tail", &self.tail)
            .finish_non_exhaustive()
    }
}

#[cfg(not(switchyard_loom))]
impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("dir", &self.dir)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

#[cfg(not(switchyard_loom))]
impl Producer {
    fn new(map: Arc<Mapping>, dir: Dir) -> Self {
        let tail = map
            .indices(dir)
            .tail
            .load(std::sync::atomic::Ordering::Acquire);
        Producer {
            map,
            dir,
            tail,
            corrupt: Verdict::default(),
        }
    }

    /// Append one message (at most [`MAX_MESSAGE`] bytes). On `Err` nothing was written; on
    /// [`PushError::Full`] retry later; on [`PushError::Corrupt`] stop (this end is corrupt
    /// for good, [`Producer::corruption`] says why). Wakes the consumer if it sleeps in
    /// [`Consumer::wait`].
    pub fn push(&mut self, msg: &[u8]) -> Result<(), PushError> {
        if self.corrupt.is_corrupt() || self.check_own().is_err() {
            return Err(PushError::Corrupt);
        }
        let idx = self.map.indices(self.dir);
        let slots = self.map.slot_area(self.dir);
        match spsc::push(&idx, &slots, &mut self.tail, msg) {
            Ok(waiter) => {
                if waiter && spsc::take_waiter(&idx) {
                    futex::wake(idx.waiting);
                }
                Ok(())
            }
            Err(PushError::Corrupt) => {
                let head = idx.head.load(std::sync::atomic::Ordering::Acquire);
                self.poison(format!(
                    "{:?} ring: head {head} outside the {} messages below tail {}",
                    self.dir,
                    self.capacity(),
                    self.tail
                ));
                Err(PushError::Corrupt)
            }
            Err(e) => Err(e),
        }
    }

    /// Look for corruption without pushing: the header mark, our own index, the consumer's
    /// index. The first finding makes this end corrupt for good (see the module doc); for a
    /// producer that may sit idle (the data plane's event ring) between pushes.
    pub fn check(&mut self) -> Result<(), RingError> {
        self.check_own()?;
        let idx = self.map.indices(self.dir);
        let head = idx.head.load(std::sync::atomic::Ordering::Acquire);
        if self
            .tail
            .checked_sub(head)
            .is_none_or(|n| n > self.capacity() as u64)
        {
            self.poison(format!(
                "{:?} ring: head {head} outside the {} messages below tail {}",
                self.dir,
                self.capacity(),
                self.tail
            ));
        }
        self.corruption_error()
    }

    /// The header mark and our own index (cheap: two loads).
    fn check_own(&mut self) -> Result<(), RingError> {
        let shared = self
            .map
            .indices(self.dir)
            .tail
            .load(std::sync::atomic::Ordering::Relaxed);
        let (dir, mine) = (self.dir, self.tail);
        self.corrupt
            .check_own(&self.map, dir.producer(), shared, mine, || {
                format!(
                    "{dir:?} ring: tail is {shared} in the file, but this producer wrote {mine}"
                )
            })
    }

    fn poison(&mut self, why: String) {
        self.corrupt.poison(&self.map, self.dir.producer(), why);
    }

    fn corruption_error(&self) -> Result<(), RingError> {
        self.corrupt.result()
    }

    /// Why this end found the ring corrupt; `None` while it has not.
    pub fn corruption(&self) -> Option<&str> {
        self.corrupt.why()
    }

    /// Stop using the ring and mark the file corrupt, so the data plane recreates it: for a
    /// caller that found something wrong the ring itself could not see.
    pub fn mark_corrupt(&mut self, why: &str) {
        self.poison(why.to_owned());
    }

    /// Messages pushed and not yet popped.
    pub fn len(&self) -> usize {
        spsc::occupied(
            &self.map.indices(self.dir),
            self.tail,
            self.capacity() as u64,
        ) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most messages the ring holds.
    pub fn capacity(&self) -> usize {
        self.map.slots() as usize
    }

    /// Largest message [`Producer::push`] accepts.
    pub const fn max_message(&self) -> usize {
        MAX_MESSAGE
    }

    /// Messages ever pushed into this ring (by any incarnation of this side): the index the
    /// next push gets.
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// Whether the data plane replaced the ring file since this end attached (see
    /// [`ControlSide::replaced`]); lets a control plane that split its `ControlSide` notice.
    pub fn replaced(&self) -> bool {
        self.map.replaced()
    }

    /// Random id of the file's creation; changes when the data plane recreates the file.
    pub fn creation_id(&self) -> u64 {
        self.map
            .header()
            .creation_id
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(not(switchyard_loom))]
impl Consumer {
    fn new(map: Arc<Mapping>, dir: Dir) -> Self {
        let head = map
            .indices(dir)
            .head
            .load(std::sync::atomic::Ordering::Acquire);
        Consumer {
            map,
            dir,
            head,
            corrupt: Verdict::default(),
        }
    }

    /// Copy the next message into buf (cleared first); false when empty.
    ///
    /// Errors: [`RingError::Corrupt`] when the indices are impossible or the header is
    /// marked (nothing is consumed, and this end is corrupt for good: see the module doc);
    /// [`RingError::BadMessage`] when a slot's length prefix is impossible (that slot is
    /// skipped, so the next pop continues with the following message).
    pub fn pop(&mut self, buf: &mut Vec<u8>) -> Result<bool, RingError> {
        self.check_own()?;
        let idx = self.map.indices(self.dir);
        let slots = self.map.slot_area(self.dir);
        match spsc::pop(&idx, &slots, &mut self.head, buf) {
            Ok(got) => Ok(got),
            Err(spsc::PopError::Indices { head, tail }) => {
                self.poison(format!(
                    "{:?} ring: head {head}, tail {tail}, capacity {}",
                    self.dir,
                    self.map.slots()
                ));
                self.corruption_error().map(|()| false)
            }
            Err(spsc::PopError::Length { index, len }) => Err(RingError::BadMessage(format!(
                "{:?} ring: message {index} claims {len} bytes",
                self.dir
            ))),
        }
    }

    /// Look for corruption without popping: the header mark, our own index, the producer's
    /// index (see [`Producer::check`]).
    pub fn check(&mut self) -> Result<(), RingError> {
        self.check_own()?;
        let tail = self
            .map
            .indices(self.dir)
            .tail
            .load(std::sync::atomic::Ordering::Acquire);
        if tail
            .checked_sub(self.head)
            .is_none_or(|n| n > self.capacity() as u64)
        {
            self.poison(format!(
                "{:?} ring: head {}, tail {tail}, capacity {}",
                self.dir,
                self.head,
                self.map.slots()
            ));
        }
        self.corruption_error()
    }

    /// The header mark and our own index (cheap: two loads).
    fn check_own(&mut self) -> Result<(), RingError> {
        let shared = self
            .map
            .indices(self.dir)
            .head
            .load(std::sync::atomic::Ordering::Relaxed);
        let (dir, mine) = (self.dir, self.head);
        self.corrupt
            .check_own(&self.map, dir.consumer(), shared, mine, || {
                format!(
                    "{dir:?} ring: head is {shared} in the file, but this consumer wrote {mine}"
                )
            })
    }

    fn poison(&mut self, why: String) {
        self.corrupt.poison(&self.map, self.dir.consumer(), why);
    }

    fn corruption_error(&self) -> Result<(), RingError> {
        self.corrupt.result()
    }

    /// Why this end found the ring corrupt; `None` while it has not.
    pub fn corruption(&self) -> Option<&str> {
        self.corrupt.why()
    }

    /// Stop using the ring and mark the file corrupt (see [`Producer::mark_corrupt`]).
    pub fn mark_corrupt(&mut self, why: &str) {
        self.poison(why.to_owned());
    }

    /// Sleep until a message is there or `timeout` passed; returns at once if one already is.
    /// May return early (signals); callers pop and wait again. On a corrupt end it sleeps
    /// the whole timeout: nothing will arrive, and a caller looping on it must not spin.
    pub fn wait(&self, timeout: Duration) {
        if self.corrupt.is_corrupt() {
            std::thread::sleep(timeout);
            return;
        }
        let idx = self.map.indices(self.dir);
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if !spsc::prepare_wait(&idx, self.head) {
                return;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => timeout,
            };
            if left.is_zero() {
                spsc::finish_wait(&idx);
                return;
            }
            futex::wait(idx.waiting, 1, left);
            spsc::finish_wait(&idx);
            if spsc::available(&idx, self.head, 1) != 0 {
                return;
            }
        }
    }

    /// Messages waiting to be popped.
    pub fn len(&self) -> usize {
        spsc::available(
            &self.map.indices(self.dir),
            self.head,
            self.capacity() as u64,
        ) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most messages the ring holds.
    pub fn capacity(&self) -> usize {
        self.map.slots() as usize
    }

    /// Messages ever popped from this ring (by any incarnation of this side): the index of
    /// the next message.
    pub fn position(&self) -> u64 {
        self.head
    }

    /// Whether the data plane replaced the ring file since this end attached (see
    /// [`ControlSide::replaced`]); lets a control plane that split its `ControlSide` notice.
    pub fn replaced(&self) -> bool {
        self.map.replaced()
    }

    /// Random id of the file's creation; changes when the data plane recreates the file.
    pub fn creation_id(&self) -> u64 {
        self.map
            .header()
            .creation_id
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The data plane's ends. Creates the file if missing (or if incompatible: recreate it),
/// re-attaches to a compatible one otherwise.
#[cfg(not(switchyard_loom))]
#[derive(Debug)]
pub struct DataSide {
    pub commands: Consumer,
    pub events: Producer,
}

/// Attach the data plane to the ring file at `path` with `slots` slots per ring.
///
/// A file that is missing, empty, incompatible (other layout version, slot size or slot
/// count) or corrupt is replaced by a fresh one (a new file renamed over the path, so a
/// control plane still mapping the old one is not disturbed and can notice with
/// [`ControlSide::replaced`]). Otherwise the data plane continues where its predecessor
/// stopped. [`RingError::Busy`] while another live process holds the data side.
#[cfg(not(switchyard_loom))]
pub fn attach_data(path: &Path, slots: u32) -> Result<DataSide, RingError> {
    let map = Arc::new(file::attach_data(path, slots)?);
    Ok(DataSide {
        commands: Consumer::new(map.clone(), Dir::Commands),
        events: Producer::new(map, Dir::Events),
    })
}

/// Replace the ring file at `path` with a fresh, empty one of `slots` slots per ring, for a
/// data plane whose ring turned out corrupt while it ran: the caller holds the data side
/// of the old file (so no other data plane can), and drops it once this returned. Messages
/// still in the old file are lost; a control plane mapping it sees
/// [`ControlSide::replaced`] and attaches to the new one.
#[cfg(not(switchyard_loom))]
pub fn recreate_data(path: &Path, slots: u32) -> Result<DataSide, RingError> {
    let map = Arc::new(file::recreate_data(path, slots)?);
    Ok(DataSide {
        commands: Consumer::new(map.clone(), Dir::Commands),
        events: Producer::new(map, Dir::Events),
    })
}

#[cfg(not(switchyard_loom))]
impl DataSide {
    /// Look for corruption in both rings without moving anything (see
    /// [`Producer::check`]); the slow path calls it every turn, so a corrupt file is found
    /// within one turn even when neither ring has traffic.
    pub fn check(&mut self) -> Result<(), RingError> {
        self.commands.check()?;
        self.events.check()
    }
}

/// The control plane's ends. Attaches to an existing file created by the data plane (Err if
/// missing/incompatible).
#[cfg(not(switchyard_loom))]
#[derive(Debug)]
pub struct ControlSide {
    pub commands: Producer,
    pub events: Consumer,
}

#[cfg(not(switchyard_loom))]
impl ControlSide {
    /// Whether the data plane replaced the file since we attached; our mapping is then an
    /// orphan nobody reads, and the control plane should drop this and attach again.
    pub fn replaced(&self) -> bool {
        self.commands.map.replaced()
    }

    /// Look for corruption in both rings without moving anything (see
    /// [`Producer::check`]).
    pub fn check(&mut self) -> Result<(), RingError> {
        self.commands.check()?;
        self.events.check()
    }
}

/// Attach the control plane to the ring file at `path`, which the data plane created.
/// `Io` (NotFound) when missing, `Incompatible` when not (yet) a valid ring, `Corrupt` on
/// impossible indices, `Busy` while another live process holds the control side.
#[cfg(not(switchyard_loom))]
pub fn attach_control(path: &Path) -> Result<ControlSide, RingError> {
    let map = Arc::new(file::attach_control(path)?);
    Ok(ControlSide {
        commands: Producer::new(map.clone(), Dir::Commands),
        events: Consumer::new(map, Dir::Events),
    })
}
