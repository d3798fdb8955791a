//! Page moves: install a page into DRAM (fault or promotion), evict it to tier 2, move stored
//! pages between tier 2 and tier 3. Shared by the fault handlers and the MTM.
//!
//! Every move holds the page's lock ([`PageGuard`]) and nobody waits for a lock: the fault path
//! defers a fault whose page is busy and the MTM skips busy pages.
//!
//! Eviction keeps writes from being lost: a dirty page is write-protected *before* its content is
//! read, so a guest write that races with the eviction raises a WP fault, which the handler defers
//! until the page is gone and the guest then re-faults it from its new home. A page is written to
//! a lower tier only if it changed since it was last written there (`DIRTY`, which a WP fault sets;
//! pages are installed write-protected unless the fault was a write). A new copy always goes to a
//! new slot or segment and the old one is freed after, so a stored copy is never overwritten in
//! place.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use tracing::{error, trace, warn};
use vmtier_storage::object::{ObjectError, ObjectTier, SegmentLoc};
use vmtier_storage::ssd::{SlotId, SsdError, SsdStore};
use vmtier_uffd::{AlignedBuf, Filled, Memfd, PAGE_SIZE, SharedMapping, Uffd};

use crate::dram::DramBudget;
use crate::error::EngineError;
use crate::page_table::{
    CAPTURED, DIRTY, Home, LOGGED, POISONED, PREFETCHED, PageGuard, PageTable, PageView, REFERENCED, RESIDENT, WRITTEN,
};
use crate::policy::Tier;
use crate::prefetch::worker::Prefetch;
use crate::replica::ReplTrack;
use crate::stats::{Stats, add, bump};
use crate::tracker::{AccessKind, Tracker};

/// At the eviction of a dirty page whose new copy has checksum `crc`: records in `WRITTEN`
/// whether its stored content changed during this residency (a page installed writable on a
/// guess may not have been written), which decides how its next read fault installs it. A
/// page stored for the first time says nothing about rewrites — memory is written once and
/// then mostly read — so it starts as not written. Only a hint: the page is written out either
/// way, so a checksum collision costs a fault, never data.
pub(crate) fn note_modified(g: &PageGuard<'_>, v: &PageView, crc: u32) {
    if v.home() != Home::Zero && crc != v.crc {
        g.set(WRITTEN);
    } else {
        g.clear(WRITTEN);
    }
}

/// Whether `e` is tier 2 refusing to store a page: no slot, or the slot write failed (ENOSPC,
/// EIO, a torn write). The page is then still resident and unchanged.
pub(crate) fn tier2_refused(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Tier2 {
            source: SsdError::Write { .. } | SsdError::CreateFile { .. } | SsdError::AllocExhausted { .. },
            ..
        }
    )
}

/// Whether `e` says tier 2 is out of space (ENOSPC or EDQUOT, or out of slot ids), as opposed to
/// a write that failed for another reason and may work next time.
fn tier2_full(e: &EngineError) -> bool {
    use std::io::ErrorKind;
    let full = |s: &std::io::Error| matches!(s.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded);
    match e {
        EngineError::Tier2 { source: SsdError::Write { source, .. } | SsdError::CreateFile { source, .. }, .. } => {
            full(source)
        }
        EngineError::Tier2 { source: SsdError::AllocExhausted { .. }, .. } => true,
        _ => false,
    }
}

/// How far direct reclaim may go beyond the MTM's list of coldest pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// None: only the MTM's victims.
    VictimsOnly,
    /// Pages the clock hand finds idle: not observed since it last passed, not an unused
    /// prediction.
    IdleOnly,
    /// Idle pages first, then any resident page (a fault must make progress).
    Any,
}

/// Everything a page move touches.
#[derive(Debug)]
pub struct Pager {
    pub(crate) table: PageTable,
    pub(crate) memfd: Memfd,
    /// This process's mapping of the memfd, registered with `uffd`; `None` when the memory is
    /// external (mapped and registered by another process, see `Engine::start_external`).
    pub(crate) map: Option<SharedMapping>,
    pub(crate) uffd: Uffd,
    /// Address of guest page 0 in the address space the userfaultfd reports faults in: the
    /// base of `map`, or the other process's mapping.
    uffd_base: usize,
    pub(crate) budget: DramBudget,
    /// The prefetcher and its queue, unless prefetching is off.
    pub(crate) prefetch: Option<Prefetch>,
    pub(crate) ssd: SsdStore,
    pub(crate) object: ObjectTier,
    pub(crate) tracker: Tracker,
    pub(crate) stats: Stats,
    zero: AlignedBuf,
    /// Eviction candidates published by the MTM, coldest last.
    pub(crate) victims: Mutex<Vec<u32>>,
    clock: AtomicUsize,
    segment_pages: usize,
    /// Most pages one tier-2 fault installs (neighbours in consecutive slots), 1 = off.
    fault_around: usize,
    /// Free frames the MTM keeps; fault-around never eats into them.
    pub(crate) headroom: usize,
    /// The background reclaimer's thread, to wake it (set when it starts).
    reclaimer: OnceLock<std::thread::Thread>,
    /// Change tracking for checkpoint replication, when it is on.
    pub(crate) repl: Option<ReplTrack>,
    /// Where `Home::Inherited` pages are read from, after a failover.
    pub(crate) inherited: Option<std::sync::Arc<dyn crate::InheritedPages>>,
    /// Inherited pages are installed writable and `LOGGED` (`Inheritance::logged_writes`).
    pub(crate) logged: bool,
    /// Keyed tags of stored pages, when they are authenticated ([`crate::auth`]).
    pub(crate) tags: crate::auth::Tags,
    /// Tier 2 reported itself full (ENOSPC): until this time (ms since `started`, 0 = never)
    /// evictions go straight to tier 3 and nothing moves up to tier 2.
    tier2_full_until_ms: AtomicU64,
    started: Instant,
}

