//! Tier 2: a page store on a directory ([`SsdStore`]).
//!
//! Pages live in fixed-size *slots* of exactly 4096 bytes, in files named `slots-00000.dat`,
//! `slots-00001.dat`, … inside the store's directory. Each file holds
//! [`SsdConfig::slots_per_file`] slots (default 16384, i.e. 64 MiB files) and is created sparse at
//! its full size; a slot takes disk space once it is written.
//!
//! | item        | layout                                                                    |
//! |-------------|---------------------------------------------------------------------------|
//! | file name   | `slots-{file:05}.dat`, `file` = 0, 1, 2, …                                 |
//! | file size   | `slots_per_file * 4096` bytes (sparse)                                     |
//! | slot        | [`SlotId`]`(file * slots_per_file + i)` at byte offset `i * 4096`          |
//! | slot bytes  | the raw page; no header, no magic                                          |
//! | checksum    | crc32c of the 4096 bytes, returned by [`SsdStore::write`], kept by the caller (the page table) and checked by every [`SsdStore::read`] |
//!
//! The files carry no metadata of their own: which slot holds which page is the engine's page
//! table (and, for replication, its log). **The store is volatile**: guest memory does not outlive
//! the VM, so [`SsdStore::open`] removes any `slots-*.dat` an earlier run left in the directory
//! and starts empty.
//!
//! Page I/O uses `O_DIRECT` (unless [`SsdConfig::direct_io`] is off), so a read comes from the
//! device and the host page cache does not silently act as extra DRAM.
//!
//! Concurrency: reads and writes take no exclusive lock — they `pread`/`pwrite` on shared file
//! descriptors. Allocation, freeing and [`SsdStore::shrink`] share one mutex over the slot
//! bitmap. Reading or writing a slot that is not allocated is a caller bug that this store does
//! not detect on the I/O path (it would cost a shared lock per I/O).
//!
//! Allocation is bits per slot: one bit per slot says allocated, one per 64 slots says "this
//! word has a free slot", and a hint names the lowest summary word that may have one — about
//! 2 bits of DRAM per slot in all, with the hole bitmap below, whatever the number of free slots.
//!
//! Compaction (the concept's `compactMemory`): [`SsdStore::alloc`] always hands out the lowest
//! free slot, so the tail files drain over time. [`SsdStore::compaction_plan`] names live slots in
//! mostly-free tail files that are worth moving down; the engine moves each (alloc, read, write,
//! update its page table, free). [`SsdStore::shrink`] then deletes trailing files without live
//! slots and punches holes over free slots elsewhere, returning the space to the file system.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use vmtier_uffd::{AlignedBuf, PAGE_SIZE};

use crate::fault::{FaultKind, FaultPlan, Op};

const PAGE: u64 = PAGE_SIZE as u64;

/// The system calls tier 2 makes on a slot file, as a hook under the real store code. The store
/// uses them only when opened with [`SsdStore::open_with_io`]; see [`FaultyIo`].
pub trait SlotIo: Send + Sync + std::fmt::Debug {
    /// Reads exactly `buf.len()` bytes at `offset` (`pread` until done).
    fn read_exact_at(&self, file: &File, path: &Path, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` (`pwrite` until done).
    fn write_all_at(&self, file: &File, path: &Path, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`.
    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()>;
}

/// The real system calls, as a [`SlotIo`] (what a store without a hook does directly).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealIo;

impl SlotIo for RealIo {
    fn read_exact_at(&self, file: &File, _: &Path, buf: &mut [u8], offset: u64) -> io::Result<()> {
        file.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, file: &File, _: &Path, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }
    fn sync_data(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_data()
    }
}

/// A [`SlotIo`] that runs the real system calls but injects the faults of a [`FaultPlan`]
/// (operations [`Op::Read`], [`Op::Write`], [`Op::Sync`]; the key is the slot file's path):
///
/// | fault              | read                                  | write                                        |
/// |--------------------|---------------------------------------|----------------------------------------------|
/// | `Eio`              | `EIO`, nothing read                   | `EIO`, nothing written                       |
/// | `Enospc`           | (as `Eio`)                            | `ENOSPC`, nothing written                    |
/// | `ShortWrite`       | (as `Eio`)                            | the first half (512-byte aligned) written, then `ENOSPC` |
/// | `EioAfter`         | read, then `EIO`                      | written, then `EIO`                          |
/// | `Delay(d)`         | sleeps `d`, then reads                | sleeps `d`, then writes                      |
/// | `FlipBit`          | reads, then flips one bit of the data | writes the data with one bit flipped, returns `Ok` |
#[derive(Debug, Clone)]
pub struct FaultyIo {
    plan: Arc<FaultPlan>,
}

impl FaultyIo {
    /// Injects the faults of `plan`.
    pub fn new(plan: Arc<FaultPlan>) -> Self {
        Self { plan }
    }
}

impl SlotIo for FaultyIo {
    fn read_exact_at(&self, file: &File, path: &Path, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let Some(f) = self.plan.check(Op::Read, &path.to_string_lossy()) else {
            return file.read_exact_at(buf, offset);
        };
        match f.kind {
            FaultKind::Delay(_) => {
                f.delay();
                file.read_exact_at(buf, offset)
            }
            FaultKind::FlipBit => {
                file.read_exact_at(buf, offset)?;
                f.flip(buf);
                Ok(())
            }
            FaultKind::EioAfter => file.read_exact_at(buf, offset).and(Err(f.io_error())),
            FaultKind::Eio | FaultKind::Enospc | FaultKind::ShortWrite => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }

    fn write_all_at(&self, file: &File, path: &Path, buf: &[u8], offset: u64) -> io::Result<()> {
        let Some(f) = self.plan.check(Op::Write, &path.to_string_lossy()) else {
            return file.write_all_at(buf, offset);
        };
        match f.kind {
            FaultKind::Delay(_) => {
                f.delay();
                file.write_all_at(buf, offset)
            }
            FaultKind::FlipBit => {
                // An aligned copy: the file may be open with O_DIRECT.
                let mut copy = AlignedBuf::zeroed(buf.len().max(PAGE_SIZE));
                copy[..buf.len()].copy_from_slice(buf);
                f.flip(&mut copy[..buf.len()]);
                file.write_all_at(&copy[..buf.len()], offset)
            }
            FaultKind::ShortWrite => {
                let half = (buf.len() / 2) & !511;
                file.write_all_at(&buf[..half], offset)?;
                Err(f.io_error())
            }
            FaultKind::EioAfter => file.write_all_at(buf, offset).and(Err(f.io_error())),
            FaultKind::Eio | FaultKind::Enospc => Err(f.io_error()),
        }
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        match self.plan.check(Op::Sync, &path.to_string_lossy()) {
            None | Some(crate::fault::Fault { kind: FaultKind::FlipBit, .. }) => file.sync_data(),
            Some(f @ crate::fault::Fault { kind: FaultKind::Delay(_), .. }) => {
                f.delay();
                file.sync_data()
            }
            Some(f @ crate::fault::Fault { kind: FaultKind::EioAfter, .. }) => file.sync_data().and(Err(f.io_error())),
            Some(f) => Err(f.io_error()),
        }
    }
}

/// A slot in the store: `file index * slots_per_file + slot index within the file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId(pub u32);

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// Configuration of a tier-2 page store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SsdConfig {
    /// Directory of the store; created if missing. Its `slots-*.dat` files are removed on open.
    pub dir: PathBuf,
    /// Slots (4 KiB each) per file. Default 16384: 64 MiB files.
    pub slots_per_file: u32,
    /// Use `O_DIRECT` for page I/O (default `true`). Turn off only for file systems that refuse
    /// it (tmpfs); reads are then served from the host page cache, which is DRAM.
    pub direct_io: bool,
}

impl SsdConfig {
    /// Default slot-file size in slots (64 MiB files).
    pub const DEFAULT_SLOTS_PER_FILE: u32 = 16384;

