//! `vmtier bench failover`: the same guest and checkpoint resumed after a failover under five
//! strategies, side by side (see `docs/replication.md`, "Benchmark: `vmtier bench failover`").
//!
//! For each workload, in-process: a replicating primary runs the micro-VM guest while a
//! [`Follower`] follows its log and keeps its warm set, exactly as `vmtier secondary` does.
//! Once the guest's access stage has run `--warmup-s`, the engine's access tracking is recorded
//! for `--reap-window-s` (REAP's working-set file); `--drift-s` later the follower claims the
//! log, which fences the primary (it stops at its next commit or heartbeat), and the primary's
//! throughput over the second before is the pre-failure throughput. Then the claimed checkpoint
//! is resumed once per strategy, each on a fresh engine (full DRAM, own tiers), and the guest's
//! progress is sampled every millisecond for `--after-s`:
//!
//! | strategy | guest memory at resume | clock starts |
//! |---|---|---|
//! | `hot`   | every stored page, read beforehand | after the read (the reference) |
//! | `eager` | every stored page | before the read |
//! | `lazy`  | nothing | at resume |
//! | `reap`  | the recorded working set, read in bulk | before the read |
//! | `warm`  | the follower's warm set (`--secondary-dram`) | at resume |
//!
//! Each resumed guest runs as the new primary `vmtier secondary` would start: its own epoch
//! and tiers, replicating at the primary's checkpoint cadence (so its throughput is comparable
//! with the pre-failure one); after `--after-s` it is stopped by claiming the log again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use vmtier_engine::{ByteSize, Engine, PAGE_SIZE};
use vmtier_vm::{GuestSpec, GuestWorkload, Start};
use vmtier_workload::{Phase, Progress};

use crate::bench_common::{median, print_table};
use crate::ha::fill::FillReport;
use crate::ha::follower::{Follower, Strategy};
use crate::ha::primary::{Cadence, ServeOptions, serve};
use crate::ha::{Layout, SharedPages, holder_name};
use crate::run_config::RunConfig;

/// Accesses between the guest's progress reports: a few milliseconds apart even at the
/// slowest, so a 100 ms window sees dozens; one port-I/O exit per 512 accesses costs the guest
/// a few percent.
const PROGRESS_EVERY: u64 = 512;

