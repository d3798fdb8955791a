//! The engine: guest memory on a memfd registered with userfaultfd, three tiers, fault handler
//! threads and the MTM thread, put together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use serde::Serialize;
use vmtier_storage::fault::FaultPlan;
use vmtier_storage::object::ObjectTier;
use vmtier_storage::ssd::{SlotIo, SsdConfig, SsdStore};
use vmtier_uffd::uffd::{feature, mode};
use vmtier_uffd::{AlignedBuf, Memfd, PAGE_SIZE, SharedMapping, Uffd};

use crate::config::EngineConfig;
use crate::dram::DramBudget;
use crate::error::EngineError;
use crate::mtm::Mtm;
use crate::page_table::{DIRTY, Home, LOGGED, PageEntry, PageTable, PageView, REFERENCED, RESIDENT};
use crate::pager::{Pager, page_err, runs};
use crate::policy::{self, Tier};
use crate::prefetch::PrefetcherKind;
use crate::prefetch::worker::Prefetch;
use crate::replica::{Capture, DeltaPage, ReplTrack, lock_page};
use crate::stats::{LatencyUs, add};
use crate::tracker::{AccessEvent, Tracker};

/// userfaultfd features the engine needs (all present since Linux 5.19; WP on shmem since 5.19,
/// MINOR on shmem since 5.13).
pub const FEATURES: u64 = feature::MISSING_SHMEM
    | feature::MINOR_SHMEM
    | feature::WP_HUGETLBFS_SHMEM
    | feature::PAGEFAULT_FLAG_WP
    | feature::POISON;

/// userfaultfd registration modes the engine needs on guest memory.
pub const REGISTER_MODE: u64 = mode::MISSING | mode::WP | mode::MINOR;

/// Creates a userfaultfd with [`FEATURES`] and registers `map` in [`REGISTER_MODE`]: what a
/// process that owns guest memory (a VMM) does before it hands the memfd and this userfaultfd
/// to an engine in another process ([`Engine::start_external`]).
pub fn register_guest_memory(map: &SharedMapping) -> Result<Uffd, EngineError> {
    let uffd = Uffd::new(FEATURES).map_err(EngineError::Memory)?;
    uffd.register(map, REGISTER_MODE).map_err(EngineError::Memory)?;
    Ok(uffd)
}

/// Hooks under the engine's tiers, for fault-injection tests ([`Engine::start_with_io`]): the
/// engine and the tiers run their real code, only the I/O beneath them is replaced. The default
/// (no hooks) is the plain [`Engine::start`].
#[derive(Debug, Clone, Default)]
pub struct StorageIo {
    /// Tier 2's slot-file I/O (e.g. a [`vmtier_storage::ssd::FaultyIo`]).
    pub tier2: Option<Arc<dyn SlotIo>>,
    /// Faults injected into tier 3's object-store requests.
    pub tier3: Option<Arc<FaultPlan>>,
}

/// Guest memory that another process owns and has handed over (for example over a page
/// server's socket): its memfd and a userfaultfd on which it registered its mapping of that
/// memfd, created with [`FEATURES`] in [`REGISTER_MODE`] (see [`register_guest_memory`]).
#[derive(Debug)]
pub struct ExternalMemory {
    /// The guest memory file; it must be empty (all holes) when the engine starts.
    pub memfd: Memfd,
    /// The userfaultfd the owner registered its mapping with.
    pub uffd: Uffd,
    /// Address of the owner's mapping of `memfd` (guest page 0) in the owner's address space,
    /// which is where the userfaultfd reports faults and where the resolving ioctls act.
    pub uffd_base: usize,
}

/// Stored copies a new primary inherits at failover: the failed primary's last committed
/// checkpoint, read from shared storage (see `vmtier-repl`).
pub trait InheritedPages: Send + Sync + std::fmt::Debug {
    /// Reads the inherited copy of `page` into `out` (4096 bytes), checksum checked: a copy that
    /// fails its checksum is an `InvalidData` error.
    fn read(&self, page: u64, out: &mut [u8]) -> std::io::Result<()>;

    /// crc32c of the inherited copy of `page`, or `None` if it has none (its content is zeros).
    fn crc(&self, page: u64) -> Option<u32>;

    /// The keyed tag ([`crate::PageAuth`]) of the inherited copy of `page`, if known. With it, an
    /// engine that authenticates pages evicts a `LOGGED` page (counted dirty, maybe written)
    /// whose content still carries this tag without a write: it keeps the inherited copy.
    fn tag(&self, _page: u64) -> Option<crate::PageTag> {
        None
    }
}

/// What a secondary hands [`Engine::start_inherited`] at failover.
#[derive(Debug)]
pub struct Inheritance {
    /// Guest memory (`cfg.memory` bytes) already holding the warm pages; the rest is holes.
    pub memfd: Memfd,
    /// The pages present in `memfd`, each with the access frequency (0–100) the primary
    /// reported, which seeds the MTM's statistics.
    pub warm: Vec<(u32, u8)>,
    /// Pages whose content is not zeros: read from `source` when first touched (unless warm).
    pub stored: Vec<u32>,
    /// Reads the inherited copies.
    pub source: Arc<dyn InheritedPages>,
    /// The caller checkpoints with [`Engine::capture_logged`] (a micro-VM's dirty log reports
    /// the guest's writes): the warm pages are then mapped writable, their writes left to the
    /// log, instead of write-protected — which costs the resumed guest a write-protect fault
    /// (35–40 µs through KVM) on the first write of every hot page. Such a page counts as dirty
    /// for eviction (its content may have changed unseen), and travels in a checkpoint as its
    /// inherited copy until a capture's log names it. The engine then refuses `capture`.
    pub logged_writes: bool,
}

