//! The follower: what a secondary does between failovers, and what it hands the new primary's
//! engine at one. `vmtier secondary` runs it; `vmtier bench failover` drives it in-process.
//!
//! It follows the primary's log into a [`ReplicaMap`] (page → location and checksum on shared
//! storage; pages stay where the primary wrote them) and spends its DRAM budget on the pages the
//! primary reported hottest, reading each from shared storage into the memory file that becomes
//! guest RAM at failover; a page a later checkpoint moves or rewrites is read again
//! ([`Follower::poll`]). At failover it claims the log, fencing the old primary, and applies the
//! last records ([`Follower::claim`]), then builds the new engine's [`Inheritance`] under a
//! [`Strategy`] ([`Follower::inherit`]): the warm set as kept (`warm`, what the secondary does),
//! or one of the baselines `vmtier bench failover` compares it with.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use vmtier_engine::{Inheritance, PAGE_SIZE};
use vmtier_repl::{Location, LogError, LogReader, LogWriter, PageLoc, ReplicaMap, SharedStore};
use vmtier_uffd::{AlignedBuf, Memfd};
use vmtier_vm::VcpuState;

use super::check;
use super::{InheritedMap, Layout, SharedPages};

/// Most pages read into the warm set per poll round, so the log is followed promptly.
const WARM_BATCH: usize = 4096;

/// What guest memory holds when the new primary resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Every stored page, read before the failover (the reference: a secondary with the whole
    /// guest in DRAM).
    Hot,
    /// Every stored page, read at failover before the guest resumes.
    Eager,
    /// Nothing: every page is read when the guest first touches it.
    Lazy,
    /// These pages (a working set recorded earlier, as REAP does), read at failover in bulk.
    Reap(Vec<u32>),
    /// The follower's warm set, as it kept it while following.
    Warm,
}

impl Strategy {
    /// The strategy's name: `hot`, `eager`, `lazy`, `reap`, `warm`.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Hot => "hot",
            Strategy::Eager => "eager",
            Strategy::Lazy => "lazy",
            Strategy::Reap(_) => "reap",
            Strategy::Warm => "warm",
        }
    }
}

/// The warm set: pages held in the memory file, and the copy each holds.
struct Warm {
    memfd: Memfd,
    pages: HashMap<u32, (Location, u32)>,
    budget: usize,
    bytes_read: u64,
}

impl Warm {
    fn new(guest_bytes: u64, budget: usize) -> anyhow::Result<Self> {
        let memfd = Memfd::create("vmtier-replica", guest_bytes).context("creating the replica's guest memory")?;
        Ok(Self { memfd, pages: HashMap::new(), budget, bytes_read: 0 })
    }

    /// Drops `page`'s copy from DRAM.
    fn drop_page(&mut self, page: u32) -> anyhow::Result<()> {
        self.pages.remove(&page);
        self.memfd.punch_hole(u64::from(page) * PAGE_SIZE as u64, PAGE_SIZE as u64).context("punching a warm page")
    }

    /// The pages the warm set should hold: the hottest of the primary's hot list that are not
    /// zeros, as many as the budget allows, with their current copies.
    fn wanted(&self, map: &ReplicaMap) -> Vec<PageLoc> {
        map.heat().iter().filter_map(|h| map.entry(h.page)).take(self.budget).collect()
    }

    /// Brings the warm set closer to [`wanted`](Self::wanted): drops copies that are stale or no
    /// longer wanted, reads up to `max_reads` missing ones (in one batch).
    fn refresh(&mut self, map: &ReplicaMap, shared: &SharedPages, max_reads: usize) -> anyhow::Result<()> {
        let wanted = self.wanted(map);
        let keep: HashMap<u32, (Location, u32)> = wanted.iter().map(|e| (e.page, (e.loc, e.crc))).collect();
        let stale: Vec<u32> =
            self.pages.iter().filter(|(p, copy)| keep.get(p) != Some(copy)).map(|(&p, _)| p).collect();
        for p in stale {
            self.drop_page(p)?;
        }
        let room = self.budget.saturating_sub(self.pages.len()).min(max_reads);
        let missing: Vec<PageLoc> =
            wanted.into_iter().filter(|e| !self.pages.contains_key(&e.page)).take(room).collect();
        let (read, bytes) = fill(&self.memfd, &missing, shared)?;
        self.bytes_read += bytes;
        for e in read {
            self.pages.insert(e.page, (e.loc, e.crc));
        }
        Ok(())
    }

