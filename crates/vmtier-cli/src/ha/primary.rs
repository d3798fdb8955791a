//! `vmtier primary`: run the micro-VM guest on a replicating engine and commit a checkpoint to
//! the shared log every `replication.interval_ms`.
//!
//! One checkpoint, in three threads:
//! 1. a timer pauses the vCPU every interval;
//! 2. on the vCPU thread, with the vCPU stopped: save its state and [`Engine::capture`] the
//!    pages changed since the last checkpoint (dirty ones copied, the rest as locations), then
//!    resume — this is the guest's pause;
//! 3. the committer thread, with the guest running: [`Engine::persist`] (write and sync the
//!    copies to this epoch's tier 2), commit the record to the log, then
//!    [`Engine::finish_checkpoint`] (free what the commit superseded). It also writes the
//!    heartbeat. A checkpoint still committing when the next pause comes makes that pause skip
//!    its capture (counted), so pauses never wait for storage.
//!
//! A commit refused because a newer epoch claimed the log (a failover happened while this
//! primary was slow or cut off) stops the guest at once: this primary is fenced and can never
//! commit again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use vmtier_engine::{Capture, Engine};
use vmtier_repl::record::{checkpoint_len, page_digest};
use vmtier_repl::{Checkpoint, Heat, Location, LogError, LogWriter, ReplicaMap};
use vmtier_vm::{GuestRam, MicroVm, Start, VmError, VmOptions, run_guest_with};
use vmtier_workload::Progress;

use super::Layout;
use crate::run_config::RunConfig;

/// A checkpoint captured during a pause, on its way to the log.
struct Captured {
    capture: Capture,
    vcpu: Vec<u8>,
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
    /// Checkpoints that failed to commit (storage errors) and were aborted.
    pub failed: u64,
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
        }
    }
}

