//! The engine's side of checkpoint replication through shared storage (US patent 9,201,612).
//!
//! A checkpoint makes every page that changed since the previous one *synced-with-disk*: its
//! content is in tier 2 or 3, where a secondary host reads it itself. The log (crate
//! `vmtier-repl`) then carries only where each page is ([`DeltaPage`]). Three steps:
//!
//! 1. [`capture`](ReplTrack) — with the guest paused — walks the pages marked in the `changed`
//!    bitmap. A page that is resident and dirty is write-protected, its content copied into the
//!    capture buffer and marked `CAPTURED`; any other page travels as metadata only (its stored
//!    copy, or zeros).
//! 2. `persist` — with the guest running again — writes the captured copies to new tier-2
//!    slots and syncs them. A page not written since its capture (still `CAPTURED`) adopts the
//!    new slot as its home and becomes clean (the patent's "synced-with-disk"): its eventual
//!    eviction costs no write. A page written since keeps its dirty DRAM copy; the slot then
//!    belongs to the replica alone.
//! 3. `commit` — after the log's commit record is durable — makes the delta the committed
//!    replica map and frees the stored copies it superseded that the engine no longer uses;
//!    `abort` (a failed write, a fenced log) frees the delta's copies instead.
//!
//! **Dirty-log mode** ([`crate::Engine::capture_logged`]). A micro-VM's writes are tracked by
//! KVM's dirty log, which the caller hands to each capture, instead of by write-protection:
//! write-protecting every captured page costs a WP fault per hot page rewritten after each
//! checkpoint. The log's pages are marked changed (and dirty, if resident) and captured as
//! above, but **not** write-protected, and not marked `CAPTURED`, so the fault handler maps them
//! writable again after a sampling unmap. Such a copy cannot become its page's home at
//! `persist`: the guest may have written the page since the capture, and only the next
//! capture's log will say so. The copy belongs to the replica alone, and the page joins the
//! *quiet* set, which counts the captures that found it unwritten and remembers the copy
//! `persist` wrote. At [`ADOPT_AFTER_QUIET_CAPTURES`] in a row the page has gone cold, and its
//! content is still that copy's (no log named it since): that capture write-protects it and
//! adopts the copy — still the committed replica's — as its home, clean, with no second copy
//! and nothing in the checkpoint (the replica already has it). A later write is then seen by
//! its WP fault. A page whose copy is not the committed one (its checkpoint failed, or never
//! persisted) is taken the write-protect way instead (protected, copied, `CAPTURED`), and
//! `persist` adopts the new copy as above. An engine uses one mode for its life.
//!
//! **Ownership of stored copies.** A tier-2 slot or tier-3 page may be referenced by the engine's
//! page table (the page's home), by the committed replica map, or by the checkpoint in flight.
//! It is freed only when none references it: the engine's release of an old home is skipped
//! while the replica still references it ([`ReplTrack::retains`]), and `commit` frees what the
//! replica let go of unless it is the engine's home. Both sides decide under the page's lock, so
//! a copy is freed exactly once. The in-flight map stays visible until `commit` has moved every
//! page's entry into the committed map, so no copy is ever referenced by neither. So a secondary reading the last committed checkpoint never
//! finds its pages overwritten, whatever the primary does next — and a primary that can no
//! longer commit (fenced) can never free them.
//!
//! Cost: one bit per page (`changed`) and 8 bytes per page (the committed map) while
//! replication is on; nothing when it is off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use vmtier_uffd::{AlignedBuf, PAGE_SIZE};

use crate::error::EngineError;
use crate::page_table::{CAPTURED, DIRTY, Home, LOGGED, PageEntry, PageGuard, RESIDENT};
use crate::pager::{Pager, page_err, runs};
use crate::stats::{add, bump};

/// One page of a checkpoint: where its content is as of the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaPage {
    /// Guest page number.
    pub page: u32,
    /// Its stored copy (`Home::Zero`: the page is all zeros).
    pub home: Home,
    /// crc32c of the stored copy (0 for zeros).
    pub crc: u32,
    /// The stored copy's keyed tag ([`crate::auth`]; zeros when pages are not authenticated,
    /// for zeros, and for `Home::Inherited`, whose tag the inherited map holds).
    pub tag: crate::PageTag,
}