/// After tier 2 reports ENOSPC, how long evictions skip it before trying it again.
const TIER2_FULL_BACKOFF_MS: u64 = 1000;

/// Most pages written to tier 2 with one batch (1 MiB).
const BATCH_PAGES: usize = 256;
/// Victims evicted together when a fault finds DRAM full.
const RECLAIM_BATCH: usize = 32;

/// Resident pages the reclaim clock passes over for having been seen in the current tick before
/// it takes any resident page.
const CLOCK_SECOND_CHANCES: usize = 64;

pub(crate) fn page_err(op: &'static str, page: usize) -> impl FnOnce(vmtier_uffd::Error) -> EngineError {
    move |source| EngineError::PageOp { op, page: page as u64, source }
}

impl Pager {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        table: PageTable,
        memfd: Memfd,
        map: Option<SharedMapping>,
        uffd: Uffd,
        uffd_base: usize,
        budget: DramBudget,
        prefetch: Option<Prefetch>,
        ssd: SsdStore,
        object: ObjectTier,
        tracker: Tracker,
        segment_pages: usize,
        fault_around: usize,
        headroom: usize,
    ) -> Self {
        Self {
            table,
            memfd,
            map,
            uffd,
            uffd_base,
            budget,
            prefetch,
            ssd,
            object,
            tracker,
            stats: Stats::default(),
            zero: AlignedBuf::zeroed(PAGE_SIZE),
            victims: Mutex::new(Vec::new()),
            clock: AtomicUsize::new(0),
            segment_pages,
            fault_around,
            headroom,
            reclaimer: OnceLock::new(),
            repl: None,
            inherited: None,
            logged: false,
            tags: crate::auth::Tags::new(None, 0),
            tier2_full_until_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Guest address of `page`, as the userfaultfd sees it.
    pub(crate) fn addr(&self, page: usize) -> usize {
        self.uffd_base + page * PAGE_SIZE
    }

    /// Page containing guest address `addr` (as the userfaultfd reports it), if it is guest
    /// memory.
    pub(crate) fn page_of(&self, addr: usize) -> Option<usize> {
        let page = addr.checked_sub(self.uffd_base)? / PAGE_SIZE;
        (page < self.table.len()).then_some(page)
    }

    fn offset(page: usize) -> u64 {
        (page * PAGE_SIZE) as u64
    }

    /// Frees `page`'s replaced stored copy `old` (the caller holds the page's lock and has set
    /// its new home), unless a replica still references it (`replica.rs`).
    pub(crate) fn release_old(&self, page: usize, old: Home) {
        if let Some(r) = &self.repl {
            r.mark(page);
            if r.retains(page, old) {
                return;
            }
        }
        self.release(old);
    }

    /// Marks a resident page changed in DRAM (a write), under its lock.
    pub(crate) fn mark_dirty(&self, page: usize, g: &PageGuard<'_>) {
        g.set(DIRTY);
        // Written for certain: no longer equal to its inherited copy.
        g.clear(CAPTURED | LOGGED);
        if let Some(r) = &self.repl {
            r.mark(page);
        }
    }

    /// Frees the storage of a stored copy nothing references any more.
    pub(crate) fn release(&self, home: Home) {
        match home {
            // Inherited copies belong to the failed primary's store: never freed here.
            Home::Zero | Home::Inherited => {}
            Home::Ssd(slot) => {
                if let Err(e) = self.ssd.free(slot) {
                    error!(slot = slot.0, error = %crate::error::chain(&e), "freeing a tier-2 slot failed");
                }
            }
            Home::Object(loc) => {
                if let Err(e) = self.object.release(loc) {
                    error!(segment = loc.segment, index = loc.index, error = %crate::error::chain(&e), "releasing a tier-3 page failed");
                }
            }
        }
    }

    /// Reads the stored copy of a page into `buf`, checksum checked.
    pub(crate) fn read_home(&self, page: usize, v: &PageView, buf: &mut [u8]) -> Result<(), EngineError> {
        match v.home() {
            Home::Zero => {
                buf.fill(0);
                Ok(())
            }
            // A copy that fails its checksum is read once more before it is declared corrupt: a
            // bit flipped on the way (a flaky link, a bad transfer) must not cost the page. Damage
            // at rest fails both reads.
            Home::Ssd(slot) => {
                let read = match self.ssd.read(slot, v.crc, buf) {
                    Err(e @ SsdError::Corrupt { .. }) => {
                        warn!(page, error = %crate::error::chain(&e), "tier-2 copy failed its checksum; reading it again");
                        self.ssd.read(slot, v.crc, buf)
                    }
                    r => r,
                };
                read.map_err(|source| EngineError::Tier2 { page: page as u64, source })?;
                add(&self.stats.bytes_read, PAGE_SIZE as u64);
                self.check_tag(page, v, buf)
            }
            Home::Object(loc) => {
                let read = match self.object.read(loc, v.crc, buf) {
                    Err(e @ ObjectError::Corrupt { .. }) => {
                        warn!(page, error = %crate::error::chain(&e), "tier-3 copy failed its checksum; reading it again");
                        self.object.read(loc, v.crc, buf)
                    }
                    r => r,
                };
                read.map_err(|source| EngineError::Tier3 { page: page as u64, source })?;
                add(&self.stats.bytes_read, PAGE_SIZE as u64);
                self.check_tag(page, v, buf)
            }
            Home::Inherited => {
                let Some(src) = &self.inherited else {
                    return Err(EngineError::Inherited {
                        page: page as u64,
                        source: std::io::Error::other("the page is marked inherited but the engine inherited nothing"),
                    });
                };
                src.read(page as u64, buf).map_err(|source| EngineError::Inherited { page: page as u64, source })?;
                add(&self.stats.bytes_read, PAGE_SIZE as u64);
                Ok(())
            }
        }
    }

    /// Checks a stored copy read back against the page's keyed tag (when pages are authenticated).
    fn check_tag(&self, page: usize, v: &PageView, buf: &[u8]) -> Result<(), EngineError> {
        if self.tags.check(page, buf) {
            return Ok(());
        }
        error!(page, home = ?v.home(), "a stored copy fails authentication: refused");
        Err(EngineError::Unauthenticated { page: page as u64, home: v.home() })
    }

    /// Installs a non-resident page into DRAM; the caller holds the lock and has reserved a
    /// frame. A `write` install maps the page writable and marks it dirty; otherwise it is mapped
    /// write-protected so the first write is seen — except an inherited page when the caller's
    /// dirty log sees writes (`logged`): mapped writable and `LOGGED`.
    pub(crate) fn fill(
        &self,
        page: usize,
        g: &PageGuard<'_>,
        write: bool,
        buf: &mut AlignedBuf,
    ) -> Result<(), EngineError> {
        let v = g.view();
        debug_assert!(!v.resident());
        if v.word & POISONED != 0 {
            return Err(EngineError::Poisoned { page: page as u64 });
        }
        let addr = self.addr(page);
        let logged = !write && self.logged && v.home() == Home::Inherited;
        if write {
            // Before the install wakes the guest: a checkpoint captured after the guest's write
            // must find the page dirty and marked changed.
            self.mark_dirty(page, g);
        }
        let mut install = || -> Result<Filled, EngineError> {
            Ok(match v.home() {
                Home::Zero if write => {
                    bump(&self.stats.zero_fills);
                    self.uffd.zeropage(addr, PAGE_SIZE).map_err(page_err("UFFDIO_ZEROPAGE", page))?
                }
                Home::Zero => {
                    bump(&self.stats.zero_fills);
                    self.uffd.copy(addr, &self.zero, true, true).map_err(page_err("UFFDIO_COPY", page))?
                }
                home => {
                    self.read_home(page, &v, buf)?;
                    bump(if matches!(home, Home::Object(_)) { &self.stats.tier3_hits } else { &self.stats.tier2_hits });
                    if logged {
                        // Before the install wakes the guest: eviction must find it dirty.
                        g.set(DIRTY | LOGGED);
                    }
                    self.uffd.copy(addr, buf, !(write || logged), true).map_err(page_err("UFFDIO_COPY", page))?
                }
            })
        };
        let filled = match install() {
            Ok(f) => f,
            Err(e) => {
                g.clear(DIRTY);
                return Err(e);
            }
        };
        if filled == Filled::AlreadyPresent {
            // Present without passing through the page table: nobody knows whether it changed.
            warn!(page, "page was already present at install; treating it as dirty");
            self.mark_dirty(page, g);
            self.uffd.wake(addr, PAGE_SIZE).map_err(page_err("UFFDIO_WAKE", page))?;
        }
        g.set(RESIDENT);
        trace!(page, home = ?v.home(), crc = v.crc, write, "fill");
        Ok(())
    }

    /// Serves a read fault on a tier-2 page together with its neighbours: the following pages
    /// whose copies sit in the following slots of the same file are read with one I/O and
    /// installed with one `UFFDIO_COPY` (write-protected, clean), while DRAM has frames to spare
    /// beyond the MTM's headroom. Returns false (nothing done) when there is no such neighbour;
    /// the caller then serves the page alone. The caller holds `g` and a frame for `page`.
    pub(crate) fn fill_around(&self, page: usize, g: &PageGuard<'_>) -> Result<bool, EngineError> {
        let v = g.view();
        let Home::Ssd(first) = v.home() else { return Ok(false) };
        let spf = self.ssd.config().slots_per_file;
        let max = self.fault_around.min(self.table.len() - page);
        let mut extra = Vec::new();
        let mut crcs = vec![v.crc];
        for k in 1..max {
            let slot = first.0 + k as u32;
            if slot / spf != first.0 / spf || self.budget.free() <= self.headroom {
                break;
            }
            let Some(gk) = self.table.get(page + k).try_lock() else { break };
            let vk = gk.view();
            if vk.resident()
                || vk.word & POISONED != 0
                || vk.home() != Home::Ssd(SlotId(slot))
                || !self.budget.try_reserve()
            {
                break;
            }
            crcs.push(vk.crc);
            extra.push(gk);
        }
        if extra.is_empty() {
            return Ok(false);
        }
        let mut buf = AlignedBuf::zeroed(crcs.len() * PAGE_SIZE);
        if self.ssd.read_run(first, &crcs, &mut buf).is_err()
            || !buf.chunks_exact(PAGE_SIZE).enumerate().all(|(i, p)| self.tags.check(page + i, p))
        {
            // Let the single-page path report exactly which page is bad (or retry the I/O).
            self.budget.release(extra.len());
            return Ok(false);
        }
        let addr = self.addr(page);
        if self.uffd.copy(addr, &buf, true, true).map_err(page_err("UFFDIO_COPY", page))? == Filled::AlreadyPresent {
            // Some page of the run was present already: fill the rest one by one.
            warn!(page, pages = crcs.len(), "a page of a fault-around run was already present");
            for (i, chunk) in buf.chunks_exact(PAGE_SIZE).enumerate() {
                self.uffd.copy(addr + i * PAGE_SIZE, chunk, true, true).map_err(page_err("UFFDIO_COPY", page + i))?;
            }
        }
        g.set(RESIDENT);
        for gk in &extra {
            gk.set(RESIDENT);
        }
        add(&self.stats.bytes_read, buf.len() as u64);
        bump(&self.stats.tier2_hits);
        add(&self.stats.fault_around_pages, extra.len() as u64);
        Ok(true)
    }

    /// Marks a page whose stored copy is corrupt so no access is ever served wrong data: guest
    /// accesses get SIGBUS.
    pub(crate) fn poison(&self, page: usize, g: &PageGuard<'_>) {
        bump(&self.stats.corrupt);
        g.set(POISONED);
        if let Err(e) = self.uffd.poison(self.addr(page), PAGE_SIZE) {
            error!(page, error = %crate::error::chain(&e), "could not poison page with a corrupt stored copy");
        }
    }

    /// Evicts a resident page from DRAM. Changed content goes to a new tier-2 slot (or back to
    /// the zero state if it is all zeros); unchanged content is dropped without I/O. With
    /// `to_ssd`, a clean page whose copy is in tier 3 is moved up to tier 2 on the way out.
    pub(crate) fn evict(
        &self,
        page: usize,
        g: &PageGuard<'_>,
        buf: &mut AlignedBuf,
        to_ssd: bool,
    ) -> Result<(), EngineError> {
        let v = g.view();
        debug_assert!(v.resident());
        let addr = self.addr(page);
        let dirty = v.dirty();
        if dirty {
            self.uffd.write_protect(addr, PAGE_SIZE, true, false).map_err(page_err("UFFDIO_WRITEPROTECT", page))?;
        }
        let rehome = !dirty && to_ssd && matches!(v.home(), Home::Object(_));
        trace!(page, dirty, rehome, home = ?v.home(), "evict");
        if dirty || rehome {
            if let Err(e) = self.write_out(page, g, &v, buf, dirty) {
                if dirty {
                    let _ = self.uffd.write_protect(addr, PAGE_SIZE, false, true);
                }
                return Err(e);
            }
            if rehome {
                bump(&self.stats.moves_3_to_2);
            }
        } else {
            bump(&self.stats.clean_evictions);
        }
        self.drop_frame(page, g)
    }

    /// Writes a resident page's content to a new tier-2 slot and points the page at it.
    fn write_out(
        &self,
        page: usize,
        g: &PageGuard<'_>,
        v: &PageView,
        buf: &mut AlignedBuf,
        dirty: bool,
    ) -> Result<(), EngineError> {
        self.memfd.read_at(buf, Self::offset(page)).map_err(page_err("pread", page))?;
        if dirty && buf.iter().all(|&b| b == 0) {
            g.set_home(Home::Zero, 0);
        } else if dirty && self.clean_if_inherited(page, g, v, buf) {
            // Write-protected by the caller, so `buf` is its final content.
            return Ok(());
        } else {
            let err = |source| EngineError::Tier2 { page: page as u64, source };
            let slot = self.ssd.alloc().map_err(err)?;
            let crc = match self.ssd.write(slot, buf) {
                Ok(crc) => crc,
                Err(e) => {
                    self.release(Home::Ssd(slot));
                    return Err(err(e));
                }
            };
            add(&self.stats.tier2_bytes_written, PAGE_SIZE as u64);
            note_modified(g, v, crc);
            self.tags.seal(page, buf);
            g.set_home(Home::Ssd(slot), crc);
            trace!(page, slot = slot.0, crc, "written to tier 2");
        }
        self.release_old(page, v.home());
        Ok(())
    }

    /// Drops a resident page from DRAM (its content is stored or unchanged) and frees its frame.
    fn drop_frame(&self, page: usize, g: &PageGuard<'_>) -> Result<(), EngineError> {
        self.memfd.punch_hole(Self::offset(page), PAGE_SIZE as u64).map_err(page_err("fallocate(PUNCH_HOLE)", page))?;
        self.forget_frame(g);
        Ok(())
    }

    /// The bookkeeping of a dropped frame, once its memfd page is punched out.
    fn forget_frame(&self, g: &PageGuard<'_>) {
        if g.view().word & PREFETCHED != 0 {
            bump(&self.stats.prefetch_wasted);
        }
        g.clear(RESIDENT | DIRTY | PREFETCHED | CAPTURED);
        self.budget.release(1);
        bump(&self.stats.demotions);
    }

    /// Reserves a DRAM frame for a fault, evicting a cold page on the spot if DRAM is full.
    /// Returns false if no frame could be had now (the caller defers the fault).
    pub(crate) fn reserve_frame(&self, buf: &mut AlignedBuf) -> bool {
        for _ in 0..8 {
            if self.budget.try_reserve() {
                self.wake_reclaimer();
                return true;
            }
            if !self.reclaim_one(buf, Clock::Any) {
                return false;
            }
            bump(&self.stats.direct_reclaims);
        }
        false
    }

    /// Reserves a DRAM frame for a prefetched page: a free one, or one reclaimed from the
    /// policy's coldest pages, or from a page the clock finds idle — not observed since the
    /// clock's hand last passed it, and not itself an unused prediction. A prediction is for an
    /// access in the next few milliseconds; a page idle for a whole turn of the clock is colder
    /// than that, and a page observed since is never pushed out for it.
    pub(crate) fn reserve_prefetch_frame(&self, buf: &mut AlignedBuf) -> bool {
        let got = self.budget.try_reserve() || (self.reclaim_one(buf, Clock::IdleOnly) && self.budget.try_reserve());
        self.wake_reclaimer();
        got
    }

    /// Puts `buf` into the memfd's page cache at `page` without mapping it: the guest's next
    /// access is a MINOR fault.
    pub(crate) fn write_page_cache(&self, page: usize, buf: &[u8]) -> Result<(), EngineError> {
        self.memfd.write_at(buf, Self::offset(page)).map_err(page_err("pwrite", page))
    }

    /// Wakes the background reclaimer if free frames are below half the headroom.
    fn wake_reclaimer(&self) {
        if let Some(t) = self.reclaimer.get()
            && self.budget.free() < self.headroom / 2
        {
            t.unpark();
        }
    }

    /// The background reclaimer (kswapd's role): whenever free frames fall below half the
    /// headroom, evicts in batches — the MTM's coldest pages, else pages the clock finds idle —
    /// until the headroom is free again, so a fault's own path reads and installs but rarely
    /// writes. Runs until `stop` is set.
    pub(crate) fn reclaim_loop(&self, stop: &AtomicBool) {
        let _ = self.reclaimer.set(std::thread::current());
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        while !stop.load(Ordering::Relaxed) {
            if self.budget.free() >= self.headroom / 2 {
                std::thread::park_timeout(std::time::Duration::from_millis(10));
                continue;
            }
            while self.budget.free() < self.headroom && !stop.load(Ordering::Relaxed) {
                if !self.reclaim_batch(&mut buf) {
                    break;
                }
            }
        }
    }

    /// Evicts up to [`RECLAIM_BATCH`] pages with one write: the MTM's coldest, else pages the
    /// clock finds idle. Returns whether anything was evicted.
    fn reclaim_batch(&self, buf: &mut AlignedBuf) -> bool {
        if self.reclaim_one(buf, Clock::VictimsOnly) {
            return true;
        }
        let n = self.table.len();
        let mut batch = Vec::with_capacity(RECLAIM_BATCH);
        for _ in 0..n.min(RECLAIM_BATCH * CLOCK_SECOND_CHANCES) {
            if batch.len() == RECLAIM_BATCH {
                break;
            }
            let page = self.clock.fetch_add(1, Ordering::Relaxed) % n;
            let entry = self.table.get(page);
            let v = entry.view();
            if !v.resident() || v.word & PREFETCHED != 0 {
                continue;
            }
            if v.word & REFERENCED != 0 {
                entry.set_hint(REFERENCED, false);
                continue;
            }
            batch.push(page);
        }
        match self.evict_batch(&batch) {
            Ok(moved) => moved > 0,
            Err(e) => {
                bump(&self.stats.io_errors);
                error!(error = %crate::error::chain(&e), "background eviction failed");
                false
            }
        }
    }

    /// Evicts one resident page: an MTM-chosen victim if there is one, else the first page a
    /// clock hand finds idle (second chance) and is not an unused prediction — or,
    /// with [`Clock::Any`] and none such nearby, any resident page.
    fn reclaim_one(&self, buf: &mut AlignedBuf, clock: Clock) -> bool {
        // The MTM's coldest candidates, a batch at a time: one write for many evictions.
        loop {
            let batch: Vec<usize> = {
                let mut v = self.victims.lock();
                let n = v.len().saturating_sub(RECLAIM_BATCH);
                v.drain(n..).rev().map(|p| p as usize).collect()
            };
            if batch.is_empty() {
                break;
            }
            match self.evict_batch(&batch) {
                Ok(n) if n > 0 => {
                    add(&self.stats.direct_reclaims, n as u64 - 1);
                    return true;
                }
                Ok(_) => {}
                Err(e) => {
                    bump(&self.stats.io_errors);
                    error!(error = %crate::error::chain(&e), "batch eviction failed");
                    break;
                }
            }
        }
        let passes = match clock {
            Clock::VictimsOnly => return false,
            Clock::IdleOnly => 1,
            Clock::Any => 2,
        };
        let n = self.table.len();
        for pass in 0..passes {
            // Pass 0 is second-chance CLOCK: a page observed since the hand last passed
            // (`REFERENCED`) loses the bit and is skipped, as is an unused prediction. It gives up
            // after skipping CLOCK_SECOND_CHANCES pages: a full sweep of the table would cost far
            // more than the eviction it looks for, and the bits it cleared make the next
            // attempt succeed.
            let mut skipped = 0;
            for _ in 0..n {
                let page = self.clock.fetch_add(1, Ordering::Relaxed) % n;
                let entry = self.table.get(page);
                let v = entry.view();
                if !v.resident() {
                    continue;
                }
                if pass == 0 && (v.word & (REFERENCED | PREFETCHED) != 0) {
                    entry.set_hint(REFERENCED, false);
                    skipped += 1;
                    if skipped >= CLOCK_SECOND_CHANCES {
                        break;
                    }
                    continue;
                }
                if self.try_evict(page, buf) {
                    return true;
                }
            }
        }
        false
    }

    fn try_evict(&self, page: usize, buf: &mut AlignedBuf) -> bool {
        if self.tier2_is_full() {
            return match self.move_batch(&[page], Tier::Object) {
                Ok(n) => n > 0,
                Err(e) => {
                    bump(&self.stats.io_errors);
                    error!(page, error = %crate::error::chain(&e), "eviction to tier 3 failed (tier 2 is full); the page stays in DRAM");
                    false
                }
            };
        }
        let Some(g) = self.table.get(page).try_lock() else {
            return false;
        };
        if !g.view().resident() {
            return false;
        }
        match self.evict(page, &g, buf, false) {
            Ok(()) => true,
            Err(e) if tier2_refused(&e) => {
                // The page is unchanged and still resident: store it in tier 3 instead.
                drop(g);
                self.note_tier2_refused(&e);
                match self.move_batch(&[page], Tier::Object) {
                    Ok(n) => n > 0,
                    Err(e) => {
                        bump(&self.stats.io_errors);
                        error!(page, error = %crate::error::chain(&e), "eviction to tier 3 failed too; the page stays in DRAM");
                        false
                    }
                }
            }
            Err(e) => {
                bump(&self.stats.io_errors);
                error!(page, error = %crate::error::chain(&e), "eviction failed; the page stays in DRAM");
                false
            }
        }
    }

    /// Evicts `pages` to tier 2, or to tier 3 if tier 2 refuses the write (full, or failing):
    /// a full tier 2 stops demotions to it, not the guest.
    pub(crate) fn evict_batch(&self, pages: &[usize]) -> Result<usize, EngineError> {
        if self.tier2_is_full() {
            return self.move_batch(pages, Tier::Object);
        }
        match self.move_batch(pages, Tier::Ssd) {
            Err(e) if tier2_refused(&e) => {
                self.note_tier2_refused(&e);
                self.move_batch(pages, Tier::Object)
            }
            r => r,
        }
    }

    /// Whether tier 2 reported itself full less than [`TIER2_FULL_BACKOFF_MS`] ago.
    pub(crate) fn tier2_is_full(&self) -> bool {
        let until = self.tier2_full_until_ms.load(Ordering::Relaxed);
        until != 0 && (self.started.elapsed().as_millis() as u64) < until
    }

    /// Counts a write tier 2 refused (a full tier 2 is then skipped for a while); logs the
    /// first and then every 1024th.
    pub(crate) fn note_tier2_refused(&self, e: &EngineError) {
        if tier2_full(e) {
            let until = self.started.elapsed().as_millis() as u64 + TIER2_FULL_BACKOFF_MS;
            self.tier2_full_until_ms.store(until, Ordering::Relaxed);
        }
        let n = self.stats.tier2_refused.fetch_add(1, Ordering::Relaxed);
        bump(&self.stats.io_errors);
        if n.is_multiple_of(1024) {
            warn!(
                refused = n + 1,
                error = %crate::error::chain(e),
                "tier 2 refused a write (full disk or failing writes?); evictions go to tier 3 instead, moves up to tier 2 wait"
            );
        }
    }

    /// Replaces the list of eviction candidates (coldest last).
    pub(crate) fn publish_victims(&self, coldest_last: Vec<u32>) {
        *self.victims.lock() = coldest_last;
    }

    /// Brings a non-resident page into DRAM ahead of use if a frame is free. Returns whether it did.
    pub(crate) fn promote(&self, page: usize, buf: &mut AlignedBuf) -> Result<bool, EngineError> {
        let Some(g) = self.table.get(page).try_lock() else {
            return Ok(false);
        };
        let v = g.view();
        if v.resident() || v.word & POISONED != 0 || !self.budget.try_reserve() {
            return Ok(false);
        }
        if let Err(e) = self.fill(page, &g, false, buf) {
            self.budget.release(1);
            if e.is_corruption() {
                self.poison(page, &g);
            }
            return Err(e);
        }
        bump(&self.stats.promotions);
        self.tracker.observe(page as u64, self.table.get(page), AccessKind::Prefetch, false);
        Ok(true)
    }

    /// Moves a batch of pages down to `to` (tier 2 or tier 3) with one write: resident pages
    /// leave DRAM (unchanged ones without any write), and for tier 3 non-resident tier-2 pages
    /// are packed too (their slots freed). Busy, poisoned and zero pages are skipped, as are pages
    /// already stored where they are going. Returns the number of pages moved out of DRAM or down
    /// a tier.
    pub(crate) fn move_batch(&self, pages: &[usize], to: Tier) -> Result<usize, EngineError> {
        let cap = match to {
            Tier::Object => self.segment_pages,
            _ => BATCH_PAGES,
        };
        // Pages whose content is written, its bytes at their index in `data`.
        let mut held: Vec<(usize, PageGuard<'_>, PageView)> = Vec::with_capacity(pages.len().min(cap));
        // Resident pages that leave DRAM without a write (unchanged since stored, or zeros).
        let mut dropped: Vec<(usize, PageGuard<'_>)> = Vec::new();
        let mut data = AlignedBuf::zeroed(cap.min(pages.len()).max(1) * PAGE_SIZE);
        let mut moved = 0;
        for &page in pages {
            if held.len() == cap {
                break;
            }
            let Some(g) = self.table.get(page).try_lock() else { continue };
            let v = g.view();
            if v.word & POISONED != 0 {
                continue;
            }
            if v.resident() {
                let stored_ok = match (to, v.home()) {
                    (_, Home::Zero) => true,
                    (Tier::Object, Home::Object(_)) => true,
                    (Tier::Object, Home::Ssd(_)) => false,
                    _ => true,
                };
                if !v.dirty() && stored_ok {
                    bump(&self.stats.clean_evictions);
                    dropped.push((page, g));
                    continue;
                }
            } else if to == Tier::Object && matches!(v.home(), Home::Ssd(_)) {
                let chunk = &mut data[held.len() * PAGE_SIZE..(held.len() + 1) * PAGE_SIZE];
                if let Err(e) = self.read_home(page, &v, chunk) {
                    if e.is_corruption() {
                        error!(page, error = %crate::error::chain(&e), "corrupt tier-2 copy found while moving to tier 3; page poisoned");
                        self.poison(page, &g);
                    } else {
                        bump(&self.stats.io_errors);
                        error!(page, error = %crate::error::chain(&e), "tier-2 read failed while moving to tier 3");
                    }
                    continue;
                }
            } else {
                continue;
            }
            held.push((page, g, v));
        }
        // Unchanged pages first: their frames are free whatever happens to the write.
        moved += self.drop_frames(&mut dropped)?;

        // Dirty pages are write-protected before their content is read, so a write racing the
        // eviction faults and waits for the page lock instead of being lost. Contiguous pages
        // share one ioctl (and one TLB flush).
        let mut dirty: Vec<usize> = held.iter().filter(|(_, _, v)| v.resident() && v.dirty()).map(|h| h.0).collect();
        dirty.sort_unstable();
        for (first, n) in runs(&dirty) {
            self.uffd
                .write_protect(self.addr(first), n * PAGE_SIZE, true, false)
                .map_err(page_err("UFFDIO_WRITEPROTECT", first))?;
        }
        // Read the resident pages' content; a dirty page that is all zeros goes back to the zero
        // state instead of storage.
        let mut kept = Vec::with_capacity(held.len());
        for (i, (page, g, v)) in held.into_iter().enumerate() {
            if v.resident() {
                let chunk = &mut data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                self.memfd.read_at(chunk, Self::offset(page)).map_err(page_err("pread", page))?;
                if v.dirty() && chunk.iter().all(|&b| b == 0) {
                    g.set_home(Home::Zero, 0);
                    self.release_old(page, v.home());
                    dropped.push((page, g));
                    continue;
                }
                if self.clean_if_inherited(page, &g, &v, chunk) {
                    // Write-protected above, so `chunk` is its final content.
                    dropped.push((page, g));
                    continue;
                }
            }
            kept.push((i, page, g, v));
        }
        moved += self.drop_frames(&mut dropped)?;
        if kept.is_empty() {
            return Ok(moved);
        }
        // Pack the kept pages' bytes to the front of `data`, in order.
        for (k, &(i, ..)) in kept.iter().enumerate() {
            if i != k {
                data.copy_within(i * PAGE_SIZE..(i + 1) * PAGE_SIZE, k * PAGE_SIZE);
            }
        }
        let data = &data[..kept.len() * PAGE_SIZE];
        let written = match to {
            Tier::Object => {
                let batch: Vec<(u64, &[u8])> = kept
                    .iter()
                    .enumerate()
                    .map(|(k, (_, page, _, _))| (*page as u64, &data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]))
                    .collect();
                self.object
                    .write_segment(&batch)
                    .map(|locs| locs.into_iter().map(|(loc, crc)| (Home::Object(loc), crc)).collect::<Vec<_>>())
                    .map_err(|source| EngineError::Tier3 { page: kept[0].1 as u64, source })
            }
            _ => self.write_slots(data, kept[0].1),
        };
        // On error pages stay where they were; dirty ones stay write-protected until their next
        // write, which the WP fault handles as usual.
        let homes = written?;
        let bytes = (kept.len() * PAGE_SIZE) as u64;
        add(if to == Tier::Object { &self.stats.tier3_bytes_written } else { &self.stats.tier2_bytes_written }, bytes);
        for (k, ((_, page, g, v), (home, crc))) in kept.into_iter().zip(homes).enumerate() {
            if v.resident() {
                note_modified(&g, &v, crc);
                // Written from DRAM: a new tag. A move between tiers keeps the page's tag.
                self.tags.seal(page, &data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]);
            }
            g.set_home(home, crc);
            self.release_old(page, v.home());
            if v.resident() {
                dropped.push((page, g));
            } else {
                bump(&self.stats.moves_2_to_3);
                moved += 1;
            }
        }
        moved += self.drop_frames(&mut dropped)?;
        Ok(moved)
    }

    /// Drops the frames of `pages` (locked, resident, content stored or unchanged) with one hole
    /// punch per run of contiguous pages — one TLB flush per run rather than per page — and
    /// empties the list. Returns how many were dropped.
    fn drop_frames(&self, pages: &mut Vec<(usize, PageGuard<'_>)>) -> Result<usize, EngineError> {
        pages.sort_unstable_by_key(|p| p.0);
        let list: Vec<usize> = pages.iter().map(|p| p.0).collect();
        let mut done = 0;
        for (first, n) in runs(&list) {
            // A run's frames are forgotten only once its hole is punched: on an error the pages
            // not yet punched stay resident, their content intact.
            let punched = self
                .memfd
                .punch_hole(Self::offset(first), (n * PAGE_SIZE) as u64)
                .map_err(page_err("fallocate(PUNCH_HOLE)", first));
            if let Err(e) = punched {
                pages.clear();
                return Err(e);
            }
            for (_, g) in &pages[done..done + n] {
                self.forget_frame(g);
            }
            done += n;
        }
        pages.clear();
        Ok(done)
    }

    /// At an eviction: whether `data`, the final content of `page` (`v`), is a `LOGGED` page
    /// still equal to its inherited copy — the same crc32c (a cheap first test) and the same
    /// keyed tag (which a changed page cannot match by chance). If so the page is marked clean
    /// and counted, for the caller to drop without a write. Never, when pages are not
    /// authenticated or the tag is unknown.
    fn clean_if_inherited(&self, page: usize, g: &PageGuard<'_>, v: &PageView, data: &[u8]) -> bool {
        if v.word & LOGGED == 0 || v.home() != Home::Inherited {
            return false;
        }
        let Some(src) = self.inherited.as_ref().filter(|_| self.tags.enabled()) else { return false };
        let (Some(crc), Some(tag)) = (src.crc(page as u64), src.tag(page as u64)) else { return false };
        if crc32c::crc32c(data) != crc || !crate::auth::tags_equal(&self.tags.compute(page, data), &tag) {
            return false;
        }
        g.clear(DIRTY);
        bump(&self.stats.clean_evictions);
        bump(&self.stats.unchanged_evictions);
        true
    }

    /// Writes pages (back to back in `data`) to freshly allocated tier-2 slots.
    pub(crate) fn write_slots(&self, data: &[u8], first_page: usize) -> Result<Vec<(Home, u32)>, EngineError> {
        let err = |source| EngineError::Tier2 { page: first_page as u64, source };
        let slots = self.ssd.alloc_many(data.len() / PAGE_SIZE).map_err(err)?;
        match self.ssd.write_many(&slots, data) {
            Ok(crcs) => Ok(slots.into_iter().map(Home::Ssd).zip(crcs).collect()),
            Err(e) => {
                for slot in slots {
                    self.release(Home::Ssd(slot));
                }
                Err(err(e))
            }
        }
    }

    /// Moves a non-resident page's stored copy from tier 3 up to tier 2.
    pub(crate) fn move_to_ssd(&self, page: usize, buf: &mut AlignedBuf) -> Result<bool, EngineError> {
        let Some(g) = self.table.get(page).try_lock() else {
            return Ok(false);
        };
        let v = g.view();
        if v.resident() || !matches!(v.home(), Home::Object(_)) || v.word & POISONED != 0 {
            return Ok(false);
        }
        if let Err(e) = self.read_home(page, &v, buf) {
            if e.is_corruption() {
                self.poison(page, &g);
            }
            return Err(e);
        }
        let err = |source| EngineError::Tier2 { page: page as u64, source };
        let slot = self.ssd.alloc().map_err(err)?;
        match self.ssd.write(slot, buf) {
            Ok(crc) => {
                add(&self.stats.tier2_bytes_written, PAGE_SIZE as u64);
                g.set_home(Home::Ssd(slot), crc);
                self.release_old(page, v.home());
                bump(&self.stats.moves_3_to_2);
                Ok(true)
            }
            Err(e) => {
                self.release(Home::Ssd(slot));
                Err(err(e))
            }
        }
    }

    /// Moves a tier-2 page to a new slot (compaction). Returns whether it moved.
    pub(crate) fn relocate_slot(
        &self,
        page: usize,
        from: vmtier_storage::ssd::SlotId,
        buf: &mut AlignedBuf,
    ) -> Result<bool, EngineError> {
        let Some(g) = self.table.get(page).try_lock() else {
            return Ok(false);
        };
        let v = g.view();
        if v.home() != Home::Ssd(from) {
            return Ok(false);
        }
        self.read_home(page, &v, buf)?;
        let err = |source| EngineError::Tier2 { page: page as u64, source };
        let slot = self.ssd.alloc().map_err(err)?;
        match self.ssd.write(slot, buf) {
            Ok(crc) => {
                g.set_home(Home::Ssd(slot), crc);
                self.release_old(page, Home::Ssd(from));
                bump(&self.stats.compacted_slots);
                Ok(true)
            }
            Err(e) => {
                self.release(Home::Ssd(slot));
                Err(err(e))
            }
        }
    }

    /// Rewrites the live pages of a mostly-dead tier-3 segment into a new one and deletes it.
    pub(crate) fn compact_segment(&self, segment: u32) -> Result<usize, EngineError> {
        let live = self.object.live_pages(segment);
        let mut pages = Vec::with_capacity(live.len());
        for (index, page) in live {
            let page = page as usize;
            if page < self.table.len()
                && self.table.get(page).view().home() == Home::Object(SegmentLoc { segment, index })
            {
                pages.push(page);
            }
        }
        // Non-resident pages are re-read and packed into a fresh segment; resident clean ones
        // are left in DRAM but lose their old copy only once the new one is written.
        let moved = self.move_stored_object_pages(&pages)?;
        if self.object.live_pages(segment).is_empty() {
            self.object.delete_segment(segment).map_err(|source| EngineError::Tier3 { page: 0, source })?;
            bump(&self.stats.compacted_segments);
        }
        Ok(moved)
    }

    /// Re-packs tier-3 pages (resident or not) into a new segment.
    fn move_stored_object_pages(&self, pages: &[usize]) -> Result<usize, EngineError> {
        let mut moved = 0;
        for chunk in pages.chunks(self.segment_pages) {
            let mut held = Vec::with_capacity(chunk.len());
            let mut data = AlignedBuf::zeroed(chunk.len() * PAGE_SIZE);
            for &page in chunk {
                let Some(g) = self.table.get(page).try_lock() else {
                    continue;
                };
                let v = g.view();
                if !matches!(v.home(), Home::Object(_)) {
                    continue;
                }
                let i = held.len();
                if let Err(e) = self.read_home(page, &v, &mut data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]) {
                    if e.is_corruption() {
                        self.poison(page, &g);
                    }
                    continue;
                }
                held.push((page, g, v));
            }
            if held.is_empty() {
                continue;
            }
            let batch: Vec<(u64, &[u8])> = held
                .iter()
                .enumerate()
                .map(|(i, (p, _, _))| (*p as u64, &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]))
                .collect();
            let locs = self
                .object
                .write_segment(&batch)
                .map_err(|source| EngineError::Tier3 { page: held[0].0 as u64, source })?;
            add(&self.stats.tier3_bytes_written, (held.len() * PAGE_SIZE) as u64);
            for ((page, g, v), (loc, crc)) in held.iter().zip(locs) {
                g.set_home(Home::Object(loc), crc);
                self.release_old(*page, v.home());
                moved += 1;
            }
        }
        Ok(moved)
    }
}

/// Runs of consecutive numbers in sorted `pages`, as (first, length).
pub(crate) fn runs(pages: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((first, n)) if *first + *n == p => *n += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

#[cfg(test)]
mod run_tests {
    use super::runs;

    #[test]
    fn runs_of_consecutive_pages() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[3, 4, 5, 9, 11, 12]), vec![(3, 3), (9, 1), (11, 2)]);
    }
}
