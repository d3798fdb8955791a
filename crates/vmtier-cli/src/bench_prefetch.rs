//! `vmtier bench prefetch`: every prefetcher on every workload — generated patterns, the
//! repository's traces of real programs (`traces/sort.lackey.gz`, `traces/xz6.lackey.gz`) and any
//! trace given with `--trace` — with the same engine (memory, DRAM budget, policy, MTM) so that the
//! prefetcher is the only difference. Only the access stage is measured. Prints a table per
//! workload (faults, coverage, accuracy, late and wasted prefetches, runtime and its ratio to
//! `none`), the best prefetcher at an accuracy of at least 90%, and whether the targets are
//! met; `--json` prints one JSON document instead, `--out DIR` writes it to `DIR/results.json`.
//! See the benchmark section of `docs/prefetch.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use vmtier_engine::{ByteSize, EngineConfig, PolicyKind, PrefetcherKind, Snapshot};
use vmtier_workload::{PageTrace, WorkloadConfig, WorkloadKind};

use crate::baseline::human_bytes;
use crate::baseline::signals::InterruptGuard;
use crate::bench_common::{EngineRun, NEVER_COLD_MS, dram_bytes, median, print_table, run_on_engine};

/// The workloads run without `--workloads`.
const DEFAULT_WORKLOADS: &str = "scan:2,stride:3:2,zipf:0.99,phases,sort,xz6";
/// The traces in the repository's `traces/` directory, by name (`traces/NAME.lackey.gz`).
pub const REPO_TRACES: [&str; 2] = ["sort", "xz6"];
/// The accuracy a prefetcher needs to be named best.
pub const BEST_MIN_ACCURACY: f64 = 0.9;
/// Issue 4's target on scan and stride: accuracy and coverage at least these.
pub const SEQ_TARGET: (f64, f64) = (0.9, 0.8);
/// Issue 4's target on the traces of real programs: `history`'s coverage at least this many
/// times `leap`'s, at no worse accuracy.
pub const TRACE_TARGET_RATIO: f64 = 1.5;
const PAGE: u64 = 4096;

/// Arguments of `vmtier bench prefetch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Workloads, comma-separated: generated patterns as for `bench tiering` (`scan:PASSES`,
    /// `stride:PAGES:PASSES`, `zipf:SKEW`, `phases`, `uniform`), the repository's traces by name
    /// (`sort`, `xz6`), or `trace:FILE`.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_WORKLOADS)]
    workloads: Vec<String>,
    /// A page trace (`vmtier trace import`) or lackey output to run as well; repeatable.
    #[arg(long = "trace", value_name = "FILE")]
    traces: Vec<PathBuf>,
    /// Prefetchers to compare; `none`, the baseline of coverage and of the runtime ratio, always
    /// runs.
    #[arg(long, value_delimiter = ',', default_value = "none,readahead,stride,leap,history")]
    prefetchers: Vec<PrefetcherKind>,
    /// Guest memory of the generated workloads (their footprint). A trace's footprint is its
    /// distinct pages.
    #[arg(long, default_value = "64MiB")]
    memory: ByteSize,
    /// DRAM budget as a share of each workload's footprint.
    #[arg(long, default_value_t = 0.25)]
    dram_fraction: f64,
    /// Accesses of zipf, phases and uniform (scan and stride make passes × pages).
    #[arg(long, default_value_t = 80_000)]
    accesses: u64,
    /// Replay at most this many accesses of each trace, from its start (0 = the whole trace).
    #[arg(long, default_value_t = 100_000)]
    trace_accesses: u64,
    /// Guest threads. Each thread has its own page range, and the prefetchers see the faults of
    /// all threads as one stream.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Fraction of accesses that write the page after verifying it (a trace decides itself).
    #[arg(long, default_value_t = 1.0)]
    write_fraction: f64,
    /// Seed of the workloads.
    #[arg(long, default_value_t = WorkloadConfig::default().seed)]
    seed: u64,
    /// Placement policy, the same for every prefetcher.
    #[arg(long, default_value = "hotset")]
    policy: PolicyKind,
    /// Pages a read fault installs together from consecutive tier-2 slots (1 = off, so the
    /// prefetcher is the only read-ahead).
    #[arg(long, default_value_t = 1)]
    fault_around: usize,
    /// Let the engine move pages idle this many seconds to tier 3. By default it does not, so
    /// how long a run takes does not change where its stored pages are.
    #[arg(long, value_name = "SECS")]
    tier3_after_secs: Option<u64>,
    /// Most pages a prefetcher runs ahead of the guest (`[engine.prefetch] max_window_pages`).
    #[arg(long, default_value_t = vmtier_engine::PrefetchConfig::default().max_window_pages)]
    max_window: usize,
    /// Rounds of everything, interleaved; the tables show medians.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Re-read every touched page after the access stage (not measured; every access verifies
    /// the page it reads either way).
    #[arg(long)]
    final_check: bool,
    /// Directory for the engine's tiers.
    #[arg(long, default_value = "vmtier-data/bench-prefetch")]
    dir: PathBuf,
    /// Write the JSON document to DIR/results.json.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the JSON document instead of the tables.
    #[arg(long)]
    json: bool,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 10)]
    progress_secs: u64,
}

