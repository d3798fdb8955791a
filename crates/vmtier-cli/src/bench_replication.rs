//! `vmtier bench replication`: what checkpointing to shared storage costs the guest.
//!
//! The same micro-VM guest, workload and engine configuration, side by side in one run:
//!
//! - **none**: `vmtier vm run --json`, no replication — the reference;
//! - **N ms**: `vmtier primary --json` with `replication.interval_ms = N`, for each interval.
//!
//! Every run is a child process of this executable with a fresh data directory (tiers and the
//! shared log) that is removed when it ends. Runs are interleaved in rounds, and each round starts
//! one system later than the previous, so the drift of a noisy machine spreads over all systems.
//! Reports per system the median over runs of the guest's access-stage throughput, the overhead
//! against the median `none` throughput, checkpoint pause p50/p99, checkpoints committed and
//! skipped, pages per checkpoint, log bytes and the engine's fault counts; and whether the
//! issue's target (overhead ≤ 10% at 100 ms) is met. See `docs/replication.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use vmtier_engine::ByteSize;

use crate::bench_common::{median, print_table};
use crate::run_config::RunConfig;

/// The target: overhead at this interval…
pub const TARGET_INTERVAL_MS: u64 = 100;
/// …at most this many percent of the guest's throughput.
pub const TARGET_MAX_OVERHEAD_PCT: f64 = 10.0;

/// Arguments of `vmtier bench replication`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Guest memory (a multiple of 2 MiB).
    #[arg(long, default_value = "256MiB")]
    memory: ByteSize,
    /// DRAM budget of the engine (the same in every run).
    #[arg(long, default_value = "128MiB")]
    dram: ByteSize,
    /// The micro-VM guest's workload: zipf, uniform, scan, phases, kv or bfs.
    #[arg(long, default_value = "zipf")]
    workload: String,
    /// Accesses of the access stage (the default takes about 30 s without replication on a
    /// 2-vCPU machine).
    #[arg(long, default_value_t = 1_000_000)]
    accesses: u64,
    /// Fraction of accesses that write.
    #[arg(long, default_value_t = 0.3)]
    write_fraction: f64,
    /// Checkpoint intervals to compare with no replication, ms.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100")]
    intervals: Vec<u64>,
    /// Rounds: every system runs once per round; the summary shows medians.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Directory for the runs' data (each run a fresh subdirectory, removed after it). Default:
    /// a temporary directory under ./vmtier-data/bench-replication, removed afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// One run of one system.
#[derive(Debug, Clone, Serialize)]
struct Run {
    /// Round, from 1.
    round: u32,
    /// Checkpoint interval; `None` for no replication.
    interval_ms: Option<u64>,
    /// Wall time of the child process.
    wall_s: f64,
    /// The guest's time from start to exit, as the child measured it.
    elapsed_s: f64,
    /// The guest's access-stage throughput, accesses per second.
    throughput: f64,
    /// The guest verified every value it read.
    verified: bool,
    /// The engine's faults (MISSING: pages brought into DRAM).
    faults: u64,
    /// The engine's write-protect faults (first writes; with replication also the first write
    /// after each capture).
    write_faults: u64,
    /// Bytes the engine wrote to tier 2 (evictions and checkpoint copies).
    tier2_bytes_written: u64,
    /// What replication did; `None` for no replication.
    replication: Option<ReplRun>,
    /// Overhead against the same round's `none` run, percent (positive is slower): a paired
    /// comparison, less exposed to the machine's drift between rounds.
    overhead_pct_vs_round_none: Option<f64>,
}

/// The primary's replication figures of one run.
#[derive(Debug, Clone, Serialize)]
struct ReplRun {
    committed: u64,
    skipped: u64,
    failed: u64,
    pause_p50_us: f64,
    pause_p99_us: f64,
    pages_copied: u64,
    pages_metadata_only: u64,
    log_bytes: u64,
    checkpoint_adopted: u64,
}

