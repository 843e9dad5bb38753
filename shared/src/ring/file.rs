//! Opening, creating and mapping the ring file, and typed access to what is in it.
//!
//! Nothing here hands out a reference to the slot bytes: the other process writes them at
//! any time, so they are only ever touched through raw pointers (see [`MappedSlots`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::{MmapOptions, MmapRaw};

use super::layout::{self, Dir, Header, RingIndices, Side, SLOT_HEADER, SLOT_SIZE};
use super::spsc::{BadLength, Indices, Slots};
use super::{lock, RingError};

/// A mapped, validated ring file with this process's side lock held.
pub(crate) struct Mapping {
    map: MmapRaw,
    /// Holds the side's OFD lock for as long as either end lives.
    _file: File,
    path: PathBuf,
    dev_ino: (u64, u64),
    slots: u32,
}

impl Mapping {
    pub(crate) fn slots(&self) -> u32 {
        self.slots
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned and at least `file_len(slots)` bytes (checked
        // before a Mapping exists), so a Header fits at offset 0; it is all atomics, so a
        // shared reference is sound while the other process writes the same memory.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    fn ring(&self, dir: Dir) -> &RingIndices {
        // SAFETY: as for `header`: in bounds (offset < SLOTS_OFFSET <= len), 128-aligned
        // (page base + multiple of 128), all atomics.
        unsafe { &*(self.map.as_ptr().add(dir.indices_offset()) as *const RingIndices) }
    }

    pub(crate) fn indices(&self, dir: Dir) -> Indices<'_> {
        let r = self.ring(dir);
        Indices {
            head: &r.head.0,
            tail: &r.tail.0,
            waiting: &r.waiting.0,
        }
    }

    pub(crate) fn slot_area(&self, dir: Dir) -> MappedSlots<'_> {
        MappedSlots {
            // SAFETY: the slot area of `dir` lies inside the mapping (file_len covers both).
            base: unsafe { self.map.as_mut_ptr().add(dir.slots_offset(self.slots)) },
            count: self.slots,
            _map: std::marker::PhantomData,
        }
    }

    /// Whether the path now names another file (the data plane recreated it): this mapping
    /// is then orphaned and the control plane should attach again.
    pub(crate) fn replaced(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != self.dev_ino,
            Err(_) => true,
        }
    }

    /// Why the file is marked corrupt (see `Header::corrupt`); `None` while it is not.
    pub(crate) fn corrupt_mark(&self) -> Option<String> {
        let by = match self.header().corrupt.load(Ordering::Acquire) {
            0 => return None,
            1 => "the data plane",
            2 => "the control plane",
            _ => "an unknown writer",
        };
        Some(format!("ring file marked corrupt by {by}"))
    }

    /// Mark the file corrupt, as found by `side` (the first mark stays).
    pub(crate) fn mark_corrupt(&self, side: Side) {
        let _ = self.header().corrupt.compare_exchange(
            0,
            side as u32 + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Check both rings' indices: `tail - head` within capacity.
    fn validate_indices(&self) -> Result<(), RingError> {
        for dir in [Dir::Commands, Dir::Events] {
            let idx = self.indices(dir);
            let head = idx.head.load(Ordering::Acquire);
            let tail = idx.tail.load(Ordering::Acquire);
            if tail.wrapping_sub(head) > u64::from(self.slots) {
                return Err(RingError::Corrupt(format!(
                    "{dir:?} ring: head {head}, tail {tail}, capacity {}",
                    self.slots
                )));
            }
        }
        Ok(())
    }
}

/// The slots of one ring, as raw memory in the mapping.
pub(crate) struct MappedSlots<'a> {
    base: *mut u8,
    count: u32,
    _map: std::marker::PhantomData<&'a Mapping>,
}

impl MappedSlots<'_> {
    fn slot(&self, index: u64) -> *mut u8 {
        let i = (index % u64::from(self.count)) as usize;
        // SAFETY: i < count, and the area holds count slots of SLOT_SIZE bytes.
        unsafe { self.base.add(i * SLOT_SIZE) }
    }
}

impl Slots for MappedSlots<'_> {
    fn count(&self) -> u64 {
        u64::from(self.count)
    }

    fn max_len(&self) -> usize {
        SLOT_SIZE - SLOT_HEADER
    }

    unsafe fn write(&self, index: u64, msg: &[u8]) {
        let slot = self.slot(index);
        // SAFETY: the slot is in the mapping, 8-aligned, and ours until published (the
        // caller's contract); msg.len() <= max_len so the payload fits after the header.
        unsafe {
            std::ptr::write_volatile(slot as *mut u32, msg.len() as u32);
            std::ptr::copy_nonoverlapping(msg.as_ptr(), slot.add(SLOT_HEADER), msg.len());
        }
    }

    unsafe fn read(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), BadLength> {
        let slot = self.slot(index);
        buf.clear();
        // SAFETY: the slot is in the mapping and 8-aligned. Read the length once (volatile:
        // a hostile writer could change it) and validate that copy before using it.
        let len = unsafe { std::ptr::read_volatile(slot as *const u32) };
        if len as usize > self.max_len() {
            return Err(BadLength(len));
        }
        let len = len as usize;
        buf.reserve(len);
        // SAFETY: `len` bytes after the slot header are inside the slot; `buf` has room for
        // them and they are plain bytes, so any content is a valid value.
        unsafe {
            std::ptr::copy_nonoverlapping(slot.add(SLOT_HEADER), buf.as_mut_ptr(), len);
            buf.set_len(len);
        }
        Ok(())
    }
}