/// Arguments of `vmtier bench failover`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Guest memory (a multiple of 2 MiB).
    #[arg(long, default_value = "256MiB")]
    pub memory: ByteSize,
    /// The secondary's DRAM budget for warm pages.
    #[arg(long, default_value = "128MiB")]
    pub secondary_dram: ByteSize,
    /// Workloads, comma-separated: `zipf` (a fixed hot set), `phases` (a hot set that drifts).
    #[arg(long, value_delimiter = ',', default_value = "zipf,phases")]
    pub workloads: Vec<String>,
    /// Strategies, comma-separated: hot, eager, lazy, reap, warm.
    #[arg(long, value_delimiter = ',', default_value = "hot,eager,lazy,reap,warm")]
    pub strategies: Vec<String>,
    /// Runs of each workload (a fresh primary and failover each); the table shows medians.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Seconds of the primary's access stage before REAP's recording window.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,
    /// Length of REAP's recording window, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub reap_window_s: f64,
    /// Seconds from the end of REAP's window to the failure.
    #[arg(long, default_value_t = 3.0)]
    pub drift_s: f64,
    /// Seconds the guest runs after each resume.
    #[arg(long, default_value_t = 4.0)]
    pub after_s: f64,
    /// Window of the throughput measured after resume, milliseconds.
    #[arg(long, default_value_t = 100)]
    pub window_ms: u64,
    /// Accesses per phase of `phases` (how fast its hot set drifts).
    #[arg(long, default_value_t = 2_000_000)]
    pub phase_accesses: u64,
    /// Directory for the shared log and every engine's tiers (removed afterwards).
    #[arg(long, default_value = "vmtier-data/bench-failover")]
    pub dir: PathBuf,
    /// `warm` without the new primary's background fill of the pages its warm set lacks (the
    /// bench runs `warm` with it, as `replication.fill_after_failover` does by default).
    #[arg(long)]
    pub no_fill: bool,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// One strategy's figures after one failover.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The workload.
    pub workload: String,
    /// `hot`, `eager`, `lazy`, `reap` or `warm`.
    pub strategy: &'static str,
    /// Seconds from the failover (the claimed checkpoint in hand) to the guest's first progress
    /// report; `hot` starts its clock after its read.
    pub time_to_first_progress_s: Option<f64>,
    /// Seconds until the guest's throughput over `window_ms` is back to 90% of the pre-failure
    /// throughput (null: not within `after_s`).
    pub time_to_90pct_s: Option<f64>,
    /// Seconds from the failover to the guest's resume (the strategy's reads, the engine's start).
    pub resume_s: f64,
    /// Pages faulted in from shared storage after resume (MISSING faults).
    pub faults_after: u64,
    /// Bytes read from shared storage: before resume (the strategy's reads) and after (demand
    /// faults and, for `warm`, the background fill).
    pub bytes_read: u64,
    /// `warm`: pages the background fill installed after resume before the guest touched them.
    pub filled_pages: usize,
    /// DRAM the secondary held for this guest before the failure.
    pub secondary_dram_bytes: u64,
    /// Pages resident when the guest resumed.
    pub resident_pages_at_resume: usize,
    /// Bytes of the claimed checkpoint's stored (non-zero) pages.
    pub mapped_bytes: u64,
    /// Guest throughput before the failure, accesses/s.
    pub pre_failure_accesses_per_s: f64,
    /// Guest throughput over the last `window_ms` of the run after resume, accesses/s.
    pub final_accesses_per_s: f64,
    /// Which run of the workload.
    pub run: u32,
}

/// `vmtier bench failover`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    vmtier_vm::kvm_usable().context("bench failover runs the micro-VM guest, which needs KVM")?;
    let strategies = parse_strategies(&args.strategies)?;
    if args.secondary_dram.0 > args.memory.0 || args.secondary_dram.0 < PAGE_SIZE as u64 {
        bail!("--secondary-dram {} must be between one page and --memory {}", args.secondary_dram, args.memory);
    }
    let mut rows = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for wl in &args.workloads {
        let workload = match wl.as_str() {
            "zipf" => GuestWorkload::Zipf,
            "phases" => GuestWorkload::Phases,
            other => bail!("unknown workload `{other}` in --workloads; use zipf and/or phases"),
        };
        for run in 0..args.runs.max(1) {
            if !args.json {
                eprintln!("bench failover: {wl}, run {}/{}", run + 1, args.runs.max(1));
            }
            let dir = args.dir.join(format!("{wl}-{run}"));
            let _ = std::fs::remove_dir_all(&dir);
            let out = one_failover(args, wl, workload, &strategies, &dir, run);
            let _ = std::fs::remove_dir_all(&dir);
            match out {
                Ok(r) => rows.extend(r),
                Err(e) => {
                    // The other runs still say something; the command fails at the end.
                    eprintln!("bench failover: {wl}, run {} FAILED: {e:#}", run + 1);
                    failures.push(format!("{wl} run {}: {e:#}", run + 1));
                }
            }
        }
    }
    let _ = std::fs::remove_dir(&args.dir);
    if args.json {
        let doc = serde_json::json!({ "rows": rows, "failures": failures, "args": args_json(args) });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_tables(args, &rows);
    }
    if !failures.is_empty() {
        bail!("{} run(s) failed (their rows are missing): {}", failures.len(), failures.join("; "));
    }
    Ok(())
}