/// Medians over the runs of one system.
#[derive(Debug, Clone, Serialize)]
struct Summary {
    /// Checkpoint interval; `null` for no replication.
    interval_ms: Option<u64>,
    runs: usize,
    /// Median guest throughput, accesses per second.
    throughput: f64,
    /// Lowest and highest throughput over the runs.
    throughput_min: f64,
    throughput_max: f64,
    /// `(none - throughput) / none` in percent, against the median `none` throughput: positive
    /// is slower.
    overhead_pct: f64,
    /// The median of each round's overhead against that round's `none`.
    paired_overhead_pct: f64,
    pause_p50_us: Option<f64>,
    pause_p99_us: Option<f64>,
    committed: Option<f64>,
    skipped: Option<f64>,
    pages_copied_per_checkpoint: Option<f64>,
    pages_metadata_only_per_checkpoint: Option<f64>,
    log_mib: Option<f64>,
    faults: f64,
    write_faults: f64,
}

/// Whether the target is met.
#[derive(Debug, Clone, Serialize)]
struct Target {
    interval_ms: u64,
    max_overhead_pct: f64,
    overhead_pct: f64,
    met: bool,
}

/// The configuration of the bench, as the JSON document's `config`.
#[derive(Debug, Clone, Serialize)]
struct BenchConfig {
    memory: ByteSize,
    dram: ByteSize,
    workload: String,
    accesses: u64,
    write_fraction: f64,
    intervals_ms: Vec<u64>,
    runs: u32,
    guest: &'static str,
}

/// The run directory's root and whether it is ours to remove.
struct DataRoot {
    path: PathBuf,
    remove: bool,
}

impl Drop for DataRoot {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl DataRoot {
    fn new(dir: Option<&Path>) -> anyhow::Result<Self> {
        let (path, remove) = match dir {
            Some(d) => (d.to_path_buf(), false),
            None => {
                let nanos =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
                let name = format!("run-{}-{nanos:09}", std::process::id());
                (PathBuf::from("vmtier-data/bench-replication").join(name), true)
            }
        };
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the bench directory {} (choose another with --dir)", path.display()))?;
        let path = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
        Ok(Self { path, remove })
    }
}

/// The system's name in progress lines and tables.
fn system_name(interval_ms: Option<u64>) -> String {
    interval_ms.map_or_else(|| "none".to_string(), |ms| format!("{ms} ms"))
}

/// The configuration file of one run: the same engine and guest for every system; the interval
/// only matters to `vmtier primary`.
fn config_text(args: &Args, data_dir: &Path, interval_ms: u64) -> String {
    format!(
        "data_dir = {data:?}\n\
         [engine]\nmemory = \"{memory}\"\ndram = \"{dram}\"\n\
         [workload]\nguest = \"vm\"\nkind = {kind:?}\naccesses = {accesses}\nwrite_fraction = {wf}\n\
         [replication]\ninterval_ms = {interval_ms}\nkey_file = {key:?}\n",
        data = data_dir.to_string_lossy(),
        key = data_dir.with_extension("key").to_string_lossy(),
        memory = args.memory,
        dram = args.dram,
        kind = args.workload,
        accesses = args.accesses,
        wf = args.write_fraction,
    )
}

/// Checks the arguments, and that a configuration made of them is valid, before any run.
fn validate(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "invalid --runs 0: at least 1");
    anyhow::ensure!(!args.intervals.is_empty(), "--intervals is empty: give at least one interval, e.g. 100");
    let mut seen = args.intervals.clone();
    seen.sort_unstable();
    seen.dedup();
    anyhow::ensure!(seen.len() == args.intervals.len(), "--intervals lists an interval twice: {:?}", args.intervals);
    for &ms in &args.intervals {
        RunConfig::parse(&config_text(args, Path::new("vmtier-data"), ms))
            .with_context(|| format!("the bench's configuration at interval {ms} ms (check the flags)"))?;
    }
    Ok(())
}

/// The last `n` lines of `bytes`.
fn tail(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = s.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    if tail.is_empty() { "(stderr was empty)".into() } else { tail }
}

/// A number at `path` in `v`.
fn num(v: &Value, path: &[&str]) -> anyhow::Result<f64> {
    let mut at = v;
    for k in path {
        at = at.get(k).with_context(|| format!("its JSON has no `{}`", path.join(".")))?;
    }
    at.as_f64().with_context(|| format!("its JSON's `{}` is not a number: {at}", path.join(".")))
}

