//! `vmtier bench tiering`: one workload, side by side in one run, on
//!
//! - **all-DRAM**: the guest over plain anonymous memory, no limit — the reference;
//! - **kernel-swap**: the same guest in a memory cgroup (v1) limited to the DRAM share, swapping
//!   to a swap file on the same disk ([`crate::baseline::kernel_swap`]);
//! - **vmtier-<policy>**: the same guest over vmtier's tiered memory with that DRAM budget, tier 2
//!   read and written with `O_DIRECT`;
//!
//! at each DRAM share. Only the access stage is compared (populate and the final check are
//! excluded). Prints the slowdown against all-DRAM and the speedup against the kernel; with
//! `--report DIR` writes `results.json`, `slowdown.svg` and `index.html`. For `scan` it also
//! measures the disk's sequential read rate with `O_DIRECT` and compares each run with the
//! disk-bandwidth bound. See `docs/bench-tiering.md`.

mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use vmtier_engine::{ByteSize, EngineConfig, PolicyKind, PrefetcherKind, Snapshot};
use vmtier_workload::{WorkloadConfig, WorkloadKind};

use crate::baseline::child::{self, ChildEnd, ChildReport, ChildSpec};
use crate::baseline::disk::{self, DiskRate};
use crate::baseline::kernel_swap::{self, KernelSwapConfig, Outcome};
use crate::baseline::signals::InterruptGuard;
use crate::baseline::swapfile::MAX_PRIORITY;
use crate::baseline::{Unavailable, cgroup, human_bytes};
use crate::bench_common::{EngineRun, NEVER_COLD_MS, dram_bytes, median, print_table, run_on_engine};

/// Arguments of `vmtier bench tiering`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Workload: zipf, scan, uniform or phases, with parameters as `zipf:0.99`, `scan:3`,
    /// `phases:0.1:4`; or `trace:FILE`.
    #[arg(long, default_value = "zipf")]
    workload: WorkloadKind,
    /// Guest memory: the workload's footprint.
    #[arg(long, default_value = "4GiB")]
    memory: ByteSize,
    /// Accesses of the access stage (a scan makes passes × pages).
    #[arg(long, default_value_t = 10_000_000)]
    accesses: u64,
    /// Guest threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Fraction of accesses that write the page after verifying it.
    #[arg(long, default_value_t = 1.0)]
    write_fraction: f64,
    /// Seed of the workload.
    #[arg(long, default_value_t = WorkloadConfig::default().seed)]
    seed: u64,
    /// DRAM shares of the footprint to compare at.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75")]
    dram_fractions: Vec<f64>,
    /// vmtier placement policies to run.
    #[arg(long, value_delimiter = ',', default_value = "hotset,threshold")]
    policies: Vec<PolicyKind>,
    /// Directory for vmtier's tiers, the kernel's swap file and the disk probe (one disk).
    #[arg(long, default_value = "vmtier-data/bench")]
    dir: PathBuf,
    /// Rounds of everything, interleaved; the table shows medians.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// `memory.swappiness` of the kernel baseline's cgroup.
    #[arg(long, default_value_t = 60)]
    swappiness: u32,
    /// Size of the file the disk's sequential rates are measured on (0 = do not measure).
    #[arg(long, default_value = "256MiB")]
    disk_probe: ByteSize,
    /// Size of the kernel baseline's swap file (default: the footprint + 25%). Tests use a tiny
    /// one to provoke an OOM kill.
    #[arg(long, hide = true)]
    kernel_swap_size: Option<ByteSize>,
    /// Do not run the kernel-swap baseline.
    #[arg(long)]
    skip_kernel: bool,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 10)]
    progress_secs: u64,
    /// Let vmtier move pages idle this many seconds to tier 3. By default it does not: the
    /// kernel has one swap device, so vmtier gets one too (tier 2, on the same disk).
    #[arg(long, value_name = "SECS")]
    tier3_after_secs: Option<u64>,
    /// vmtier's prefetcher in every vmtier run: none, readahead, stride, leap or history.
    #[arg(long, default_value = "history")]
    prefetch: PrefetcherKind,
    /// Write results.json, slowdown.svg and index.html to this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Name of the all-DRAM reference.