/// `vmtier primary`: claims the log, starts the engine and the guest, replicates until the guest
/// exits. Returns whether the guest verified everything it read.
pub fn run(cfg: &RunConfig, json_out: bool) -> anyhow::Result<bool> {
    vmtier_vm::kvm_usable().context("replication runs the micro-VM guest, which needs KVM")?;
    let layout = Layout::new(cfg);
    let store = layout.open_store()?;
    let writer = LogWriter::claim(store, &super::holder_name()).context("claiming the replication log")?;
    let epoch = writer.epoch();
    if !json_out {
        eprintln!("vmtier primary: epoch {epoch}, log at {}", layout.shared.url);
    }
    let engine = Engine::start(layout.engine_for(epoch, None)).context("starting the engine")?;
    let spec = cfg.workload.to_guest_spec()?;
    let outcome = serve(&engine, writer, &spec, Start::Boot, None, &Cadence::from_config(cfg), &Progress::new())?;
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

/// Runs the guest on `engine` (booting it, or resuming a checkpoint after a failover) and
/// replicates it through `writer` until it exits. `inherited` is the map the engine's inherited
/// pages come from (after a failover); `progress` receives the guest's progress.
pub fn serve(
    engine: &Engine,
    writer: LogWriter,
    spec: &vmtier_vm::GuestSpec,
    start: Start,
    inherited: Option<&ReplicaMap>,
    cadence: &Cadence,
    progress: &Progress,
) -> anyhow::Result<Served> {
    let epoch = writer.epoch();
    let report = Mutex::new(ReplicationReport { epoch, ..ReplicationReport::default() });
    let pauses = Mutex::new(Vec::<u64>::new());
    let in_flight = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let guest_bytes = engine.config().memory.0;
    let (tx, rx) = mpsc::sync_channel::<Captured>(1);
    let mut vm =
        MicroVm::new(GuestRam::new(engine.guest_words()), VmOptions::default()).context("creating the micro-VM")?;
    let pauser = vm.pauser();
    let started = Instant::now();
    let first_progress = AtomicU64::new(0);
    let out = std::thread::scope(|s| {
        // The timer: one pause per interval.
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(cadence.interval);
                if !done.load(Ordering::Relaxed) {
                    pauser.pause();
                }
            }
        });
        // The committer: persist, commit, finish; heartbeats in between.
        let committer = s.spawn(|| {
            commit_loop(engine, writer, rx, cadence, guest_bytes, inherited, &report, &in_flight, &done, &pauser)
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
            let capture = engine.capture().map_err(|e| VmError::Checkpoint(vmtier_engine::chain(&e)))?;
            pauses.lock().unwrap().push(t.elapsed().as_nanos() as u64);
            in_flight.store(true, Ordering::Release);
            tx.send(Captured { capture, vcpu }).map_err(|_| VmError::Checkpoint("the committer stopped".into()))?;
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

/// The committer thread. See the [module docs](self).
#[allow(clippy::too_many_arguments)]
fn commit_loop(
    engine: &Engine,
    mut writer: LogWriter,
    rx: mpsc::Receiver<Captured>,
    cadence: &Cadence,
    guest_bytes: u64,
    inherited: Option<&ReplicaMap>,
    report: &Mutex<ReplicationReport>,
    in_flight: &AtomicBool,
    done: &AtomicBool,
    pauser: &vmtier_vm::Pauser,
) -> anyhow::Result<()> {
    let epoch = writer.epoch();
    // Every page's term in the map digest as of the last committed checkpoint (0: a zero page,
    // which has none). A stored page's crc may itself be 0, so the term, not the crc, is kept.
    let mut terms: Vec<u64> = vec![0; (guest_bytes / vmtier_engine::PAGE_SIZE as u64) as usize];
    let mut digest = 0u64;
    let mut last_committed = 0u64;
    // The first heartbeat goes out at once: a claim writes none.
    let mut last_heartbeat = Instant::now() - cadence.heartbeat;
    let mut count = 0u64;
    let fence = |e: &LogError, report: &Mutex<ReplicationReport>| {
        let why = format!("{e}");
        report.lock().unwrap().fenced = Some(why.clone());
        pauser.abort(format!("this primary was fenced: {why}"), Duration::from_secs(5));
    };
    loop {
        let job = match rx.recv_timeout(cadence.heartbeat.saturating_sub(last_heartbeat.elapsed())) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(Captured { capture, vcpu }) = job {
            let (copied, meta) = (capture.copied_pages() as u64, capture.metadata_only_pages() as u64);
            let result = (|| -> Result<u64, CommitError> {
                let delta = engine.persist(capture).map_err(|e| CommitError::Engine(vmtier_engine::chain(&e)))?;
                let mut pages = Vec::with_capacity(delta.len());
                let mut new_digest = digest;
                let mut new_terms = Vec::with_capacity(delta.len());
                for d in &delta {
                    let pl = super::page_loc(d, epoch, inherited).map_err(|e| CommitError::Engine(format!("{e:#}")))?;
                    let term = if pl.loc == Location::Zero { 0 } else { page_digest(d.page, pl.crc) };
                    new_digest = new_digest.wrapping_sub(terms[d.page as usize]).wrapping_add(term);
                    new_terms.push((d.page, term));
                    pages.push(pl);
                }
                let heat_full = count.is_multiple_of(cadence.heat_every);
                let heat = if heat_full {
                    engine
                        .heat(cadence.heat_pages)
                        .into_iter()
                        .map(|(page, freq, age)| Heat { page, freq, age })
                        .collect()
                } else {
                    Vec::new()
                };
                let ckpt = Checkpoint {
                    seq: 0,
                    epoch: 0,
                    created_unix_ms: unix_ms(),
                    guest_bytes,
                    full: count == 0,
                    pages,
                    heat_full,
                    heat,
                    digest: new_digest,
                    vcpu,
                };
                let seq = writer.commit(&ckpt)?;
                report.lock().unwrap().log_bytes += checkpoint_len(&ckpt, epoch) as u64;
                digest = new_digest;
                for (p, t) in new_terms {
                    terms[p as usize] = t;
                }
                Ok(seq)
            })();
            match result {
                Ok(seq) => {
                    engine.finish_checkpoint(true)?;
                    last_committed = seq;
                    count += 1;
                    let mut r = report.lock().unwrap();
                    r.committed += 1;
                    r.pages_copied += copied;
                    r.pages_metadata_only += meta;
                }
                Err(e) => {
                    engine.finish_checkpoint(false)?;
                    if let CommitError::Log(e @ LogError::Fenced { .. }) = &e {
                        fence(e, report);
                        in_flight.store(false, Ordering::Release);
                        return Ok(());
                    }
                    report.lock().unwrap().failed += 1;
                    tracing::error!(error = %e, "checkpoint failed; its pages go into the next one");
                }
            }
            in_flight.store(false, Ordering::Release);
        }
        if last_heartbeat.elapsed() >= cadence.heartbeat && !done.load(Ordering::Relaxed) {
            last_heartbeat = Instant::now();
            if let Err(e) = writer.heartbeat(last_committed) {
                if matches!(e, LogError::Fenced { .. }) {
                    fence(&e, report);
                    return Ok(());
                }
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
    Ok(())
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
