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

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use vmtier_engine::{Engine, PAGE_SIZE};
use vmtier_repl::{LeaseStatus, LeaseWatch, SharedStore};
use vmtier_vm::Start;

use super::Layout;
use super::check::CheckLog;
use super::fill::FillReport;
use super::follower::{Follower, Strategy, Takeover};
use super::primary::{Cadence, ServeOptions, Served};
use crate::run_config::RunConfig;

/// Key of a manual failover request (`vmtier failover`).
pub const FAILOVER_REQUEST_KEY: &str = "control/failover";
/// Key of the secondary's status (`vmtier status`).
pub const STATUS_KEY: &str = "status/secondary";

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
    let layout = Layout::new(cfg)?;
    let budget = (cfg.replication.secondary_dram.unwrap_or(cfg.engine.dram).0 / PAGE_SIZE as u64) as usize;
    let mut follower = Follower::open(&layout, budget)?;
    let store = follower.store().clone();
    let mut lease = LeaseWatch::new(Duration::from_millis(cfg.replication.lease_timeout_ms));
    let poll = Duration::from_millis(cfg.replication.poll_ms);
    let mut last_status = Instant::now() - Duration::from_secs(10);
    if !args.json {
        eprintln!(
            "vmtier secondary: following the log at {} with {} warm pages",
            vmtier_storage::object::redact_url(&layout.shared.url),
            budget
        );
    }
    let reason = loop {
        follower.poll()?;
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            publish_status(&*store, &follower, "following");
        }
        if store.get(FAILOVER_REQUEST_KEY).context("reading the failover request")?.is_some() {
            break "requested";
        }
        if !args.manual
            && follower.map().is_based()
            && matches!(lease.poll(&*store, &layout.key), Ok(LeaseStatus::Expired { .. }))
        {
            break "lease-expired";
        }
        std::thread::sleep(poll);
    };
    let decided = Instant::now();
    if !args.json {
        eprintln!("vmtier secondary: failing over ({reason})");
    }
    let mut check_log = args.check_log.as_deref().map(CheckLog::open).transpose()?;
    let writer = follower.claim(&super::holder_name(), |epoch| match check_log.as_mut() {
        Some(c) => c.claim(epoch),
        None => Ok(()),
    })?;
    let epoch = writer.epoch();
    store.delete(FAILOVER_REQUEST_KEY).context("clearing the failover request")?;
    if let Some(c) = check_log.as_mut() {
        let digest = follower.resume_digest().context("checking the memory to resume with")?;
        let (ckpt_epoch, seq) = follower.map().checkpoint();
        c.resume(ckpt_epoch, seq, digest, epoch)?;
    }
    let report = FailoverReport {
        epoch,
        reason,
        resumed_seq: follower.map().checkpoint().1,
        takeover_s: 0.0,
        warm_pages: follower.warm_pages(),
        mapped_pages: follower.map().len(),
        warm_coverage: follower.warm_coverage(),
        warm_bytes_read: follower.warm_bytes_read(),
        secondary_dram_bytes: (follower.warm_pages() * PAGE_SIZE) as u64,
    };
    let Takeover { inheritance, state, fill: fill_plan, .. } = follower.inherit(&Strategy::Warm)?;
    let engine_cfg = layout.engine_for(epoch, None);
    let engine = Engine::start_inherited(engine_cfg, inheritance).context("starting the new primary's engine")?;
    let report = FailoverReport { takeover_s: decided.elapsed().as_secs_f64(), ..report };
    publish_status(&*store, &follower, "primary");
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
    // With `fill_after_failover`, read the pages the warm set lacks behind the resumed guest.
    let pages = super::SharedPages::new(layout.clone());
    let stop_fill = AtomicBool::new(false);
    let fill_plan = if cfg.replication.fill_after_failover { fill_plan } else { Vec::new() };
    let (served, filled) = std::thread::scope(|s| {
        let filler = s.spawn(|| super::fill::run(&engine, &pages, &fill_plan, &stop_fill));
        let served = super::primary::serve(
            &engine,
            writer,
            &spec,
            Start::Resume(Box::new(state)),
            Some(follower.map()),
            &Cadence::from_config(cfg),
            &ServeOptions { check_log: args.check_log.clone(), reclaim: Some(layout.clone()), progress: None },
        );
        stop_fill.store(true, Ordering::Relaxed);
        (served, filler.join().unwrap_or_default())
    });
    let served = served?;
    print(&report, &filled, &served, args.json)?;
    Ok(served.verified)
}

fn print(report: &FailoverReport, filled: &FillReport, served: &Served, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        let v = json!({ "failover": report, "fill": filled, "after": served });
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
    println!(
        "  background fill: {} pages installed in {:.2} s ({:.1} MiB read{}{})",
        filled.installed,
        filled.seconds,
        filled.bytes_read as f64 / (1 << 20) as f64,
        if filled.out_of_frames { ", stopped at the DRAM budget" } else { "" },
        if filled.unreadable > 0 {
            format!(", {} unreadable left to demand faults", filled.unreadable)
        } else {
            String::new()
        }
    );
    served.print(false, "new primary")
}

/// Writes the secondary's status for `vmtier status` (best effort).
fn publish_status(store: &dyn SharedStore, follower: &Follower, role: &str) {
    let map = follower.map();
    let v = json!({
        "holder": super::holder_name(),
        "role": role,
        "applied_seq": map.seq(),
        "applied_epoch": map.epoch(),
        "mapped_pages": map.len(),
        "hot_pages": map.heat().len(),
        "warm_pages": follower.warm_pages(),
        "warm_budget_pages": follower.warm_budget(),
        "warm_coverage": follower.warm_coverage(),
        "unix_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
    });
    if let Err(e) = store.put(STATUS_KEY, v.to_string().as_bytes()) {
        tracing::warn!(error = %e, "could not publish the secondary's status");
    }
}