pub const ALL_DRAM: &str = "all-dram";
/// Name of the kernel baseline.
pub const KERNEL: &str = "kernel-swap";

const LIKE_FOR_LIKE: &str = "Every system runs the same in-process guest (vmtier-workload: same pattern, seed and \
                             threads, every read verified); all-dram and kernel-swap run it in a child process over \
                             anonymous memory with 4 KiB pages, vmtier over its tiered memory in this process. Only \
                             the access stage is timed.";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Finished, every read verified.
    Ok,
    /// The kernel's OOM killer ended it.
    OomKilled,
}

/// One run of one system.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `all-dram`, `kernel-swap` or `vmtier-<policy>`.
    pub system: String,
    /// DRAM share of the footprint (1 for all-dram).
    pub dram_fraction: f64,
    /// DRAM limit or budget, bytes.
    pub dram_bytes: u64,
    /// Round, from 1.
    pub round: u32,
    /// How it ended.
    pub status: Status,
    /// Accesses of the access stage.
    pub accesses: u64,
    /// Wall time of the access stage.
    pub access_secs: f64,
    /// `accesses / access_secs`.
    pub accesses_per_sec: f64,
    /// Reads from storage during the access stage: major faults (kernel), tier-2 and tier-3
    /// hits (vmtier).
    pub storage_reads: Option<u64>,
    /// The guest's final check passed.
    pub verified: bool,
    /// Why it failed, for a run that did not finish.
    pub detail: Option<String>,
    /// System-specific counters.
    pub counters: serde_json::Value,
}

/// The medians of one system at one DRAM share.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    /// The system.
    pub system: String,
    /// DRAM share.
    pub dram_fraction: f64,
    /// Runs, and those that finished.
    pub runs: usize,
    /// Runs that finished.
    pub ok_runs: usize,
    /// Median access throughput of the finished runs.
    pub accesses_per_sec: Option<f64>,
    /// Median access-stage time.
    pub access_secs: Option<f64>,
    /// all-DRAM throughput / this throughput.
    pub slowdown_vs_all_dram: Option<f64>,
    /// This throughput / the kernel's at the same share.
    pub speedup_vs_kernel: Option<f64>,
    /// Access-stage time / the disk-bandwidth bound (scan only).
    pub vs_disk_bound: Option<f64>,
    /// The disk-bandwidth bound, seconds (scan only).
    pub disk_bound_secs: Option<f64>,
    /// Median storage reads in the access stage.
    pub storage_reads: Option<u64>,
    /// Why runs did not finish.
    pub detail: Option<String>,
}

/// The whole result, as `--json` prints it and `results.json` holds it.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// What ran.
    pub config: serde_json::Value,
    /// The disk's sequential rates.
    pub disk: Option<DiskRate>,
    /// Why the kernel baseline did not run (by `--skip-kernel` or because it cannot here).
    pub kernel_skipped: Option<String>,
    /// The documented reason the machine could not run it, if that is why.
    pub kernel_unavailable: Option<Unavailable>,
    /// What the kernel baseline set up (and tore down) in its last run.
    pub kernel_setup: Option<kernel_swap::Setup>,
    /// Remarks.
    pub notes: Vec<String>,
    /// Every run.
    pub runs: Vec<Run>,
    /// Medians per system and share.
    pub summary: Vec<SummaryRow>,
}

