//! High availability through shared storage: `vmtier primary`, `secondary`, `failover`,
//! `status` (see `docs/replication.md`).
//!
//! Shared storage holds three things:
//! - the log and lease (`vmtier-repl`), at `replication.shared` (a directory or `s3://…`);
//! - each primary's tier 2, in `<engine.tier2.dir>/e<epoch>`: a directory on a file system both
//!   hosts mount;
//! - each primary's tier 3, under `<engine.tier3.url>/e<epoch>`.
//!
//! Each epoch's primary writes only its own tier directories, so a stale primary that has not
//! yet noticed it lost the lease can never overwrite anything the new one reads; the new
//! primary reads the old epoch's pages (those of the last committed checkpoint, which the old
//! primary never frees: only a commit does that, and it can no longer commit).

pub mod check;
pub mod control;
pub mod fill;
pub mod follower;
pub mod primary;
pub mod secondary;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use vmtier_engine::{DeltaPage, EngineConfig, Home, PAGE_SIZE};
use vmtier_repl::{ClusterKey, Location, PageLoc, ReplicaMap, SharedStore};
use vmtier_storage::SegmentLoc;
use vmtier_storage::object::{ObjectConfig, ObjectTier, redact_url};
use vmtier_storage::ssd::{SlotId, SsdConfig, SsdStore};
use vmtier_uffd::AlignedBuf;

use crate::run_config::RunConfig;

/// Where everything of one replicated VM lives, from its config.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The log and lease store's configuration.
    pub shared: ObjectConfig,
    /// Parent of every epoch's tier-2 directory.
    pub tier2_base: PathBuf,
    /// The engine config as written (tier locations are the bases).
    pub engine: EngineConfig,
    /// The cluster key: every record and stored page on shared storage is checked with it.
    pub key: ClusterKey,
}

impl Layout {
    /// The layout `cfg` describes; fails if the cluster key (`replication.key_file`) cannot be
    /// loaded.
    pub fn new(cfg: &RunConfig) -> anyhow::Result<Self> {
        let key = cfg.replication.cluster_key()?;
        let r = &cfg.replication;
        let url = r.shared.clone().unwrap_or_else(|| cfg.data_dir.join("shared").to_string_lossy().into_owned());
        let mut shared = ObjectConfig::new(url);
        shared.endpoint = r.endpoint.clone();
        shared.region = r.region.clone();
        shared.access_key_id = r.access_key_id.clone();
        shared.secret_access_key = r.secret_access_key.clone();
        shared.allow_http = r.allow_http;
        Ok(Self { shared, tier2_base: cfg.engine.tier2.dir.clone(), engine: cfg.engine.clone(), key })
    }

    /// Opens the log and lease store.
    pub fn open_store(&self) -> anyhow::Result<Arc<dyn SharedStore>> {
        vmtier_repl::open_store(&self.shared)
            .with_context(|| format!("opening the shared log store at {}", redact_url(&self.shared.url)))
    }

    /// Tier-2 directory of the primary of `epoch`.
    pub fn tier2_dir(&self, epoch: u64) -> PathBuf {
        self.tier2_base.join(format!("e{epoch:06}"))
    }

    /// Tier-3 configuration of the primary of `epoch`.
    pub fn tier3(&self, epoch: u64) -> ObjectConfig {
        let mut cfg = self.engine.tier3.object_config();
        cfg.url = format!("{}/e{epoch:06}", cfg.url.trim_end_matches('/'));
        cfg
    }

    /// The engine config of the primary of `epoch`: its own tier locations, replication on.
    pub fn engine_for(&self, epoch: u64, dram: Option<vmtier_engine::ByteSize>) -> EngineConfig {
        let mut e = self.engine.clone();
        e.tier2.dir = self.tier2_dir(epoch);
        e.tier3.url = self.tier3(epoch).url;
        if let Some(d) = dram {
            e.dram = d;
        }
        e.replicate = true;
        e.page_auth = Some(vmtier_engine::PageAuthHandle(Arc::new(KeyAuth(self.key.clone()))));
        e
    }
}

/// The cluster key as the engine's page authenticator: the engine tags every page it writes to
/// the shared tiers and checks the tag on every read back.
#[derive(Debug)]
struct KeyAuth(ClusterKey);

impl vmtier_engine::PageAuth for KeyAuth {
    fn tag(&self, page: u32, data: &[u8]) -> vmtier_engine::PageTag {
        self.0.page_tag(page, data)
    }
}