/// Runs one system in a child process in a fresh directory under `root`.
fn run_one(args: &Args, root: &Path, round: u32, interval_ms: Option<u64>) -> anyhow::Result<Run> {
    let name = system_name(interval_ms);
    let label = format!("round {round}/{}, {name}", args.runs);
    let dir = root.join(format!("round{round}-{}", interval_ms.map_or("none".into(), |ms| format!("{ms}ms"))));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("bench.toml");
    std::fs::write(&config, config_text(args, &dir.join("data"), interval_ms.unwrap_or(TARGET_INTERVAL_MS)))
        .with_context(|| format!("writing {}", config.display()))?;
    vmtier_repl::ClusterKey::generate(&dir.join("data.key"))?;
    let exe = std::env::current_exe().context("finding this executable to run the bench's children")?;
    let sub: &[&str] = if interval_ms.is_some() { &["primary"] } else { &["vm", "run"] };
    let command = format!("vmtier {} --config {} --json", sub.join(" "), config.display());
    eprintln!("bench replication: {label}: running `{command}`");
    let t = Instant::now();
    let out: std::io::Result<Output> =
        Command::new(&exe).args(sub).arg("--config").arg(&config).arg("--json").stdin(Stdio::null()).output();
    let wall_s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.with_context(|| format!("{label}: starting `{}`", exe.display()))?;
    let json: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    let Some(v) = json.filter(|_| out.status.success()) else {
        let why = match serde_json::from_slice::<Value>(&out.stdout).ok() {
            Some(v) if v.get("verified") == Some(&Value::Bool(false)) => format!(
                "the guest did not verify what it read ({})",
                v.get("failure").and_then(Value::as_str).unwrap_or("no failure recorded")
            ),
            _ => format!("it exited with {}", out.status),
        };
        anyhow::bail!(
            "{label}: `{command}` failed after {wall_s:.1} s: {why}; the last lines of its stderr:\n{}",
            tail(&out.stderr, 15)
        );
    };
    let parse = || -> anyhow::Result<Run> {
        let verified = v.get("verified").and_then(Value::as_bool).context("its JSON has no `verified`")?;
        // `vm run` prints the engine's snapshot at the top level, `primary` under `engine`.
        let engine = if interval_ms.is_some() { v.get("engine").context("its JSON has no `engine`")? } else { &v };
        let replication = match interval_ms {
            None => None,
            Some(_) => {
                let r = |k: &str| num(&v, &["replication", k]);
                Some(ReplRun {
                    committed: r("committed")? as u64,
                    skipped: r("skipped")? as u64,
                    failed: r("failed")? as u64,
                    pause_p50_us: r("pause_p50_us")?,
                    pause_p99_us: r("pause_p99_us")?,
                    pages_copied: r("pages_copied")? as u64,
                    pages_metadata_only: r("pages_metadata_only")? as u64,
                    log_bytes: r("log_bytes")? as u64,
                    checkpoint_adopted: num(engine, &["checkpoint_adopted"])? as u64,
                })
            }
        };
        Ok(Run {
            round,
            interval_ms,
            wall_s,
            elapsed_s: num(&v, &["elapsed_s"])?,
            throughput: num(&v, &["throughput_accesses_per_s"])?,
            verified,
            faults: num(engine, &["faults"])? as u64,
            write_faults: num(engine, &["write_faults"])? as u64,
            tier2_bytes_written: num(engine, &["tier2_bytes_written"])? as u64,
            replication,
            overhead_pct_vs_round_none: None,
        })
    };
    let run = parse().with_context(|| format!("{label}: reading the output of `{command}`"))?;
    anyhow::ensure!(run.verified, "{label}: `{command}` reported an unverified guest");
    eprintln!("bench replication: {label}: {wall_s:.1} s, {:.0} accesses/s", run.throughput);
    Ok(run)
}

/// Sets each run's overhead against its round's `none` run.
fn pair_with_rounds(runs: &mut [Run]) {
    let none: Vec<(u32, f64)> =
        runs.iter().filter(|r| r.interval_ms.is_none()).map(|r| (r.round, r.throughput)).collect();
    for r in runs.iter_mut() {
        r.overhead_pct_vs_round_none =
            none.iter().find(|(round, _)| *round == r.round).map(|(_, n)| (n - r.throughput) / n * 100.0);
    }
}