/// Medians per (system, share), slowdowns and speedups. Rows come all-dram first, then per
/// share (ascending) the kernel and the vmtier policies in the order they ran. `scan` gives
/// (footprint, passes, disk read rate MB/s) for the disk-bandwidth bound.
pub fn summarize(runs: &[Run], scan: Option<(u64, u32, f64)>) -> Vec<SummaryRow> {
    let mut keys: Vec<(String, f64)> = Vec::new();
    for r in runs {
        if !keys.iter().any(|(s, f)| *s == r.system && *f == r.dram_fraction) {
            keys.push((r.system.clone(), r.dram_fraction));
        }
    }
    let rank = |s: &str| match s {
        ALL_DRAM => 0,
        KERNEL => 1,
        _ => 2,
    };
    keys.sort_by(|a, b| {
        (rank(&a.0) != 0).cmp(&(rank(&b.0) != 0)).then(a.1.total_cmp(&b.1)).then(rank(&a.0).cmp(&rank(&b.0)))
    });
    let medians = |sys: &str, f: f64| -> (Vec<&Run>, Option<f64>) {
        let rs: Vec<&Run> = runs.iter().filter(|r| r.system == sys && r.dram_fraction == f).collect();
        let ok: Vec<f64> = rs.iter().filter(|r| r.status == Status::Ok).map(|r| r.accesses_per_sec).collect();
        (rs, median(&ok))
    };
    let all_dram = {
        let ok: Vec<f64> = runs
            .iter()
            .filter(|r| r.system == ALL_DRAM && r.status == Status::Ok)
            .map(|r| r.accesses_per_sec)
            .collect();
        median(&ok)
    };
    keys.iter()
        .map(|(sys, f)| {
            let (rs, tput) = medians(sys, *f);
            let ok: Vec<&&Run> = rs.iter().filter(|r| r.status == Status::Ok).collect();
            let secs = median(&ok.iter().map(|r| r.access_secs).collect::<Vec<_>>());
            let reads = median(&ok.iter().filter_map(|r| r.storage_reads).map(|x| x as f64).collect::<Vec<_>>());
            let kernel = if sys == ALL_DRAM || sys == KERNEL { None } else { medians(KERNEL, *f).1 };
            let bound = scan.filter(|_| sys != ALL_DRAM && *f < 1.0).map(|(footprint, passes, mb_s)| {
                disk::bound_secs(disk::scan_storage_bytes(footprint, *f, passes), mb_s)
            });
            SummaryRow {
                system: sys.clone(),
                dram_fraction: *f,
                runs: rs.len(),
                ok_runs: ok.len(),
                accesses_per_sec: tput,
                access_secs: secs,
                slowdown_vs_all_dram: tput.zip(all_dram).map(|(t, d)| d / t),
                speedup_vs_kernel: tput.zip(kernel).map(|(t, k)| t / k),
                vs_disk_bound: secs.zip(bound).filter(|(_, b)| *b > 0.0).map(|(s, b)| s / b),
                disk_bound_secs: bound,
                storage_reads: reads.map(|x| x.round() as u64),
                detail: rs.iter().find_map(|r| r.detail.clone()),
            }
        })
        .collect()
}

fn snapshot_counters(before: &Snapshot, after: &Snapshot, end: &Snapshot) -> serde_json::Value {
    let d = |f: fn(&Snapshot) -> u64| f(after).saturating_sub(f(before));
    serde_json::json!({
        "access_faults": d(|s| s.faults),
        "access_tier2_hits": d(|s| s.tier2_hits),
        "access_tier3_hits": d(|s| s.tier3_hits),
        "access_bytes_read": d(|s| s.bytes_read),
        "access_promotions": d(|s| s.promotions),
        "access_demotions": d(|s| s.demotions),
        "access_fault_around_pages": d(|s| s.fault_around_pages),
        "peak_resident_bytes": end.peak_resident_bytes,
        "dram_budget_bytes": end.dram_budget_bytes,
        "tier2_bytes_written": end.tier2_bytes_written,
        "tier3_bytes_written": end.tier3_bytes_written,
        "io_errors": end.io_errors,
        "corrupt_pages": end.corrupt_pages,
    })
}

/// The row of a child process that completed (all-DRAM or kernel swap); storage reads are its
/// major faults during the access stage. `cgroup` adds the kernel run's cgroup statistics.
fn child_run(
    system: &str,
    dram_fraction: f64,
    dram_bytes: u64,
    round: u32,
    r: &ChildReport,
    cgroup: Option<serde_json::Value>,
) -> Run {
    let mut counters = serde_json::json!({
        "access_major_faults": r.access_major_faults,
        "access_minor_faults": r.access_minor_faults,
        "max_rss_bytes": r.max_rss_bytes,
    });
    if let Some(stats) = cgroup {
        counters["cgroup"] = stats;
    }
    Run {
        system: system.into(),
        dram_fraction,
        dram_bytes,
        round,
        status: Status::Ok,
        accesses: r.report.accesses,
        access_secs: r.report.access_secs,
        accesses_per_sec: r.report.access_throughput_per_sec,
        storage_reads: Some(r.access_major_faults),
        verified: r.report.verified,
        detail: None,
        counters,
    }
}

