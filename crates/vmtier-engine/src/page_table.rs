//! The page table: where every guest page is, and in what state.
//!
//! One [`PageEntry`] of 16 bytes per 4 KiB page (0.4% of guest memory), all atomics so the fault
//! handlers and the MTM read it without a global lock. A per-page lock bit serialises the
//! operations that move a page; nobody ever *waits* on it — whoever fails to take it defers the
//! work (the fault handler parks the fault and retries), so the fault path cannot deadlock.
//!
//! | field | bits | meaning |
//! |---|---|---|
//! | `state` | 0–1 | home of the stored copy: 0 none (content is zeros), 1 inherited (a failed primary's checkpoint), 2 tier 2, 3 tier 3 |
//! | | 2 | `RESIDENT`: the page is in DRAM (present in the memfd) |
//! | | 3 | `LOCKED`: a move of this page is in progress |
//! | | 4 | `DIRTY`: the DRAM copy differs from the stored copy |
//! | | 5 | `CLEAN`: a secondary can read the stored copy (set by replication) |
//! | | 6 | `WRITTEN`: the page's stored content changed during its last residency (set by a write, decided at eviction; clear after a first store) |
//! | | 7 | `POISONED`: the stored copy failed its checksum; the page is unreadable |
//! | | 8–55 | location: tier-2 slot, or tier-3 `segment << 16 \| index` |
//! | | 60 | `LOGGED`: an inherited page mapped writable, unwritten as far as the caller's dirty log has said (implies `DIRTY`) |
//! | | 61 | `CAPTURED`: copied by a checkpoint and not written since (cleared by a write or a new home) |
//! | | 62 | `REFERENCED`: observed since the reclaim clock's hand last passed (second chance) |
//! | | 63 | `PREFETCHED`: resident because a prefetcher predicted it, not yet touched |
//! | `crc` | 32 | crc32c of the stored copy |
//! | `freq` | 8 | access frequency 0–100 as of `seen` |
//! | `seen` | 16 | tick (mod 2^16) of the last observed access |

use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

use serde::Serialize;
use vmtier_storage::object::SegmentLoc;
use vmtier_storage::ssd::SlotId;

const HOME_MASK: u64 = 0b11;
/// Page is present in DRAM.
pub const RESIDENT: u64 = 1 << 2;
const LOCKED: u64 = 1 << 3;
/// DRAM copy differs from the stored copy.
pub const DIRTY: u64 = 1 << 4;
/// The stored copy is readable by a secondary.
pub const CLEAN: u64 = 1 << 5;
/// Stored content changed during the last residency (decided at eviction by the checksum; a page
/// stored for the first time starts clear). Until the eviction, set by any observed write.
pub const WRITTEN: u64 = 1 << 6;
/// Stored copy is corrupt.
pub const POISONED: u64 = 1 << 7;
/// An inherited page mapped writable at a failover, whose writes the caller's dirty log reports
/// (`Inheritance::logged_writes`): `DIRTY` as far as eviction is concerned (its content may
/// have changed unseen), but equal to its inherited copy for a checkpoint until a capture's log
/// names it. Cleared with `DIRTY`, by a write the engine sees, and by a new home.
pub const LOGGED: u64 = 1 << 60;
/// Copied by a checkpoint capture and neither written nor moved since (see `replica.rs`).
pub const CAPTURED: u64 = 1 << 61;
/// Observed since the reclaim clock's hand last passed it.
pub const REFERENCED: u64 = 1 << 62;
/// Resident because a prefetcher predicted it (installed unmapped), not touched yet.
pub const PREFETCHED: u64 = 1 << 63;
const LOC_SHIFT: u32 = 8;
/// Bits of the location field (tier-3 locations use 48).
const LOC_MASK: u64 = (1 << 48) - 1;

/// Where a page's stored copy lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// No stored copy: the page's content is all zeros unless it is resident.
    Zero,
    /// A slot of the tier-2 page store.
    Ssd(SlotId),
    /// A page in a tier-3 segment.
    Object(SegmentLoc),
    /// A copy inherited at failover from the previous primary's last checkpoint, on shared
    /// storage this engine reads but never writes or frees (see `Engine::start_inherited`).
    Inherited,
}

impl Home {
    /// The home as it is encoded in the state word (0 for [`Home::Zero`]): 8 bytes that
    /// [`from_word`](Self::from_word) turns back into the home, for compact copies of a map.
    pub fn word(self) -> u64 {
        self.encode()
    }

