//! `vmtier primary`: run the micro-VM guest on a replicating engine and commit a checkpoint to
//! the shared log every `replication.interval_ms`.
//!
//! One checkpoint, in three threads:
//! 1. a timer pauses the vCPU every interval, and (with `replication.preclean`) three quarters
//!    into it precleans (writes to tier 2 early) as many dirty pages next in line for demotion as
//!    were demoted during the last interval;
//! 2. on the vCPU thread, with the vCPU stopped: save its state and [`Engine::capture_logged`] the
//!    pages changed since the last checkpoint (dirty ones copied, the rest as locations), then
//!    resume — this is the guest's pause;
//! 3. the committer thread, with the guest running: [`Engine::persist`] (write and sync the
//!    copies to this epoch's tier 2), commit the record to the log, then
//!    [`Engine::finish_checkpoint`] (free what the commit superseded). A checkpoint still
//!    committing when the next pause comes makes that pause skip its capture (counted), so
//!    pauses never wait for storage.
//!
//! A fourth thread writes the heartbeat every `replication.heartbeat_ms`, independently of the
//! commits: on S3 a commit can take longer than a lease, and a heartbeat written between commits
//! would then let a healthy primary be failed over.
//!
//! A commit refused because a newer epoch claimed the log (a failover happened while this
//! primary was slow or cut off) stops the guest at once: this primary is fenced and can never
//! commit again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use vmtier_engine::{Capture, DeltaPage, Engine, Home};
use vmtier_repl::record::{checkpoint_len, page_digest};
use vmtier_repl::{Checkpoint, Heat, Location, LogError, LogWriter, PageLoc, ReplicaMap};
use vmtier_vm::{GuestRam, MicroVm, Start, VmError, VmOptions, run_guest_with};
use vmtier_workload::Progress;

use super::Layout;
use super::check::{self, CheckLog};
use crate::run_config::RunConfig;
use vmtier_storage::object::ObjectTier;

/// A checkpoint captured during a pause, on its way to the log.
struct Captured {
    capture: Capture,
    vcpu: Vec<u8>,
    /// Digest of guest memory at the pause, when a check log is kept.
    digest: Option<u64>,
}

/// What the replication did, for the summary.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReplicationReport {
    /// This primary's epoch.
    pub epoch: u64,
    /// Checkpoints committed.
    pub committed: u64,
    /// Pauses whose capture was skipped because the previous checkpoint was still committing.
    pub skipped: u64,
    /// Checkpoints that failed before their commit (a tier-2 write or sync) and were aborted:
    /// their pages go into the next one.
    pub failed: u64,
    /// Commit attempts that failed with a store error and were retried.
    pub retried: u64,
    /// Log records deleted after full checkpoints.
    pub truncated: u64,
    /// Guest pause per checkpoint, microseconds: median and 99th percentile.
    pub pause_p50_us: f64,
    /// See `pause_p50_us`.
    pub pause_p99_us: f64,
    /// Pages whose content a checkpoint copied (dirty in DRAM).
    pub pages_copied: u64,
    /// Pages that travelled as metadata only (already on shared storage).
    pub pages_metadata_only: u64,
    /// Bytes of log records written.
    pub log_bytes: u64,
    /// Set if this primary was fenced by a newer epoch.
    pub fenced: Option<String>,
}

/// Settings of the checkpoint loop.
#[derive(Debug, Clone)]
pub struct Cadence {
    /// Time between checkpoints.
    pub interval: Duration,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// Every this many checkpoints carry the full hot list.
    pub heat_every: u64,
    /// Length of the hot list.
    pub heat_pages: usize,
    /// Every this many checkpoints is full, and the log is truncated after it (0: never).
    pub full_every: u64,
    /// Precleaning (claim 2) three quarters into each interval.
    pub preclean: bool,
}

impl Cadence {
    /// The cadence `cfg` asks for.
    pub fn from_config(cfg: &RunConfig) -> Self {
        let r = &cfg.replication;
        let secondary = r.secondary_dram.unwrap_or(cfg.engine.dram);
        Self {
            interval: Duration::from_millis(r.interval_ms),
            heartbeat: Duration::from_millis(r.heartbeat_ms),
            heat_every: u64::from(r.heat_every.max(1)),
            heat_pages: (secondary.0 / vmtier_engine::PAGE_SIZE as u64) as usize,
            full_every: u64::from(r.full_every),
            preclean: r.preclean,
        }
    }
}