/// Everything one bench needs to start a run.
struct Ctx<'a> {
    args: &'a Args,
    wl: WorkloadConfig,
    dir: PathBuf,
}

impl Ctx<'_> {
    fn spec(&self, label: &str) -> ChildSpec {
        ChildSpec {
            memory: self.args.memory.0,
            workload: self.wl.clone(),
            label: label.into(),
            progress_secs: self.args.progress_secs,
        }
    }

    fn all_dram(&self, round: u32, label: &str) -> anyhow::Result<Run> {
        let f = child::run_child(&self.spec(label), None)?;
        let r = match f.end {
            ChildEnd::Report(r) => r,
            ChildEnd::Killed { signal } => {
                anyhow::bail!("the all-DRAM child was killed by signal {signal}; its last output:\n{}", f.stderr_tail)
            }
            ChildEnd::Failed { status } => {
                anyhow::bail!("the all-DRAM child failed ({status}); its last output:\n{}", f.stderr_tail)
            }
        };
        Ok(child_run(ALL_DRAM, 1.0, self.args.memory.0, round, &r, None))
    }

    fn kernel(
        &self,
        round: u32,
        fraction: f64,
        label: &str,
    ) -> anyhow::Result<Result<(Run, kernel_swap::KernelRun), Unavailable>> {
        let limit = dram_bytes(self.args.memory.0, fraction);
        let cfg = KernelSwapConfig {
            dir: self.dir.clone(),
            cgroup_root: PathBuf::from(cgroup::MEMORY_ROOT),
            limit_bytes: limit,
            swappiness: self.args.swappiness,
            swap_bytes: self
                .args
                .kernel_swap_size
                .map_or_else(|| kernel_swap::swap_bytes_for(self.args.memory.0), |b| b.0),
            child: self.spec(label),
        };
        let kr = match kernel_swap::run(&cfg)? {
            Ok(kr) => kr,
            Err(u) => return Ok(Err(u)),
        };
        let stats = serde_json::to_value(&kr.stats)?;
        let run = match &kr.outcome {
            Outcome::Completed(r) => child_run(KERNEL, fraction, limit, round, r, Some(stats)),
            Outcome::OomKilled { limit_bytes, oom_kills } => Run {
                system: KERNEL.into(),
                dram_fraction: fraction,
                dram_bytes: limit,
                round,
                status: Status::OomKilled,
                accesses: 0,
                access_secs: 0.0,
                accesses_per_sec: 0.0,
                storage_reads: None,
                verified: false,
                detail: Some(Outcome::describe_oom(*limit_bytes, *oom_kills)),
                counters: serde_json::json!({ "cgroup": stats }),
            },
        };
        Ok(Ok((run, kr)))
    }

    fn vmtier(&self, round: u32, fraction: f64, policy: PolicyKind, label: &str) -> anyhow::Result<Run> {
        let budget = dram_bytes(self.args.memory.0, fraction);
        let mut cfg = EngineConfig::default();
        cfg.memory = self.args.memory;
        cfg.dram = ByteSize(budget);
        cfg.mtm.policy = policy;
        cfg.mtm.cold_after_ms = self.args.tier3_after_secs.map_or(NEVER_COLD_MS, |s| s.saturating_mul(1000));
        cfg.prefetch.kind = self.args.prefetch;
        let every = Duration::from_secs(self.args.progress_secs.max(1));
        let EngineRun { report, before, after, end } = run_on_engine(cfg, &self.dir, &self.wl, None, label, every)?;
        let counters = snapshot_counters(&before, &after, &end);
        let reads =
            counters["access_tier2_hits"].as_u64().unwrap_or(0) + counters["access_tier3_hits"].as_u64().unwrap_or(0);
        Ok(Run {
            system: format!("vmtier-{}", policy_name(policy)),
            dram_fraction: fraction,
            dram_bytes: budget,
            round,
            status: Status::Ok,
            accesses: report.accesses,
            access_secs: report.access_secs,
            accesses_per_sec: report.access_throughput_per_sec,
            storage_reads: Some(reads),
            verified: report.verified,
            detail: None,
            counters,
        })
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The bracketed choice of a sysfs "choice" file, e.g. `madvise` of `always [madvise] never`.
pub fn sysfs_choice(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(&text[start..end])
}

fn validate(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.memory.0 > 0 && args.memory.0.is_multiple_of(2 << 20),
        "--memory {} is not a positive multiple of 2MiB",
        args.memory
    );
    anyhow::ensure!(!args.dram_fractions.is_empty(), "--dram-fractions is empty");
    for &f in &args.dram_fractions {
        anyhow::ensure!(f > 0.0 && f <= 1.0, "--dram-fractions: {f} is not in (0, 1]");
        anyhow::ensure!(
            dram_bytes(args.memory.0, f) >= 1 << 20,
            "--dram-fractions {f} of {} is under 1MiB",
            args.memory
        );
    }
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!((0..=100).contains(&args.swappiness), "--swappiness {} is not in 0..=100", args.swappiness);
    Ok(())
}