    /// The home encoded in a state word (or a [`word`](Self::word)).
    pub fn from_word(word: u64) -> Self {
        Self::decode(word)
    }

    fn encode(self) -> u64 {
        match self {
            Home::Zero => 0,
            Home::Inherited => 1,
            Home::Ssd(slot) => 2 | (u64::from(slot.0) << LOC_SHIFT),
            Home::Object(loc) => 3 | ((u64::from(loc.segment) << 16 | u64::from(loc.index)) << LOC_SHIFT),
        }
    }

    fn decode(word: u64) -> Self {
        let loc = (word >> LOC_SHIFT) & LOC_MASK;
        match word & HOME_MASK {
            2 => Home::Ssd(SlotId(loc as u32)),
            3 => Home::Object(SegmentLoc { segment: (loc >> 16) as u32, index: loc as u16 }),
            1 => Home::Inherited,
            _ => Home::Zero,
        }
    }

    /// The tier number of the stored copy (0 for none; an inherited copy counts as tier 2, the
    /// shared storage it is read from).
    pub fn tier(self) -> u8 {
        match self {
            Home::Zero => 0,
            Home::Ssd(_) | Home::Inherited => 2,
            Home::Object(_) => 3,
        }
    }
}

/// The replication state of a page, in the terms of US patent 9,201,612.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplState {
    /// Never written: zeros, nothing stored.
    Zero,
    /// Changed in DRAM since it was last written to storage.
    Dirty,
    /// The stored copy matches DRAM (or the page is not in DRAM).
    SyncedWithDisk,
    /// Stored, and a secondary can read it.
    Clean,
}

/// A snapshot of one page-table entry.
#[derive(Debug, Clone, Copy)]
pub struct PageView {
    /// Raw state word.
    pub word: u64,
    /// crc32c of the stored copy.
    pub crc: u32,
    /// Frequency 0–100 as of `seen`.
    pub freq: u8,
    /// Tick (mod 2^16) of the last observed access.
    pub seen: u16,
}

impl PageView {
    /// Where the stored copy is.
    pub fn home(&self) -> Home {
        Home::decode(self.word)
    }
    /// In DRAM?
    pub fn resident(&self) -> bool {
        self.word & RESIDENT != 0
    }
    /// DRAM copy changed since stored?
    pub fn dirty(&self) -> bool {
        self.word & DIRTY != 0
    }
    /// The tier the page is in now: 1 if resident, else its home tier (0 for a zero page).
    pub fn tier(&self) -> u8 {
        if self.resident() { 1 } else { self.home().tier() }
    }
    /// Replication state.
    pub fn repl_state(&self) -> ReplState {
        if self.word & DIRTY != 0 {
            ReplState::Dirty
        } else if self.home() == Home::Zero {
            ReplState::Zero
        } else if self.word & CLEAN != 0 {
            ReplState::Clean
        } else {
            ReplState::SyncedWithDisk
        }
    }
}

/// One page's entry.
#[derive(Debug, Default)]
#[repr(C, align(16))]
pub struct PageEntry {
    state: AtomicU64,
    crc: AtomicU32,
    freq: AtomicU8,
    _spare: AtomicU8,
    seen: AtomicU16,
}

const _: () = assert!(size_of::<PageEntry>() == 16);

impl PageEntry {
    /// Reads the entry (fields individually atomic; take the lock for a consistent view).
    pub fn view(&self) -> PageView {
        PageView {
            word: self.state.load(Ordering::Acquire),
            crc: self.crc.load(Ordering::Relaxed),
            freq: self.freq.load(Ordering::Relaxed),
            seen: self.seen.load(Ordering::Relaxed),
        }
    }