/// One workload as it runs.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Its name in the tables: the spec for a generated pattern (`scan:2`), the file's name
    /// without `.lackey`, `.gz`, `.vmtrace` for a trace (`sort`).
    pub name: String,
    /// `scan`, `stride`, `zipf`, `phases`, `uniform` or `trace`.
    pub kind: &'static str,
    /// The trace file.
    pub source: Option<PathBuf>,
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Pages the workload touches: the memory, or a trace's footprint.
    pub footprint_pages: u64,
    /// The DRAM budget.
    pub dram_bytes: u64,
    /// Accesses of the whole trace, when only its start is replayed.
    pub trace_accesses_total: Option<u64>,
    #[serde(skip)]
    workload: WorkloadConfig,
    #[serde(skip)]
    trace: Option<Arc<PageTrace>>,
}

/// One run of one prefetcher on one workload: the access stage's counters.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// The workload's name.
    pub workload: String,
    /// The prefetcher's name.
    pub prefetcher: String,
    /// Round, from 1.
    pub round: u32,
    /// Accesses of the access stage.
    pub accesses: u64,
    /// Its wall time as the guest measured it.
    pub runtime_s: f64,
    /// Demand faults (MISSING): pages not in DRAM when touched, late predictions included.
    pub faults: u64,
    /// Faults served from tier 2 and from tier 3.
    pub tier2_hits: u64,
    /// See `tier2_hits`.
    pub tier3_hits: u64,
    /// Bytes read from tiers 2 and 3 (faults and prefetches).
    pub bytes_read: u64,
    /// Pages the prefetcher brought in.
    pub issued: u64,
    /// Prefetched pages the guest then touched.
    pub used: u64,
    /// Predictions that arrived after the guest had faulted on the page.
    pub late: u64,
    /// Prefetched pages evicted untouched.
    pub wasted: u64,
    /// Predictions dropped (queue full, no frame).
    pub dropped: u64,
}

/// The medians of one prefetcher on one workload, with the metrics against `none`.
#[derive(Debug, Clone, Serialize)]
pub struct PrefetchResult {
    /// The prefetcher's name.
    pub prefetcher: String,
    /// The workload's name.
    pub workload: String,
    /// `used / issued`, 0 when nothing was issued.
    pub accuracy: f64,
    /// `1 − faults / faults with none`, clamped to [0, 1]; 0 for `none`.
    pub coverage: f64,
    /// Demand faults.
    pub faults: u64,
    /// Access-stage time, seconds.
    pub runtime_s: f64,
    /// `runtime_s / runtime_s of none`.
    pub runtime_ratio: Option<f64>,
    /// Pages brought in.
    pub issued: u64,
    /// Of those, touched.
    pub used: u64,
    /// Predictions that came after the fault.
    pub late: u64,
    /// Bytes of prefetched pages evicted untouched.
    pub wasted_bytes: u64,
    /// Predictions dropped.
    pub dropped: u64,
    /// Accesses of the access stage.
    pub accesses: u64,
    /// Rounds the medians are over.
    pub rounds: usize,
}

/// Whether a target of the issue is met on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What it asks.
    pub target: String,
    /// Met or not.
    pub met: bool,
    /// The figures behind the verdict.
    pub detail: String,
}

/// The verdicts on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The workload's name.
    pub workload: String,
    /// The prefetcher with the highest coverage among those with accuracy ≥ 0.9.
    pub best: Option<String>,
    /// Its coverage.
    pub best_coverage: Option<f64>,
    /// The targets that apply to this workload.
    pub targets: Vec<Target>,
}

