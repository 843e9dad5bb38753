//! The SRTP index journal: where a data plane leaves the highest SRTP/SRTCP index it used
//! under each static key, so that the next data plane never uses one again.
//!
//! Why: sessions keyed statically (relay links, `/v1/sessions` with keys, forwards) outlive
//! a data-plane restart: the control plane provisions them again with the same keys. A fresh
//! SRTP context would start the SRTCP index and the rollover counter at 0 and encrypt new
//! packets under indices it already used: a two-time pad under AES-CM, a nonce reuse under
//! AES-GCM (issue 9). And a receiver that forgot the ROC of a stream past a sequence wrap
//! could not authenticate anything. So every packet a static context protects or accepts
//! stores its index here first, and a context created again for the same session and key
//! resumes above it (docs/crypto.md, "Key and index reuse").
//!
//! Crash safety: the file is a `MAP_SHARED` mapping of a file under `/dev/shm`. A store into
//! it is in the kernel's page cache the moment it is made, so it survives the process
//! (SIGKILL, panic, abort) without `msync`. The index is stored before the packet is handed
//! to the socket, so nothing sent is ever missing from the journal. A host reboot loses the
//! file, and with it every session: the control plane's view dies too.
//!
//! Layout (`#[repr(C)]`, host order): a [`Header`], a directory of `capacity` entries
//! (`session id`, `key tag`: 16 bytes each, a tag of 0 is a free entry), then `capacity`
//! records of [`ENTRIES`] × (`PRESENT | ssrc`, `index`). The directory is small and dense
//! (scanned when a session is added); records are touched only when used, so an idle
//! journal costs almost no memory.

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::MmapMut;

const MAGIC: u64 = u64::from_le_bytes(*b"SWYSRTPJ");
/// Bump when the layout changes.
pub const VERSION: u32 = 1;

/// The four per-SSRC tables of one SRTP context (see [`crate::srtp::Context`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Table {
    RtpTx = 0,
    RtpRx = 1,
    RtcpTx = 2,
    RtcpRx = 3,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::RtpTx, Table::RtpRx, Table::RtcpTx, Table::RtcpRx];
}

/// Slots per table in a record: an SRTP context's SSRC table size (`srtp::MAX_SSRCS`, which
/// asserts it fits). Defined here so the journal, a storage layer, imports nothing above it.
pub const SLOTS: usize = 16;
/// Entries per record: every slot of every table of one context.
pub const ENTRIES: usize = 4 * SLOTS;
const PRESENT: u64 = 1 << 63;
const WORDS: usize = 2 * ENTRIES;

#[repr(C)]
struct Header {
    magic: u64,
    version: u32,
    _pad0: u32,
    capacity: u64,
    _pad: [u64; 5],
}

const HEADER: usize = std::mem::size_of::<Header>();
const DIR_ENTRY: usize = 16;
const RECORD: usize = WORDS * 8;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("SRTP journal {0}: {1}")]
    Io(String, std::io::Error),
    #[error("SRTP journal {0} is owned by uid {1}, not by this process's uid {2}")]
    Owner(String, u32, u32),
    #[error("SRTP journal is full ({0} records): more live static-key sessions than the data plane is sized for")]
    Full(usize),
}

/// A mapped journal, shared by every worker of one data plane.
pub struct Journal {
    map: MmapMut,
    capacity: usize,
    /// Which records this process holds (claimed or resumed). A record held by nobody here
    /// belongs to a session of an earlier data plane that was not provisioned again; it is
    /// reused only when no free record is left.
    held: Vec<AtomicBool>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// What opening a journal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// An existing journal of the same layout and size: its indices carry over.
    Kept,
    /// None was there, or it had another layout or size: a new, empty one.
    Created,
}