    /// Fraction of the wanted pages that are warm and current.
    fn coverage(&self, map: &ReplicaMap) -> f64 {
        let wanted = self.wanted(map);
        if wanted.is_empty() {
            return 1.0;
        }
        let warm = wanted.iter().filter(|e| self.pages.get(&e.page) == Some(&(e.loc, e.crc))).count();
        warm as f64 / wanted.len() as f64
    }
}

/// Reads `pages` from shared storage into `memfd` with one batched read, returning those read
/// and the bytes read. A copy that fails its checksum (the primary has since replaced and
/// reused it), or its keyed tag (forged), is skipped: a later record says where the page went,
/// and a failover reports a page it could not read.
fn fill(memfd: &Memfd, pages: &[PageLoc], shared: &SharedPages) -> anyhow::Result<(Vec<PageLoc>, u64)> {
    let mut buf = AlignedBuf::zeroed(pages.len().max(1) * PAGE_SIZE);
    let results = shared.read_many(pages, &mut buf[..pages.len() * PAGE_SIZE]);
    let mut read = Vec::with_capacity(pages.len());
    for (i, (&e, r)) in pages.iter().zip(results).enumerate() {
        let (page, loc) = (e.page, e.loc);
        if let Err(e) = r {
            tracing::debug!(page, ?loc, error = %e, "page read skipped");
            continue;
        }
        memfd
            .write_at(&buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE], u64::from(page) * PAGE_SIZE as u64)
            .context("filling a warm page")?;
        read.push(e);
    }
    let bytes = (read.len() * PAGE_SIZE) as u64;
    Ok((read, bytes))
}

/// A follower of one replicated VM's log. See the [module docs](self).
pub struct Follower {
    layout: Layout,
    store: Arc<dyn SharedStore>,
    reader: LogReader,
    map: ReplicaMap,
    shared: SharedPages,
    warm: Option<Warm>,
    budget: usize,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("seq", &self.map.seq())
            .field("warm_pages", &self.warm_pages())
            .field("budget", &self.budget)
            .finish()
    }
}

/// A new primary's start: its engine's inheritance and the vCPU state to resume.
#[derive(Debug)]
pub struct Takeover {
    /// What `Engine::start_inherited` takes.
    pub inheritance: Inheritance,
    /// The checkpoint's vCPU state.
    pub state: VcpuState,
    /// Pages resident when the guest resumes.
    pub resident_pages: usize,
    /// Bytes this strategy read from shared storage to get them (for `warm`: while following).
    pub bytes_read: u64,
    /// `warm` only: the pages the new primary reads in the background after resuming
    /// ([`fill`](super::fill)), in order.
    pub fill: Vec<PageLoc>,
}

impl Follower {
    /// Opens the log of `layout`'s shared store, with a warm set of at most `budget` pages.
    pub fn open(layout: &Layout, budget: usize) -> anyhow::Result<Self> {
        let store = layout.open_store()?;
        let reader = LogReader::open(store.clone(), &layout.key).context("opening the replication log")?;
        Ok(Self {
            layout: layout.clone(),
            store,
            reader,
            map: ReplicaMap::new(),
            shared: SharedPages::new(layout.clone()),
            warm: None,
            budget,
        })
    }

    /// The log and lease store.
    pub fn store(&self) -> &Arc<dyn SharedStore> {
        &self.store
    }

    /// The replica map as applied so far.
    pub fn map(&self) -> &ReplicaMap {
        &self.map
    }

