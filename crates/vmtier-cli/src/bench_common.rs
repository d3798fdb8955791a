//! What the benches share: DRAM shares, medians, plain-text tables, and one run of the
//! in-process guest over a fresh engine with the engine's counters read exactly at the access
//! stage's boundaries.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use vmtier_engine::{Engine, EngineConfig, Snapshot};
use vmtier_workload::{Guest, PageTrace, Phase, Progress, WorkloadConfig, WorkloadError, WorkloadReport};

use crate::baseline::{BaselineError, signals, watch};

/// `cold_after_ms` that no page reaches: idle time is counted in 16-bit ticks (at most 109
/// minutes at 100 ms), so a day is never.
pub const NEVER_COLD_MS: u64 = 24 * 3600 * 1000;

/// The DRAM budget for a share of `memory`, whole pages.
pub fn dram_bytes(memory: u64, fraction: f64) -> u64 {
    ((memory as f64 * fraction) as u64) & !4095
}

/// The median (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

/// Prints `rows` under `headers` on stdout, the first column left-aligned, the others right.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| rows.iter().map(|r| r[i].len()).chain([headers[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { format!("{c:<w$}", w = widths[i]) } else { format!("{c:>w$}", w = widths[i]) })
            .collect();
        println!("{}", s.join("  "));
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Removes the engine's tier directories under `dir`.
pub fn remove_tiers(dir: &Path) {
    for t in ["tier2", "tier3"] {
        let _ = std::fs::remove_dir_all(dir.join(t));
    }
}

/// One guest run over vmtier's tiered memory.
#[derive(Debug)]
pub struct EngineRun {
    /// The guest's report.
    pub report: WorkloadReport,
    /// The engine's counters just before the access stage started.
    pub before: Snapshot,
    /// Just after it ended.
    pub after: Snapshot,
    /// At shutdown.
    pub end: Snapshot,
}

/// Starts an engine with `cfg`, its tier 2 (`O_DIRECT`) and tier 3 under `dir`, and runs the
/// in-process guest `wl` over it (replaying `trace` if given); removes the tiers afterwards.
/// Progress goes to stderr every `every`, prefixed with `label`; a signal cancels the guest.
pub fn run_on_engine(
    mut cfg: EngineConfig,
    dir: &Path,
    wl: &WorkloadConfig,
    trace: Option<&Arc<PageTrace>>,
    label: &str,
    every: Duration,
) -> anyhow::Result<EngineRun> {
    remove_tiers(dir);
    cfg.tier2.dir = dir.join("tier2");
    cfg.tier2.direct_io = true;
    cfg.tier3.url = dir.join("tier3").to_string_lossy().into_owned();
    let engine = Engine::start(cfg).context("starting the engine")?;
    let progress = Progress::new();
    let result = std::thread::scope(|s| {
        let h = s.spawn(|| -> Result<_, WorkloadError> {
            let mem = engine.guest_words();
            let mut guest = match trace {
                Some(t) => Guest::with_trace(mem, wl.clone(), Arc::clone(t))?,
                None => Guest::new(mem, wl.clone())?,
            };
            let (mut before, mut after) = (None, None);
            let report = guest.run_stages(&progress, |phase| match phase {
                Phase::Access => before = Some(engine.snapshot()),
                Phase::FinalCheck | Phase::Done if after.is_none() => after = Some(engine.snapshot()),
                _ => {}
            })?;
            Ok((report, before, after))
        });
        watch::watch(&progress, label, every, || h.is_finished(), |_| {});
        h.join()
    });
    let end = engine.shutdown();
    remove_tiers(dir);
    let (report, before, after) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(_)) if signals::interrupted() => return Err(BaselineError::Interrupted.into()),
        Ok(Err(e)) => return Err(anyhow::Error::new(e).context(format!("{label}: the guest failed"))),
        Err(_) => anyhow::bail!("{label}: the guest panicked"),
    };
    let before = before.context("the access stage never started")?;
    let after = after.unwrap_or_else(|| end.clone());
    Ok(EngineRun { report, before, after, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn dram_shares_are_whole_pages() {
        assert_eq!(dram_bytes(4 << 30, 0.5), 2 << 30);
        assert_eq!(dram_bytes(64 << 20, 0.3) % 4096, 0);
    }
}