/// `vmtier primary`: claims the log, starts the engine and the guest, replicates until the guest
/// exits. Returns whether the guest verified everything it read.
pub fn run(cfg: &RunConfig, json_out: bool, check_log: Option<&Path>) -> anyhow::Result<bool> {
    vmtier_vm::kvm_usable().context("replication runs the micro-VM guest, which needs KVM")?;
    let layout = Layout::new(cfg)?;
    let store = layout.open_store()?;
    let writer = LogWriter::claim(store, &layout.key, &super::holder_name()).context("claiming the replication log")?;
    let epoch = writer.epoch();
    if !json_out {
        eprintln!("vmtier primary: epoch {epoch}, log at {}", vmtier_storage::object::redact_url(&layout.shared.url));
    }
    let engine = Engine::start(layout.engine_for(epoch, None)).context("starting the engine")?;
    let spec = cfg.workload.to_guest_spec()?;
    // A primary that boots afresh on a log with earlier epochs needs none of their stores.
    let options =
        ServeOptions { check_log: check_log.map(Path::to_path_buf), reclaim: Some(layout.clone()), progress: None };
    let outcome = serve(&engine, writer, &spec, Start::Boot, None, &Cadence::from_config(cfg), &options)?;
    outcome.print(json_out, "primary")?;
    Ok(outcome.verified)
}

/// How a replicated run ended.
#[derive(Debug, Serialize)]
pub struct Served {
    /// The guest verified everything it read.
    pub verified: bool,
    /// What went wrong in the guest, if anything.
    pub failure: Option<String>,
    /// Seconds from the start (or resume) to the guest's exit.
    pub elapsed_s: f64,
    /// Seconds from the start (or resume) to the guest's first progress report.
    pub first_progress_s: Option<f64>,
    /// The guest's access throughput.
    pub throughput_accesses_per_s: Option<f64>,
    /// The replication's figures.
    pub replication: ReplicationReport,
    /// The engine's figures at the end.
    pub engine: vmtier_engine::Snapshot,
}

impl Served {
    /// Prints the outcome: JSON, or a few lines for `role`.
    pub fn print(&self, json_out: bool, role: &str) -> anyhow::Result<()> {
        if json_out {
            println!("{}", serde_json::to_string_pretty(self)?);
            return Ok(());
        }
        let r = &self.replication;
        println!(
            "vmtier {role}: epoch {}, {} checkpoints committed ({} skipped, {} failed), pause p50 {:.0} us p99 {:.0} us",
            r.epoch, r.committed, r.skipped, r.failed, r.pause_p50_us, r.pause_p99_us
        );
        println!(
            "  pages copied {}, metadata only {}, log {:.1} MiB",
            r.pages_copied,
            r.pages_metadata_only,
            r.log_bytes as f64 / (1 << 20) as f64
        );
        if let Some(t) = self.throughput_accesses_per_s {
            println!("  guest throughput {t:.0} accesses/s, {:.1} s", self.elapsed_s);
        }
        if let Some(f) = &r.fenced {
            println!("  FENCED: {f}");
        }
        match &self.failure {
            Some(f) => println!("  verified: NO — {f}"),
            None => println!(
                "  verified: {}",
                if self.verified { "yes, every read matched what was written" } else { "NO" }
            ),
        }
        Ok(())
    }
}

/// What [`serve`] does besides replicating.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions<'a> {
    /// Keep a check log here (see [`super::check`]).
    pub check_log: Option<PathBuf>,
    /// Delete the stores (tier 2 and tier 3) of earlier epochs once no committed page is in
    /// them any more.
    pub reclaim: Option<Layout>,
    /// Receives the guest's progress (a bench watches it); the guest's own otherwise.
    pub progress: Option<&'a Progress>,
}