impl Journal {
    /// Map the journal at `path` sized for `capacity` live static-key sessions, keeping what
    /// an earlier data plane left when the layout and size match, else starting afresh. The
    /// file is opened without following symlinks, must belong to this process's user, and
    /// is created with mode 0600 (it holds key tags, never keys).
    pub fn open(path: &Path, capacity: usize) -> Result<(Self, Opened), JournalError> {
        let name = path.display().to_string();
        let err = |e| JournalError::Io(name.clone(), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(JournalError::Owner(name, meta.uid(), me));
        }
        let len = HEADER + capacity * (DIR_ENTRY + RECORD);
        let matches = meta.len() == len as u64 && {
            let mut head = [0u8; HEADER];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).is_ok()
                && u64::from_ne_bytes(head[0..8].try_into().unwrap_or_default()) == MAGIC
                && u32::from_ne_bytes(head[8..12].try_into().unwrap_or_default()) == VERSION
                && u64::from_ne_bytes(head[16..24].try_into().unwrap_or_default())
                    == capacity as u64
        };
        if !matches {
            // Zero everything: a shorter file is extended with zeros, a longer or foreign
            // one is cut to nothing first.
            file.set_len(0).map_err(err)?;
            file.set_len(len as u64).map_err(err)?;
        }
        // SAFETY: the file is `len` bytes long and only data planes of this node map it;
        // the one running is its only writer (the node's single data plane process). Every
        // field is an integer, valid for any bits.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(err)?;
        if map.len() < len {
            return Err(JournalError::Io(
                name,
                std::io::Error::other("mapping shorter than the file"),
            ));
        }
        if !matches {
            let header = Header {
                magic: MAGIC,
                version: VERSION,
                _pad0: 0,
                capacity: capacity as u64,
                _pad: [0; 5],
            };
            // SAFETY: the mapping is page-aligned and at least HEADER bytes long; nobody else
            // maps it yet.
            unsafe { std::ptr::write(map.as_mut_ptr().cast::<Header>(), header) };
        }
        let held = (0..capacity).map(|_| AtomicBool::new(false)).collect();
        let opened = if matches {
            Opened::Kept
        } else {
            Opened::Created
        };
        Ok((
            Self {
                map,
                capacity,
                held,
            },
            opened,
        ))
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= self.map.len());
        // SAFETY: every offset passed here is HEADER (64) plus multiples of 8 below the
        // length checked in `open`; the mapping is page-aligned, so the word is aligned.
        // AtomicU64 is valid for any bits.
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn dir(&self, i: usize) -> (&AtomicU64, &AtomicU64) {
        let at = HEADER + i * DIR_ENTRY;
        (self.word(at), self.word(at + 8))
    }

    fn record_word(&self, i: usize, w: usize) -> &AtomicU64 {
        self.word(HEADER + self.capacity * DIR_ENTRY + i * RECORD + w * 8)
    }

    /// The record of session `id` under key `tag`: the one an earlier data plane left
    /// (`resumed` true: its indices must be honoured), or a new empty one. Two workers may
    /// call this at once: claiming a free entry is a compare-and-swap on its tag.
    pub fn take(self: &Arc<Self>, id: u64, tag: u64) -> Result<(Slot, bool), JournalError> {
        let tag = tag | 1; // 0 marks a free entry
                           // `held` is the claim: only the thread whose swap turned it on may touch the entry.
        for i in 0..self.capacity {
            let (sid, t) = self.dir(i);
            if t.load(Ordering::Acquire) == tag
                && sid.load(Ordering::Acquire) == id
                && !self.held[i].swap(true, Ordering::AcqRel)
            {
                return Ok((self.slot(i), true));
            }
        }
        // A free entry, else one left by a session nobody provisioned again.
        for stale in [false, true] {
            for i in 0..self.capacity {
                let (sid, t) = self.dir(i);
                let is_free = t.load(Ordering::Acquire) == 0;
                if (is_free || stale) && !self.held[i].swap(true, Ordering::AcqRel) {
                    t.store(0, Ordering::Release);
                    for w in 0..WORDS {
                        self.record_word(i, w).store(0, Ordering::Relaxed);
                    }
                    sid.store(id, Ordering::Release);
                    t.store(tag, Ordering::Release);
                    return Ok((self.slot(i), false));
                }
            }
        }
        Err(JournalError::Full(self.capacity))
    }

    fn slot(self: &Arc<Self>, record: usize) -> Slot {
        Slot {
            journal: self.clone(),
            record,
        }
    }
}

/// One session's record, held by the context that writes it. Dropping it keeps the record
/// (the data plane may be stopping); [`Slot::release`] frees it when the session ends.
pub struct Slot {
    journal: Arc<Journal>,
    record: usize,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("record", &self.record)
            .finish()
    }
}

impl Slot {
    /// Remember that `index` was used for `ssrc` in slot `slot` of `table`. Two relaxed
    /// stores into shared memory: cheap enough for every packet.
    #[inline]
    pub fn store(&self, table: Table, slot: usize, ssrc: u32, index: u64) {
        let k = table as usize * SLOTS + slot;
        if k >= ENTRIES {
            return;
        }
        self.journal
            .record_word(self.record, 2 * k + 1)
            .store(index, Ordering::Relaxed);
        self.journal
            .record_word(self.record, 2 * k)
            .store(PRESENT | u64::from(ssrc), Ordering::Relaxed);
    }

    /// Every stored entry: (table, slot, ssrc, index).
    pub fn entries(&self) -> impl Iterator<Item = (Table, usize, u32, u64)> + '_ {
        (0..ENTRIES).filter_map(move |k| {
            let meta = self
                .journal
                .record_word(self.record, 2 * k)
                .load(Ordering::Relaxed);
            if meta & PRESENT == 0 {
                return None;
            }
            let index = self
                .journal
                .record_word(self.record, 2 * k + 1)
                .load(Ordering::Relaxed);
            let table = Table::ALL[k / SLOTS];
            Some((table, k % SLOTS, meta as u32, index))
        })
    }

    /// The session ended for good: free its record for another session.
    pub fn release(self) {
        let (_, t) = self.journal.dir(self.record);
        t.store(0, Ordering::Release);
        self.journal.held[self.record].store(false, Ordering::Release);
    }
}