/// The whole result, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// `prefetch`.
    pub bench: &'static str,
    /// What ran.
    pub config: serde_json::Value,
    /// The workloads.
    pub workloads: Vec<Workload>,
    /// Per workload and prefetcher (medians over rounds).
    pub results: Vec<PrefetchResult>,
    /// Verdicts per workload.
    pub summary: Vec<Summary>,
    /// Every run.
    pub runs: Vec<Run>,
    /// Remarks.
    pub notes: Vec<String>,
}

/// `used / issued`, 0 when nothing was issued, at most 1 (a page prefetched just before the
/// access stage may be used in it).
pub fn accuracy(used: u64, issued: u64) -> f64 {
    if issued == 0 { 0.0 } else { (used as f64 / issued as f64).min(1.0) }
}

/// Faults avoided against `none`: `1 − faults / none_faults` in [0, 1] (0 when `none` did not
/// fault).
pub fn coverage(faults: u64, none_faults: u64) -> f64 {
    if none_faults == 0 { 0.0 } else { (1.0 - faults as f64 / none_faults as f64).clamp(0.0, 1.0) }
}

fn median_u64(v: impl Iterator<Item = u64>) -> u64 {
    median(&v.map(|x| x as f64).collect::<Vec<_>>()).map_or(0, |m| m.round() as u64)
}

/// Medians per (workload, prefetcher), in the order the runs came, with accuracy, coverage and
/// the runtime ratio computed per round against the same round's `none`.
pub fn summarize(runs: &[Run]) -> Vec<PrefetchResult> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in runs {
        if !keys.contains(&(r.workload.as_str(), r.prefetcher.as_str())) {
            keys.push((&r.workload, &r.prefetcher));
        }
    }
    let none_of =
        |w: &str, round: u32| runs.iter().find(|r| r.workload == w && r.prefetcher == "none" && r.round == round);
    keys.iter()
        .map(|&(w, p)| {
            let rs: Vec<&Run> = runs.iter().filter(|r| r.workload == w && r.prefetcher == p).collect();
            let per_round = |f: &dyn Fn(&Run, Option<&Run>) -> Option<f64>| {
                median(&rs.iter().filter_map(|r| f(r, none_of(w, r.round))).collect::<Vec<_>>())
            };
            let m = |f: fn(&Run) -> u64| median_u64(rs.iter().map(|r| f(r)));
            PrefetchResult {
                prefetcher: p.into(),
                workload: w.into(),
                accuracy: per_round(&|r, _| Some(accuracy(r.used, r.issued))).unwrap_or(0.0),
                coverage: if p == "none" {
                    0.0
                } else {
                    per_round(&|r, n| n.map(|n| coverage(r.faults, n.faults))).unwrap_or(0.0)
                },
                faults: m(|r| r.faults),
                runtime_s: median(&rs.iter().map(|r| r.runtime_s).collect::<Vec<_>>()).unwrap_or(0.0),
                runtime_ratio: per_round(&|r, n| n.filter(|n| n.runtime_s > 0.0).map(|n| r.runtime_s / n.runtime_s)),
                issued: m(|r| r.issued),
                used: m(|r| r.used),
                late: m(|r| r.late),
                wasted_bytes: m(|r| r.wasted) * PAGE,
                dropped: m(|r| r.dropped),
                accesses: m(|r| r.accesses),
                rounds: rs.len(),
            }
        })
        .collect()
}