/// Runs the comparison and prints it.
pub fn run(args: &Args) -> anyhow::Result<()> {
    validate(args)?;
    let wl = child::workload_config(&args.workload, args.accesses, args.threads, args.seed, args.write_fraction);
    wl.validate((args.memory.0 / 8) as usize)?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize().with_context(|| format!("resolving {}", args.dir.display()))?;
    let _guard = InterruptGuard::install().context("installing the SIGINT/SIGTERM handler")?;
    let ctx = Ctx { args, wl, dir };
    eprintln!("bench tiering: {LIKE_FOR_LIKE}");

    let mut notes = vec![LIKE_FOR_LIKE.to_string()];
    let disk = if args.disk_probe.0 > 0 {
        eprintln!("bench tiering: measuring the disk's sequential rates with O_DIRECT over {}", args.disk_probe);
        let d = disk::measure(&ctx.dir, args.disk_probe.0, 4)?;
        eprintln!(
            "bench tiering: disk write {:.0} MB/s, read {:.0} MB/s (QD1) / {:.0} MB/s ({} threads)",
            d.write_mb_s, d.read_qd1_mb_s, d.read_parallel_mb_s, d.parallel_threads
        );
        Some(d)
    } else {
        None
    };

    let mut kernel_skipped = args.skip_kernel.then(|| "skipped: --skip-kernel".to_string());
    let mut kernel_unavailable = None;
    let mut kernel_setup = None;
    let per_round = 1 + args.dram_fractions.len() * (usize::from(!args.skip_kernel) + args.policies.len());
    let total = per_round * args.rounds as usize;
    let mut runs = Vec::new();
    let mut n = 0;
    let mut step = |what: &str| {
        n += 1;
        let label = format!("bench tiering [{n}/{total}] {what}");
        eprintln!("{label}");
        label
    };
    for round in 1..=args.rounds {
        let label = step(&format!("{ALL_DRAM} (round {round})"));
        runs.push(ctx.all_dram(round, &label)?);
        for &f in &args.dram_fractions {
            let pct = f * 100.0;
            if !args.skip_kernel {
                let label = step(&format!("{KERNEL} at {pct:.0}% DRAM (round {round})"));
                if kernel_skipped.is_some() {
                    eprintln!("{label}: skipped");
                } else {
                    match ctx.kernel(round, f, &label)? {
                        Ok((run, kr)) => {
                            if let Some(d) = &run.detail {
                                eprintln!("{label}: {d}");
                            }
                            for note in kr.notes {
                                if !notes.contains(&note) {
                                    eprintln!("bench tiering: {note}");
                                    notes.push(note);
                                }
                            }
                            kernel_setup = Some(kr.setup);
                            runs.push(run);
                        }
                        Err(u) => {
                            eprintln!("bench tiering: kernel-swap baseline skipped: {u}");
                            kernel_skipped = Some(format!("skipped: {u}"));
                            kernel_unavailable = Some(u);
                        }
                    }
                }
            }
            for &p in &args.policies {
                let name = format!("vmtier-{}", policy_name(p));
                let label = step(&format!("{name} at {pct:.0}% DRAM (round {round})"));
                runs.push(ctx.vmtier(round, f, p, &label)?);
            }
        }
    }

    if let Some(setup) = &kernel_setup {
        notes.push(format!(
            "kernel-swap: the child ran in memory cgroup (v1) {} with memory.limit_in_bytes = the DRAM share and \
             memory.swappiness = {}; swap file {} ({}, priority {MAX_PRIORITY}) on the same file system as vmtier's \
             tiers; zswap enabled: {}. Both were removed after every run.",
            setup.cgroup.display(),
            args.swappiness,
            setup.swap_file.display(),
            human_bytes(setup.swap_bytes),
            read_trimmed("/sys/module/zswap/parameters/enabled").unwrap_or_else(|| "unknown".into()),
        ));
    }
    if let Some(thp) = read_trimmed("/sys/kernel/mm/transparent_hugepage/enabled") {
        notes.push(format!(
            "transparent huge pages: {}; the baseline child asks for none (MADV_NOHUGEPAGE), so every system uses \
             4 KiB pages",
            sysfs_choice(&thp).unwrap_or(&thp)
        ));
    }
    if !args.policies.is_empty() {
        notes.push(format!(
            "vmtier: prefetcher {}; tier 2 is read and written with O_DIRECT; {}",
            args.prefetch,
            match args.tier3_after_secs {
                Some(s) => format!(
                    "pages idle {s} s move to tier 3 (a local directory, through the page cache, so its reads can be \
                     served from DRAM outside the budget)"
                ),
                None => "no page moves to tier 3 (one storage device, like the kernel's)".into(),
            }
        ));
    }
    let scan = match (&args.workload, &disk) {
        (&WorkloadKind::Scan { passes }, Some(d)) => {
            notes.push(format!(
                "disk-bandwidth bound of the scan: {passes} passes × (1 − DRAM share) × footprint / {:.0} MB/s (the \
                 disk's sequential O_DIRECT read rate measured in this run); it ignores write-back of dirty pages \
                 (write fraction {})",
                d.read_mb_s(),
                args.write_fraction
            ));
            Some((args.memory.0, passes, d.read_mb_s()))
        }
        _ => None,
    };
    if let Some(d) = &disk {
        notes.push(format!(
            "disk: {:.0} MB/s sequential O_DIRECT write, {:.0} MB/s read at QD1, {:.0} MB/s with {} threads \
             (1 MiB requests over a fresh {} file)",
            d.write_mb_s,
            d.read_qd1_mb_s,
            d.read_parallel_mb_s,
            d.parallel_threads,
            human_bytes(d.file_bytes)
        ));
    }
    if let Some(s) = &kernel_skipped {
        notes.push(format!("kernel-swap baseline {s}"));
    }
    let summary = summarize(&runs, scan);
    let results = Results {
        config: serde_json::json!({
            "workload": child::kind_arg(&args.workload),
            "memory_bytes": args.memory.0,
            "accesses": args.accesses,
            "threads": args.threads,
            "write_fraction": args.write_fraction,
            "seed": args.seed,
            "dram_fractions": args.dram_fractions,
            "policies": args.policies.iter().map(|&p| policy_name(p)).collect::<Vec<_>>(),
            "prefetch": args.prefetch.name(),
            "tier3_after_secs": args.tier3_after_secs,
            "rounds": args.rounds,
            "swappiness": args.swappiness,
            "dir": ctx.dir,
        }),
        disk,
        kernel_skipped,
        kernel_unavailable,
        kernel_setup,
        notes,
        runs,
        summary,
    };
    let title = format!(
        "vmtier bench tiering: {} over {}, {} threads",
        child::kind_arg(&args.workload),
        args.memory,
        args.threads
    );
    let (headers, rows) = table(&results.summary, scan.is_some());
    if let Some(dir) = &args.report {
        write_report(dir, &title, &results, &headers, &rows)?;
        eprintln!("bench tiering: report written to {}/index.html", dir.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!("{title}; access stage only, median of {} round(s)", args.rounds);
        print_table(&headers, &rows);
        for n in &results.notes {
            println!("note: {n}");
        }
    }
    anyhow::ensure!(
        results.runs.iter().all(|r| r.status != Status::Ok || r.verified),
        "a run did not verify its final check"
    );
    Ok(())
}

fn policy_name(p: PolicyKind) -> &'static str {
    match p {
        PolicyKind::Hotset => "hotset",
        PolicyKind::Threshold => "threshold",
    }
}