/// A tag that tells two keys (and the two directions of one session) apart without
/// storing either key: the first 8 bytes of
/// SHA-256(label ‖ direction ‖ profile name ‖ 0 ‖ remote master ‖ local master).
pub fn key_tag(direction: u8, profile: &str, remote: &[u8], local: &[u8]) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"switchyard srtp journal v1\0");
    ctx.update(&[direction]);
    ctx.update(profile.as_bytes());
    ctx.update(&[0]);
    ctx.update(remote);
    ctx.update(local);
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_le_bytes(b)
}

const _: () = assert!(HEADER == 64);

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("swy-journal-{name}-{}", std::process::id()))
    }

    #[test]
    fn survives_reopen_and_frees_on_release() {
        let p = path("reopen");
        let _ = std::fs::remove_file(&p);
        let (j, opened) = Journal::open(&p, 4).expect("open");
        assert_eq!(opened, Opened::Created);
        let j = Arc::new(j);
        let (a, resumed) = j.take(7, 99).expect("a");
        assert!(!resumed);
        a.store(Table::RtcpTx, 3, 0xabc, 41);
        a.store(Table::RtpRx, 0, 0xdef, 70_000);
        drop(a);
        drop(j);

        // A new process (the restarted data plane) finds it for the same id and key only.
        let (j, opened) = Journal::open(&p, 4).expect("reopen");
        assert_eq!(opened, Opened::Kept);
        let j = Arc::new(j);
        let (other_key, resumed) = j.take(7, 100).expect("other key");
        assert!(!resumed, "another key starts from nothing");
        assert_eq!(other_key.entries().count(), 0);
        let (a, resumed) = j.take(7, 99).expect("same key");
        assert!(resumed);
        let mut got: Vec<_> = a.entries().collect();
        got.sort_by_key(|e| e.0 as usize);
        assert_eq!(
            got,
            vec![
                (Table::RtpRx, 0, 0xdef, 70_000),
                (Table::RtcpTx, 3, 0xabc, 41)
            ]
        );
        // Held: a second take of the same session gets a fresh record, not this one.
        let (dup, resumed) = j.take(7, 99).expect("dup");
        assert!(!resumed);
        dup.release();
        a.release();
        other_key.release();
        let (again, resumed) = j.take(7, 99).expect("after release");
        assert!(!resumed, "a released record is forgotten");
        assert_eq!(again.entries().count(), 0);
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn full_reuses_records_nobody_resumed_then_refuses() {
        let p = path("full");
        let _ = std::fs::remove_file(&p);
        let j = Arc::new(Journal::open(&p, 2).expect("open").0);
        let a = j.take(1, 1).expect("1").0;
        let b = j.take(2, 1).expect("2").0;
        assert!(matches!(j.take(3, 1), Err(JournalError::Full(2))));
        drop((a, b));
        drop(j);
        // After a restart, records nobody resumed give way when the journal is full.
        let j = Arc::new(Journal::open(&p, 2).expect("reopen").0);
        let (one, resumed) = j.take(1, 1).expect("1 again");
        assert!(resumed);
        let (three, resumed) = j.take(3, 1).expect("3 takes 2's record");
        assert!(!resumed);
        assert!(matches!(j.take(4, 1), Err(JournalError::Full(2))));
        one.release();
        three.release();
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn another_size_or_garbage_starts_afresh() {
        let p = path("garbage");
        std::fs::write(&p, [7u8; 4096]).expect("write");
        let (j, opened) = Journal::open(&p, 2).expect("open");
        assert_eq!(opened, Opened::Created);
        drop(j);
        let (_, opened) = Journal::open(&p, 3).expect("resize");
        assert_eq!(opened, Opened::Created);
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn symlinks_are_refused() {
        let target = path("target");
        let link = path("link");
        let _ = std::fs::remove_file(&link);
        std::fs::write(&target, b"x").expect("target");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(matches!(
            Journal::open(&link, 2),
            Err(JournalError::Io(_, _))
        ));
        std::fs::remove_file(&link).ok();
        std::fs::remove_file(&target).ok();
    }

    #[test]
    fn key_tags_differ_by_key_and_profile() {
        let a = key_tag(0, "AES_CM_128_HMAC_SHA1_80", &[1; 30], &[2; 30]);
        assert_ne!(a, key_tag(0, "AES_CM_128_HMAC_SHA1_80", &[1; 30], &[3; 30]));
        assert_ne!(a, key_tag(0, "AEAD_AES_128_GCM", &[1; 30], &[2; 30]));
        assert_ne!(a, key_tag(1, "AES_CM_128_HMAC_SHA1_80", &[1; 30], &[2; 30]));
        assert_eq!(a, key_tag(0, "AES_CM_128_HMAC_SHA1_80", &[1; 30], &[2; 30]));
    }
}