/// The parts of an [`Inheritance`] besides its memory: warm pages, stored pages, source, and
/// whether warm pages are mapped writable ([`Inheritance::logged_writes`]).
type Inherit = (Vec<(u32, u8)>, Vec<u32>, Arc<dyn InheritedPages>, bool);

/// A running tiered guest memory.
#[derive(Debug)]
pub struct Engine {
    pager: Arc<Pager>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    cfg: EngineConfig,
    policy: &'static str,
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, EngineError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| EngineError::Thread { name: name.into(), source })
}

impl Engine {
    /// Validates `cfg`, opens the tiers (both start empty), maps guest memory, and starts the
    /// fault handlers and (if enabled) the MTM.
    pub fn start(cfg: EngineConfig) -> Result<Self, EngineError> {
        Self::start_with_io(cfg, StorageIo::default())
    }

    /// [`start`](Self::start) with the tiers' I/O going through `io` (fault injection).
    pub fn start_with_io(cfg: EngineConfig, io: StorageIo) -> Result<Self, EngineError> {
        cfg.validate("")?;
        let memfd = Memfd::create("vmtier-guest", cfg.memory.0).map_err(EngineError::Memory)?;
        let map = SharedMapping::new(&memfd).map_err(EngineError::Memory)?;
        let uffd = register_guest_memory(&map)?;
        let base = map.base();
        Self::start_with(cfg, memfd, Some(map), uffd, base, None, io)
    }

    /// Starts the engine of a new primary after a failover, over guest memory that a secondary
    /// prepared from the failed primary's last committed checkpoint: `inh.memfd` already holds
    /// the warm pages (they are resident from the first instant; the guest's first touch of one
    /// costs a MINOR fault, no I/O), the other pages of `inh.stored` are read on demand from
    /// `inh.source`, and every other page is zeros. Inherited copies are never written or
    /// freed: a page leaves them the first time it is written and evicted.
    pub fn start_inherited(cfg: EngineConfig, inh: Inheritance) -> Result<Self, EngineError> {
        cfg.validate("")?;
        let bad = |why: String| EngineError::Inherit { why };
        if inh.memfd.size() != cfg.memory.0 {
            return Err(bad(format!(
                "the guest memory file has {} bytes, the config says {}",
                inh.memfd.size(),
                cfg.memory.0
            )));
        }
        if inh.warm.len() > cfg.dram_pages() {
            return Err(bad(format!(
                "{} warm pages do not fit the DRAM budget of {} pages; give the new primary at least the \
                 secondary's DRAM",
                inh.warm.len(),
                cfg.dram_pages()
            )));
        }
        let pages = cfg.pages();
        if let Some(&p) = inh.stored.iter().chain(inh.warm.iter().map(|(p, _)| p)).find(|&&p| p as usize >= pages) {
            return Err(bad(format!("page {p} is outside the guest ({pages} pages)")));
        }
        let map = SharedMapping::new(&inh.memfd).map_err(EngineError::Memory)?;
        let uffd = register_guest_memory(&map)?;
        let base = map.base();
        Self::start_with(
            cfg,
            inh.memfd,
            Some(map),
            uffd,
            base,
            Some((inh.warm, inh.stored, inh.source, inh.logged_writes)),
            StorageIo::default(),
        )
    }

    /// Like [`start`](Self::start), over guest memory another process owns: the engine serves
    /// the faults that process's accesses raise, with `cfg.memory` set to the memfd's size.
    ///
    /// What differs from in-process memory:
    /// - no access sampling: sampling unmaps resident pages so that their next access raises a
    ///   MINOR fault, and this process cannot unmap pages from the owner's page tables. The
    ///   policy sees faults and first writes only (`tracker.sample_pages_per_sec` is ignored).
    /// - [`guest_words`](Self::guest_words) is empty: this process has no mapping of the guest.
    ///
    /// Page contents are still read with `pread` and dropped with `fallocate(PUNCH_HOLE)` on the
    /// memfd, which act on the owner's mapping as well.
    pub fn start_external(mut cfg: EngineConfig, mem: ExternalMemory) -> Result<Self, EngineError> {
        let ExternalMemory { memfd, uffd, uffd_base } = mem;
        let bad = |why: String| EngineError::External { why };
        cfg.memory = crate::ByteSize(memfd.size());
        cfg.validate("")?;
        if uffd_base == 0 || !uffd_base.is_multiple_of(PAGE_SIZE) {
            return Err(bad(format!("the guest mapping address {uffd_base:#x} is not a page-aligned address")));
        }
        let missing = FEATURES & !uffd.features();
        if missing != 0 {
            return Err(bad(format!(
                "the userfaultfd lacks features {missing:#x}; create it with vmtier_engine::FEATURES \
                 ({FEATURES:#x}), e.g. with register_guest_memory"
            )));
        }
        let resident = memfd.resident_bytes().map_err(EngineError::Memory)?;
        if resident != 0 {
            return Err(bad(format!(
                "the guest memfd already holds {resident} bytes of pages; the engine needs a fresh \
                 (all-holes) memfd, so start the engine before writing to guest memory"
            )));
        }
        // Lifting write protection from nothing is a no-op on a WP-registered range and fails
        // with ENOENT otherwise: a cheap check that the owner registered the mapping for WP.
        if let Err(e) = uffd.write_protect(uffd_base, memfd.size() as usize, false, false) {
            return Err(bad(format!(
                "the userfaultfd is not registered for write-protect over {:#x}+{:#x} ({}); \
                 register the whole mapping with vmtier_engine::REGISTER_MODE",
                uffd_base,
                memfd.size(),
                crate::error::chain(&e)
            )));
        }
        Self::start_with(cfg, memfd, None, uffd, uffd_base, None, StorageIo::default())
    }