fn args_json(args: &Args) -> serde_json::Value {
    serde_json::json!({
        "memory_bytes": args.memory.0,
        "secondary_dram_bytes": args.secondary_dram.0,
        "runs": args.runs,
        "warmup_s": args.warmup_s,
        "reap_window_s": args.reap_window_s,
        "drift_s": args.drift_s,
        "after_s": args.after_s,
        "window_ms": args.window_ms,
        "phase_accesses": args.phase_accesses,
    })
}

fn parse_strategies(names: &[String]) -> anyhow::Result<Vec<&'static str>> {
    names
        .iter()
        .map(|s| match s.as_str() {
            "hot" => Ok("hot"),
            "eager" => Ok("eager"),
            "lazy" => Ok("lazy"),
            "reap" => Ok("reap"),
            "warm" => Ok("warm"),
            other => bail!("unknown strategy `{other}` in --strategies; use hot, eager, lazy, reap, warm"),
        })
        .collect()
}

/// The configuration of the replicated VM under test: tiers and log under `dir`, the primary
/// with DRAM for the whole guest, the secondary with `secondary_dram`.
fn config(args: &Args, dir: &Path) -> RunConfig {
    let mut cfg = RunConfig::default();
    cfg.data_dir = dir.to_path_buf();
    cfg.engine.memory = args.memory;
    cfg.set_dram(args.memory);
    cfg.engine.tier2.dir = dir.join("tier2");
    cfg.engine.tier3.url = dir.join("tier3").to_string_lossy().into_owned();
    cfg.replication.shared = Some(dir.join("shared").to_string_lossy().into_owned());
    cfg.replication.secondary_dram = Some(args.secondary_dram);
    cfg.replication.key_file = Some(dir.join("cluster.key"));
    cfg
}

/// The guest: runs until stopped (`phases` moves its hot set every `phase_accesses`).
fn spec(args: &Args, workload: GuestWorkload) -> GuestSpec {
    let rounds = 100_000u32;
    GuestSpec {
        workload,
        ops: if workload == GuestWorkload::Phases { args.phase_accesses.max(1) * u64::from(rounds) } else { 1 << 40 },
        seed: 1,
        write_fraction: 0.3,
        zipf_s: 0.99,
        rounds,
        skip_final_check: true,
        trace: None,
        progress_every: PROGRESS_EVERY,
    }
}