/// A page's location as the log records it. `inherited` is the replica map the engine's
/// `Home::Inherited` pages come from (after a failover).
pub fn page_loc(d: &DeltaPage, epoch: u64, inherited: Option<&ReplicaMap>) -> anyhow::Result<PageLoc> {
    let (loc, crc, tag) = match d.home {
        Home::Zero => (Location::Zero, 0, [0; 16]),
        Home::Ssd(slot) => (Location::Ssd { store: epoch, slot: slot.0 }, d.crc, d.tag),
        Home::Object(l) => (Location::Object { store: epoch, segment: l.segment, index: l.index }, d.crc, d.tag),
        Home::Inherited => {
            let e = inherited
                .and_then(|m| m.entry(d.page))
                .with_context(|| format!("page {} is inherited but the inherited map has no copy of it", d.page))?;
            (e.loc, e.crc, e.tag)
        }
    };
    Ok(PageLoc { page: d.page, loc, crc, tag })
}

/// Reads pages from every epoch's tiers on shared storage, as a secondary (or a new primary
/// after a failover) does. Stores are opened read-only, each the first time it is needed.
#[derive(Debug)]
pub struct SharedPages {
    layout: Layout,
    tier2: Mutex<HashMap<u64, Arc<SsdStore>>>,
    tier3: Mutex<HashMap<u64, Arc<ObjectTier>>>,
    /// Copies refused for their tag so far (logged sparingly: a store of forged pages must not
    /// flood the log; each caller gets its error regardless).
    refused: std::sync::atomic::AtomicU64,
    /// Read requests sent to storage so far (a span of tier-2 slots or a batch of one tier-3
    /// segment's pages counts one).
    requests: std::sync::atomic::AtomicU64,
}

impl SharedPages {
    /// A reader over `layout`'s tiers.
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            tier2: Mutex::new(HashMap::new()),
            tier3: Mutex::new(HashMap::new()),
            refused: std::sync::atomic::AtomicU64::new(0),
            requests: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn tier2(&self, epoch: u64) -> std::io::Result<Arc<SsdStore>> {
        if let Some(s) = self.tier2.lock().unwrap_or_else(|p| p.into_inner()).get(&epoch) {
            return Ok(s.clone());
        }
        let mut cfg = SsdConfig::new(self.layout.tier2_dir(epoch));
        cfg.slots_per_file = self.layout.engine.tier2.slots_per_file;
        cfg.direct_io = self.layout.engine.tier2.direct_io;
        let s = Arc::new(SsdStore::open_reader(cfg).map_err(std::io::Error::other)?);
        self.tier2.lock().unwrap_or_else(|p| p.into_inner()).insert(epoch, s.clone());
        Ok(s)
    }

    fn tier3(&self, epoch: u64) -> std::io::Result<Arc<ObjectTier>> {
        if let Some(t) = self.tier3.lock().unwrap_or_else(|p| p.into_inner()).get(&epoch) {
            return Ok(t.clone());
        }
        let t = Arc::new(ObjectTier::open_reader(self.layout.tier3(epoch)).map_err(std::io::Error::other)?);
        self.tier3.lock().unwrap_or_else(|p| p.into_inner()).insert(epoch, t.clone());
        Ok(t)
    }

    /// Reads the page `p` names into `out` (4096 bytes), checked against its crc32c and then its
    /// keyed tag (the cluster key's [`page_tag`](ClusterKey::page_tag)). Either mismatch is an
    /// `InvalidData` error; a copy that fails its tag is never returned.
    pub fn read(&self, p: &PageLoc, out: &mut [u8]) -> std::io::Result<()> {
        self.read_unchecked(p.loc, p.crc, out)?;
        self.check_tag(p, out)
    }