fn pct(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

/// The best prefetcher and the targets for one workload. `kind` is the workload's
/// kind (`scan`, `stride`, `trace`, …).
pub fn judge(workload: &str, kind: &str, results: &[PrefetchResult]) -> Summary {
    let rs: Vec<&PrefetchResult> = results.iter().filter(|r| r.workload == workload).collect();
    let best = rs
        .iter()
        .filter(|r| r.prefetcher != "none" && r.accuracy >= BEST_MIN_ACCURACY)
        .max_by(|a, b| a.coverage.total_cmp(&b.coverage));
    let mut targets = Vec::new();
    let with_p = || rs.iter().filter(|r| r.prefetcher != "none");
    if (kind == "scan" || kind == "stride") && with_p().next().is_some() {
        let (acc, cov) = SEQ_TARGET;
        let met: Vec<&str> =
            with_p().filter(|r| r.accuracy >= acc && r.coverage >= cov).map(|r| r.prefetcher.as_str()).collect();
        let detail = if met.is_empty() {
            let top = with_p().max_by(|a, b| a.coverage.total_cmp(&b.coverage)).expect("one prefetcher");
            format!(
                "not met by any prefetcher; highest coverage: {} ({} at accuracy {})",
                top.prefetcher,
                pct(top.coverage),
                pct(top.accuracy)
            )
        } else {
            format!("met by {}", met.join(", "))
        };
        targets.push(Target {
            target: format!("accuracy ≥ {:.0}% and coverage ≥ {:.0}%", acc * 100.0, cov * 100.0),
            met: !met.is_empty(),
            detail,
        });
    }
    let find = |name: &str| rs.iter().find(|r| r.prefetcher == name);
    if kind == "trace"
        && let (Some(h), Some(l)) = (find("history"), find("leap"))
    {
        let ratio = if l.coverage > 0.0 { Some(h.coverage / l.coverage) } else { None };
        let met = h.coverage > 0.0 && h.coverage >= TRACE_TARGET_RATIO * l.coverage && h.accuracy >= l.accuracy;
        targets.push(Target {
            target: format!("history coverage ≥ {TRACE_TARGET_RATIO}x leap's at no worse accuracy"),
            met,
            detail: format!(
                "history: coverage {} at accuracy {}; leap: coverage {} at accuracy {}; ratio {}",
                pct(h.coverage),
                pct(h.accuracy),
                pct(l.coverage),
                pct(l.accuracy),
                ratio.map_or_else(|| "n/a (leap covers nothing)".into(), |r| format!("{r:.2}x"))
            ),
        });
    }
    Summary {
        workload: workload.into(),
        best: best.map(|r| r.prefetcher.clone()),
        best_coverage: best.map(|r| r.coverage),
        targets,
    }
}

/// Where a trace of the repository is: `traces/NAME.lackey.gz` under the current directory, else
/// in the source tree this binary was built from. `Err` lists where it looked.
fn repo_trace(name: &str) -> Result<PathBuf, String> {
    let file = format!("{name}.lackey.gz");
    let here = Path::new("traces").join(&file);
    let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../traces").join(&file);
    if here.is_file() {
        return Ok(here);
    }
    if source_tree.is_file() {
        return Ok(source_tree.canonicalize().unwrap_or(source_tree));
    }
    Err(format!("looked for {} and {}", here.display(), source_tree.display()))
}

/// A trace's name in the tables: its file name without `.gz`, `.lackey`, `.vmtrace`.
pub fn trace_name(path: &Path) -> String {
    let mut name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    for ext in [".gz", ".lackey", ".vmtrace"] {
        if let Some(stem) = name.strip_suffix(ext)
            && !stem.is_empty()
        {
            name = stem.to_string();
        }
    }
    name
}

/// What a `--workloads` item names.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A generated pattern.
    Generated(WorkloadKind),
    /// A trace file.
    Trace(PathBuf),
    /// One of the repository's traces, by name.
    RepoTrace(&'static str),
}

/// Parses one `--workloads` item.
pub fn parse_item(s: &str) -> anyhow::Result<Item> {
    let s = s.trim();
    if let Some(&name) = REPO_TRACES.iter().find(|&&n| n == s) {
        return Ok(Item::RepoTrace(name));
    }
    match s.parse::<WorkloadKind>() {
        Ok(WorkloadKind::Trace { path }) => Ok(Item::Trace(path)),
        Ok(kind) => Ok(Item::Generated(kind)),
        Err(e) => Err(anyhow::anyhow!(
            "--workloads: {e}; or the name of a trace in the repository's traces/ ({})",
            REPO_TRACES.join(", ")
        )),
    }
}

fn validate(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.dram_fraction > 0.0 && args.dram_fraction <= 1.0,
        "--dram-fraction {} is not in (0, 1]",
        args.dram_fraction
    );
    anyhow::ensure!(
        args.memory.0 > 0 && args.memory.0.is_multiple_of(PAGE),
        "--memory {} is not a positive multiple of 4KiB",
        args.memory
    );
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(!args.prefetchers.is_empty(), "--prefetchers is empty");
    anyhow::ensure!(args.threads >= 1, "--threads must be at least 1");
    Ok(())
}

/// Memory and DRAM budget for a footprint of `pages`: the budget is the share of the footprint,
/// at least the engine's minimum of 64 pages; the memory at least the budget.
fn sizes(pages: u64, fraction: f64) -> (u64, u64) {
    let dram = dram_bytes(pages * PAGE, fraction).max(64 * PAGE);
    ((pages * PAGE).max(dram), dram)
}