/// The medians of each system's runs; `systems[0]` is `none`.
fn summarize(systems: &[Option<u64>], runs: &[Run]) -> Vec<Summary> {
    let of = |s: Option<u64>| runs.iter().filter(move |r| r.interval_ms == s);
    let med = |v: Vec<f64>| median(&v).unwrap_or(f64::NAN);
    let none = med(of(None).map(|r| r.throughput).collect());
    systems
        .iter()
        .map(|&s| {
            let t: Vec<f64> = of(s).map(|r| r.throughput).collect();
            let throughput = med(t.clone());
            let repl: Vec<&ReplRun> = of(s).filter_map(|r| r.replication.as_ref()).collect();
            let rm = |f: &dyn Fn(&ReplRun) -> f64| (!repl.is_empty()).then(|| med(repl.iter().map(|r| f(r)).collect()));
            let per_ckpt = |n: u64, r: &ReplRun| if r.committed == 0 { 0.0 } else { n as f64 / r.committed as f64 };
            Summary {
                interval_ms: s,
                runs: t.len(),
                throughput,
                throughput_min: t.iter().copied().fold(f64::INFINITY, f64::min),
                throughput_max: t.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                overhead_pct: (none - throughput) / none * 100.0,
                paired_overhead_pct: med(of(s).filter_map(|r| r.overhead_pct_vs_round_none).collect()),
                pause_p50_us: rm(&|r| r.pause_p50_us),
                pause_p99_us: rm(&|r| r.pause_p99_us),
                committed: rm(&|r| r.committed as f64),
                skipped: rm(&|r| r.skipped as f64),
                pages_copied_per_checkpoint: rm(&|r| per_ckpt(r.pages_copied, r)),
                pages_metadata_only_per_checkpoint: rm(&|r| per_ckpt(r.pages_metadata_only, r)),
                log_mib: rm(&|r| r.log_bytes as f64 / (1u64 << 20) as f64),
                faults: med(of(s).map(|r| r.faults as f64).collect()),
                write_faults: med(of(s).map(|r| r.write_faults as f64).collect()),
            }
        })
        .collect()
}