    /// Checks `data`, read for `p`, against `p`'s keyed tag.
    fn check_tag(&self, p: &PageLoc, data: &[u8]) -> std::io::Result<()> {
        if p.loc == Location::Zero || self.layout.key.verify_page(p.page, data, &p.tag) {
            return Ok(());
        }
        let n = self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n <= 8 || n.is_power_of_two() {
            tracing::error!(page = p.page, loc = %p.loc, refused_so_far = n, "a stored page fails authentication: refused");
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "page {} at {}: its crc32c matches but its keyed tag does not: it was not written by a holder of the cluster key ({}), or was replaced; refused",
                p.page,
                p.loc,
                self.layout.key.source()
            ),
        ))
    }

    /// Read requests sent to storage so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_request(&self) {
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads the page at `loc` into `out`, checked against `crc` only.
    fn read_unchecked(&self, loc: Location, crc: u32, out: &mut [u8]) -> std::io::Result<()> {
        if loc != Location::Zero {
            self.count_request();
        }
        let corrupt = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
        match loc {
            Location::Zero => {
                out.fill(0);
                Ok(())
            }
            Location::Ssd { store, slot } => match self.tier2(store)?.read(SlotId(slot), crc, out) {
                Err(e @ vmtier_storage::ssd::SsdError::Corrupt { .. }) => Err(corrupt(&e)),
                r => r.map_err(std::io::Error::other),
            },
            Location::Object { store, segment, index } => {
                match self.tier3(store)?.read(SegmentLoc { segment, index }, crc, out) {
                    Err(e @ vmtier_storage::object::ObjectError::Corrupt { .. }) => Err(corrupt(&e)),
                    r => r.map_err(std::io::Error::other),
                }
            }
        }
    }

    /// Reads many pages at once: `reqs[i]` into `out[i * 4096..]` (each checked as by
    /// [`read`](Self::read)), returning
    /// each page's outcome. Tier-2 copies are sorted by slot and read in spans of neighbouring
    /// slots (one read per span, gaps of at most [`SPAN_GAP`] slots read and discarded); tier-3
    /// copies are grouped by segment, each group one batched ranged request
    /// ([`ObjectTier::read_many`]), so an object store sees one request per segment rather than
    /// one per page. Spans are read on [`READ_THREADS`] threads, so that storage sees several
    /// reads at a time but never more; zero pages go through [`read`](Self::read). A span that
    /// fails is retried page by page, so one bad copy fails only its own page.
    pub fn read_many(&self, reqs: &[PageLoc], out: &mut [u8]) -> Vec<std::io::Result<()>> {
        assert_eq!(out.len(), reqs.len() * PAGE_SIZE, "read_many: out must hold one page per request");
        let mut order: Vec<usize> = (0..reqs.len()).collect();
        let key = |i: &usize| match reqs[*i].loc {
            Location::Ssd { store, slot } => (0, store, u64::from(slot)),
            Location::Object { store, segment, index } => (1, store, (u64::from(segment) << 16) | u64::from(index)),
            Location::Zero => (2, 0, 0),
        };
        order.sort_unstable_by_key(key);
        // Spans of requests: indices into `order`.
        let spf = self.layout.engine.tier2.slots_per_file;
        let mut spans: Vec<std::ops::Range<usize>> = Vec::new();
        let mut start = 0;
        for k in 1..=order.len() {
            let joins = k < order.len()
                && match (reqs[order[k - 1]].loc, reqs[order[k]].loc) {
                    (Location::Ssd { store: a, slot: x }, Location::Ssd { store: b, slot: y }) => {
                        a == b
                            && y > x
                            && y - x <= SPAN_GAP
                            && x / spf == y / spf
                            && y - reqs_first(reqs, &order, start) < MAX_SPAN
                    }
                    (
                        Location::Object { store: a, segment: x, index: i },
                        Location::Object { store: b, segment: y, index: j },
                    ) => a == b && x == y && j > i && k - start < MAX_OBJECT_SPAN,
                    _ => false,
                };
            if !joins {
                spans.push(start..k);
                start = k;
            }
        }
        let mut results: Vec<Option<std::io::Result<()>>> = (0..reqs.len()).map(|_| None).collect();
        let pages: Vec<std::sync::Mutex<&mut [u8]>> =
            out.chunks_exact_mut(PAGE_SIZE).map(std::sync::Mutex::new).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done: Mutex<Vec<(usize, std::io::Result<()>)>> = Mutex::new(Vec::with_capacity(reqs.len()));
        std::thread::scope(|s| {
            for _ in 0..READ_THREADS.min(spans.len()) {
                s.spawn(|| {
                    let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
                    let mut mine = Vec::new();
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(span) = spans.get(n) else { break };
                        let idx: Vec<usize> = order[span.clone()].to_vec();
                        self.read_span(reqs, &idx, &pages, &mut buf, &mut mine);
                    }
                    done.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
                });
            }
        });
        for (i, r) in done.into_inner().unwrap_or_else(|p| p.into_inner()) {
            results[i] = Some(r);
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(std::io::Error::other("page not read")))).collect()
    }

    /// Reads the requests `idx` (one span of tier-2 slots, or a single other page) into their
    /// pages, pushing each outcome to `results`.
    fn read_span(
        &self,
        reqs: &[PageLoc],
        idx: &[usize],
        pages: &[std::sync::Mutex<&mut [u8]>],
        buf: &mut AlignedBuf,
        results: &mut Vec<(usize, std::io::Result<()>)>,
    ) {
        let one_by_one = |buf: &mut AlignedBuf, results: &mut Vec<(usize, std::io::Result<()>)>| {
            for &i in idx {
                let r = self.read(&reqs[i], buf);
                if r.is_ok() {
                    pages[i].lock().unwrap_or_else(|p| p.into_inner()).copy_from_slice(buf);
                }
                results.push((i, r));
            }
        };
        let (Some(&first), Some(&last)) = (idx.first(), idx.last()) else { return };
        if idx.len() == 1 {
            return one_by_one(buf, results);
        }
        if let Location::Object { store, .. } = reqs[first].loc {
            return self.read_object_span(store, reqs, idx, pages, results).unwrap_or_else(|| one_by_one(buf, results));
        }
        let (Location::Ssd { store, slot: lo }, Location::Ssd { slot: hi, .. }) = (reqs[first].loc, reqs[last].loc)
        else {
            return one_by_one(buf, results);
        };
        let n = (hi - lo + 1) as usize;
        let mut expected = vec![None; n];
        for &i in idx {
            if let Location::Ssd { slot, .. } = reqs[i].loc {
                expected[(slot - lo) as usize] = Some(reqs[i].crc);
            }
        }
        let mut span = AlignedBuf::zeroed(n * PAGE_SIZE);
        self.count_request();
        let ok = self.tier2(store).is_ok_and(|t| t.read_span(SlotId(lo), &expected, &mut span).is_ok());
        if !ok {
            return one_by_one(buf, results);
        }
        for &i in idx {
            if let Location::Ssd { slot, .. } = reqs[i].loc {
                let at = (slot - lo) as usize * PAGE_SIZE;
                let r = self.check_tag(&reqs[i], &span[at..at + PAGE_SIZE]);
                if r.is_ok() {
                    pages[i].lock().unwrap_or_else(|p| p.into_inner()).copy_from_slice(&span[at..at + PAGE_SIZE]);
                }
                results.push((i, r));
            }
        }
    }

    /// Reads the requests `idx` (pages of one segment of epoch `store`'s tier 3) with one batched
    /// request, checks each page's tag and pushes its outcome to `results`. `None` if the request
    /// failed as a whole (the caller then reads page by page, so one bad copy fails only its own
    /// page).
    fn read_object_span(
        &self,
        store: u64,
        reqs: &[PageLoc],
        idx: &[usize],
        pages: &[std::sync::Mutex<&mut [u8]>],
        results: &mut Vec<(usize, std::io::Result<()>)>,
    ) -> Option<()> {
        let want: Vec<(SegmentLoc, u32)> = idx
            .iter()
            .filter_map(|&i| match reqs[i].loc {
                Location::Object { segment, index, .. } => Some((SegmentLoc { segment, index }, reqs[i].crc)),
                _ => None,
            })
            .collect();
        if want.len() != idx.len() {
            return None;
        }
        let mut data = vec![0u8; idx.len() * PAGE_SIZE];
        self.count_request();
        self.tier3(store).ok()?.read_many(&want, &mut data).ok()?;
        for (k, &i) in idx.iter().enumerate() {
            let page = &data[k * PAGE_SIZE..(k + 1) * PAGE_SIZE];
            let r = self.check_tag(&reqs[i], page);
            if r.is_ok() {
                pages[i].lock().unwrap_or_else(|p| p.into_inner()).copy_from_slice(page);
            }
            results.push((i, r));
        }
        Some(())
    }
}