/// One primary, one failure, every strategy resumed from the claimed checkpoint.
fn one_failover(
    args: &Args,
    wl: &str,
    workload: GuestWorkload,
    strategies: &[&'static str],
    dir: &Path,
    run: u32,
) -> anyhow::Result<Vec<Row>> {
    let cfg = config(args, dir);
    if let Some(k) = cfg.replication.key_file.as_deref().filter(|k| !k.exists()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        vmtier_repl::ClusterKey::generate(k)?;
    }
    let layout = Layout::new(&cfg)?;
    let spec = spec(args, workload);
    let budget = (args.secondary_dram.0 / PAGE_SIZE as u64) as usize;
    let mut follower = Follower::open(&layout, budget)?;
    let writer =
        vmtier_repl::LogWriter::claim(layout.open_store()?, &layout.key, &holder_name()).context("claiming the log")?;
    let epoch = writer.epoch();
    let engine = Engine::start(layout.engine_for(epoch, None)).context("starting the primary's engine")?;
    let progress = Progress::new();
    let watched = ServeOptions { progress: Some(&progress), ..ServeOptions::default() };
    let cadence = Cadence::from_config(&cfg);
    let poll = Duration::from_millis(cfg.replication.poll_ms);
    let (reap_set, pre_rate) = std::thread::scope(|s| -> anyhow::Result<(Vec<u32>, f64)> {
        let primary = s.spawn(|| serve(&engine, writer, &spec, Start::Boot, None, &cadence, &watched));
        let follow_until = |follower: &mut Follower, until: Instant| -> anyhow::Result<()> {
            while Instant::now() < until {
                if primary.is_finished() {
                    bail!("the primary stopped before the failure");
                }
                follower.poll()?;
                std::thread::sleep(poll);
            }
            Ok(())
        };
        // Populate, then the access stage's warm-up.
        while progress.phase() != Phase::Access {
            follow_until(&mut follower, Instant::now() + poll)?;
        }
        follow_until(&mut follower, Instant::now() + secs(args.warmup_s))?;
        // REAP's recording: every page the engine sees touched in the window.
        let _ = engine.drain_history();
        let mut touched = BTreeSet::new();
        let end = Instant::now() + secs(args.reap_window_s);
        while Instant::now() < end {
            follow_until(&mut follower, Instant::now() + poll)?;
            touched.extend(engine.drain_history().into_iter().map(|e| e.page as u32));
        }
        // Drift, then the failure. The pre-failure throughput is the median over the drift of
        // the throughput in windows of `window_ms` (a shared machine stalls now and then).
        let mut pre = Vec::new();
        let end = Instant::now() + secs(args.drift_s);
        while Instant::now() < end {
            pre.push((Instant::now(), progress.done.load(Ordering::Relaxed)));
            follow_until(&mut follower, Instant::now() + poll)?;
        }
        let window = Duration::from_millis(args.window_ms);
        let rates: Vec<f64> = (0..pre.len()).filter_map(|i| window_rate(&pre, 0, i, window)).collect();
        let pre_rate = median(&rates).context("the drift period is shorter than one throughput window")?;
        follower.poll()?;
        follower.claim(&holder_name(), |_| Ok(()))?;
        let served = primary.join().map_err(|_| anyhow::anyhow!("the primary's thread panicked"))??;
        if served.replication.fenced.is_none() {
            bail!("the primary was not fenced by the failover: {:?}", served.failure);
        }
        Ok((touched.into_iter().collect(), pre_rate))
    })?;
    drop(engine);
    let ws = dir.join(format!("reap-{wl}.ws"));
    write_working_set(&ws, &reap_set)?;
    let mut rows = Vec::new();
    for &name in strategies {
        let strategy = match name {
            "hot" => Strategy::Hot,
            "eager" => Strategy::Eager,
            "lazy" => Strategy::Lazy,
            "reap" => Strategy::Reap(read_working_set(&ws)?),
            _ => Strategy::Warm,
        };
        let name = strategy.name();
        let dram_before = match &strategy {
            Strategy::Hot => (follower.map().len() * PAGE_SIZE) as u64,
            Strategy::Warm => (follower.warm_pages() * PAGE_SIZE) as u64,
            _ => 0,
        };
        // The bench starts one new primary per strategy, each claiming the log for itself; the
        // real failover's one claim is the follower's above. So the clock starts after it.
        let store = layout.open_store()?;
        let writer =
            vmtier_repl::LogWriter::claim(store.clone(), &layout.key, &holder_name()).context("claiming the log")?;
        let new_epoch = writer.epoch();
        let mut started = Instant::now();
        let take = follower.inherit(&strategy)?;
        if strategy == Strategy::Hot {
            started = Instant::now();
        }
        let resident = take.resident_pages;
        let pre_read = take.bytes_read;
        // The new primary: its own epoch and tiers, replicating as `vmtier secondary` does after
        // a failover, so it runs under the same checkpoint cadence as the primary did.
        let engine = Engine::start_inherited(layout.engine_for(new_epoch, None), take.inheritance)
            .context("starting the new primary's engine")?;
        let resume_s = started.elapsed().as_secs_f64();
        let pages = SharedPages::new(layout.clone());
        let fill = (!args.no_fill && !take.fill.is_empty()).then_some((&pages, &take.fill[..]));
        let (samples, filled) =
            resume(&engine, &spec, take.state, writer, follower.map(), &cadence, &store, fill, secs(args.after_s))?;
        let snap = engine.shutdown();
        let _ = std::fs::remove_dir_all(layout.tier2_dir(new_epoch));
        let (first, t90, last_rate) = figures(&samples, started, pre_rate, Duration::from_millis(args.window_ms));
        if !args.json {
            eprintln!(
                "  {name}: resumed after {}, first progress {}, back to 90% {}; write faults {}, sample faults {}, filled {} in {} (reads {} in {} requests)",
                fmt_s(Some(resume_s)),
                fmt_s(first),
                fmt_s(t90),
                snap.write_faults,
                snap.sample_faults,
                filled.installed,
                fmt_s(Some(filled.seconds)),
                fmt_s(Some(filled.read_seconds)),
                filled.requests
            );
        }
        rows.push(Row {
            workload: wl.to_string(),
            strategy: name,
            time_to_first_progress_s: first,
            time_to_90pct_s: t90,
            resume_s,
            faults_after: snap.faults,
            bytes_read: pre_read + snap.bytes_read + filled.bytes_read,
            filled_pages: filled.installed,
            secondary_dram_bytes: dram_before,
            resident_pages_at_resume: resident,
            mapped_bytes: (follower.map().len() * PAGE_SIZE) as u64,
            pre_failure_accesses_per_s: pre_rate,
            final_accesses_per_s: last_rate,
            run,
        });
    }
    Ok(rows)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Resumes the guest on `engine` from `state` as a new primary replicating through `writer`,
/// samples its progress every millisecond for `after`, then stops it the way a failover does:
/// by claiming the log, which fences it at its next commit or heartbeat. Returns `(instant,
/// operations done)` samples.
#[allow(clippy::too_many_arguments)]
fn resume(
    engine: &Engine,
    spec: &GuestSpec,
    state: vmtier_vm::VcpuState,
    writer: vmtier_repl::LogWriter,
    inherited: &vmtier_repl::ReplicaMap,
    cadence: &Cadence,
    store: &std::sync::Arc<dyn vmtier_repl::SharedStore>,
    fill: Option<(&SharedPages, &[vmtier_repl::PageLoc])>,
    after: Duration,
) -> anyhow::Result<(Vec<(Instant, u64)>, FillReport)> {
    let progress = Progress::new();
    let start = Instant::now();
    let key = writer.key().clone();
    let stop_fill = AtomicBool::new(false);
    std::thread::scope(|s| {
        let filler = fill.map(|(pages, plan)| s.spawn(|| crate::ha::fill::run(engine, pages, plan, &stop_fill)));
        let primary = s.spawn(|| {
            serve(
                engine,
                writer,
                spec,
                Start::Resume(Box::new(state)),
                Some(inherited),
                cadence,
                &ServeOptions { progress: Some(&progress), ..ServeOptions::default() },
            )
        });
        let mut samples = Vec::with_capacity((after.as_millis() + 16) as usize);
        while start.elapsed() < after && !primary.is_finished() {
            samples.push((Instant::now(), progress.done.load(Ordering::Relaxed)));
            std::thread::sleep(Duration::from_millis(1));
        }
        stop_fill.store(true, Ordering::Relaxed);
        let filled = match filler {
            Some(f) => f.join().map_err(|_| anyhow::anyhow!("the background fill thread panicked"))?,
            None => FillReport::default(),
        };
        let stopper = vmtier_repl::LogWriter::claim(store.clone(), &key, &holder_name());
        let served = primary.join().map_err(|_| anyhow::anyhow!("the new primary's thread panicked"))??;
        stopper.context("claiming the log to stop the new primary")?;
        if served.replication.fenced.is_none() {
            bail!("the resumed guest stopped before the measurement window ended: {:?}", served.failure);
        }
        Ok((samples, filled))
    })
}

/// From progress samples: seconds from `started` to the first progress, to the first window
/// (`window` long, after the first progress) whose throughput is 90% of `pre_rate`, and the
/// throughput of the last window.
fn figures(
    samples: &[(Instant, u64)],
    started: Instant,
    pre_rate: f64,
    window: Duration,
) -> (Option<f64>, Option<f64>, f64) {
    let Some(f) = samples.iter().position(|&(_, d)| d > 0) else {
        return (None, None, 0.0);
    };
    let first = samples[f].0.duration_since(started).as_secs_f64();
    let rate = |i: usize| window_rate(samples, f, i, window);
    let t90 = (f..samples.len())
        .find(|&i| rate(i).is_some_and(|r| r >= 0.9 * pre_rate))
        .map(|i| samples[i].0.duration_since(started).as_secs_f64());
    let last = rate(samples.len() - 1).unwrap_or(0.0);
    (Some(first), t90, last)
}

/// Throughput over the window ending at sample `i`: from the latest sample at least `window`
/// earlier (and not before sample `from`). `None` if there is none.
fn window_rate(samples: &[(Instant, u64)], from: usize, i: usize, window: Duration) -> Option<f64> {
    let (t, d) = samples[i];
    let j = (from..=i).rev().find(|&j| t.duration_since(samples[j].0) >= window)?;
    let (tj, dj) = samples[j];
    Some(d.saturating_sub(dj) as f64 / t.duration_since(tj).as_secs_f64())
}

/// Writes a working-set file: the page numbers, little-endian `u32`s.
fn write_working_set(path: &Path, pages: &[u32]) -> anyhow::Result<()> {
    let bytes: Vec<u8> = pages.iter().flat_map(|p| p.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing the working-set file {}", path.display()))
}

/// Reads a working-set file written by [`write_working_set`].
fn read_working_set(path: &Path) -> anyhow::Result<Vec<u32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading the working-set file {}", path.display()))?;
    if bytes.len() % 4 != 0 {
        bail!("the working-set file {} is {} bytes, not a whole number of u32 pages", path.display(), bytes.len());
    }
    Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn fmt_s(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{:.0} ms", s * 1e3))
}

/// Medians of one (workload, strategy) over the runs.
struct Med {
    first: Option<f64>,
    t90: Option<f64>,
    faults: f64,
    bytes: f64,
    dram: f64,
    reached: usize,
    runs: usize,
}

fn med(rows: &[&Row]) -> Med {
    let opt = |f: &dyn Fn(&Row) -> Option<f64>| median(&rows.iter().filter_map(|r| f(r)).collect::<Vec<_>>());
    let all = |f: &dyn Fn(&Row) -> f64| median(&rows.iter().map(|r| f(r)).collect::<Vec<_>>()).unwrap_or(0.0);
    Med {
        first: opt(&|r| r.time_to_first_progress_s),
        // A run that never got back counts as infinitely slow: the median stays a bound.
        t90: median(&rows.iter().map(|r| r.time_to_90pct_s.unwrap_or(f64::INFINITY)).collect::<Vec<_>>()),
        faults: all(&|r| r.faults_after as f64),
        bytes: all(&|r| r.bytes_read as f64),
        dram: all(&|r| r.secondary_dram_bytes as f64),
        reached: rows.iter().filter(|r| r.time_to_90pct_s.is_some()).count(),
        runs: rows.len(),
    }
}

fn print_tables(args: &Args, rows: &[Row]) {
    let mib = |b: f64| format!("{:.1}", b / (1 << 20) as f64);
    for wl in &args.workloads {
        let of = |s: &str| -> Vec<&Row> { rows.iter().filter(|r| &r.workload == wl && r.strategy == s).collect() };
        let Some(pre) = median(
            &rows.iter().filter(|r| &r.workload == wl).map(|r| r.pre_failure_accesses_per_s).collect::<Vec<_>>(),
        ) else {
            continue;
        };
        println!(
            "\n{wl}: guest {}, secondary DRAM {}, pre-failure throughput {:.0} accesses/s (median of {} run(s))",
            args.memory,
            args.secondary_dram,
            pre,
            args.runs.max(1)
        );
        let names = ["hot", "eager", "lazy", "reap", "warm"];
        let meds: Vec<(&str, Med)> = names.iter().filter(|n| !of(n).is_empty()).map(|&n| (n, med(&of(n)))).collect();
        let t90 = |n: &str| meds.iter().find(|(m, _)| *m == n).and_then(|(_, m)| m.t90);
        // Against a median that is a bound (runs that never got back), the ratio is one too.
        let cap = args.after_s;
        let ratio = |n: &str, base: &str| match (t90(n), t90(base)) {
            (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => format!("{:.2}x", a / b),
            (Some(a), Some(b)) if !a.is_finite() && b.is_finite() && b > 0.0 => format!(">{:.2}x", cap / b),
            (Some(a), Some(b)) if a.is_finite() && !b.is_finite() && a > 0.0 => format!("<{:.2}x", a / cap),
            _ => "-".into(),
        };
        let table: Vec<Vec<String>> = meds
            .iter()
            .map(|(n, m)| {
                vec![
                    n.to_string(),
                    fmt_s(m.first),
                    match m.t90 {
                        Some(t) if t.is_finite() && m.reached == m.runs => fmt_s(Some(t)),
                        Some(t) if t.is_finite() => format!("{} ({}/{} got back)", fmt_s(Some(t)), m.reached, m.runs),
                        _ => format!("> {:.0} ms ({}/{} got back)", args.after_s * 1e3, m.reached, m.runs),
                    },
                    ratio(n, "hot"),
                    format!("{:.0}", m.faults),
                    mib(m.bytes),
                    mib(m.dram),
                ]
            })
            .collect();
        print_table(
            &["strategy", "first progress", "back to 90%", "vs hot", "faults after", "read MiB", "secondary DRAM MiB"],
            &table,
        );
        // Targets, where both sides were measured.
        let warm = meds.iter().find(|(n, _)| *n == "warm").map(|(_, m)| m);
        let Some(w) = warm else { continue };
        let wt = w.t90.filter(|t| t.is_finite());
        let check = |label: String, ok: Option<bool>| {
            println!("  target {label}: {}", ok.map_or("not measured", |b| if b { "met" } else { "NOT met" }));
        };
        if let Some(h) = t90("hot").filter(|h| h.is_finite()) {
            let half = w.dram <= args.memory.0 as f64 / 2.0;
            check(
                format!(
                    "warm back to 90% <= 1.1x hot with secondary DRAM <= 50% of guest (warm {}, hot {}, {:.0}% of guest)",
                    fmt_s(wt),
                    fmt_s(Some(h)),
                    w.dram / args.memory.0 as f64 * 100.0
                ),
                Some(wt.is_some_and(|wt| wt <= 1.1 * h) && half),
            );
        }
        let faster = |base: &str, x: f64| {
            let Some((_, b)) = meds.iter().find(|(n, _)| *n == base) else { return };
            // A baseline that never got back counts as the whole window: a lower bound.
            let finite = b.t90.filter(|t| t.is_finite());
            let bt = finite.unwrap_or(args.after_s);
            let bound = if finite.is_none() { ">= " } else { "" };
            let ok = wt.map(|wt| bt / wt >= x);
            let r = wt.map_or("-".into(), |wt| format!("{bound}{:.1}x", bt / wt));
            check(format!("warm >= {x}x faster than {base} ({r})"), ok);
        };
        faster("lazy", 5.0);
        if wl == "phases" {
            faster("reap", 2.0);
        }
        println!(
            "  ratios: eager/hot {}, lazy/warm {}, reap/warm {}",
            ratio("eager", "hot"),
            ratio("lazy", "warm"),
            ratio("reap", "warm")
        );
    }
    println!("\n(one shared, noisy machine: compare within this run; see docs/replication.md)");
}