/// In dirty-log mode, the captures in a row that must find a page unwritten before its
/// checkpoint copy may become its home (see the [module docs](self)). Lower adopts sooner
/// (fewer dirty pages to write at eviction) but write-protects pages that are only resting,
/// whose next write then costs a WP fault: at 10, `vmtier bench replication`'s guest took a
/// quarter more write faults than without replication; at 100 (10 s at 100 ms), as many.
pub const ADOPT_AFTER_QUIET_CAPTURES: u8 = 100;

/// How an engine's captures learn which pages the guest wrote; set by its first capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Unset = 0,
    WriteProtect = 1,
    DirtyLog = 2,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Unset => "nothing yet",
            Mode::WriteProtect => "write-protection (`capture`)",
            Mode::DirtyLog => "the caller's dirty log (`capture_logged`)",
        }
    }
}

/// What the engine tracks for replication. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct ReplTrack {
    /// Pages whose content or stored location changed since the last capture.
    changed: Box<[AtomicU64]>,
    /// Home word ([`Home::word`]) of every page in the last committed checkpoint (0: zeros).
    committed: Box<[AtomicU64]>,
    /// The checkpoint in flight: page → home word, from capture until commit or abort.
    pending: Mutex<Option<HashMap<u32, u64>>>,
    /// Stored copies whose release the replica deferred.
    pub(crate) retained: AtomicU64,
    /// The engine's capture [`Mode`].
    mode: AtomicU8,
    /// Dirty-log mode: pages captured without write-protection, not adopted yet.
    quiet: Mutex<HashMap<u32, Quiet>>,
}

impl ReplTrack {
    /// Tracking for `pages` pages. Every page starts marked changed, so the first checkpoint is
    /// the full map.
    pub(crate) fn new(pages: usize) -> Self {
        let words = pages.div_ceil(64);
        let changed: Box<[AtomicU64]> = (0..words)
            .map(|w| {
                let bits = (pages - w * 64).min(64);
                AtomicU64::new(if bits == 64 { u64::MAX } else { (1 << bits) - 1 })
            })
            .collect();
        Self {
            changed,
            committed: (0..pages).map(|_| AtomicU64::new(0)).collect(),
            pending: Mutex::new(None),
            retained: AtomicU64::new(0),
            mode: AtomicU8::new(Mode::Unset as u8),
            quiet: Mutex::new(HashMap::new()),
        }
    }

    /// Fixes the engine's capture mode at its first capture; a capture of the other mode fails.
    fn use_mode(&self, want: Mode) -> Result<(), EngineError> {
        match self.mode.compare_exchange(Mode::Unset as u8, want as u8, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(cur) if cur == want as u8 => Ok(()),
            Err(cur) => {
                let engine = if cur == Mode::WriteProtect as u8 { Mode::WriteProtect } else { Mode::DirtyLog };
                Err(EngineError::CaptureMode { engine: engine.name(), asked: want.name() })
            }
        }
    }

    /// Dirty-log mode, at a capture: every quiet page not in `changed` (sorted) was unwritten
    /// since the previous capture and counts one more; returns (and forgets) those that reach
    /// [`ADOPT_AFTER_QUIET_CAPTURES`], sorted by page. Pages in `changed` leave the set (a copy
    /// puts them back).
    fn age_quiet(&self, changed: &[u32]) -> Vec<(u32, Quiet)> {
        let mut ripe = Vec::new();
        self.quiet.lock().retain(|&page, quiet| {
            if changed.binary_search(&page).is_ok() {
                return false;
            }
            quiet.captures += 1;
            if quiet.captures >= ADOPT_AFTER_QUIET_CAPTURES {
                ripe.push((page, *quiet));
                return false;
            }
            true
        });
        ripe.sort_unstable_by_key(|r| r.0);
        ripe
    }

    /// Dirty-log mode, at `persist`: the copy of quiet `page` just written.
    fn note_quiet_copy(&self, page: u32, home: Home, crc: u32, tag: crate::PageTag) {
        if let Some(q) = self.quiet.lock().get_mut(&page) {
            q.copy = Some((home, crc, tag));
        }
    }