/// Runs the comparison and prints it.
pub fn run(args: &Args) -> anyhow::Result<()> {
    vmtier_vm::kvm_usable().context("the replication bench runs the micro-VM guest, which needs KVM")?;
    validate(args)?;
    let root = DataRoot::new(args.dir.as_deref())?;
    let systems: Vec<Option<u64>> = std::iter::once(None).chain(args.intervals.iter().copied().map(Some)).collect();
    let mut runs = Vec::new();
    let started = Instant::now();
    for round in 1..=args.runs {
        // Each round starts one system later, so no system always runs first (or last).
        for i in 0..systems.len() {
            let s = systems[(i + round as usize - 1) % systems.len()];
            runs.push(run_one(args, &root.path, round, s)?);
        }
    }
    eprintln!("bench replication: {} runs in {:.0} s", runs.len(), started.elapsed().as_secs_f64());
    pair_with_rounds(&mut runs);
    let summary = summarize(&systems, &runs);
    let target = summary.iter().find(|s| s.interval_ms == Some(TARGET_INTERVAL_MS)).map(|s| Target {
        interval_ms: TARGET_INTERVAL_MS,
        max_overhead_pct: TARGET_MAX_OVERHEAD_PCT,
        overhead_pct: s.overhead_pct,
        met: s.overhead_pct <= TARGET_MAX_OVERHEAD_PCT,
    });
    let config = BenchConfig {
        memory: args.memory,
        dram: args.dram,
        workload: args.workload.clone(),
        accesses: args.accesses,
        write_fraction: args.write_fraction,
        intervals_ms: args.intervals.clone(),
        runs: args.runs,
        guest: "micro-vm",
    };
    if args.json {
        let doc = serde_json::json!({ "config": config, "runs": runs, "summary": summary, "target": target });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print_summary(args, &summary, target.as_ref());
    Ok(())
}

fn print_summary(args: &Args, summary: &[Summary], target: Option<&Target>) {
    println!(
        "replication overhead: micro-VM guest, {} memory, {} DRAM, {} with {} accesses (write fraction {}); \
         medians of {} runs",
        args.memory, args.dram, args.workload, args.accesses, args.write_fraction, args.runs
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"));
    let rows: Vec<Vec<String>> = summary
        .iter()
        .map(|s| {
            vec![
                system_name(s.interval_ms),
                format!("{:.0}", s.throughput),
                format!("{:.0}-{:.0}", s.throughput_min, s.throughput_max),
                if s.interval_ms.is_none() { "-".into() } else { format!("{:+.1}%", s.overhead_pct) },
                if s.interval_ms.is_none() { "-".into() } else { format!("{:+.1}%", s.paired_overhead_pct) },
                opt(s.pause_p50_us, 0),
                opt(s.pause_p99_us, 0),
                opt(s.committed, 0),
                opt(s.skipped, 0),
                opt(s.pages_copied_per_checkpoint, 1),
                opt(s.pages_metadata_only_per_checkpoint, 1),
                opt(s.log_mib, 2),
                format!("{:.0}", s.faults),
                format!("{:.0}", s.write_faults),
            ]
        })
        .collect();
    print_table(
        &[
            "interval",
            "accesses/s",
            "range",
            "overhead",
            "paired",
            "pause p50 us",
            "pause p99 us",
            "committed",
            "skipped",
            "copied/ckpt",
            "meta-only/ckpt",
            "log MiB",
            "faults",
            "write faults",
        ],
        &rows,
    );
    match target {
        Some(t) => println!(
            "target: overhead <= {:.0}% at {} ms checkpoints: {} ({:+.1}%)",
            t.max_overhead_pct,
            t.interval_ms,
            if t.met { "met" } else { "NOT met" },
            t.overhead_pct
        ),
        None => println!(
            "target: overhead <= {TARGET_MAX_OVERHEAD_PCT:.0}% at {TARGET_INTERVAL_MS} ms: not measured (add 100 to --intervals)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(round: u32, interval_ms: Option<u64>, throughput: f64, committed: u64) -> Run {
        Run {
            round,
            interval_ms,
            wall_s: 1.0,
            elapsed_s: 1.0,
            throughput,
            verified: true,
            faults: 10,
            write_faults: 20,
            tier2_bytes_written: 0,
            replication: interval_ms.map(|_| ReplRun {
                committed,
                skipped: 1,
                failed: 0,
                pause_p50_us: 100.0,
                pause_p99_us: 300.0,
                pages_copied: committed * 4,
                pages_metadata_only: committed * 2,
                log_bytes: 1 << 20,
                checkpoint_adopted: 0,
            }),
            overhead_pct_vs_round_none: None,
        }
    }

    #[test]
    fn overhead_is_against_the_median_none() {
        let mut runs = vec![
            run(1, None, 1000.0, 0),
            run(1, Some(100), 950.0, 10),
            run(2, None, 800.0, 0),
            run(2, Some(100), 850.0, 10),
            run(3, None, 900.0, 0),
            run(3, Some(100), 450.0, 10),
        ];
        pair_with_rounds(&mut runs);
        assert_eq!(runs[1].overhead_pct_vs_round_none, Some(5.0));
        assert_eq!(runs[3].overhead_pct_vs_round_none, Some(100.0 * -50.0 / 800.0));
        assert_eq!(runs[5].overhead_pct_vs_round_none, Some(50.0));
        let s = summarize(&[None, Some(100)], &runs);
        assert_eq!(s[0].throughput, 900.0);
        assert_eq!(s[0].overhead_pct, 0.0);
        assert!(s[0].pause_p50_us.is_none() && s[0].committed.is_none());
        assert_eq!(s[1].throughput, 850.0);
        assert!((s[1].overhead_pct - 100.0 * 50.0 / 900.0).abs() < 1e-9, "{}", s[1].overhead_pct);
        assert_eq!((s[1].throughput_min, s[1].throughput_max), (450.0, 950.0));
        assert_eq!(s[1].paired_overhead_pct, 5.0);
        assert_eq!(s[0].paired_overhead_pct, 0.0);
        assert_eq!(s[1].pages_copied_per_checkpoint, Some(4.0));
        assert_eq!(s[1].pages_metadata_only_per_checkpoint, Some(2.0));
        assert_eq!(s[1].log_mib, Some(1.0));
    }

    #[test]
    fn configs_are_valid_and_bad_flags_are_named() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let ok = Cli::parse_from(["x", "--memory", "32MiB", "--dram", "16MiB", "--intervals", "50"]).args;
        validate(&ok).unwrap();
        let twice = Cli::parse_from(["x", "--intervals", "50,50"]).args;
        assert!(format!("{:#}", validate(&twice).unwrap_err()).contains("twice"));
        let bad = Cli::parse_from(["x", "--intervals", "1"]).args;
        assert!(format!("{:#}", validate(&bad).unwrap_err()).contains("replication.interval_ms"));
        let bad = Cli::parse_from(["x", "--memory", "33MiB"]).args;
        assert!(format!("{:#}", validate(&bad).unwrap_err()).contains("engine.memory"));
    }
}