    fn start_with(
        cfg: EngineConfig,
        memfd: Memfd,
        map: Option<SharedMapping>,
        uffd: Uffd,
        uffd_base: usize,
        inherit: Option<Inherit>,
        io: StorageIo,
    ) -> Result<Self, EngineError> {
        let pages = cfg.pages();
        let mut ssd_cfg = SsdConfig::new(cfg.tier2.dir.clone());
        ssd_cfg.slots_per_file = cfg.tier2.slots_per_file;
        ssd_cfg.direct_io = cfg.tier2.direct_io;
        let ssd = match io.tier2 {
            None => SsdStore::open(ssd_cfg),
            Some(hook) => SsdStore::open_with_io(ssd_cfg, hook),
        }
        .map_err(EngineError::OpenTier2)?;
        let t3 = &cfg.tier3;
        let object = match io.tier3 {
            None => ObjectTier::open(t3.object_config()),
            Some(plan) => ObjectTier::open_with_faults(t3.object_config(), plan),
        }
        .map_err(EngineError::OpenTier3)?;
        let half_life_ticks = (cfg.tracker.half_life_ms / cfg.mtm.tick_ms).max(1) as u32;
        let tracker = Tracker::new(cfg.tracker.gain, half_life_ticks, cfg.tracker.history);
        let mut pager = Pager::new(
            PageTable::new(pages),
            memfd,
            map,
            uffd,
            uffd_base,
            DramBudget::new(cfg.dram_pages()),
            (cfg.prefetch.kind != PrefetcherKind::None).then(|| {
                Prefetch::new(cfg.prefetch.kind, pages as u64, cfg.prefetch.max_window_pages, cfg.prefetch.queue_pages)
            }),
            ssd,
            object,
            tracker,
            t3.segment_bytes.0 as usize / PAGE_SIZE,
            cfg.fault.fault_around_pages,
            cfg.mtm.headroom_pages,
        );
        if cfg.replicate {
            pager.repl = Some(ReplTrack::new(pages));
        }
        pager.tags = crate::auth::Tags::new(cfg.page_auth.as_ref().map(|h| h.0.clone()), pages);
        if let Some((warm, stored, source, logged)) = inherit {
            if logged && let Some(r) = &pager.repl {
                r.use_dirty_log()?;
            }
            let warm_flags = if logged { RESIDENT | REFERENCED | DIRTY | LOGGED } else { RESIDENT | REFERENCED };
            // No thread runs yet: every lock is free.
            for p in stored {
                if let Some(g) = pager.table.get(p as usize).try_lock() {
                    g.set_home(Home::Inherited, 0);
                }
            }
            let now = pager.tracker.tick();
            let mut resident = Vec::with_capacity(warm.len());
            for (p, freq) in warm {
                let e = pager.table.get(p as usize);
                if let Some(g) = e.try_lock() {
                    if g.view().home() == Home::Zero {
                        g.set_home(Home::Inherited, 0);
                    }
                    if !g.view().resident() && pager.budget.try_reserve() {
                        // Predicted hot: the reclaim clock passes it over once.
                        g.set(warm_flags);
                        let (f, seen) = e.stats();
                        f.store(freq, Ordering::Relaxed);
                        seen.store(now as u16, Ordering::Relaxed);
                        resident.push(p as usize);
                    }
                }
            }
            // Map the warm pages now, before the guest runs: otherwise its first touch of each
            // is a MINOR fault (~40-100 µs through KVM) instead of a plain access. Mapped
            // write-protected, as the fault path maps a clean page, so the first write is seen —
            // or writable, when the caller's dirty log sees it. A run that cannot be mapped is
            // left to the fault path.
            resident.sort_unstable();
            for (first, n) in runs(&resident) {
                if let Err(e) = pager.uffd.continue_(uffd_base + first * PAGE_SIZE, n * PAGE_SIZE, !logged) {
                    tracing::warn!(first, pages = n, error = %crate::error::chain(&e), "could not map warm pages ahead of the guest");
                }
            }
            pager.inherited = Some(source);
            pager.logged = logged;
        }
        let pager = Arc::new(pager);
        let stop = Arc::new(AtomicBool::new(false));
        let mut engine = Self {
            pager: Arc::clone(&pager),
            stop: Arc::clone(&stop),
            threads: Vec::new(),
            cfg: cfg.clone(),
            policy: "none",
        };
        for i in 0..cfg.fault.handler_threads {
            let (p, s) = (Arc::clone(&pager), Arc::clone(&stop));
            engine.threads.push(spawn(&format!("vmtier-fault-{i}"), move || crate::fault::handler_loop(&p, &s))?);
        }
        if cfg.mtm.enabled {
            let policy = policy::from_config(&cfg);
            engine.policy = policy.name();
            let mut mtm = Mtm::new(cfg.clone(), policy);
            let (p, s) = (Arc::clone(&pager), Arc::clone(&stop));
            engine.threads.push(spawn("vmtier-mtm", move || mtm.run(&p, &s))?);
        }
        if cfg.mtm.enabled && cfg.mtm.headroom_pages > 0 {
            let (p, s) = (Arc::clone(&pager), Arc::clone(&stop));
            engine.threads.push(spawn("vmtier-reclaim", move || p.reclaim_loop(&s))?);
        }
        if pager.prefetch.is_some() {
            let (p, s) = (Arc::clone(&pager), Arc::clone(&stop));
            engine.threads.push(spawn("vmtier-prefetch", move || crate::prefetch::worker::worker_loop(&p, &s))?);
        }
        Ok(engine)
    }