/// Resolves `--workloads` and `--trace` into runnable workloads, loading every trace once.
/// A repository trace that is missing is skipped with a note.
fn resolve(args: &Args, notes: &mut Vec<String>) -> anyhow::Result<Vec<Workload>> {
    let mut items: Vec<(&str, Item)> =
        args.workloads.iter().map(|s| Ok((s.trim(), parse_item(s)?))).collect::<anyhow::Result<_>>()?;
    items.extend(args.traces.iter().map(|p| ("", Item::Trace(p.clone()))));
    let base = WorkloadConfig {
        accesses: args.accesses,
        threads: args.threads,
        seed: args.seed,
        write_fraction: args.write_fraction,
        final_check: args.final_check,
        ..WorkloadConfig::default()
    };
    let mut out: Vec<Workload> = Vec::new();
    for (spec, item) in items {
        let (path, name) = match item {
            Item::Generated(_) if out.iter().any(|w| w.name == spec) => continue,
            Item::Generated(kind) => {
                let (memory, dram) = sizes(args.memory.0 / PAGE, args.dram_fraction);
                let workload = WorkloadConfig { kind, ..base.clone() };
                workload.validate((memory / 8) as usize)?;
                out.push(Workload {
                    name: spec.to_string(),
                    kind: workload.kind.name(),
                    source: None,
                    memory_bytes: memory,
                    footprint_pages: memory / PAGE,
                    dram_bytes: dram,
                    trace_accesses_total: None,
                    workload,
                    trace: None,
                });
                continue;
            }
            Item::RepoTrace(name) => match repo_trace(name) {
                Ok(p) => (p, name.to_string()),
                Err(looked) => {
                    let note = format!("trace {name} not found ({looked}); skipped it");
                    eprintln!("bench prefetch: {note}");
                    notes.push(note);
                    continue;
                }
            },
            Item::Trace(p) => {
                let name = trace_name(&p);
                (p, name)
            }
        };
        if out.iter().any(|w| w.source.as_ref() == Some(&path)) {
            continue;
        }
        let mut name = name;
        let mut n = 1;
        while out.iter().any(|w| w.name == name) {
            n += 1;
            name = format!("{}#{n}", trace_name(&path));
        }
        eprintln!("bench prefetch: loading trace {}", path.display());
        let full = PageTrace::load(&path).with_context(|| format!("loading trace {}", path.display()))?;
        let total = full.len() as u64;
        let trace = if args.trace_accesses > 0 && total > args.trace_accesses {
            PageTrace::from_parts(
                full.source(),
                *full.counts(),
                full.runs().to_vec(),
                full.packed()[..args.trace_accesses as usize].to_vec(),
            )
            .with_context(|| format!("cutting trace {}", path.display()))?
        } else {
            full
        };
        let footprint = u64::from(trace.footprint_pages());
        let (memory, dram) = sizes(footprint, args.dram_fraction);
        if dram >= footprint * PAGE {
            notes.push(format!(
                "{name}: the DRAM budget (the engine's minimum of 64 pages) holds the whole footprint of {footprint} \
                 pages, so it does not fault after populating"
            ));
        }
        out.push(Workload {
            name,
            kind: "trace",
            source: Some(path.clone()),
            memory_bytes: memory,
            footprint_pages: footprint,
            dram_bytes: dram,
            trace_accesses_total: (trace.len() as u64 != total).then_some(total),
            workload: WorkloadConfig { kind: WorkloadKind::Trace { path }, ..base.clone() },
            trace: Some(Arc::new(trace)),
        });
    }
    anyhow::ensure!(!out.is_empty(), "no workload to run");
    Ok(out)
}

/// The engine of every run on `w`: identical except for the prefetcher.
fn engine_config(args: &Args, w: &Workload, kind: PrefetcherKind) -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.memory = ByteSize(w.memory_bytes);
    cfg.dram = ByteSize(w.dram_bytes);
    cfg.mtm.policy = args.policy;
    cfg.mtm.cold_after_ms = args.tier3_after_secs.map_or(NEVER_COLD_MS, |s| s.saturating_mul(1000));
    // The engine wants the headroom under half the budget; keep it proportionate on small ones.
    cfg.mtm.headroom_pages = cfg.mtm.headroom_pages.min((w.dram_bytes / PAGE / 8) as usize);
    cfg.fault.fault_around_pages = args.fault_around;
    cfg.prefetch.kind = kind;
    cfg.prefetch.max_window_pages = args.max_window;
    cfg
}