    /// Whether the committed replica holds `home` as `page`'s copy.
    fn committed_is(&self, page: u32, home: Home) -> bool {
        self.committed[page as usize].load(Ordering::Acquire) == home.word()
    }

    /// Fixes dirty-log mode before the first capture (an engine with `LOGGED` pages).
    pub(crate) fn use_dirty_log(&self) -> Result<(), EngineError> {
        self.use_mode(Mode::DirtyLog)
    }

    /// Marks `page` changed: its content (a first write) or its stored location moved.
    pub(crate) fn mark(&self, page: usize) {
        self.changed[page / 64].fetch_or(1 << (page % 64), Ordering::Relaxed);
    }

    /// Takes the changed set, clearing it.
    pub(crate) fn take_changed(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (w, word) in self.changed.iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                out.push((w * 64) as u32 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        out
    }

    /// Starts a checkpoint's pending map. Fails if one is already in flight.
    pub(crate) fn begin(&self) -> bool {
        let mut p = self.pending.lock();
        if p.is_some() {
            return false;
        }
        *p = Some(HashMap::new());
        true
    }

    /// Records that the checkpoint in flight references `home` for `page`.
    pub(crate) fn set_pending(&self, page: u32, home: Home) {
        if let Some(map) = self.pending.lock().as_mut() {
            map.insert(page, home.word());
        }
    }

    /// Whether the replica (committed or in flight) references `home` as `page`'s copy, so that
    /// the engine must not free it. Called under the page's lock.
    pub(crate) fn retains(&self, page: usize, home: Home) -> bool {
        if home == Home::Zero {
            return false;
        }
        let w = home.word();
        let held = self.committed[page].load(Ordering::Acquire) == w
            || self.pending.lock().as_ref().is_some_and(|m| m.get(&(page as u32)) == Some(&w));
        if held {
            self.retained.fetch_add(1, Ordering::Relaxed);
        }
        held
    }

    /// Ends the checkpoint in flight: on `commit`, its map becomes the committed one and the
    /// copies it superseded are returned for freeing (unless `in_use` says the engine still
    /// uses them); on abort, its own copies are returned for freeing, except those the
    /// engine uses or the committed map still references. `lock` takes a page's lock.
    pub(crate) fn finish<'a>(
        &self,
        commit: bool,
        lock: impl Fn(u32) -> PageGuard<'a>,
        mut free: impl FnMut(u32, Home),
    ) {
        // The pending map stays visible until every page is done: a page's new copy must stay
        // retained (`retains`) until its committed entry says so.
        let Some(entries) = self.pending.lock().as_ref().map(|m| m.iter().map(|(&p, &h)| (p, h)).collect::<Vec<_>>())
        else {
            return;
        };
        for (page, new) in entries {
            let g = lock(page);
            let engine = g.view().home().word();
            let slot = &self.committed[page as usize];
            if commit {
                let old = slot.swap(new, Ordering::AcqRel);
                if old != new && old != 0 && old != engine {
                    free(page, Home::from_word(old));
                }
            } else {
                if new != 0 && new != engine && new != slot.load(Ordering::Acquire) {
                    free(page, Home::from_word(new));
                }
                // Not replicated after all: the next checkpoint takes the page again.
                g.clear(CAPTURED);
                self.mark(page as usize);
            }
            drop(g);
        }
        *self.pending.lock() = None;
    }

    /// DRAM used by the tracking.
    pub(crate) fn bytes(&self) -> u64 {
        let quiet = self.quiet.lock().capacity() * (std::mem::size_of::<(u32, Quiet)>() + 1);
        (self.changed.len() * 8 + self.committed.len() * 8 + quiet) as u64
    }
}

/// Dirty-log mode: a page captured without write-protection and not adopted yet.
#[derive(Debug, Clone, Copy, Default)]
struct Quiet {
    /// Captures since its copy that found it unwritten.
    captures: u8,
    /// The copy `persist` wrote of it (home, crc32c, tag): its content while no log names it.
    copy: Option<(Home, u32, crate::PageTag)>,
}