    /// A configuration with defaults for a store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), slots_per_file: Self::DEFAULT_SLOTS_PER_FILE, direct_io: true }
    }
}

impl Default for SsdConfig {
    fn default() -> Self {
        Self::new("vmtier-ssd")
    }
}

/// Errors of the tier-2 page store.
#[derive(Debug, thiserror::Error)]
pub enum SsdError {
    /// The configuration is unusable.
    #[error("invalid tier-2 config: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The store directory could not be created or listed.
    #[error("cannot create or list tier-2 directory {}", dir.display())]
    OpenDir {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A slot file left by an earlier run could not be removed.
    #[error("cannot remove stale slot file {} (remove it by hand or pick another directory)", file.display())]
    RemoveStale {
        /// The file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The file system refuses `O_DIRECT`.
    #[error(
        "the file system of {} does not support O_DIRECT (tmpfs?); put tier 2 on a disk file system, or set `direct_io = false` (reads will then come from the page cache)",
        file.display()
    )]
    DirectIoUnsupported {
        /// The file that could not be opened.
        file: PathBuf,
    },
    /// A slot file could not be created.
    #[error("cannot create slot file {}", file.display())]
    CreateFile {
        /// The file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// All `u32` slot ids are in use.
    #[error("tier 2 is out of slot ids ({slots} slots allocated); free pages or raise slots_per_file")]
    AllocExhausted {
        /// Slots in the store.
        slots: u64,
    },
    /// The slot is beyond the store's files.
    #[error("{slot} does not exist in the tier-2 store (it has {slots} slots)")]
    NoSuchSlot {
        /// The slot.
        slot: SlotId,
        /// Slots in the store.
        slots: u64,
    },
    /// The slot was freed twice, or freed without being allocated.
    #[error("{slot} freed but it is not allocated (double free)")]
    DoubleFree {
        /// The slot.
        slot: SlotId,
    },
    /// A span read whose slots do not all lie in one slot file (or run past the last slot id).
    #[error(
        "read_span of {slots} slots from {first}: a span must lie within one slot file of {slots_per_file} slots; split the read"
    )]
    SpanAcrossFiles {
        /// First slot of the span.
        first: SlotId,
        /// Slots in the span.
        slots: usize,
        /// Slots per file of the store.
        slots_per_file: u32,
    },
    /// A page buffer has the wrong length.
    #[error("{op} of {slot}: buffer is {len} bytes, a page is 4096")]
    BufferSize {
        /// `"write"` or `"read"`.
        op: &'static str,
        /// The slot.
        slot: SlotId,
        /// Buffer length.
        len: usize,
    },
    /// Writing a page failed (ENOSPC, EIO, …).
    #[error("cannot write {slot} at offset {offset} of {}", file.display())]
    Write {
        /// The slot.
        slot: SlotId,
        /// Its file.
        file: PathBuf,
        /// Byte offset in the file.
        offset: u64,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading a page failed.
    #[error("cannot read {slot} at offset {offset} of {}", file.display())]
    Read {
        /// The slot.
        slot: SlotId,
        /// Its file.
        file: PathBuf,
        /// Byte offset in the file.
        offset: u64,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The page read back does not match its checksum: the storage corrupted it.
    #[error(
        "{slot} in {} is corrupt: crc32c {actual:#010x}, expected {expected:#010x}; the page is lost from tier 2",
        file.display()
    )]
    Corrupt {
        /// The slot.
        slot: SlotId,
        /// Its file.
        file: PathBuf,
        /// Checksum recorded at write time.
        expected: u32,
        /// Checksum of the bytes read.
        actual: u32,
    },
    /// Punching a hole over free slots failed.
    #[error("cannot punch a hole at {offset}+{len} in {}", file.display())]
    PunchHole {
        /// The file.
        file: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Deleting an empty trailing slot file failed.
    #[error("cannot delete empty slot file {}", file.display())]
    RemoveFile {
        /// The file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `fdatasync` of a slot file failed: the writes since the last sync may not be durable.
    #[error("cannot sync slot file {}", file.display())]
    Sync {
        /// The file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `fstat` of a slot file failed.
    #[error("cannot stat slot file {}", file.display())]
    Stat {
        /// The file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Space and occupancy of a tier-2 store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SsdStats {
    /// Slot files.
    pub files: u32,
    /// Allocated slots.
    pub live_slots: u64,
    /// Free slots inside existing files.
    pub free_slots: u64,
    /// Apparent size of all slot files.
    pub file_bytes: u64,
    /// Disk space the slot files occupy (`st_blocks * 512`, summed).
    pub disk_bytes_allocated: u64,
    /// DRAM the allocator uses: two bits per slot of every file (allocated, punched out), one
    /// bit per 64 slots (the free-word summary) and the live count per file.
    pub allocator_bytes: u64,
}

#[derive(Debug)]
struct SlotFile {
    file: File,
    path: PathBuf,
}

/// Fewest slots [`SsdStore::alloc_many`] still wants for it to take a run from a wholly free
/// 64-slot group.
const MIN_RUN: usize = 16;

#[derive(Debug, Default)]
struct AllocState {
    /// One bit per slot of every file: allocated.
    live: Vec<u64>,
    /// One bit per word of `live`: the word has a clear bit (a free slot, or — in the last word
    /// only — a bit past the last slot).
    summary: Vec<u64>,
    /// Every summary word below this one is zero: the lowest free slot is at or above
    /// `hint * 64 * 64`.
    hint: usize,
    /// Live slots per file.
    live_per_file: Vec<u32>,
    /// One bit per slot: free and already punched out (no disk space).
    hole: Vec<u64>,
}

impl AllocState {
    /// Marks free `slot` allocated (files of `spf` slots); the caller then summarizes its word.
    fn take(&mut self, slot: u32, spf: u32) {
        set_bit(&mut self.live, slot, true);
        set_bit(&mut self.hole, slot, false);
        self.live_per_file[(slot / spf) as usize] += 1;
    }

    /// Brings the summary bit of `live` word `w` up to date, and the hint down to it if it has
    /// a free slot.
    fn summarize(&mut self, w: usize) {
        let has_free = self.live[w] != u64::MAX;
        set_bit(&mut self.summary, w as u32, has_free);
        if has_free {
            self.hint = self.hint.min(w / 64);
        }
    }

    /// Resizes the bitmaps from `from` slots to `slots` (new slots free and, per `hole`,
    /// punched out); bits past the last slot are cleared.
    fn resize(&mut self, from: u64, slots: u64, hole: bool) {
        let words = slots.div_ceil(64) as usize;
        self.live.resize(words, 0);
        self.hole.resize(words, 0);
        self.summary.resize(words.div_ceil(64), 0);
        let start = from.min(slots);
        for s in start..words as u64 * 64 {
            set_bit(&mut self.live, s as u32, false);
            set_bit(&mut self.hole, s as u32, hole && s < slots);
        }
        for w in start as usize / 64..words {
            self.summarize(w);
        }
        for w in words..self.summary.len() * 64 {
            set_bit(&mut self.summary, w as u32, false);
        }
        self.hint = self.hint.min(self.summary.len());
    }

    /// The lowest free slot below `slots`, if any.
    fn lowest_free(&mut self, slots: u64) -> Option<u32> {
        while self.hint < self.summary.len() {
            let sw = self.summary[self.hint];
            if sw == 0 {
                self.hint += 1;
                continue;
            }
            let w = self.hint * 64 + sw.trailing_zeros() as usize;
            let slot = (w * 64 + (!self.live[w]).trailing_zeros() as usize) as u64;
            // Only the last word may have clear bits past the last slot.
            return (slot < slots).then_some(slot as u32);
        }
        None
    }

    /// Free slots below `slots` that are not punched out yet, as runs (first slot, count).
    fn unpunched_free_runs(&self, slots: u64, spf: u32) -> Vec<(u32, u32)> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for (w, (&live, &hole)) in self.live.iter().zip(&self.hole).enumerate() {
            let mut bits = !live & !hole;
            while bits != 0 {
                let s = (w * 64) as u32 + bits.trailing_zeros();
                bits &= bits - 1;
                if u64::from(s) >= slots {
                    break;
                }
                match runs.last_mut() {
                    Some((first, n)) if *first + *n == s && !s.is_multiple_of(spf) => *n += 1,
                    _ => runs.push((s, 1)),
                }
            }
        }
        runs
    }
}

fn bit(v: &[u64], i: u32) -> bool {
    v.get(i as usize / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bit(v: &mut [u64], i: u32, on: bool) {
    let w = &mut v[i as usize / 64];
    if on {
        *w |= 1 << (i % 64);
    } else {
        *w &= !(1 << (i % 64));
    }
}

/// Tier 2: a page store of 4 KiB slots in files on a directory. See the [module docs](self).
#[derive(Debug)]
pub struct SsdStore {
    cfg: SsdConfig,
    files: RwLock<Vec<Arc<SlotFile>>>,
    alloc: Mutex<AllocState>,
    /// Opened with [`open_reader`](Self::open_reader): another process's store, read only.
    reader: bool,
    /// The I/O hook of [`open_with_io`](Self::open_with_io); `None`: direct system calls.
    io: Option<Arc<dyn SlotIo>>,
}

impl SsdStore {
    /// Opens an empty store in `cfg.dir`: creates the directory, removes any `slots-*.dat` an
    /// earlier run left there (the store is volatile) and, with `direct_io`, checks that the file
    /// system accepts `O_DIRECT`.
    pub fn open(cfg: SsdConfig) -> Result<Self, SsdError> {
        Self::open_inner(cfg, None)
    }

    /// [`open`](Self::open), with every page read, page write and sync of a slot file made
    /// through `io` instead of directly (fault injection: [`FaultyIo`]).
    pub fn open_with_io(cfg: SsdConfig, io: Arc<dyn SlotIo>) -> Result<Self, SsdError> {
        Self::open_inner(cfg, Some(io))
    }

    fn open_inner(cfg: SsdConfig, io: Option<Arc<dyn SlotIo>>) -> Result<Self, SsdError> {
        if cfg.slots_per_file == 0 || cfg.slots_per_file > (1 << 24) {
            return Err(SsdError::Config {
                reason: format!("slots_per_file = {} must be in 1..=16777216", cfg.slots_per_file),
            });
        }
        let open_dir = |source| SsdError::OpenDir { dir: cfg.dir.clone(), source };
        std::fs::create_dir_all(&cfg.dir).map_err(open_dir)?;
        for entry in std::fs::read_dir(&cfg.dir).map_err(open_dir)? {
            let entry = entry.map_err(open_dir)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("slots-") && name.ends_with(".dat") {
                let file = entry.path();
                tracing::debug!(file = %file.display(), "removing stale tier-2 slot file");
                std::fs::remove_file(&file).map_err(|source| SsdError::RemoveStale { file, source })?;
            }
        }
        let store =
            Self { cfg, files: RwLock::new(Vec::new()), alloc: Mutex::new(AllocState::default()), reader: false, io };
        if store.cfg.direct_io {
            let probe = store.cfg.dir.join(".direct-io-probe");
            let f = store.open_file(&probe);
            let _ = std::fs::remove_file(&probe);
            f?;
        }
        Ok(store)
    }

    /// Opens another process's store in `cfg.dir` to read it, as a secondary host reads the
    /// primary's tier 2 on shared storage: nothing is removed or created, slot files are opened
    /// read-only when first needed (the owner may add files later), and allocation, writes and
    /// frees are refused. Checksums come from the caller, as with [`open`](Self::open).
    pub fn open_reader(cfg: SsdConfig) -> Result<Self, SsdError> {
        if cfg.slots_per_file == 0 || cfg.slots_per_file > (1 << 24) {
            return Err(SsdError::Config {
                reason: format!("slots_per_file = {} must be in 1..=16777216", cfg.slots_per_file),
            });
        }
        std::fs::read_dir(&cfg.dir).map_err(|source| SsdError::OpenDir { dir: cfg.dir.clone(), source })?;
        Ok(Self {
            cfg,
            files: RwLock::new(Vec::new()),
            alloc: Mutex::new(AllocState::default()),
            reader: true,
            io: None,
        })
    }

    /// Opens, read-only, the slot files of a reader up to file `index`.
    fn open_files_up_to(&self, index: usize) -> Result<(), SsdError> {
        let mut files = self.files.write();
        while files.len() <= index {
            let path = self.path_of_file(files.len() as u32);
            files.push(Arc::new(self.open_read_only(path)?));
        }
        Ok(())
    }

    fn open_read_only(&self, path: PathBuf) -> Result<SlotFile, SsdError> {
        let mut opts = OpenOptions::new();
        opts.read(true);
        if self.cfg.direct_io {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(&path).map_err(|source| SsdError::CreateFile { file: path.clone(), source })?;
        Ok(SlotFile { file, path })
    }

    /// For a reader: if the file holding `slot` is no longer the one at its path (the owner
    /// deleted it and created it again), opens the one at the path instead. Returns whether it
    /// did. Always `false` for the owner, whose handles are the files.
    fn reopen_if_replaced(&self, slot: SlotId) -> Result<bool, SsdError> {
        if !self.reader {
            return Ok(false);
        }
        let index = (slot.0 / self.spf()) as usize;
        let Some(old) = self.files.read().get(index).cloned() else {
            return Ok(false);
        };
        let Ok(now) = std::fs::metadata(&old.path) else {
            return Ok(false);
        };
        let held = old.file.metadata().map_err(|source| SsdError::CreateFile { file: old.path.clone(), source })?;
        if (now.dev(), now.ino()) == (held.dev(), held.ino()) {
            return Ok(false);
        }
        let fresh = Arc::new(self.open_read_only(old.path.clone())?);
        if let Some(f) = self.files.write().get_mut(index) {
            *f = fresh;
        }
        Ok(true)
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &SsdConfig {
        &self.cfg
    }

    /// `pread` of a whole buffer, through the hook if there is one.
    #[inline]
    fn pread(&self, f: &SlotFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.io {
            None => f.file.read_exact_at(buf, offset),
            Some(io) => io.read_exact_at(&f.file, &f.path, buf, offset),
        }
    }

    /// `pwrite` of a whole buffer, through the hook if there is one.
    #[inline]
    fn pwrite(&self, f: &SlotFile, buf: &[u8], offset: u64) -> io::Result<()> {
        match &self.io {
            None => f.file.write_all_at(buf, offset),
            Some(io) => io.write_all_at(&f.file, &f.path, buf, offset),
        }
    }

    fn open_file(&self, path: &Path) -> Result<File, SsdError> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(true);
        if self.cfg.direct_io {
            opts.custom_flags(libc::O_DIRECT);
        }
        opts.open(path).map_err(|source| {
            if self.cfg.direct_io && source.raw_os_error() == Some(libc::EINVAL) {
                SsdError::DirectIoUnsupported { file: path.to_path_buf() }
            } else {
                SsdError::CreateFile { file: path.to_path_buf(), source }
            }
        })
    }

    fn path_of_file(&self, index: u32) -> PathBuf {
        self.cfg.dir.join(format!("slots-{index:05}.dat"))
    }

    fn spf(&self) -> u32 {
        self.cfg.slots_per_file
    }

    /// File path and byte offset of `slot` (for tests and `vmtier inspect`).
    pub fn file_path(&self, slot: SlotId) -> (PathBuf, u64) {
        let spf = self.spf();
        (self.path_of_file(slot.0 / spf), u64::from(slot.0 % spf) * PAGE)
    }

    fn locate(&self, slot: SlotId) -> Result<(Arc<SlotFile>, u64), SsdError> {
        let spf = self.spf();
        if self.reader && (slot.0 / spf) as usize >= self.files.read().len() {
            self.open_files_up_to((slot.0 / spf) as usize)?;
        }
        let files = self.files.read();
        match files.get((slot.0 / spf) as usize) {
            Some(f) => Ok((Arc::clone(f), u64::from(slot.0 % spf) * PAGE)),
            None => Err(SsdError::NoSuchSlot { slot, slots: files.len() as u64 * u64::from(spf) }),
        }
    }

    /// Allocates a slot: the lowest free one, else the first slot of a new file.
    pub fn alloc(&self) -> Result<SlotId, SsdError> {
        if self.reader {
            return Err(SsdError::Config { reason: "the store was opened read-only (open_reader)".into() });
        }
        let mut st = self.alloc.lock();
        let slots = self.slots(&st);
        let slot = match st.lowest_free(slots) {
            Some(slot) => slot,
            None => {
                self.grow(&mut st)?;
                let slots = self.slots(&st);
                st.lowest_free(slots).expect("a new slot file has free slots")
            }
        };
        st.take(slot, self.spf());
        st.summarize(slot as usize / 64);
        Ok(SlotId(slot))
    }

    /// Slots in all files.
    fn slots(&self, st: &AllocState) -> u64 {
        st.live_per_file.len() as u64 * u64::from(self.spf())
    }

    /// Adds a new, sparse slot file, all its slots free.
    fn grow(&self, st: &mut AllocState) -> Result<(), SsdError> {
        let spf = self.spf();
        let index = st.live_per_file.len() as u32;
        let first = u64::from(index) * u64::from(spf);
        if first + u64::from(spf) > u64::from(u32::MAX) {
            return Err(SsdError::AllocExhausted { slots: first });
        }
        let path = self.path_of_file(index);
        let file = self.open_file(&path)?;
        file.set_len(u64::from(spf) * PAGE).map_err(|source| SsdError::CreateFile { file: path.clone(), source })?;
        tracing::debug!(file = %path.display(), "tier 2 grew by one slot file");
        self.files.write().push(Arc::new(SlotFile { file, path }));
        // A new sparse file has no blocks: all its slots are holes.
        st.resize(first, first + u64::from(spf), true);
        st.live_per_file.push(0);
        Ok(())
    }

    /// Returns `slot` to the free list (lowest free slots are reused first). Freeing a slot that
    /// is not allocated is an error ([`SsdError::DoubleFree`]); the engine should treat it as a bug.
    pub fn free(&self, slot: SlotId) -> Result<(), SsdError> {
        let mut st = self.alloc.lock();
        if !bit(&st.live, slot.0) {
            debug_assert!(false, "double free of {slot}");
            return Err(SsdError::DoubleFree { slot });
        }
        set_bit(&mut st.live, slot.0, false);
        st.summarize(slot.0 as usize / 64);
        st.live_per_file[(slot.0 / self.spf()) as usize] -= 1;
        Ok(())
    }

    /// Allocates `n` slots at once so that they come out as runs, which
    /// [`write_many`](Self::write_many) writes with one I/O each: while at least
    /// [`MIN_RUN`] are still wanted, from wholly free 64-slot groups (lowest first), then the
    /// lowest free slots one by one. A store fragmented by single frees thus still takes a
    /// checkpoint's or an eviction run's pages in a few writes, not one per page. On error
    /// nothing stays allocated.
    pub fn alloc_many(&self, n: usize) -> Result<Vec<SlotId>, SsdError> {
        let mut out = Vec::with_capacity(n);
        if n >= MIN_RUN && !self.reader {
            let spf = self.spf();
            let mut st = self.alloc.lock();
            let slots = self.slots(&st);
            let mut sw = st.hint;
            while out.len() + MIN_RUN <= n && sw < st.summary.len() {
                if st.summary[sw] == 0 {
                    sw += 1;
                    continue;
                }
                for w in sw * 64..((sw + 1) * 64).min(st.live.len()) {
                    if out.len() + MIN_RUN > n {
                        break;
                    }
                    if st.live[w] != 0 || (w as u64 + 1) * 64 > slots {
                        continue;
                    }
                    let take = (n - out.len()).min(64);
                    for b in 0..take {
                        let slot = (w * 64 + b) as u32;
                        st.take(slot, spf);
                        out.push(SlotId(slot));
                    }
                    st.summarize(w);
                }
                sw += 1;
            }
        }
        while out.len() < n {
            match self.alloc() {
                Ok(slot) => out.push(slot),
                Err(e) => {
                    for slot in out {
                        let _ = self.free(slot);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Writes pages to `slots`; `data` holds them back to back (`slots.len()` × 4096 bytes,
    /// 4096-aligned, e.g. an [`AlignedBuf`]). Runs of consecutive slots in one file go out as one
    /// write. Returns the crc32c of each page.
    pub fn write_many(&self, slots: &[SlotId], data: &[u8]) -> Result<Vec<u32>, SsdError> {
        if data.len() != slots.len() * PAGE_SIZE {
            let slot = slots.first().copied().unwrap_or(SlotId(0));
            return Err(SsdError::BufferSize { op: "write_many", slot, len: data.len() });
        }
        if self.cfg.direct_io && !(data.as_ptr() as usize).is_multiple_of(PAGE_SIZE) {
            let mut b = AlignedBuf::zeroed(data.len().max(PAGE_SIZE));
            b[..data.len()].copy_from_slice(data);
            return self.write_many(slots, &b[..data.len()]);
        }
        let crcs = data.chunks_exact(PAGE_SIZE).map(crc32c::crc32c).collect();
        let spf = self.spf();
        let mut i = 0;
        while i < slots.len() {
            let mut j = i + 1;
            while j < slots.len() && slots[j].0 == slots[j - 1].0 + 1 && slots[j].0 / spf == slots[i].0 / spf {
                j += 1;
            }
            let (f, offset) = self.locate(slots[i])?;
            self.pwrite(&f, &data[i * PAGE_SIZE..j * PAGE_SIZE], offset).map_err(|source| SsdError::Write {
                slot: slots[i],
                file: f.path.clone(),
                offset,
                source,
            })?;
            i = j;
        }
        Ok(crcs)
    }

    /// Writes one page to `slot` and returns its crc32c, which the caller must keep and pass to
    /// [`read`](Self::read). `page` must be 4096 bytes; if it is not 4096-aligned (an
    /// [`AlignedBuf`] is), it is copied through an aligned bounce buffer.
    pub fn write(&self, slot: SlotId, page: &[u8]) -> Result<u32, SsdError> {
        if page.len() != PAGE_SIZE {
            return Err(SsdError::BufferSize { op: "write", slot, len: page.len() });
        }
        let crc = crc32c::crc32c(page);
        let (f, offset) = self.locate(slot)?;
        let bounce;
        let data = if self.cfg.direct_io && !(page.as_ptr() as usize).is_multiple_of(PAGE_SIZE) {
            let mut b = AlignedBuf::zeroed(PAGE_SIZE);
            b.copy_from_slice(page);
            bounce = b;
            &bounce[..]
        } else {
            page
        };
        self.pwrite(&f, data, offset).map_err(|source| SsdError::Write {
            slot,
            file: f.path.clone(),
            offset,
            source,
        })?;
        Ok(crc)
    }

    /// Reads `slot` into `out` (4096 bytes) and checks it against `expected_crc`. A mismatch is
    /// [`SsdError::Corrupt`]; corrupt data is never returned as `Ok` (but `out` is overwritten).
    ///
    /// A reader ([`open_reader`](Self::open_reader)) whose read fails on a file the owner has
    /// since deleted and created again ([`shrink`](Self::shrink) drops trailing empty files; a
    /// later growth recreates them) opens the new file and reads once more: its old handle still
    /// reads the deleted file's stale bytes.
    pub fn read(&self, slot: SlotId, expected_crc: u32, out: &mut [u8]) -> Result<(), SsdError> {
        match self.read_once(slot, expected_crc, out) {
            Err(e) if self.reopen_if_replaced(slot)? => {
                tracing::debug!(slot = slot.0, error = %e, "tier 2 reader reopened a replaced slot file");
                self.read_once(slot, expected_crc, out)
            }
            r => r,
        }
    }

    fn read_once(&self, slot: SlotId, expected_crc: u32, out: &mut [u8]) -> Result<(), SsdError> {
        if out.len() != PAGE_SIZE {
            return Err(SsdError::BufferSize { op: "read", slot, len: out.len() });
        }
        let (f, offset) = self.locate(slot)?;
        let read_err = |source| SsdError::Read { slot, file: f.path.clone(), offset, source };
        if self.cfg.direct_io && !(out.as_ptr() as usize).is_multiple_of(PAGE_SIZE) {
            let mut b = AlignedBuf::zeroed(PAGE_SIZE);
            self.pread(&f, &mut b, offset).map_err(read_err)?;
            out.copy_from_slice(&b);
        } else {
            self.pread(&f, out, offset).map_err(read_err)?;
        }
        let actual = crc32c::crc32c(out);
        if actual != expected_crc {
            return Err(SsdError::Corrupt { slot, file: f.path.clone(), expected: expected_crc, actual });
        }
        Ok(())
    }

    /// Reads the run of consecutive slots starting at `first` (one per `expected_crcs` entry, all
    /// in one file) with a single read into `out` (`expected_crcs.len()` × 4096 bytes), checking
    /// every page's crc32c. Used to serve several neighbouring pages with one I/O.
    pub fn read_run(&self, first: SlotId, expected_crcs: &[u32], out: &mut [u8]) -> Result<(), SsdError> {
        let expected: Vec<Option<u32>> = expected_crcs.iter().copied().map(Some).collect();
        self.read_span(first, &expected, out)
    }

    /// Like [`read_run`](Self::read_run), but only the slots with `Some(crc)` are wanted and
    /// checked; the others are read only because they lie between wanted ones (one larger read
    /// instead of several small ones) and their bytes in `out` mean nothing.
    /// A reader retries once on a replaced file, as [`read`](Self::read) does.
    pub fn read_span(&self, first: SlotId, expected: &[Option<u32>], out: &mut [u8]) -> Result<(), SsdError> {
        match self.read_span_once(first, expected, out) {
            Err(e) if self.reopen_if_replaced(first)? => {
                tracing::debug!(slot = first.0, error = %e, "tier 2 reader reopened a replaced slot file");
                self.read_span_once(first, expected, out)
            }
            r => r,
        }
    }

    fn read_span_once(&self, first: SlotId, expected: &[Option<u32>], out: &mut [u8]) -> Result<(), SsdError> {
        if out.len() != expected.len() * PAGE_SIZE || expected.is_empty() {
            return Err(SsdError::BufferSize { op: "read_span", slot: first, len: out.len() });
        }
        // Slot numbers can come from another host's log: the span's end is checked, not assumed.
        let last = u32::try_from(expected.len() - 1).ok().and_then(|n| first.0.checked_add(n));
        if last.is_none_or(|last| first.0 / self.spf() != last / self.spf()) {
            return Err(SsdError::SpanAcrossFiles { first, slots: expected.len(), slots_per_file: self.spf() });
        }
        let (f, offset) = self.locate(first)?;
        let read_err = |source| SsdError::Read { slot: first, file: f.path.clone(), offset, source };
        if self.cfg.direct_io && !(out.as_ptr() as usize).is_multiple_of(PAGE_SIZE) {
            let mut b = AlignedBuf::zeroed(out.len());
            self.pread(&f, &mut b, offset).map_err(read_err)?;
            out.copy_from_slice(&b);
        } else {
            self.pread(&f, out, offset).map_err(read_err)?;
        }
        for (i, (page, want)) in out.chunks_exact(PAGE_SIZE).zip(expected).enumerate() {
            let Some(expected) = *want else { continue };
            let actual = crc32c::crc32c(page);
            if actual != expected {
                return Err(SsdError::Corrupt {
                    slot: SlotId(first.0 + i as u32),
                    file: f.path.clone(),
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Plans a compaction step: up to `max` live slots in the highest-numbered files that should
    /// move into free slots of lower files. A file is drained only when at most half of its slots
    /// are live and the files below it have room for all of them; the plan is empty when nothing
    /// is worth doing. For each slot the engine allocates a new (lower) slot, copies the page,
    /// updates its page table and frees the old slot; then [`shrink`](Self::shrink) returns the
    /// drained files to the file system.
    pub fn compaction_plan(&self, max: usize) -> Vec<SlotId> {
        let st = self.alloc.lock();
        let spf = self.spf();
        let nfiles = st.live_per_file.len();
        let mut plan = Vec::new();
        // Free slots per file.
        let free_per_file: Vec<u64> = st.live_per_file.iter().map(|&l| u64::from(spf - l)).collect();
        let mut consumed = 0u64;
        for f in (1..nfiles).rev() {
            if plan.len() >= max {
                break;
            }
            let live = st.live_per_file[f];
            if live == 0 {
                continue; // shrink deletes it (if it is trailing)
            }
            let below: u64 = free_per_file[..f].iter().sum::<u64>().saturating_sub(consumed);
            if u64::from(live) * 2 > u64::from(spf) || below < u64::from(live) {
                break;
            }
            let first = f as u32 * spf;
            for s in first..first + spf {
                if plan.len() >= max {
                    break;
                }
                if bit(&st.live, s) {
                    plan.push(SlotId(s));
                }
            }
            consumed += u64::from(live);
        }
        plan
    }

    /// Returns unused space to the file system: deletes trailing slot files without live slots
    /// and punches holes (`fallocate(PUNCH_HOLE | KEEP_SIZE)`) over runs of free slots in the
    /// others. Returns the bytes of disk space released (by `st_blocks`). Safe to call while
    /// other threads read and write live slots; allocation and freeing wait until it is done.
    pub fn shrink(&self) -> Result<u64, SsdError> {
        let before = self.stats()?.disk_bytes_allocated;
        let mut st = self.alloc.lock();
        let spf = self.spf();
        // 1. Trailing files without live slots.
        while st.live_per_file.last() == Some(&0) {
            let index = st.live_per_file.len() - 1;
            let f = self.files.write().pop();
            st.live_per_file.pop();
            let first = u64::from(index as u32 * spf);
            // Also clears bits of the deleted file that share the last word with the previous one.
            st.resize(first, first, false);
            if let Some(f) = f {
                std::fs::remove_file(&f.path)
                    .map_err(|source| SsdError::RemoveFile { file: f.path.clone(), source })?;
                tracing::debug!(file = %f.path.display(), "tier 2 deleted an empty slot file");
            }
        }
        // 2. Holes over runs of free, not yet punched slots.
        let files: Vec<Arc<SlotFile>> = self.files.read().clone();
        let runs = st.unpunched_free_runs(self.slots(&st), spf);
        for (first, n) in runs {
            let f = &files[(first / spf) as usize];
            let offset = u64::from(first % spf) * PAGE;
            let len = u64::from(n) * PAGE;
            punch_hole(&f.file, offset, len).map_err(|source| SsdError::PunchHole {
                file: f.path.clone(),
                offset,
                len,
                source,
            })?;
            for s in first..first + n {
                set_bit(&mut st.hole, s, true);
            }
        }
        drop(st);
        let after = self.stats()?.disk_bytes_allocated;
        Ok(before.saturating_sub(after))
    }

    /// Makes every write so far durable (`fdatasync` of each slot file): a checkpoint that
    /// references slots calls this before it commits.
    pub fn sync(&self) -> Result<(), SsdError> {
        let files: Vec<Arc<SlotFile>> = self.files.read().clone();
        for f in &files {
            let synced = match &self.io {
                None => f.file.sync_data(),
                Some(io) => io.sync_data(&f.file, &f.path),
            };
            synced.map_err(|source| SsdError::Sync { file: f.path.clone(), source })?;
        }
        Ok(())
    }

    /// Occupancy and disk usage of the store.
    pub fn stats(&self) -> Result<SsdStats, SsdError> {
        let (live, free, allocator_bytes) = {
            let st = self.alloc.lock();
            let live: u64 = st.live_per_file.iter().map(|&l| u64::from(l)).sum();
            let words = (st.live.capacity() + st.hole.capacity() + st.summary.capacity()) * size_of::<u64>();
            let bytes = words + st.live_per_file.capacity() * size_of::<u32>();
            (live, self.slots(&st) - live, bytes as u64)
        };
        let files: Vec<Arc<SlotFile>> = self.files.read().clone();
        let mut stats = SsdStats {
            files: files.len() as u32,
            live_slots: live,
            free_slots: free,
            allocator_bytes,
            ..SsdStats::default()
        };
        for f in &files {
            let meta = f.file.metadata().map_err(|source| SsdError::Stat { file: f.path.clone(), source })?;
            stats.file_bytes += meta.len();
            stats.disk_bytes_allocated += meta.blocks() * 512;
        }
        Ok(stats)
    }
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)` over `[offset, offset + len)` of `file`.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a valid, open file descriptor borrowed from `file` for the duration of
    // the call; no memory is passed to the kernel.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(slots_per_file: u32) -> (tempfile::TempDir, SsdStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = SsdConfig::new(dir.path().join("ssd"));
        cfg.slots_per_file = slots_per_file;
        let s = SsdStore::open(cfg).expect("open");
        (dir, s)
    }

    fn page(seed: u8) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(PAGE_SIZE);
        for (i, x) in b.iter_mut().enumerate() {
            *x = seed.wrapping_add(i as u8);
        }
        b
    }

    /// `alloc_many` on a store fragmented by single frees takes wholly free 64-slot groups for
    /// the bulk, so a batch is a few runs (few writes); the tail and small batches take the
    /// lowest free slots; no slot is handed out twice, and the pages read back.
    #[test]
    fn alloc_many_takes_runs_from_a_fragmented_store() {
        let (_d, s) = store(256);
        let first: Vec<SlotId> = (0..300).map(|_| s.alloc().expect("alloc")).collect();
        // Every other slot of the first 256 freed: 128 single holes, then 44 live slots.
        for slot in first.iter().take(256).step_by(2) {
            s.free(*slot).expect("free");
        }
        // Two files of 256: slots 320..512 are the wholly free groups, taken in order.
        let batch = s.alloc_many(150).expect("alloc_many");
        assert_eq!(batch.iter().map(|x| x.0).collect::<Vec<_>>(), (320..470).collect::<Vec<_>>());
        let mut all: Vec<u32> =
            first.iter().skip(1).step_by(2).take(128).chain(&first[256..]).chain(&batch).map(|x| x.0).collect();
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n, "a slot was handed out twice");
        // A small batch takes the lowest free slots (the holes).
        let small = s.alloc_many(4).expect("alloc_many");
        assert_eq!(small.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 2, 4, 6]);
        let data: Vec<u8> = (0..150).flat_map(|i| page(i as u8).to_vec()).collect();
        let mut aligned = AlignedBuf::zeroed(data.len());
        aligned.copy_from_slice(&data);
        let crcs = s.write_many(&batch, &aligned).expect("write_many");
        let mut out = AlignedBuf::zeroed(PAGE_SIZE);
        for (i, (slot, crc)) in batch.iter().zip(crcs).enumerate() {
            s.read(*slot, crc, &mut out).expect("read");
            assert!(out[..] == page(i as u8)[..], "slot {slot}");
        }
        assert_eq!(s.stats().expect("stats").live_slots, 128 + 44 + 150 + 4);
    }

    /// The bitmap allocator against a model (the set of allocated slots): always the lowest
    /// free slot, across files that share bitmap words (100 slots a file) or not (128), through
    /// frees, growth and shrinks; its DRAM stays bits per slot however many slots are free.
    #[test]
    fn allocator_hands_out_the_lowest_free_slot() {
        for spf in [100, 128] {
            let (_d, s) = store(spf);
            let mut model = std::collections::BTreeSet::new();
            let mut seed = u64::from(spf);
            let mut rnd = |n: u64| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 33) % n
            };
            for round in 0..6000 {
                let r = rnd(100);
                // Phases that grow the store, drain it and grow it again.
                let alloc_share = if (round / 1000) % 2 == 0 { 70 } else { 30 };
                if r < alloc_share || model.is_empty() {
                    let slot = s.alloc().expect("alloc");
                    let lowest = (0..).find(|i| !model.contains(i)).expect("an id");
                    assert_eq!(slot.0, lowest, "spf {spf}, round {round}");
                    model.insert(slot.0);
                } else if r < 98 {
                    let i = rnd(model.len() as u64) as usize;
                    let slot = *model.iter().nth(i).expect("in range");
                    model.remove(&slot);
                    s.free(SlotId(slot)).expect("free");
                } else {
                    s.shrink().expect("shrink");
                }
                let st = s.stats().expect("stats");
                assert_eq!(st.live_slots, model.len() as u64);
                let slots = u64::from(st.files) * u64::from(spf);
                assert_eq!(st.free_slots, slots - model.len() as u64);
                assert!(model.last().is_none_or(|&l| u64::from(l) < slots));
                // Two bits per slot, one per 64 slots, a count per file; allow for rounding
                // to whole words and vector growth.
                assert!(st.allocator_bytes <= 2 * (slots / 4 + 64 + 8 * u64::from(st.files)) + 64, "{st:?}");
            }
        }
    }

    /// Found by the `tier2_slots` fuzz target: a span starting near `u32::MAX` (slot numbers come
    /// from another host's log) overflowed computing its last slot, a panic in debug builds.
    #[test]
    fn span_reads_past_the_last_slot_id_or_across_files_are_errors() {
        let (_d, s) = store(4);
        let slots = s.alloc_many(5).expect("alloc");
        let p = page(9);
        s.write(slots[3], &p).expect("write");
        s.write(slots[4], &p).expect("write");
        let mut out = vec![0u8; 2 * PAGE_SIZE];
        for first in [u32::MAX, 3] {
            match s.read_span(SlotId(first), &[None, Some(0)], &mut out) {
                Err(SsdError::SpanAcrossFiles { first: f, slots: 2, slots_per_file: 4 }) => assert_eq!(f.0, first),
                other => panic!("span of 2 from slot {first}: {other:?}"),
            }
        }
        // The last slot id itself is in one file with its neighbour, and simply does not exist.
        assert!(matches!(s.read_span(SlotId(u32::MAX - 1), &[None, None], &mut out), Err(SsdError::NoSuchSlot { .. })));
        let mut out = vec![0u8; 3 * PAGE_SIZE];
        assert!(matches!(
            s.read_span(SlotId(u32::MAX - 1), &[None, None, None], &mut out),
            Err(SsdError::SpanAcrossFiles { .. })
        ));
    }

    #[test]
    fn config_from_toml_uses_defaults_and_rejects_unknown() {
        let c: SsdConfig = toml::from_str("dir = \"/x\"").expect("parse");
        assert_eq!(c, SsdConfig::new("/x"));
        assert!(toml::from_str::<SsdConfig>("dir = \"/x\"\nslots = 3").is_err());
    }

    #[test]
    fn round_trip_and_unaligned_buffers() {
        let (_d, s) = store(8);
        let a = s.alloc().expect("alloc");
        let p = page(3);
        let crc = s.write(a, &p).expect("write");
        let mut out = AlignedBuf::zeroed(PAGE_SIZE);
        s.read(a, crc, &mut out).expect("read");
        assert_eq!(&out[..], &p[..]);
        // Unaligned buffers go through a bounce buffer.
        let mut v = vec![0u8; PAGE_SIZE + 1];
        s.read(a, crc, &mut v[1..]).expect("unaligned read");
        assert_eq!(&v[1..], &p[..]);
        assert!(matches!(s.write(a, &p[..100]), Err(SsdError::BufferSize { .. })));
    }

    #[test]
    fn open_removes_stale_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("slots-00003.dat"), b"old").expect("write");
        std::fs::write(dir.path().join("keep.txt"), b"x").expect("write");
        let s = SsdStore::open(SsdConfig::new(dir.path())).expect("open");
        assert!(!dir.path().join("slots-00003.dat").exists());
        assert!(dir.path().join("keep.txt").exists());
        assert_eq!(s.stats().expect("stats").files, 0);
    }

    #[test]
    fn double_free_is_an_error() {
        let (_d, s) = store(4);
        let a = s.alloc().expect("alloc");
        s.free(a).expect("free");
        // debug_assert fires in debug builds; check the error in release builds only.
        if !cfg!(debug_assertions) {
            assert!(matches!(s.free(a), Err(SsdError::DoubleFree { .. })));
        }
    }

    #[test]
    fn bad_slots_per_file_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = SsdConfig::new(dir.path());
        cfg.slots_per_file = 0;
        assert!(matches!(SsdStore::open(cfg), Err(SsdError::Config { .. })));
    }

    #[test]
    fn tmpfs_without_direct_io_is_explained() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let dir = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
        // tmpfs accepts O_DIRECT since Linux 6.6; older kernels refuse it at open.
        match SsdStore::open(SsdConfig::new(dir.path())) {
            Ok(_) => {}
            Err(err) => {
                assert!(matches!(err, SsdError::DirectIoUnsupported { .. }), "{err}");
                assert!(err.to_string().contains("direct_io = false"));
            }
        }
        let mut cfg = SsdConfig::new(dir.path());
        cfg.direct_io = false;
        let s = SsdStore::open(cfg).expect("open buffered");
        let a = s.alloc().expect("alloc");
        let crc = s.write(a, &page(1)).expect("write");
        let mut out = AlignedBuf::zeroed(PAGE_SIZE);
        s.read(a, crc, &mut out).expect("read");
    }
}
