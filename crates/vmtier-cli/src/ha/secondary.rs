//! `vmtier secondary`: follow the primary's log, keep the pages it will need after a failover
//! warm in its own DRAM, and take over when the primary's lease expires (or on `vmtier
//! failover`).
//!
//! The replica map (page → location and checksum on shared storage) is rebuilt from the log,
//! never from page contents: pages stay where the primary wrote them. The secondary spends its
//! DRAM budget (`replication.secondary_dram`) on the pages the primary reported hottest, reading
//! each from shared storage into the memory file that becomes guest RAM at failover; a page a
//! later checkpoint moves or rewrites is read again. At failover it claims the log (fencing the
//! old primary), applies the last records, starts an engine whose warm pages are resident from
//! the first instant and whose other pages are read on demand from the old primary's stores,
//! and resumes the VM from the last committed checkpoint's vCPU state — then replicates as the
//! new primary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use vmtier_engine::{Engine, Inheritance, PAGE_SIZE};
use vmtier_repl::{LeaseStatus, LeaseWatch, Location, LogError, LogReader, LogWriter, ReplicaMap, SharedStore};
use vmtier_uffd::{AlignedBuf, Memfd};
use vmtier_vm::{Start, VcpuState};

use super::check::{self, CheckLog};
use super::primary::{Cadence, ServeOptions, Served};
use super::{InheritedMap, Layout, SharedPages};
use crate::run_config::RunConfig;

/// Key of a manual failover request (`vmtier failover`).
pub const FAILOVER_REQUEST_KEY: &str = "control/failover";
/// Key of the secondary's status (`vmtier status`).
pub const STATUS_KEY: &str = "status/secondary";
/// Most pages read into the warm set per poll round, so the log is followed promptly.
const WARM_BATCH: usize = 4096;

/// Options of `vmtier secondary`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The configuration file (the primary's).
    #[arg(long, short)]
    pub config: std::path::PathBuf,
    /// Only fail over on `vmtier failover`, never on lease expiry.
    #[arg(long)]
    pub manual: bool,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Append the digest of the memory it resumes with to this file, and keep the primary's
    /// check log after the failover (for crash tests; see docs/replication.md).
    #[arg(long)]
    pub check_log: Option<std::path::PathBuf>,
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
    fn wanted(&self, map: &ReplicaMap) -> Vec<(u32, Location, u32)> {
        map.heat().iter().filter_map(|h| map.get(h.page).map(|(l, c)| (h.page, l, c))).take(self.budget).collect()
    }

    /// Brings the warm set closer to [`wanted`](Self::wanted): drops copies that are stale or no
    /// longer wanted, reads up to `max_reads` missing ones.
    fn refresh(&mut self, map: &ReplicaMap, shared: &SharedPages, max_reads: usize) -> anyhow::Result<()> {
        let wanted = self.wanted(map);
        let keep: HashMap<u32, (Location, u32)> = wanted.iter().map(|&(p, l, c)| (p, (l, c))).collect();
        let stale: Vec<u32> =
            self.pages.iter().filter(|(p, copy)| keep.get(p) != Some(copy)).map(|(&p, _)| p).collect();
        for p in stale {
            self.drop_page(p)?;
        }
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        let mut reads = 0;
        for (page, loc, crc) in wanted {
            if reads == max_reads || self.pages.len() >= self.budget {
                break;
            }
            if self.pages.contains_key(&page) {
                continue;
            }
            reads += 1;
            // A copy the primary has since replaced (and reused) fails its checksum: skip it; a
            // later record says where the page went.
            if let Err(e) = shared.read(loc, crc, &mut buf) {
                tracing::debug!(page, error = %e, "warm read skipped");
                continue;
            }
            self.bytes_read += PAGE_SIZE as u64;
            self.memfd.write_at(&buf, u64::from(page) * PAGE_SIZE as u64).context("filling a warm page")?;
            self.pages.insert(page, (loc, crc));
        }
        Ok(())
    }

    /// Fraction of the wanted pages that are warm and current.
    fn coverage(&self, map: &ReplicaMap) -> f64 {
        let wanted = self.wanted(map);
        if wanted.is_empty() {
            return 1.0;
        }
        let warm = wanted.iter().filter(|&&(p, l, c)| self.pages.get(&p) == Some(&(l, c))).count();
        warm as f64 / wanted.len() as f64
    }
}