/// Most pages of one tier-3 segment that one request of [`SharedPages::read_many`] asks for
/// (1 MiB).
const MAX_OBJECT_SPAN: usize = 256;

/// Most slots between two wanted ones that [`SharedPages::read_many`] reads through rather than
/// starting a new read.
pub const SPAN_GAP: u32 = 4;
/// Most slots one read of [`SharedPages::read_many`] covers (256 KiB).
const MAX_SPAN: u32 = 64;
/// Reads [`SharedPages::read_many`] keeps in flight.
const READ_THREADS: usize = 4;

/// Slot of the first request of the span starting at `order[start]`.
fn reqs_first(reqs: &[PageLoc], order: &[usize], start: usize) -> u32 {
    match reqs[order[start]].loc {
        Location::Ssd { slot, .. } => slot,
        _ => 0,
    }
}

/// The failed primary's last committed checkpoint, as the new primary's engine reads it.
#[derive(Debug)]
pub struct InheritedMap {
    /// The replica map at the last committed checkpoint.
    pub map: ReplicaMap,
    /// Reader of the stores it points into.
    pub pages: SharedPages,
}

impl vmtier_engine::InheritedPages for InheritedMap {
    fn read(&self, page: u64, out: &mut [u8]) -> std::io::Result<()> {
        let page = u32::try_from(page).map_err(std::io::Error::other)?;
        match self.map.entry(page) {
            Some(e) => self.pages.read(&e, out),
            None => {
                out.fill(0);
                Ok(())
            }
        }
    }

