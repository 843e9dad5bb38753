//! The ring file's layout. `#[repr(C)]`, host byte order: both processes run on the same
//! host from the same build, and [`VERSION`] changes whenever anything here does.
//!
//! ```text
//! 0      Header                      (128 bytes)
//! 128    commands: head | tail | waiting   (one 128-byte line each)
//! 512    events:   head | tail | waiting
//! 4096   commands slots: slots × SLOT_SIZE
//! ...    events slots:   slots × SLOT_SIZE
//! ```
//!
//! A slot is a `u32` length, 4 reserved bytes, then up to [`MAX_MESSAGE`] bytes.
//! Lines are 128 bytes, not 64, because x86 prefetches cache lines in pairs: producer and
//! consumer indices must not share a pair either.

use std::mem::{align_of, offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::command::MAX_MESSAGE;

use super::RingError;

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"SWYRING\0");
/// Bump whenever the layout or the slot format changes, or the postcard encoding of the
/// messages in the slots does (postcard is not self-describing: a field added to
/// `SessionSpec` makes every spec unreadable to the other build). 2: `IceCredentials::
/// remote_pwd`, `SessionSpec::control`, `SnapshotDone::highest_id`. 3: `Role::Publisher::simulcast`,
/// `Command::SetMaxLayer`. 4: `Command::RetargetRelayIn`. 5: `VideoCodec` in
/// `UplinkTrack::video`, `Role::RelayIn::video` and `Command::RetargetRelayIn::video`;
/// `Command::FetchGroup`, `Event::GroupPacket` and `Event::GroupDone`;
/// `Command::SetMaxTemporal`.
pub(crate) const VERSION: u32 = 5;
/// Bytes before a slot's payload: the `u32` length and 4 reserved bytes (keeps slots 8-aligned).
pub(crate) const SLOT_HEADER: usize = 8;
pub(crate) const SLOT_SIZE: usize = SLOT_HEADER + MAX_MESSAGE;
/// Upper bound on the slot count, so a hostile header cannot make us map terabytes.
pub(crate) const MAX_SLOTS: u32 = 1 << 20;
pub(crate) const LINE: usize = 128;
pub(crate) const COMMANDS_OFFSET: usize = LINE;
pub(crate) const EVENTS_OFFSET: usize = COMMANDS_OFFSET + size_of::<RingIndices>();
/// Slots start on a page so the index lines never share one with message bytes.
pub(crate) const SLOTS_OFFSET: usize = 4096;

/// File header. Every field is atomic because the other process may write the file at any
/// time; the creator fills it in and publishes it by storing `magic` last (`Release`).
#[repr(C, align(128))]
pub(crate) struct Header {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub slot_size: AtomicU32,
    pub slots: AtomicU32,
    /// 0 while healthy; set by the side that found the rings corrupt ([`Side`] + 1), after
    /// which neither side uses the file again and the data plane replaces it. Zero in a
    /// fresh file, as it was when this field was reserved, so no version change.
    pub corrupt: AtomicU32,
    /// Random per creation, so a re-attaching process can tell a recreated file apart.
    pub creation_id: AtomicU64,
    pub file_len: AtomicU64,
}

/// One cache-line pair holding a single value.
#[repr(C, align(128))]
pub(crate) struct Line<T>(pub T);

/// The shared words of one ring, each on its own line.
#[repr(C)]
pub(crate) struct RingIndices {
    /// Next index the consumer reads; written only by the consumer.
    pub head: Line<AtomicU64>,
    /// Next index the producer writes; written only by the producer.
    pub tail: Line<AtomicU64>,
    /// Futex word, 1 while the consumer sleeps or is about to.
    pub waiting: Line<AtomicU32>,
}

const _: () = {
    assert!(size_of::<Header>() == LINE);
    assert!(align_of::<Header>() == LINE);
    assert!(offset_of!(RingIndices, tail) == LINE);
    assert!(size_of::<RingIndices>() == 3 * LINE);
    assert!(EVENTS_OFFSET + size_of::<RingIndices>() <= SLOTS_OFFSET);
    assert!(SLOT_SIZE % 8 == 0);
};

/// Which of the two rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Control plane → data plane.
    Commands,
    /// Data plane → control plane.
    Events,
}

/// Which process: the lock byte of each side, and who marked a file corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Data = 0,
    Control = 1,
}

impl Dir {
    /// The side that writes this ring.
    pub(crate) fn producer(self) -> Side {
        match self {
            Dir::Commands => Side::Control,
            Dir::Events => Side::Data,
        }
    }

    /// The side that reads this ring.
    pub(crate) fn consumer(self) -> Side {
        match self {
            Dir::Commands => Side::Data,
            Dir::Events => Side::Control,
        }
    }

    pub(crate) fn indices_offset(self) -> usize {
        match self {
            Dir::Commands => COMMANDS_OFFSET,
            Dir::Events => EVENTS_OFFSET,
        }
    }

    pub(crate) fn slots_offset(self, slots: u32) -> usize {
        match self {
            Dir::Commands => SLOTS_OFFSET,
            Dir::Events => SLOTS_OFFSET + ring_bytes(slots),
        }
    }
}

fn ring_bytes(slots: u32) -> usize {
    slots as usize * SLOT_SIZE
}

/// Total file size for `slots` slots per ring.
pub(crate) fn file_len(slots: u32) -> usize {
    SLOTS_OFFSET + 2 * ring_bytes(slots)
}

pub(crate) fn check_slots(slots: u32) -> Result<(), RingError> {
    if slots == 0 || slots > MAX_SLOTS {
        return Err(RingError::Incompatible(format!(
            "slot count {slots} outside 1..={MAX_SLOTS}"
        )));
    }
    Ok(())
}

impl Header {
    /// Fill in a fresh (zeroed) header and publish it.
    pub(crate) fn init(&self, slots: u32, creation_id: u64) {
        self.version.store(VERSION, Ordering::Relaxed);
        self.slot_size.store(SLOT_SIZE as u32, Ordering::Relaxed);
        self.slots.store(slots, Ordering::Relaxed);
        self.creation_id.store(creation_id, Ordering::Relaxed);
        self.file_len
            .store(file_len(slots) as u64, Ordering::Relaxed);
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// Check the header against this build and a file of `actual_len` bytes; returns the
    /// slot count.
    pub(crate) fn validate(&self, actual_len: u64) -> Result<u32, RingError> {
        let bad = |what: String| Err(RingError::Incompatible(what));
        let magic = self.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return bad(format!("bad magic {magic:#018x}"));
        }
        let version = self.version.load(Ordering::Relaxed);
        if version != VERSION {
            return bad(format!(
                "layout version {version}, this build speaks {VERSION}"
            ));
        }
        let slot_size = self.slot_size.load(Ordering::Relaxed);
        if slot_size as usize != SLOT_SIZE {
            return bad(format!(
                "slot size {slot_size}, this build uses {SLOT_SIZE}"
            ));
        }
        let slots = self.slots.load(Ordering::Relaxed);
        check_slots(slots)?;
        let want = file_len(slots) as u64;
        let recorded = self.file_len.load(Ordering::Relaxed);
        if recorded != want || actual_len < want {
            return bad(format!(
                "file is {actual_len} bytes (header says {recorded}), {slots} slots need {want}"
            ));
        }
        Ok(slots)
    }
}