fn run_one(
    args: &Args,
    dir: &Path,
    w: &Workload,
    kind: PrefetcherKind,
    round: u32,
    label: &str,
) -> anyhow::Result<Run> {
    let every = Duration::from_secs(args.progress_secs.max(1));
    let EngineRun { report, before, after, .. } =
        run_on_engine(engine_config(args, w, kind), dir, &w.workload, w.trace.as_ref(), label, every)?;
    let d = |f: fn(&Snapshot) -> u64| f(&after).saturating_sub(f(&before));
    Ok(Run {
        workload: w.name.clone(),
        prefetcher: kind.name().into(),
        round,
        accesses: report.accesses,
        runtime_s: report.access_secs,
        faults: d(|s| s.faults),
        tier2_hits: d(|s| s.tier2_hits),
        tier3_hits: d(|s| s.tier3_hits),
        bytes_read: d(|s| s.bytes_read),
        issued: d(|s| s.prefetch_issued),
        used: d(|s| s.prefetch_used),
        late: d(|s| s.prefetch_late),
        wasted: d(|s| s.prefetch_wasted),
        dropped: d(|s| s.prefetch_dropped),
    })
}

/// Runs the comparison and prints it.
pub fn run(args: &Args) -> anyhow::Result<()> {
    validate(args)?;
    let mut notes = Vec::new();
    let workloads = resolve(args, &mut notes)?;
    let mut prefetchers = vec![PrefetcherKind::None];
    prefetchers.extend(args.prefetchers.iter().copied().filter(|&k| k != PrefetcherKind::None));
    prefetchers.dedup();
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize().with_context(|| format!("resolving {}", args.dir.display()))?;
    let _guard = InterruptGuard::install().context("installing the SIGINT/SIGTERM handler")?;

    let total = args.rounds as usize * workloads.len() * prefetchers.len();
    let mut runs = Vec::with_capacity(total);
    for round in 1..=args.rounds {
        for w in &workloads {
            for &p in &prefetchers {
                let label = format!("bench prefetch [{}/{total}] {} with {p} (round {round})", runs.len() + 1, w.name);
                eprintln!("{label}");
                let r = run_one(args, &dir, w, p, round, &label)?;
                eprintln!(
                    "{label}: {} accesses in {:.2}s, {} faults, {} prefetched, {} used, {} late, {} wasted, {} dropped",
                    r.accesses, r.runtime_s, r.faults, r.issued, r.used, r.late, r.wasted, r.dropped
                );
                runs.push(r);
            }
        }
    }

    notes.push(format!(
        "every run starts a fresh engine that differs only in [engine.prefetch] kind: same memory, DRAM budget ({:.0}% \
         of the footprint), policy ({}), MTM and tracker settings, fault-around {} ({}), max_window_pages {}; tier 2 \
         with O_DIRECT under {}; {}",
        args.dram_fraction * 100.0,
        policy_name(args.policy),
        args.fault_around,
        if args.fault_around <= 1 { "off" } else { "on" },
        args.max_window,
        dir.display(),
        match args.tier3_after_secs {
            Some(s) => format!("pages idle for {s} s move to tier 3"),
            None => "no page moves to tier 3".into(),
        }
    ));
    notes.push(
        "only the access stage is measured (the engine's counters are read when it starts and when it ends); \
         populate, the first write of every page, is not. Faults are demand (MISSING) faults; a prediction that \
         arrives after the guest faulted counts as late and its fault as a fault"
            .into(),
    );
    notes.push(format!(
        "coverage = 1 − faults / faults with none on the same workload and round, clamped to [0, 1]; accuracy = used / \
         issued, 0 when nothing was issued; wasted = prefetched pages evicted untouched (pages still resident and \
         untouched at the end are not counted); {} guest thread(s), whose faults the prefetcher sees as one stream",
        args.threads
    ));
    let results = summarize(&runs);
    let summary: Vec<Summary> = workloads.iter().map(|w| judge(&w.name, w.kind, &results)).collect();
    let doc = Results {
        bench: "prefetch",
        config: serde_json::json!({
            "workloads": workloads.iter().map(|w| w.name.clone()).collect::<Vec<_>>(),
            "prefetchers": prefetchers.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "memory_bytes": args.memory.0,
            "dram_fraction": args.dram_fraction,
            "accesses": args.accesses,
            "trace_accesses": args.trace_accesses,
            "threads": args.threads,
            "write_fraction": args.write_fraction,
            "seed": args.seed,
            "policy": policy_name(args.policy),
            "fault_around_pages": args.fault_around,
            "max_window_pages": args.max_window,
            "tier3_after_secs": args.tier3_after_secs,
            "rounds": args.rounds,
            "final_check": args.final_check,
            "dir": dir,
        }),
        workloads,
        results,
        summary,
        runs,
        notes,
    };
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let path = out.join("results.json");
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench prefetch: results written to {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_report(&doc);
    }
    Ok(())
}