    fn crc(&self, page: u64) -> Option<u32> {
        let page = u32::try_from(page).ok()?;
        self.map.get(page).filter(|(loc, _)| *loc != Location::Zero).map(|(_, crc)| crc)
    }

    fn tag(&self, page: u64) -> Option<vmtier_engine::PageTag> {
        let e = self.map.entry(u32::try_from(page).ok()?)?;
        (e.loc != Location::Zero).then_some(e.tag)
    }
}

/// A name for this process in the lease: `host:pid`.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    format!("{}:{}", host.trim(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(n: u32, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; PAGE_SIZE];
        p[..4].copy_from_slice(&n.to_le_bytes());
        p
    }

    /// `read_many` over tier-3 pages of two segments (read one batched request per segment),
    /// zeros and a bad copy: every good page comes back whole, in request order, and a bad crc
    /// or a bad tag fails only its own page.
    #[test]
    fn read_many_batches_tier3_pages_and_fails_only_bad_copies() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = EngineConfig::default();
        engine.tier2.dir = dir.path().join("tier2");
        engine.tier3.url = dir.path().join("tier3").to_string_lossy().into_owned();
        let key = ClusterKey::from_bytes(&[7u8; 32], "test key").unwrap();
        let layout = Layout {
            shared: ObjectConfig::new(dir.path().join("shared").to_string_lossy().into_owned()),
            tier2_base: engine.tier2.dir.clone(),
            engine,
            key: key.clone(),
        };
        let epoch = 3;
        let writer = ObjectTier::open(layout.tier3(epoch)).unwrap();
        let mut reqs = Vec::new();
        for (seg, first) in [(0u8, 0u32), (1, 100)] {
            let data: Vec<Vec<u8>> = (first..first + 40).map(|n| page(n, seg + 1)).collect();
            let pages: Vec<(u64, &[u8])> =
                data.iter().enumerate().map(|(i, d)| (u64::from(first) + i as u64, &d[..])).collect();
            let locs = writer.write_segment(&pages).unwrap();
            for ((n, d), (loc, crc)) in (first..).zip(&data).zip(locs) {
                let loc = Location::Object { store: epoch, segment: loc.segment, index: loc.index };
                reqs.push(PageLoc { page: n, loc, crc, tag: key.page_tag(n, d) });
            }
        }
        // Interleave the segments, skip some pages, add a zero page.
        let mut asked: Vec<PageLoc> = reqs.iter().step_by(3).copied().rev().collect();
        asked.push(PageLoc { page: 999, loc: Location::Zero, crc: 0, tag: [0; 16] });
        let shared = SharedPages::new(layout);
        let bad_tag = 9;
        asked[bad_tag].tag[0] ^= 1;
        check(&shared, &asked, &[bad_tag]);
        assert_eq!(shared.requests(), 2, "one request per segment");
        // A bad crc fails its segment's batch, which is then read page by page.
        let bad_crc = 2;
        asked[bad_crc].crc ^= 1;
        check(&shared, &asked, &[bad_crc, bad_tag]);
    }

    /// Reads `asked` with `read_many`: the pages `bad` fail as corrupt, the others come back whole.
    fn check(shared: &SharedPages, asked: &[PageLoc], bad: &[usize]) {
        let mut out = vec![0u8; asked.len() * PAGE_SIZE];
        let results = shared.read_many(asked, &mut out);
        assert_eq!(results.len(), asked.len());
        for (i, (p, r)) in asked.iter().zip(&results).enumerate() {
            let got = &out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
            if bad.contains(&i) {
                let e = r.as_ref().expect_err("a bad copy was returned");
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
            } else if p.loc == Location::Zero {
                assert!(r.is_ok() && got.iter().all(|&b| b == 0), "zero page");
            } else {
                assert!(r.is_ok(), "page {}: {:?}", p.page, r);
                let fill = if p.page < 100 { 1 } else { 2 };
                assert!(got == page(p.page, fill), "page {} came back wrong", p.page);
            }
        }
    }
}