fn table(summary: &[SummaryRow], with_bound: bool) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut headers =
        vec!["system", "DRAM", "accesses/s", "access s", "slowdown vs all-DRAM", "speedup vs kernel", "storage reads"];
    if with_bound {
        headers.push("vs disk bound");
    }
    let x = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}x"));
    let rows = summary
        .iter()
        .map(|r| {
            let mut row = vec![
                r.system.clone(),
                format!("{:.0}%", r.dram_fraction * 100.0),
                r.accesses_per_sec.map_or_else(
                    || if r.detail.is_some() { "OOM-killed".to_string() } else { "-".into() },
                    |t| format!("{t:.0}"),
                ),
                r.access_secs.map_or_else(|| "-".into(), |s| format!("{s:.2}")),
                x(r.slowdown_vs_all_dram),
                x(r.speedup_vs_kernel),
                r.storage_reads.map_or_else(|| "-".into(), |n| n.to_string()),
            ];
            if with_bound {
                row.push(x(r.vs_disk_bound));
            }
            row
        })
        .collect();
    (headers, rows)
}

/// The plot's series: one per system except all-dram (the 1x line).
fn series(summary: &[SummaryRow]) -> Vec<report::Series> {
    let mut out: Vec<report::Series> = Vec::new();
    for r in summary.iter().filter(|r| r.system != ALL_DRAM) {
        let p = (r.dram_fraction, r.slowdown_vs_all_dram.unwrap_or(f64::NAN));
        match out.iter_mut().find(|s| s.name == r.system) {
            Some(s) => s.points.push(p),
            None => out.push(report::Series { name: r.system.clone(), points: vec![p] }),
        }
    }
    out
}