    /// Takes the page lock if it is free. Never blocks.
    pub fn try_lock(&self) -> Option<PageGuard<'_>> {
        let prev = self.state.fetch_or(LOCKED, Ordering::Acquire);
        // Not `then_some`: that would build (and, on failure, drop) a guard, unlocking the page
        // under its holder.
        if prev & LOCKED == 0 { Some(PageGuard { entry: self }) } else { None }
    }

    /// Access statistics, updated without the lock.
    pub fn stats(&self) -> (&AtomicU8, &AtomicU16) {
        (&self.freq, &self.seen)
    }

    /// Sets or clears flag bits that carry no placement meaning (`WRITTEN`, `CLEAN`,
    /// `REFERENCED`) without the lock.
    pub fn set_hint(&self, bit: u64, on: bool) {
        debug_assert!(bit == WRITTEN || bit == CLEAN || bit == REFERENCED);
        if on {
            self.state.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.state.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

/// Exclusive right to move one page; released on drop.
#[derive(Debug)]
pub struct PageGuard<'a> {
    entry: &'a PageEntry,
}

impl PageGuard<'_> {
    /// The entry as seen under the lock.
    pub fn view(&self) -> PageView {
        self.entry.view()
    }

    /// Sets `flags` bits (e.g. `RESIDENT`, `DIRTY`).
    pub fn set(&self, flags: u64) {
        self.entry.state.fetch_or(flags, Ordering::AcqRel);
    }

    /// Clears `flags` bits. Clearing `DIRTY` clears `LOGGED` too (which implies it).
    pub fn clear(&self, flags: u64) {
        let flags = if flags & DIRTY != 0 { flags | LOGGED } else { flags };
        self.entry.state.fetch_and(!flags, Ordering::AcqRel);
    }

    /// Points the page at a new stored copy with checksum `crc`.
    pub fn set_home(&self, home: Home, crc: u32) {
        self.entry.crc.store(crc, Ordering::Relaxed);
        let keep = RESIDENT | LOCKED | DIRTY | WRITTEN | REFERENCED | PREFETCHED;
        let mut cur = self.entry.state.load(Ordering::Acquire);
        loop {
            // A new stored copy is not yet known to any secondary: CLEAN drops; so does
            // CAPTURED (a checkpoint's copy no longer matches the page's home).
            let new = (cur & keep) | home.encode();
            match self.entry.state.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }
}

impl Drop for PageGuard<'_> {
    fn drop(&mut self) {
        self.entry.state.fetch_and(!LOCKED, Ordering::Release);
    }
}

/// The entries of all guest pages.
#[derive(Debug)]
pub struct PageTable {
    entries: Box<[PageEntry]>,
}

impl PageTable {
    /// A table of `pages` zero pages.
    pub fn new(pages: usize) -> Self {
        Self { entries: (0..pages).map(|_| PageEntry::default()).collect() }
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry of page `page`.
    pub fn get(&self, page: usize) -> &PageEntry {
        &self.entries[page]
    }

    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = &PageEntry> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_round_trips_and_keeps_flags() {
        let e = PageEntry::default();
        let g = e.try_lock().unwrap();
        assert!(e.try_lock().is_none());
        g.set(RESIDENT | DIRTY);
        for home in [
            Home::Zero,
            Home::Inherited,
            Home::Ssd(SlotId(u32::MAX)),
            Home::Object(SegmentLoc { segment: u32::MAX, index: u16::MAX }),
            Home::Object(SegmentLoc { segment: 7, index: 3 }),
        ] {
            g.set_home(home, 99);
            let v = g.view();
            assert_eq!(v.home(), home);
            assert!(v.resident() && v.dirty());
            assert_eq!(v.crc, 99);
        }
        drop(g);
        assert!(e.try_lock().is_some());
    }

    #[test]
    fn failed_try_lock_leaves_the_holder_locked() {
        let e = PageEntry::default();
        let g = e.try_lock().unwrap();
        for _ in 0..3 {
            assert!(e.try_lock().is_none());
        }
        assert!(e.try_lock().is_none(), "a failed try_lock released the holder's lock");
        drop(g);
        assert!(e.try_lock().is_some());
    }

    #[test]
    fn repl_states() {
        let e = PageEntry::default();
        assert_eq!(e.view().repl_state(), ReplState::Zero);
        let g = e.try_lock().unwrap();
        g.set_home(Home::Ssd(SlotId(1)), 0);
        assert_eq!(g.view().repl_state(), ReplState::SyncedWithDisk);
        g.set(DIRTY);
        assert_eq!(g.view().repl_state(), ReplState::Dirty);
        g.clear(DIRTY);
        e.set_hint(CLEAN, true);
        assert_eq!(g.view().repl_state(), ReplState::Clean);
        g.set_home(Home::Ssd(SlotId(2)), 0);
        assert_eq!(g.view().repl_state(), ReplState::SyncedWithDisk);
    }
}