/// Figures of one failover.
#[derive(Debug, Serialize)]
pub struct FailoverReport {
    /// The epoch this secondary claimed.
    pub epoch: u64,
    /// Why it failed over: `lease-expired` or `requested`.
    pub reason: &'static str,
    /// The checkpoint resumed.
    pub resumed_seq: u64,
    /// Seconds from the decision to fail over to the guest running again (claim, last records,
    /// engine start).
    pub takeover_s: f64,
    /// Warm pages at failover (resident in DRAM from the first instant).
    pub warm_pages: usize,
    /// Pages in the replica map (non-zero).
    pub mapped_pages: usize,
    /// Fraction of the primary's hot list that was warm.
    pub warm_coverage: f64,
    /// Bytes the secondary read from shared storage while following (warming).
    pub warm_bytes_read: u64,
    /// The secondary's DRAM used for warm pages.
    pub secondary_dram_bytes: u64,
}

/// `vmtier secondary`. Returns whether the guest, after a failover, verified everything.
pub fn run(cfg: &RunConfig, args: &Args) -> anyhow::Result<bool> {
    let layout = Layout::new(cfg);
    let store = layout.open_store()?;
    let shared = SharedPages::new(layout.clone());
    let budget = (cfg.replication.secondary_dram.unwrap_or(cfg.engine.dram).0 / PAGE_SIZE as u64) as usize;
    let mut reader = LogReader::open(store.clone()).context("opening the replication log")?;
    let mut map = ReplicaMap::new();
    let mut warm: Option<Warm> = None;
    let mut lease = LeaseWatch::new(Duration::from_millis(cfg.replication.lease_timeout_ms));
    let poll = Duration::from_millis(cfg.replication.poll_ms);
    let mut last_status = Instant::now() - Duration::from_secs(10);
    if !args.json {
        eprintln!("vmtier secondary: following the log at {} with {} warm pages", layout.shared.url, budget);
    }
    let reason = loop {
        follow(&mut reader, &mut map, &store).context("following the replication log")?;
        if map.is_based() {
            if warm.is_none() {
                warm = Some(Warm::new(map.guest_bytes(), budget)?);
            }
            if let Some(w) = warm.as_mut() {
                w.refresh(&map, &shared, WARM_BATCH)?;
            }
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            publish_status(&*store, &map, warm.as_ref(), "following");
        }
        if store.get(FAILOVER_REQUEST_KEY).context("reading the failover request")?.is_some() {
            break "requested";
        }
        if !args.manual && map.is_based() && matches!(lease.poll(&*store), Ok(LeaseStatus::Expired { .. })) {
            break "lease-expired";
        }
        std::thread::sleep(poll);
    };
    let decided = Instant::now();
    if !args.json {
        eprintln!("vmtier secondary: failing over ({reason})");
    }
    let writer = LogWriter::claim(store.clone(), &super::holder_name()).context("claiming the log for the failover")?;
    let epoch = writer.epoch();
    let mut check_log = args.check_log.as_deref().map(CheckLog::open).transpose()?;
    if let Some(c) = check_log.as_mut() {
        c.claim(epoch)?;
    }
    store.delete(FAILOVER_REQUEST_KEY).context("clearing the failover request")?;
    follow(&mut reader, &mut map, &store).context("reading the last records")?;
    if !map.is_based() || map.vcpu().is_empty() {
        bail!("the log holds no complete checkpoint to resume from");
    }
    let mut w = match warm {
        Some(w) => w,
        None => Warm::new(map.guest_bytes(), budget)?,
    };
    // Copies a last record replaced are dropped rather than read again: resuming comes first.
    let stale: Vec<u32> = w.pages.iter().filter(|(p, copy)| map.get(**p) != Some(**copy)).map(|(&p, _)| p).collect();
    for p in stale {
        w.drop_page(p)?;
    }
    let freq: HashMap<u32, u8> = map.heat().iter().map(|h| (h.page, h.freq)).collect();
    let report = FailoverReport {
        epoch,
        reason,
        resumed_seq: map.checkpoint().1,
        takeover_s: 0.0,
        warm_pages: w.pages.len(),
        mapped_pages: map.len(),
        warm_coverage: w.coverage(&map),
        warm_bytes_read: w.bytes_read,
        secondary_dram_bytes: (w.pages.len() * PAGE_SIZE) as u64,
    };
    let state = VcpuState::from_bytes(map.vcpu()).context("decoding the checkpoint's vCPU state")?;
    if let Some(c) = check_log.as_mut() {
        let digest = resume_digest(&map, &w, &shared).context("checking the memory to resume with")?;
        let (ckpt_epoch, seq) = map.checkpoint();
        c.resume(ckpt_epoch, seq, digest, epoch)?;
    }
    let inheritance = Inheritance {
        warm: w.pages.keys().map(|&p| (p, freq.get(&p).copied().unwrap_or(50))).collect(),
        stored: map.iter().map(|(p, _, _)| p).collect(),
        memfd: w.memfd,
        source: Arc::new(InheritedMap { map: map.clone(), pages: shared }),
    };
    let engine_cfg = layout.engine_for(epoch, None);
    let engine = Engine::start_inherited(engine_cfg, inheritance).context("starting the new primary's engine")?;
    let report = FailoverReport { takeover_s: decided.elapsed().as_secs_f64(), ..report };
    publish_status(&*store, &map, None, "primary");
    if !args.json {
        eprintln!(
            "vmtier secondary: now primary of epoch {epoch}, resuming checkpoint {} after {:.1} ms ({} warm pages, coverage {:.0}%)",
            report.resumed_seq,
            report.takeover_s * 1e3,
            report.warm_pages,
            report.warm_coverage * 100.0
        );
    }
    let spec = cfg.workload.to_guest_spec()?;
    let served = super::primary::serve(
        &engine,
        writer,
        &spec,
        Start::Resume(Box::new(state)),
        Some(&map),
        &Cadence::from_config(cfg),
        &ServeOptions { check_log: args.check_log.clone(), reclaim: Some(layout.clone()) },
    )?;
    print(&report, &served, args.json)?;
    Ok(served.verified)
}