fn write_report(
    dir: &Path,
    title: &str,
    results: &Results,
    headers: &[&str],
    rows: &[Vec<String>],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let svg = report::slowdown_svg(title, &series(&results.summary));
    let write = |name: &str, data: &str| {
        let p = dir.join(name);
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))
    };
    write("results.json", &serde_json::to_string_pretty(results)?)?;
    write("slowdown.svg", &svg)?;
    let intro = vec![
        "Access-stage throughput of one workload on every system, side by side in one run. Slowdown is against \
         all-DRAM; speedup is against the Linux kernel's swap at the same DRAM share."
            .to_string(),
    ];
    write("index.html", &report::html(title, &intro, headers, rows, &svg, &results.notes))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(system: &str, f: f64, round: u32, tput: f64) -> Run {
        Run {
            system: system.into(),
            dram_fraction: f,
            dram_bytes: 0,
            round,
            status: Status::Ok,
            accesses: 1000,
            access_secs: 1000.0 / tput,
            accesses_per_sec: tput,
            storage_reads: Some(10),
            verified: true,
            detail: None,
            counters: serde_json::Value::Null,
        }
    }

    #[test]
    fn slowdowns_and_speedups() {
        let mut runs = vec![
            run_of(ALL_DRAM, 1.0, 1, 1000.0),
            run_of(ALL_DRAM, 1.0, 2, 3000.0),
            run_of(KERNEL, 0.5, 1, 50.0),
            run_of("vmtier-hotset", 0.5, 1, 400.0),
            run_of("vmtier-hotset", 0.25, 1, 100.0),
        ];
        let mut oom = run_of(KERNEL, 0.25, 1, 0.0);
        oom.status = Status::OomKilled;
        oom.detail = Some("killed by the OOM killer at limit 16MiB".into());
        runs.push(oom);
        let s = summarize(&runs, None);
        let names: Vec<(&str, f64)> = s.iter().map(|r| (r.system.as_str(), r.dram_fraction)).collect();
        assert_eq!(
            names,
            [(ALL_DRAM, 1.0), (KERNEL, 0.25), ("vmtier-hotset", 0.25), (KERNEL, 0.5), ("vmtier-hotset", 0.5)]
        );
        assert_eq!(s[0].accesses_per_sec, Some(2000.0));
        assert_eq!(s[0].slowdown_vs_all_dram, Some(1.0));
        assert_eq!(s[0].runs, 2);
        // OOM-killed kernel: no throughput, no ratios, the reason kept.
        assert_eq!(s[1].ok_runs, 0);
        assert_eq!(s[1].accesses_per_sec, None);
        assert!(s[1].detail.as_deref().unwrap().contains("OOM"));
        assert_eq!(s[2].speedup_vs_kernel, None);
        assert_eq!(s[2].slowdown_vs_all_dram, Some(20.0));
        assert_eq!(s[3].slowdown_vs_all_dram, Some(40.0));
        assert_eq!(s[3].speedup_vs_kernel, None);
        assert_eq!(s[4].slowdown_vs_all_dram, Some(5.0));
        assert_eq!(s[4].speedup_vs_kernel, Some(8.0));
        assert!(s.iter().all(|r| r.vs_disk_bound.is_none()));
    }

    #[test]
    fn scan_bound_ratio() {
        // 1000 MB footprint... use 1 GiB, 3 passes, 25% DRAM: 3 × 0.75 GiB to read at 1000 MB/s.
        let runs = vec![run_of(ALL_DRAM, 1.0, 1, 1000.0), run_of("vmtier-hotset", 0.25, 1, 0.5)];
        let s = summarize(&runs, Some((1 << 30, 3, 1000.0)));
        let bound = 3.0 * 0.75 * (1u64 << 30) as f64 / 1e9;
        assert!((s[1].disk_bound_secs.unwrap() - bound).abs() < 1e-9);
        assert!((s[1].vs_disk_bound.unwrap() - 2000.0 / bound).abs() < 1e-9);
        assert_eq!(s[0].vs_disk_bound, None);
    }

    #[test]
    fn table_and_series() {
        let runs = vec![
            run_of(ALL_DRAM, 1.0, 1, 1000.0),
            run_of(KERNEL, 0.5, 1, 50.0),
            run_of("vmtier-hotset", 0.5, 1, 400.0),
        ];
        let s = summarize(&runs, None);
        let (h, rows) = table(&s, false);
        assert_eq!(h.len(), rows[0].len());
        assert_eq!(rows[2][0], "vmtier-hotset");
        assert_eq!(rows[2][4], "2.50x");
        assert_eq!(rows[2][5], "8.00x");
        let ser = series(&s);
        assert_eq!(ser.len(), 2);
        assert_eq!(ser[0].name, KERNEL);
        assert_eq!(ser[1].points, vec![(0.5, 2.5)]);
    }

    #[test]
    fn report_files_are_written() {
        let runs = vec![run_of(ALL_DRAM, 1.0, 1, 1000.0), run_of("vmtier-hotset", 0.5, 1, 400.0)];
        let summary = summarize(&runs, None);
        let results = Results {
            config: serde_json::json!({}),
            disk: None,
            kernel_skipped: Some("skipped: --skip-kernel".into()),
            kernel_unavailable: None,
            kernel_setup: None,
            notes: vec!["n".into()],
            runs,
            summary,
        };
        let dir = tempfile::tempdir().unwrap();
        let (h, rows) = table(&results.summary, false);
        write_report(dir.path(), "t", &results, &h, &rows).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap()).unwrap();
        assert_eq!(json["summary"][1]["slowdown_vs_all_dram"], 2.5);
        let svg = std::fs::read_to_string(dir.path().join("slowdown.svg")).unwrap();
        let html = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
        assert!(html.contains(svg.trim_end()));
        assert!(html.contains("<td>vmtier-hotset</td>"));
    }

    #[test]
    fn sysfs_choices() {
        assert_eq!(sysfs_choice("always [madvise] never"), Some("madvise"));
        assert_eq!(sysfs_choice("Y"), None);
    }
}