/// Takes a page's lock, waiting for a move in progress to finish (moves hold it for one I/O).
pub(crate) fn lock_page(entry: &PageEntry) -> PageGuard<'_> {
    let mut spins = 0u32;
    loop {
        if let Some(g) = entry.try_lock() {
            return g;
        }
        spins += 1;
        if spins < 64 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Pages captured by [`crate::Engine::capture`]: the content of dirty resident pages (to be
/// written by `persist`) and the stored location of the rest.
#[derive(Debug)]
pub struct Capture {
    /// Captured pages (page, home at capture, write-protected at capture), their content back
    /// to back in `data`. Only a protected copy may be adopted.
    pub(crate) copied: Vec<(u32, Home, bool)>,
    pub(crate) data: AlignedBuf,
    /// Pages that travel as metadata only.
    pub(crate) stored: Vec<DeltaPage>,
}

impl Capture {
    /// Pages whose content was copied (dirty in DRAM).
    pub fn copied_pages(&self) -> usize {
        self.copied.len()
    }

    /// Pages that travel as metadata only (already on shared storage, or zeros).
    pub fn metadata_only_pages(&self) -> usize {
        self.stored.len()
    }
}

/// Whether a page found by capture must be copied: resident and changed since stored (a
/// `LOGGED` page the capture's log did not name is unchanged).
pub(crate) fn needs_copy(word: u64) -> bool {
    word & RESIDENT != 0 && word & DIRTY != 0 && word & LOGGED == 0
}

/// Flags that tell `persist` a captured page is unchanged since its capture.
pub(crate) const CAPTURE_INTACT: u64 = CAPTURED | RESIDENT | DIRTY;

/// Pages locked at once by a capture (their faults wait meanwhile).
const CAPTURE_CHUNK: usize = 256;

impl Pager {
    fn repl(&self) -> Result<&ReplTrack, EngineError> {
        self.repl.as_ref().ok_or(EngineError::ReplicationOff)
    }

    /// Step 1 of a checkpoint, with the guest paused. See the [module docs](self). `written`:
    /// dirty-log mode, with the pages the guest wrote since the previous capture.
    pub(crate) fn capture(&self, written: Option<&[u64]>) -> Result<Capture, EngineError> {
        let r = self.repl()?;
        r.use_mode(if written.is_some() { Mode::DirtyLog } else { Mode::WriteProtect })?;
        let pages = self.table.len() as u64;
        if let Some(&page) = written.and_then(|w| w.iter().find(|&&p| p >= pages)) {
            return Err(EngineError::NoSuchPage { page, pages });
        }
        if !r.begin() {
            return Err(EngineError::CheckpointInFlight);
        }
        for &page in written.unwrap_or_default() {
            // Only a dirty resident page can have been written unseen: a clean one is mapped
            // write-protected, so its first write faulted and made it dirty (and changed) before
            // the guest went on; a page not resident was stored at its eviction, which marked it
            // changed. So the log's other entries add nothing — and there are many: on PVM a
            // read fault's mapping is logged as a write.
            let g = lock_page(self.table.get(page as usize));
            let v = g.view();
            if v.resident() && v.dirty() {
                // A `LOGGED` page the log names may have been written (or only read: see above).
                g.clear(LOGGED);
                r.mark(page as usize);
            }
        }
        let changed = r.take_changed();
        // Dirty-log mode: quiet pages that went cold are taken the write-protect way.
        let ripe = if written.is_some() { r.age_quiet(&changed) } else { Vec::new() };
        let mut stored = Vec::new();
        let mut to_copy = Vec::new();
        for &page in &changed {
            let g = lock_page(self.table.get(page as usize));
            let v = g.view();
            if needs_copy(v.word) {
                to_copy.push((page, written.is_none()));
            } else {
                r.set_pending(page, v.home());
                stored.push(DeltaPage { page, home: v.home(), crc: v.crc, tag: self.tags.get(page as usize) });
            }
        }
        for page in self.adopt_quiet(r, &ripe)? {
            to_copy.push((page, true));
        }
        let mut data = AlignedBuf::zeroed(to_copy.len().max(1) * PAGE_SIZE);
        let mut copied = Vec::with_capacity(to_copy.len());
        for chunk in to_copy.chunks(CAPTURE_CHUNK) {
            let mut held = Vec::with_capacity(chunk.len());
            for &(page, protect) in chunk {
                let g = lock_page(self.table.get(page as usize));
                let v = g.view();
                if needs_copy(v.word) {
                    // Until `persist` replaces it, the page's current copy stands in for the
                    // checkpoint's (and an abort knows the page was taken).
                    r.set_pending(page, v.home());
                    held.push((page as usize, g, v.home(), protect));
                } else {
                    // Evicted (or zeroed) between the two passes: its home has the content.
                    r.set_pending(page, v.home());
                    stored.push(DeltaPage { page, home: v.home(), crc: v.crc, tag: self.tags.get(page as usize) });
                }
            }
            // Write-protect before copying, so the next write is seen (and clears CAPTURED).
            let protect: Vec<usize> = held.iter().filter(|h| h.3).map(|h| h.0).collect();
            for (first, n) in runs(&protect) {
                self.uffd
                    .write_protect(self.addr(first), n * PAGE_SIZE, true, false)
                    .map_err(page_err("UFFDIO_WRITEPROTECT", first))?;
            }
            let mut quiet = Vec::new();
            for (page, g, home, protect) in held {
                let i = copied.len();
                self.memfd
                    .read_at(&mut data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE], (page * PAGE_SIZE) as u64)
                    .map_err(page_err("pread", page))?;
                if protect {
                    g.set(CAPTURED);
                } else {
                    // Left writable: the dirty log, not a fault, reports its next write.
                    quiet.push(page as u32);
                }
                copied.push((page as u32, home, protect));
            }
            if !quiet.is_empty() {
                r.quiet.lock().extend(quiet.into_iter().map(|p| (p, Quiet::default())));
            }
        }
        Ok(Capture { copied, data, stored })
    }

    /// Dirty-log mode, within a capture: the `ripe` quiet pages (sorted) whose committed replica
    /// copy is the one `persist` wrote of them are write-protected and adopt it as their home,
    /// clean. Returns the others still dirty in DRAM, for the capture to copy the write-protect
    /// way. Pages evicted since need nothing: the replica has their content.
    fn adopt_quiet(&self, r: &ReplTrack, ripe: &[(u32, Quiet)]) -> Result<Vec<u32>, EngineError> {
        let mut recopy = Vec::new();
        for chunk in ripe.chunks(CAPTURE_CHUNK) {
            let mut held = Vec::with_capacity(chunk.len());
            for &(page, q) in chunk {
                let g = lock_page(self.table.get(page as usize));
                if !needs_copy(g.view().word) {
                    continue;
                }
                match q.copy {
                    Some(copy) if r.committed_is(page, copy.0) => held.push((page as usize, g, copy)),
                    _ => recopy.push(page),
                }
            }
            // Write-protect before the page turns clean, so its next write is seen.
            let pages: Vec<usize> = held.iter().map(|h| h.0).collect();
            for (first, n) in runs(&pages) {
                self.uffd
                    .write_protect(self.addr(first), n * PAGE_SIZE, true, false)
                    .map_err(page_err("UFFDIO_WRITEPROTECT", first))?;
            }
            for (page, g, (home, crc, tag)) in held {
                let old = g.view().home();
                g.set_home(home, crc);
                self.tags.set(page, tag);
                g.clear(DIRTY);
                if old != home && !r.retains(page, old) {
                    self.release(old);
                }
                bump(&self.stats.checkpoint_adopted);
            }
        }
        Ok(recopy)
    }

    /// Step 2 of a checkpoint, with the guest running: writes the captured copies to tier 2,
    /// syncs them, and adopts them as the homes of pages unchanged since. Returns the whole
    /// delta, sorted by page. On error the caller aborts the checkpoint.
    pub(crate) fn persist(&self, cap: Capture) -> Result<Vec<DeltaPage>, EngineError> {
        let r = self.repl()?;
        let Capture { copied, data, mut stored } = cap;
        if !copied.is_empty() {
            let homes = self.write_slots(&data[..copied.len() * PAGE_SIZE], copied[0].0 as usize)?;
            add(&self.stats.tier2_bytes_written, (copied.len() * PAGE_SIZE) as u64);
            // Referenced by the checkpoint in flight from now on, adopted or not.
            for (&(page, ..), &(home, _)) in copied.iter().zip(&homes) {
                r.set_pending(page, home);
            }
            self.ssd.sync().map_err(EngineError::SyncTier2)?;
            for (i, (&(page, captured_home, protected), (home, crc))) in copied.iter().zip(homes).enumerate() {
                let tag = self.tags.compute(page as usize, &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
                let g = lock_page(self.table.get(page as usize));
                let v = g.view();
                // Only a write-protected capture can tell that the page is unwritten since.
                if !protected {
                    r.note_quiet_copy(page, home, crc, tag);
                }
                if protected && v.word & CAPTURE_INTACT == CAPTURE_INTACT && v.home() == captured_home {
                    // Unchanged since the capture: the checkpoint's copy is its content.
                    g.set_home(home, crc);
                    self.tags.set(page as usize, tag);
                    g.clear(DIRTY);
                    if !r.retains(page as usize, captured_home) {
                        self.release(captured_home);
                    }
                    bump(&self.stats.checkpoint_adopted);
                } else {
                    g.clear(CAPTURED);
                }
                stored.push(DeltaPage { page, home, crc, tag });
            }
        } else if stored.iter().any(|d| matches!(d.home, Home::Ssd(_))) {
            // Slots written outside the checkpoint (evictions, precleaning) that it names only by
            // location: durable before the commit references them.
            self.ssd.sync().map_err(EngineError::SyncTier2)?;
        }
        stored.sort_unstable_by_key(|d| d.page);
        Ok(stored)
    }

    /// Step 3: the checkpoint committed (`commit`) or failed. See [`ReplTrack::finish`].
    pub(crate) fn finish_checkpoint(&self, commit: bool) -> Result<(), EngineError> {
        let r = self.repl()?;
        r.finish(commit, |page| lock_page(self.table.get(page as usize)), |_, home| self.release(home));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmtier_storage::ssd::SlotId;

    #[test]
    fn first_take_is_every_page_then_only_marked_ones() {
        let t = ReplTrack::new(130);
        let all = t.take_changed();
        assert_eq!(all, (0..130).collect::<Vec<u32>>());
        assert!(t.take_changed().is_empty());
        t.mark(3);
        t.mark(129);
        t.mark(64);
        assert_eq!(t.take_changed(), vec![3, 64, 129]);
    }

    #[test]
    fn commit_frees_superseded_copies_the_engine_does_not_use() {
        let t = ReplTrack::new(4);
        t.take_changed();
        let entries: Vec<PageEntry> = (0..4).map(|_| PageEntry::default()).collect();
        let (a, b) = (Home::Ssd(SlotId(10)), Home::Ssd(SlotId(11)));
        // Checkpoint 1: page 0 at `a`, which is also the engine's home.
        entries[0].try_lock().unwrap().set_home(a, 1);
        assert!(t.begin());
        assert!(!t.begin(), "one checkpoint in flight at a time");
        t.set_pending(0, a);
        let mut freed = Vec::new();
        t.finish(true, |p| lock_page(&entries[p as usize]), |p, h| freed.push((p, h)));
        assert!(freed.is_empty());
        assert_eq!(Home::from_word(t.committed[0].load(Ordering::Relaxed)), a);
        // The engine moves page 0 to `b`: `a` is retained for the replica.
        assert!(t.retains(0, a));
        entries[0].try_lock().unwrap().set_home(b, 2);
        // Checkpoint 2 references `b`: `a` is freed at commit, `b` is not (the engine's).
        assert!(t.begin());
        t.set_pending(0, b);
        assert!(t.retains(0, b), "in-flight copies are retained too");
        t.finish(true, |p| lock_page(&entries[p as usize]), |p, h| freed.push((p, h)));
        assert_eq!(freed, vec![(0, a)]);
        // An aborted checkpoint frees its own replica-only copy and nothing else.
        let c = Home::Ssd(SlotId(12));
        freed.clear();
        assert!(t.begin());
        t.set_pending(0, c);
        t.set_pending(1, Home::Zero);
        t.finish(false, |p| lock_page(&entries[p as usize]), |p, h| freed.push((p, h)));
        assert_eq!(freed, vec![(0, c)]);
        assert_eq!(Home::from_word(t.committed[0].load(Ordering::Relaxed)), b);
        assert!(!t.retains(0, c));
        assert_eq!(t.take_changed(), vec![0, 1], "an aborted checkpoint's pages go into the next one");
    }
}