fn policy_name(p: PolicyKind) -> &'static str {
    match p {
        PolicyKind::Hotset => "hotset",
        PolicyKind::Threshold => "threshold",
    }
}

/// The title line of a workload's table.
fn title(w: &Workload, accesses: u64) -> String {
    let replayed = match w.trace_accesses_total {
        Some(total) => format!("the first {accesses} of {total} accesses"),
        None => format!("{accesses} accesses"),
    };
    format!(
        "{}: {} pages ({}), DRAM {} ({:.0}%), {replayed}",
        w.name,
        w.footprint_pages,
        human_bytes(w.footprint_pages * PAGE),
        human_bytes(w.dram_bytes),
        w.dram_bytes as f64 * 100.0 / (w.footprint_pages * PAGE) as f64,
    )
}

/// The table of one workload.
fn table(results: &[&PrefetchResult]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let headers =
        vec!["prefetcher", "faults", "coverage", "accuracy", "issued", "late", "wasted MiB", "runtime s", "vs none"];
    let rows = results
        .iter()
        .map(|r| {
            vec![
                r.prefetcher.clone(),
                r.faults.to_string(),
                if r.prefetcher == "none" { "-".into() } else { pct(r.coverage) },
                if r.issued == 0 { "-".into() } else { pct(r.accuracy) },
                r.issued.to_string(),
                r.late.to_string(),
                format!("{:.1}", r.wasted_bytes as f64 / (1 << 20) as f64),
                format!("{:.2}", r.runtime_s),
                r.runtime_ratio.map_or_else(|| "-".into(), |x| format!("{x:.2}x")),
            ]
        })
        .collect();
    (headers, rows)
}