fn map(file: &File, len: usize) -> io::Result<MmapRaw> {
    MmapOptions::new().len(len).map_raw(file)
}

fn dev_ino(file: &File) -> io::Result<(u64, u64)> {
    let m = file.metadata()?;
    Ok((m.dev(), m.ino()))
}

fn lock_side(file: &File, side: Side) -> Result<(), RingError> {
    if lock::try_lock(file, side as i64)? {
        Ok(())
    } else {
        Err(RingError::Busy)
    }
}

fn creation_id() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Open the ring file without following a symlink, and only if this process's user owns
/// it: the ring carries SRTP keys, so a file planted by someone else is never used.
fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let owner = file.metadata()?.uid();
    if owner != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {owner}, not to this process's uid {me}",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// Map an existing file that must already be a valid ring.
fn map_existing(file: File, path: &Path) -> Result<Mapping, RingError> {
    let actual = file.metadata()?.len();
    if actual < layout::SLOTS_OFFSET as u64 {
        return Err(RingError::Incompatible(format!(
            "file is {actual} bytes, too small for a ring"
        )));
    }
    // Map the header alone first: the slot count it claims is not trusted yet.
    let head = map(&file, layout::SLOTS_OFFSET)?;
    // SAFETY: page-aligned mapping of SLOTS_OFFSET >= size_of::<Header>() bytes; all atomics.
    let header = unsafe { &*(head.as_ptr() as *const Header) };
    let slots = header.validate(actual)?;
    drop(head);
    let mapping = Mapping {
        map: map(&file, layout::file_len(slots))?,
        dev_ino: dev_ino(&file)?,
        _file: file,
        path: path.to_owned(),
        slots,
    };
    // The header could have changed between the two maps (another writer): check again.
    mapping.header().validate(actual)?;
    mapping.validate_indices()?;
    if let Some(why) = mapping.corrupt_mark() {
        return Err(RingError::Corrupt(why));
    }
    Ok(mapping)
}

/// Size, map and initialise `file` (empty, locked by us) as a fresh ring.
fn init_new(file: File, path: &Path, slots: u32) -> Result<Mapping, RingError> {
    let len = layout::file_len(slots);
    file.set_len(len as u64)?;
    let mapping = Mapping {
        map: map(&file, len)?,
        dev_ino: dev_ino(&file)?,
        _file: file,
        path: path.to_owned(),
        slots,
    };
    // The file was empty, so every index and futex word is already zero.
    mapping.header().init(slots, creation_id());
    Ok(mapping)
}

/// The control plane's attach: the file must exist and be a valid ring.
pub(crate) fn attach_control(path: &Path) -> Result<Mapping, RingError> {
    let file = open_rw(path, false)?;
    lock_side(&file, Side::Control)?;
    map_existing(file, path)
}

/// The data plane's attach: create, re-attach, or replace an incompatible or corrupt file.
pub(crate) fn attach_data(path: &Path, slots: u32) -> Result<Mapping, RingError> {
    layout::check_slots(slots)?;
    // Another data plane may replace the file between our open and our lock; then our lock
    // is on an orphan, so look again. Twice is plenty unless someone is fighting us.
    for _ in 0..3 {
        let file = open_rw(path, true)?;
        lock_side(&file, Side::Data)?;
        let here = dev_ino(&file)?;
        match std::fs::metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == here => {}
            _ => continue,
        }
        if file.metadata()?.len() == 0 {
            // Fresh file. A control plane that opened it meanwhile sees a short file or a
            // header without magic and refuses; it never maps what we resize.
            return init_new(file, path, slots);
        }
        let existing = map_existing(file, path);
        match existing {
            Ok(m) if m.slots == slots => return Ok(m),
            // Incompatible, corrupt, or sized for another slot count: start over in a new
            // file renamed over the old one, so a control plane still mapping the old one
            // keeps valid memory (it is orphaned, see `Mapping::replaced`) instead of
            // faulting on a file we shrink under it.
            Ok(_) | Err(RingError::Incompatible(_)) | Err(RingError::Corrupt(_)) => {
                return replace(path, slots);
            }
            Err(e) => return Err(e),
        }
    }
    Err(RingError::Busy)
}

/// The data plane's way out of a ring found corrupt while it ran: a fresh file renamed over
/// the old one, whatever the old one holds (the caller holds its data side).
pub(crate) fn recreate_data(path: &Path, slots: u32) -> Result<Mapping, RingError> {
    layout::check_slots(slots)?;
    replace(path, slots)
}

fn replace(path: &Path, slots: u32) -> Result<Mapping, RingError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.{}.new", std::process::id(), creation_id()));
    let tmp = PathBuf::from(tmp);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let result = lock_side(&file, Side::Data)
        .and_then(|()| init_new(file, path, slots))
        .and_then(|m| {
            std::fs::rename(&tmp, path)?;
            Ok(m)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