    /// The guest memory as 64-bit words, for an in-process guest. Accesses fault pages in.
    /// Empty for external memory ([`start_external`](Self::start_external)): the guest's
    /// mapping lives in another process.
    pub fn guest_words(&self) -> &[AtomicU64] {
        self.pager.map.as_ref().map_or(&[], SharedMapping::as_words)
    }

    /// Whether the guest memory belongs to another process ([`start_external`](Self::start_external)).
    pub fn is_external(&self) -> bool {
        self.pager.map.is_none()
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Number of guest pages.
    pub fn pages(&self) -> usize {
        self.pager.table.len()
    }

    fn check(&self, page: usize) -> Result<(), EngineError> {
        if page >= self.pages() {
            return Err(EngineError::NoSuchPage { page: page as u64, pages: self.pages() as u64 });
        }
        Ok(())
    }

    /// The page-table entry of `page`.
    pub fn page(&self, page: usize) -> Result<PageView, EngineError> {
        self.check(page)?;
        Ok(self.pager.table.get(page).view())
    }

    /// Reads a page's current content from wherever it is, without faulting it in. Stored copies
    /// are checksum-checked; a corrupt one is an error, never data.
    pub fn read_page(&self, page: usize, out: &mut [u8]) -> Result<(), EngineError> {
        self.check(page)?;
        let g = self.pager.table.get(page).try_lock().ok_or(EngineError::Busy { page: page as u64 })?;
        let v = g.view();
        if v.resident() {
            return self.pager.memfd.read_at(out, (page * PAGE_SIZE) as u64).map_err(|source| EngineError::PageOp {
                op: "pread",
                page: page as u64,
                source,
            });
        }
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        self.pager.read_home(page, &v, &mut buf)?;
        out.copy_from_slice(&buf);
        Ok(())
    }

    /// Installs inherited pages whose committed contents the caller has already read (and
    /// checked) in bulk — a new primary filling in, behind the resumed guest, the pages its warm
    /// set lacked. They are written into guest memory and mapped at once, as the warm set is at
    /// start (write-protected, or writable with [`Inheritance::logged_writes`]): the guest's
    /// first read of one is a plain memory access, its first write at most a write-protect
    /// fault, and neither reads shared storage. (Left unmapped, every first touch would be a MINOR fault, 35–40 µs through
    /// KVM: with DRAM full of filled pages that halved the resumed guest's speed.)
    ///
    /// `pages[i]`'s contents are `data[i * 4096..]`. A page is installed only if it is still an
    /// inherited page that is not resident, not poisoned and not being faulted on (its copy on
    /// shared storage is then exactly what the caller read: only the guest changes it, and only
    /// once it is resident). Takes free DRAM frames only, beyond the headroom kept for faults
    /// (`mtm.headroom_pages`) — it never evicts a page for one. The pages start cold: the policy
    /// sees them through sampling like any other resident page.
    /// Returns how many were installed, and whether DRAM ran out of free frames.
    pub fn install_inherited(&self, pages: &[u32], data: &[u8]) -> Result<(usize, bool), EngineError> {
        assert_eq!(data.len(), pages.len() * PAGE_SIZE, "install_inherited: one page of data per page");
        for &page in pages {
            self.check(page as usize)?;
        }
        let p = &self.pager;
        // Locked and reserved first, then written and mapped in runs of consecutive pages (one
        // `pwrite` and one `UFFDIO_CONTINUE` per run); the locks keep faults off them meanwhile.
        let mut taken: Vec<(usize, usize, crate::page_table::PageGuard<'_>)> = Vec::with_capacity(pages.len());
        let mut out_of_frames = false;
        for (i, &page) in pages.iter().enumerate() {
            let page = page as usize;
            let Some(g) = p.table.get(page).try_lock() else { continue };
            let v = g.view();
            if v.resident() || v.home() != Home::Inherited || v.word & crate::page_table::POISONED != 0 {
                continue;
            }
            // The headroom stays free for the guest's own faults.
            if p.budget.free() <= p.headroom || !p.budget.try_reserve() {
                out_of_frames = true;
                break;
            }
            taken.push((page, i, g));
        }
        let mut installed = 0;
        let mut start = 0;
        while start < taken.len() {
            let mut end = start + 1;
            while end < taken.len() && taken[end].0 == taken[end - 1].0 + 1 && taken[end].1 == taken[end - 1].1 + 1 {
                end += 1;
            }
            let (first, at, _) = &taken[start];
            let n = end - start;
            if let Err(e) = p.write_page_cache(*first, &data[at * PAGE_SIZE..(at + n) * PAGE_SIZE]) {
                // Nothing of this run or the following ones is in guest memory.
                p.budget.release(taken.len() - start);
                add(&p.stats.inherited_installed, installed as u64);
                return Err(e);
            }
            let flags = if p.logged { RESIDENT | DIRTY | LOGGED } else { RESIDENT };
            for (_, _, g) in &taken[start..end] {
                g.set(flags);
            }
            // Resident from here whether or not the mapping succeeds: an unmapped resident page
            // is mapped by its first touch's MINOR fault.
            if let Err(e) = p.uffd.continue_(p.addr(*first), n * PAGE_SIZE, !p.logged) {
                tracing::warn!(first, pages = n, error = %crate::error::chain(&e), "could not map filled pages ahead of the guest");
            }
            installed += n;
            start = end;
        }
        add(&p.stats.inherited_installed, installed as u64);
        Ok((installed, out_of_frames))
    }

    /// Moves one page by hand (tests, tools): `Dram` promotes it, `Ssd` evicts it to tier 2 (or
    /// moves its stored copy up from tier 3), `Object` moves it to tier 3. Returns whether it moved.
    pub fn move_page(&self, page: usize, to: Tier) -> Result<bool, EngineError> {
        self.check(page)?;
        let p = &self.pager;
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        match to {
            Tier::Dram => p.promote(page, &mut buf),
            Tier::Object => Ok(p.move_batch(&[page], Tier::Object)? == 1),
            Tier::Ssd => {
                let g = p.table.get(page).try_lock().ok_or(EngineError::Busy { page: page as u64 })?;
                if g.view().resident() {
                    p.evict(page, &g, &mut buf, true)?;
                    Ok(true)
                } else {
                    drop(g);
                    p.move_to_ssd(page, &mut buf)
                }
            }
        }
    }

    /// Runs one compaction of tier 2 and tier 3 now.
    pub fn compact(&self) {
        let policy = policy::from_config(&self.cfg);
        Mtm::new(self.cfg.clone(), policy).compact(&self.pager);
    }

    /// Takes the access events recorded since the last call.
    pub fn drain_history(&self) -> Vec<AccessEvent> {
        let mut out = Vec::new();
        self.pager.tracker.drain_history(&mut out);
        out
    }

    /// Guest bytes in DRAM now (cheap; `snapshot` walks the page table).
    pub fn resident_bytes(&self) -> u64 {
        (self.pager.budget.resident() * PAGE_SIZE) as u64
    }

    /// Checkpoint step 1, **with the guest paused** (vCPUs stopped, or the in-process guest's
    /// threads waiting): takes every page changed since the last capture, copying the content
    /// of those dirty in DRAM and noting where the others' content is stored. Needs
    /// `replicate` in the config; one checkpoint at a time. See `replica.rs`.
    pub fn capture(&self) -> Result<Capture, EngineError> {
        self.pager.capture(None)
    }

    /// [`capture`](Self::capture) for a guest whose writes the caller tracks itself (KVM's
    /// dirty log of a micro-VM), **with the guest paused**: `written` is every guest page
    /// written since the previous capture (a superset is fine, a subset is not). Captured
    /// pages stay writable; a copy becomes its page's home only once the page was seen
    /// unwritten by [`crate::ADOPT_AFTER_QUIET_CAPTURES`] captures in a row. An engine uses one mode
    /// for its whole life ([`EngineError::CaptureMode`]). See `replica.rs`.
    pub fn capture_logged(&self, written: &[u64]) -> Result<Capture, EngineError> {
        self.pager.capture(Some(written))
    }

    /// Checkpoint step 2, with the guest running again: writes and syncs the captured copies
    /// to tier 2 and returns where every page of the checkpoint is. Durable on return; the
    /// caller then commits the log record and calls [`finish_checkpoint`](Self::finish_checkpoint).
    pub fn persist(&self, capture: Capture) -> Result<Vec<DeltaPage>, EngineError> {
        self.pager.persist(capture)
    }

    /// Checkpoint step 3: `committed` once the log holds the checkpoint (the stored copies it
    /// superseded are freed), or not (a failed write, a fenced log: its own copies are freed).
    pub fn finish_checkpoint(&self, committed: bool) -> Result<(), EngineError> {
        self.pager.finish_checkpoint(committed)
    }

    /// Precleaning (claim 2 of the patent; `preclean.rs`): writes up to `max` dirty pages that
    /// are next in line for demotion to tier 2 now, keeping them resident, clean and
    /// write-protected, so the next checkpoint carries them as metadata only and their demotion
    /// costs no write. Call it near the end of a checkpoint interval. Returns how many.
    pub fn preclean(&self, max: usize) -> Result<usize, EngineError> {
        self.pager.preclean(max)
    }

    /// The `max` hottest pages by access frequency (decayed to now), hottest first, as
    /// `(page, frequency 0–100, ticks since last seen)`: the access statistics replication
    /// sends to a secondary, which keeps these pages warm. Pages never observed are left out.
    pub fn heat(&self, max: usize) -> Vec<(u32, u8, u16)> {
        let p = &self.pager;
        let now = p.tracker.tick();
        let mut hot: Vec<(u32, u8, u16)> = Vec::new();
        for (page, e) in p.table.iter().enumerate() {
            let v = e.view();
            let freq = p.tracker.frequency(v.freq, v.seen, now);
            if freq > 0 || (v.resident() && v.freq > 0) {
                hot.push((page as u32, freq, (now as u16).wrapping_sub(v.seen)));
            }
        }
        let key = |h: &(u32, u8, u16)| (std::cmp::Reverse(h.1), h.2, h.0);
        if hot.len() > max && max > 0 {
            hot.select_nth_unstable_by_key(max - 1, key);
        }
        hot.truncate(max);
        hot.sort_unstable_by_key(key);
        hot
    }

    /// crc32c of every guest page's content as the guest would read it now: resident pages
    /// checksummed from DRAM, the others by their stored copy's checksum (no I/O), pages never
    /// written as a page of zeros. Meant for checking replication (`--check-log`): call it with
    /// the guest paused. A page whose lock another thread holds is waited for.
    pub fn content_crcs(&self) -> Result<Vec<u32>, EngineError> {
        let p = &self.pager;
        let zero = crc32c::crc32c(&[0u8; PAGE_SIZE]);
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        let mut out = Vec::with_capacity(p.table.len());
        for page in 0..p.table.len() {
            // Held while the page is read: an eviction must not punch it meanwhile.
            let g = lock_page(p.table.get(page));
            let v = g.view();
            let crc = if v.resident() {
                p.memfd.read_at(&mut buf, (page * PAGE_SIZE) as u64).map_err(page_err("pread", page))?;
                crc32c::crc32c(&buf)
            } else {
                match v.home() {
                    Home::Zero => zero,
                    Home::Ssd(_) | Home::Object(_) => v.crc,
                    Home::Inherited => p.inherited.as_ref().and_then(|s| s.crc(page as u64)).unwrap_or(zero),
                }
            };
            out.push(crc);
        }
        Ok(out)
    }

    /// Counters and occupancy now.
    pub fn snapshot(&self) -> Snapshot {
        snapshot(&self.pager, &self.cfg, self.policy)
    }

    /// Stops the MTM and the fault handlers (the guest must be finished) and returns the final
    /// snapshot.
    pub fn shutdown(mut self) -> Snapshot {
        self.stop_threads();
        self.snapshot()
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// A report of the engine's state, as printed by `vmtier demo --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Guest memory size.
    pub guest_bytes: u64,
    /// DRAM budget.
    pub dram_budget_bytes: u64,
    /// Guest bytes in DRAM now.
    pub resident_bytes: u64,
    /// Highest guest bytes in DRAM at any moment.
    pub peak_resident_bytes: u64,
    /// Placement policy.
    pub policy: &'static str,
    /// Pages per tier: "1" DRAM, "2" tier-2 store, "3" object store.
    pub pages_in_tier: BTreeMap<String, u64>,
    /// Pages never written (zeros, stored nowhere).
    pub zero_pages: u64,
    /// Pages whose DRAM copy differs from the stored one.
    pub dirty_pages: u64,
    /// Faults that brought a page into DRAM (MISSING).
    pub faults: u64,
    /// MINOR faults from access sampling.
    pub sample_faults: u64,
    /// WP faults (first writes).
    pub write_faults: u64,
    /// Faults served by zero-fill.
    pub zero_fills: u64,
    /// Faults served from tier 2.
    pub tier2_hits: u64,
    /// Faults served from tier 3.
    pub tier3_hits: u64,
    /// Neighbouring tier-2 pages installed together with a faulting one (one read, one copy).
    pub fault_around_pages: u64,
    /// Pages brought into DRAM ahead of use.
    pub promotions: u64,
    /// Pages removed from DRAM.
    pub demotions: u64,
    /// Of those, evictions done on the fault path.
    pub direct_reclaims: u64,
    /// Evictions without a write (unchanged pages).
    pub clean_evictions: u64,
    /// Of those, pages counted dirty because the caller's dirty log, not a fault, reports their
    /// writes (`Inheritance::logged_writes`) whose content was still their inherited copy's
    /// (same crc32c and keyed tag): they kept that copy instead of being written.
    pub unchanged_evictions: u64,
    /// Stored pages moved tier 2 -> 3.
    pub moves_2_to_3: u64,
    /// Stored pages moved tier 3 -> 2.
    pub moves_3_to_2: u64,
    /// Bytes written to tier 2.
    pub tier2_bytes_written: u64,
    /// Bytes written to tier 3.
    pub tier3_bytes_written: u64,
    /// Bytes read from tiers 2 and 3.
    pub bytes_read: u64,
    /// Resident pages unmapped for sampling.
    pub sampled: u64,
    /// Faults deferred (page busy or DRAM full at that instant).
    pub parked: u64,
    /// Stored copies found corrupt (never served).
    pub corrupt_pages: u64,
    /// Storage errors.
    pub io_errors: u64,
    /// Evictions that tier 2 refused (a full disk, failing writes) and that went to tier 3.
    pub tier2_refused: u64,
    /// Tier-2 slots moved by compaction.
    pub compacted_slots: u64,
    /// Tier-3 segments compacted.
    pub compacted_segments: u64,
    /// Tier-2 store: files, live slots, bytes on disk.
    pub tier2_files: u64,
    /// Live tier-2 slots.
    pub tier2_live_slots: u64,
    /// Disk bytes allocated by tier-2 files.
    pub tier2_disk_bytes: u64,
    /// Tier-3 segments.
    pub tier3_segments: u64,
    /// Bytes stored in tier 3.
    pub tier3_bytes_stored: u64,
    /// Fault service latency (MISSING faults, from reading the event to resolving it).
    pub fault_latency_us: LatencyUs,
    /// The prefetcher (`none` when off).
    pub prefetcher: &'static str,
    /// Inherited pages installed by a new primary's background fill.
    pub inherited_installed: u64,
    /// Pages the prefetcher brought into DRAM.
    pub prefetch_issued: u64,
    /// Prefetched pages the guest then touched.
    pub prefetch_used: u64,
    /// `prefetch_used / prefetch_issued` (0 when nothing was issued).
    pub prefetch_accuracy: f64,
    /// Predictions that arrived after the guest had faulted on the page.
    pub prefetch_late: u64,
    /// Of `prefetch_used`, pages mapped together with a used neighbour (their use assumed).
    pub prefetch_mapped_ahead: u64,
    /// Prefetched pages evicted untouched.
    pub prefetch_wasted: u64,
    /// Bytes read for prefetched pages the guest never touched.
    pub prefetch_wasted_bytes: u64,
    /// Predictions dropped (queue full, or no free or cold frame).
    pub prefetch_dropped: u64,
    /// Checkpoint copies that became their page's home (the page turned clean).
    pub checkpoint_adopted: u64,
    /// Dirty pages written to tier 2 ahead of their demotion, staying resident and clean.
    pub precleaned: u64,
    /// Stored copies whose release was deferred because a replica referenced them.
    pub replica_retained: u64,
    /// DRAM the engine keeps about guest pages, by structure.
    pub metadata_bytes: MetadataBytes,
    /// All of `metadata_bytes` per 4 KiB guest page (`hot` + `other`).
    pub metadata_bytes_per_page: f64,
    /// The hot metadata per guest page: what is kept for every page all the time (the page
    /// table, which the fault path reads).
    pub hot_metadata_bytes_per_page: f64,
}

/// DRAM the engine keeps about guest pages (not counting guest data itself).
///
/// `hot` is what is kept for every page all the time — the page table; `other` is everything
/// else: structures sized by DRAM, bandwidth or configuration (MTM scratch, prefetch tables) or
/// a few bits per stored page (tier-2 allocator, replication).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetadataBytes {
    /// Kept per guest page all the time: the page table.
    pub hot: u64,
    /// All the rest: the sum of the fields below but `page_table`.
    pub other: u64,
    /// The page table: 16 bytes per page (`page_table.rs`).
    pub page_table: u64,
    /// The MTM's decision scratch: the policy's own (`hotset`'s score histogram) and the round's
    /// bounded candidate lists; sized by DRAM and the bandwidth budget, not by the guest.
    pub mtm_scratch: u64,
    /// The prefetcher's tables (`history`'s successor table, of a fixed size).
    pub prefetch: u64,
    /// The tier-2 slot allocator.
    pub tier2_allocator: u64,
    /// Replication's change bitmap and committed map (0 when replication is off).
    pub replication: u64,
}

fn snapshot(p: &Pager, cfg: &EngineConfig, policy: &'static str) -> Snapshot {
    let mut tiers = [0u64; 4];
    let mut zero = 0;
    let mut dirty = 0;
    for e in p.table.iter() {
        let v = e.view();
        match v.tier() {
            0 => zero += 1,
            t => tiers[t as usize] += 1,
        }
        dirty += u64::from(v.dirty());
    }
    let s = &p.stats;
    let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let ssd = p.ssd.stats().unwrap_or_default();
    let obj = p.object.stats();
    let mut metadata = MetadataBytes {
        hot: 0,
        other: 0,
        page_table: (p.table.len() * size_of::<PageEntry>()) as u64,
        mtm_scratch: l(&s.mtm_scratch_bytes),
        prefetch: p.prefetch.as_ref().map_or(0, |pf| pf.table_bytes() as u64),
        tier2_allocator: ssd.allocator_bytes,
        replication: p.repl.as_ref().map_or(0, ReplTrack::bytes),
    };
    metadata.hot = metadata.page_table;
    metadata.other = metadata.mtm_scratch + metadata.prefetch + metadata.tier2_allocator + metadata.replication;
    let pages = p.table.len().max(1) as f64;
    Snapshot {
        guest_bytes: cfg.memory.0,
        dram_budget_bytes: cfg.dram.0,
        resident_bytes: (p.budget.resident() * PAGE_SIZE) as u64,
        peak_resident_bytes: (p.budget.peak() * PAGE_SIZE) as u64,
        policy,
        pages_in_tier: (1..=3).map(|t| (t.to_string(), tiers[t])).collect(),
        zero_pages: zero,
        dirty_pages: dirty,
        faults: l(&s.faults_missing),
        // Minor faults that were not a prediction's first use (mapped-ahead uses took none).
        sample_faults: l(&s.faults_minor)
            .saturating_sub(l(&s.prefetch_used).saturating_sub(l(&s.prefetch_mapped_ahead))),
        write_faults: l(&s.faults_wp),
        zero_fills: l(&s.zero_fills),
        tier2_hits: l(&s.tier2_hits),
        tier3_hits: l(&s.tier3_hits),
        fault_around_pages: l(&s.fault_around_pages),
        promotions: l(&s.promotions),
        demotions: l(&s.demotions),
        direct_reclaims: l(&s.direct_reclaims),
        clean_evictions: l(&s.clean_evictions),
        unchanged_evictions: l(&s.unchanged_evictions),
        moves_2_to_3: l(&s.moves_2_to_3),
        moves_3_to_2: l(&s.moves_3_to_2),
        tier2_bytes_written: l(&s.tier2_bytes_written),
        tier3_bytes_written: l(&s.tier3_bytes_written),
        bytes_read: l(&s.bytes_read),
        sampled: l(&s.sampled),
        parked: l(&s.parked),
        corrupt_pages: l(&s.corrupt),
        io_errors: l(&s.io_errors),
        tier2_refused: l(&s.tier2_refused),
        compacted_slots: l(&s.compacted_slots),
        compacted_segments: l(&s.compacted_segments),
        tier2_files: ssd.files as u64,
        tier2_live_slots: ssd.live_slots,
        tier2_disk_bytes: ssd.disk_bytes_allocated,
        tier3_segments: obj.segments,
        tier3_bytes_stored: obj.bytes_stored,
        fault_latency_us: s.latency_us(),
        prefetcher: p.prefetch.as_ref().map_or("none", |pf| pf.kind().name()),
        prefetch_issued: l(&s.prefetch_issued),
        inherited_installed: l(&s.inherited_installed),
        prefetch_used: l(&s.prefetch_used),
        prefetch_accuracy: if l(&s.prefetch_issued) == 0 {
            0.0
        } else {
            l(&s.prefetch_used) as f64 / l(&s.prefetch_issued) as f64
        },
        prefetch_late: l(&s.prefetch_late),
        prefetch_wasted: l(&s.prefetch_wasted),
        prefetch_mapped_ahead: l(&s.prefetch_mapped_ahead),
        prefetch_wasted_bytes: l(&s.prefetch_wasted) * PAGE_SIZE as u64,
        prefetch_dropped: l(&s.prefetch_dropped),
        checkpoint_adopted: l(&s.checkpoint_adopted),
        precleaned: l(&s.precleaned),
        replica_retained: p.repl.as_ref().map_or(0, |r| l(&r.retained)),
        metadata_bytes_per_page: (metadata.hot + metadata.other) as f64 / pages,
        hot_metadata_bytes_per_page: metadata.hot as f64 / pages,
        metadata_bytes: metadata,
    }
}

/// Publishes the counters through the `metrics` facade (a no-op unless a recorder is installed,
/// e.g. the Prometheus exporter of `--metrics-addr`).
pub(crate) fn publish_metrics(p: &Pager) {
    let s = &p.stats;
    let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
    metrics::gauge!("vmtier_resident_bytes").set((p.budget.resident() * PAGE_SIZE) as f64);
    metrics::gauge!("vmtier_dram_budget_bytes").set((p.budget.cap() * PAGE_SIZE) as f64);
    metrics::gauge!("vmtier_peak_resident_bytes").set((p.budget.peak() * PAGE_SIZE) as f64);
    for (name, c) in [
        ("vmtier_faults_missing_total", &s.faults_missing),
        ("vmtier_faults_minor_total", &s.faults_minor),
        ("vmtier_faults_wp_total", &s.faults_wp),
        ("vmtier_zero_fills_total", &s.zero_fills),
        ("vmtier_tier2_hits_total", &s.tier2_hits),
        ("vmtier_tier3_hits_total", &s.tier3_hits),
        ("vmtier_promotions_total", &s.promotions),
        ("vmtier_demotions_total", &s.demotions),
        ("vmtier_direct_reclaims_total", &s.direct_reclaims),
        ("vmtier_tier2_bytes_written_total", &s.tier2_bytes_written),
        ("vmtier_tier3_bytes_written_total", &s.tier3_bytes_written),
        ("vmtier_bytes_read_total", &s.bytes_read),
        ("vmtier_corrupt_pages_total", &s.corrupt),
        ("vmtier_io_errors_total", &s.io_errors),
        ("vmtier_tier2_refused_total", &s.tier2_refused),
    ] {
        metrics::counter!(name).absolute(l(c));
    }
    let lat = s.latency_us();
    metrics::gauge!("vmtier_fault_latency_p50_us").set(lat.p50);
    metrics::gauge!("vmtier_fault_latency_p99_us").set(lat.p99);
}