fn print_report(doc: &Results) {
    let rounds = doc.config["rounds"].as_u64().unwrap_or(1);
    println!("vmtier bench prefetch: access stage only{}", if rounds > 1 { ", medians of the rounds" } else { "" });
    for (w, s) in doc.workloads.iter().zip(&doc.summary) {
        let rs: Vec<&PrefetchResult> = doc.results.iter().filter(|r| r.workload == w.name).collect();
        println!();
        println!("{}", title(w, rs.first().map_or(0, |r| r.accesses)));
        let (headers, rows) = table(&rs);
        print_table(&headers, &rows);
        match (&s.best, s.best_coverage) {
            (Some(b), Some(c)) => println!("best at accuracy ≥ 90%: {b} (coverage {})", pct(c)),
            _ => println!("best at accuracy ≥ 90%: none of the prefetchers reaches 90% accuracy"),
        }
        for t in &s.targets {
            println!("target {}: {} — {}", t.target, if t.met { "MET" } else { "NOT MET" }, t.detail);
        }
    }
    println!();
    for n in &doc.notes {
        println!("note: {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rounds on workload `s`: (prefetcher, faults, issued, used, seconds) per round.
    fn fixture() -> Vec<Run> {
        let rounds = [
            [("none", 1000, 0, 0, 10.0), ("readahead", 100, 1000, 950, 2.0), ("stride", 50, 1000, 850, 2.0)],
            [("none", 2000, 0, 0, 20.0), ("readahead", 100, 1000, 990, 2.0), ("stride", 100, 1000, 850, 4.0)],
        ];
        let extra = [
            [("leap", 800, 200, 190, 8.0), ("history", 400, 600, 590, 6.0)],
            [("leap", 1600, 200, 190, 16.0), ("history", 800, 600, 590, 12.0)],
        ];
        let mut runs = Vec::new();
        for (i, (a, b)) in rounds.iter().zip(&extra).enumerate() {
            for &(p, faults, issued, used, secs) in a.iter().chain(b) {
                runs.push(Run {
                    workload: "s".into(),
                    prefetcher: p.into(),
                    round: i as u32 + 1,
                    accesses: 1000,
                    runtime_s: secs,
                    faults,
                    tier2_hits: faults,
                    tier3_hits: 0,
                    bytes_read: 0,
                    issued,
                    used,
                    late: 0,
                    wasted: issued - used,
                    dropped: 0,
                });
            }
        }
        runs
    }

    #[test]
    fn metric_definitions() {
        assert_eq!(accuracy(0, 0), 0.0);
        assert_eq!(accuracy(9, 10), 0.9);
        assert_eq!(accuracy(11, 10), 1.0);
        assert_eq!(coverage(100, 100), 0.0);
        assert_eq!(coverage(20, 100), 0.8);
        assert_eq!(coverage(150, 100), 0.0, "more faults than none: clamped");
        assert_eq!(coverage(0, 0), 0.0);
    }

    #[test]
    fn results_per_round_against_none() {
        let r = summarize(&fixture());
        let names: Vec<&str> = r.iter().map(|r| r.prefetcher.as_str()).collect();
        assert_eq!(names, ["none", "readahead", "stride", "leap", "history"]);
        assert_eq!((r[0].coverage, r[0].accuracy, r[0].runtime_ratio), (0.0, 0.0, Some(1.0)));
        assert_eq!((r[0].faults, r[0].rounds), (1500, 2));
        // Readahead: coverage 0.9 and 0.95, accuracy 0.95 and 0.99, runtime 0.2x and 0.1x.
        assert!((r[1].coverage - 0.925).abs() < 1e-9, "{}", r[1].coverage);
        assert!((r[1].accuracy - 0.97).abs() < 1e-9);
        assert!((r[1].runtime_ratio.unwrap() - 0.15).abs() < 1e-9);
        assert_eq!(r[1].wasted_bytes, 30 * PAGE);
        assert!((r[3].coverage - 0.2).abs() < 1e-9);
    }

    #[test]
    fn best_and_targets() {
        let mut results = summarize(&fixture());
        let s = judge("s", "scan", &results);
        assert_eq!(s.best.as_deref(), Some("readahead"), "stride covers more but at 85% accuracy");
        assert_eq!(s.targets.len(), 1);
        assert!(s.targets[0].met);
        assert_eq!(s.targets[0].detail, "met by readahead");
        // As a trace: history covers 60% against leap's 20%, at better accuracy.
        let t = judge("s", "trace", &results);
        assert_eq!(t.targets.len(), 1);
        assert!(t.targets[0].met, "{:?}", t.targets[0]);
        assert!(t.targets[0].detail.contains("ratio 3.00x"), "{}", t.targets[0].detail);
        // Zipf has no target.
        assert!(judge("s", "zipf", &results).targets.is_empty());
        // History less accurate than leap misses the trace target.
        results[4].accuracy = 0.5;
        assert!(!judge("s", "trace", &results).targets[0].met);
        // Only stride, at 85%: nothing is accurate enough and the target is missed.
        results.retain(|r| r.prefetcher == "none" || r.prefetcher == "stride");
        let n = judge("s", "stride", &results);
        assert_eq!(n.best, None);
        assert!(!n.targets[0].met);
        assert!(n.targets[0].detail.contains("highest coverage: stride (95.0% at accuracy 85.0%)"), "{:?}", n.targets);
    }

    #[test]
    fn workload_items() {
        assert_eq!(parse_item("sort").unwrap(), Item::RepoTrace("sort"));
        assert_eq!(parse_item(" xz6").unwrap(), Item::RepoTrace("xz6"));
        assert_eq!(parse_item("scan:2").unwrap(), Item::Generated(WorkloadKind::Scan { passes: 2 }));
        assert_eq!(parse_item("stride").unwrap(), Item::Generated(WorkloadKind::stride()));
        assert_eq!(parse_item("trace:a/b.vmtrace").unwrap(), Item::Trace("a/b.vmtrace".into()));
        let err = parse_item("bogus").unwrap_err().to_string();
        assert!(err.contains("sort, xz6"), "{err}");
        assert_eq!(trace_name(Path::new("traces/sort.lackey.gz")), "sort");
        assert_eq!(trace_name(Path::new("x/sort-head.lackey")), "sort-head");
        assert_eq!(trace_name(Path::new("p.vmtrace")), "p");
        assert_eq!(trace_name(Path::new(".gz")), ".gz");
    }

    #[test]
    fn repo_traces_are_found_from_the_source_tree() {
        for name in REPO_TRACES {
            let p = repo_trace(name).unwrap();
            assert!(p.is_file(), "{}", p.display());
        }
        let err = repo_trace("no-such-trace").unwrap_err();
        assert!(err.contains("traces/no-such-trace.lackey.gz"), "{err}");
    }

    #[test]
    fn sizes_respect_the_engine_minimum() {
        assert_eq!(sizes(3191, 0.25), (3191 * PAGE, 797 * PAGE));
        assert_eq!(sizes(100, 0.25), (100 * PAGE, 64 * PAGE));
        assert_eq!(sizes(10, 0.25), (64 * PAGE, 64 * PAGE));
    }
}