    /// Warm-set budget, pages, while the follower holds a warm set (0 before the first
    /// checkpoint and after [`inherit`](Self::inherit) handed it over).
    pub fn warm_budget(&self) -> usize {
        self.warm.as_ref().map_or(0, |w| w.budget)
    }

    /// Pages in the warm set now.
    pub fn warm_pages(&self) -> usize {
        self.warm.as_ref().map_or(0, |w| w.pages.len())
    }

    /// Fraction of the primary's hot list (as much as the budget holds) that is warm and current.
    pub fn warm_coverage(&self) -> f64 {
        self.warm.as_ref().map_or(0.0, |w| w.coverage(&self.map))
    }

    /// Bytes read from shared storage into the warm set so far.
    pub fn warm_bytes_read(&self) -> u64 {
        self.warm.as_ref().map_or(0, |w| w.bytes_read)
    }

    /// One round of following: applies the new log records, then brings the warm set closer to
    /// the primary's hot list (at most [`WARM_BATCH`] page reads).
    pub fn poll(&mut self) -> anyhow::Result<()> {
        self.apply_new().context("following the replication log")?;
        if self.map.is_based() {
            if self.warm.is_none() {
                self.warm = Some(Warm::new(self.map.guest_bytes(), self.budget)?);
            }
            if let Some(w) = self.warm.as_mut() {
                w.refresh(&self.map, &self.shared, WARM_BATCH)?;
            }
        }
        Ok(())
    }

    /// Applies the log's new records to the map, to the end of the log. A follower that fell so
    /// far behind that the primary truncated the records it still needed
    /// (`replication.full_every`) starts again from the newest full checkpoint; its warm copies
    /// stay, and are checked against the new map as usual.
    fn apply_new(&mut self) -> anyhow::Result<()> {
        loop {
            let records = match self.reader.poll() {
                Err(LogError::TruncatedPast { next, oldest }) => {
                    tracing::warn!(
                        next,
                        oldest,
                        "fell behind the log's truncation; starting again from its newest full checkpoint"
                    );
                    self.reader = LogReader::open(self.store.clone(), &self.layout.key)?;
                    self.map = ReplicaMap::new();
                    self.reader.poll()?
                }
                r => r?,
            };
            // A poll stops early before a damaged record (its error comes with the next poll)
            // or a record that appeared while it looked: poll until nothing is new.
            if records.is_empty() {
                return Ok(());
            }
            for rec in records {
                self.map.apply_record(&rec).context("applying the replication log")?;
            }
        }
    }

    /// Failover, first step: claims the log as `holder` (fencing the old primary) and calls
    /// `on_claimed` with the new epoch, then applies the last records and drops warm copies they
    /// replaced (rather than reading them again: resuming comes first). Fails if the log holds no
    /// complete checkpoint.
    pub fn claim(
        &mut self,
        holder: &str,
        on_claimed: impl FnOnce(u64) -> anyhow::Result<()>,
    ) -> anyhow::Result<LogWriter> {
        let writer = LogWriter::claim(self.store.clone(), &self.layout.key, holder)
            .context("claiming the log for the failover")?;
        on_claimed(writer.epoch())?;
        self.apply_new().context("reading the last records")?;
        if !self.map.is_based() || self.map.vcpu().is_empty() {
            bail!("the log holds no complete checkpoint to resume from");
        }
        if self.warm.is_none() {
            self.warm = Some(Warm::new(self.map.guest_bytes(), self.budget)?);
        }
        if let Some(w) = self.warm.as_mut() {
            let stale: Vec<u32> =
                w.pages.iter().filter(|(p, copy)| self.map.get(**p) != Some(**copy)).map(|(&p, _)| p).collect();
            for p in stale {
                w.drop_page(p)?;
            }
        }
        Ok(writer)
    }