/// Runs the guest on `engine` (booting it, or resuming a checkpoint after a failover) and
/// replicates it through `writer` until it exits. `inherited` is the map the engine's inherited
/// pages come from (after a failover).
pub fn serve(
    engine: &Engine,
    writer: LogWriter,
    spec: &vmtier_vm::GuestSpec,
    start: Start,
    inherited: Option<&ReplicaMap>,
    cadence: &Cadence,
    options: &ServeOptions<'_>,
) -> anyhow::Result<Served> {
    let own_progress = Progress::new();
    let progress = options.progress.unwrap_or(&own_progress);
    let epoch = writer.epoch();
    let check_log = options.check_log.as_deref().map(CheckLog::open).transpose()?;
    let keep_digests = check_log.is_some();
    let report = Mutex::new(ReplicationReport { epoch, ..ReplicationReport::default() });
    let pauses = Mutex::new(Vec::<u64>::new());
    let in_flight = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let guest_bytes = engine.config().memory.0;
    let (tx, rx) = mpsc::sync_channel::<Captured>(1);
    let beater = writer.heartbeater();
    let last_committed = AtomicU64::new(0);
    // KVM's dirty log tracks the guest's writes between checkpoints (`Engine::capture_logged`).
    let mut vm = MicroVm::new(GuestRam::new(engine.guest_words()), VmOptions { dirty_log: true })
        .context("creating the micro-VM")?;
    let pauser = vm.pauser();
    let started = Instant::now();
    let first_progress = AtomicU64::new(0);
    let out = std::thread::scope(|s| {
        // The timer: one pause per interval. Three quarters into it, with `replication.preclean`,
        // claim 2 of the patent: as many dirty pages as were demoted during the last interval,
        // the next in line for demotion, are written to tier 2 early (`Engine::preclean`), so the
        // checkpoint carries them as metadata only and their demotion costs no write.
        s.spawn(|| {
            // Demotions counted so far; only kept (a snapshot per interval) when precleaning.
            let mut demotions = cadence.preclean.then(|| engine.snapshot().demotions);
            while !done.load(Ordering::Relaxed) {
                match demotions.as_mut() {
                    Some(counted) => {
                        std::thread::sleep(cadence.interval * 3 / 4);
                        let now = engine.snapshot().demotions;
                        let due = (now - *counted) as usize;
                        *counted = now;
                        if due > 0
                            && let Err(e) = engine.preclean(due)
                        {
                            tracing::warn!(error = %vmtier_engine::chain(&e), "precleaning failed; those pages stay dirty");
                        }
                        std::thread::sleep(cadence.interval / 4);
                    }
                    None => std::thread::sleep(cadence.interval),
                }
                if !done.load(Ordering::Relaxed) {
                    pauser.pause();
                }
            }
        });
        // The heartbeat, on its own thread so that it keeps its period while a commit waits on
        // slow storage. The first goes out at once: a claim writes none.
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Err(e) = beater.beat(last_committed.load(Ordering::Acquire)) {
                    if matches!(e, LogError::Fenced { .. }) {
                        fence(&e, &report, &pauser);
                        return;
                    }
                    tracing::warn!(error = %e, "heartbeat failed");
                }
                let next = Instant::now() + cadence.heartbeat;
                while !done.load(Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(cadence.heartbeat.min(Duration::from_millis(10)));
                }
            }
        });
        // The committer: persist, commit, finish.
        let committer = s.spawn(|| {
            let ctx = CommitCtx {
                engine,
                cadence,
                guest_bytes,
                inherited,
                report: &report,
                in_flight: &in_flight,
                last_committed: &last_committed,
            };
            let reclaim = options.reclaim.as_ref().map(|layout| Reclaim::new(layout, epoch));
            commit_loop(&ctx, writer, rx, check_log, reclaim, &pauser)
        });
        // Progress: when the guest first moves after the start.
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) && first_progress.load(Ordering::Relaxed) == 0 {
                if progress.done.load(Ordering::Relaxed) > 0 {
                    first_progress.store(started.elapsed().as_nanos().max(1) as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let out = run_guest_with(&mut vm, spec, progress, start, &mut |vm| {
            if in_flight.load(Ordering::Acquire) {
                report.lock().unwrap().skipped += 1;
                return Ok(());
            }
            let t = Instant::now();
            let vcpu = vm.save_vcpu()?.to_bytes();
            let capture = engine
                .capture_logged(&vm.take_dirty_pages()?)
                .map_err(|e| VmError::Checkpoint(vmtier_engine::chain(&e)))?;
            pauses.lock().unwrap().push(t.elapsed().as_nanos() as u64);
            // Outside the measured pause: only crash tests keep a check log.
            let digest = if keep_digests {
                let crcs = engine.content_crcs().map_err(|e| VmError::Checkpoint(vmtier_engine::chain(&e)))?;
                Some(check::digest(&crcs))
            } else {
                None
            };
            in_flight.store(true, Ordering::Release);
            tx.send(Captured { capture, vcpu, digest })
                .map_err(|_| VmError::Checkpoint("the committer stopped".into()))?;
            Ok(())
        });
        done.store(true, Ordering::Relaxed);
        drop(tx);
        let committed = committer.join().map_err(|_| anyhow::anyhow!("the committer thread panicked"))?;
        anyhow::Ok((out, committed))
    })?;
    let (out, committed) = out;
    let mut report = report.into_inner().unwrap();
    committed?;
    let out = match out {
        Ok(o) => o,
        Err(e) if report.fenced.is_some() => {
            tracing::warn!(error = %e, "guest stopped because this primary was fenced");
            return Ok(Served {
                verified: false,
                failure: report.fenced.clone(),
                elapsed_s: started.elapsed().as_secs_f64(),
                first_progress_s: None,
                throughput_accesses_per_s: None,
                replication: report,
                engine: engine.snapshot(),
            });
        }
        Err(e) => return Err(e).context("running the micro-VM"),
    };
    let mut p = pauses.into_inner().unwrap();
    p.sort_unstable();
    let pct = |q: f64| if p.is_empty() { 0.0 } else { p[((p.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0 };
    report.pause_p50_us = pct(0.5);
    report.pause_p99_us = pct(0.99);
    let workload_report = out.to_workload_report(spec.workload);
    let fp = first_progress.load(Ordering::Relaxed);
    Ok(Served {
        verified: out.verified(),
        failure: out.failure(),
        elapsed_s: started.elapsed().as_secs_f64(),
        first_progress_s: (fp > 0).then(|| fp as f64 / 1e9),
        throughput_accesses_per_s: workload_report.map(|r| r.access_throughput_per_sec),
        replication: report,
        engine: engine.snapshot(),
    })
}

/// What the committer thread works with.
struct CommitCtx<'a> {
    engine: &'a Engine,
    cadence: &'a Cadence,
    guest_bytes: u64,
    inherited: Option<&'a ReplicaMap>,
    report: &'a Mutex<ReplicationReport>,
    in_flight: &'a AtomicBool,
    /// The newest committed record, for the heartbeat.
    last_committed: &'a AtomicU64,
}

/// Stops the guest of a fenced primary for good.
fn fence(e: &LogError, report: &Mutex<ReplicationReport>, pauser: &vmtier_vm::Pauser) {
    let why = format!("{e}");
    report.lock().unwrap().fenced = Some(why.clone());
    pauser.abort(format!("this primary was fenced: {why}"), Duration::from_secs(5));
}

/// The committer thread. See the [module docs](self).
fn commit_loop(
    ctx: &CommitCtx<'_>,
    mut writer: LogWriter,
    rx: mpsc::Receiver<Captured>,
    mut check_log: Option<CheckLog>,
    mut reclaim: Option<Reclaim<'_>>,
    pauser: &vmtier_vm::Pauser,
) -> anyhow::Result<()> {
    let CommitCtx { engine, cadence, guest_bytes, inherited, report, in_flight, last_committed } = *ctx;
    let epoch = writer.epoch();
    let mut committed = CommittedMap::new((guest_bytes / vmtier_engine::PAGE_SIZE as u64) as usize);
    let mut digest = 0u64;
    let mut count = 0u64;
    // The newest full checkpoint committed: once the next one commits, the records before it
    // go.
    let mut last_full: Option<u64> = None;
    for Captured { capture, vcpu, digest: memory_digest } in rx {
        let (copied, meta) = (capture.copied_pages() as u64, capture.metadata_only_pages() as u64);
        let full = count == 0 || (cadence.full_every > 0 && count.is_multiple_of(cadence.full_every));
        let result = (|| -> Result<u64, CommitError> {
            let delta = engine.persist(capture).map_err(|e| CommitError::Engine(vmtier_engine::chain(&e)))?;
            let loc =
                |d: &DeltaPage| super::page_loc(d, epoch, inherited).map_err(|e| CommitError::Engine(format!("{e:#}")));
            // The delta with each page's crc as the log records it (an inherited page's from the
            // inherited map), and its location.
            let mut resolved = Vec::with_capacity(delta.len());
            let mut new_digest = digest;
            for d in &delta {
                let pl = loc(d)?;
                let term = if d.home == Home::Zero { 0 } else { page_digest(d.page, pl.crc) };
                new_digest = new_digest.wrapping_sub(committed.term(d.page)).wrapping_add(term);
                resolved.push((DeltaPage { crc: pl.crc, tag: pl.tag, ..*d }, pl));
            }
            let pages = if full {
                // The whole map: the committed one with this delta applied, zero pages left out.
                let changed: HashMap<u32, PageLoc> = resolved.iter().map(|(d, pl)| (d.page, *pl)).collect();
                let mut pages = Vec::with_capacity(committed.len() + changed.len());
                for page in 0..committed.pages() as u32 {
                    match changed.get(&page) {
                        Some(pl) if pl.loc != Location::Zero => pages.push(*pl),
                        Some(_) => {}
                        None => {
                            let d = committed.get(page);
                            if d.home != Home::Zero {
                                pages.push(loc(&d)?);
                            }
                        }
                    }
                }
                pages
            } else {
                resolved.iter().map(|(_, pl)| *pl).collect()
            };
            let heat_full = count.is_multiple_of(cadence.heat_every);
            let heat = if heat_full {
                engine.heat(cadence.heat_pages).into_iter().map(|(page, freq, age)| Heat { page, freq, age }).collect()
            } else {
                Vec::new()
            };
            let ckpt = Checkpoint {
                seq: 0,
                epoch: 0,
                created_unix_ms: unix_ms(),
                guest_bytes,
                full,
                pages,
                heat_full,
                heat,
                digest: new_digest,
                vcpu,
            };
            if let (Some(c), Some(d)) = (check_log.as_mut(), memory_digest) {
                c.capture(epoch, writer.next_seq(), d).map_err(|e| CommitError::Engine(format!("{e:#}")))?;
            }
            let seq = commit_retrying(&mut writer, &ckpt, report)?;
            report.lock().unwrap().log_bytes += checkpoint_len(&ckpt, epoch) as u64;
            digest = new_digest;
            for (d, pl) in &resolved {
                if let Some(r) = reclaim.as_mut() {
                    r.moved(loc(&committed.get(d.page))?.loc, pl.loc);
                }
                committed.set(d);
            }
            Ok(seq)
        })();
        match result {
            Ok(seq) => {
                if let Some(c) = check_log.as_mut() {
                    c.commit(epoch, seq)?;
                }
                engine.finish_checkpoint(true)?;
                last_committed.store(seq, Ordering::Release);
                if let Some(r) = reclaim.as_mut() {
                    r.collect();
                }
                if full {
                    if let Some(previous) = last_full {
                        match writer.truncate_before(previous) {
                            Ok(n) => report.lock().unwrap().truncated += n as u64,
                            Err(e @ LogError::Fenced { .. }) => {
                                fence(&e, report, pauser);
                                in_flight.store(false, Ordering::Release);
                                return Ok(());
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "truncating the log failed; the next full checkpoint tries again")
                            }
                        }
                    }
                    last_full = Some(seq);
                }
                count += 1;
                let mut r = report.lock().unwrap();
                r.committed += 1;
                r.pages_copied += copied;
                r.pages_metadata_only += meta;
            }
            Err(CommitError::Log(e)) => {
                // Fenced (the only log error `commit_retrying` returns). The record may be in the
                // log all the same — a newer epoch claimed while it was being written, and then
                // took it as the head it fenced after — so its copies are not freed: this
                // engine frees nothing ever again.
                fence(&e, report, pauser);
                in_flight.store(false, Ordering::Release);
                return Ok(());
            }
            Err(e @ CommitError::Engine(_)) => {
                // Nothing reached the log: the checkpoint's own copies are freed.
                engine.finish_checkpoint(false)?;
                report.lock().unwrap().failed += 1;
                tracing::error!(error = %e, "checkpoint failed; its pages go into the next one");
            }
        }
        in_flight.store(false, Ordering::Release);
    }
    Ok(())
}

/// Commits `ckpt`, retrying on store errors until the log holds it or refuses it for good
/// ([`LogError::Fenced`], the only error returned). A commit that failed with a store error may
/// still have landed (the write reached the store, the answer did not), so the checkpoint can
/// neither be dropped nor its copies freed: it is committed again — the writer recognises an
/// earlier attempt that landed — while the guest runs on and its pauses skip their captures. A
/// store that stays unreachable ends with a failover, and then with `Fenced`.
fn commit_retrying(
    writer: &mut LogWriter,
    ckpt: &Checkpoint,
    report: &Mutex<ReplicationReport>,
) -> Result<u64, LogError> {
    let mut backoff = Duration::from_millis(10);
    loop {
        match writer.commit(ckpt) {
            Err(e) if !matches!(e, LogError::Fenced { .. }) => {
                report.lock().unwrap().retried += 1;
                tracing::warn!(error = %e, retry_in = ?backoff, "committing the checkpoint failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

/// Reclaiming the stores of earlier epochs: how many committed pages each still holds. Counts
/// start at the first (full) checkpoint, so nothing is deleted before it has committed. An epoch
/// whose store no committed page is in is never needed again: the engine's inherited pages are
/// a subset of the committed ones (a page leaves an inherited copy for good), and a secondary
/// reads what the newest checkpoint names.
struct Reclaim<'a> {
    layout: &'a Layout,
    epoch: u64,
    pages_in: HashMap<u64, usize>,
    reclaimed: std::collections::HashSet<u64>,
}

impl<'a> Reclaim<'a> {
    fn new(layout: &'a Layout, epoch: u64) -> Self {
        Self { layout, epoch, pages_in: HashMap::new(), reclaimed: Default::default() }
    }

    /// A committed page moved from `old` to `new`.
    fn moved(&mut self, old: Location, new: Location) {
        if let Some(s) = store_of(old) {
            let n = self.pages_in.entry(s).or_default();
            *n = n.saturating_sub(1);
        }
        if let Some(s) = store_of(new) {
            *self.pages_in.entry(s).or_default() += 1;
        }
    }

    /// Deletes the stores of earlier epochs that hold no committed page. A failure is logged
    /// and tried again after the next commit.
    fn collect(&mut self) {
        for e in 1..self.epoch {
            if self.reclaimed.contains(&e) || self.pages_in.get(&e).is_some_and(|&n| n > 0) {
                continue;
            }
            let dir = self.layout.tier2_dir(e);
            let tier2 = match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow::Error::new(e)),
                _ => Ok(()),
            };
            let result = tier2.with_context(|| format!("deleting {}", dir.display())).and_then(|()| {
                let t3 = self.layout.tier3(e);
                let url = t3.url.clone();
                ObjectTier::remove_all(t3).with_context(|| format!("deleting the segments under {url}"))
            });
            match result {
                Ok(()) => {
                    tracing::info!(epoch = e, "reclaimed the stores of an earlier epoch");
                    self.reclaimed.insert(e);
                }
                Err(err) => {
                    tracing::warn!(epoch = e, error = %format!("{err:#}"), "reclaiming an earlier epoch's stores failed")
                }
            }
        }
    }
}

/// The epoch whose store holds a copy at `loc` (`None`: zeros).
fn store_of(loc: Location) -> Option<u64> {
    match loc {
        Location::Zero => None,
        Location::Ssd { store, .. } | Location::Object { store, .. } => Some(store),
    }
}

/// The primary's copy of the committed map, from which it builds full checkpoints without
/// asking the engine: every page's home word ([`Home::word`]) and crc, 12 bytes a page.
struct CommittedMap {
    homes: Vec<u64>,
    crcs: Vec<u32>,
    tags: Vec<vmtier_engine::PageTag>,
    /// Non-zero pages.
    len: usize,
}

impl CommittedMap {
    fn new(pages: usize) -> Self {
        Self { homes: vec![0; pages], crcs: vec![0; pages], tags: vec![[0; 16]; pages], len: 0 }
    }

    fn pages(&self) -> usize {
        self.homes.len()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, page: u32) -> DeltaPage {
        let i = page as usize;
        DeltaPage { page, home: Home::from_word(self.homes[i]), crc: self.crcs[i], tag: self.tags[i] }
    }

    /// The page's term in the map digest (a zero page has none; a stored page's crc may itself
    /// be 0, so the home, not the crc, tells).
    fn term(&self, page: u32) -> u64 {
        let i = page as usize;
        if self.homes[i] == 0 { 0 } else { page_digest(page, self.crcs[i]) }
    }

    fn set(&mut self, d: &DeltaPage) {
        let i = d.page as usize;
        let w = d.home.word();
        self.len = self.len + usize::from(w != 0) - usize::from(self.homes[i] != 0);
        self.homes[i] = w;
        self.crcs[i] = d.crc;
        self.tags[i] = d.tag;
    }
}

/// Why a checkpoint did not commit.
#[derive(Debug, thiserror::Error)]
enum CommitError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{0}")]
    Engine(String),
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
