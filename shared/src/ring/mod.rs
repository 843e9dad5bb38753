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
//! Security contract: the file is a local channel between two processes of the same user
//! (mode 0600). Still, its contents are treated as untrusted input: the header is validated,
//! index differences are clamped, and every length prefix is checked, so a corrupt or
//! hostile file yields [`RingError`]s, never out-of-bounds access or a panic. What this
//! cannot prevent: someone truncating the file under a live mapping (the kernel then sends
//! SIGBUS).

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
    /// Impossible indices or slot contents.
    #[error("ring file corrupt: {0}")]
    Corrupt(String),
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
}

/// Slots per ring unless configured otherwise: with ~2 KiB slots that is ~2 MiB per ring,
/// and at least a thousand commands of slack before the control plane sees back-pressure.
pub const DEFAULT_SLOTS: u32 = 1024;

/// The writing end of one ring.
#[cfg(not(switchyard_loom))]
pub struct Producer {
    map: Arc<Mapping>,
    dir: Dir,
    /// Our copy of `tail`; only we write it, so the shared one is only ever stored.
    tail: u64,
}

/// The reading end of one ring.
#[cfg(not(switchyard_loom))]
pub struct Consumer {
    map: Arc<Mapping>,
    dir: Dir,
    /// Our copy of `head`; only we write it.
    head: u64,
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
        Producer { map, dir, tail }
    }

    /// Append one message (at most [`MAX_MESSAGE`] bytes). On `Err` nothing was written; on
    /// [`PushError::Full`] retry later. Wakes the consumer if it sleeps in [`Consumer::wait`].
    pub fn push(&mut self, msg: &[u8]) -> Result<(), PushError> {
        let idx = self.map.indices(self.dir);
        let slots = self.map.slot_area(self.dir);
        if spsc::push(&idx, &slots, &mut self.tail, msg)? && spsc::take_waiter(&idx) {
            futex::wake(idx.waiting);
        }
        Ok(())
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
        Consumer { map, dir, head }
    }

    /// Copy the next message into buf (cleared first); false when empty.
    ///
    /// Errors: [`RingError::Corrupt`] when the indices are impossible (nothing is consumed;
    /// the ring is unusable until recreated) or when a slot's length prefix is (that slot is
    /// skipped, so the next pop continues with the following message).
    pub fn pop(&mut self, buf: &mut Vec<u8>) -> Result<bool, RingError> {
        let idx = self.map.indices(self.dir);
        let slots = self.map.slot_area(self.dir);
        spsc::pop(&idx, &slots, &mut self.head, buf).map_err(|e| match e {
            spsc::PopError::Indices { head, tail } => RingError::Corrupt(format!(
                "{:?} ring: head {head}, tail {tail}, capacity {}",
                self.dir,
                self.map.slots()
            )),
            spsc::PopError::Length { index, len } => RingError::Corrupt(format!(
                "{:?} ring: message {index} claims {len} bytes",
                self.dir
            )),
        })
    }

    /// Sleep until a message is there or `timeout` passed; returns at once if one already is.
    /// May return early (signals); callers pop and wait again.
    pub fn wait(&self, timeout: Duration) {
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