    /// The digest ([`check::digest`]) of the memory the VM resumes with after
    /// [`claim`](Self::claim): warm pages from this host's DRAM, every other page read (and
    /// checksum-checked) from shared storage.
    pub fn resume_digest(&self) -> anyhow::Result<u64> {
        let map = &self.map;
        let pages = map.guest_bytes() / PAGE_SIZE as u64;
        let zero = check::zero_page_crc();
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        let mut crcs = Vec::with_capacity(pages as usize);
        for page in 0..pages as u32 {
            let warm = self.warm.as_ref().filter(|w| w.pages.contains_key(&page));
            let crc = match (warm, map.entry(page)) {
                (Some(w), _) => {
                    w.memfd.read_at(&mut buf, u64::from(page) * PAGE_SIZE as u64).context("reading a warm page")?;
                    crc32c::crc32c(&buf)
                }
                (None, None) => zero,
                (None, Some(e)) if e.loc == Location::Zero => zero,
                (None, Some(e)) => {
                    self.shared.read(&e, &mut buf).with_context(|| format!("reading page {page} at {:?}", e.loc))?;
                    crc32c::crc32c(&buf)
                }
            };
            crcs.push(crc);
        }
        Ok(check::digest(&crcs))
    }

    /// Failover, second step (after [`claim`](Self::claim)): the new primary's guest memory and
    /// inheritance under `strategy`. `Warm` hands over the warm set itself and can be asked for
    /// once; the others build fresh guest memory from the claimed checkpoint each time.
    pub fn inherit(&mut self, strategy: &Strategy) -> anyhow::Result<Takeover> {
        let map = &self.map;
        let state = VcpuState::from_bytes(map.vcpu()).context("decoding the checkpoint's vCPU state")?;
        let freq: HashMap<u32, u8> = map.heat().iter().map(|h| (h.page, h.freq)).collect();
        let (memfd, warm, bytes_read) = match strategy {
            Strategy::Warm => {
                let w = self.warm.take().context("the warm set was already handed over")?;
                let mut pages: Vec<u32> = w.pages.keys().copied().collect();
                pages.sort_unstable();
                (w.memfd, pages, w.bytes_read)
            }
            other => {
                let wanted: Vec<PageLoc> = match other {
                    Strategy::Lazy => Vec::new(),
                    Strategy::Reap(set) => set.iter().filter_map(|&p| map.entry(p)).collect(),
                    _ => map.entries().collect(),
                };
                let memfd = Memfd::create("vmtier-guest", map.guest_bytes()).context("creating guest memory")?;
                let (read, bytes) = fill(&memfd, &wanted, &self.shared)?;
                if read.len() != wanted.len() {
                    let got: std::collections::HashSet<u32> = read.iter().map(|e| e.page).collect();
                    let first = *wanted.iter().find(|e| !got.contains(&e.page)).expect("a missing page");
                    let (page, loc, crc) = (first.page, first.loc, first.crc);
                    let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
                    let why =
                        self.shared.read(&first, &mut buf).err().map_or("read fine on retry".into(), |e| e.to_string());
                    bail!(
                        "{} of {} pages of the claimed checkpoint could not be read from shared storage; \
                         the first, page {page} at {loc:?} (crc {crc:#010x}): {why}",
                        wanted.len() - read.len(),
                        wanted.len()
                    );
                }
                (memfd, read.into_iter().map(|e| e.page).collect(), bytes)
            }
        };
        let resident_pages = warm.len();
        let fill = match strategy {
            Strategy::Warm => super::fill::plan(map, &warm.iter().copied().collect()),
            _ => Vec::new(),
        };
        let inheritance = Inheritance {
            warm: warm.into_iter().map(|p| (p, freq.get(&p).copied().unwrap_or(50))).collect(),
            stored: map.iter().map(|(p, _, _)| p).collect(),
            memfd,
            source: Arc::new(InheritedMap { map: map.clone(), pages: SharedPages::new(self.layout.clone()) }),
            // The new primary runs the micro-VM, whose KVM dirty log its checkpoints read.
            logged_writes: true,
        };
        Ok(Takeover { inheritance, state, resident_pages, bytes_read, fill })
    }
}