/// Applies the log's new records to `map`. A secondary that fell so far behind that the primary
/// truncated the records it still needed (`replication.full_every`) starts again from the newest
/// full checkpoint; its warm copies stay, and are checked against the new map as usual.
fn follow(reader: &mut LogReader, map: &mut ReplicaMap, store: &Arc<dyn SharedStore>) -> anyhow::Result<()> {
    let records = match reader.poll() {
        Err(LogError::TruncatedPast { next, oldest }) => {
            tracing::warn!(
                next,
                oldest,
                "fell behind the log's truncation; starting again from its newest full checkpoint"
            );
            *reader = LogReader::open(store.clone())?;
            *map = ReplicaMap::new();
            reader.poll()?
        }
        r => r?,
    };
    for rec in records {
        map.apply_record(&rec).context("applying the replication log")?;
    }
    Ok(())
}

/// The digest ([`check::digest`]) of the memory the VM resumes with: warm pages from this
/// host's DRAM, every other page read (and checksum-checked) from shared storage.
fn resume_digest(map: &ReplicaMap, warm: &Warm, shared: &SharedPages) -> anyhow::Result<u64> {
    let pages = map.guest_bytes() / PAGE_SIZE as u64;
    let zero = check::zero_page_crc();
    let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
    let mut crcs = Vec::with_capacity(pages as usize);
    for page in 0..pages as u32 {
        let crc = if warm.pages.contains_key(&page) {
            warm.memfd.read_at(&mut buf, u64::from(page) * PAGE_SIZE as u64).context("reading a warm page")?;
            crc32c::crc32c(&buf)
        } else {
            match map.get(page) {
                None | Some((Location::Zero, _)) => zero,
                Some((loc, crc)) => {
                    shared.read(loc, crc, &mut buf).with_context(|| format!("reading page {page} at {loc:?}"))?;
                    crc32c::crc32c(&buf)
                }
            }
        };
        crcs.push(crc);
    }
    Ok(check::digest(&crcs))
}

fn print(report: &FailoverReport, served: &Served, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        let v = json!({ "failover": report, "after": served });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "vmtier secondary: failover ({}) to epoch {}: took over in {:.1} ms, first guest progress after {}",
        report.reason,
        report.epoch,
        report.takeover_s * 1e3,
        served.first_progress_s.map_or("-".to_string(), |s| format!("{:.1} ms", s * 1e3))
    );
    println!(
        "  warm pages {} ({:.1} MiB, {:.0}% of the hot list), faults after failover {}, bytes read after {:.1} MiB",
        report.warm_pages,
        report.secondary_dram_bytes as f64 / (1 << 20) as f64,
        report.warm_coverage * 100.0,
        served.engine.faults,
        served.engine.bytes_read as f64 / (1 << 20) as f64
    );
    served.print(false, "new primary")
}

/// Writes the secondary's status for `vmtier status` (best effort).
fn publish_status(store: &dyn SharedStore, map: &ReplicaMap, warm: Option<&Warm>, role: &str) {
    let v = json!({
        "holder": super::holder_name(),
        "role": role,
        "applied_seq": map.seq(),
        "applied_epoch": map.epoch(),
        "mapped_pages": map.len(),
        "hot_pages": map.heat().len(),
        "warm_pages": warm.map_or(0, |w| w.pages.len()),
        "warm_budget_pages": warm.map_or(0, |w| w.budget),
        "warm_coverage": warm.map_or(0.0, |w| w.coverage(map)),
        "unix_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
    });
    if let Err(e) = store.put(STATUS_KEY, v.to_string().as_bytes()) {
        tracing::warn!(error = %e, "could not publish the secondary's status");
    }
}
